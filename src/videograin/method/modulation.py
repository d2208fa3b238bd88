"""One model call's ST-Layout modulation, built once per step and read by every processor family.

The strength rule of VideoGrain (arXiv:2502.17258) §3.3 lives here and nowhere else: for a query
token x at a modulated level, λ_x = c · ξ(t) · (1 − S_x), with c the self- or cross-attention strength of ``Modulation``,
ξ(t) the schedule's time factor and S_x the size term of x's region (``LevelLayout``). A backbone's
denoiser calls ``step_context`` before each model call and hands the context to its processors (SD:
``cross_attention_kwargs``; Wan, whose blocks forward no attention arguments: processors bound for
that one call); the processors ask it whether a level is modulated or recorded and for λ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import KernelChoice
from .layout import Layout, LevelLayout
from .recorder import AttentionRecorder
from .sampling import Schedule
from .settings import Modulation


@dataclass(frozen=True)
class ModulationContext:
    """The modulation of one model call at sampling step ``step``.

    layout: the region layout on the backbone's tokens (None: no regions, nothing modulated or
    recorded); self_scale, cross_scale: c·ξ(t) for this step (0: that attention runs plain); levels:
    the modulated level indices (None: all; a level is a UNet resolution or a transformer block);
    recorder: where the conditional branch's cross-attention maps go (a sink the processors write
    into); kernels: the GPU kernels that failed during this edit.
    """

    step: int
    layout: Layout | None = None
    self_scale: float = 0.0
    cross_scale: float = 0.0
    levels: frozenset[int] | None = None
    recorder: AttentionRecorder | None = None
    kernels: KernelChoice = field(default_factory=KernelChoice)

    def modulates(self, level: int, cross: bool) -> bool:
        """Whether the self- (or cross-) attention of ``level`` is modulated in this call."""
        scale = self.cross_scale if cross else self.self_scale
        return self.layout is not None and scale != 0 and (self.levels is None or level in self.levels)

    def records(self, level: int) -> bool:
        """Whether the cross-attention maps of ``level`` are recorded in this call."""
        return self.recorder is not None and self.layout is not None and self.recorder.wants(level)

    def strength(self, grid: LevelLayout, cross: bool, device: torch.device | None = None) -> torch.Tensor:
        """λ per query token of ``grid`` (T, h·w): c·ξ(t)·(1 − S), S the cross- or self-attention size term."""
        scale, share = (self.cross_scale, grid.cross_share) if cross else (self.self_scale, grid.self_share)
        return scale * (1 - (share if device is None else share.to(device)))


def step_context(
    step: int,
    t: float,
    schedule: Schedule,
    layout: Layout | None = None,
    modulation: Modulation | None = None,
    recorder: AttentionRecorder | None = None,
    kernels: KernelChoice | None = None,
) -> ModulationContext:
    """The context of the model call at sampling step ``step`` (time input t): modulated for the first
    ``modulation.steps`` steps when a layout and a modulation are given, plain otherwise."""
    active = layout is not None and modulation is not None and step < modulation.steps
    xi = schedule.time_factor(t) if active else 0.0
    levels = None if modulation is None or modulation.levels == "all" else frozenset(modulation.levels)
    return ModulationContext(
        step, layout,
        modulation.self_strength * xi if active else 0.0,
        modulation.cross_strength * xi if active else 0.0,
        levels, recorder, kernels if kernels is not None else KernelChoice(),
    )
