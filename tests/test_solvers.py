"""The flow samplers' solvers against an ODE with a known solution: each converges at the order it claims."""

from __future__ import annotations

import math

import pytest
import torch

from videograin.method.sampling import SOLVERS, DDIMSchedule, FlowSchedule, invert_latents, sample_latents
from videograin.testing import sd15_scheduler

T = 1000


def linear_field(latents: torch.Tensor, t: float, step: int) -> torch.Tensor:
    """dx/dσ = σ·x, so x(σ) = x(σ₀)·exp((σ² − σ₀²) / 2): an exact answer for every solver."""
    return (t / T) * latents


def exact(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    return x * math.exp((sigma_to**2 - sigma_from**2) / 2)


def errors(solver: str, steps_list=(8, 16, 32)) -> tuple[list[float], list[float]]:
    """(sampling error from σ = 1 to 0, inversion error from 0 to σ = 1) at each step count, float64."""
    x0 = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(2, 3, 2, 2)
    sampled, inverted = [], []
    for steps in steps_list:
        schedule = FlowSchedule.build(steps, num_train_timesteps=T)
        noise = exact(x0, 0.0, schedule.sigmas[0])
        out = sample_latents(linear_field, noise, schedule, solver=solver)
        sampled.append((out - x0).abs().max().item())
        trajectory = invert_latents(linear_field, x0, schedule, solver=solver)
        inverted.append((trajectory[0] - noise).abs().max().item())
    return sampled, inverted


@pytest.mark.parametrize("solver, order", [("euler", 1), ("midpoint", 2)])
def test_each_solver_converges_at_its_order_on_a_known_ode(solver, order):
    for errs in errors(solver):
        rates = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
        assert all(abs(rate - order) < 0.25 for rate in rates), (solver, errs, rates)


def test_midpoint_at_16_steps_beats_euler_at_32_on_the_known_ode():
    euler, midpoint = errors("euler", (32,)), errors("midpoint", (16,))
    assert midpoint[0][0] < euler[0][0] / 10 and midpoint[1][0] < euler[1][0] / 10


def test_the_solvers_name_their_model_evaluations_per_step():
    calls = []

    def counting(latents, t, step):
        calls.append(step)
        return linear_field(latents, t, step)

    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for solver, per_step in SOLVERS.items():
        calls.clear()
        sample_latents(counting, x, FlowSchedule.build(5), solver=solver)
        assert calls == [s for s in range(5) for _ in range(per_step)]  # each call names the step it serves


def test_ddim_solvers_converge_at_their_order_in_sigma():
    """DDIM's ODE dx̄/dσ = ε (x̄ = x/√ᾱ, σ = √((1 − ᾱ)/ᾱ)) with ε = k·x̄ has x̄(σ) = x̄(σ₀)·exp(k(σ − σ₀)):
    the denoiser reads ᾱ at its (possibly fractional) timestep off SD's training schedule, as the
    midpoint's half steps ask it to."""
    import numpy as np

    scheduler = sd15_scheduler()
    table = scheduler.alphas_cumprod.double().numpy()
    k = 0.02

    def field(latents, t, step):
        alpha = float(np.interp(t, np.arange(len(table)), table))
        return k * latents / alpha**0.5

    x0 = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(2, 1, 2, 2)
    found = {}
    for solver, order in (("euler", 1), ("midpoint", 2)):
        errs = found[solver] = []
        for steps in (50, 100, 200):  # SD's σ grid is far from even at the noisy end: the rate settles late
            schedule = DDIMSchedule.from_scheduler(scheduler, steps)
            sigma = [((1 - a) / a) ** 0.5 for a in schedule.alphas]
            start = x0 * schedule.alphas[0] ** 0.5
            out = sample_latents(field, start, schedule, solver=solver)
            want = x0 * math.exp(k * (sigma[-1] - sigma[0])) * schedule.alphas[-1] ** 0.5
            errs.append((out - want).abs().max().item())
        rates = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
        assert all(abs(rate - order) < 0.3 for rate in rates), (solver, errs, rates)
    assert all(m < e / 100 for m, e in zip(found["midpoint"], found["euler"]))
