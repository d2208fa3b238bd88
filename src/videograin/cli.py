"""The `videograin` command: edit, reconstruct, make-tiny-model.

Reads the config, validates everything it can before loading weights, runs the pipeline, and writes
the output folder (edited.mp4, frames/, source.mp4, masks_overlay.mp4, comparison.gif/png, run.json)
through a temporary folder renamed on success. Input errors end with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__, io, viz
from .spec import EditSpec, SpecError, load_spec

logger = logging.getLogger("videograin")


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "videograin": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _peak_memory_mb(device: str) -> dict[str, float | str]:
    if device.startswith("cuda"):
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "memory_kind": "cuda max allocated"}
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory_kind": "process max RSS"}


def _resolve(args) -> EditSpec:
    """The config with command-line overrides applied; fails early on what needs no model."""
    spec = load_spec(args.config)
    if args.steps is not None:
        if args.steps < 1:
            raise SpecError("--steps", f"must be >= 1, got {args.steps}", "pass a positive number of steps")
        spec = dataclasses.replace(spec, edit=dataclasses.replace(spec.edit, steps=args.steps))
    if args.model is not None:
        model = Path(args.model)
        spec = dataclasses.replace(spec, model=str(model.resolve()) if model.exists() else args.model)
    if args.out is not None:
        spec = dataclasses.replace(spec, output=Path(args.out).resolve())
    if spec.output is None:
        raise SpecError("output", "no output folder given", "set `output:` in the config or pass --out DIR")
    return spec


def _check_model(spec: EditSpec) -> int:
    """Check prompts against the model's tokenizer; return its size multiple. Reads no weights."""
    from transformers import CLIPTokenizer

    from .pipeline import model_size_multiple
    from .tokens import region_token_spans

    try:
        multiple = model_size_multiple(spec.model)
        tokenizer = CLIPTokenizer.from_pretrained(spec.model, subfolder="tokenizer")
    except OSError as err:
        raise SpecError(
            "model",
            f"cannot read {spec.model!r} ({str(err).splitlines()[0]})",
            "give a local diffusers folder, or a hub id with network access or a filled cache",
        ) from err
    region_token_spans(tokenizer, spec.prompt, [r.prompt for r in spec.regions])
    return multiple


def _load_pipeline(spec: EditSpec, device: str):
    from .pipeline import VideoGrainPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return VideoGrainPipeline.from_pretrained(spec.model, torch_dtype=dtype).to(device)


def _write_inputs(folder: Path, inputs: io.VideoInputs) -> None:
    io.write_video(folder / "source.mp4", inputs.frames_uint8, inputs.fps)
    overlay = viz.mask_overlay(inputs.frames_uint8, inputs.masks.numpy())
    io.write_video(folder / "masks_overlay.mp4", overlay, inputs.fps)


def _run(args, reconstruct_only: bool) -> dict:
    started = time.perf_counter()
    spec = _resolve(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with io.output_folder(spec.output, args.overwrite) as folder:
        inputs = io.load_inputs(spec, _check_model(spec))
        pipe = _load_pipeline(spec, device)
        timings = {"load": time.perf_counter() - started}
        torch.manual_seed(spec.edit.seed)
        settings = spec.edit
        record = {
            "config": spec.to_dict(),
            "command": "reconstruct" if reconstruct_only else "edit",
            "versions": _versions(),
            "device": device,
            "dtype": str(pipe.unet.dtype),
            "seed": settings.seed,
            "frames": int(inputs.frames.shape[0]),
            "size": list(inputs.size),
            "source_size": list(inputs.source_size),
            "fps": inputs.fps,
            "notes": inputs.notes,
        }
        _write_inputs(folder, inputs)
        if reconstruct_only or args.reconstruct:
            clock = time.perf_counter()
            recon = to_uint8(
                pipe.reconstruct(inputs.frames, spec.source_prompt, settings.steps, settings.modulation.temporal)
            )
            timings["reconstruct"] = time.perf_counter() - clock
            io.write_video(folder / "reconstruction.mp4", recon, inputs.fps)
            record["reconstruction_psnr_db"] = psnr(recon, inputs.frames_uint8)
        if not reconstruct_only:
            result = pipe(
                inputs.frames,
                inputs.masks,
                spec.prompt,
                [r.prompt for r in spec.regions],
                source_prompt=spec.source_prompt,
                negative_prompt=spec.negative_prompt,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                modulation=settings.modulation,
                blend=settings.blend,
            )
            timings.update(result.timings)
            edited = to_uint8(result.frames)
            clock = time.perf_counter()
            io.write_video(folder / "edited.mp4", edited, inputs.fps)
            io.write_frames(folder / "frames", edited)
            io.write_gif(folder / "comparison.gif", viz.side_by_side(inputs.frames_uint8, edited), inputs.fps)
            overlay = viz.mask_overlay(inputs.frames_uint8, inputs.masks.numpy())
            io.write_png(folder / "comparison.png", viz.grid([inputs.frames_uint8, overlay, edited]))
            timings["write"] = time.perf_counter() - clock
        timings["total"] = time.perf_counter() - started
        record.update(timings={k: round(v, 3) for k, v in timings.items()}, **_peak_memory_mb(device))
        io.write_json(folder / "run.json", record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videograin", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"videograin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("edit", "edit a video as the config describes"),
        ("reconstruct", "invert and re-sample with the source prompt, no edit (inversion fidelity)"),
    ]:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("config", help="edit config (YAML)")
        sub.add_argument("--out", help="output folder (overrides `output:` in the config)")
        sub.add_argument("--model", help="hub id or local diffusers folder (overrides `model:`)")
        sub.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
        sub.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        sub.add_argument("--steps", type=int, help="denoising steps (overrides edit.steps)")
        if name == "edit":
            sub.add_argument("--reconstruct", action="store_true", help="also write reconstruction.mp4")
    tiny = commands.add_parser("make-tiny-model", help="write a tiny random-weight SD-style model (offline)")
    tiny.add_argument("folder")
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "make-tiny-model":
            from .tiny_model import make_tiny_model

            logger.info("wrote %s", make_tiny_model(args.folder, args.seed))
        else:
            _run(args, reconstruct_only=args.command == "reconstruct")
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
