"""Prompt the Wan toy model directly (text-to-video, Euler on the velocity with classifier-free guidance)
and score it with the prompt sets of ``toyworld.sample``.

    nice -n 19 python -m toyworld.sample_wan [--model toyworld/model_wan] [--out toyworld/results_wan]

Each prompt gives a 9-frame clip; the judge reads its first and its last frame. A clip is correct when
both frames hold the requested background and exactly the requested shapes (colour, class, third).
Writes ``prompts.json`` (accuracies, every prompt's verdict) and ``prompts.png`` (first frames).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from videograin import io, viz
from videograin.backbones.wan import WanBackbone
from videograin.method.sampling import sample_latents

from .sample import pair_prompts, score, single_prompts
from .wan_model import FRAMES, WAN_MODEL_DIR


def load_pipeline(folder: str | Path = WAN_MODEL_DIR):
    """The saved Wan toy model as a WanVideoGrainPipeline (CPU, eval mode, progress bars off)."""
    from videograin.pipeline import WanVideoGrainPipeline

    pipe = WanVideoGrainPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.text_encoder, pipe.transformer):
        module.eval()
    return pipe


@torch.no_grad()
def text_to_video(pipe, prompts: list[str], seed: int = 0, steps: int = 25, guidance: float = 5.0,
                  size: int = 32) -> np.ndarray:
    """uint8 (B, F, H, W, 3) clips for ``prompts``; clip i starts from noise seeded by ``seed + i``."""
    backbone = WanBackbone(pipe)
    schedule = backbone.schedule(steps)
    latent = size // backbone.vae_factor
    frames = (FRAMES - 1) // backbone.temporal_factor + 1
    uncond = backbone.encode_prompt("")
    out = []
    for i, prompt in enumerate(prompts):
        denoise = backbone.denoise_fn(backbone.encode_prompt(prompt), uncond, guidance, frames, schedule)
        noise = torch.randn((frames, pipe.transformer.config.in_channels, latent, latent),
                            generator=torch.Generator().manual_seed(seed + i))
        out.append(io.to_uint8(backbone.decode(sample_latents(denoise, noise, schedule))))
    return np.stack(out)


def evaluate(pipe, seed: int = 0, steps: int = 25, guidance: float = 5.0, n_pairs: int = 135):
    """Returns (summary, rows, clips) for the single- and two-object (named left to right) prompt sets."""
    summary, rows, clips = {}, {}, {}
    for name, cases in (("single", single_prompts()), ("two", pair_prompts(n_pairs, left_to_right=True))):
        clips[name] = text_to_video(pipe, [c[0] for c in cases], seed, steps, guidance)
        first, last = score(clips[name][:, 0], cases), score(clips[name][:, -1], cases)
        rows[name] = [{**a, "last_frame_correct": b["correct"]} for a, b in zip(first, last)]
        summary[name] = {
            "prompts": len(cases),
            "accuracy": round(float(np.mean([a["correct"] and b["correct"] for a, b in zip(first, last)])), 4),
            "first_frame_accuracy": round(float(np.mean([a["correct"] for a in first])), 4),
            "requested_shapes_present": round(float(np.mean([a["present"] for a in first])), 4),
            "swapped": round(float(np.mean([a["swapped"] for a in first])), 4),
        }
    return summary, rows, clips


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(WAN_MODEL_DIR))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results_wan")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=135)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    summary, rows, clips = evaluate(pipe, args.seed, args.steps, args.guidance, args.pairs)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"model": str(args.model), "steps": args.steps, "guidance": args.guidance, "seed": args.seed}
    io.write_json(args.out / "prompts.json", {"settings": settings, "summary": summary, "rows": rows})
    big = {k: np.repeat(np.repeat(v[:48, 0], 2, 1), 2, 2) for k, v in clips.items()}  # first frames, 2x
    sheet = viz.grid([big[k][i : i + 16] for k in ("single", "two") for i in range(0, len(big[k]), 16)],
                     max_columns=16)
    io.write_png(args.out / "prompts.png", sheet)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
