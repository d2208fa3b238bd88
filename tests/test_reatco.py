"""ReAtCo (Re-Attentional Controllable Video Diffusion Editing, arXiv:2412.11710): RAD losses and
guidance, IRJS, temporal windows, spec and CLI (tiny model, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from videograin import formats
from videograin.inputs import load_inputs
from videograin.method.attention import layout_attention
from videograin.cli import main
from videograin.eval.metrics import psnr_masked
from videograin.media import to_uint8
from videograin.method.sampling import DDIMSchedule
from videograin.method.reatco import invariant_region_sampling, rad_level, rad_losses
from videograin.method.sampling import temporal_windows
from videograin.method.sampling import windowed_denoise_fn
from videograin.method.settings import ReAtCoSettings, Window
from videograin.errors import SpecError
from videograin.config.parse import load_spec, spec_from_dict
from videograin.method.tokens import PromptError, region_token_spans, word_token_indices

from conftest import EXAMPLE


@pytest.fixture(scope="module")
def example_inputs():
    spec = load_spec(EXAMPLE / "config.yaml")
    return spec, load_inputs(spec, 16)


def _reference_losses(maps, token_indices, masks, top_k):
    """Eq. 3-6 in float64 numpy, with maps renormalised over the words as the official code does."""
    maps = maps.double().numpy()
    logits = maps[..., 1:-1] * 100
    words = np.exp(logits - logits.max(-1, keepdims=True))
    words /= words.sum(-1, keepdims=True)
    l_ir = l_or = 0.0
    for j, index in enumerate(token_indices):
        inner, outer = [], []
        for i in range(maps.shape[0]):
            a = words[i, ..., index - 1].ravel()
            m = masks[j, i].numpy().ravel().astype(float)
            if m.sum() == 0:
                continue
            k = max(1, int(top_k * m.sum()))
            inner.append(np.sort(a * m)[::-1][:k].mean())
            outer.append(np.sort(a * (1 - m))[::-1][:k].mean())
        if inner:
            l_ir += 1 - np.mean(inner)
            l_or += np.mean(outer)
    return l_ir, l_or


def test_rad_losses_match_a_float64_reference_of_eq_3_to_6():
    torch.manual_seed(0)
    maps = torch.rand(3, 6, 5, 10).softmax(-1)
    masks = torch.zeros(2, 3, 6, 5, dtype=torch.bool)
    masks[0, :, 1:4, 0:2] = True
    masks[1, 0, 2:6, 2:5] = True  # region 1 only in frame 0: the other frames are skipped
    got = rad_losses(maps, [3, 7], masks, 0.2)
    want = _reference_losses(maps, [3, 7], masks, 0.2)
    np.testing.assert_allclose([float(x) for x in got], want, rtol=1e-5)


def test_rad_losses_vanish_when_the_word_owns_its_region():
    """A word whose attention is all inside its region (and nothing else's) gives L_IR ≈ 0; L_OR is
    the uniform share outside (all word logits equal there)."""
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True
    maps = torch.zeros(2, 4, 4, 8)
    maps[..., 3] = masks[0].float()
    l_ir, l_or = rad_losses(maps, [3], masks, 0.5)
    assert float(l_ir) < 1e-6
    assert float(l_or) == pytest.approx(1 / 6, rel=1e-5)


def test_temporal_windows_cover_every_frame_and_end_at_the_last():
    assert temporal_windows(8, 4, 2) == [slice(0, 4), slice(2, 6), slice(4, 8)]
    assert temporal_windows(7, 4, 2) == [slice(0, 4), slice(2, 6), slice(3, 7)]  # the official split drops frame 6
    assert temporal_windows(4, 4, 2) == [slice(0, 4)]
    assert temporal_windows(3, 8, 2) == [slice(0, 3)]
    for frames, size, stride in [(16, 4, 2), (13, 5, 3), (9, 2, 2)]:
        covered = torch.zeros(frames)
        for w in temporal_windows(frames, size, stride):
            assert w.stop - w.start == size
            covered[w] += 1
        assert (covered > 0).all()


def test_windowed_denoise_averages_each_frame_over_its_windows():
    latents = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 4, 2, 2).clone()

    def window_mean(x, t, step):  # depends on the window's content, so windows disagree on a frame
        return x.mean(0, keepdim=True).expand_as(x)

    windows = temporal_windows(5, 3, 1)  # frames 0-2, 1-3, 2-4 -> window means 1, 2, 3
    eps = windowed_denoise_fn([(w, window_mean) for w in windows])(latents, 10, 0)
    want = torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0])
    torch.testing.assert_close(eps[:, 0, 0, 0], want)


def test_rad_level_is_h_over_32_or_the_coarsest():
    assert rad_level(8, 4) == 2  # SD 1.5: latent H/8, level 2 is H/32
    assert rad_level(8, 2) == 1  # the tiny model has two levels
    assert rad_level(2, 3) == 2


def test_layout_attention_under_autograd_is_differentiable_and_exact():
    """RAD differentiates through the modulated self-attention: gradients of the auto path must
    equal those of the float64 formula s' = (1−λ)s + λ·(R ? rowmax : rowmin)."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    bits = torch.randint(0, 4, (40,))
    lam = torch.rand(40) * 0.8
    weight = torch.randn(1, 2, 40, 8)

    def grad_of(fn, dtype):
        x = q.detach().to(dtype).clone().requires_grad_(True)
        (fn(x) * weight.to(dtype)).sum().backward()
        return x.grad

    def reference(x):
        s = x @ k.double().transpose(-1, -2) * 8**-0.5
        positive = (bits[:, None] & bits[None, :]) != 0
        target = torch.where(positive, s.amax(-1, keepdim=True), s.amin(-1, keepdim=True))
        lam64 = lam.double()[:, None]
        return ((1 - lam64) * s + lam64 * target).softmax(-1) @ v.double()

    got = grad_of(lambda x: layout_attention(x, k, v, bits, bits, lam), torch.float32)
    torch.testing.assert_close(got.double(), grad_of(reference, torch.float64), atol=1e-5, rtol=1e-4)


def test_word_token_indices_point_at_the_head_word(tiny_pipe):
    tokenizer = tiny_pipe.tokenizer
    prompt = "a red apple and an orange ball on the grass"
    spans = region_token_spans(tokenizer, prompt, ["red apple", "orange ball", ""])
    ids = tokenizer(prompt).input_ids
    indices = word_token_indices(tokenizer, prompt, spans, [None, "orange", None])
    assert [tokenizer.decode([ids[i]]).strip() for i in indices[:2]] == ["apple", "orange"]
    assert indices[2] is None
    with pytest.raises(PromptError) as err:
        word_token_indices(tokenizer, prompt, spans, ["ball", None, None])  # a word of another region
    assert (err.value.region, err.value.part) == (0, "word")


def _box_regions(masks: torch.Tensor) -> torch.Tensor:
    """Each region's per-frame bounding box as a box mask (R, F, H, W) bool (ReAtCo's box input)."""
    boxes = torch.zeros_like(masks)
    for r in range(masks.shape[0]):
        for f in range(masks.shape[1]):
            ys, xs = torch.nonzero(masks[r, f], as_tuple=True)
            boxes[r, f, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return boxes


def _word_mass_inside(recorder, layout, token_indices, steps) -> list[float]:
    """Share of each word's cross-attention inside its region, over all levels and the given steps."""
    masses = []
    for region, index in enumerate(token_indices):
        if index is None:
            continue
        values = []
        for step in steps:
            for level in layout.levels.values():
                attention = recorder.mean(step, level.index)[..., index].flatten(1)  # (F, h*w)
                inside = ((level.bits >> region) & 1) == 1
                values.append(float(attention[inside].sum() / attention.sum()))
        masses.append(float(np.mean(values)))
    return masses


def test_rad_lowers_the_loss_and_moves_attention_into_the_boxes(tiny_pipe, example_inputs):
    """Same run with the RAD update off (α = 0: losses still measured) and on. Random weights give
    nearly flat maps and tiny gradients, hence the large step size; the effect must still be there
    at every guided step after the first, and in the recorded attention of the denoising passes."""
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    frames = inputs.frames_uint8[:4]
    boxes = _box_regions(inputs.masks[:2, :4])
    region_prompts = region_prompts[:2]
    runs = {}
    for name, size in [("off", 0.0), ("on", 2000.0)]:
        runs[name] = tiny_pipe(
            frames, boxes, spec.prompt, region_prompts, num_inference_steps=8, modulation=None,
            record_attention=True, reatco=ReAtCoSettings(steps=6, step_size=size, iterations=3),
            generator=torch.Generator().manual_seed(0),
        )
    loss = {name: [g["L_IR"] + g["L_OR"] for g in run.guidance] for name, run in runs.items()}
    assert len(loss["on"]) == 6 and loss["on"][0] == pytest.approx(loss["off"][0], abs=1e-6)
    assert all(a < b for a, b in zip(loss["on"][1:], loss["off"][1:])), loss
    spans = region_token_spans(tiny_pipe.tokenizer, spec.prompt, region_prompts)
    indices = word_token_indices(tiny_pipe.tokenizer, spec.prompt, spans, [None, None])
    mass = {name: _word_mass_inside(run.recorder, run.layout, indices, range(1, 6)) for name, run in runs.items()}
    assert all(on > 1.04 * off for on, off in zip(mass["on"], mass["off"])), mass


def test_irjs_returns_the_source_outside_the_edit_and_noises_it_before(tiny_pipe, example_inputs):
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    masks = inputs.masks[:, :4]
    source = tiny_pipe.encode_frames(inputs.frames[:4])
    edited_pixels = masks[[bool(p) for p in region_prompts]].any(0)
    cells = edited_pixels.unflatten(1, (-1, 8)).unflatten(3, (-1, 8)).any(4).any(2)[:, None]  # (F, 1, h, w)
    out = tiny_pipe(
        inputs.frames_uint8[:4], masks, spec.prompt, region_prompts, num_inference_steps=6,
        reatco=ReAtCoSettings(steps=2), generator=torch.Generator().manual_seed(0),
    )
    outside = ~cells.expand_as(source)
    torch.testing.assert_close(out.latents[outside], source[outside], rtol=0, atol=1e-6)
    assert (out.latents[~outside] - source[~outside]).abs().mean() > 0.1, "the edit changed nothing"

    # one intermediate step by hand: outside = √ᾱ·z0 + √(1−ᾱ)·ε with standard normal ε
    schedule = DDIMSchedule(torch.tensor([700, 400]), [0.5, 0.3, 0.9], 1000)
    callback = invariant_region_sampling(source, cells.float(), schedule, torch.Generator().manual_seed(3))
    moved = callback(0, 500, torch.zeros_like(source))
    noise = (moved - 0.3**0.5 * source) / 0.7**0.5
    assert float(moved[~outside].abs().max()) == 0.0
    assert abs(float(noise[outside].std()) - 1) < 0.05 and abs(float(noise[outside].mean())) < 0.05


def test_a_window_covering_all_frames_is_the_unwindowed_run(tiny_pipe, example_inputs):
    spec, inputs = example_inputs
    region_prompts = [r.prompt for r in spec.regions]
    frames, masks = inputs.frames_uint8[:4], inputs.masks[:, :4]
    common = dict(num_inference_steps=4, reatco=ReAtCoSettings(steps=2), record_attention=True)
    whole = tiny_pipe(frames, masks, spec.prompt, region_prompts, generator=torch.Generator().manual_seed(0), **common)
    covered = tiny_pipe(frames, masks, spec.prompt, region_prompts, generator=torch.Generator().manual_seed(0),
                        window=Window(size=4, stride=2), **common)
    assert torch.equal(whole.latents, covered.latents)
    windowed = tiny_pipe(frames, masks, spec.prompt, region_prompts, generator=torch.Generator().manual_seed(0),
                         window=Window(size=2, stride=1), **common)
    assert windowed.latents.isfinite().all() and not torch.equal(windowed.latents, whole.latents)
    assert windowed.recorder.mean(0, 0).shape == whole.recorder.mean(0, 0).shape  # merged over the windows


@pytest.mark.parametrize(("edit", "field", "hint"), [
    ({"method": "reatc"}, "edit.method", "did you mean 'reatco'"),
    ({"reatco": {"top_k": 0}}, "edit.reatco.top_k", "0.2"),
    ({"reatco": {"iterations": 0}}, "edit.reatco.iterations", ">= 1"),
    ({"reatco": {"stepsize": 1}}, "edit.reatco.stepsize", "step_size"),
    ({"window": {"size": 2, "stride": 3}}, "edit.window.stride", "stride <= 2"),
    ({"window": 4}, "edit.window", "size: 4, stride: 2"),
])
def test_reatco_settings_are_validated(tmp_path, edit, field, hint):
    (tmp_path / "video").mkdir()
    config = {"prompt": "a cat", "video": {"path": "video", "frames": 2},
              "regions": [{"name": "cat", "masks": [0, 0, 8, 8], "prompt": "a cat"}], "edit": edit}
    with pytest.raises(SpecError) as info:
        spec_from_dict(config, tmp_path)
    assert info.value.field == field and hint in str(info.value)


def test_region_word_must_be_a_word_of_its_prompt(tmp_path):
    (tmp_path / "video").mkdir()
    config = {"prompt": "a red cat", "video": {"path": "video", "frames": 2},
              "regions": [{"name": "cat", "masks": [0, 0, 8, 8], "prompt": "red cat", "word": "dog"}]}
    with pytest.raises(SpecError, match=r"regions\[0\]\.word"):
        spec_from_dict(config, tmp_path)
    config["regions"][0]["word"] = "cat"
    spec = spec_from_dict(config, tmp_path)
    assert spec.regions[0].word == "cat" and spec_from_dict(spec.to_dict(), tmp_path) == spec


def test_cli_reatco_with_boxes_records_the_losses(tmp_path, tiny_model_dir):
    from conftest import copy_example

    config_path = copy_example(tmp_path / "ex", tiny_model_dir, frames=4, output=str(tmp_path / "out"))
    config = yaml.safe_load(config_path.read_text())
    config["regions"][0]["masks"] = [10, 40, 70, 100]  # a static box for the left ball
    config["regions"][1]["word"] = "ball"
    config["edit"] = {"steps": 3, "method": "videograin+reatco", "reatco": {"steps": 2},
                      "window": {"size": 2, "stride": 1}}
    config_path.write_text(yaml.safe_dump(config))
    assert main(["edit", str(config_path)]) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [g["step"] for g in run["reatco_losses"]] == [0, 1]
    assert all(0 < g["L_IR"] <= 2 and 0 <= g["L_OR"] <= 2 for g in run["reatco_losses"])
    assert run["config"]["edit"]["method"] == "videograin+reatco"
    assert run["config"]["regions"][0]["masks"] == [10, 40, 70, 100]

    config["edit"]["reatco"]["level"] = 5
    config_path.write_text(yaml.safe_dump(config))
    assert main(["edit", str(config_path), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_irjs_keeps_pixels_away_from_the_boxes_equal_to_the_vae_round_trip(sd_pipe, example_inputs):
    pipe = sd_pipe
    spec, inputs = example_inputs
    frames = inputs.frames[:4]
    boxes = _box_regions(inputs.masks[:2, :4])
    out = pipe(inputs.frames_uint8[:4], boxes, spec.prompt, [r.prompt for r in spec.regions[:2]],
               num_inference_steps=20, modulation=None, reatco=ReAtCoSettings(steps=10), composite=False,
               generator=torch.Generator().manual_seed(0), output_type="np")
    source = pipe.decode_latents(pipe.encode_frames(frames))
    union = boxes.any(0).float()[:, None]
    far = (F.max_pool2d(union, kernel_size=33, stride=1, padding=16)[:, 0] == 0).numpy()
    assert psnr_masked(formats.output_to_uint8(out.frames[0]), to_uint8(source), far)[0] >= 35
