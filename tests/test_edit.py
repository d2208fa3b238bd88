"""End-to-end edits on the tiny random-weight model and the bundled example (CPU, no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from videograin import formats, media
from videograin.inputs import load_inputs
from videograin.cli import main
from videograin.eval.metrics import psnr_masked
from videograin.media import to_uint8
from videograin.method.settings import Modulation
from videograin.method.tokens import region_token_spans
from videograin.config.parse import load_spec

from conftest import EXAMPLE



@pytest.fixture(scope="module")
def example_inputs(tmp_path_factory):
    spec = load_spec(EXAMPLE / "config.yaml")
    return spec, load_inputs(spec, 16)


def test_cli_edit_writes_the_output_folder(example_config, tmp_path):
    assert main(["edit", str(example_config), "--steps", "3", "--reconstruct"]) == 0
    out = tmp_path / "out"
    edited, _ = media.read_video(out / "edited.mp4", 0, 16, 1)
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
    """Random weights give nearly flat attention (mass ≈ area share), so the effect is small but
    must be there: at the first step (identical inputs) and on average over the modulated steps."""
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    video, masks = inputs.frames_uint8[:4], inputs.masks[:, :4]
    spans = region_token_spans(tiny_pipe.tokenizer, spec.prompt, region_prompts)
    runs = {}
    for name, mod_steps in [("on", 3), ("off", 0)]:
        runs[name] = tiny_pipe(
            video, masks, spec.prompt, region_prompts,
            num_inference_steps=10, modulation=Modulation(steps=mod_steps), blend=False, record_attention=True,
        )
    for region, span in enumerate(spans):
        if span is None:
            continue
        mass = {name: [_mass_inside(run.recorder, run.layout, spans, region, [step]) for step in range(3)]
                for name, run in runs.items()}
        assert mass["on"][0] > 1.15 * mass["off"][0], (spec.regions[region].name, mass)
        assert np.mean(mass["on"]) > np.mean(mass["off"]), (spec.regions[region].name, mass)


def test_blend_pins_unedited_latents_to_the_source(tiny_pipe, example_inputs):
    """Blending keeps the latents outside the edited regions on the inversion trajectory, whose end
    is the VAE encoding of the source: there the edited latents equal it exactly."""
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    video, masks = inputs.frames_uint8[:6], inputs.masks[:, :6]
    source = tiny_pipe.encode_frames(inputs.frames[:6])
    # edited latent cells: any pixel of an edited region inside the 8x8 cell (computed here by hand)
    edited_pixels = masks[[bool(p) for p in region_prompts]].any(0)  # (F, H, W)
    cells = edited_pixels.unflatten(1, (-1, 8)).unflatten(3, (-1, 8)).any(4).any(2)[:, None]  # (F, 1, h, w)
    assert 0.05 < cells.float().mean() < 0.5
    blended = tiny_pipe(video, masks, spec.prompt, region_prompts, num_inference_steps=10, blend=True)
    outside = ~cells.expand_as(source)
    torch.testing.assert_close(blended.latents[outside], source[outside], rtol=0, atol=1e-6)
    assert (blended.latents[~outside] - source[~outside]).abs().mean() > 0.1, "the edit changed nothing"
    free = tiny_pipe(video, masks, spec.prompt, region_prompts, num_inference_steps=10, blend=False)
    assert (free.latents[outside] - source[outside]).abs().mean() > 0.1, "blending made no difference"


def test_composite_shows_the_source_away_from_edits_and_the_edit_on_them(tiny_pipe, example_inputs):
    """Pixels 2 x 8 px (the VAE factor, grown then feathered) or more from every edited region are
    the source frames exactly; pixels inside the edited regions are the decoded edit untouched."""
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    frames, masks = inputs.frames[:3], inputs.masks[:, :3]
    run = lambda composite: tiny_pipe(  # noqa: E731
        inputs.frames_uint8[:3], masks, spec.prompt, region_prompts, num_inference_steps=3, composite=composite,
        output_type="pt").frames[0] * 2 - 1
    plain, composited = run(False), run(True)
    edited = masks[[bool(p) for p in region_prompts]].any(0).float()[:, None]  # (F, 1, H, W)
    near = F.max_pool2d(edited, kernel_size=33, stride=1, padding=16)[:, 0].bool().unsqueeze(1).expand_as(plain)
    inside = edited.bool().expand_as(plain)
    assert 0.2 < (~near).float().mean() < 0.9
    torch.testing.assert_close(composited[~near], frames[~near], rtol=0, atol=1e-6)
    torch.testing.assert_close(composited[inside], plain[inside], rtol=0, atol=1e-6)
    assert (plain[~near] - frames[~near]).abs().mean() > 0.05, "without composite the far pixels differ"


def test_blend_keeps_pixels_away_from_edits_equal_to_the_vae_round_trip(sd_pipe, example_inputs):
    pipe = sd_pipe
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    frames, masks = inputs.frames[:4], inputs.masks[:, :4]
    edit = pipe(inputs.frames_uint8[:4], masks, spec.prompt, region_prompts, num_inference_steps=20, blend=True,
                composite=False, output_type="np")
    source = pipe.decode_latents(pipe.encode_frames(frames))
    edited_union = masks[[bool(p) for p in region_prompts]].any(0).float()[:, None]
    far = (F.max_pool2d(edited_union, kernel_size=33, stride=1, padding=16)[:, 0] == 0).numpy()
    assert psnr_masked(formats.output_to_uint8(edit.frames[0]), to_uint8(source), far)[0] >= 35


def test_same_config_and_seed_give_identical_frames(example_config, tmp_path):
    for out in ["a", "b"]:
        assert main(["edit", str(example_config), "--steps", "2", "--out", str(tmp_path / out)]) == 0
    for i in (0, 7, 15):
        a = (tmp_path / "a" / "frames" / f"{i:05d}.png").read_bytes()
        assert a == (tmp_path / "b" / "frames" / f"{i:05d}.png").read_bytes()


def test_record_attention_writes_heat_maps_of_edited_regions(example_config, tmp_path):
    config = yaml.safe_load(example_config.read_text())
    config["edit"]["record_attention"] = True
    config["video"]["frames"] = 4
    example_config.write_text(yaml.safe_dump(config))
    assert main(["edit", str(example_config), "--steps", "2"]) == 0
    attention = tmp_path / "out" / "attention"
    assert sorted(p.name for p in attention.iterdir()) == ["grid.png", "left_ball.mp4", "right_ball.mp4"]
    heat, _ = media.read_video(attention / "left_ball.mp4", 0, 4, 1)
    assert heat.shape == (4, 128, 192, 3)

    config["edit"]["record_attention"] = "compare"
    example_config.write_text(yaml.safe_dump(config))
    assert main(["edit", str(example_config), "--steps", "2", "--out", str(tmp_path / "cmp")]) == 0
    names = sorted(p.name for p in (tmp_path / "cmp" / "attention").iterdir())
    assert names == ["grid.png", "left_ball.mp4", "left_ball_unmodulated.mp4", "right_ball.mp4",
                     "right_ball_unmodulated.mp4"]


def test_compared_attention_is_each_layer_before_its_modulation(tiny_pipe, example_inputs):
    """"compare" records each layer's cross-attention also before the layout modulation (same hidden
    states): identical to the modulated maps when cross-attention is not modulated, and with less of
    each region prompt's mass inside its own mask when it is."""
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    frames, masks = inputs.frames_uint8[:3], inputs.masks[:, :3]
    spans = region_token_spans(tiny_pipe.tokenizer, spec.prompt, region_prompts)
    run = lambda cross: tiny_pipe(  # noqa: E731
        frames, masks, spec.prompt, region_prompts, num_inference_steps=3, record_attention="compare",
        modulation=Modulation(steps=2, cross_strength=cross)).recorder
    self_only = run(0.0)
    for level in range(tiny_pipe.num_levels):
        torch.testing.assert_close(self_only.unmodulated.mean(0, level), self_only.mean(0, level), rtol=0, atol=0)
    both = run(1.0)
    layout = tiny_pipe(frames, masks, spec.prompt, region_prompts, num_inference_steps=1).layout
    for region, span in enumerate(spans):
        if span is not None:
            after = _mass_inside(both, layout, spans, region, [0])
            before = _mass_inside(both.unmodulated, layout, spans, region, [0])
            assert after > 1.05 * before, (region, after, before)


def test_prompt_attention_reads_the_span_and_normalises():
    from videograin.method.recorder import AttentionRecorder
    from videograin.viz import heatmap_overlay, prompt_attention

    recorder = AttentionRecorder()
    maps = torch.zeros(1, 2, 2, 5)  # (F, h, w, L)
    maps[0, 0, 1, 2] = 0.8  # word 2 attends the top-right token
    maps[0, 1, 0, 3] = 0.4  # word 3 the bottom-left one
    recorder.add(0, 0, maps)
    recorder.add(0, 0, maps * 0.5)  # mean over layers: 0.75 x maps
    heat = prompt_attention(recorder, [(2, 3), (2, 4), None], (2, 2))
    assert heat.shape == (3, 1, 2, 2)
    np.testing.assert_allclose(heat[0, 0], [[0, 1], [0, 0]], atol=1e-6)
    np.testing.assert_allclose(heat[1, 0], [[0, 1], [0.5, 0]], atol=1e-6)  # words 2+3, scaled by the max
    assert not heat[2].any()
    frames = np.full((1, 2, 2, 3), 100, np.uint8)
    assert (heatmap_overlay(frames, heat[0], alpha=0.0) == frames).all()
    hot = heatmap_overlay(frames, heat[0], alpha=1.0)
    assert hot[0, 0, 1, 0] > 100 > hot[0, 0, 1, 2]  # jet at 1 is red, at 0 blue
    assert hot[0, 1, 0, 2] > 100 > hot[0, 1, 0, 0]


def test_cli_overrides_and_the_run_record(tmp_path, tiny_model_dir, capsys, caplog):
    """--seed, --prompt, --guidance-scale, --method reach the resolved config; run.json says how the run
    was called and when; the run ends with a summary of where the outputs went."""
    from conftest import copy_example

    config_path = copy_example(tmp_path / "short", tiny_model_dir, frames=4)
    out = tmp_path / "over"
    argv = ["edit", str(config_path), "--out", str(out), "--steps", "2", "--seed", "7", "--guidance-scale", "3",
            "--method", "videograin+reatco", "--prompt", "a red apple and an orange ball on the green grass"]
    capsys.readouterr()
    with caplog.at_level("INFO", logger="videograin"):
        assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    config = run["config"]
    assert (config["edit"]["seed"], config["edit"]["guidance_scale"], config["edit"]["method"]) == (7, 3.0,
                                                                                                   "videograin+reatco")
    assert config["prompt"].endswith("green grass") and run["seed"] == 7 and "reatco_losses" in run
    assert run["argv"] == argv and run["started_utc"].endswith("+00:00") and run["model"]
    assert f"wrote {out}" in caplog.text and "peak memory" in caplog.text and "edited.mp4" in caplog.text
    capsys.readouterr()
    assert main(["edit", str(config_path), "--out", str(tmp_path / "bad"), "--method", "magic"]) == 2
    assert "edit.method" in capsys.readouterr().err


def test_a_cli_edit_prints_no_third_party_warnings(example_config, tmp_path):
    """Every stderr line of a whole edit is the project's: no transformers/torchvision notices, no
    diffusers dtype warnings (the weights load in their dtype)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "videograin", "edit", str(example_config), "--steps", "2",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    foreign = [line for line in lines if any(word in line for word in
                                             ("arning", "[transformers]", "There are modules", "deprecat", "torchvision"))]
    assert not foreign, foreign
    assert any(line.startswith("wrote ") for line in lines)
    quiet = subprocess.run([sys.executable, "-m", "videograin", "edit", str(example_config), "--steps", "2",
                            "--out", str(tmp_path / "quiet"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr.strip() == "", quiet.stderr


def test_the_library_edit_call(example_config, tmp_path):
    """videograin.edit is what the CLI runs: same folder, same frames."""
    import videograin

    record = videograin.edit(example_config, tmp_path / "lib", steps=2, progress=False)
    assert record["command"] == "edit" and record["config"]["edit"]["steps"] == 2
    assert main(["edit", str(example_config), "--steps", "2", "--out", str(tmp_path / "cli")]) == 0
    for a, b in zip(sorted((tmp_path / "lib" / "frames").iterdir()), sorted((tmp_path / "cli" / "frames").iterdir())):
        assert a.read_bytes() == b.read_bytes()
    with pytest.raises(TypeError, match="unknown override"):
        videograin.edit(example_config, tmp_path / "x", colour="red")


def test_edit_reports_each_step_and_a_cancel_writes_nothing_and_leaves_the_pipeline_usable(example_config, tmp_path):
    """on_step follows inversion then editing; a cancel set at edit step 2 (as a web app's Cancel
    button, from its own thread) ends the run with EditCancelled, no output folder and no temporary
    folder; the next edit with the same cached pipeline runs to the end."""
    import threading

    import videograin
    from videograin.errors import EditCancelled

    steps, seen, cancel, pipelines = 3, [], threading.Event(), {}

    def on_step(stage, done, total):
        seen.append((stage, done, total))
        if (stage, done) == ("edit", 2):
            threading.Thread(target=cancel.set).start()
            cancel.wait()

    with pytest.raises(EditCancelled):
        videograin.edit(example_config, tmp_path / "out" / "cancelled", steps=steps, progress=False,
                        pipelines=pipelines, on_step=on_step, cancel=cancel)
    assert seen == [("invert", i, steps) for i in (1, 2, 3)] + [("edit", 1, steps), ("edit", 2, steps)]
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    seen.clear()
    videograin.edit(example_config, tmp_path / "out" / "next", steps=steps, progress=False, pipelines=pipelines,
                    on_step=lambda *a: seen.append(a), cancel=threading.Event())
    assert len(seen) == 2 * steps and len(list((tmp_path / "out" / "next" / "frames").iterdir())) > 0


def test_from_pipe_turns_a_stable_diffusion_pipeline_into_the_same_editor(tiny_model_dir, tiny_pipe):
    """The type-annotated __init__ lets diffusers' from_pipe reuse a loaded SD pipeline's components;
    its edit equals the one of the pipeline loaded from the folder."""
    from diffusers import StableDiffusionPipeline

    from videograin.pipeline_sd import VideoGrainPipeline

    sd = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    pipe = VideoGrainPipeline.from_pipe(sd)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet is sd.unet and type(pipe.scheduler).__name__ == "DDIMScheduler"
    frames = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 2, 32, 32, dtype=torch.bool)
    masks[0, :, :, :16], masks[1, :, :, 16:] = True, True
    run = lambda p: p(frames, masks, "a red apple on the grass", ["red apple", ""], num_inference_steps=2).latents  # noqa: E731
    torch.testing.assert_close(run(pipe), run(tiny_pipe), rtol=0, atol=0)
