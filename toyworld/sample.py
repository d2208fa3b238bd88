"""Prompt the toy model directly (plain text-to-image DDIM with classifier-free guidance) and score it.

    nice -n 19 python -m toyworld.sample [--model src/videograin/toy/sd] [--out toyworld/results/sd]

Single-object prompts: every colour x shape x place x background ("a red circle on the left on a gray
background", 135 prompts). Two-object prompts: 135 drawn with a fixed seed ("a red circle on the left
and a blue square on the right on a black background"), named left to right (``two``) and the same
pairs named in random order (``two_any_order``). A sample is correct when the judge finds the
requested background and exactly the requested shapes (colour, class and third of the frame), nothing
more. Writes ``prompts.json`` (accuracies and every prompt's verdict) and ``prompts.png`` (samples).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from videograin import media, viz
from videograin.method.sampling import DDIMSchedule, sample_latents
from videograin.toy import SD_MODEL

from . import judge, model_label, world
from .model import load_pipeline, token_ids


@torch.no_grad()
def text_to_image(pipe, prompts: list[str], seed: int = 0, steps: int = 25, guidance: float = 7.5,
                  negative: str = "", batch: int = 48) -> np.ndarray:
    """uint8 (B, H, W, 3) samples for ``prompts``; sample i starts from noise seeded by ``seed + i``
    (independent of batching)."""
    unet, te, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
    h = w = unet.config.sample_size
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, steps)
    uncond = te(token_ids(tok, [negative]))[0]
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        cond = te(token_ids(tok, chunk))[0]
        z = torch.cat([torch.randn((1, unet.config.in_channels, h, w), generator=torch.Generator().manual_seed(seed + start + i))
                       for i in range(len(chunk))])
        states = torch.cat([uncond.expand(len(chunk), -1, -1), cond])

        def denoise(latents, t, step):
            eps_u, eps_c = unet(torch.cat([latents, latents]), t, encoder_hidden_states=states).sample.chunk(2)
            return eps_u + guidance * (eps_c - eps_u)

        z0 = sample_latents(denoise, z, schedule)
        out.append(pipe.decode_latents(z0))
    return media.to_uint8(torch.cat(out))


PLACES_MIRRORED = {"left": "right", "middle": "middle", "right": "left"}


def single_prompts() -> list[tuple[str, tuple, str]]:
    """(prompt, expected shapes ((colour, kind, place), ...), background) for every single-object case."""
    cases = []
    for color, kind, place, bg in itertools.product(world.COLORS, world.SHAPES, world.PLACES, world.BACKGROUNDS):
        cases.append((f"a {color} {kind} {world.PLACE_PHRASE[place]} on a {bg} background", ((color, kind, place),), bg))
    return cases


def pair_prompts(n: int = 135, seed: int = 1, left_to_right: bool = False) -> list[tuple[str, tuple, str]]:
    """(prompt, expected shapes, background) for ``n`` random left/right pairs, named in random order or,
    with ``left_to_right``, left first (the same pairs and backgrounds either way)."""
    rng = np.random.default_rng(seed)
    cases = []
    colors, bgs = list(world.COLORS), list(world.BACKGROUNDS)
    for _ in range(n):
        objs = [(colors[rng.integers(5)], world.SHAPES[rng.integers(3)], place) for place in ("left", "right")]
        bg = bgs[rng.integers(3)]
        right_first = rng.random() >= 0.5  # drawn either way, so both orders get the same pairs
        order = objs[::-1] if right_first and not left_to_right else objs
        text = " and ".join(f"a {c} {k} {world.PLACE_PHRASE[p]}" for c, k, p in order) + f" on a {bg} background"
        cases.append((text, tuple(objs), bg))
    return cases


def part_prompts(n: int = 90, seed: int = 2) -> list[tuple[str, tuple, str, tuple]]:
    """(prompt, expected shape ((colour, kind, place),), background, expected part (colour, kind)) for
    ``n`` random single shapes with a part, e.g. "a yellow circle with a red dot on the left on a gray
    background"."""
    rng = np.random.default_rng(seed)
    colors, bgs = list(world.COLORS), list(world.BACKGROUNDS)
    cases = []
    for _ in range(n):
        color, kind = colors[rng.integers(5)], world.SHAPES[rng.integers(3)]
        part, part_color = world.PARTS[rng.integers(len(world.PARTS))], str(rng.choice([c for c in colors if c != color]))
        place, bg = world.PLACES[rng.integers(3)], bgs[rng.integers(3)]
        text = f"a {color} {kind} with a {part_color} {part} {world.PLACE_PHRASE[place]} on a {bg} background"
        cases.append((text, ((color, kind, place),), bg, (part_color, part)))
    return cases


def score_parts(frames: np.ndarray, cases) -> list[dict]:
    """Per sample of ``part_prompts``: the shape found (colour, class, third), a part found on any
    shape, the right part (kind and colour) on that shape, and everything exactly right."""
    rows = []
    for frame, (prompt, expected, bg, part) in zip(frames, cases):
        got_bg, dets = judge.detect(frame)
        shape = next((d for d in dets if (d.color, d.kind, d.place) == expected[0]), None)
        right = shape is not None and shape.part_identity == part
        rows.append({"prompt": prompt, "shape_ok": shape is not None, "part_present": any(d.part for d in dets),
                     "part_ok": right, "correct": bool(right and got_bg == bg and len(dets) == 1),
                     "found": [[d.color, d.kind, d.place, d.part_color, d.part] for d in dets]})
    return rows


def score(frames: np.ndarray, cases) -> list[dict]:
    """Per sample: exactly right, requested shapes present, per requested shape whether a shape of
    its colour and class (``class_ok``) and one of its colour in its third (``place_ok``) was found,
    and ``swapped``: two or more requested shapes all found right but in each other's places (for
    left/right pairs: exactly the requested scene mirrored)."""
    rows = []
    for frame, (prompt, expected, bg) in zip(frames, cases):
        got_bg, dets = judge.detect(frame)
        got = sorted((d.color, d.kind, d.place) for d in dets)
        exact = got_bg == bg and got == sorted(expected)
        present = all(e in got for e in expected)
        mirrored = sorted((c, k, PLACES_MIRRORED[p]) for c, k, p in expected)
        swapped = len(expected) > 1 and got_bg == bg and got == mirrored and mirrored != sorted(expected)
        rows.append({"prompt": prompt, "correct": bool(exact), "present": bool(present), "swapped": bool(swapped),
                     "class_ok": [any(g[:2] == e[:2] for g in got) for e in expected],
                     "place_ok": [any(g[0] == e[0] and g[2] == e[2] for g in got) for e in expected],
                     "background": got_bg, "found": [list(g) for g in got]})
    return rows


@torch.no_grad()
def place_sensitivity(pipe, n: int = 96, timesteps=(200, 500, 800, 950), seed: int = 0) -> dict[int, dict]:
    """Does the model use the place words? Denoising loss (eps MSE) of ``n`` single-shape frames noised
    to each timestep, with the true caption, with the place phrase swapped to another third, and
    with the empty caption: {t: {"true", "swapped", "empty"}}. Equal true and swapped losses mean the
    place words are ignored."""
    rng = np.random.default_rng(seed)
    other = {"left": "right", "middle": "left", "right": "left"}
    scenes = [world.random_scene(rng, count=1) for _ in range(n)]
    x = media.from_uint8(np.stack([world.render(sc)[0] for sc in scenes]))
    captions = {"true": [], "swapped": [], "empty": [""] * n}
    for sc in scenes:
        s = sc.shapes[0]
        for key, place in (("true", s.place), ("swapped", other[s.place])):
            captions[key].append(f"a {s.color} {s.kind} {world.PLACE_PHRASE[place]} on a {sc.background} background")
    z0 = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    states = {k: pipe.text_encoder(token_ids(pipe.tokenizer, v))[0] for k, v in captions.items()}
    out = {}
    for t in timesteps:
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed + t))
        a = pipe.scheduler.alphas_cumprod[t]
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        tt = torch.full((n,), t)
        out[t] = {k: round(float((pipe.unet(zt, tt, encoder_hidden_states=h).sample - noise).square().mean()), 5)
                  for k, h in states.items()}
    return out


def evaluate(pipe, seed: int = 0, steps: int = 25, guidance: float = 7.5, n_pairs: int = 135):
    """Returns (summary dict, rows, frames) for the single- and two-object prompt sets."""
    summary, rows, frames = {}, {}, {}
    prompt_sets = (("single", single_prompts()), ("two", pair_prompts(n_pairs, left_to_right=True)),
                   ("two_any_order", pair_prompts(n_pairs)))
    for name, cases in prompt_sets:
        frames[name] = text_to_image(pipe, [c[0] for c in cases], seed, steps, guidance)
        rows[name] = score(frames[name], cases)
        summary[name] = {
            "prompts": len(cases),
            "accuracy": round(float(np.mean([r["correct"] for r in rows[name]])), 4),
            "requested_shapes_present": round(float(np.mean([r["present"] for r in rows[name]])), 4),
            "shape_colour_and_class": round(float(np.mean(sum((r["class_ok"] for r in rows[name]), []))), 4),
            "shape_colour_and_third": round(float(np.mean(sum((r["place_ok"] for r in rows[name]), []))), 4),
            "swapped": round(float(np.mean([r["swapped"] for r in rows[name]])), 4),
        }
    if "dot</w>" in pipe.tokenizer.get_vocab():  # a model of the world with parts
        cases = part_prompts()
        frames["parts"] = text_to_image(pipe, [c[0] for c in cases], seed, steps, guidance)
        rows["parts"] = score_parts(frames["parts"], cases)
        summary["parts"] = {"prompts": len(cases), **{
            key: round(float(np.mean([r[key] for r in rows["parts"]])), 4)
            for key in ("correct", "shape_ok", "part_present", "part_ok")}}
    summary["place_sensitivity"] = place_sensitivity(pipe)
    return summary, rows, frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SD_MODEL))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "sd")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    summary, rows, frames = evaluate(pipe, args.seed, args.steps, args.guidance)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"model": model_label(args.model), "steps": args.steps, "guidance": args.guidance, "seed": args.seed}
    media.write_json(args.out / "prompts.json", {"settings": settings, "summary": summary, "rows": rows})
    big = {k: np.repeat(np.repeat(v[:48], 2, 1), 2, 2) for k, v in frames.items()}  # 2x for viewing
    sheet = viz.grid([big[k][i : i + 16] for k in ("single", "two") for i in range(0, 48, 16)], max_columns=16)
    media.write_png(args.out / "prompts.png", sheet)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
