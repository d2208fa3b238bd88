"""One training step (forward + backward) of the Wan toy's transformer: cross-attention over the
pipeline's 512-row text context against the folded padding (``toyworld.wan_model.fold_text_padding``:
the caption's rows and one row for the rest, the same function), on clip and still-image batches.

    python benchmarks/wan_toy_training.py --threads 2

Random weights of the toy's shape (patch 2 on 4x16x16 latents, 10 blocks, 64 wide): the time does
not depend on the weights. Prints a markdown table with seconds per step and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from toyworld.wan_model import encode_captions, fold_text_padding, make_text_encoder, make_tokenizer, make_transformer

CAPTION = "a red circle on the left and a blue square on the right on a gray background"


def step_seconds(transformer, text_encoder, tokenizer, batch: int, frames: int, fold: bool, repeat: int) -> float:
    """Median seconds of one forward + backward on (batch, 4, frames, 16, 16) latents."""
    x = torch.randn(batch, 4, frames, 16, 16)
    times = []
    for _ in range(repeat + 1):  # the first call warms up
        start = time.perf_counter()
        text = encode_captions(text_encoder, tokenizer, [CAPTION] * batch, fold_padding=fold)
        transformer(x, torch.rand(batch) * 1000, text, return_dict=False)[0].square().mean().backward()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    text_encoder = make_text_encoder(tokenizer)
    stock = make_transformer(patch=2, layers=10, channels=4)
    folded = fold_text_padding(copy.deepcopy(stock))
    print("| batch | latent frames | 512 rows s | folded s | 512 rows / folded |")
    print("|---|---|---|---|---|")
    for batch, frames in [(32, 5), (24, 5), (96, 1)]:
        full = step_seconds(stock, text_encoder, tokenizer, batch, frames, False, args.repeat)
        fold = step_seconds(folded, text_encoder, tokenizer, batch, frames, True, args.repeat)
        print(f"| {batch} | {frames} | {full:.2f} | {fold:.2f} | {full / fold:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
