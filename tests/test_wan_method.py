"""Every method feature on the tiny Wan model, through the same code as on SD: ReAtCo (RAD's gradient step
through the transformer, IRJS on the flow schedule), temporal windows of latent frames and attention maps."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from videograin.method.layout import Layout, TemporalKeys
from videograin.method.reatco import invariant_region_sampling
from videograin.method.sampling import FlowSchedule, windowed_denoise_fn
from videograin.method.settings import Modulation, ReAtCoSettings, Window

PROMPT = "a red circle and a blue square on a black background"
REGIONS = ["red circle", "blue square"]


def _clip(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, 3, 32, 32) float video in [0, 1] and two static masks: the left and right quarters (latent
    columns 0 and 3 of 4; each half of its 16-pixel token column, so in that token)."""
    video = torch.rand(frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    masks = torch.zeros(2, frames, 32, 32, dtype=torch.bool)
    masks[0, ..., :8] = True
    masks[1, ..., 24:] = True
    return video, masks


def _edit(pipe, frames: int = 9, **kwargs):
    video, masks = _clip(frames)
    options = dict(height=32, width=32, num_inference_steps=4, guidance_scale=3.0, output_type="latent") | kwargs
    return pipe(video, masks, PROMPT, REGIONS, source_prompt="two gray squares", **options)


@pytest.mark.parametrize("method", ["reatco", "videograin+reatco"])
def test_reatco_runs_on_wan_and_keeps_the_source_outside_the_regions(wan_pipe, method):
    """Both ReAtCo methods end to end: RAD logs its losses on the guided steps, IRJS ends on the clean
    source latents outside the edited regions and the regions change."""
    modulation = Modulation() if method == "videograin+reatco" else None
    out = _edit(wan_pipe, reatco=ReAtCoSettings(steps=2, step_size=5.0), modulation=modulation,
                generator=torch.Generator().manual_seed(0))
    video, _ = _clip(9)
    source = wan_pipe.encode_frames(video * 2 - 1)
    edited = out.latents  # (3, 4, 4, 4): latent frames, channels, rows, columns
    assert [entry["step"] for entry in out.guidance] == [0, 1]
    assert all(entry["L_IR"] > 0 for entry in out.guidance)
    assert torch.equal(edited[..., 1:3], source[..., 1:3])  # the columns between the regions
    assert (edited[..., [0, 3]] - source[..., [0, 3]]).abs().max() > 1e-3


def test_irjs_on_the_flow_schedule_is_the_source_renoised_with_the_generators_noise(wan_pipe):
    """Outside the edited region, after every step i the latents equal (1 − σ_{i+1})·z₀ + σ_{i+1}·ε_i,
    ε_i the i-th standard normal draw of the seeded generator (written out here), and z₀ after the
    last step; inside, they are the sampler's."""
    video, masks = _clip(9)
    masks[1] = False  # one edited region: the left quarter (latent column 0 of 4)
    seen = []
    out = wan_pipe(video, masks, PROMPT, ["red circle", ""], height=32, width=32, num_inference_steps=4,
                   guidance_scale=3.0, modulation=None, reatco=ReAtCoSettings(steps=0),
                   generator=torch.Generator().manual_seed(7), output_type="latent",
                   callback_on_step_end=lambda p, i, t, kw: seen.append(kw["latents"].clone()) or kw)
    source = wan_pipe.encode_frames(video * 2 - 1)
    schedule = wan_pipe.backbone.schedule(4)
    draws = torch.Generator().manual_seed(7)
    right = (slice(None), slice(None), slice(None), slice(1, None))
    for i, latents in enumerate(seen):
        sigma = schedule.sigmas[i + 1]
        want = source if i == 3 else (1 - sigma) * source + sigma * torch.randn(source.shape, generator=draws)
        torch.testing.assert_close(latents[right], want[right], rtol=0, atol=1e-6)
    assert torch.equal(out.latents[right], source[right])
    assert (out.latents[..., :1] - source[..., :1]).abs().max() > 1e-3  # inside: sampled

    # the callback alone, on a σ grid written here
    flow = FlowSchedule((1.0, 0.6, 0.0))
    keep = torch.zeros(3, 1, 4, 4)
    moved = invariant_region_sampling(source, keep, flow, torch.Generator().manual_seed(3))(0, 1000, source * 0)
    torch.testing.assert_close(moved, 0.4 * source + 0.6 * torch.randn(source.shape, generator=torch.Generator().manual_seed(3)))


def test_rad_lowers_its_loss_on_every_guided_step_on_wan(wan_pipe):
    """Two gradient iterations per step: L_IR + L_OR at the start of the second (after one RAD update
    through the transformer) is below the first on every guided step of a seeded run."""
    out = _edit(wan_pipe, reatco=ReAtCoSettings(steps=3, iterations=2, step_size=2.0), modulation=None,
                generator=torch.Generator().manual_seed(0))
    assert len(out.guidance) == 3
    for entry in out.guidance:
        before, after = (sum(pair) for pair in entry["iterations"])
        assert after < before, entry


def test_a_window_covering_the_latent_frames_is_the_unwindowed_edit(wan_pipe):
    """17 frames -> 5 latent frames: one window of 5 (stride 2) is the clip, so the edit is the same."""
    whole = _edit(wan_pipe, frames=17)
    windowed = _edit(wan_pipe, frames=17, window=Window(size=5, stride=2))
    assert whole.latents.shape[0] == 5
    assert torch.equal(whole.latents, windowed.latents)


def _shares(bits: torch.Tensor) -> torch.Tensor:
    """Self size terms written out: for each token, the share of all tokens of the clip that share a
    region bit with it. bits (T, n) -> (T, n) float64."""
    flat = bits.flatten()
    share = ((flat[:, None] & flat[None, :]) != 0).double().mean(1)
    return share.view_as(bits)


def test_windows_of_latent_frames_average_exactly_on_overlaps(wan_pipe):
    """25 frames -> 7 latent frames; windows of 5, stride 2: [0, 5) and [2, 7). Each window's layout
    keeps its frames' bits with the size terms of its own tokens; the windowed prediction is each
    window's own where one covers a frame and the exact mean of both on frames 2-4."""
    video, masks = _clip(25)
    masks[0, 12:, :, :] = False  # the left region leaves: the windows' shares differ
    backbone = wan_pipe.backbone
    latents = wan_pipe.encode_frames(video * 2 - 1)
    layout = backbone.layout(masks, [(1, 3), (4, 6)], tuple(latents.shape[-2:]), TemporalKeys())
    windows = [slice(0, 5), slice(2, 7)]
    parts = [layout.frames(w) for w in windows]
    for w, part in zip(windows, parts):
        (grid,), (whole,) = part.levels.values(), layout.levels.values()
        assert torch.equal(grid.bits, whole.bits[w]) and part.num_frames == 5
        torch.testing.assert_close(grid.self_share.double(), _shares(grid.bits), rtol=0, atol=1e-6)
        assert torch.equal(grid.cross_share, whole.cross_share[w])
    schedule = backbone.schedule(4)
    cond = backbone.encode_prompt(PROMPT)
    denoisers = [backbone.denoise_fn(cond, None, 1.0, 5, schedule, layout=part, modulation=Modulation(4, 0.3, 1.0))
                 for part in parts]
    noisy = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    t = float(schedule.timesteps[0])
    got = windowed_denoise_fn(list(zip(windows, denoisers)))(noisy, t, 0)
    first, second = (d(noisy[w], t, 0) for d, w in zip(denoisers, windows))
    torch.testing.assert_close(got[:2], first[:2], rtol=0, atol=0)
    torch.testing.assert_close(got[5:], second[3:], rtol=0, atol=0)
    torch.testing.assert_close(got[2:5], (first[2:] + second[:3]) / 2, rtol=0, atol=1e-7)
    assert (first[2:] - second[:3]).abs().max() > 1e-4  # the overlap is really averaged
    assert _edit(wan_pipe, frames=25, window=Window(size=5, stride=2)).latents.shape[0] == 7


def test_attention_maps_are_recorded_on_wan_and_modulation_raises_each_regions_mass(wan_pipe):
    from videograin.eval.metrics import attention_mass

    out = _edit(wan_pipe, record_attention="compare", modulation=Modulation(steps=4, cross_strength=1.0))
    recorder = out.recorder
    assert sorted(recorder.maps) == [(s, b) for s in range(4) for b in range(2)]  # (step, block)
    assert recorder.mean(0, 1).shape == (3, 2, 2, 512)  # latent frames, token grid, umT5 tokens
    modulated = attention_mass(recorder, out.layout, ["left", "right"])
    plain = attention_mass(recorder.unmodulated, out.layout, ["left", "right"])
    for name in ("left", "right"):
        assert modulated["regions"][name]["mean"] > plain["regions"][name]["mean"] + 0.02, (modulated, plain)


def test_the_cli_writes_attention_maps_and_runs_reatco_on_wan(tiny_wan_dir, tmp_path):
    from videograin.toy import DEMO as TOY_EXAMPLE
    from videograin.cli import main

    config = {"model": str(tiny_wan_dir), "video": {"path": str(TOY_EXAMPLE / "frames"), "frames": 9},
              "prompt": "a purple circle and a yellow triangle on a black background",
              "regions": [{"name": "left", "prompt": "yellow triangle", "masks": {"box": [0, 5, 14, 19]}},
                          {"name": "right", "prompt": "purple circle", "masks": {"box": [18, 12, 32, 26]}}],
              "edit": {"steps": 3, "method": "videograin+reatco", "reatco": {"steps": 1},
                       "record_attention": "compare"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["edit", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    names = {p.name for p in (tmp_path / "out" / "attention").iterdir()}
    assert names == {"left.mp4", "left_unmodulated.mp4", "right.mp4", "right_unmodulated.mp4", "grid.png"}
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [entry["step"] for entry in record["reatco_losses"]] == [0]


def test_layout_frames_cuts_an_sd_layout_as_building_it_from_the_window_does(tiny_pipe):
    """On SD a window's layout was built from its frames' masks; ``Layout.frames`` gives the same."""
    masks = torch.zeros(2, 6, 32, 32, dtype=torch.bool)
    masks[0, :3, :, :10] = True
    masks[1, :, 20:, :] = True
    backbone = tiny_pipe.backbone
    whole = backbone.layout(masks, [(1, 2), None], (4, 4), TemporalKeys("sparse_causal"))
    cut, built = whole.frames(slice(2, 6)), backbone.layout(masks[:, 2:6], [(1, 2), None], (4, 4), TemporalKeys("sparse_causal"))
    assert isinstance(cut, Layout) and cut.num_frames == built.num_frames == 4
    for n, level in built.levels.items():
        for name in ("bits", "self_share", "cross_share"):
            assert torch.equal(getattr(cut.levels[n], name), getattr(level, name)), (n, name)
