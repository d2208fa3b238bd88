"""DDIM inversion: clean latents -> noise, keeping the whole trajectory for latent blending."""

from __future__ import annotations

import torch

from .sampling import DenoiseFn, ddim_step, noise_levels


@torch.no_grad()
def ddim_invert(
    denoise_fn: DenoiseFn,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    final_alpha: float,
    progress=None,
) -> list[torch.Tensor]:
    """Run DDIM backwards from clean latents (F, 4, h, w) to the level of ``timesteps[0]``.

    ``timesteps`` is the (descending) sampling schedule; inversion walks it in reverse, predicting
    ε at the next, noisier timestep from the current latents (the usual approximation). Returns the
    trajectory: entry i holds the latents at the noise level of ``timesteps[i]`` and the last entry
    the clean input, so ``ddim_sample`` from entry 0 retraces it.
    """
    alphas = noise_levels(timesteps, alphas_cumprod, final_alpha)
    trajectory = [latents]
    for step in reversed(range(len(timesteps))):
        t = int(timesteps[step])
        eps = denoise_fn(latents, t, step)
        latents = ddim_step(latents, eps, alphas[step + 1], alphas[step])
        trajectory.append(latents)
        if progress is not None:
            progress.update()
    return trajectory[::-1]
