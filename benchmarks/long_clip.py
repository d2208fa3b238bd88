"""Long clips: seconds per frame and peak memory of an edit as the clip grows, anchored vs full attention.

    OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/long_clip.py --frames 16 32 64 256 1024 --full 16 32 64
    python benchmarks/long_clip.py --model sd15-shaped --device cuda --size 512 512 --frames 128 512 --full 16

Each run is a whole edit (inversion, modulated sampling with the latent blend, decode) of the
synthetic two-object clip of benchmarks/edit.py on the tiny model (or SD 1.5-shaped random weights in
fp16 on a GPU, where peak memory is CUDA's max allocated), in its own process. ``anchored``
is the long-clip default (``modulation.temporal: auto`` above 32 frames: 8 anchors, groups of 4, the
UNet over chunks of 16 frames); ``--full`` runs full-frame attention at the given lengths to show where
the two cross. Memory is reported as peak RSS and as the part of it that is not accounted for by
the weights and what is kept per frame (the frame in float32 twice: the caller's input and the
returned video, which the call cannot avoid; its latent; the inversion trajectory): that rest must
not grow with the clip. Run with ``MALLOC_MMAP_THRESHOLD_=65536`` so RSS follows live memory (glibc
otherwise keeps freed blocks, and peak RSS varies by tens of MB between identical runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from edit import build_pipeline, synthetic_clip


def run(temporal: str, frames: int, size: tuple[int, int], steps: int, model: str, device: str) -> dict:
    from videograin.method.settings import Modulation

    pipe = build_pipeline(model, device)
    weights = sum(p.numel() * p.element_size() for m in pipe.components.values() if isinstance(m, torch.nn.Module)
                  for p in m.parameters())
    video, masks = synthetic_clip(frames, *size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = pipe(video, masks, "a red apple and an orange ball on the grass", ["red apple", "orange ball", ""],
               height=size[1], width=size[0], num_inference_steps=steps, output_type="np",
               modulation=Modulation(steps=round(0.3 * steps), temporal=temporal))
    seconds = time.perf_counter() - start
    latent = out.latents[0].numel() * out.latents.element_size()
    per_frame = {"frames": 2 * 3 * size[0] * size[1] * 4, "latent": latent, "trajectory": (steps + 1) * latent}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":  # on the GPU: what the edit allocated there (frames and outputs live on the host)
        peak, per_frame = torch.cuda.max_memory_allocated(), {"frames": 0, "latent": latent,
                                                              "trajectory": (steps + 1) * latent}
    return {"seconds": seconds, "seconds_per_frame": seconds / frames, "peak_mb": peak / 2**20,
            "before_mb": before / 2**20, "weights_mb": weights / 2**20,
            "per_frame_mb": {k: v * frames / 2**20 for k, v in per_frame.items()},
            "rest_mb": (peak - weights - frames * sum(per_frame.values())) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--full", type=int, nargs="*", default=[16, 64], help="frame counts to also run with full attention")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64), help="width height")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", choices=["tiny", "sd15-shaped"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(args.size)
    if args.one:
        print(json.dumps(run(args.one[0], int(args.one[1]), size, args.steps, args.model, args.device)))
        return
    runs = [("anchored", f) for f in args.frames] + [("full", f) for f in args.full]
    results = []
    for temporal, frames in sorted(runs, key=lambda r: (r[1], r[0])):
        cmd = [sys.executable, __file__, "--one", temporal, str(frames), "--size", *map(str, size),
               "--steps", str(args.steps), "--model", args.model, "--device", args.device]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=os.environ).stdout
        results.append((temporal, frames, json.loads(out.strip().splitlines()[-1])))
        print(f"  {temporal} {frames}: {results[-1][2]}", file=sys.stderr, flush=True)
    where = (torch.cuda.get_device_name() + ", peak = CUDA max allocated" if args.device == "cuda"
             else f"{platform.machine()} CPU, {torch.get_num_threads()} threads, peak = max RSS")
    print(f"{args.model} model, {size[0]}x{size[1]}, {args.steps} steps, {where}, torch {torch.__version__}\n")
    print("| attention | frames | seconds | s / frame | vs anchored@64 | peak MB | weights MB | input + output MB "
          "| latents MB | trajectory MB | rest MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = next((r["seconds_per_frame"] for t, f, r in results if (t, f) == ("anchored", 64)), None)
    for temporal, frames, r in results:
        ratio = f"{r['seconds_per_frame'] / base:.2f}" if base else "–"
        terms = r["per_frame_mb"]
        print(f"| {temporal} | {frames} | {r['seconds']:.1f} | {r['seconds_per_frame']:.3f} | {ratio} | "
              f"{r['peak_mb']:.0f} | {r['weights_mb']:.0f} | {terms['frames']:.1f} | {terms['latent']:.1f} | "
              f"{terms['trajectory']:.1f} | {r['rest_mb']:.0f} |")


if __name__ == "__main__":
    main()
