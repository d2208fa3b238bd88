"""DDIM sampling as a plain function, classifier-free guidance inside ``denoise_fn``, and callbacks.

A ``denoise_fn(latents, t, step) -> eps`` predicts the noise of latents (F, 4, h, w) at timestep t;
``step`` is the index of t in the sampling schedule (the processors learn the step from it). A
``guide(step, t, latents) -> latents`` moves the latents before they are denoised (ReAtCo's RAD); a
``callback(step, t, latents) -> latents`` runs after every step (latent blend, IRJS, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .attention import AttentionRecorder, FeatureStore, StepContext, residual_injection
from .control import Control
from .flow import Trajectories
from .layout import Layout
from .spec import ModulationSpec

DenoiseFn = Callable[[torch.Tensor, int, int], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], torch.Tensor]
Guide = Callback


def ddim_step(latents: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Move latents from noise level ᾱ=alpha_from to ᾱ=alpha_to along the DDIM (η=0) direction eps."""
    x0 = (latents - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


def noise_levels(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, final_alpha: float) -> list[float]:
    """ᾱ at each sampling timestep, then the clean end level: len(timesteps) + 1 floats."""
    return [float(alphas_cumprod[int(t)]) for t in timesteps] + [float(final_alpha)]


@torch.no_grad()
def ddim_sample(
    denoise_fn: DenoiseFn,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    final_alpha: float,
    callback: Callback | None = None,
    progress=None,
    guide: Guide | None = None,
) -> torch.Tensor:
    """Deterministic DDIM from the noise level of ``timesteps[0]`` to clean latents.

    latents: (F, 4, h, w); timesteps descending; progress: an optional tqdm-like bar (``update()``).
    """
    alphas = noise_levels(timesteps, alphas_cumprod, final_alpha)
    for step, t in enumerate(timesteps.tolist()):
        if guide is not None:
            latents = guide(step, t, latents)
        eps = denoise_fn(latents, t, step)
        latents = ddim_step(latents, eps, alphas[step], alphas[step + 1])
        if callback is not None:
            latents = callback(step, t, latents)
        if progress is not None:
            progress.update()
    return latents


def windowed_denoise_fn(windows: list[tuple[slice, DenoiseFn]]) -> DenoiseFn:
    """Temporal co-denoising: each (frames, denoise_fn) window predicts the noise of its frames and
    frames covered by several windows take the mean. As a DDIM step is linear in ε for fixed
    latents, this equals averaging the windows' next latents (papers/003's resource-friendly mode)."""

    def denoise(latents: torch.Tensor, t: int, step: int) -> torch.Tensor:
        total = torch.zeros_like(latents)
        count = torch.zeros(latents.shape[0], 1, 1, 1, dtype=latents.dtype, device=latents.device)
        for frames, denoise_fn in windows:
            total[frames] += denoise_fn(latents[frames], t, step)
            count[frames] += 1
        return total / count

    return denoise


def latent_blend(trajectory: list[torch.Tensor], mask: torch.Tensor) -> Callback:
    """Callback keeping latents outside ``mask`` on the inversion trajectory (papers/000 App. I).

    trajectory[i]: inverted latents at the noise level of sampling step i (the last entry clean);
    mask: (F, 1, h, w) in {0, 1}, 1 where the edit may change the video. After step i the latents sit
    at the level of trajectory[i + 1]: z ← M·z + (1 − M)·z̃.
    """

    def blend(step: int, t: int, latents: torch.Tensor) -> torch.Tensor:
        source = trajectory[step + 1].to(latents)
        return mask.to(latents) * latents + (1 - mask.to(latents)) * source

    return blend


def time_factor(t: int, num_train_timesteps: int) -> float:
    """ξ(t) = t̂⁵ with t̂ = t / (T − 1) in [0, 1] (papers/000 §4.1). The official code uses
    t̂ = (t − 1) / 1000, which differs by under 0.2% at every step."""
    return (t / (num_train_timesteps - 1)) ** 5


@dataclass(frozen=True)
class TemporalAids:
    """FLATTEN trajectories (by tokens per frame, the chosen levels only) used on steps below
    ``flow_steps`` (None: every step); PnP ``features`` recorded or injected (``features_mode``)
    on steps below ``pnp_steps``."""

    trajectories: dict[int, Trajectories] | None = None
    flow_steps: int | None = None
    features: FeatureStore | None = None
    features_mode: str = ""
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
        return TemporalAids(trajectories, self.flow_steps, features, self.features_mode, self.pnp_steps)


def guided_denoise_fn(
    unet,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance_scale: float,
    num_frames: int,
    temporal: str = "full",
    layout: Layout | None = None,
    modulation: ModulationSpec | None = None,
    recorder: AttentionRecorder | None = None,
    num_train_timesteps: int = 1000,
    aids: TemporalAids | None = None,
    control: Control | None = None,
) -> DenoiseFn:
    """ε-prediction with classifier-free guidance and the per-step StepContext for the processors.

    cond, uncond: (1, L, D) text embeddings shared by all frames (uncond None: no guidance).
    Modulation is on for the first ``modulation.steps`` steps when a layout and modulation are given.
    ``control``: ControlNet residuals added to the UNet on every step and branch.
    """
    aids = aids or TemporalAids()
    texts = [cond] if uncond is None else [uncond, cond]
    encoder_states = torch.cat([x.expand(num_frames, -1, -1) for x in texts])
    levels = None
    if modulation is not None and modulation.levels != "all":
        levels = frozenset(modulation.levels)

    def denoise(latents: torch.Tensor, t: int, step: int) -> torch.Tensor:
        active = layout is not None and modulation is not None and step < modulation.steps
        xi = time_factor(t, num_train_timesteps) if active else 0.0
        ctx = StepContext(
            num_frames=num_frames,
            temporal=temporal,
            layout=layout,
            cond_branch=len(texts) - 1,
            self_strength=modulation.self_strength * xi if active else 0.0,
            cross_strength=modulation.cross_strength * xi if active else 0.0,
            levels=levels,
            step=step,
            recorder=recorder,
            trajectories=aids.trajectories if aids.flow_steps is None or step < aids.flow_steps else None,
            features=aids.features if step < aids.pnp_steps else None,
            features_mode=aids.features_mode,
        )
        model_in = torch.cat([latents] * len(texts)).to(unet.dtype)
        states = encoder_states.to(unet.dtype)
        down, mid = control.residuals(model_in, t, states) if control is not None else (None, None)
        with residual_injection(unet, ctx):
            eps = unet(
                model_in, t, encoder_hidden_states=states, cross_attention_kwargs={"videograin": ctx},
                down_block_additional_residuals=down, mid_block_additional_residual=mid,
            ).sample.to(latents.dtype)
        if uncond is None:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    return denoise
