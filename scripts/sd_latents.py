"""Edited latents of the tiny SD model under every method variant, to show a change keeps SD's results.

    python scripts/sd_latents.py save REF.safetensors        # before the change
    python scripts/sd_latents.py compare REF.safetensors     # after it: max abs difference per variant

Runs the pipeline on the CPU (tiny random-weight SD model, examples/two_balls cut to 8 frames of
64x96, 4 steps): plain VideoGrain, ReAtCo with IRJS, VideoGrain + ReAtCo, temporal windows, flow-guided
attention + PnP, per-frame and sparse-causal self-attention, no modulation, and with attention maps
recorded. ``compare`` exits 1 when a variant differs by more than 1e-5.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5


def variants() -> dict[str, dict]:
    from videograin.method.settings import FlowAid, Modulation, PnPAid, ReAtCoSettings, TemporalAidSettings, Window

    return {
        "plain": {},
        "reatco": {"modulation": None, "reatco": ReAtCoSettings(steps=2)},
        "videograin_reatco": {"reatco": ReAtCoSettings(steps=2, irjs=False)},
        "window": {"window": Window(size=4, stride=2)},
        "aids": {"temporal_aids": TemporalAidSettings(FlowAid(levels=(0, 1)), PnPAid(steps=2)),
                 "record_attention": "compare"},
        "per_frame": {"modulation": Modulation(temporal="per_frame", levels=(0, 1))},
        "sparse_causal": {"modulation": Modulation(temporal="sparse_causal")},
        "baseline": {"modulation": None},
    }


def edited_latents() -> dict[str, torch.Tensor]:
    from videograin import mask_files, media
    from videograin.pipeline_sd import VideoGrainPipeline
    from videograin.testing import make_tiny_model

    example = ROOT / "examples/two_balls"
    frames = media.read_video(example / "video.mp4", 0, 8, 1)[0]
    masks = torch.stack([torch.from_numpy(mask_files.read_mask_folder(example / "masks" / name, 0, 8, 1, 16, "masks"))
                         for name in ("left_ball", "right_ball", "ground")])
    with tempfile.TemporaryDirectory() as folder:
        pipe = VideoGrainPipeline.from_pretrained(make_tiny_model(Path(folder) / "tiny"))
    pipe.set_progress_bar_config(disable=True)
    out = {}
    for name, kwargs in variants().items():
        result = pipe(frames, masks, "a red apple and an orange ball on the grass", ["red apple", "orange ball", ""],
                      source_prompt="two balls on the grass", height=64, width=96, num_inference_steps=4,
                      guidance_scale=7.5, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
        out[name] = result.frames[0].contiguous()
    return out


def main(command: str, path: str) -> int:
    latents = edited_latents()
    if command == "save":
        save_file(latents, path)
        return 0
    reference, worst = load_file(path), 0.0
    for name, ref in reference.items():
        diff = (latents[name] - ref).abs().max().item()
        worst = max(worst, diff)
        print(f"{name:18s} max abs difference {diff:.3g}")
    return int(worst > TOLERANCE)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
