"""VideoGrainPipeline: encode -> layout -> DDIM inversion -> ST-Layout edit with latent blend -> decode."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel

from .attention import AttentionRecorder, FeatureStore, layout_processors
from .control import Control
from .flow import token_grid, trajectories_for_levels, video_flow
from .inversion import ddim_invert
from .layout import Layout, blend_mask, build_layout, composite_weights
from .reatco import RadWindow, invariant_region_sampling, rad_guide, rad_level, step_sizes, temporal_windows
from .sampling import TemporalAids, ddim_sample, guided_denoise_fn, latent_blend, noise_levels, windowed_denoise_fn
from .spec import ModulationSpec, ReAtCoSpec, TemporalAidsSpec, WindowSpec
from .tokens import encode_prompt, region_token_spans, regional_prompt_embeds, word_token_indices

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def size_multiple(vae_config, unet_config) -> int:
    """Frame sizes must be multiples of the model's total downsampling: VAE factor · 2^(levels − 1)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1) * 2 ** (len(unet_config["block_out_channels"]) - 1)


def model_size_multiple(model: str) -> int:
    """``size_multiple`` read from a model's config files only (no weights loaded)."""
    vae = AutoencoderKL.load_config(model, subfolder="vae")
    unet = UNet2DConditionModel.load_config(model, subfolder="unet")
    return size_multiple(vae, unet)


@dataclass
class EditOutput:
    """frames: (F, 3, H, W) float32 in [-1, 1] on the CPU; latents: the edited latents (F, 4, h, w)
    before decoding; timings in seconds per stage; guidance: ReAtCo's L_IR and L_OR per guided step."""

    frames: torch.Tensor
    latents: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    recorder: AttentionRecorder | None = None
    layout: Layout | None = None
    guidance: list[dict] = field(default_factory=list)


class VideoGrainPipeline(DiffusionPipeline):
    """Multi-grained zero-shot video editing with a frozen SD 1.x/2.x checkpoint (papers/000).

    Frames travel as the batch dimension; the spatio-temporal and layout-modulated attention lives in
    processors installed for the duration of a call. Extra components of a Stable Diffusion folder
    (safety checker, feature extractor) are ignored; any scheduler is replaced by DDIM with its config.
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["controlnet"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, controlnet=None):
        super().__init__()
        if not isinstance(scheduler, DDIMScheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, controlnet=controlnet
        )

    def _control(self, images: torch.Tensor | None, scale: float) -> Control | None:
        """The ControlNet with its condition images (F, 3, H, W) in [0, 1], or None without images."""
        if images is None:
            return None
        if self.controlnet is None:
            raise ValueError("control images given but the pipeline has no controlnet (load it with controlnet=...)")
        return Control(self.controlnet, images, scale)

    @property
    def size_multiple(self) -> int:
        return size_multiple(self.vae.config, self.unet.config)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def num_levels(self) -> int:
        return len(self.unet.config.block_out_channels)

    def check_inputs(self, frames: torch.Tensor, masks: torch.Tensor, prompt: str, region_prompts: list[str]):
        """Validate shapes and prompts; returns each region prompt's token span (None when empty)."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (F, 3, H, W), got {tuple(frames.shape)}")
        height, width = frames.shape[-2:]
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(f"frame size {width}x{height} must be a multiple of {m} (the model's total downsampling)")
        if masks.dtype != torch.bool or masks.shape[1:] != (frames.shape[0], height, width):
            raise ValueError(f"masks must be bool (R, {frames.shape[0]}, {height}, {width}), got {masks.dtype} {tuple(masks.shape)}")
        if masks.shape[0] != len(region_prompts):
            raise ValueError(f"{masks.shape[0]} mask sequences but {len(region_prompts)} region prompts")
        return region_token_spans(self.tokenizer, prompt, region_prompts)

    def _progress(self, total: int, desc: str):
        """The diffusers progress bar, labelled, keeping the user's other settings (e.g. disable)."""
        self._progress_bar_config = {**getattr(self, "_progress_bar_config", {}), "desc": desc}
        return self.progress_bar(total=total)

    def _schedule(self, steps: int):
        self.scheduler.set_timesteps(steps)
        alphas = self.scheduler.alphas_cumprod
        return self.scheduler.timesteps, alphas, float(self.scheduler.final_alpha_cumprod)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, batch: int = 8) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1] -> latents (F, 4, H/8, W/8) float32 (posterior mean, scaled)."""
        out = []
        for chunk in frames.split(batch):
            posterior = self.vae.encode(chunk.to(self.device, self.vae.dtype)).latent_dist
            out.append(posterior.mean.float() * self.vae.config.scaling_factor)
        return torch.cat(out)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch: int = 8) -> torch.Tensor:
        """Latents (F, 4, h, w) -> frames (F, 3, H, W) float32 in [-1, 1] on the CPU."""
        out = []
        for chunk in latents.split(batch):
            image = self.vae.decode(chunk.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            out.append(image.float().clamp(-1, 1).cpu())
        return torch.cat(out)

    def invert(
        self,
        latents: torch.Tensor,
        source_prompt: str,
        steps: int,
        temporal: str = "full",
        aids: TemporalAids | None = None,
        control: Control | None = None,
    ) -> list[torch.Tensor]:
        """DDIM-invert latents (F, 4, h, w) under ``source_prompt`` (guidance 1), with the same
        spatio-temporal self-attention the edit uses (and its temporal ``aids``: flow-guided attention
        on every step, PnP features recorded; its ControlNet ``control``). Returns the trajectory
        (see ``ddim_invert``)."""
        timesteps, alphas, final = self._schedule(steps)
        cond = encode_prompt(self.text_encoder, self.tokenizer, source_prompt)
        if aids is not None:
            aids = TemporalAids(aids.trajectories, None, aids.features, "record", aids.pnp_steps)
        denoise = guided_denoise_fn(self.unet, cond, None, 1.0, latents.shape[0], temporal, aids=aids, control=control)
        with layout_processors(self.unet), self._progress(steps, "invert") as bar:
            return ddim_invert(denoise, latents, timesteps, alphas, final, progress=bar)

    @torch.no_grad()
    def __call__(
        self,
        frames: torch.Tensor,
        masks: torch.Tensor,
        prompt: str,
        region_prompts: list[str],
        source_prompt: str = "",
        negative_prompt: str = "",
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        modulation: ModulationSpec | None = ModulationSpec(),
        blend: bool = True,
        composite: bool = True,
        record_attention: bool | str = False,
        reatco: ReAtCoSpec | None = None,
        words: list[str | None] | None = None,
        window: WindowSpec | None = None,
        generator: torch.Generator | None = None,
        temporal_aids: TemporalAidsSpec | None = None,
        control_images: torch.Tensor | None = None,
        control_scale: float = 1.0,
    ) -> EditOutput:
        """Edit ``frames`` (F, 3, H, W) in [-1, 1] so that region r of ``masks`` (R, F, H, W) bool shows
        ``region_prompts[r]`` inside the scene described by ``prompt``.

        A region with an empty prompt is kept (latent blend preserves it) but still separates the
        others in self-attention. ``modulation=None`` turns VideoGrain's ST-Layout attention off (with
        ``reatco=None`` too: the plain inversion + target-prompt baseline). ``reatco`` adds ReAtCo's
        RAD guidance towards each region's word of interest (``words[r]``, None: its prompt's last
        word) and, with ``reatco.irjs``, IRJS in place of the latent blend (noise from ``generator``).
        ``window`` denoises overlapping temporal windows separately (averaged on overlaps).
        ``composite`` (with blend or IRJS): after decoding, pixels away from the edited regions are
        the source frames' (feathered over a margin of the VAE's factor), and so are kept regions
        (empty prompt) wherever no edited region covers them; the latent guarantee alone leaves the
        decoder's spill and its frame-wide normalisation on the unedited pixels.
        ``temporal_aids``: FLATTEN flow-guided attention (flow of ``frames``) and PnP injection.
        ``control_images`` (F, 3, H, W) in [0, 1]: ControlNet conditions (needs ``self.controlnet``).
        ``record_attention``: True records the cross-attention maps; "compare" also without modulation.
        """
        spans = self.check_inputs(frames, masks, prompt, region_prompts)
        control = self._control(control_images, control_scale)
        token_indices = word_token_indices(self.tokenizer, prompt, spans, words or [None] * len(spans))
        if reatco is not None:
            level = reatco.level if reatco.level is not None else rad_level(self.vae_factor, self.num_levels)
            if level >= self.num_levels:
                raise ValueError(f"reatco.level {level} does not exist: the UNet has levels 0..{self.num_levels - 1}")
        temporal = modulation.temporal if modulation is not None else "full"
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        latents = self.encode_frames(frames)
        timings["encode"] = time.perf_counter() - clock
        latent_size = tuple(latents.shape[-2:])
        masks = masks.to(self.device)
        text_length = self.tokenizer.model_max_length
        layout = build_layout(masks, spans, latent_size, self.num_levels, temporal, text_length)

        aids = self.temporal_aids(frames, latent_size, temporal_aids)
        clock = time.perf_counter()
        trajectory = self.invert(latents, source_prompt, num_inference_steps, temporal, aids, control)
        timings["invert"] = time.perf_counter() - clock

        clock = time.perf_counter()
        cond = regional_prompt_embeds(self.text_encoder, self.tokenizer, prompt, region_prompts, spans)
        uncond = encode_prompt(self.text_encoder, self.tokenizer, negative_prompt) if guidance_scale > 1 else None
        num_frames = frames.shape[0]
        windows = temporal_windows(num_frames, window.size, window.stride) if window else [slice(0, num_frames)]
        layouts = [layout] if len(windows) == 1 else [
            build_layout(masks[:, w], spans, latent_size, self.num_levels, temporal, text_length) for w in windows
        ]
        compare = record_attention == "compare"  # also the maps without modulation
        recorders = [
            AttentionRecorder(unmodulated=AttentionRecorder() if compare else None) if record_attention else None
            for _ in windows
        ]

        def window_denoise_fn(w: slice, window_layout: Layout, negative, recorder):
            return guided_denoise_fn(
                self.unet, cond, negative, guidance_scale, w.stop - w.start, temporal, window_layout, modulation,
                recorder, self.scheduler.config.num_train_timesteps, aids.frames(w),
                control.frames(w) if control is not None else None,
            )

        denoise = windowed_denoise_fn(
            [(w, window_denoise_fn(w, lay, uncond, rec)) for w, lay, rec in zip(windows, layouts, recorders)]
        )
        timesteps, alphas, final = self._schedule(num_inference_steps)
        edited_mask = blend_mask(masks, [bool(p.strip()) for p in region_prompts], latent_size)
        callback = None
        if reatco is not None and reatco.irjs:
            levels = noise_levels(timesteps, alphas, final)
            callback = invariant_region_sampling(latents, edited_mask, levels, generator)
        elif blend:
            callback = latent_blend(trajectory, edited_mask)
        guide, guidance = None, []
        if reatco is not None:
            regions = [r for r, index in enumerate(token_indices) if index is not None]
            rad_windows = []
            for w, window_layout in zip(windows, layouts):
                recorder = AttentionRecorder(level=level, keep_graph=True)
                attend = window_denoise_fn(w, window_layout, None, recorder)  # conditional branch only
                rad_windows.append(RadWindow(w, attend, recorder, window_layout.region_masks(level, regions)))
            alphas_rad = step_sizes(num_inference_steps, reatco.step_size)
            guide = rad_guide(rad_windows, [token_indices[r] for r in regions], alphas_rad, reatco, guidance)
        with layout_processors(self.unet), self._progress(num_inference_steps, "edit") as bar:
            edited_latents = ddim_sample(
                denoise, trajectory[0], timesteps, alphas, final, callback, progress=bar, guide=guide
            )
        timings["edit"] = time.perf_counter() - clock
        recorder = AttentionRecorder.merge(list(zip(windows, recorders)), num_frames) if record_attention else None

        clock = time.perf_counter()
        out = self.decode_latents(edited_latents)
        if composite and (blend or (reatco is not None and reatco.irjs)):
            edited = [bool(p.strip()) for p in region_prompts]
            weights = composite_weights(masks.cpu(), edited, self.vae_factor)
            out = weights * out + (1 - weights) * frames.float().cpu()
        timings["decode"] = time.perf_counter() - clock
        return EditOutput(out, edited_latents, timings, recorder, layout, guidance)

    def temporal_aids(
        self, frames: torch.Tensor, latent_size: tuple[int, int], spec: TemporalAidsSpec | None
    ) -> TemporalAids:
        """The runtime aids of an edit: FLATTEN trajectories from the optical flow of ``frames``
        (F, 3, H, W) at the chosen levels, and an empty PnP feature store to record into."""
        trajectories = features = None
        flow, pnp = (spec.flow, spec.pnp) if spec is not None else (None, None)
        if flow is not None:
            if max(flow.levels) >= self.num_levels:
                raise ValueError(f"temporal_aids.flow.levels {list(flow.levels)}: the UNet has levels 0..{self.num_levels - 1}")
            by_tokens = trajectories_for_levels(video_flow(frames), latent_size, max(flow.levels) + 1)
            chosen = {math.prod(token_grid(latent_size, level)) for level in flow.levels}
            trajectories = {n: t.to(self.device) for n, t in by_tokens.items() if n in chosen}
        if pnp is not None and pnp.steps > 0:
            features = FeatureStore()
        return TemporalAids(
            trajectories,
            flow.steps if flow is not None else None,
            features,
            "inject",
            pnp.steps if pnp is not None else 0,
        )

    @torch.no_grad()
    def reconstruct(
        self,
        frames: torch.Tensor,
        source_prompt: str = "",
        num_inference_steps: int = 50,
        temporal: str = "full",
        control_images: torch.Tensor | None = None,
        control_scale: float = 1.0,
    ) -> torch.Tensor:
        """Invert and re-sample under the source prompt with no edit: shows inversion fidelity.
        frames (F, 3, H, W) in [-1, 1] -> (F, 3, H, W) float32 in [-1, 1] on the CPU."""
        control = self._control(control_images, control_scale)
        latents = self.encode_frames(frames)
        trajectory = self.invert(latents, source_prompt, num_inference_steps, temporal, control=control)
        cond = encode_prompt(self.text_encoder, self.tokenizer, source_prompt)
        denoise = guided_denoise_fn(self.unet, cond, None, 1.0, frames.shape[0], temporal, control=control)
        timesteps, alphas, final = self._schedule(num_inference_steps)
        with layout_processors(self.unet), self._progress(num_inference_steps, "reconstruct") as bar:
            latents = ddim_sample(denoise, trajectory[0], timesteps, alphas, final, progress=bar)
        return self.decode_latents(latents)
