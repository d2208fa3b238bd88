"""An edit's plan (stage 5's inputs, built by stages 1-4) and what the sampler needs from it: the guided
denoiser over the temporal windows, the step callback (latent blend or ReAtCo's IRJS) and ReAtCo's RAD
guide."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbones.base import Backbone
from .method.attention import KernelChoice
from .method.layout import Layout, blend_mask
from .method.reatco import RadWindow, invariant_region_sampling, rad_guide, step_sizes
from .method.recorder import AttentionRecorder
from .method.sampling import Callback, Guide, Schedule, latent_blend, windowed_denoise_fn
from .values import is_edited


@dataclass
class EditPlan:
    """What stage 5 needs, built by stages 1-4: text embeddings, windows (of latent frames) with their
    layouts and recorders, the schedule, the trajectory, the edited-region mask at latent resolution;
    its methods make the edit's denoiser, step callback and RAD guide from them."""

    backbone: Backbone
    cond: torch.Tensor
    uncond: torch.Tensor | None
    windows: list[slice]
    layouts: list[Layout]
    recorders: list[AttentionRecorder | None]
    schedule: Schedule
    trajectory: list[torch.Tensor]
    edited_mask: torch.Tensor
    aids: object
    control: object
    kernels: KernelChoice

    @classmethod
    def build(cls, backbone: Backbone, masks, spans, prompt, region_prompts, negative_prompt,
              guidance: tuple[float, float], schedule, windows, layout, latent_size, record_attention, trajectory,
              aids, control) -> EditPlan:
        """Text embeddings (the unconditional one when any ``guidance`` scale is above 1), temporal windows
        of latent frames (one layout and recorder each), schedule and blend mask."""
        cond = backbone.regional_prompt_embeds(prompt, region_prompts, spans)
        uncond = backbone.encode_prompt(negative_prompt) if max(guidance) > 1 else None
        layouts = [layout] if len(windows) == 1 else [layout.frames(w) for w in windows]
        compare = record_attention == "compare"  # also the maps without modulation
        recorders = [
            AttentionRecorder(unmodulated=AttentionRecorder() if compare else None) if record_attention else None
            for _ in windows
        ]
        edited_mask = blend_mask(backbone.latent_frames(masks), [is_edited(p) for p in region_prompts], latent_size)
        return cls(backbone, cond, uncond, windows, layouts, recorders, schedule, trajectory, edited_mask, aids,
                   control, KernelChoice())

    def window_denoise_fn(self, w: slice, layout: Layout, uncond, guidance: tuple[float, float | None], modulation,
                          temporal, recorder):
        """The backbone's denoiser for the latent frames ``w``; ``guidance``: (scale, the second expert's
        scale or None)."""
        second = {} if guidance[1] is None else {"guidance_scale_2": guidance[1]}  # two-expert models only
        return self.backbone.denoise_fn(
            self.cond, uncond, guidance[0], w.stop - w.start, self.schedule, temporal=temporal, layout=layout,
            modulation=modulation, recorder=recorder, aids=self.aids.frames(w) if self.aids is not None else None,
            control=self.control.frames(w) if self.control is not None else None, kernels=self.kernels, **second,
        )

    def denoise_fn(self, guidance: tuple[float, float | None], modulation, temporal):
        """The guided denoiser of the edit: one per temporal window, averaged where they overlap."""
        return windowed_denoise_fn([
            (w, self.window_denoise_fn(w, lay, self.uncond, guidance, modulation, temporal, rec))
            for w, lay, rec in zip(self.windows, self.layouts, self.recorders)
        ])

    def step_callback(self, latents, blend: bool, reatco, generator) -> Callback | None:
        """After each step: IRJS (ReAtCo) or the latent blend with the inversion trajectory, or nothing."""
        if reatco is not None and reatco.irjs:
            return invariant_region_sampling(latents, self.edited_mask, self.schedule, generator)
        if blend:
            return latent_blend(self.trajectory, self.edited_mask)
        return None

    def rad_guide(self, prompt, modulation, temporal, reatco, token_indices, log) -> Guide | None:
        """ReAtCo's RAD guidance on the conditional branch of each window, or None. The maps are those
        of ``reatco.level`` (None: the backbone's ``rad_levels``), averaged over heads and layers."""
        if reatco is None:
            return None
        levels = (reatco.level,) if reatco.level is not None else self.backbone.capabilities.rad_levels
        words = self.backbone.word_positions(prompt)
        regions = [r for r, index in enumerate(token_indices) if index is not None]
        rad_windows = []
        for w, window_layout in zip(self.windows, self.layouts):
            recorder = AttentionRecorder(levels=frozenset(levels), keep_graph=True)
            attend = self.window_denoise_fn(w, window_layout, None, (1.0, None), modulation, temporal, recorder)
            rad_windows.append(RadWindow(w, attend, recorder, window_layout.region_masks(levels[0], regions), words))
        alphas = step_sizes(len(self.schedule), reatco.step_size)
        return rad_guide(rad_windows, [token_indices[r] for r in regions], alphas, reatco, log)
