"""The backbone seam: what a denoiser family (SD's UNet, a video DiT, ...) provides to the pipeline,
what it declares it can do, and the one rule set that holds a caller's settings against that.

The pipeline's stages (check -> encode -> layout -> invert -> edit -> decode) are written once against
``Backbone``; the method's math (method/) takes tensors only. A backbone's ``Capabilities`` are read
from its config files (no weights), so the config gate (``config/preflight.py``, SpecError naming the
YAML field) and the pipeline's ``check_inputs`` (ValueError naming the argument) apply the same
``check_settings`` before any weights load or any step runs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import SettingError
from ..method.layout import Layout, TemporalKeys
from ..method.sampling import Denoiser, Schedule
from ..method.settings import Modulation, ReAtCoSettings, TemporalAidSettings, Window


@dataclass(frozen=True)
class Capabilities:
    """What a backbone supports, from its config files.

    family: "sd" or "wan"; level: what a level index names ("UNet resolution", "transformer block");
    num_levels: how many there are (0 = highest resolution or first block); temporal_modes: the
    self-attention key frames it can take (of ``method.settings.TEMPORAL_MODES``; ``auto`` resolves to
    one of them); temporal_aids: FLATTEN
    and PnP; control: ControlNet conditions; frame_chunk: frame counts must be frame_chunk·k + 1 (1:
    any count); temporal_factor: source frames per latent frame after the first; size_multiple: frame
    sides must be multiples of it; vae_factor: pixels per latent pixel; rad_levels: the levels
    ReAtCo's guidance reads when its ``level`` is None (they share one token grid); experts: the
    denoisers it switches between by noise level (Wan 2.2 A14B: 2); num_train_timesteps: its training
    schedule's length, the most sampling steps it can take; scheduler: the scheduler class its sampler
    follows (None: any, only its config is read); solvers: the samplers' step rules it takes
    (``method.sampling.SOLVERS``); inversions: where an edit may start (``method.settings.INVERSIONS``);
    trained_frames: the clip length (source frames) the model was trained on, past which an edit runs
    in windows of that length (``default_window``; None: any length).
    """

    family: str
    level: str
    num_levels: int
    temporal_modes: tuple[str, ...]
    temporal_aids: bool
    control: bool
    frame_chunk: int
    temporal_factor: int
    size_multiple: int
    vae_factor: int
    rad_levels: tuple[int, ...]
    experts: int = 1
    num_train_timesteps: int = 1000
    scheduler: str | None = None
    solvers: tuple[str, ...] = ("euler",)
    inversions: tuple[str, ...] = ("ode",)
    trained_frames: int | None = None

    def default_window(self, num_frames: int) -> Window | None:
        """The temporal windows of an edit of ``num_frames`` source frames that names none: windows of
        the trained length (in latent frames), overlapping by a quarter, when the clip is longer;
        else None (one pass over the clip)."""
        if self.trained_frames is None or num_frames <= self.trained_frames:
            return None
        size = self.latent_frames(self.trained_frames)
        return Window(size, size - size // 4)

    def latent_frame_of(self, num_frames: int) -> torch.Tensor:
        """(F,) int64: the latent frame each source frame is encoded into (frame 0 alone, then
        ``temporal_factor`` frames per latent frame; the identity for an image model)."""
        frames = torch.arange(num_frames)
        return torch.where(frames == 0, 0, (frames - 1) // self.temporal_factor + 1)

    def latent_frames(self, num_frames: int) -> int:
        """How many latent frames a clip of ``num_frames`` frames encodes to."""
        return 1 + (num_frames - 1) // self.temporal_factor


def nearest_frame_counts(num_frames: int, chunk: int) -> tuple[int, int]:
    """The valid frame counts (chunk·k + 1) just below and above ``num_frames``."""
    below = (num_frames - 1) // chunk * chunk + 1
    return max(below, 1), below + chunk


def check_settings(
    caps: Capabilities,
    *,
    num_frames: int | None = None,
    num_inference_steps: int | None = None,
    modulation: Modulation | None = None,
    reatco: ReAtCoSettings | None = None,
    temporal_aids: TemporalAidSettings | None = None,
    control: bool = False,
    guidance_scale_2: float | None = None,
    scheduler: str | None = None,
    solver: str | None = None,
    inversion: str | None = None,
) -> None:
    """Raise SettingError (named as the pipeline's argument) for the first setting ``caps`` cannot
    honour. The one rule set of what a backbone supports: the config gate and ``check_inputs`` both
    call it."""
    levels = f"the model has levels 0..{caps.num_levels - 1} ({caps.level}s)"

    def missing(chosen) -> list[int]:
        return [level for level in chosen if not 0 <= level < caps.num_levels]

    if num_frames is not None and (num_frames - 1) % caps.frame_chunk:
        below, above = nearest_frame_counts(num_frames, caps.frame_chunk)
        raise SettingError("video", f"{num_frames} frames: this model takes {caps.frame_chunk}k + 1 "
                           f"frames (its VAE encodes frame 0, then chunks of {caps.frame_chunk})",
                           f"use {below} or {above}")
    if num_inference_steps is not None and num_inference_steps > caps.num_train_timesteps:
        raise SettingError("num_inference_steps", f"{num_inference_steps} is more than the model's "
                           f"{caps.num_train_timesteps} training timesteps",
                           f"use at most {caps.num_train_timesteps} steps (50 is usual)")
    if modulation is not None:
        if modulation.levels != "all" and missing(modulation.levels):
            raise SettingError("modulation.levels",
                               f"level(s) {missing(modulation.levels)} do not exist: {levels}",
                               "pick levels among those, or 'all'")
        if modulation.temporal != "auto" and modulation.temporal not in caps.temporal_modes:  # auto: any backbone
            raise SettingError("modulation.temporal",
                               f"{modulation.temporal!r} is not available on this model (it takes "
                               f"{', '.join(caps.temporal_modes)})", f"use {caps.temporal_modes[0]!r}")
    if reatco is not None and reatco.level is not None and missing([reatco.level]):
        raise SettingError("reatco.level", f"level {reatco.level} does not exist: {levels}",
                           "pick one of those, or leave it out for the model's default")
    aids = temporal_aids or TemporalAidSettings()
    if (aids.flow is not None or aids.pnp is not None) and not caps.temporal_aids:
        raise SettingError("temporal_aids", "flow-guided attention and PnP are not available on "
                           f"this model ({caps.level}s attend over every frame already)", "remove them")
    if aids.flow is not None and missing(aids.flow.levels):
        raise SettingError("temporal_aids.flow.levels",
                           f"level(s) {missing(aids.flow.levels)} do not exist: {levels}", "pick levels among those "
                           "(0 = FLATTEN's)")
    if guidance_scale_2 is not None and caps.experts < 2:
        raise SettingError("guidance_scale_2", "is the second expert's guidance and this model "
                           "has one (only Wan 2.2 A14B-style models have two)", "remove it")
    if scheduler is not None and caps.scheduler is not None and scheduler != caps.scheduler:
        raise SettingError("scheduler", f"{scheduler} is not what this pipeline samples with ({caps.scheduler}, the "
                           "paper's)", f"set pipe.scheduler = {caps.scheduler}.from_config(pipe.scheduler.config)")
    if solver is not None and solver not in caps.solvers:
        raise SettingError("solver", f"{solver!r} is not available on this model (its sampler takes "
                           f"{', '.join(caps.solvers)})", f"use {caps.solvers[0]!r}")
    if inversion is not None and inversion not in caps.inversions:
        raise SettingError("inversion", f"{inversion!r} is not available on this model: inversion-free editing "
                           f"(FlowEdit) needs a flow-matching model such as Wan (it takes {', '.join(caps.inversions)})",
                           f"use {caps.inversions[0]!r}")
    if inversion == "none" and reatco is not None:
        raise SettingError("reatco", "ReAtCo's guidance and IRJS follow the inversion trajectory, which inversion-free "
                           "editing does not compute", "remove reatco, or use inversion 'ode'")
    if control and not caps.control:
        raise SettingError("control_images", "ControlNet conditions are not available on this model",
                           "remove them")


class Backbone(Protocol):
    """A frozen denoiser with its autoencoder and text encoder, as the pipeline sees it.

    Frames are (F, 3, H, W) in [-1, 1]; latents (T, C, h, w), T latent frames (T = F for an image
    model, fewer for a video VAE that compresses time); text embeddings (1, L, D).
    """

    #: the tokenizer region prompts are located with (``method.tokens.region_token_spans``)
    tokenizer: Any
    #: what the backbone supports (levels, temporal modes, aids, control, frame and size rules)
    capabilities: Capabilities
    #: the model's training resolution: the long side frames get when the caller names no size
    native_size: int

    def check_size(self, num_frames: int, height: int, width: int) -> None:
        """Raise ValueError when the backbone cannot take this many frames of this size."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames -> latents (float32)."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> frames float32 on the CPU."""

    def encode_prompt(self, text: str) -> torch.Tensor:
        """A prompt's embeddings, padded to the text encoder's length: (1, L, D)."""

    def regional_prompt_embeds(self, prompt: str, region_prompts: list[str], spans: list) -> torch.Tensor:
        """The prompt's embeddings with each region's span replaced by its own prompt's: (1, L, D)."""

    def word_positions(self, prompt: str) -> slice:
        """The text positions of the prompt's words (no start token, no padding): what ReAtCo's
        guidance renormalises the attention maps over."""

    def latent_frames(self, masks: torch.Tensor) -> torch.Tensor:
        """Masks per source frame (R, F, H, W) -> per latent frame (R, T, H, W) (T = F for an image model)."""

    def layout(self, masks: torch.Tensor, spans: list, latent_size: tuple[int, int], temporal: TemporalKeys) -> Layout:
        """Region bitmasks and size terms on the backbone's tokens; masks (R, F, H, W) bool."""

    def schedule(self, steps: int) -> Schedule:
        """The sampling schedule of ``steps`` steps, shared by inversion and editing."""

    def temporal_aids(self, frames: torch.Tensor, latent_size: tuple[int, int], settings: TemporalAidSettings | None):
        """The runtime temporal aids (flow trajectories, feature store) of one edit, for ``denoise_fn``."""

    def control(self, images: torch.Tensor | None, scale: float):
        """Structure conditioning for ``denoise_fn`` from condition images (F, 3, H, W) in [0, 1]; None
        without images."""

    def denoise_fn(self, cond, uncond, guidance_scale: float, num_frames: int, schedule: Schedule,
                   **options) -> Denoiser:
        """The guided model call for latents of ``num_frames`` latent frames, predicting in
        ``schedule.prediction`` (cond, uncond: (1, L, D); uncond None: no guidance). ``options``:
        ``temporal``, ``layout`` and ``modulation`` (ST-Layout attention on the conditional branch
        for the first ``modulation.steps`` steps, through ``method.modulation.step_context``),
        ``recorder`` (an AttentionRecorder), ``aids`` and ``control`` (from ``temporal_aids`` and
        ``control``), ``kernels`` (the edit's KernelChoice)."""

    def attention_processors(self) -> AbstractContextManager:
        """Install the method's attention processors for the duration of a ``with`` block."""
