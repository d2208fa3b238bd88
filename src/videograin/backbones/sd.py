"""The Stable Diffusion 1.x/2.x backbone: UNet2DConditionModel + AutoencoderKL + CLIP, frames as the batch.

Levels are the UNet's resolutions (level l has the latent grid halved l times), text is CLIP's 77
tokens, the VAE downsamples by 8, sampling is DDIM. The attention processors live in sd_processors.py;
this module says how to call the UNet with guidance, ControlNet and the temporal aids.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from ..method.attention import KernelChoice
from ..method.layout import Layout, TemporalKeys, build_layout, token_grid
from ..method.recorder import AttentionRecorder
from ..method.modulation import step_context
from ..method.reatco import CLIP_WORDS, rad_level
from ..method.sampling import SOLVERS, DDIMSchedule, Denoiser
from ..method.settings import TEMPORAL_MODES, Modulation, TemporalAidSettings
from ..method.tokens import encode_prompt, regional_prompt_embeds
from ..method.trajectories import Trajectories, trajectories_for_levels
from ..sizes import check_frame_size
from .base import Capabilities
from .sd_processors import FeatureStore, PnPMode, StepContext, layout_processors, residual_injection

logger = logging.getLogger(__name__)


def sd_capabilities(vae_config, unet_config, scheduler_config) -> Capabilities:
    """What an SD 1.x/2.x model supports, from its VAE's and UNet's configs: a level is a UNet
    resolution; every temporal mode, the temporal aids and ControlNet; any frame count; frame sides a
    multiple of the total downsampling (VAE factor · 2^(levels − 1)); ReAtCo reads the H/32 level."""
    vae_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    num_levels = len(unet_config["block_out_channels"])
    return Capabilities(family="sd", level="UNet resolution", num_levels=num_levels, temporal_modes=TEMPORAL_MODES[1:],
                        temporal_aids=True, control=True, frame_chunk=1, temporal_factor=1,
                        size_multiple=vae_factor * 2 ** (num_levels - 1), vae_factor=vae_factor,
                        rad_levels=(rad_level(vae_factor, num_levels),),
                        num_train_timesteps=scheduler_config.get("num_train_timesteps", 1000), scheduler="DDIMScheduler",
                        solvers=tuple(SOLVERS))


@dataclass(frozen=True)
class TemporalAids:
    """FLATTEN trajectories (by tokens per frame, the chosen levels only) used on steps below
    ``flow_steps`` (None: every step); PnP ``features`` recorded or injected (``features_mode``)
    on steps below ``pnp_steps``."""

    trajectories: dict[int, Trajectories] | None = None
    flow_steps: int | None = None
    features: FeatureStore | None = None
    features_mode: PnPMode | None = None
    pnp_steps: int = 0

    def frames(self, window: slice) -> TemporalAids:
        """The aids of a temporal window: trajectories and features cut to its frames."""
        trajectories = features = None
        if self.trajectories is not None:
            trajectories = {
                n: Trajectories(t.traj_id[window], t.count, t.height, t.width) for n, t in self.trajectories.items()
            }
        if self.features is not None:
            residuals = self.features.residuals
            features = FeatureStore(
                {key: (q[window], k[window]) for key, (q, k) in self.features.qk.items()},
                None if residuals is None else {key: x[window] for key, x in residuals.items()},
            )
        return dataclasses.replace(self, trajectories=trajectories, features=features)

    def for_inversion(self) -> TemporalAids:
        """The same aids as inversion uses them: flow on every step, PnP features recorded."""
        return dataclasses.replace(self, flow_steps=None, features_mode=PnPMode.RECORD)


@dataclass(frozen=True)
class Control:
    """A ControlNet and its conditions for one edit: images (F, 3, H, W) float in [0, 1] at the
    frame size, ``scale`` the conditioning scale."""

    model: torch.nn.Module
    images: torch.Tensor
    scale: float = 1.0

    def frames(self, window: slice | torch.Tensor) -> Control:
        return Control(self.model, self.images[window], self.scale)

    def residuals(self, sample: torch.Tensor, t: int, encoder_states: torch.Tensor):
        """ControlNet residuals for a UNet batch of ``branches × F`` latents (the same conditions for
        every branch): (down block residuals, mid block residual)."""
        branches = sample.shape[0] // self.images.shape[0]
        images = self.images.to(sample.device, self.model.dtype).repeat(branches, 1, 1, 1)
        down, mid = self.model(
            sample.to(self.model.dtype), t, encoder_hidden_states=encoder_states.to(self.model.dtype),
            controlnet_cond=images, conditioning_scale=self.scale, return_dict=False,
        )
        return down, mid


class StableDiffusionBackbone:
    """The ``Backbone`` of a pipeline holding SD components (vae, text_encoder, tokenizer, unet,
    scheduler, controlnet): a view over them, no state of its own."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.capabilities = sd_capabilities(pipe.vae.config, pipe.unet.config, pipe.scheduler.config)
        self.native_size = pipe.unet.config.sample_size * self.capabilities.vae_factor

    def check_size(self, num_frames: int, height: int, width: int) -> None:
        check_frame_size(width, height, self.capabilities.size_multiple)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, batch: int = 8) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1] -> latents (F, 4, H/8, W/8) float32 (posterior mean, scaled)."""
        vae, out = self.pipe.vae, []
        for chunk in frames.split(batch):
            posterior = vae.encode(chunk.to(self.pipe._execution_device, vae.dtype)).latent_dist
            out.append(posterior.mean.float() * vae.config.scaling_factor)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 8) -> torch.Tensor:
        """Latents (F, 4, h, w) -> frames (F, 3, H, W) float32 in [-1, 1] on the CPU, ``batch`` frames
        per VAE call written into one buffer."""
        vae, out = self.pipe.vae, None
        for start in range(0, len(latents), batch):
            chunk = latents[start : start + batch]
            image = vae.decode(chunk.to(vae.dtype) / vae.config.scaling_factor).sample
            if out is None:
                out = torch.empty(len(latents), *image.shape[1:])
            out[start : start + batch] = image.float().clamp(-1, 1).cpu()
        return out

    def encode_prompt(self, text: str) -> torch.Tensor:
        return encode_prompt(self.pipe.text_encoder, self.tokenizer, text)

    def regional_prompt_embeds(self, prompt: str, region_prompts: list[str], spans: list) -> torch.Tensor:
        return regional_prompt_embeds(self.encode_prompt, self.tokenizer, prompt, region_prompts, spans)

    def word_positions(self, prompt: str) -> slice:
        return CLIP_WORDS

    def latent_frames(self, masks: torch.Tensor) -> torch.Tensor:
        return masks

    def token_grids(self, latent_size: tuple[int, int]) -> list[tuple[int, int]]:
        return [token_grid(latent_size, level) for level in range(self.capabilities.num_levels)]

    def layout(self, masks: torch.Tensor, spans: list, latent_size: tuple[int, int], temporal: TemporalKeys) -> Layout:
        return build_layout(masks, spans, latent_size, self.capabilities.num_levels, temporal,
                            self.tokenizer.model_max_length)

    def schedule(self, steps: int) -> DDIMSchedule:
        return DDIMSchedule.from_scheduler(self.pipe.scheduler, steps)

    def temporal_aids(
        self, frames: torch.Tensor, latent_size: tuple[int, int], settings: TemporalAidSettings | None
    ) -> TemporalAids:
        """FLATTEN trajectories from the optical flow of ``frames`` (F, 3, H, W) at the chosen levels,
        and an empty PnP feature store to record into."""
        from ..optical_flow import video_flow  # OpenCV, only when flow aids are on

        trajectories = features = None
        flow, pnp = (settings.flow, settings.pnp) if settings is not None else (None, None)
        if flow is not None:
            by_tokens = trajectories_for_levels(video_flow(frames), latent_size, max(flow.levels) + 1)
            chosen = {math.prod(token_grid(latent_size, level)) for level in flow.levels}
            trajectories = {n: t.to(self.pipe._execution_device) for n, t in by_tokens.items() if n in chosen}
        if pnp is not None and pnp.steps > 0:
            features = FeatureStore()
        return TemporalAids(
            trajectories, flow.steps if flow is not None else None, features, PnPMode.INJECT, pnp.steps if pnp else 0
        )

    def control(self, images: torch.Tensor | None, scale: float) -> Control | None:
        if images is None:
            return None
        if self.pipe.controlnet is None:
            raise ValueError("control images given but the pipeline has no controlnet (load it with controlnet=...)")
        return Control(self.pipe.controlnet, images, scale)

    def denoise_fn(
        self,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        guidance_scale: float,
        num_frames: int,
        schedule: DDIMSchedule,
        *,
        temporal: TemporalKeys = TemporalKeys(),
        layout: Layout | None = None,
        modulation: Modulation | None = None,
        recorder: AttentionRecorder | None = None,
        aids: TemporalAids | None = None,
        control: Control | None = None,
        kernels: KernelChoice | None = None,
    ) -> Denoiser:
        """ε-prediction with classifier-free guidance and the per-step StepContext for the processors.

        cond, uncond: (1, L, D) text embeddings shared by all frames (uncond None: no guidance).
        Modulation is on for the first ``modulation.steps`` steps when a layout and modulation are given.
        ``control``: ControlNet residuals added to the UNet on every step and branch. An anchored clip
        longer than its chunk runs the UNet over ``temporal.chunks`` (the same result, bounded memory),
        except where the attention maps are recorded or a temporal aid runs: those need every frame.
        """
        unet, aids, kernels = self.pipe.unet, aids or TemporalAids(), kernels or KernelChoice()
        texts = [cond] if uncond is None else [uncond, cond]
        chunks = temporal.chunks(num_frames)
        if len(chunks) > 1 and (recorder is not None or aids.trajectories is not None or aids.features is not None):
            logger.info("the UNet takes all %d frames at once: recording attention maps and the temporal aids "
                        "need every frame in one call", num_frames)
            chunks = [torch.arange(num_frames)]

        def guided(latents: torch.Tensor, t: int, ctx: StepContext, frames) -> torch.Tensor:
            model_in = torch.cat([latents] * len(texts)).to(unet.dtype)
            states = torch.cat([x.expand(len(latents), -1, -1) for x in texts]).to(unet.dtype)
            part = control if control is None or frames is None else control.frames(frames)
            down, mid = part.residuals(model_in, t, states) if part is not None else (None, None)
            with residual_injection(unet, ctx):
                eps = unet(
                    model_in, t, encoder_hidden_states=states, cross_attention_kwargs={"videograin": ctx},
                    down_block_additional_residuals=down, mid_block_additional_residual=mid,
                ).sample.to(latents.dtype)
            if uncond is None:
                return eps
            eps_uncond, eps_cond = eps.chunk(2)
            return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

        def denoise(latents: torch.Tensor, t: int, step: int) -> torch.Tensor:
            ctx = StepContext(
                num_frames=num_frames,
                modulation=step_context(step, t, schedule, layout, modulation, recorder, kernels),
                temporal=temporal,
                cond_branch=len(texts) - 1,
                trajectories=aids.trajectories if aids.flow_steps is None or step < aids.flow_steps else None,
                features=aids.features if step < aids.pnp_steps else None,
                features_mode=aids.features_mode,
            )
            if len(chunks) == 1:
                return guided(latents, t, ctx, None)
            eps, anchor_keys = torch.empty_like(latents), {}  # the anchors' keys live for this call only
            for frames in chunks:  # the anchors' chunk first
                part = dataclasses.replace(ctx, num_frames=len(frames), frames=frames, clip_length=num_frames,
                                           anchor_keys=anchor_keys)
                eps[frames] = guided(latents[frames], t, part, frames)
            return eps

        return denoise

    def attention_processors(self):
        return layout_processors(self.pipe.unet)
