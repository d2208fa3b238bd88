"""Time and peak memory of ST-Layout attention paths vs plain SDPA on SD 1.5 and Wan self-attention shapes.

    python benchmarks/attention.py                 # CPU: the sizes that finish in reasonable time
    python benchmarks/attention.py --device cuda   # every size (fp16; SDPA is FlashAttention there)
    python benchmarks/attention.py --frames 16 --grids 32 --heads 2 8 --dims 40   # one case
    python benchmarks/attention.py --frames 21 --grids 30x52 --heads 12 --dims 128 --max-tokens 40000
                                                   # Wan 2.1 1.3B, 81 frames at 480x832 (21 latent frames)

On CUDA every path runs in this process (peak: max allocated over one call after a warm-up call,
which compiles and autotunes; times: median of ``--repeat`` synchronised calls). On the CPU each
measurement runs in fresh subprocesses so the peak memory is that path's own: growth of the
process's max RSS over one call, in a process where glibc returns every large block to the system
at once (MALLOC_MMAP_THRESHOLD_), so RSS follows live memory. That setting slows allocation, so
times come from a second process without it. Prints a markdown table with the
ratio of the path ``layout_attention`` picks on that device (grouped on CPU, triton on CUDA) to SDPA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from videograin.method.attention import GPU_METHODS, layout_attention

# SD 1.5 self-attention: per-frame grid at 512x512 -> head dim (8 heads)
SD15_LEVELS = {64: 40, 32: 80, 16: 160, 8: 160}
METHODS = ("sdpa", "dense", "grouped", "flex", "triton")
#: flex runs eagerly on the CPU, materialising every score, and triton needs CUDA: left out there
#: unless asked for
DEFAULT_METHODS = {"cpu": ("sdpa", "dense", "grouped"), "cuda": ("sdpa", "dense", "grouped", "flex", "triton")}


def parse_grid(text: str) -> tuple[int, int]:
    """A token grid per frame: "32" (square) or "30x52" (rows x columns)."""
    rows, _, cols = text.partition("x")
    return int(rows), int(cols or rows)


def grid_name(grid: tuple[int, int]) -> str:
    return f"{grid[0]}²" if grid[0] == grid[1] else f"{grid[0]}×{grid[1]}"


def make_inputs(frames: int, grid: tuple[int, int], heads: int, dim: int, device: str, dtype: torch.dtype,
                seed: int = 0):
    """Random q, k, v (1, H, N, D) and a layout like an instance edit: two objects moving across the
    frames, a part inside the first one, background everywhere else (bits 0b001, 0b011, 0b010, 0b100)."""
    gen = torch.Generator().manual_seed(seed)
    rows, cols = grid
    n = frames * rows * cols
    q, k, v = (torch.randn(1, heads, n, dim, generator=gen).to(device, dtype) for _ in range(3))
    bits = torch.full((frames, rows, cols), 0b100, dtype=torch.int64)
    for f in range(frames):
        shift = f * cols // (4 * frames)
        a0, a1 = cols // 8 + shift, cols // 2 + shift
        bits[f, rows // 4 : 3 * rows // 4, a0:a1] = 0b001
        bits[f, rows // 4 : rows // 2, a0 : (a0 + a1) // 2] = 0b011  # part of object one
        bits[f, rows // 3 : 5 * rows // 6, cols - a1 : cols - a0] = 0b010
    bits = bits.flatten().to(device)
    strength = (0.3 * (1 - torch.rand(n, generator=gen) * 0.5)).to(device)
    return q, k, v, bits, strength


def run_one(method: str, frames: int, grid: tuple[int, int], heads: int, dim: int, device: str, repeat: int) -> dict:
    """Peak extra memory of one call and the median time of ``repeat`` further calls (on CUDA after a
    warm-up call, which compiles the kernels)."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    q, k, v, bits, strength = make_inputs(frames, tuple(grid), heads, dim, device, dtype)
    if method == "sdpa":
        fn = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    else:
        fn = lambda: layout_attention(q, k, v, bits, bits, strength, method=method)  # noqa: E731
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        fn()
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    sync()
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times) if times else None, "peak_extra_mb": peak}


def report(row: dict, method: str, result: dict) -> None:
    print(f"  {row['tokens']:>6} tokens {method:>8}: {result['seconds']:.4f} s, +{result['peak_extra_mb']:.0f} MB",
          file=sys.stderr, flush=True)


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--grids", type=parse_grid, nargs="+", default=[(g, g) for g in SD15_LEVELS],
                        help="token grids per frame: 32 or 30x52 (default: SD 1.5's levels)")
    parser.add_argument("--heads", type=int, nargs="+", default=[8])
    parser.add_argument("--dims", type=int, nargs="+", help="head dims (default: SD 1.5's for each grid)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="default: every path that fits the device")
    parser.add_argument("--max-tokens", type=int, default=None, help="skip N above this (CPU default 16384)")
    parser.add_argument("--dense-max-tokens", type=int, default=8192, help="skip the dense path above this N")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = parser.parse_args()

    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(run_one(**spec, repeat=args.repeat)))
        return
    max_tokens = args.max_tokens or (16384 if args.device == "cpu" else 10**9)
    methods = args.methods or DEFAULT_METHODS["cuda" if args.device == "cuda" else "cpu"]
    chosen = GPU_METHODS[0] if args.device == "cuda" else "grouped"  # what layout_attention's auto picks at these sizes
    rows = []
    for grid in args.grids:
        for dim in args.dims or [SD15_LEVELS.get(grid[0], 40)]:
            for frames in args.frames:
                for heads in args.heads:
                    n = frames * grid[0] * grid[1]
                    if n > max_tokens:
                        continue
                    row = {"frames": frames, "grid": grid, "heads": heads, "dim": dim, "tokens": n}
                    for method in methods:
                        if method == "dense" and n > args.dense_max_tokens:
                            continue
                        one = dict(method=method, frames=frames, grid=grid, heads=heads, dim=dim, device=args.device)
                        if args.device == "cuda":  # peaks are per call already; one process keeps compiled kernels
                            row[method] = result = run_one(**one, repeat=args.repeat)
                            report(row, method, result)
                            continue
                        cmd = [sys.executable, __file__, "--one", json.dumps(one)]
                        run = lambda repeat, env: json.loads(subprocess.run(  # noqa: E731
                            cmd + ["--repeat", str(repeat)], check=True, capture_output=True, text=True,
                            env={**os.environ, **env}).stdout)
                        result = {
                            "seconds": run(args.repeat, {})["seconds"],
                            "peak_extra_mb": run(0, {"MALLOC_MMAP_THRESHOLD_": "65536"})["peak_extra_mb"],
                        }
                        row[method] = result
                        report(row, method, result)
                    rows.append(row)
    print(f"Machine: {machine(args.device)}\n")
    names = {"sdpa": "SDPA"}
    columns = [names.get(m, m) for m in methods]
    print("| F | grid | heads | D | N | " + " | ".join(f"{c} s" for c in columns) + f" | {chosen} / SDPA | "
          + " | ".join(f"{c} MB" for c in columns) + " | one dense N×N fp32 MB |")
    print("|" + "---|" * (7 + 2 * len(methods)))
    for row in rows:
        get = lambda m, key, fmt: format(row[m][key], fmt) if m in row else "–"  # noqa: E731
        ratio = f"{row[chosen]['seconds'] / row['sdpa']['seconds']:.2f}" if {chosen, "sdpa"} <= set(row) else "–"
        print(f"| {row['frames']} | {grid_name(row['grid'])} | {row['heads']} | {row['dim']} | {row['tokens']} | "
              + " | ".join(get(m, "seconds", ".3f") for m in methods) + f" | {ratio} | "
              + " | ".join(get(m, "peak_extra_mb", ".0f") for m in methods)
              + f" | {row['tokens'] ** 2 * 4 / 2**20:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(args.device), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
