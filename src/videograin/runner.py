"""Running an edit end to end: ``videograin.edit(config, out)`` is the library call the CLI makes.

Checks the config, the output and the model's config files before any weights load, runs the
pipeline, and writes the output folder (edited.mp4, frames/, source.mp4, masks_overlay.mp4,
comparison.gif/png, run.json, attention/ when recorded) through a temporary folder renamed on success.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import platform
import re
import resource
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__, formats, io, viz
from .config.parse import load_spec, resolve_model, spec_from_dict
from .config.preflight import notes as spec_notes
from .config.preflight import preflight
from .config.spec import DEFAULT_MODEL, EditSpec
from .errors import EditCancelled, SpecError, WeightsUnavailable, first_line
from .inversion_cache import InversionCache
from .method.layout import composite_applies, composite_weights
from .method.tokens import region_token_spans

logger = logging.getLogger("videograin")


def versions() -> dict[str, str]:
    """Versions of the project and the libraries an edit depends on."""
    import diffusers
    import transformers

    return {
        "videograin": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def peak_memory(device: str) -> dict[str, float | str]:
    """Peak memory of this process so far (CUDA: allocated on the GPU; else max RSS), in MiB."""
    if device.startswith("cuda"):
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "memory_kind": "cuda max allocated"}
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory_kind": "process max RSS"}


def resolve_device(flag: str | None) -> str:
    """The torch device of ``--device`` (default: cuda when PyTorch sees a GPU), checked."""
    if flag is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if flag == "cpu":
        return flag
    match = re.fullmatch(r"cuda(?::(\d+))?", flag)
    if match is None:
        raise SpecError("--device", f"unknown device {flag!r}", "pass cpu or cuda (cuda:N for the N-th GPU)")
    if not torch.cuda.is_available():
        raise SpecError("--device", f"{flag}: this PyTorch build sees no CUDA GPU",
                        "pass --device cpu, or install a CUDA build of torch on a machine with a GPU")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise SpecError("--device", f"{flag}: there are {torch.cuda.device_count()} GPUs", "pick an index below that")
    return flag


def inputs_of(spec: EditSpec, config: str | Path | None) -> list[Path]:
    """Every file or folder an edit reads (``config``: its YAML file, if any): what its output may not
    be, hold or sit inside."""
    paths = [*([Path(config)] if config is not None else []), spec.video.path, *(r.masks for r in spec.regions if r.masks is not None)]
    for model in (spec.model, spec.model_config, spec.control.model if spec.control else None):
        if model is not None and Path(model).exists():
            paths.append(Path(model))
    if spec.control is not None and isinstance(spec.control.condition, Path):
        paths.append(spec.control.condition)
    return paths + [lora.path for lora in spec.lora]


def load_pipeline(spec: EditSpec, device: str):
    """The pipeline of ``spec.model`` (and its ControlNet, with its LoRAs) on ``device``: float16 on CUDA
    (Wan: bfloat16), float32 else."""
    from .config.preflight import model_backbone
    from .pipeline import VideoGrainPipeline, WanVideoGrainPipeline

    if model_backbone(str(spec.model)) == "wan":  # bfloat16 on CUDA, as Wan is trained; statistics in float32
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return _with_loras(WanVideoGrainPipeline.from_pretrained(spec.model, dtype=dtype), spec).to(device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    extra = {}
    if spec.control is not None:
        from diffusers import ControlNetModel

        try:
            extra["controlnet"] = ControlNetModel.from_pretrained(spec.control.model, dtype=dtype)
        except (OSError, ValueError) as err:
            raise SpecError("control.model", f"cannot load ControlNet {spec.control.model!r} "
                            f"({str(err).splitlines()[0]})", "give a local ControlNet folder or a hub id") from err
    # the dtype at load time (a later .to(dtype) makes diffusers warn about float32 modules)
    if Path(spec.model).is_file():  # a single-file checkpoint: its configs and tokenizer from model_config
        pipe = VideoGrainPipeline.from_single_file(spec.model, config=spec.model_config or DEFAULT_MODEL, dtype=dtype,
                                                   **extra)
    else:
        pipe = VideoGrainPipeline.from_pretrained(spec.model, dtype=dtype, **extra)
    return _with_loras(pipe, spec).to(device)


def _with_loras(pipe, spec: EditSpec):
    """``pipe`` with ``spec.lora`` loaded (diffusers' ``load_lora_weights``, PEFT) at their scales, before
    any attention processor is installed; SpecError naming the LoRA that does not fit the model."""
    if not spec.lora:
        return pipe
    names = [f"lora{i}" for i in range(len(spec.lora))]
    for i, (name, lora) in enumerate(zip(names, spec.lora)):
        try:
            pipe.load_lora_weights(str(lora.path), adapter_name=name)
        except (ImportError, ValueError, KeyError, RuntimeError) as err:
            raise SpecError(f"lora[{i}].path", f"cannot apply {lora.path.name} to {spec.model} ({first_line(err)})",
                            "give a LoRA trained for this model (install peft: pip install 'videograin[lora]')") from None
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in spec.lora])
    return pipe


def _control_inputs(spec: EditSpec, inputs: io.VideoInputs) -> tuple[np.ndarray | None, dict]:
    """The ControlNet conditions at the edit size, read or annotated from the frames, as uint8
    (F, H, W, 3) for viewing and as the pipeline's keyword arguments; (None, {}) without control."""
    if spec.control is None:
        return None, {}
    from .control import annotate

    if isinstance(spec.control.condition, Path):
        images = io.read_condition_images(spec.control.condition, spec.video, inputs.size)
    else:
        try:
            images = annotate(spec.control.condition, inputs.frames_uint8)
        except WeightsUnavailable as err:
            raise SpecError("control.condition", str(err), "give a folder or video of condition images instead") from None
    return images, {"control_images": images, "control_scale": spec.control.scale}


@dataclass
class PromptedMasks:
    """The masks of the regions given by a box or clicks (``RegionSpec.prompts``), made by the masks
    engine when ``io.load_inputs`` reads the source (its ``prompted``), or reused from the previous
    output's masks/ when its masks.json holds the same prompts, engine and frames; written into the new
    output's masks/ (the folders a region's ``masks:`` reads, with an overlay and masks.json)."""

    spec: EditSpec
    device: str
    progress: bool
    frames: np.ndarray | None = None
    masks: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    record: dict | None = None

    def __call__(self, frames: np.ndarray) -> dict[int, np.ndarray]:
        from .masks import RegionPrompt, make_masks

        spec, video = self.spec, self.spec.video
        indices = [i for i, r in enumerate(spec.regions) if r.prompts is not None]
        prompts = []
        for i in indices:
            p = spec.regions[i].prompts
            prompts.append(RegionPrompt(spec.regions[i].name, p.box, p.points, p.negative, p.frame))
            prompts[-1].check(len(frames), frames.shape[2], frames.shape[1], f"regions[{i}].masks")
        key = {"requested_engine": spec.masks_engine, "prompts": [p.to_dict() for p in prompts],
               "video": {"path": str(video.path), "start": video.start, "frames": video.frames, "stride": video.stride}}
        self.frames, self.masks = frames, self._cached(key, indices, len(frames))
        if not self.masks:
            try:
                made, record = make_masks(frames, prompts, spec.masks_engine, device=self.device, progress=self.progress)
            except WeightsUnavailable as err:
                raise SpecError("masks_engine", str(err), "give `masks_engine: flow` (no weights) or make the SAM 2 "
                                "weights available") from None
            self.masks, self.record = dict(zip(indices, made)), {**record, **key}
        return self.masks

    def _cached(self, key: dict, indices: list[int], frames: int) -> dict[int, np.ndarray]:
        folder = self.spec.output / "masks"
        try:
            record = json.loads((folder / "masks.json").read_text(encoding="utf-8"))
            if any(record.get(k) != v for k, v in key.items()):
                return {}
            masks = {i: io.read_mask_folder(folder / self.spec.regions[i].name, 0, frames, 1, frames, "masks")
                     for i in indices}
        except (OSError, ValueError, SpecError):
            return {}
        logger.info("note: masks of %s reused from %s", ", ".join(self.spec.regions[i].name for i in indices), folder)
        self.record = record
        return masks

    def write(self, folder: Path, fps: float) -> None:
        if not self.masks:
            return
        from .masks import write_masks

        order = sorted(self.masks)
        write_masks(folder / "masks", self.frames, np.stack([self.masks[i] for i in order]),
                    [self.spec.regions[i].name for i in order], self.record, fps)


def _write_inputs(folder: Path, inputs: io.VideoInputs) -> np.ndarray:
    """Write source.mp4 and masks_overlay.mp4; return the overlay frames (F, H, W, 3) uint8."""
    io.write_video(folder / "source.mp4", inputs.frames_uint8, inputs.fps)
    overlay = viz.mask_overlay(inputs.frames_uint8, inputs.masks.numpy())
    io.write_video(folder / "masks_overlay.mp4", overlay, inputs.fps)
    return overlay


def _write_attention(folder: Path, spec: EditSpec, inputs: io.VideoInputs, recorder, backbone) -> None:
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
        io.write_video(folder / "attention" / f"{region.name}.mp4", rows[-1], inputs.fps)
        if plain is not None:  # the row below: the same maps without the layout modulation
            rows.append(viz.heatmap_overlay(inputs.frames_uint8, plain[r]))
            labels.append(f'"{region.prompt}", unmodulated')
            io.write_video(folder / "attention" / f"{region.name}_unmodulated.mp4", rows[-1], inputs.fps)
    legend = [("cross-attention of each region prompt's words: blue low, red high", np.array([200, 40, 40]))]
    io.write_png(folder / "attention" / "grid.png", viz.labelled_grid(rows, labels, legend))


#: Settings a caller may override on top of the config, and where each lives in it.
OVERRIDES = {"steps": ("edit", "steps"), "seed": ("edit", "seed"), "guidance_scale": ("edit", "guidance_scale"),
             "method": ("edit", "method"), "prompt": (None, "prompt"), "source_prompt": (None, "source_prompt"),
             "negative_prompt": (None, "negative_prompt")}


def with_overrides(spec: EditSpec, **overrides) -> EditSpec:
    """``spec`` with the given OVERRIDES (None: keep the config's) applied and validated again, as if
    they had been written in the config (errors name the config field)."""
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)}; known: {', '.join(OVERRIDES)}")
    data = spec.to_dict()
    for name, value in overrides.items():
        if value is not None:
            section, key = OVERRIDES[name]
            (data[section] if section else data)[key] = value
    return spec_from_dict(data, spec.base_dir)


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
    from and kept (a batch's, the app's). ``overrides``: OVERRIDES such as ``seed=3``.
    """
    started = time.perf_counter()
    config = Path(spec) if isinstance(spec, (str, Path)) else None
    spec = load_spec(config) if config is not None else spec
    spec = with_overrides(spec, **overrides)
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
    io.check_output_folder(spec.output, overwrite, inputs_of(spec, config))
    with io.output_lock(spec.output):
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
        inputs = io.load_inputs(spec, facts.size_multiple, prompted)
        io.check_free_space(spec.output, inputs.frames.shape[0], inputs.size)
        for note in spec_notes(spec, facts.capabilities):
            logger.info("note: %s", note)
            inputs.notes.append(note)
        control_uint8, control = _control_inputs(spec, inputs)
        key = (str(spec.model), spec.model_config, str(spec.control.model) if spec.control else None, spec.lora,
               self.device)
        pipe = (self.pipelines or {}).get(key)
        if pipe is None:
            with _loading_bars(self.progress):
                pipe = load_pipeline(spec, self.device)
            if self.pipelines is not None:
                self.pipelines[key] = pipe
        pipe.set_progress_bar_config(disable=not self.progress)
        timings = {"load": time.perf_counter() - started}
        self._check_cancel()
        with io.output_folder(spec.output, self.overwrite) as folder:
            torch.manual_seed(spec.edit.seed)
            record = run_record(spec.to_dict(), self.command, pipe, self.device, inputs, self.argv)
            record["seed"] = spec.edit.seed
            overlay = _write_inputs(folder, inputs)
            prompted.write(folder, inputs.fps)
            if prompted.record is not None:
                record["masks"] = {k: prompted.record.get(k) for k in ("engine", "model", "prompts", "seconds")}
            if control_uint8 is not None:
                io.write_video(folder / "control.mp4", control_uint8, inputs.fps)
            if self.reconstruct or self.command == "reconstruct":
                _reconstruct(spec, pipe, inputs, control, folder, record, timings)
            if self.command == "edit":
                self._check_cancel()
                self._edit(pipe, inputs, control, overlay, folder, record, timings)
            timings["total"] = time.perf_counter() - started
            record.update(timings={k: round(v, 3) for k, v in timings.items()}, **peak_memory(self.device))
            io.write_json(folder / "run.json", record)
        return record

    def _edit(self, pipe, inputs: io.VideoInputs, control: dict, overlay: np.ndarray, folder: Path, record: dict,
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
        edited = formats.to_uint8(result.frames[0])
        clock = time.perf_counter()
        io.write_video(folder / "edited.mp4", edited, inputs.fps)
        videos = [folder / "edited.mp4"]
        if inputs.source_uint8 is not None:  # resized for the edit: also the edit at the source's size
            composite = composite_applies(settings.composite, settings.blend,
                                          settings.reatco if settings.uses_reatco else None)
            full = full_resolution(edited, inputs, [r.edited for r in spec.regions], pipe.capabilities.vae_factor,
                                   composite)
            io.write_video(folder / "edited_full.mp4", full, inputs.fps)
            videos.append(folder / "edited_full.mp4")
        if any([io.add_audio(video, spec.video.path, inputs.span) for video in videos]):
            record["audio"] = f"the source's audio from {inputs.span[0]:.2f} s to {inputs.span[1]:.2f} s"
        io.write_frames(folder / "frames", edited)
        gif, kept = viz.preview(inputs.frames_uint8, edited)
        io.write_gif(folder / "comparison.gif", gif, inputs.fps * kept)
        legend = viz.region_legend([r.name for r in spec.regions], [r.prompt for r in spec.regions])
        io.write_png(folder / "comparison.png",
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


@contextlib.contextmanager
def _loading_bars(shown: bool):
    """diffusers' and transformers' own progress bars (loading components and weights) off inside the
    block unless ``shown``; their previous setting is restored after."""
    import diffusers.utils.logging
    import transformers.utils.logging

    libraries = [lib for lib in (diffusers.utils.logging, transformers.utils.logging) if lib.is_progress_bar_enabled()]
    if not shown:
        for lib in libraries:
            lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()


def _reconstruct(spec: EditSpec, pipe, inputs: io.VideoInputs, control: dict, folder: Path, record: dict,
                 timings: dict) -> None:
    """reconstruction.mp4: inversion and re-sampling under the source prompt; its PSNR into ``record``."""
    from .eval.metrics import psnr_masked

    settings, clock = spec.edit, time.perf_counter()
    recon = formats.to_uint8(pipe.reconstruct(inputs.frames_uint8, spec.source_prompt, settings.steps,
                                              settings.modulation.temporal, height=inputs.size[1], width=inputs.size[0],
                                              output_type="np", solver=settings.solver, **control)[0])
    timings["reconstruct"] = time.perf_counter() - clock
    io.write_video(folder / "reconstruction.mp4", recon, inputs.fps)
    record["reconstruction_psnr_db"] = psnr_masked(recon, inputs.frames_uint8)[0]


def full_resolution(edited: np.ndarray, inputs: io.VideoInputs, edited_regions: list[bool], margin: int,
                    composite: bool) -> np.ndarray:
    """The edit at the source's size, uint8 (F, H, W, 3): the edited frames (F, h, w, 3) upsampled and,
    with the ``composite``, laid into the source frames through the composite's weights (upsampled
    bilinearly), so every pixel away from the edited regions is the source's own."""
    width, height = inputs.source_size
    upsampled = io.resize_frames(edited, (width, height))
    if not composite:
        return upsampled
    weights = composite_weights(inputs.masks, edited_regions, margin)
    for f in range(len(upsampled)):  # frame by frame: a long clip's float copies would not fit
        weight = torch.nn.functional.interpolate(weights[f : f + 1], size=(height, width), mode="bilinear",
                                                 align_corners=False)[0, 0, :, :, None].numpy()
        upsampled[f] = np.round(weight * upsampled[f] + (1 - weight) * inputs.source_uint8[f])
    return upsampled


def run_record(config: dict, command: str, pipe, device: str, inputs: io.VideoInputs,
               argv: list[str] | None = None) -> dict:
    """The start of run.json: the resolved config, the command (and its argv), when (UTC), versions
    (and the project's git commit), device (and GPU), the model and the input sizes."""
    return {
        "config": config,
        "command": command,
        "argv": argv,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git_commit": _git_commit(),
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "model": pipe.name_or_path,
        "dtype": str(pipe.dtype),
        "frames": int(inputs.frames.shape[0]),
        "size": list(inputs.size),
        "source_size": list(inputs.source_size),
        "fps": inputs.fps,
        "notes": inputs.notes,
    }


def _git_commit() -> str | None:
    """The commit of the project's checkout this package runs from, if it runs from one."""
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def summary(folder: Path, record: dict) -> str:
    """The end of a run in a few lines, under io's "wrote <folder>": which files, how long, how much memory."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(folder).iterdir())
    timings = record["timings"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total")
    return (f"  files: {' '.join(names)}\n  seconds: {timings['total']:.1f} ({stages})\n"
            f"  peak memory: {record['peak_memory_mb']:.0f} MiB ({record['memory_kind']})")


def _eval_edit(spec: EditSpec, inputs: io.VideoInputs, edited: np.ndarray, result, device: str,
               clip: str | None) -> dict:
    """Metrics of a finished edit for `edit --eval` (in memory, attention mass included). A failure is
    recorded in run.json and logged, so it never costs the edit."""
    from .eval import evaluate, metrics

    try:
        evaluation = evaluate.evaluate(
            edited, inputs.frames_uint8, inputs.masks, spec.prompt, [r.prompt for r in spec.regions],
            [r.name for r in spec.regions], clip=clip or metrics.DEFAULT_CLIP, device=device,
            recorder=result.recorder, layout=result.layout,
        )
    except Exception as err:  # noqa: BLE001 - keep the edit whatever the metrics do
        logger.exception("evaluation failed")
        return {"error": f"{type(err).__name__}: {err}"}
    logger.info("%s", evaluate.format_table(evaluation))
    return evaluation.to_dict()


