"""The toy world's long clips: the benchmark's instance cases on paths 8x as long, edited in one pass.

    python -m toyworld.long_clip --out toyworld/results/long_clip

Each case's 16-frame clip is played forwards and backwards (ping-pong) to 128 frames, so the shapes
travel 8x the distance, the masks stay exact and the frames at the end show what the frames at the
start show. Both lengths are edited with the committed SD toy model and its recommended strengths
(``methods.tuned``), blend on, the long-clip defaults (``temporal: auto``: full attention at 16
frames, anchored at 128). Writes results.json, results.md and accuracy.png (the per-frame instance
accuracy of both lengths, the 16-frame one repeated along the ping-pong).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from videograin import media
from videograin.toy import SD_MODEL

from .bench import run_case
from .cases import CASES, case_inputs, random_instance_cases, region_target
from .methods import tuned
from .model import load_pipeline

LEG = 16  # frames of one pass along a case's path
logger = logging.getLogger("toyworld.long_clip")


def ping_pong(total: int, leg: int = LEG) -> np.ndarray:
    """Frame indices into a ``leg``-frame clip, forwards then backwards, for ``total`` frames."""
    cycle = np.concatenate([np.arange(leg), np.arange(leg - 2, 0, -1)])
    return cycle[np.arange(total) % len(cycle)]


def per_frame_accuracy(case, result: dict) -> np.ndarray:
    """(F,) share of the case's edited shape regions that show their target in each frame."""
    rows = [[found == " ".join(target) for found in result["found"][region.name]]
            for region in case.regions for what, target in [region_target(case, region)] if what == "shape"]
    return np.mean(np.array(rows, dtype=float), axis=0)


def long_case_inputs(case, total: int):
    """``cases.case_inputs`` of a ``LEG``-frame pass, ping-ponged to ``total`` frames."""
    clip, masks, shapes = case_inputs(case, LEG)
    index = ping_pong(total)
    return clip[index], masks[:, index], shapes[:, index]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("toyworld/results/long_clip"))
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--random-cases", type=int, default=5, help="random instance cases beside the fixed ones")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(SD_MODEL)
    method = tuned(SD_MODEL)
    guidance = pipe.recommended.guidance_scale
    cases = [c for c in CASES if c.level == "instance"] + list(random_instance_cases(args.random_cases, seed=7))
    rows, curves = [], {}
    for case in cases:
        for frames in (LEG, args.frames):
            _, result = run_case(pipe, case, method, True, args.steps, guidance, frames,
                                 inputs=long_case_inputs(case, frames))
            curve = per_frame_accuracy(case, result)
            curves[(case.name, frames)] = curve
            first, last = curve[:LEG].mean(), curve[-LEG:].mean()
            rows.append({"case": case.name, "frames": frames, "instance_accuracy": result["instance_accuracy"],
                         "first_16": round(float(first), 4), "last_16": round(float(last), 4),
                         "leakage": result["leakage"], "background_change": result["background_change"],
                         "seconds": result["seconds"]})
            logger.info("%s %d frames: accuracy %s (first 16: %.2f, last 16: %.2f), %ss", case.name, frames,
                        result["instance_accuracy"], first, last, result["seconds"])
    summary = {frames: {key: round(float(np.mean([r[key] for r in rows if r["frames"] == frames])), 4)
                        for key in ("instance_accuracy", "first_16", "last_16", "background_change")}
               for frames in (LEG, args.frames)}
    args.out.mkdir(parents=True, exist_ok=True)
    media.write_json(args.out / "results.json", {"settings": {"steps": args.steps, "guidance_scale": guidance,
                                                           "method": method.name, "threads": args.threads},
                                              "summary": summary, "per_case": rows})
    media.write_text(args.out / "results.md", _markdown(summary, rows, args.frames))
    _plot(curves, cases, args.frames, args.out / "accuracy.png")
    return 0


def _markdown(summary: dict, rows: list[dict], frames: int) -> str:
    lines = [f"Instance accuracy, {LEG} vs {frames} frames (ping-pong), blend on, tuned strengths:", "",
             "| frames | instance accuracy | first 16 frames | last 16 frames | background change |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {s['instance_accuracy']:.2f} | {s['first_16']:.2f} | {s['last_16']:.2f} | "
              f"{s['background_change']:.3f} |" for n, s in summary.items()]
    lines += ["", "| case | frames | instance accuracy | first 16 | last 16 | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['frames']} | {r['instance_accuracy']:.2f} | {r['first_16']:.2f} | "
              f"{r['last_16']:.2f} | {r['seconds']} |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(curves: dict, cases, frames: int, path: Path) -> None:
    """A line chart (PIL, no plotting library): the mean per-frame accuracy of both lengths."""
    from PIL import Image, ImageDraw

    long = np.mean([curves[(c.name, frames)] for c in cases], axis=0)
    short = np.mean([curves[(c.name, LEG)] for c in cases], axis=0)[ping_pong(frames)]
    width, height, margin = 800, 260, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    x = lambda f: margin + f * (width - 2 * margin) / max(frames - 1, 1)  # noqa: E731
    y = lambda a: height - margin - a * (height - 2 * margin)  # noqa: E731
    draw.rectangle([margin, y(1), width - margin, y(0)], outline="black")
    for level in (0.25, 0.5, 0.75):
        draw.line([(margin, y(level)), (width - margin, y(level))], fill=(225, 225, 225))
    for curve, colour in ((short, (140, 140, 140)), (long, (200, 30, 30))):
        draw.line([(x(f), y(a)) for f, a in enumerate(curve)], fill=colour, width=2)
    draw.text((margin, 8), f"instance accuracy per frame, mean of {len(cases)} cases: grey {LEG} frames "
              f"(ping-pong repeated), red {frames} frames in one edit", fill="black")
    for value in (0, 1):
        draw.text((8, y(value) - 6), str(value), fill="black")
    draw.text((margin, height - margin + 8), "frame 0", fill="black")
    draw.text((width - margin - 60, height - margin + 8), f"frame {frames - 1}", fill="black")
    image.save(path)


if __name__ == "__main__":
    raise SystemExit(main())
