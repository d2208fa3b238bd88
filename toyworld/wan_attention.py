"""Where the edited regions' attention goes in each block of the Wan toy, with and without modulation.

    nice -n 19 python -m toyworld.wan_attention --model M --out D [--method NAME:SELF:CROSS:FRACTION]

Runs the benchmark's instance cases (``bench.CASES``, blend on) with one modulation and, at every
modulated step's conditional transformer call, reads each block's q and k (forward hooks; the
processors are not touched) to compute from the same q and k both the plain and the modulated
attention of the query tokens of each edited shape region:

  self  share of their self-attention on keys of their own region and of the other shape's region,
        beside those regions' shares of all tokens (what flat attention gives);
  cross share of their cross-attention on their own region prompt's words and on the other's;
  gap   mean over those queries of λ·(row max − row min) of the self-attention scores: how many nats
        modulation moves a key's score (ST-Layout raises a positive key by up to this, lowers a
        negative one by up to this).

Writes ``attention.json`` (rows per block, means over cases, regions and modulated steps) and
``attention.md``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from videograin import media
from videograin.backbones.wan_processors import WanLayoutAttnProcessor, wan_qkv
from videograin.method.attention import modulated_scores

from .bench import CASES, Method, case_inputs, source_prompt
from .sample_wan import load_pipeline
from .wan_model import FRAMES

DEFAULT_METHOD = Method("videograin", 0.3, 1.0, 0.3)


def _shares(probs: torch.Tensor, queries: torch.Tensor, keys: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over heads and the ``queries`` rows (bool (N,)) of the attention ``probs`` (1, H, N, M)
    falling on each named key set (bool (M,))."""
    rows = probs[0][:, queries]  # (H, n, M)
    return {name: float(rows[..., mask].sum(-1).mean()) for name, mask in keys.items()}


def _is_self_attention(args) -> bool:
    """A layer call's positional args: (hidden_states, encoder_hidden_states, mask, rotary_emb); attn1
    gets no encoder states."""
    return len(args) < 2 or args[1] is None


def attention_probs(attn, args, processor: WanLayoutAttnProcessor):
    """One call of a layer under ``processor`` (its positional ``args``) recomputed in float64 (the
    modulated scores by the method's own ``modulated_scores``, in float32): returns the scores
    (1, H, N, M), the plain and the modulated attention (softmax, same shape), v (1, H, M, D), the key
    bitmask (M,) and the strengths λ (N,) the call used."""
    ctx = processor.context
    is_self = _is_self_attention(args)
    text, rotary = (None, args[3] if len(args) > 3 else None) if is_self else (args[1], None)
    q, k, v = (x.double() for x in wan_qkv(attn, args[0], text, rotary))
    grid = ctx.layout.grid(processor.block)
    bits = grid.bits.flatten()
    key_bits = bits if is_self else ctx.layout.text_bits
    lam = ctx.strength(grid, cross=not is_self).flatten()
    if not ctx.modulates(processor.block, cross=not is_self):
        lam = torch.zeros_like(lam)
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    modulated = modulated_scores(q, k, bits, key_bits, lam, scale).double().softmax(-1)
    return scores, scores.softmax(-1), modulated, v, key_bits, lam.double()


def block_statistics(attn, args, processor: WanLayoutAttnProcessor, regions: list[int]) -> dict[str, float]:
    """Plain and modulated attention shares of one layer call (see the module docstring); ``regions``:
    the bit indices of the edited shape regions (two)."""
    ctx, is_self = processor.context, _is_self_attention(args)
    scores, plain, modulated, _, key_bits, lam = attention_probs(attn, args, processor)
    out = defaultdict(list)
    for own, other in (regions, regions[::-1]):
        queries = (ctx.layout.grid(processor.block).bits.flatten() & (1 << own)) != 0
        keys = {"own": (key_bits & (1 << own)) != 0, "other": (key_bits & (1 << other)) != 0}
        for label, probs in (("plain", plain), ("modulated", modulated)):
            for name, value in _shares(probs, queries, keys).items():
                out[f"{label}_{name}"].append(value)
        if is_self:
            out["own_area"].append(float(keys["own"].double().mean()))
            out["other_area"].append(float(keys["other"].double().mean()))
            spread = (scores.amax(-1) - scores.amin(-1))[0][:, queries].mean(0)  # (n,) over heads
            out["gap"].append(float((lam[queries] * spread).mean()))
    return {key: float(np.mean(values)) for key, values in out.items()}


@torch.no_grad()
def measure(pipe, method: Method, steps: int = 25, guidance: float = 5.0, frames: int = FRAMES) -> list[dict]:
    """One row per (block, layer kind): the statistics averaged over the instance cases, their two
    edited shape regions and the modulated steps."""
    records = defaultdict(list)
    current: dict = {}

    def hook(attn, args, output):
        processor = attn.processor
        if isinstance(processor, WanLayoutAttnProcessor):  # the conditional call of a modulated step
            kind = "self" if _is_self_attention(args) else "cross"
            records[(processor.block, kind)].append(block_statistics(attn, args, processor, current["regions"]))

    handles = [layer.register_forward_hook(hook) for block in pipe.transformer.blocks
               for layer in (block.attn1, block.attn2)]
    try:
        for case in (c for c in CASES if c.level == "instance"):
            source, masks, _ = case_inputs(case, frames)
            current["regions"] = [i for i, r in enumerate(case.regions) if r.shape is not None and r.edited]
            pipe(source, masks, case.prompt, [r.prompt for r in case.regions], source_prompt=source_prompt(case),
                 negative_prompt="", num_inference_steps=steps, guidance_scale=guidance,
                 modulation=method.modulation(steps), blend=True, generator=torch.Generator().manual_seed(0),
                 output_type="latent")
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for (block, kind), calls in sorted(records.items()):
        rows.append({"block": block, "kind": kind, "calls": len(calls),
                     **{key: round(float(np.mean([c[key] for c in calls])), 4) for key in calls[0]}})
    return rows


def markdown(rows: list[dict], method: Method, steps: int) -> str:
    head = (f"Attention of the edited shape regions' tokens in each block (benchmark instance cases, {method.name}: "
            f"self {method.self_strength}, cross {method.cross_strength}, mean over the first "
            f"{method.modulation(steps).steps} of {steps} steps; plain / modulated from the same q and k):")
    lines = [head, "", "| block | self: own region (area share) | self: other shape (area share) | gap (nats) "
             "| cross: own prompt | cross: other prompt |", "|---|---|---|---|---|---|"]
    by_block = defaultdict(dict)
    for r in rows:
        by_block[r["block"]][r["kind"]] = r
    for block, kinds in sorted(by_block.items()):
        s, c = kinds["self"], kinds["cross"]
        lines.append(f"| {block} | {s['plain_own']:.2f} / {s['modulated_own']:.2f} ({s['own_area']:.2f}) "
                     f"| {s['plain_other']:.2f} / {s['modulated_other']:.2f} ({s['other_area']:.2f}) "
                     f"| {s['gap']:.1f} | {c['plain_own']:.2f} / {c['modulated_own']:.2f} "
                     f"| {c['plain_other']:.2f} / {c['modulated_other']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--method", default=None, help="NAME:SELF:CROSS:FRACTION (default: the paper's 0.3, 1.0, 0.3)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    method = DEFAULT_METHOD
    if args.method:
        name, *values = args.method.split(":")
        method = Method(name, *(float(v) for v in values))
    rows = measure(load_pipeline(args.model), method, args.steps, args.guidance)
    args.out.mkdir(parents=True, exist_ok=True)
    media.write_json(args.out / "attention.json", {
        "model": str(args.model), "method": method.name, "self_strength": method.self_strength,
        "cross_strength": method.cross_strength, "fraction": method.fraction, "steps": args.steps, "rows": rows})
    table = markdown(rows, method, args.steps)
    (args.out / "attention.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
