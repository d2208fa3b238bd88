"""The model contract's sampling side: schedules, samplers as plain functions, and the callbacks and
wrappers the method adds (latent blend, temporal windows).

A ``Denoiser`` ``(latents, t, step) -> prediction`` is a backbone's guided model call on latents
(T, C, h, w) at the model's time input t; ``step`` is the index of the sampling step it serves (the
modulation schedule and the attention processors learn the step from it, never by counting calls).
The prediction is in its ``Schedule``'s parameterisation (``schedule.prediction``: ε for DDIM,
velocity for flow matching); only the schedule converts it, so nothing above ``backbones/`` knows
which one a model predicts. A schedule moves latents between its levels (``step``, ``invert_step``),
says what level i is (``signal_noise``), re-noises a clean sample to level i (``noised``) and gives
ξ for the modulation (``time_factor``). Samplers call the denoiser any number of times per step.
A ``guide(step, t, latents) -> latents`` moves the latents before they are denoised (ReAtCo's RAD); a
``callback(step, t, latents) -> latents`` runs after every step (latent blend, IRJS, ...).

Solvers (``SOLVERS``; the model evaluations per step in brackets): ``euler`` (1) is one step along the
prediction at the step's start (DDIM on ε; Euler on the velocity), first order; ``midpoint`` (2) is the
explicit midpoint method: a half step along the start's prediction, then the whole step along the
prediction there, second order (DDIM's in σ = √((1 − ᾱ)/ᾱ), see ``DDIMSchedule``). It is RF-Solver's
second-order Taylor step (Wang et al., ICML 2025: x + h·v + h²/2·dv/dσ with the derivative from the half
step is x + h·v_mid) and the step FireFlow (Deng et al., 2024) makes cheaper by reusing the midpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Denoiser(Protocol):
    def __call__(self, latents: torch.Tensor, t: float, step: int) -> torch.Tensor:
        """The model's prediction (``Schedule.prediction``) for latents (T, C, h, w) at time input t."""


Callback = Callable[[int, int, torch.Tensor], torch.Tensor]
Guide = Callback
#: the samplers' step rules (module docstring), with the model evaluations each makes per step
SOLVERS = {"euler": 1, "midpoint": 2}


class Schedule(Protocol):
    """What samplers, the latent blend, IRJS and windows know of a noise schedule. Levels 0..S: level i
    is where sampling step i starts (timesteps[i]); level S is the clean end."""

    #: what a denoiser on this schedule predicts: "epsilon" or "velocity"
    prediction: str
    #: (S,) the model's time input of each sampling step, descending
    timesteps: torch.Tensor

    def __len__(self) -> int: ...

    def time_factor(self, t: float) -> float:
        """ξ(t) in [0, 1], the modulation's time factor at time input t."""

    def signal_noise(self, level: int) -> tuple[float, float]:
        """(a, b) with latents at ``level`` = a·x₀ + b·ε."""

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, level: int) -> torch.Tensor:
        """``clean`` re-noised to ``level`` with ``noise``; the clean end level returns ``clean`` itself."""

    def step(self, latents: torch.Tensor, prediction: torch.Tensor, i: int) -> torch.Tensor:
        """Level i -> level i + 1."""

    def invert_step(self, latents: torch.Tensor, prediction: torch.Tensor, i: int) -> torch.Tensor:
        """Level i + 1 -> level i."""

    def level_time(self, level: int) -> float:
        """The model's time input at ``level`` (the clean end's too): where the midpoint solver's
        inversion evaluates first."""

    def midpoint(self, latents: torch.Tensor, prediction: torch.Tensor, i: int,
                 inverting: bool = False) -> tuple[torch.Tensor, float]:
        """Half of step i along ``prediction`` from level i (i + 1 when ``inverting``): the latents and
        the model's time input there (the midpoint solver)."""


def _noised(schedule: Schedule, clean: torch.Tensor, noise: torch.Tensor, level: int) -> torch.Tensor:
    if level == len(schedule):
        return clean
    a, b = schedule.signal_noise(level)
    return a * clean + b * noise


@dataclass(frozen=True)
class DDIMSchedule:
    """One DDIM schedule, built once per edit and shared by inversion and sampling.

    timesteps: (S,) int64, descending; alphas: ᾱ at each timestep, then the clean end level (S + 1
    floats); num_train_timesteps: T of the model's training schedule (for ξ(t)); alphas_cumprod: ᾱ of
    every training timestep (the midpoint's level between two timesteps is read off it).

    DDIM is Euler's method in x̄ = x / √ᾱ against σ = √((1 − ᾱ) / ᾱ): dx̄/dσ = ε. The midpoint solver
    takes its half step there, at σ_mid = (σ_i + σ_{i+1}) / 2, and calls the model at the fractional
    timestep whose ᾱ is 1 / (1 + σ_mid²).
    """

    timesteps: torch.Tensor
    alphas: list[float]
    num_train_timesteps: int
    alphas_cumprod: tuple[float, ...] = ()
    prediction = "epsilon"

    @classmethod
    def from_scheduler(cls, scheduler, steps: int) -> DDIMSchedule:
        """The schedule of a diffusers DDIMScheduler (its timestep spacing, offset and final ᾱ)."""
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.clone()
        alphas = [float(scheduler.alphas_cumprod[int(t)]) for t in timesteps] + [float(scheduler.final_alpha_cumprod)]
        return cls(timesteps, alphas, scheduler.config.num_train_timesteps, tuple(scheduler.alphas_cumprod.tolist()))

    def __len__(self) -> int:
        return len(self.timesteps)

    def time_factor(self, t: int) -> float:
        """ξ(t) = t̂⁵ with t̂ = t / (T − 1) in [0, 1] (VideoGrain (arXiv:2502.17258) §4.1).
        The official code uses t̂ = (t − 1) / 1000, which differs by under 0.2% at every step."""
        return (t / (self.num_train_timesteps - 1)) ** 5

    def signal_noise(self, level: int) -> tuple[float, float]:
        alpha = self.alphas[level]
        return alpha**0.5, (1 - alpha) ** 0.5

    noised = _noised

    def step(self, latents: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        return ddim_step(latents, eps, self.alphas[i], self.alphas[i + 1])

    def invert_step(self, latents: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        return ddim_step(latents, eps, self.alphas[i + 1], self.alphas[i])

    def level_time(self, level: int) -> float:
        """The model's time input at ``level`` (the clean end: 0)."""
        return float(self.timesteps[level]) if level < len(self) else 0.0

    def midpoint(self, latents: torch.Tensor, eps: torch.Tensor, i: int,
                 inverting: bool = False) -> tuple[torch.Tensor, float]:
        """Half of step i along ``eps`` in σ (class docstring), from level i (from level i + 1 when
        ``inverting``): the latents there and the fractional timestep of their ᾱ."""
        sigma = sum(((1 - a) / a) ** 0.5 for a in self.alphas[i : i + 2]) / 2
        alpha = 1 / (1 + sigma**2)
        table = np.asarray(self.alphas_cumprod)  # descending in t
        t = float(np.interp(alpha, table[::-1], np.arange(len(table))[::-1]))
        return ddim_step(latents, eps, self.alphas[i + 1] if inverting else self.alphas[i], alpha), t


@dataclass(frozen=True)
class FlowSchedule:
    """A flow-matching (rectified flow) schedule: latents x_σ = (1 − σ)·x₀ + σ·ε, velocity v = ε − x₀.

    sigmas: S + 1 noise levels descending from 1 to 0, σ_i = shift·s / (1 + (shift − 1)·s) at
    s = 1 − i·(1 − 1/T)/S (the σ grid of diffusers' flow schedulers with ``flow_shift``), then 0; timesteps:
    (S,) the model's time input σ_i·T. One Euler step per level: x_{i+1} = x_i + (σ_{i+1} − σ_i)·v.
    """

    sigmas: tuple[float, ...]
    num_train_timesteps: int = 1000
    prediction = "velocity"

    @classmethod
    def build(cls, steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> FlowSchedule:
        s = [1 - i * (1 - 1 / num_train_timesteps) / steps for i in range(steps)]
        return cls(tuple(shift * x / (1 + (shift - 1) * x) for x in s) + (0.0,), num_train_timesteps)

    @property
    def timesteps(self) -> torch.Tensor:
        return torch.tensor(self.sigmas[:-1]) * self.num_train_timesteps

    def __len__(self) -> int:
        return len(self.sigmas) - 1

    def time_factor(self, t: float) -> float:
        """ξ = σ⁵ on the flow time (σ = t / T in [0, 1]), as t̂⁵ for DDIM."""
        return (t / self.num_train_timesteps) ** 5

    def signal_noise(self, level: int) -> tuple[float, float]:
        sigma = self.sigmas[level]
        return 1 - sigma, sigma

    noised = _noised

    def step(self, latents: torch.Tensor, velocity: torch.Tensor, i: int) -> torch.Tensor:
        return latents + (self.sigmas[i + 1] - self.sigmas[i]) * velocity

    def invert_step(self, latents: torch.Tensor, velocity: torch.Tensor, i: int) -> torch.Tensor:
        return latents + (self.sigmas[i] - self.sigmas[i + 1]) * velocity

    def level_time(self, level: int) -> float:
        """The model's time input at ``level`` (σ·T; 0 at the clean end)."""
        return self.sigmas[level] * self.num_train_timesteps

    def midpoint(self, latents: torch.Tensor, velocity: torch.Tensor, i: int,
                 inverting: bool = False) -> tuple[torch.Tensor, float]:
        """Half of step i along ``velocity``, from level i (from level i + 1 when ``inverting``): the
        latents at σ = (σ_i + σ_{i+1}) / 2 and the model's time input there."""
        sigma = (self.sigmas[i] + self.sigmas[i + 1]) / 2
        start = self.sigmas[i + 1] if inverting else self.sigmas[i]
        return latents + (sigma - start) * velocity, sigma * self.num_train_timesteps


def ddim_step(latents: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Move latents from noise level ᾱ=alpha_from to ᾱ=alpha_to along the DDIM (η=0) direction eps."""
    x0 = (latents - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


@torch.no_grad()
def sample_latents(
    denoise_fn: Denoiser,
    latents: torch.Tensor,
    schedule: Schedule,
    callback: Callback | None = None,
    progress=None,
    guide: Guide | None = None,
    interrupt: Callable[[], bool] | None = None,
    solver: str = "euler",
) -> torch.Tensor:
    """Deterministic sampling (DDIM, or Euler or the midpoint method on the velocity: ``solver``) from
    the noise level of the schedule's first timestep to clean latents.

    latents: (F, C, h, w); progress: an optional tqdm-like bar (``update()``); ``interrupt()`` true
    before a step: stop there and return the latents reached.
    """
    for step, t in enumerate(schedule.timesteps.tolist()):
        if interrupt is not None and interrupt():
            break
        if guide is not None:
            latents = guide(step, t, latents)
        prediction = denoise_fn(latents, t, step)
        if solver == "midpoint":
            half, t_half = schedule.midpoint(latents, prediction, step)
            prediction = denoise_fn(half, t_half, step)
        latents = schedule.step(latents, prediction, step)
        if callback is not None:
            latents = callback(step, t, latents)
        if progress is not None:
            progress.update()
    return latents


@torch.no_grad()
def invert_latents(denoise_fn: Denoiser, latents: torch.Tensor, schedule: Schedule, progress=None,
                interrupt: Callable[[], bool] | None = None,
                on_step: Callable[[int, int], None] | None = None, solver: str = "euler") -> list[torch.Tensor]:
    """Run the sampler backwards from clean latents (F, C, h, w) to the level of the first timestep.

    Inversion walks the (descending) schedule in reverse. ``euler``: each step predicts ε (or v) at the
    next, noisier timestep from the current latents (the usual approximation); ``midpoint``: the
    midpoint method backwards in time (the velocity at the current level, then at the half step).
    Returns the trajectory: entry i holds the
    latents at the noise level of ``schedule.timesteps[i]`` and the last entry the clean input, so
    ``sample_latents`` from entry 0 retraces it. ``interrupt()`` true before a step: stop there (the
    trajectory is then shorter than ``len(schedule) + 1``). ``on_step(i, t)`` runs after the i-th
    inversion step (i from 0), which reached the noise level of timestep t.
    """
    trajectory = [latents]
    for step in reversed(range(len(schedule))):
        if interrupt is not None and interrupt():
            break
        t = schedule.timesteps[step].item()
        if solver == "midpoint":
            half, t_half = schedule.midpoint(latents, denoise_fn(latents, schedule.level_time(step + 1), step), step,
                                             inverting=True)
            prediction = denoise_fn(half, t_half, step)
        else:
            prediction = denoise_fn(latents, t, step)
        latents = schedule.invert_step(latents, prediction, step)
        trajectory.append(latents)
        if on_step is not None:
            on_step(len(trajectory) - 2, t)
        if progress is not None:
            progress.update()
    return trajectory[::-1]


def latent_blend(trajectory: list[torch.Tensor], mask: torch.Tensor) -> Callback:
    """Callback keeping latents outside ``mask`` on the inversion trajectory (VideoGrain
    (arXiv:2502.17258) App. I).

    trajectory[i]: inverted latents at the noise level of sampling step i (the last entry clean);
    mask: (F, 1, h, w) in {0, 1}, 1 where the edit may change the video. After step i the latents sit
    at the level of trajectory[i + 1]: z ← M·z + (1 − M)·z̃.
    """

    def blend(step: int, t: int, latents: torch.Tensor) -> torch.Tensor:
        source = trajectory[step + 1].to(latents)
        return mask.to(latents) * latents + (1 - mask.to(latents)) * source

    return blend


def temporal_windows(num_frames: int, size: int, stride: int) -> list[slice]:
    """Overlapping windows of ``size`` frames every ``stride`` frames covering all frames: the last
    window ends at the last frame (the official split drops the frames a stride does not reach).
    One window of all frames when ``size >= num_frames``."""
    if size >= num_frames:
        return [slice(0, num_frames)]
    starts = list(range(0, num_frames - size + 1, stride))
    if starts[-1] + size < num_frames:
        starts.append(num_frames - size)
    return [slice(s, s + size) for s in starts]


def windowed_denoise_fn(windows: list[tuple[slice, Denoiser]]) -> Denoiser:
    """Temporal co-denoising: each (frames, denoise_fn) window predicts the noise of its frames and
    frames covered by several windows take the mean. As a DDIM step is linear in ε for fixed
    latents, this equals averaging the windows' next latents (ReAtCo (arXiv:2412.11710): its
    resource-friendly mode)."""

    def denoise(latents: torch.Tensor, t: int, step: int) -> torch.Tensor:
        total = torch.zeros_like(latents)
        count = torch.zeros(latents.shape[0], 1, 1, 1, dtype=latents.dtype, device=latents.device)
        for frames, denoise_fn in windows:
            total[frames] += denoise_fn(latents[frames], t, step)
            count[frames] += 1
        return total / count

    return denoise
