"""The method's settings as plain dataclasses: what a Python caller passes to the pipeline.

Each checks its values when it is made (``values``: types, finiteness, ranges), raising a SettingError
named after the call's argument ("modulation.self_strength"); the config layer builds them from YAML
(config/parse.py) and maps such an error to its field, and holds them against the model
(config/preflight.py). Nothing here knows about YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import values
from ..errors import SettingError

#: Self-attention key frames (``method.layout.TemporalKeys``): all frames, the first and the previous
#: frame, the frame itself, anchor frames spread over the clip plus the frame's group of neighbours,
#: or ``auto`` (first): full up to AUTO_ANCHORED_ABOVE frames, anchored above (where the backbone takes it).
TEMPORAL_MODES = ("auto", "full", "sparse_causal", "per_frame", "anchored")
#: ``temporal: auto`` attends over every frame up to this many (latent) frames, the paper's setting,
#: and is anchored above it, where full attention's cost grows with the square of the frames
#: (measured on the tiny model, benchmarks/README.md "Long clips").
AUTO_ANCHORED_ABOVE = 32
#: Where an edit starts: the source's inversion (an ODE solved backwards), or none (FlowEdit,
#: ``method.inversion_free``).
INVERSIONS = ("ode", "none")
#: Noise draws per step of inversion-free editing past this only multiply the work (FlowEdit takes 1).
MAX_DRAWS = 16
#: Regions a layout can hold: bits of a signed int64, keeping the sign bit clear.
MAX_REGIONS = 62
#: Modulation strengths past this swamp the attention scores (the paper's are 0.3 and 1.0).
MAX_STRENGTH = 100.0
#: RAD gradient steps per denoising step past this only multiply the work (the paper takes 1).
MAX_RAD_ITERATIONS = 20


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # a frozen dataclass normalising its own field (a list to a tuple)


@dataclass(frozen=True)
class Modulation:
    """ST-Layout attention: active for the first ``steps`` denoising steps at the backbone's ``levels``
    ("all" or level indices: UNet resolutions from the highest, or transformer blocks), with strengths
    c of self- and cross-attention. ``temporal`` picks the self-attention key frames (TEMPORAL_MODES;
    ``method.layout.TemporalKeys``): ``anchored`` gives each frame ``anchors`` frames spread over the
    clip plus its ``group`` of consecutive frames as keys, and runs the model over ``chunk`` frames at
    a time (the same result for any chunk; it bounds memory). A field left None takes the model's
    recommended value (``backbones.recommended``: its folder's videograin.json, else the paper's 15
    steps, 0.3 and 1.0)."""

    steps: int | None = None
    self_strength: float | None = None
    cross_strength: float | None = None
    levels: str | tuple[int, ...] = "all"
    temporal: str = "auto"
    anchors: int = 8
    group: int = 4
    chunk: int = 16

    def __post_init__(self) -> None:
        why = " (the paper uses 0.3 for self- and 1.0 for cross-attention)"
        if self.steps is not None:
            values.whole(self.steps, "modulation.steps", 0)
        for name in ("self_strength", "cross_strength"):
            if getattr(self, name) is not None:
                _set(self, name, values.number(getattr(self, name), f"modulation.{name}", MAX_STRENGTH, why))
        _set(self, "levels", values.levels(self.levels, "modulation.levels"))
        values.choice(self.temporal, "modulation.temporal", TEMPORAL_MODES)
        for name in ("anchors", "group", "chunk"):
            values.whole(getattr(self, name), f"modulation.{name}", 1)


@dataclass(frozen=True)
class ReAtCoSettings:
    """ReAtCo (arXiv:2412.11710): RAD guidance on the first ``steps`` denoising steps, ``iterations``
    gradient steps each, of size ``step_size`` times a factor falling linearly from 1 to 0.5; top-K
    share ``top_k`` of each mask's area; cross-attention maps of ``level`` (None: the level at H/32,
    the paper's, or the coarsest the model has); ``irjs``: invariant-region joint sampling."""

    steps: int = 25
    iterations: int = 1
    step_size: float = 20.0
    top_k: float = 0.2
    level: int | None = None
    irjs: bool = True

    def __post_init__(self) -> None:
        values.whole(self.steps, "reatco.steps", 0)
        values.whole(self.iterations, "reatco.iterations", 1, MAX_RAD_ITERATIONS)
        _set(self, "step_size", values.number(self.step_size, "reatco.step_size"))
        top_k = values.number(self.top_k, "reatco.top_k")
        if not 0 < top_k <= 1:
            raise SettingError("reatco.top_k", f"must be a share in (0, 1], got {top_k}",
                               "write e.g. 0.2 (20% of each mask's area, the paper's value)")
        _set(self, "top_k", top_k)
        if self.level is not None:
            values.whole(self.level, "reatco.level", 0)
        values.boolean(self.irjs, "reatco.irjs")


@dataclass(frozen=True)
class Window:
    """Overlapping temporal windows of ``size`` frames, ``stride`` apart, denoised separately and
    averaged where they overlap (ReAtCo's resource-friendly mode)."""

    size: int = 4
    stride: int = 2

    def __post_init__(self) -> None:
        values.whole(self.size, "window.size", 1)
        values.whole(self.stride, "window.stride", 1)
        if self.stride > self.size:
            raise SettingError("window.stride", f"{self.stride} is larger than the window size {self.size}, so frames "
                               "would be skipped", f"use a stride <= {self.size} (e.g. half the size, so windows overlap)")


@dataclass(frozen=True)
class InversionFree:
    """Inversion-free editing (``inversion="none"``, flow models; ``method.inversion_free``): the
    noisiest ``skip`` share of the steps skipped (FlowEdit's n_max), ``draws`` noise draws averaged per
    step, the source velocity's guidance ``source_guidance`` (None: the edit's guidance scale)."""

    skip: float = 0.2
    draws: int = 1
    source_guidance: float | None = None

    def __post_init__(self) -> None:
        _set(self, "skip", values.number(self.skip, "inversion_free.skip", 0.95, " (a share of the steps; FlowEdit "
                                                                               "skips about a third)"))
        values.whole(self.draws, "inversion_free.draws", 1, MAX_DRAWS)
        if self.source_guidance is not None:
            _set(self, "source_guidance", values.guidance(self.source_guidance, "inversion_free.source_guidance"))


@dataclass(frozen=True)
class FlowAid:
    """FLATTEN's flow-guided attention at ``levels`` (0 = highest resolution): in every inversion step
    and the first ``steps`` editing steps (None: all)."""

    levels: tuple[int, ...] = (0,)
    steps: int | None = None

    def __post_init__(self) -> None:
        _set(self, "levels", values.levels(self.levels, "temporal_aids.flow.levels", allow_all=False))
        if self.steps is not None:
            values.whole(self.steps, "temporal_aids.flow.steps", 0)


@dataclass(frozen=True)
class PnPAid:
    """Plug-and-play injection: the inversion's self-attention queries and keys (and decoder features)
    replace the edit's during its first ``steps`` steps."""

    steps: int = 5

    def __post_init__(self) -> None:
        values.whole(self.steps, "temporal_aids.pnp.steps", 0)


@dataclass(frozen=True)
class TemporalAidSettings:
    """Optional aids for temporal consistency used by VideoGrain (arXiv:2502.17258) §4.1; None: off."""

    flow: FlowAid | None = None
    pnp: PnPAid | None = None

    def __post_init__(self) -> None:
        for name, kind in (("flow", FlowAid), ("pnp", PnPAid)):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), kind):
                raise SettingError(f"temporal_aids.{name}", f"must be a {kind.__name__} or None, got "
                                   f"{values.describe(getattr(self, name))}", f"pass {kind.__name__}(...)")
