"""The pipeline's inversion: the source's latents inverted under the source prompt with the edit's
attention, aids, control and windows (``invert``), read from and kept in an inversion cache, and
``reconstruct`` (invert then re-sample, no edit: inversion fidelity)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from . import formats, values
from .backbones.base import check_settings
from .inversion_cache import InversionCache, inversion_key, weights_fingerprint
from .method.layout import TemporalKeys, temporal_keys
from .method.sampling import SOLVERS, Schedule, invert_latents, sample_latents, windowed_denoise_fn
from .method.settings import Modulation, TemporalAidSettings

logger = logging.getLogger(__name__)


class InversionMixin:
    """``invert`` and ``reconstruct`` of a VideoGrain pipeline (``BaseVideoGrainPipeline`` holds the
    backbone, the progress bars and the input formats they use)."""

    def invert(
        self,
        latents: torch.Tensor,
        source_prompt: str,
        steps: int,
        temporal: TemporalKeys = TemporalKeys(),
        aids=None,
        control=None,
        schedule: Schedule | None = None,
        callback: Callable | None = None,
        solver: str = "euler",
        windows: list[slice] | None = None,
    ) -> list[torch.Tensor]:
        """Invert latents (T, C, h, w) on the backbone's schedule (DDIM, or ``solver`` on the flow) under
        ``source_prompt`` (guidance 1), with the same spatio-temporal self-attention the edit uses
        (and its temporal ``aids``: flow-guided attention on every step, PnP features recorded; its
        structure ``control``) and its temporal ``windows`` (None: one; with PnP always one, its
        features are recorded for the whole clip). ``schedule``: the edit's, when it has one (else
        built for ``steps``). ``callback(pipe, step, t)`` runs after every step; ``pipe._interrupt =
        True`` stops the inversion early. Returns the trajectory (see ``invert_latents``)."""
        backbone = self.backbone
        schedule = schedule if schedule is not None else backbone.schedule(steps)
        cond = backbone.encode_prompt(source_prompt)
        aids = aids.for_inversion() if aids is not None else None
        if windows is None or (aids is not None and aids.features is not None):
            windows = [slice(0, latents.shape[0])]
        denoise = windowed_denoise_fn([
            (w, backbone.denoise_fn(cond, None, 1.0, w.stop - w.start, schedule, temporal=temporal,
                                    aids=aids.frames(w) if aids is not None and len(windows) > 1 else aids,
                                    control=control.frames(w) if control is not None else None))
            for w in windows
        ])
        with backbone.attention_processors(), self._progress(steps, "invert", len(latents)) as bar:
            return invert_latents(denoise, latents, schedule, progress=bar, interrupt=lambda: self.interrupt,
                                  on_step=None if callback is None else lambda step, t: callback(self, step, t),
                                  solver=solver)

    def _cached_inversion(self, cache: InversionCache | None, latents, source_prompt: str, steps: int, temporal, aids,
                          control, schedule: Schedule, callback, solver: str, control_inputs: tuple,
                          aid_settings: TemporalAidSettings | None, windows: list[slice]) -> list[torch.Tensor]:
        """``invert``, read from ``cache`` when it holds this inversion and stored there otherwise
        (``control_inputs``: the condition images as [0, 1] floats and their scale). Not cached with PnP,
        whose features the inversion records."""
        if cache is None or (aid_settings is not None and aid_settings.pnp is not None):
            return self.invert(latents, source_prompt, steps, temporal, aids, control, schedule, callback, solver, windows)
        modules = {name: weights_fingerprint(module) for name, module in self.components.items()
                   if isinstance(module, torch.nn.Module)}
        key = inversion_key(weights=modules, latents=latents, source_prompt=source_prompt, solver=solver,
                            temporal=temporal, windows=windows, control=control_inputs, flow=aid_settings,
                            timesteps=schedule.timesteps,
                            levels=[schedule.signal_noise(i) for i in range(len(schedule) + 1)])
        trajectory = cache.load(key, tuple(latents.shape), len(schedule) + 1)
        if trajectory is not None:
            logger.info("inversion: read from the cache (%s)", cache.folder)
            # in the source latents' memory layout (the VAE's may be channels-last), so the edit runs as on a fresh one
            return [torch.empty_like(latents).copy_(entry) for entry in trajectory]
        trajectory = self.invert(latents, source_prompt, steps, temporal, aids, control, schedule, callback, solver,
                                 windows)
        if len(trajectory) == len(schedule) + 1:  # not interrupted
            cache.store(key, trajectory)
        return trajectory

    @torch.no_grad()
    def reconstruct(
        self,
        video,
        source_prompt: str = "",
        num_inference_steps: int | None = None,
        temporal: str = "auto",
        control_images=None,
        control_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        solver: str | None = None,
    ):
        """Invert and re-sample under the source prompt with no edit: shows inversion fidelity. Takes
        ``video`` (and ``control_images``) as ``__call__`` does; returns the frames in ``output_type``
        (a batch of one video, "latent" excepted). ``num_inference_steps`` and ``solver`` None: the
        recommended."""
        if output_type not in formats.OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {', '.join(formats.OUTPUT_TYPES)}")
        if solver is not None:
            values.choice(solver, "solver", tuple(SOLVERS))
        num_inference_steps = num_inference_steps if num_inference_steps is not None else self.recommended.steps
        solver = solver if solver is not None else self.recommended.solver
        frames = self.prepare_video(video, height, width) * 2 - 1
        backbone = self.backbone
        settings = Modulation(temporal=temporal)
        check_settings(self.capabilities, num_frames=frames.shape[0], modulation=settings,
                       control=control_images is not None, solver=solver)
        backbone.check_size(*frames.shape[:1], *frames.shape[-2:])
        control = self._control(control_images, control_scale, (frames.shape[-1], frames.shape[-2]))
        latents = self.encode_frames(frames)
        temporal = temporal_keys(settings, len(latents), self.capabilities.temporal_modes)
        schedule = backbone.schedule(num_inference_steps)
        trajectory = self.invert(latents, source_prompt, num_inference_steps, temporal, control=control,
                                 schedule=schedule, solver=solver)
        cond = backbone.encode_prompt(source_prompt)
        denoise = backbone.denoise_fn(cond, None, 1.0, len(latents), schedule, temporal=temporal, control=control)
        with backbone.attention_processors(), self._progress(num_inference_steps, "reconstruct", len(latents)) as bar:
            latents = sample_latents(denoise, trajectory[0], schedule, progress=bar, solver=solver)
        self.maybe_free_model_hooks()
        if output_type == "latent":
            return latents.unsqueeze(0)
        return formats.postprocess(self.decode_latents(latents), output_type)
