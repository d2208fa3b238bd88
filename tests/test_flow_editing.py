"""Editing on flow models without Euler's drift: inversion-free editing (FlowEdit) against known answers,
the midpoint solver through the pipeline, the settings at both entrances, and the inversion cache."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml

from videograin.inversion_cache import InversionCache
from videograin.method.inversion_free import inversion_free_latents, start_step
from videograin.method.sampling import FlowSchedule
from videograin.method.settings import InversionFree, Modulation, ReAtCoSettings

PROMPT = "a red circle and a blue square on a black background"
REGIONS = ["red circle", "blue square"]


def _clip(frames: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, 3, 32, 32) video in [0, 1] and masks of the left and right quarters (latent columns 0 and 3)."""
    video = torch.rand(frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, frames, 32, 32, dtype=torch.bool)
    masks[0, ..., :8] = True
    masks[1, ..., 24:] = True
    return video, masks


def _edit(pipe, **kwargs):
    video, masks = _clip()
    options = dict(height=32, width=32, num_inference_steps=6, guidance_scale=3.0, output_type="latent",
                   source_prompt="two gray squares", generator=torch.Generator().manual_seed(0)) | kwargs
    return pipe(video, masks, PROMPT, REGIONS, **options)


@pytest.mark.parametrize("skip, draws", [(0.0, 1), (0.3, 3)])
def test_inversion_free_steps_by_the_velocity_difference_at_shared_noise(skip, draws):
    """With v_tar(z) = z + d and v_src(z) = z the difference at the shared noise is D + d (D = Z − x^src:
    the noise cancels only if both copies carry the same draw), so D follows D <- D + h·(D + d) from 0
    over the steps run: written out here in float64 on the σ grid."""
    source = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(1, 3, 2, 2)
    d = 0.3
    schedule = FlowSchedule.build(10, shift=3.0)
    draws_seen = []

    def noise():
        draws_seen.append(torch.randn(source.shape, dtype=torch.float64))
        return draws_seen[-1]

    out = inversion_free_latents(lambda z, t, i: z, lambda z, t, i: z + d, source, schedule, skip, noise, draws)
    gap = 0.0
    first = start_step(10, skip)
    for i in range(first, 10):
        gap += (schedule.sigmas[i + 1] - schedule.sigmas[i]) * (gap + d)
    torch.testing.assert_close(out, source + gap, rtol=0, atol=1e-12)
    assert len(draws_seen) == (10 - first) * draws


def test_inversion_free_with_the_source_as_target_returns_the_source(wan_pipe):
    """Target prompt = source prompt (one region spanning it: the regional embeddings are the prompt's),
    guidance equal, no modulation, no blend: the velocities cancel and the source latents come back."""
    video, masks = _clip()
    out = wan_pipe(video, masks[:1] | masks[1:], PROMPT, [PROMPT], source_prompt=PROMPT, modulation=None, blend=False,
                   inversion="none", height=32, width=32, num_inference_steps=6, guidance_scale=3.0,
                   generator=torch.Generator().manual_seed(0), output_type="latent")
    source = wan_pipe.encode_frames(video * 2 - 1)
    assert (out.latents - source).abs().max() < 1e-6


def test_inversion_free_edits_the_regions_and_keeps_the_source_between_them(wan_pipe):
    out = _edit(wan_pipe, inversion="none", inversion_free=InversionFree(skip=0.2, draws=2))
    video, _ = _clip()
    source = wan_pipe.encode_frames(video * 2 - 1)
    assert torch.equal(out.latents[..., 1:3], source[..., 1:3])  # the latent blend: the clean source there
    assert (out.latents[..., [0, 3]] - source[..., [0, 3]]).abs().max() > 1e-3
    assert out.timings["invert"] < 0.01  # nothing inverted


def test_the_midpoint_solver_runs_two_model_calls_per_step_in_inversion_and_edit(wan_pipe):
    calls = []
    hook = wan_pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        for solver in ("euler", "midpoint"):
            calls.clear()
            _edit(wan_pipe, solver=solver, guidance_scale=1.0)  # guidance 1: one transformer pass per call
            assert len(calls) == {"euler": 1, "midpoint": 2}[solver] * 2 * 6, solver
    finally:
        hook.remove()


@pytest.mark.parametrize("argument, value, needle", [
    ("inversion", "none", "flow-matching"),
    ("solver", "rk4", "euler"),
])
def test_sd_refuses_the_flow_only_settings_in_one_line_naming_them(tiny_pipe, argument, value, needle):
    video, masks = _clip(2)
    with pytest.raises(ValueError, match=argument) as err:
        tiny_pipe(video, masks, PROMPT, REGIONS, height=32, width=32, num_inference_steps=2, output_type="latent",
                  **{argument: value})
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, name", [
    ({"inversion": "none", "reatco": ReAtCoSettings()}, "reatco"),
    ({"inversion": "none", "latents": torch.zeros(3, 4, 4, 4)}, "latents"),
    ({"inversion": "dpm"}, "inversion"),
    ({"inversion_free": {"skip": 0.5}}, "inversion_free"),
])
def test_wan_refuses_what_inversion_free_editing_cannot_do(wan_pipe, kwargs, name):
    calls = []
    hook = wan_pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises((ValueError, TypeError), match=name):
            _edit(wan_pipe, **kwargs)
    finally:
        hook.remove()
    assert not calls


@pytest.mark.parametrize("value, problem", [({"skip": -0.1}, "skip"), ({"skip": 0.99}, "skip"),
                                            ({"draws": 0}, "draws"), ({"source_guidance": float("nan")},
                                                                      "source_guidance")])
def test_inversion_free_settings_are_checked_when_made(value, problem):
    with pytest.raises(ValueError, match=f"inversion_free.{problem}"):
        InversionFree(**value)


def test_the_midpoint_solver_runs_on_sd_at_fractional_timesteps(tiny_pipe):
    video, masks = _clip(2)
    seen = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(float(args[1])))
    try:
        out = tiny_pipe(video, masks, PROMPT, REGIONS, height=32, width=32, num_inference_steps=3, output_type="latent",
                        solver="midpoint", guidance_scale=1.0)
    finally:
        hook.remove()
    assert len(seen) == 2 * 2 * 3 and torch.isfinite(out.latents).all()
    assert any(t != int(t) for t in seen)  # the half steps' timesteps lie between the schedule's


@pytest.mark.parametrize("edit, field", [
    ({"solver": "rk4"}, "edit.solver"),
    ({"inversion": "none"}, "edit.inversion"),  # the example's model is SD
    ({"inversion_free": {"draws": 0}}, "edit.inversion_free.draws"),
    ({"inversion_free": {"skipp": 0.2}}, "edit.inversion_free.skipp"),
])
def test_the_config_gate_names_the_flow_settings(case, edit, field):
    case.config.setdefault("edit", {}).update(edit)
    line = case.fail(field)
    assert "\n" not in line.strip()


def test_a_cached_inversion_gives_the_same_edit_and_a_corrupt_entry_is_recomputed(wan_pipe, tmp_path, caplog):
    fresh = _edit(wan_pipe)
    cache = InversionCache(tmp_path / "cache")
    first = _edit(wan_pipe, inversion_cache=cache)
    [entry] = list((tmp_path / "cache").glob("*.safetensors"))
    calls = []
    hook = wan_pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        again = _edit(wan_pipe, inversion_cache=cache, modulation=Modulation(cross_strength=2.0))
        assert len(calls) == 6 * 2  # the edit's 6 guided calls only: the inversion was read
    finally:
        hook.remove()
    assert torch.equal(fresh.latents, first.latents)
    assert not torch.equal(again.latents, first.latents)
    assert torch.equal(_edit(wan_pipe, inversion_cache=cache).latents, fresh.latents)  # read back: bit for bit

    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of a stored latent
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="videograin.inversion_cache"):
        recomputed = _edit(wan_pipe, inversion_cache=cache)
    assert "checksum" in caplog.text
    assert torch.equal(recomputed.latents, fresh.latents)
    _edit(wan_pipe, inversion_cache=cache, source_prompt="two gray circles")  # another source prompt: its own entry
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_a_recommended_solver_or_inversion_must_be_known(tmp_path):
    from videograin.backbones.recommended import recommended_settings

    (tmp_path / "videograin.json").write_text('{"solver": "midpoint", "inversion": "none"}')
    chosen = recommended_settings(tmp_path, "wan")
    assert (chosen.solver, chosen.inversion) == ("midpoint", "none")
    (tmp_path / "videograin.json").write_text('{"solver": "heun"}')
    with pytest.raises(ValueError, match="solver must be one of euler, midpoint"):
        recommended_settings(tmp_path, "wan")


def test_a_batch_sweep_over_strengths_inverts_its_clip_once(tiny_wan_dir, tmp_path):
    from videograin.batch import load_jobs, run_batch

    video, masks = _clip()
    from videograin import media

    media.write_frames(tmp_path / "frames", (video.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8"))
    (tmp_path / "masks").mkdir()
    for r, name in enumerate(("left", "right")):
        media.write_frames(tmp_path / "masks" / name, masks[r].numpy().astype("uint8")[..., None].repeat(3, -1) * 255)
    config = {"model": str(tiny_wan_dir), "video": {"path": "frames", "frames": 9, "size": [32, 32]},
              "source_prompt": "two gray squares", "prompt": PROMPT,
              "regions": [{"name": "left", "masks": "masks/left", "prompt": "red circle"},
                          {"name": "right", "masks": "masks/right", "prompt": "blue square"}],
              "edit": {"steps": 4, "guidance_scale": 3.0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    jobs = [{"config": "config.yaml", "name": f"cross{c}", "set": {"edit.modulation.cross_strength": c}}
            for c in (0.5, 1.0, 2.0)]
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump({"jobs": jobs}))
    rows = run_batch(load_jobs([tmp_path / "jobs.yaml"]), tmp_path / "out", progress=False)
    assert [r["status"] for r in rows] == ["done"] * 3
    assert len(list((tmp_path / "out" / ".inversions").glob("*.safetensors"))) == 1


def test_a_cached_inversion_on_sd_gives_the_same_edit_bit_for_bit(tiny_pipe, tmp_path):
    """SD's latents come out of the VAE channels-last; the cached trajectory is read back in that layout,
    so the UNet computes exactly as on a fresh inversion."""
    video, masks = _clip(2)
    options = dict(height=32, width=32, num_inference_steps=2, output_type="latent", source_prompt="two balls")
    cache = InversionCache(tmp_path / "cache")
    fresh = tiny_pipe(video, masks, PROMPT, REGIONS, **options)
    stored = tiny_pipe(video, masks, PROMPT, REGIONS, inversion_cache=cache, **options)
    read = tiny_pipe(video, masks, PROMPT, REGIONS, inversion_cache=cache, **options)
    assert torch.equal(fresh.latents, stored.latents) and torch.equal(fresh.latents, read.latents)
