"""End-to-end edits on the tiny random-weight model and the bundled example (CPU, no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from videograin import io
from videograin.cli import main, psnr, to_uint8
from videograin.spec import ModulationSpec, load_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "two_balls"


@pytest.fixture()
def example_config(tmp_path, tiny_model_dir) -> Path:
    """A copy of the bundled example whose config points at the tiny model."""
    folder = tmp_path / "two_balls"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("out"))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"] = str(tiny_model_dir)
    config["output"] = str(tmp_path / "out")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


@pytest.fixture(scope="module")
def example_inputs(tmp_path_factory):
    spec = load_spec(EXAMPLE / "config.yaml")
    return spec, io.load_inputs(spec, 16)


def test_cli_edit_writes_the_output_folder(example_config, tmp_path):
    assert main(["edit", str(example_config), "--steps", "3", "--reconstruct"]) == 0
    out = tmp_path / "out"
    edited, _ = io.read_video(out / "edited.mp4", 0, 16, 1)
    assert edited.shape == (16, 128, 192, 3)
    assert len(list((out / "frames").glob("*.png"))) == 16
    for name in ["source.mp4", "masks_overlay.mp4", "reconstruction.mp4", "comparison.gif", "comparison.png"]:
        assert (out / name).stat().st_size > 0, name
    run = json.loads((out / "run.json").read_text())
    assert run["frames"] == 16 and run["size"] == [192, 128] and run["seed"] == 0
    assert run["config"]["edit"]["steps"] == 3
    assert {"torch", "diffusers", "transformers", "videograin"} <= set(run["versions"])
    assert {"invert", "edit", "decode", "total"} <= set(run["timings"])
    assert run["peak_memory_mb"] > 0 and run["reconstruction_psnr_db"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def _mass_inside(recorder, layout, spans, region, steps) -> float:
    """Share of region's prompt-token cross-attention that falls inside its own mask, averaged over
    levels and the given steps (an independent reading of the recorded maps)."""
    values = []
    for step in steps:
        for level in layout.levels.values():
            maps = recorder.mean(step, level.index)  # (F, h, w, L)
            start, end = spans[region]
            attention = maps[..., start:end].sum(-1).flatten(1)  # (F, h*w)
            inside = (level.bits & (1 << region)) != 0
            values.append(float(attention[inside].sum() / attention.sum()))
    return float(np.mean(values))


def test_modulation_moves_cross_attention_into_each_region(tiny_pipe, example_inputs):
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    spans = tiny_pipe.check_inputs(inputs.frames, inputs.masks, spec.prompt, region_prompts)
    runs = {}
    for name, mod_steps in [("on", 4), ("off", 0)]:
        runs[name] = tiny_pipe(
            inputs.frames, inputs.masks, spec.prompt, region_prompts,
            num_inference_steps=4, modulation=ModulationSpec(steps=mod_steps), blend=False, record_attention=True,
        )
    for region, span in enumerate(spans):
        if span is None:
            continue
        on = _mass_inside(runs["on"].recorder, runs["on"].layout, spans, region, range(4))
        off = _mass_inside(runs["off"].recorder, runs["off"].layout, spans, region, range(4))
        assert on > off + 0.05, (spec.regions[region].name, on, off)


def test_blend_keeps_unedited_pixels_equal_to_reconstruction(tiny_pipe, example_inputs):
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    edit = tiny_pipe(inputs.frames, inputs.masks, spec.prompt, region_prompts, num_inference_steps=10, blend=True)
    recon = tiny_pipe.reconstruct(inputs.frames, spec.source_prompt, num_inference_steps=10)
    edited_union = inputs.masks[[bool(p) for p in region_prompts]].any(0).float()[:, None]  # (F, 1, H, W)
    far = F.max_pool2d(edited_union, kernel_size=33, stride=1, padding=16)[:, 0] == 0  # 16 px dilation
    assert far.float().mean() > 0.3
    a, b = to_uint8(edit.frames)[far.numpy()], to_uint8(recon)[far.numpy()]
    assert psnr(a, b) >= 35
    inside = ~far.numpy()
    assert psnr(to_uint8(edit.frames)[inside], to_uint8(recon)[inside]) < 35, "the edit changed nothing"


def test_same_config_and_seed_give_identical_frames(example_config, tmp_path):
    for out in ["a", "b"]:
        assert main(["edit", str(example_config), "--steps", "2", "--out", str(tmp_path / out)]) == 0
    for i in (0, 7, 15):
        a = (tmp_path / "a" / "frames" / f"{i:05d}.png").read_bytes()
        assert a == (tmp_path / "b" / "frames" / f"{i:05d}.png").read_bytes()
