"""Flow-matching sampling and inversion (the Wan backbone's samplers): the σ grid against diffusers'
flow schedulers, and Euler sampling / inversion against exact solutions of the probability-flow ODE."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from videograin.method.sampling import FlowSchedule, invert_latents, latent_blend, sample_latents


@pytest.mark.parametrize(("steps", "shift"), [(5, 3.0), (25, 5.0), (8, 1.0)])
def test_sigmas_are_those_of_diffusers_flow_schedulers_with_the_same_shift(steps, shift):
    reference = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    reference.set_timesteps(steps)
    schedule = FlowSchedule.build(steps, shift)
    torch.testing.assert_close(torch.tensor(schedule.sigmas, dtype=torch.float32), reference.sigmas.float(), rtol=0, atol=2e-6)  # theirs: σ₀ − 1e-6
    assert len(schedule) == steps and schedule.timesteps[0] == 1000
    assert schedule.time_factor(float(schedule.timesteps[0])) == 1.0


def test_on_a_straight_path_euler_is_exact_both_ways():
    """With the velocity of one data point and one noise (v = ε − x₀ everywhere), sampling from ε lands
    on x₀ and inversion from x₀ walks the line x_σ = (1 − σ)x₀ + σε, whatever the grid."""
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    schedule = FlowSchedule.build(7, shift=3.0)
    torch.testing.assert_close(sample_latents(lambda x, t, i: eps - x0, eps, schedule), x0, rtol=0, atol=1e-5)
    trajectory = invert_latents(lambda x, t, i: eps - x0, x0, schedule)
    assert len(trajectory) == len(schedule) + 1
    for latents, sigma in zip(trajectory, schedule.sigmas):
        torch.testing.assert_close(latents, (1 - sigma) * x0 + sigma * eps, rtol=0, atol=1e-5)


def _gaussian_velocity(m: float, s: float):
    """The exact velocity E[ε − x₀ | x_σ = x] for data x₀ ~ N(m, s²) and noise ε ~ N(0, 1) per coordinate;
    its ODE carries noise z to x₀ = m + s·z along x_σ = (1 − σ)m + sqrt((1 − σ)²s² + σ²)·z."""
    def velocity(x, t, step):
        sigma = t / 1000
        a = 1 - sigma
        return (sigma - a * s * s) * (x - a * m) / (a * a * s * s + sigma * sigma) - m
    return velocity


def test_euler_inversion_and_sampling_converge_to_the_exact_ode_solution_at_first_order():
    """On a field with a known solution, inversion follows the exact trajectory and inversion followed
    by sampling returns the source, each with an error that halves when the steps double (Euler is
    first order), and is below 0.1 at 80 steps."""
    m, s = 0.7, 0.4
    velocity = _gaussian_velocity(m, s)
    z = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = m + s * z
    errors = []
    for steps in (20, 40, 80):
        schedule = FlowSchedule.build(steps, shift=3.0)
        trajectory = invert_latents(velocity, x0, schedule)
        exact = [(1 - g) * m + math.sqrt((1 - g) ** 2 * s * s + g * g) * z for g in schedule.sigmas]
        inversion = max(float((a - b).abs().max()) for a, b in zip(trajectory, exact))
        round_trip = float((sample_latents(velocity, trajectory[0], schedule) - x0).abs().max())
        errors.append((inversion, round_trip))
    for coarse, fine in zip(errors, errors[1:]):
        for a, b in zip(coarse, fine):
            assert 1.7 < a / b < 2.3, errors
    assert max(errors[-1]) < 0.1, errors


def test_the_latent_blend_pins_flow_latents_outside_the_mask_to_the_trajectory():
    velocity = _gaussian_velocity(0.2, 0.5)
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    schedule = FlowSchedule.build(6, shift=3.0)
    trajectory = invert_latents(velocity, x0, schedule)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1
    seen = []
    blend = latent_blend(trajectory, mask)

    def record(step, t, latents):
        latents = blend(step, t, latents)
        seen.append(latents)
        return latents

    out = sample_latents(lambda x, t, i: velocity(x, t, i) + 1.0, trajectory[0], schedule, record)  # another field
    for step, latents in enumerate(seen):
        torch.testing.assert_close(latents[..., 2:], trajectory[step + 1][..., 2:], rtol=0, atol=0)
    assert (out[..., :2] - x0[..., :2]).abs().min() > 0.1  # inside the mask the other field moved them
