"""The method's settings as plain dataclasses: what a Python caller passes to the pipeline.

The config layer parses YAML into these (config/parse.py) and validates them against the model
(config/preflight.py); nothing here knows about YAML or field names.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Self-attention key frames: all frames, the first and the previous frame, or the frame itself.
TEMPORAL_MODES = ("full", "sparse_causal", "per_frame")
#: Regions a layout can hold: bits of a signed int64, keeping the sign bit clear.
MAX_REGIONS = 62


@dataclass(frozen=True)
class Modulation:
    """ST-Layout attention: active for the first ``steps`` denoising steps at the backbone's ``levels``
    ("all" or level indices: UNet resolutions from the highest, or transformer blocks), with strengths
    c of self- and cross-attention; ``temporal`` picks the self-attention key frames (full,
    sparse_causal, per_frame). A field left None takes the model's recommended value
    (``backbones.recommended``: its folder's videograin.json, else the paper's 15 steps, 0.3 and 1.0)."""

    steps: int | None = None
    self_strength: float | None = None
    cross_strength: float | None = None
    levels: str | tuple[int, ...] = "all"
    temporal: str = "full"


@dataclass(frozen=True)
class ReAtCoSettings:
    """ReAtCo (papers/003): RAD guidance on the first ``steps`` denoising steps, ``iterations``
    gradient steps each, of size ``step_size`` times a factor falling linearly from 1 to 0.5; top-K
    share ``top_k`` of each mask's area; cross-attention maps of ``level`` (None: the level at H/32,
    the paper's, or the coarsest the model has); ``irjs``: invariant-region joint sampling."""

    steps: int = 25
    iterations: int = 1
    step_size: float = 20.0
    top_k: float = 0.2
    level: int | None = None
    irjs: bool = True


@dataclass(frozen=True)
class Window:
    """Overlapping temporal windows of ``size`` frames, ``stride`` apart, denoised separately and
    averaged where they overlap (ReAtCo's resource-friendly mode)."""

    size: int = 4
    stride: int = 2


@dataclass(frozen=True)
class FlowAid:
    """FLATTEN's flow-guided attention at ``levels`` (0 = highest resolution): in every inversion step
    and the first ``steps`` editing steps (None: all)."""

    levels: tuple[int, ...] = (0,)
    steps: int | None = None


@dataclass(frozen=True)
class PnPAid:
    """Plug-and-play injection: the inversion's self-attention queries and keys (and decoder features)
    replace the edit's during its first ``steps`` steps."""

    steps: int = 5


@dataclass(frozen=True)
class TemporalAidSettings:
    """Optional aids for temporal consistency used by the paper (§4.1); None: off."""

    flow: FlowAid | None = None
    pnp: PnPAid | None = None
