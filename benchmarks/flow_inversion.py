"""Inversion fidelity on flow models, Euler against the midpoint solver, and the inversion cache's saving.

    python benchmarks/flow_inversion.py --threads 2 > /tmp/flow_inversion.md

1. Reconstruction: invert a clip under its source prompt and re-sample it (``pipe.reconstruct``, guidance
   1, no edit) at 8, 16 and 32 steps with each solver: the relative error of the latents
   (||z − z₀|| / ||z₀||), the PSNR of the decoded frames against the source's own decoding (so the VAE's
   loss is not counted) and the model evaluations per step, on the tiny random-weight Wan and on the Wan
   toy (``videograin.toy.WAN_MODEL``, the clip of the first random benchmark case), and the SD toy
   (DDIM, the same clip at 8 frames).
2. Time per edit on the Wan toy (25 steps, its recommended strengths) with Euler inversion, midpoint and
   inversion-free editing, and a sweep of 3 strengths with and without the inversion cache.
Prints markdown tables; the machine is named in the first line.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch

from videograin import WanVideoGrainPipeline
from videograin.inversion_cache import InversionCache
from videograin.method.settings import Modulation
from videograin.testing import make_tiny_wan_model
from videograin.toy import SD_MODEL, WAN_MODEL


def _clip(frames: int):
    """The first random benchmark case's clip, its masks and prompts (toyworld)."""
    from toyworld.cases import RANDOM_TEST_SEED, case_inputs, random_instance_cases, source_prompt

    case = random_instance_cases(1, RANDOM_TEST_SEED)[0]
    video, masks, _ = case_inputs(case, frames)
    return video, masks, case.prompt, [r.prompt for r in case.regions], source_prompt(case)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).square().mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def reconstruction_rows(pipe, name: str, video, prompt: str, solvers, steps_list=(8, 16, 32)) -> list[str]:
    source = pipe.encode_frames(pipe.prepare_video(video, None, None) * 2 - 1)
    reference = pipe.decode_latents(source)
    rows = []
    for solver in solvers:
        for steps in steps_list:
            clock = time.perf_counter()
            latents = pipe.reconstruct(video, prompt, steps, solver=solver, output_type="latent")[0]
            seconds = time.perf_counter() - clock
            error = ((latents - source).norm() / source.norm()).item()
            evaluations = {"euler": 1, "midpoint": 2}[solver]
            rows.append(f"| {name} | {solver} | {steps} | {evaluations} ({evaluations * 2 * steps} in all) "
                        f"| {error:.4f} | {_psnr(pipe.decode_latents(latents), reference):.1f} | {seconds:.1f} |")
    return rows


def edit_seconds(pipe, video, masks, prompt, regions, source, **kwargs) -> tuple[float, torch.Tensor]:
    clock = time.perf_counter()
    out = pipe(video, masks, prompt, regions, source_prompt=source, generator=torch.Generator().manual_seed(0),
               output_type="latent", **kwargs)
    return time.perf_counter() - clock, out.latents


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {platform.machine()} CPU, {args.threads} torch threads, torch {torch.__version__}\n")
    print("| model | solver | steps | model evaluations per step (inversion + re-sampling) | relative latent error "
          "| PSNR of the frames, dB | seconds |")
    print("|---|---|---|---|---|---|---|")
    video, masks, prompt, regions, source = _clip(9)
    with tempfile.TemporaryDirectory() as folder:
        tiny = WanVideoGrainPipeline.from_pretrained(make_tiny_wan_model(f"{folder}/tiny-wan"))
        tiny.set_progress_bar_config(disable=True)
        print("\n".join(reconstruction_rows(tiny, "tiny Wan (random)", video, source, ("euler", "midpoint"))))
    toy = WanVideoGrainPipeline.from_pretrained(WAN_MODEL)
    toy.set_progress_bar_config(disable=True)
    print("\n".join(reconstruction_rows(toy, "Wan toy", video, source, ("euler", "midpoint"))))
    from toyworld.model import load_pipeline

    sd = load_pipeline(SD_MODEL)
    sd.set_progress_bar_config(disable=True)
    sd_video, *_ , sd_source = _clip(8)
    print("\n".join(reconstruction_rows(sd, "SD toy (DDIM)", sd_video, sd_source, ("euler", "midpoint"))))

    print("\n| Wan toy, 25 steps | seconds per edit |")
    print("|---|---|")
    for label, kwargs in (("Euler inversion", {"solver": "euler"}), ("midpoint inversion and edit", {"solver": "midpoint"}),
                          ("inversion-free", {"inversion": "none"})):
        print(f"| {label} | {edit_seconds(toy, video, masks, prompt, regions, source, **kwargs)[0]:.1f} |")
    strengths = (0.5, 1.0, 2.0)
    plain = sum(edit_seconds(toy, video, masks, prompt, regions, source, modulation=Modulation(cross_strength=c))[0]
                for c in strengths)
    with tempfile.TemporaryDirectory() as folder:
        cache = InversionCache(folder)
        cached = sum(edit_seconds(toy, video, masks, prompt, regions, source, inversion_cache=cache,
                                  modulation=Modulation(cross_strength=c))[0] for c in strengths)
    print(f"\nA sweep of {len(strengths)} cross strengths (Euler, 25 steps): {plain:.1f} s without the inversion cache, "
          f"{cached:.1f} s with it ({plain / cached:.2f}x).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
