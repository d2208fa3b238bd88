"""Prompt the Wan toy model directly (text-to-video, Euler on the velocity with classifier-free guidance)
and score it with the prompt sets of ``toyworld.sample``.

    nice -n 19 python -m toyworld.sample_wan [--model src/videograin/toy/wan] [--out toyworld/results/wan]

Each prompt gives a 9-frame clip; the judge reads its first and its last frame. A clip is correct when
both frames hold the requested background and exactly the requested shapes (colour, class, third).
Writes ``prompts.json`` (accuracies, every prompt's verdict) and ``prompts.png`` (first frames);
``--one-step`` writes ``one_step.json`` instead (how well the transformer denoises in one step, per σ),
``--caption-sensitivity`` ``caption_sensitivity.json`` (how much its velocity relies on each caption word).
``--held-out`` scores two-shape prompts drawn apart from the test set's (``prompts_held_out.json``), to
choose sampler settings (``--guidance``, ``--steps``) on prompts the reported scores do not use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from videograin import media, viz
from videograin.backbones.wan import WanBackbone
from videograin.method.sampling import sample_latents
from videograin.toy import WAN_MODEL

from . import model_label
from .sample import pair_prompts, score, single_prompts
from .wan_model import FRAMES

#: Seeds of the two-shape prompt sets: the test set (``toyworld.sample.pair_prompts``' default) and
#: the held-out set of ``--held-out``.
TEST_PAIR_SEED, HELD_OUT_PAIR_SEED = 1, 2


def load_pipeline(folder: str | Path = WAN_MODEL):
    """The saved Wan toy model as a WanVideoGrainPipeline (CPU, eval mode, progress bars off)."""
    from videograin.pipeline_wan import WanVideoGrainPipeline

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
    latent = size // backbone.capabilities.vae_factor
    frames = backbone.capabilities.latent_frames(FRAMES)
    uncond = backbone.encode_prompt("")
    out = []
    for i, prompt in enumerate(prompts):
        denoise = backbone.denoise_fn(backbone.encode_prompt(prompt), uncond, guidance, frames, schedule)
        noise = torch.randn((frames, pipe.transformer.config.in_channels, latent, latent),
                            generator=torch.Generator().manual_seed(seed + i))
        out.append(media.to_uint8(backbone.decode(sample_latents(denoise, noise, schedule))))
    return np.stack(out)


def held_out_pair_prompts(n: int = 135) -> list[tuple[str, tuple, str]]:
    """``n`` two-shape prompts (as ``pair_prompts``, left to right) drawn from HELD_OUT_PAIR_SEED, none of
    them a prompt of the test set of ``n``."""
    test = {text for text, _, _ in pair_prompts(n, TEST_PAIR_SEED, left_to_right=True)}
    return [c for c in pair_prompts(4 * n, HELD_OUT_PAIR_SEED, left_to_right=True) if c[0] not in test][:n]


def evaluate(pipe, seed: int = 0, steps: int = 25, guidance: float = 5.0, n_pairs: int = 135,
             held_out: bool = False):
    """Returns (summary, rows, clips) for the single- and two-object (named left to right) prompt sets
    (``n_pairs`` 0: the single-object set alone; ``held_out``: the held-out two-object set alone)."""
    summary, rows, clips = {}, {}, {}
    pairs = held_out_pair_prompts(n_pairs) if held_out else pair_prompts(n_pairs, TEST_PAIR_SEED, left_to_right=True)
    sets = ([] if held_out else [("single", single_prompts())]) + ([("two", pairs)] if n_pairs else [])
    for name, cases in sets:
        clips[name] = text_to_video(pipe, [c[0] for c in cases], seed, steps, guidance)
        first, last = score(clips[name][:, 0], cases), score(clips[name][:, -1], cases)
        rows[name] = [{**a, "last_frame_correct": b["correct"]} for a, b in zip(first, last)]
        summary[name] = {
            "prompts": len(cases),
            "accuracy": round(float(np.mean([a["correct"] and b["correct"] for a, b in zip(first, last)])), 4),
            "first_frame_accuracy": round(float(np.mean([a["correct"] for a in first])), 4),
            "requested_shapes_present": round(float(np.mean([a["present"] for a in first])), 4),
            "shape_colour_and_class": round(float(np.mean(sum((a["class_ok"] for a in first), []))), 4),
            "shape_colour_and_third": round(float(np.mean(sum((a["place_ok"] for a in first), []))), 4),
            "swapped": round(float(np.mean([a["swapped"] for a in first])), 4),
        }
    return summary, rows, clips


@torch.no_grad()
def one_step(pipe, n: int = 48, sigmas=(0.1, 0.3, 0.5, 0.7, 0.85, 0.95), seed: int = 123) -> dict:
    """How well the transformer denoises in one step, per σ: ``n`` random world clips are encoded,
    noised to x_σ = (1 − σ)·x₀ + σ·ε, and x̂₀ = x_σ − σ·v(x_σ, σ, caption) is decoded; the share whose
    frame 0 the judge reads as the source's (background, each shape's colour, class and third) and the
    latent MSE of x̂₀. ``reconstruction``: the same share for x₀ itself, the ceiling the VAE sets."""
    from . import judge, world
    from .train_wan import random_clip

    def read(frame: np.ndarray):
        background, shapes = judge.detect(frame)
        return background, sorted((d.color, d.kind, d.place) for d in shapes)

    backbone, transformer = WanBackbone(pipe), pipe.transformer
    rng = np.random.default_rng(seed)
    cases = [random_clip(rng) for _ in range(n)]
    x0s = [backbone.encode(torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1) for clip, _ in cases]
    texts = [backbone.encode_prompt(world.caption(scene, places_left_to_right=True)) for _, scene in cases]
    sources = [read(clip[0]) for clip, _ in cases]

    def as_source(latents: torch.Tensor, i: int) -> bool:
        return read(media.to_uint8(backbone.decode(latents))[0]) == sources[i]

    out = {"clips": n, "reconstruction": round(float(np.mean([as_source(x0, i) for i, x0 in enumerate(x0s)])), 4),
           "sigmas": {}}
    for sigma in sigmas:
        judged, mse = [], []
        for i, (x0, text) in enumerate(zip(x0s, texts)):
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i))
            x = ((1 - sigma) * x0 + sigma * noise).transpose(0, 1)[None]  # (1, C, T, h, w)
            v = transformer(x, torch.tensor([sigma * 1000.0]), text, return_dict=False)[0]
            x0_hat = (x - sigma * v)[0].transpose(0, 1)
            judged.append(as_source(x0_hat, i))
            mse.append((x0_hat - x0).square().mean().item())
        out["sigmas"][str(sigma)] = {"judged_as_source": round(float(np.mean(judged)), 4),
                                     "latent_mse": round(float(np.mean(mse)), 4)}
    return out


def swapped_caption(scene, field: str) -> str:
    """The caption of a one-shape ``scene`` (places left to right) with its shape's ``field`` ("kind"
    or "color") replaced by the next value of world.SHAPES / world.COLORS."""
    from . import world

    shape = scene.shapes[0]
    values = list(world.SHAPES if field == "kind" else world.COLORS)
    other = values[(values.index(getattr(shape, field)) + 1) % len(values)]
    return world.caption(dataclasses.replace(scene, shapes=(dataclasses.replace(shape, **{field: other}),)),
                         places_left_to_right=True)


@torch.no_grad()
def caption_sensitivity(pipe, n: int = 48, sigmas=(0.3, 0.5, 0.7, 0.85, 0.95), seed: int = 123) -> dict:
    """Which caption words the transformer uses: on ``n`` one-shape world clips noised to σ, the mean
    squared error of its velocity against the true one (ε − x₀) given the clip's caption, the caption
    with the class swapped, with the colour swapped, and the empty caption. A word the model relies on
    raises the error when swapped; one it ignores leaves it unchanged."""
    from . import world
    from .train_wan import random_clip

    backbone, transformer = WanBackbone(pipe), pipe.transformer
    rng = np.random.default_rng(seed)
    cases = [random_clip(rng, count=1) for _ in range(n)]
    x0s = [backbone.encode(torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1) for clip, _ in cases]
    captions = {"true": [world.caption(scene, places_left_to_right=True) for _, scene in cases],
                "class_swapped": [swapped_caption(scene, "kind") for _, scene in cases],
                "colour_swapped": [swapped_caption(scene, "color") for _, scene in cases],
                "empty": [""] * n}
    texts = {k: [backbone.encode_prompt(c) for c in v] for k, v in captions.items()}
    out = {"clips": n, "sigmas": {}}
    for sigma in sigmas:
        mse = dict.fromkeys(texts, 0.0)
        for i, x0 in enumerate(x0s):
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i))
            x = ((1 - sigma) * x0 + sigma * noise).transpose(0, 1)[None]  # (1, C, T, h, w)
            target = (noise - x0).transpose(0, 1)[None]
            for k in texts:
                v = transformer(x, torch.tensor([sigma * 1000.0]), texts[k][i], return_dict=False)[0]
                mse[k] += (v - target).square().mean().item() / n
        out["sigmas"][str(sigma)] = {"velocity_mse": {k: round(m, 5) for k, m in mse.items()},
                                     "increase_over_true": {k: round(m / mse["true"] - 1, 4) if mse["true"] else None
                                                            for k, m in mse.items() if k != "true"}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(WAN_MODEL))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "wan")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=135, help="two-object prompts (0: single-object prompts only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--held-out", action="store_true",
                   help="only two-shape prompts drawn apart from the test set's (prompts_held_out.json)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--one-step", action="store_true", help="instead: one-step denoising scores (one_step.json)")
    mode.add_argument("--caption-sensitivity", action="store_true",
                      help="instead: velocity error with swapped caption words (caption_sensitivity.json)")
    args = p.parse_args(argv)
    if args.held_out and (args.one_step or args.caption_sensitivity or not args.pairs):
        p.error("--held-out scores two-shape prompts: it takes no --one-step, --caption-sensitivity or --pairs 0")
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    if args.one_step or args.caption_sensitivity:
        name, measure = ("one_step", one_step) if args.one_step else ("caption_sensitivity", caption_sensitivity)
        result = {"model": model_label(args.model), **measure(pipe)}
        args.out.mkdir(parents=True, exist_ok=True)
        media.write_json(args.out / f"{name}.json", result)
        print(json.dumps(result, indent=2))
        return 0
    summary, rows, clips = evaluate(pipe, args.seed, args.steps, args.guidance, args.pairs, args.held_out)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"model": model_label(args.model), "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                "pair_seed": HELD_OUT_PAIR_SEED if args.held_out else TEST_PAIR_SEED}
    name = "prompts_held_out" if args.held_out else "prompts"
    media.write_json(args.out / f"{name}.json", {"settings": settings, "summary": summary, "rows": rows})
    big = {k: np.repeat(np.repeat(v[:48, 0], 2, 1), 2, 2) for k, v in clips.items()}  # first frames, 2x
    sheet = viz.grid([big[k][i : i + 16] for k in clips for i in range(0, len(big[k]), 16)],
                     max_columns=16)
    media.write_png(args.out / f"{name}.png", sheet)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
