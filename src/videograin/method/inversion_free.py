"""Inversion-free editing on flow-matching models: FlowEdit's ODE between the source and target
distributions, with the edit's layout-modulated target velocity.

FlowEdit (Kulikov, Kleiner, Huberman-Spiegelglas, Michaeli, ICCV 2025, arXiv:2412.08629) edits without
inverting the source, so Euler's inversion drift never enters; FlowDirector (2025) and WANAlign2.1 run it
on Wan 2.1. With x^src the source latents, σ_i the schedule's levels (1 -> 0), v the model's guided
velocity and Z the edited clean latents (Z = x^src before the first step), each step i from the start
level n on draws K noises ε_k (seeded) and moves Z along the difference of the velocities at noisy
copies of the source and of Z that share that noise:

    z^src_k = (1 − σ_i)·x^src + σ_i·ε_k           the source noised to the step's level
    z^tar_k = z^src_k + (Z − x^src)               the target follows the source's displacement
    ΔV      = 1/K · Σ_k [ v_tar(z^tar_k, σ_i) − v_src(z^src_k, σ_i) ]
    Z      <- Z + (σ_{i+1} − σ_i)·ΔV

Steps before n (the noisiest) are skipped, as FlowEdit's n_max: the larger the skipped share, the closer
the edit stays to the source's layout. v_tar is the edit's denoiser (target prompt with its regional
embeddings, ST-Layout modulation, guidance), v_src the source prompt's (its own guidance). When both
are the same function, ΔV = 0 and Z stays x^src exactly.

The latent blend keeps Z = x^src outside the edited regions, which is z^tar = z^src there: the source
noised with the same noise the step drew (the papers' blend, with this method's trajectory).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .sampling import Callback, Denoiser, FlowSchedule


def start_step(steps: int, skip: float) -> int:
    """The first step run when the noisiest ``skip`` share of ``steps`` is skipped."""
    return min(steps - 1, round(skip * steps))


@torch.no_grad()
def inversion_free_latents(
    source_fn: Denoiser,
    target_fn: Denoiser,
    source: torch.Tensor,
    schedule: FlowSchedule,
    skip: float,
    noise: Callable[[], torch.Tensor],
    draws: int = 1,
    callback: Callback | None = None,
    progress=None,
    interrupt: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """FlowEdit's edited latents (module docstring) from clean ``source`` latents (T, C, h, w).

    ``noise()`` draws one ε like ``source`` (seeded by the caller); ``callback(step, t, Z)`` runs after
    every step (the latent blend); ``progress`` is updated once per step run; ``interrupt()`` true
    before a step: stop there and return Z as it is.
    """
    edited = source.clone()
    first = start_step(len(schedule), skip)
    for step in range(first, len(schedule)):
        if interrupt is not None and interrupt():
            break
        t = float(schedule.timesteps[step])
        a, b = schedule.signal_noise(step)
        delta = torch.zeros_like(source)
        for _ in range(draws):
            noisy_source = a * source + b * noise()
            noisy_target = noisy_source + (edited - source)
            delta += target_fn(noisy_target, t, step) - source_fn(noisy_source, t, step)
        edited = schedule.step(edited, delta / draws, step)
        if callback is not None:
            edited = callback(step, t, edited)
        if progress is not None:
            progress.update()
    return edited
