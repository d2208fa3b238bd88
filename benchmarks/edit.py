"""Whole-edit cost: a VideoGrain edit vs plain DDIM inversion + sampling, same frames and steps.

    python benchmarks/edit.py --model tiny --frames 16 --steps 20
    python benchmarks/edit.py --model sd15-shaped --frames 4 --size 256 256 --steps 4
    python benchmarks/edit.py --model tiny --frames 64 --steps 10 --variants videograin   # long clip
    python benchmarks/edit.py --model tiny --frames 16 --steps 10 --variants reatco reatco_w8 reatco_w4 reatco_w2

Variants, each in a fresh subprocess (peak memory is its own: CUDA max allocated, CPU max RSS):
  stock       DDIM inversion + CFG sampling with diffusers' stock processors (per-frame attention)
  fullframe   the same with videograin's spatio-temporal self-attention, no modulation
  videograin  the full edit: ST-Layout modulation for the first 30% of steps, latent blend
  reatco      ReAtCo: RAD guidance (gradients through the UNet) on the first half of the steps, IRJS;
              reatco_wN: the same in temporal windows of N frames, stride N/2
Models: `tiny` (videograin make-tiny-model) or `sd15-shaped` (SD 1.5 UNet/VAE/CLIP configs with random
weights, built in code, no download). Inputs: a synthetic clip with two moving objects.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch

VARIANTS = ("stock", "fullframe", "videograin", "reatco", "reatco_w8", "reatco_w4", "reatco_w2")
SD15_UNET = dict(
    sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
)


def build_pipeline(model: str, device: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from videograin.pipeline_sd import VideoGrainPipeline
    from videograin.testing import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="videograin-bench-") as scratch:  # the tiny model, loaded into memory
        pipe = VideoGrainPipeline.from_pretrained(make_tiny_model(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch, subfolder="tokenizer")
    if model == "sd15-shaped":
        torch.manual_seed(0)
        pipe = VideoGrainPipeline(
            vae=AutoencoderKL(**SD15_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(  # SD 1.5's CLIP ViT-L/14 text encoder shape
                vocab_size=len(tokenizer), max_position_embeddings=77, hidden_size=768, intermediate_size=3072,
                num_hidden_layers=12, num_attention_heads=12, projection_dim=768)),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**SD15_UNET),
            scheduler=pipe.scheduler,
        )
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def synthetic_clip(frames: int, width: int, height: int):
    """Frames (F, 3, H, W) in [0, 1] and masks (3, F, H, W): two discs moving towards each other,
    a part (upper half of the left disc), and the background."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    video = torch.empty(frames, 3, height, width)
    masks = torch.zeros(3, frames, height, width, dtype=torch.bool)
    radius = height / 5
    for f in range(frames):
        shift = f / max(frames - 1, 1) * width / 4
        left = (xs - width / 4 - shift) ** 2 + (ys - height / 2) ** 2 < radius**2
        right = (xs - 3 * width / 4 + shift) ** 2 + (ys - height / 2) ** 2 < radius**2
        masks[0, f], masks[1, f] = left, right
        masks[2, f] = left & (ys < height / 2)
        video[f] = torch.stack([xs / width, ys / height, (left | right).float()])
    return video, masks


def run_variant(variant: str, model: str, frames: int, size: tuple[int, int], steps: int, device: str) -> dict:
    from videograin.method.sampling import invert_latents, sample_latents
    from videograin.method.settings import Modulation, ReAtCoSettings, Window
    from videograin.method.tokens import encode_prompt

    pipe = build_pipeline(model, device)
    video, masks = synthetic_clip(frames, *size)
    prompt, regions = "a red apple and an orange ball on the grass", ["red apple", "orange ball", ""]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if variant == "stock":
        latents = pipe.encode_frames(video * 2 - 1)
        schedule = pipe.backbone.schedule(steps)
        unet = pipe.unet
        source = encode_prompt(pipe.text_encoder, pipe.tokenizer, "").expand(frames, -1, -1)
        target = encode_prompt(pipe.text_encoder, pipe.tokenizer, prompt).expand(frames, -1, -1)

        def invert_fn(x, t, step):
            return unet(x.to(unet.dtype), t, encoder_hidden_states=source).sample.float()

        def edit_fn(x, t, step):
            eps = unet(torch.cat([x, x]).to(unet.dtype), t, encoder_hidden_states=torch.cat([source, target])).sample
            uncond, cond = eps.float().chunk(2)
            return uncond + 7.5 * (cond - uncond)

        with torch.no_grad():
            trajectory = invert_latents(invert_fn, latents, schedule)
            pipe.decode_latents(sample_latents(edit_fn, trajectory[0], schedule))
    elif variant.startswith("reatco"):
        size = int(variant.partition("_w")[2] or frames)
        pipe(video, masks, prompt, regions, height=size[1], width=size[0], num_inference_steps=steps, modulation=None,
             reatco=ReAtCoSettings(steps=steps // 2), window=Window(size, max(1, size // 2)))
    else:
        modulation = Modulation(steps=0 if variant == "fullframe" else round(0.3 * steps))
        pipe(video, masks, prompt, regions, height=size[1], width=size[0], num_inference_steps=steps,
             modulation=modulation, blend=variant == "videograin")
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "sd15-shaped"], default="tiny")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=None, help="width height (tiny: 192 128, sd15: 256 256)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(args.size or ((192, 128) if args.model == "tiny" else (256, 256)))
    if args.one:
        print(json.dumps(run_variant(args.one, args.model, args.frames, size, args.steps, args.device)))
        return
    results = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--one", variant, "--model", args.model, "--frames", str(args.frames),
               "--size", *map(str, size), "--steps", str(args.steps), "--device", args.device]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=os.environ).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
        print(f"  {variant}: {results[variant]}", file=sys.stderr, flush=True)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, {args.frames} frames {size[0]}x{size[1]}, {args.steps} steps, {where}, torch {torch.__version__}\n")
    print("| variant | seconds | peak MB | time / stock | time / fullframe |")
    print("|---|---|---|---|---|")
    for variant, r in results.items():
        ratio = lambda base: f"{r['seconds'] / results[base]['seconds']:.2f}" if base in results else "–"  # noqa: E731
        print(f"| {variant} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {ratio('stock')} | {ratio('fullframe')} |")


if __name__ == "__main__":
    main()
