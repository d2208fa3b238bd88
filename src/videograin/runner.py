"""Running an edit end to end: ``videograin.edit(config, out)`` is the library call the CLI makes.

Checks the config, the output and the model's config files before any weights load, runs the
pipeline, and writes the output folder (edited.mp4, frames/, source.mp4, masks_overlay.mp4,
comparison.gif/png, run.json, attention/ when recorded) through a temporary folder renamed on success.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import formats, loading, media, outputs, viz
from .config.overrides import shortcut_keys, with_overrides
from .config.parse import load_spec, resolve_model
from .config.preflight import notes as spec_notes
from .config.preflight import preflight
from .config.spec import EditSpec
from .errors import EditCancelled, SpecError, WeightsUnavailable
from .inputs import PromptedMasks, VideoInputs, inputs_of, load_inputs, read_condition_images
from .inversion_cache import InversionCache
from .loading import loading_bars, resolve_device
from .method.layout import composite_applies, composite_weights
from .method.tokens import region_token_spans
from .run_record import peak_memory, run_record, summary

logger = logging.getLogger("videograin")


def _control_inputs(spec: EditSpec, inputs: VideoInputs) -> tuple[np.ndarray | None, dict]:
    """The ControlNet conditions at the edit size, read or annotated from the frames, as uint8
    (F, H, W, 3) for viewing and as the pipeline's keyword arguments; (None, {}) without control."""
    if spec.control is None:
        return None, {}
    from .control import annotate

    if isinstance(spec.control.condition, Path):
        images = read_condition_images(spec.control.condition, spec.video, inputs.size)
    else:
        try:
            images = annotate(spec.control.condition, inputs.frames_uint8)
        except WeightsUnavailable as err:
            raise SpecError("control.condition", str(err), "give a folder or video of condition images instead") from None
    return images, {"control_images": images, "control_scale": spec.control.scale}


def _write_inputs(folder: Path, inputs: VideoInputs) -> np.ndarray:
    """Write source.mp4 and masks_overlay.mp4; return the overlay frames (F, H, W, 3) uint8."""
    media.write_video(folder / "source.mp4", inputs.frames_uint8, inputs.fps)
    overlay = viz.mask_overlay(inputs.frames_uint8, inputs.masks.numpy())
    media.write_video(folder / "masks_overlay.mp4", overlay, inputs.fps)
    return overlay


def _write_attention(folder: Path, spec: EditSpec, inputs: VideoInputs, recorder, backbone) -> None:
    """attention/<region>.mp4: each region prompt's cross-attention over the source (and
    <region>_unmodulated.mp4 without the modulation, when recorded); attention/grid.png. The maps are
    per latent frame; each source frame shows its latent frame's."""
    spans = region_token_spans(backbone.tokenizer, spec.prompt, [r.prompt for r in spec.regions])
    size, frame_index = tuple(inputs.frames.shape[-2:]), backbone.capabilities.latent_frame_of(inputs.frames.shape[0]).numpy()
    heat = viz.prompt_attention(recorder, spans, size)[:, frame_index]
    plain = None
    if recorder.unmodulated is not None:
        plain = viz.prompt_attention(recorder.unmodulated, spans, size)[:, frame_index]
    (folder / "attention").mkdir()
    rows, labels = [inputs.frames_uint8], ["source"]
    for r, (region, span) in enumerate(zip(spec.regions, spans)):
        if span is None:
            continue
        rows.append(viz.heatmap_overlay(inputs.frames_uint8, heat[r]))
        labels.append(f'"{region.prompt}"')
        media.write_video(folder / "attention" / f"{region.name}.mp4", rows[-1], inputs.fps)
        if plain is not None:  # the row below: the same maps without the layout modulation
            rows.append(viz.heatmap_overlay(inputs.frames_uint8, plain[r]))
            labels.append(f'"{region.prompt}", unmodulated')
            media.write_video(folder / "attention" / f"{region.name}_unmodulated.mp4", rows[-1], inputs.fps)
    legend = [("cross-attention of each region prompt's words: blue low, red high", np.array([200, 40, 40]))]
    media.write_png(folder / "attention" / "grid.png", viz.labelled_grid(rows, labels, legend))


def edit(
    spec: EditSpec | str | Path,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    model: str | None = None,
    device: str | None = None,
    command: str = "edit",
    reconstruct: bool = False,
    evaluate: bool = False,
    clip: str | None = None,
    progress: bool = True,
    argv: list[str] | None = None,
    pipelines: dict | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
    cancel: threading.Event | None = None,
    inversion_cache: InversionCache | None = None,
    **overrides,
) -> dict:
    """Run the edit a config describes and write its output folder; returns the folder's run.json record.

    ``spec``: an EditSpec or the path of a YAML config. ``out`` (default: the config's ``output``), its
    ``overwrite`` and the inputs are checked, then the model's config files (``model``: another hub id
    or folder), all before any weights load; an input error is a SpecError naming the field.
    ``command`` "reconstruct" only inverts and re-samples (inversion fidelity); ``reconstruct`` adds
    that to an edit. ``evaluate`` adds the metrics to run.json (CLIP model ``clip``). ``progress``:
    progress bars. ``argv`` is recorded. ``pipelines``: a dict kept by the caller across edits (a batch):
    a loaded pipeline is reused for the next edit of the same model and device. ``on_step(stage, done,
    total)`` follows the run step by step (stage "invert" or "edit"; a web app's progress bar).
    ``cancel``: once set (from another thread), the run stops at its next step and raises
    EditCancelled, with nothing written. ``inversion_cache``: where the source's inversion is reused
    from and kept (a batch's, the app's). ``overrides``: config values by
    ``config.overrides.SHORTCUTS`` name, such as ``seed=3``.
    """
    started = time.perf_counter()
    config = Path(spec) if isinstance(spec, (str, Path)) else None
    spec = load_spec(config) if config is not None else spec
    spec = with_overrides(spec, shortcut_keys(overrides))
    if model is not None:
        spec = dataclasses.replace(spec, model=resolve_model(model, Path.cwd()))
    if out is not None:
        if not str(out).strip():
            raise SpecError("--out", "is empty (an unset shell variable?)", "give an output folder, e.g. --out out/run")
        spec = dataclasses.replace(spec, output=Path(out).resolve())
    if spec.output is None:
        raise SpecError("output", "no output folder given", "set `output:` in the config or pass --out DIR")
    device = resolve_device(device)
    if command not in ("edit", "reconstruct"):
        raise ValueError(f"command must be 'edit' or 'reconstruct', got {command!r}")
    run = _Run(spec, device, overwrite, command, reconstruct, evaluate, clip, progress, argv, pipelines, on_step, cancel,
               inversion_cache)
    with outputs.locked_output(spec.output, overwrite, inputs_of(spec, config)):
        record = run.execute(started)
    logger.info("%s", summary(spec.output, record))
    return record


@dataclass
class _Run:
    """One edit's settings between the checks and the written folder."""

    spec: EditSpec
    device: str
    overwrite: bool
    command: str
    reconstruct: bool
    evaluate: bool
    clip: str | None
    progress: bool
    argv: list[str] | None
    pipelines: dict | None = None
    on_step: Callable[[str, int, int], None] | None = None
    cancel: threading.Event | None = None
    inversion_cache: InversionCache | None = None

    def execute(self, started: float) -> dict:
        spec, facts = preflight(self.spec)  # the model's recommended settings fill what the config leaves unset
        self.spec = spec
        prompted = PromptedMasks(spec, self.device, self.progress)
        inputs = load_inputs(spec, facts.size_multiple, prompted)
        outputs.check_free_space(spec.output, inputs.frames.shape[0], inputs.size)
        for note in spec_notes(spec, facts.capabilities):
            logger.info("note: %s", note)
            inputs.notes.append(note)
        control_uint8, control = _control_inputs(spec, inputs)
        key = (str(spec.model), spec.model_config, str(spec.control.model) if spec.control else None, spec.lora,
               self.device)
        pipe = (self.pipelines or {}).get(key)
        if pipe is None:
            with loading_bars(self.progress):
                pipe = loading.load_pipeline(spec, self.device)
            if self.pipelines is not None:
                self.pipelines[key] = pipe
        pipe.set_progress_bar_config(disable=not self.progress)
        timings = {"load": time.perf_counter() - started}
        self._check_cancel()
        with outputs.output_folder(spec.output, self.overwrite) as folder:
            torch.manual_seed(spec.edit.seed)
            record = run_record(spec.to_dict(), self.command, pipe, self.device, inputs, self.argv)
            record["seed"] = spec.edit.seed
            overlay = _write_inputs(folder, inputs)
            prompted.write(folder, inputs.fps)
            if prompted.record is not None:
                record["masks"] = {k: prompted.record.get(k) for k in ("engine", "model", "prompts", "seconds")}
            if control_uint8 is not None:
                media.write_video(folder / "control.mp4", control_uint8, inputs.fps)
            if self.reconstruct or self.command == "reconstruct":
                _reconstruct(spec, pipe, inputs, control, folder, record, timings)
            if self.command == "edit":
                self._check_cancel()
                self._edit(pipe, inputs, control, overlay, folder, record, timings)
            timings["total"] = time.perf_counter() - started
            record.update(timings={k: round(v, 3) for k, v in timings.items()}, **peak_memory(self.device))
            media.write_json(folder / "run.json", record)
        return record

    def _edit(self, pipe, inputs: VideoInputs, control: dict, overlay: np.ndarray, folder: Path, record: dict,
              timings: dict) -> None:
        """The edit itself and its outputs (edited.mp4, frames/, comparison.gif/png, attention/), into
        ``folder``; ``record`` and ``timings`` gain its results."""
        spec, settings = self.spec, self.spec.edit
        result = pipe(
            inputs.frames_uint8,
            inputs.masks,
            spec.prompt,
            [r.prompt for r in spec.regions],
            source_prompt=spec.source_prompt,
            negative_prompt=spec.negative_prompt,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            guidance_scale_2=settings.guidance_scale_2,
            modulation=settings.modulation if settings.uses_videograin else None,
            blend=settings.blend,
            composite=settings.composite,
            record_attention=settings.record_attention or self.evaluate,
            reatco=settings.reatco if settings.uses_reatco else None,
            words=[r.word for r in spec.regions],
            window=settings.window,
            generator=torch.Generator().manual_seed(settings.seed),
            temporal_aids=settings.temporal_aids,
            solver=settings.solver,
            inversion=settings.inversion,
            inversion_free=settings.inversion_free,
            inversion_cache=self.inversion_cache,
            width=inputs.size[0],
            height=inputs.size[1],
            output_type="np",
            callback_on_invert_step=lambda pipe, step, t: self._step("invert", pipe, step),
            callback_on_step_end=lambda pipe, step, t, tensors: self._step("edit", pipe, step) or tensors,
            **control,
        )
        self._check_cancel()
        timings.update(result.timings)
        if settings.uses_reatco:
            record["reatco_losses"] = result.guidance
        edited = formats.output_to_uint8(result.frames[0])
        clock = time.perf_counter()
        media.write_video(folder / "edited.mp4", edited, inputs.fps)
        videos = [folder / "edited.mp4"]
        if inputs.source_uint8 is not None:  # resized for the edit: also the edit at the source's size
            composite = composite_applies(settings.composite, settings.blend,
                                          settings.reatco if settings.uses_reatco else None)
            full = full_resolution(edited, inputs, [r.edited for r in spec.regions], pipe.capabilities.vae_factor,
                                   composite)
            media.write_video(folder / "edited_full.mp4", full, inputs.fps)
            videos.append(folder / "edited_full.mp4")
        if any([media.add_audio(video, spec.video.path, inputs.span) for video in videos]):
            record["audio"] = f"the source's audio from {inputs.span[0]:.2f} s to {inputs.span[1]:.2f} s"
        media.write_frames(folder / "frames", edited)
        gif, kept = viz.preview(inputs.frames_uint8, edited)
        media.write_gif(folder / "comparison.gif", gif, inputs.fps * kept)
        legend = viz.region_legend([r.name for r in spec.regions], [r.prompt for r in spec.regions])
        media.write_png(folder / "comparison.png",
                     viz.labelled_grid([inputs.frames_uint8, overlay, edited], ["source", "regions", "edited"], legend))
        if settings.record_attention:
            _write_attention(folder, spec, inputs, result.recorder, pipe.backbone)
        timings["write"] = time.perf_counter() - clock
        if self.evaluate:
            clock = time.perf_counter()
            record["eval"] = _eval_edit(spec, inputs, edited, result, self.device, self.clip)
            timings["eval"] = time.perf_counter() - clock

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise EditCancelled("the edit was cancelled; nothing was written")

    def _step(self, stage: str, pipe, step: int) -> None:
        """After each inversion or edit step of the pipeline: report it; stop the pipeline once cancelled."""
        if self.on_step is not None:
            self.on_step(stage, step + 1, self.spec.edit.steps)
        if self.cancel is not None and self.cancel.is_set():
            pipe._interrupt = True


def _reconstruct(spec: EditSpec, pipe, inputs: VideoInputs, control: dict, folder: Path, record: dict,
                 timings: dict) -> None:
    """reconstruction.mp4: inversion and re-sampling under the source prompt; its PSNR into ``record``."""
    from .eval.metrics import psnr_masked

    settings, clock = spec.edit, time.perf_counter()
    recon = formats.output_to_uint8(pipe.reconstruct(
        inputs.frames_uint8, spec.source_prompt, settings.steps, settings.modulation.temporal, height=inputs.size[1],
        width=inputs.size[0], output_type="np", solver=settings.solver, **control)[0])
    timings["reconstruct"] = time.perf_counter() - clock
    media.write_video(folder / "reconstruction.mp4", recon, inputs.fps)
    record["reconstruction_psnr_db"] = psnr_masked(recon, inputs.frames_uint8)[0]


def full_resolution(edited: np.ndarray, inputs: VideoInputs, edited_regions: list[bool], margin: int,
                    composite: bool) -> np.ndarray:
    """The edit at the source's size, uint8 (F, H, W, 3): the edited frames (F, h, w, 3) upsampled and,
    with the ``composite``, laid into the source frames through the composite's weights (upsampled
    bilinearly), so every pixel away from the edited regions is the source's own."""
    width, height = inputs.source_size
    upsampled = media.resize_frames(edited, (width, height))
    if not composite:
        return upsampled
    weights = composite_weights(inputs.masks, edited_regions, margin)
    for f in range(len(upsampled)):  # frame by frame: a long clip's float copies would not fit
        weight = torch.nn.functional.interpolate(weights[f : f + 1], size=(height, width), mode="bilinear",
                                                 align_corners=False)[0, 0, :, :, None].numpy()
        upsampled[f] = np.round(weight * upsampled[f] + (1 - weight) * inputs.source_uint8[f])
    return upsampled


def _eval_edit(spec: EditSpec, inputs: VideoInputs, edited: np.ndarray, result, device: str,
               clip: str | None) -> dict:
    """Metrics of a finished edit for `edit --eval` (in memory, attention mass included). A failure is
    recorded in run.json and logged, so it never costs the edit."""
    from .eval import evaluate
    from .eval.clip_scores import DEFAULT_CLIP

    try:
        evaluation = evaluate.evaluate(
            edited, inputs.frames_uint8, inputs.masks, spec.prompt, [r.prompt for r in spec.regions],
            [r.name for r in spec.regions], clip=clip or DEFAULT_CLIP, device=device,
            recorder=result.recorder, layout=result.layout,
        )
    except Exception as err:  # noqa: BLE001 - keep the edit whatever the metrics do
        logger.exception("evaluation failed")
        return {"error": f"{type(err).__name__}: {err}"}
    logger.info("%s", evaluate.format_table(evaluation))
    return evaluation.to_dict()


