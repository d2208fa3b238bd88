"""Long clips: anchored self-attention (each frame sees anchor frames spread over the clip plus its
group of neighbours) against a float64 brute force, its chunked execution against one call, and a
static clip's smoothness across chunk boundaries.

References are written here: per frame, the keys of the frames it sees, concatenated in float64.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from test_attention import (
    ATOL, _linear64, _merge_heads, _split_heads, full_frame_reference, plain_attention, random_masks,
    reference_attention, self_module,
)
from videograin.backbones.sd_processors import StepContext, layout_processors
from videograin.method.layout import TemporalKeys, build_layout
from videograin.method.modulation import ModulationContext
from videograin.method.settings import Modulation, Window


@pytest.fixture(scope="module")
def unet(tiny_model_dir):
    model = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet").eval()
    model.set_attn_processor(AttnProcessor2_0())
    return model


def _anchored_reference(attn, hidden, frames, keys: TemporalKeys, bits, scale, cond_branch):
    """Per query frame f, attention to the tokens of ``keys``' frames of f, modulated (float64) on
    ``cond_branch`` with λ = scale·(1 − S), S the share of those keys sharing a region."""
    q, k, v = (_split_heads(_linear64(lin, hidden), attn.heads) for lin in (attn.to_q, attn.to_k, attn.to_v))
    seen = {f: row.tolist() for group, rows in keys.groups(frames) for f, row in zip(group.tolist(), rows)}
    outs = []
    for row in range(hidden.shape[0]):
        branch, f = divmod(row, frames)
        base = branch * frames
        ks = torch.cat([k[base + j] for j in seen[f]], 1)[None]
        vs = torch.cat([v[base + j] for j in seen[f]], 1)[None]
        if branch == cond_branch:
            k_bits = torch.cat([bits[j] for j in seen[f]])
            share = ((bits[f][:, None] & k_bits[None, :]) != 0).double().mean(1)
            outs.append(reference_attention(q[row : row + 1], ks, vs, bits[f], k_bits, scale * (1 - share)))
        else:
            outs.append(plain_attention(q[row : row + 1], ks, vs))
    return _linear64(attn.to_out[0], _merge_heads(torch.cat(outs)))


def _attend(unet, keys: TemporalKeys, frames: int, scale: float, seed: int):
    """The level-0 self-attention module of the tiny UNet on random hidden states of ``frames`` frames
    (two branches), modulated at ``scale`` on branch 1 over random masks with ``keys``' key frames:
    (module, hidden states, layout, output)."""
    layout = build_layout(random_masks(frames, 128, torch.Generator().manual_seed(seed)), [None] * 3, (16, 16), 2,
                          temporal=keys)
    attn = self_module(unet)
    hidden = torch.randn(2 * frames, 256, attn.to_q.in_features, generator=torch.Generator().manual_seed(seed + 1))
    ctx = StepContext(num_frames=frames, modulation=ModulationContext(0, layout, self_scale=scale), temporal=keys,
                      cond_branch=1)
    with layout_processors(unet):
        return attn, hidden, layout, attn(hidden, videograin=ctx)


@torch.no_grad()
def test_anchored_self_attention_matches_a_float64_brute_force(unet):
    """7 frames, anchors 0 and 6, groups of 3 (0-2, 3-5, 6): key sets of 4, 5 and 2 frames."""
    frames, n = 7, 256
    keys = TemporalKeys("anchored", anchors=2, group=3)
    assert sorted({rows.shape[1] for _, rows in keys.groups(frames)}) == [2, 4, 5]
    attn, hidden, layout, got = _attend(unet, keys, frames, 0.3, seed=21)
    want = _anchored_reference(attn, hidden, frames, keys, layout.at(n).bits, 0.3, cond_branch=1)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)
    full = full_frame_reference(attn, hidden, frames)
    assert (got[:frames].double() - full[:frames]).abs().max() > 1e-3  # not full attention


@torch.no_grad()
@pytest.mark.parametrize("anchors, group", [(6, 1), (2, 6), (1, 100)])
def test_anchored_equals_full_when_anchors_or_groups_cover_the_clip(unet, anchors, group):
    """Every frame an anchor, or one group holding the clip: each frame sees every frame, and the
    modulated output is the full-frame float64 reference (size terms over the whole clip included)."""
    frames, n = 6, 256
    keys = TemporalKeys("anchored", anchors=anchors, group=group)
    attn, hidden, layout, got = _attend(unet, keys, frames, 0.4, seed=23)
    full_layout = build_layout(random_masks(frames, 128, torch.Generator().manual_seed(23)), [None] * 3, (16, 16), 2)
    torch.testing.assert_close(layout.at(n).self_share, full_layout.at(n).self_share, atol=0, rtol=0)
    flat = layout.at(n).bits.flatten()
    share = ((flat[:, None] & flat[None, :]) != 0).double().mean(1)
    want = full_frame_reference(attn, hidden, frames, modulate=lambda b: (flat, 0.4 * (1 - share)) if b == 1 else None)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)


def _clip(frames: int, seed: int, noise: float = 1.0):
    """A ball moving right over ``frames`` frames of 32x32 (pixels in [0, 1], (F, 3, H, W)), its mask
    and a second region; ``noise``: the share of per-frame random texture mixed in."""
    g = torch.Generator().manual_seed(seed)
    video = 0.5 + 0.1 * torch.randn(frames, 3, 32, 32, generator=g) * noise
    masks = torch.zeros(2, frames, 32, 32, dtype=torch.bool)
    for f in range(frames):
        x = 4 + (f * 20) // max(frames - 1, 1)
        video[f, 0, 8:20, x : x + 8] = 0.9
        masks[0, f, 8:20, x : x + 8] = True
    masks[1, :, 24:, :] = True
    return video.clamp(0, 1), masks


def _edit(pipe, video, masks, modulation, steps=3):
    return pipe(video, masks, "a red ball over green grass", ["red ball", "green grass"], num_inference_steps=steps,
                modulation=modulation, output_type="latent", generator=torch.Generator().manual_seed(0)).latents


@torch.no_grad()
def test_a_chunked_anchored_denoiser_equals_one_call(tiny_pipe):
    """21 frames, anchors 0, 10, 20 in groups of 4: the anchors' chunk (9 frames) first, then chunks of
    4 or 8 frames reading the anchors' keys; guided and modulated, at every step of a schedule."""
    backbone = tiny_pipe.backbone
    video, masks = _clip(21, seed=1)
    latents = tiny_pipe.encode_frames(video * 2 - 1)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(4))
    cond, uncond = backbone.encode_prompt("a red ball over green grass"), backbone.encode_prompt("")
    schedule = backbone.schedule(4)
    modulation = Modulation(steps=4, self_strength=0.3, cross_strength=1.0)
    predictions = {}
    for chunk in (21, 4, 8):
        keys = TemporalKeys("anchored", anchors=3, group=4, chunk=chunk)
        layout = backbone.layout(masks, [(1, 3), (4, 6)], tuple(latents.shape[-2:]), keys)
        denoise = backbone.denoise_fn(cond, uncond, 7.5, 21, schedule, temporal=keys, layout=layout,
                                      modulation=modulation)
        with backbone.attention_processors():
            predictions[chunk] = [denoise(schedule.noised(latents, noise, i), int(t), i)
                                  for i, t in enumerate(schedule.timesteps)]
    assert [len(TemporalKeys("anchored", 3, 4, c).chunks(21)) for c in (21, 4, 8)] == [1, 4, 3]
    for chunk in (4, 8):
        for got, want in zip(predictions[chunk], predictions[21]):
            assert (got - want).abs().max().item() < 1e-5


def test_a_chunked_anchored_edit_equals_one_call(tiny_pipe):
    """The whole edit (inversion, modulated guided sampling), one step: the random tiny model
    amplifies float32 rounding about 100x per step, so longer runs are compared at the denoiser."""
    video, masks = _clip(21, seed=1)
    settings = dict(temporal="anchored", anchors=3, group=4, steps=3, self_strength=0.3, cross_strength=1.0)
    whole = _edit(tiny_pipe, video, masks, Modulation(**settings, chunk=21), steps=1)
    chunked = _edit(tiny_pipe, video, masks, Modulation(**settings, chunk=4), steps=1)
    assert (chunked - whole).abs().max().item() < 1e-5
    full = _edit(tiny_pipe, video, masks, Modulation(**{**settings, "temporal": "full"}), steps=1)
    assert (full - whole).abs().max().item() > 1e-3  # anchored attention is not full attention


def test_a_static_clip_edits_smoothly_across_chunk_boundaries(tiny_pipe):
    """A still scene with per-frame sensor noise, 24 frames in chunks of 4: the edit's frame-to-frame
    change where one chunk meets the next is at most 1.5x the median frame-to-frame change."""
    g = torch.Generator().manual_seed(3)
    still, masks = _clip(1, seed=2, noise=0.0)
    video = (still.expand(24, -1, -1, -1) + 0.02 * torch.randn(24, 3, 32, 32, generator=g)).clamp(0, 1)
    masks = masks.expand(-1, 24, -1, -1)
    keys = TemporalKeys("anchored", anchors=4, group=4, chunk=4)
    latents = _edit(tiny_pipe, video, masks, Modulation(temporal="anchored", anchors=4, group=4, chunk=4, steps=3,
                                                        self_strength=0.3, cross_strength=1.0))
    change = (latents[1:] - latents[:-1]).flatten(1).norm(dim=1)  # change[i]: frame i -> i + 1
    starts = [int(c[0]) for c in keys.chunks(24)[1:]] + [4 * g for g in range(1, 6)]  # chunk and group starts
    boundaries = sorted({s - 1 for s in starts if s > 0})
    assert max(change[boundaries]) <= 1.5 * change.median()


def test_a_wan_clip_past_its_trained_length_runs_in_windows_of_that_length(wan_pipe, caplog):
    """Wan was trained on 81 frames (21 latent frames): 85 frames (22 latent frames) are edited, inversion
    included, in windows of 21 latent frames 16 apart, as with that window named; a window as long as
    the clip is one pass over it, which differs."""
    from test_wan_method import _edit as wan_edit

    caps = wan_pipe.capabilities
    assert caps.trained_frames == 81 and caps.default_window(81) is None
    assert caps.default_window(85) == Window(21, 16)
    seeded = dict(frames=85, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("INFO", logger="videograin.pipeline"):
        default = wan_edit(wan_pipe, **seeded).latents
    assert "edited in windows of 21 latent frames, 16 apart" in caplog.text
    named = wan_edit(wan_pipe, window=Window(21, 16), **seeded).latents
    whole = wan_edit(wan_pipe, window=Window(22, 22), **seeded).latents
    assert default.shape[0] == 22 and torch.equal(default, named)
    assert (whole - default).abs().max() > 1e-4


def test_each_stage_shows_a_progress_bar_with_frames_per_second(tiny_model_dir):
    import io

    from videograin import VideoGrainPipeline

    pipe = VideoGrainPipeline.from_pretrained(tiny_model_dir)
    shown = io.StringIO()
    pipe.set_progress_bar_config(file=shown, mininterval=0)
    video, masks = _clip(6, seed=5)
    pipe(video, masks, "a red ball over green grass", ["red ball", "green grass"], num_inference_steps=2,
         output_type="latent")
    lines = shown.getvalue().replace("\r", "\n")
    for stage in ("invert", "edit"):
        assert any(line.startswith(f"{stage}: 100%") and "2/2" in line and "frames/s" in line
                   for line in lines.splitlines()), lines
