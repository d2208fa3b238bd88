"""The backbone seam: what a denoiser family (SD's UNet, a video DiT, ...) provides to the pipeline.

The pipeline's stages (check -> encode -> layout -> invert -> edit -> decode) are written once against
this protocol; the method's math (method/) takes tensors only. A new backbone is one module here that
implements ``Backbone`` and a pipeline class whose ``backbone`` property returns it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from ..method.layout import Layout
from ..method.sampling import DDIMSchedule, DenoiseFn, FlowSchedule
from ..method.settings import TemporalAidSettings


class Backbone(Protocol):
    """A frozen denoiser with its autoencoder and text encoder, as the pipeline sees it.

    Frames are (F, 3, H, W) in [-1, 1]; latents (T, C, h, w), T latent frames (T = F for an image
    model, fewer for a video VAE that compresses time); text embeddings (1, L, D).
    """

    #: the tokenizer region prompts are located with (``method.tokens.region_token_spans``)
    tokenizer: Any
    #: pixels per latent pixel along each side
    vae_factor: int
    #: frame sides must be multiples of this (autoencoder factor × the denoiser's downsampling)
    size_multiple: int
    #: levels (token grids) the layout modulation can act on, 0 = highest resolution
    num_levels: int
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

    def latent_frames(self, masks: torch.Tensor) -> torch.Tensor:
        """Masks per source frame (R, F, H, W) -> per latent frame (R, T, H, W) (T = F for an image model)."""

    def token_grids(self, latent_size: tuple[int, int]) -> list[tuple[int, int]]:
        """The per-frame token grid (h, w) of every level for latents of this size."""

    def layout(self, masks: torch.Tensor, spans: list, latent_size: tuple[int, int], temporal: str) -> Layout:
        """Region bitmasks and size terms on the backbone's tokens; masks (R, F, H, W) bool."""

    def schedule(self, steps: int) -> DDIMSchedule | FlowSchedule:
        """The sampling schedule of ``steps`` steps, shared by inversion and editing."""

    def temporal_aids(self, frames: torch.Tensor, latent_size: tuple[int, int], settings: TemporalAidSettings | None):
        """The runtime temporal aids (flow trajectories, feature store) of one edit, for ``denoise_fn``."""

    def control(self, images: torch.Tensor | None, scale: float):
        """Structure conditioning for ``denoise_fn`` from condition images (F, 3, H, W) in [0, 1]; None
        without images."""

    def denoise_fn(self, cond, uncond, guidance_scale: float, num_frames: int, schedule: DDIMSchedule,
                   **options) -> DenoiseFn:
        """ε-prediction for latents of ``num_frames`` frames with classifier-free guidance (cond, uncond:
        (1, L, D); uncond None: no guidance). ``options``: ``temporal``, ``layout`` and ``modulation``
        (ST-Layout attention on the conditional branch for the first ``modulation.steps`` steps),
        ``recorder`` (an AttentionRecorder), ``aids`` and ``control`` (from ``temporal_aids`` and
        ``control``), ``kernels`` (the edit's KernelChoice)."""

    def attention_processors(self) -> AbstractContextManager:
        """Install the method's attention processors for the duration of a ``with`` block."""
