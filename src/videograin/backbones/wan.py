"""The Wan 2.x text-to-video backbone: WanTransformer3DModel + AutoencoderKLWan + umT5, flow matching.

The pipeline sees Wan's latents (1, C, T, h, w) as (T, C, h, w): T = (F − 1)/4 + 1 latent frames, each
covering four source frames (the first one alone). Every transformer block attends over all latent
tokens of the clip at once (patches of 2×2 latents), so there is one token grid, a level is a
transformer block and the self-attention is always "full". Text is umT5's 512 tokens, without a start
token. Sampling is Euler on the velocity over the σ grid of the model's flow scheduler
(``FlowSchedule``); the two guidance passes are separate transformer calls and only the conditional
one is modulated (processors in wan_processors.py).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..method.attention import KernelChoice
from ..method.layout import (
    Layout, LevelLayout, TemporalKeys, downsample_masks, latent_frame_masks, region_share, text_token_bits, token_bits,
)
from ..method.modulation import ModulationContext, step_context
from ..method.recorder import AttentionRecorder
from ..method.sampling import SOLVERS, Denoiser, FlowSchedule
from ..method.settings import INVERSIONS, Modulation, TemporalAidSettings
from ..method.tokens import regional_prompt_embeds
from ..sizes import check_frame_size
from .base import Capabilities, check_settings
from .wan_processors import layout_processors

#: umT5's sequence length in Wan (prompts padded with zeros to it, as WanPipeline does)
TEXT_LENGTH = 512
#: The long side of frames when no size is given, by the VAE's spatial factor: the models' cards and
#: diffusers' default calls (Wan 2.1 and Wan 2.2 A14B, VAE x8: 480x832; Wan 2.2 TI2V-5B, VAE x16: 704x1280)
NATIVE_SIZES = {8: 832, 16: 1280}


def vae_factors(vae_config) -> tuple[int, int]:
    """(spatial, temporal) compression of an AutoencoderKLWan config: 2 per downsample times the
    patchify of its input (``patch_size``, Wan 2.2's VAE: 2), 2 per temporal downsample."""
    downsamples = vae_config["temperal_downsample"]
    patch = vae_config.get("patch_size") or 1
    return 2 ** len(downsamples) * patch, 2 ** sum(bool(d) for d in downsamples)


def boundary_timestep(pipe_config, scheduler_config) -> float | None:
    """Where a two-expert model (Wan 2.2 A14B) switches experts, as diffusers' WanPipeline computes it:
    ``boundary_ratio`` x the training timesteps; the high-noise ``transformer`` takes t >= it, the
    low-noise ``transformer_2`` the rest. None for one expert."""
    ratio = pipe_config.get("boundary_ratio")
    return None if ratio is None else ratio * scheduler_config.get("num_train_timesteps", 1000)


#: AutoencoderKLWan encodes frame 0 alone, then chunks of this many frames (``_encode``; frames past the
#: last whole chunk are dropped), so a clip has 4k + 1 frames whatever the VAE's compression of time
FRAME_CHUNK = 4
#: The clip length Wan was trained on, by its VAE's spatial factor: 81 frames (Wan 2.1, Wan 2.2 A14B,
#: 16 fps), 121 (Wan 2.2 TI2V-5B, whose VAE compresses 16x, 24 fps).
TRAINED_FRAMES = {8: 81, 16: 121}


def wan_capabilities(vae_config, transformer_config, scheduler_config, experts: int = 1) -> Capabilities:
    """What a Wan text-to-video model supports, from its VAE's and transformer's configs: a level is a
    transformer block (of either expert: Wan 2.2 A14B's two share the architecture); self-attention is
    always over the whole clip (``auto`` is full); no temporal aids, no ControlNet; ReAtCo's guidance reads every block
    (they share one token grid); clips past the trained length run in windows of it."""
    spatial, temporal = vae_factors(vae_config)
    blocks = transformer_config["num_layers"]
    return Capabilities(family="wan", level="transformer block", num_levels=blocks, temporal_modes=("full",),
                        temporal_aids=False, control=False, frame_chunk=FRAME_CHUNK,
                        temporal_factor=temporal,
                        size_multiple=spatial * transformer_config["patch_size"][1], vae_factor=spatial,
                        rad_levels=tuple(range(blocks)), experts=experts,
                        num_train_timesteps=scheduler_config.get("num_train_timesteps", 1000),
                        solvers=tuple(SOLVERS), inversions=INVERSIONS,
                        trained_frames=TRAINED_FRAMES.get(spatial, TRAINED_FRAMES[8]))


class WanBackbone:
    """The ``Backbone`` of a pipeline holding Wan components (vae, text_encoder, tokenizer, transformer,
    scheduler): a view over them, no state of its own."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        second = getattr(pipe, "transformer_2", None)
        self.boundary = boundary_timestep(pipe.config, pipe.scheduler.config) if second is not None else None
        self.experts = [pipe.transformer, *([second] if self.boundary is not None else [])]
        self.capabilities = wan_capabilities(pipe.vae.config, pipe.transformer.config, pipe.scheduler.config,
                                             len(self.experts))
        self.patch = tuple(pipe.transformer.config.patch_size)  # (t, h, w)
        self.native_size = NATIVE_SIZES.get(self.capabilities.vae_factor, NATIVE_SIZES[8])

    def expert(self, t: float):
        """The transformer that denoises time input t: the high-noise one at or above the boundary. Under
        ``enable_model_cpu_offload`` the other expert goes back to the CPU first: diffusers' chain of
        offload hooks follows the edit's order (high then low noise) but not the inversion's, which
        would leave both on the accelerator."""
        chosen = self.experts[0] if self.boundary is None or t >= self.boundary else self.experts[1]
        for hook in getattr(self.pipe, "_all_hooks", []) if len(self.experts) == 2 else []:
            if getattr(hook, "model", None) in self.experts and hook.model is not chosen:
                hook.offload()
        return chosen

    def check_size(self, num_frames: int, height: int, width: int) -> None:
        caps = self.capabilities
        check_settings(caps, num_frames=num_frames)
        check_frame_size(width, height, caps.size_multiple)

    def _latent_stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.pipe.vae.config
        mean, std = (torch.tensor(config[k], device=device).view(-1, 1, 1, 1) for k in ("latents_mean", "latents_std"))
        return mean, std

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1] -> latents (T, C, h, w) float32, normalised by the VAE's statistics."""
        vae = self.pipe.vae
        video = frames.to(self.pipe._execution_device, vae.dtype).transpose(0, 1)[None]  # (1, 3, F, H, W)
        z = vae.encode(video).latent_dist.mean.float()[0]  # (C, T, h, w)
        mean, std = self._latent_stats(z.device)
        return ((z - mean) / std).transpose(0, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (T, C, h, w) -> frames (F, 3, H, W) float32 in [-1, 1] on the CPU."""
        vae = self.pipe.vae
        z = latents.transpose(0, 1).float()
        mean, std = self._latent_stats(z.device)
        video = vae.decode((z * std + mean)[None].to(vae.dtype)).sample[0]  # (3, F, H, W)
        return video.float().clamp(-1, 1).transpose(0, 1).cpu()

    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """umT5 embedding (1, 512, D), zero after the prompt's tokens (as WanPipeline pads it)."""
        encoder = self.pipe.text_encoder
        tokens = self.tokenizer(text, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                                return_attention_mask=True, return_tensors="pt")
        device = self.pipe._execution_device  # the encoder's device, also under CPU offload
        mask = tokens.attention_mask.to(device)
        embeds = encoder(tokens.input_ids.to(device), mask).last_hidden_state
        return (embeds * mask[..., None]).float()

    def regional_prompt_embeds(self, prompt: str, region_prompts: list[str], spans: list) -> torch.Tensor:
        return regional_prompt_embeds(self.encode_prompt, self.tokenizer, prompt, region_prompts, spans)

    def word_positions(self, prompt: str) -> slice:
        """umT5 has no start token: the prompt's tokens before its end token."""
        return slice(0, len(self.tokenizer(prompt).input_ids) - 1)

    def latent_frames(self, masks: torch.Tensor) -> torch.Tensor:
        return latent_frame_masks(masks, self.capabilities.temporal_factor)

    def token_grids(self, latent_size: tuple[int, int]) -> list[tuple[int, int]]:
        return [(latent_size[0] // self.patch[1], latent_size[1] // self.patch[2])]

    def layout(self, masks: torch.Tensor, spans: list, latent_size: tuple[int, int], temporal: TemporalKeys) -> Layout:
        """Bitmasks on the transformer's tokens (T latent frames of h×w patches): a token is in a region
        when the region covers at least half of its patch in any of the latent frame's source frames.
        Size terms: self, the share of all tokens of the clip; cross, of the token's latent frame.
        Every level (block) attends on this one grid."""
        (h, w), = self.token_grids(latent_size)
        bits = token_bits(self.latent_frames(downsample_masks(masks, h, w)))  # (T, h·w)
        frames = bits.shape[0]
        full = TemporalKeys("full")
        level = LevelLayout(0, h, w, bits, region_share(bits, full.groups(frames)),
                            region_share(bits, TemporalKeys("per_frame").groups(frames)))
        return Layout({h * w: level}, text_token_bits(spans, TEXT_LENGTH), frames, full, one_grid=True)

    def schedule(self, steps: int) -> FlowSchedule:
        config = self.pipe.scheduler.config
        return FlowSchedule.build(steps, config.get("flow_shift") or config.get("shift") or 1.0,
                                  config.get("num_train_timesteps", 1000))

    def temporal_aids(self, frames, latent_size, settings: TemporalAidSettings | None):
        return None  # none on Wan (``capabilities``)

    def control(self, images: torch.Tensor | None, scale: float):
        return None  # none on Wan (``capabilities``)

    def denoise_fn(
        self,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        guidance_scale: float,
        num_frames: int,
        schedule: FlowSchedule,
        *,
        guidance_scale_2: float | None = None,
        temporal: TemporalKeys = TemporalKeys(),
        layout: Layout | None = None,
        modulation: Modulation | None = None,
        recorder: AttentionRecorder | None = None,
        aids=None,
        control=None,
        kernels: KernelChoice | None = None,
    ) -> Denoiser:
        """The velocity for latents (T, C, h, w) at flow time t with classifier-free guidance (uncond
        None: none) from the expert of t (``expert``; the second at ``guidance_scale_2``, default
        ``guidance_scale``, as WanPipeline); the conditional call modulated for the first
        ``modulation.steps`` steps (``modulation.levels``: the modulated block indices, "all" by
        default) and its cross-attention maps recorded into ``recorder``. Differentiable (ReAtCo's
        guidance runs it under autograd)."""
        kernels = kernels or KernelChoice()
        scales = {id(self.experts[0]): guidance_scale,
                  id(self.experts[-1]): guidance_scale if guidance_scale_2 is None else guidance_scale_2}
        expand = self.pipe.config.get("expand_timesteps", False)

        def velocity(model, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, context: ModulationContext | None):
            bound = context is not None and (context.self_scale or context.cross_scale or context.recorder)
            with layout_processors(model, context) if bound else nullcontext():
                return model(x, t, text.to(x.device, model.dtype), return_dict=False)[0].float()

        def denoise(latents: torch.Tensor, t: float, step: int) -> torch.Tensor:
            model = self.expert(t)
            x = latents.transpose(0, 1)[None].to(model.dtype)  # (1, C, T, h, w)
            tokens = latents.shape[0] * (latents.shape[-2] // self.patch[1]) * (latents.shape[-1] // self.patch[2])
            # Wan 2.2 TI2V takes a time per token (all t for text-to-video), the others one per sample
            timestep = torch.full((1, tokens) if expand else (1,), t, device=x.device)
            context = step_context(step, t, schedule, layout, modulation, recorder, kernels)
            v = velocity(model, x, timestep, cond, context)
            if uncond is not None:
                v_uncond = velocity(model, x, timestep, uncond, None)
                v = v_uncond + scales[id(model)] * (v - v_uncond)
            return v[0].transpose(0, 1).to(latents.dtype)

        return denoise

    def attention_processors(self):
        """Nothing for the whole edit: the processors are bound per transformer call (``denoise_fn``)."""
        return nullcontext()
