"""Layout tables: mask downsampling, region bitmasks, size terms, key frames, text bits, blend masks.

Expected values are known answers or brute-force counts written in the tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videograin.method.layout import (
    TemporalKeys, blend_mask, build_layout, composite_weights, downsample_masks, latent_frame_masks, region_share,
    temporal_keys, text_token_bits, token_bits,
)
from videograin.method.settings import AUTO_ANCHORED_ABOVE, Modulation


def test_downsample_left_half_maps_to_left_half_of_tokens():
    masks = torch.zeros(1, 2, 64, 96, dtype=torch.bool)
    masks[:, :, :, :48] = True
    down = downsample_masks(masks, 4, 6)
    assert down.shape == (1, 2, 4, 6) and down.dtype == torch.bool
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[:, :3] = True
    for f in range(2):
        assert torch.equal(down[0, f], expected)


def test_downsample_majority_rule():
    """A token is in a region when at least half its pixels are (8×8-pixel tokens)."""
    masks = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    masks[0, 0, :5, :8] = True  # 40/64 of token (0, 0)
    masks[0, 0, :3, 8:] = True  # 24/64 of token (0, 1)
    masks[0, 0, 8:, 8:] = True  # all of token (1, 1)
    down = downsample_masks(masks, 2, 2)
    assert down[0, 0].tolist() == [[True, False], [False, True]]


def test_downsample_tiny_region_survives_where_present_only():
    masks = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    masks[0, 0, 20:22, 41:43] = True  # 2×2 pixels in frame 0: token (1, 2) of a 4×4 grid (16 px tokens)
    masks[0, 2, 50:51, 3:5] = True  # frame 2: token (3, 0)
    masks[1, :, :32, :] = True  # a large region elsewhere in every frame, unaffected
    down = downsample_masks(masks, 4, 4)
    expected0 = torch.zeros(3, 4, 4, dtype=torch.bool)
    expected0[0, 1, 2] = True
    expected0[2, 3, 0] = True
    assert torch.equal(down[0], expected0)  # frame 1 (region absent) stays empty
    expected1 = torch.zeros(3, 4, 4, dtype=torch.bool)
    expected1[:, :2, :] = True
    assert torch.equal(down[1], expected1)


def test_downsample_small_region_keeps_token_with_largest_coverage():
    masks = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    masks[0, 0, 8:11, 6:8] = True  # 6 px of token (1, 0) (8-pixel tokens)
    masks[0, 0, 8:10, 8:10] = True  # 4 px of token (1, 1)
    down = downsample_masks(masks, 4, 4)  # no token reaches half
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 0] = True
    assert torch.equal(down[0, 0], expected)


def test_token_bits_overlapping_regions_are_ored():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 2, 4, 5, generator=g) < 0.5
    masks[1] &= masks[0]  # a part inside an instance
    bits = token_bits(masks)
    assert bits.shape == (2, 20) and bits.dtype == torch.int64
    for f in range(2):
        for i in range(4):
            for j in range(5):
                want = sum(1 << r for r in range(3) if masks[r, f, i, j])
                assert int(bits[f, i * 5 + j]) == want
    # the part's tokens carry both bits, the instance-only tokens bit 0 alone
    assert (bits[masks[1].flatten(1)] & 0b011 == 0b011).all()


def test_token_bits_many_regions_use_high_bits():
    masks = torch.zeros(62, 1, 1, 2, dtype=torch.bool)
    masks[61, 0, 0, 0] = True
    masks[0, 0, 0, 0] = True
    masks[40, 0, 0, 1] = True
    bits = token_bits(masks)
    assert bits.tolist() == [[(1 << 61) | 1, 1 << 40]]


def test_token_bits_stay_on_the_masks_device():
    """Masks on a GPU give bits on the GPU (the pipeline once failed on CUDA mixing devices here);
    the meta device stands in for a GPU: mixing it with a CPU tensor raises the same way."""
    masks = torch.zeros(3, 2, 4, 5, dtype=torch.bool, device="meta")
    bits = token_bits(masks)
    assert bits.device.type == "meta" and bits.shape == (2, 20) and bits.dtype == torch.int64


def _keys_by_frame(temporal: TemporalKeys, num_frames: int) -> dict[int, list[int]]:
    groups = temporal.groups(num_frames)
    by_frame = {f: keys.tolist() for frames, rows in groups for f, keys in zip(frames.tolist(), rows)}
    assert sorted(by_frame) == list(range(num_frames))  # every frame in exactly one group
    assert sum(len(frames) for frames, _ in groups) == num_frames
    return by_frame


def test_key_frames_known_answers():
    assert _keys_by_frame(TemporalKeys("full"), 4) == {f: [0, 1, 2, 3] for f in range(4)}
    assert _keys_by_frame(TemporalKeys("sparse_causal"), 4) == {0: [0, 0], 1: [0, 0], 2: [0, 1], 3: [0, 2]}
    assert _keys_by_frame(TemporalKeys("per_frame"), 4) == {f: [f] for f in range(4)}
    for mode in ("causal", "auto"):  # auto is resolved before keys are made (temporal_keys)
        with pytest.raises(ValueError):
            TemporalKeys(mode)


def test_anchored_key_frames_and_chunks_known_answers():
    """21 frames, anchors at 0, 10, 20, groups of 4: 0-3, 4-7, 8-11, 12-15, 16-19, 20."""
    keys = TemporalKeys("anchored", anchors=3, group=4, chunk=8)
    assert keys.anchor_frames(21).tolist() == [0, 10, 20]
    by_frame = _keys_by_frame(keys, 21)
    assert by_frame[0] == [0, 1, 2, 3, 10, 20]
    assert by_frame[5] == [0, 4, 5, 6, 7, 10, 20]
    assert by_frame[10] == [0, 8, 9, 10, 11, 20]
    assert by_frame[20] == [0, 10, 20]
    assert [c.tolist() for c in keys.chunks(21)] == [
        [0, 1, 2, 3, 8, 9, 10, 11, 20], [4, 5, 6, 7, 12, 13, 14, 15], [16, 17, 18, 19]]
    assert [c.tolist() for c in TemporalKeys("anchored", 3, 4, chunk=4).chunks(21)][1:] == [
        [4, 5, 6, 7], [12, 13, 14, 15], [16, 17, 18, 19]]
    assert [c.tolist() for c in keys.chunks(8)] == [list(range(8))]  # not longer than a chunk: one call
    assert [c.tolist() for c in TemporalKeys("full", chunk=2).chunks(6)] == [list(range(6))]  # full never chunks
    assert _keys_by_frame(TemporalKeys("anchored", anchors=5), 5) == {f: list(range(5)) for f in range(5)}


def test_auto_temporal_resolution():
    sd_modes = ("full", "sparse_causal", "per_frame", "anchored")
    assert temporal_keys(None, AUTO_ANCHORED_ABOVE, sd_modes).mode == "full"
    assert temporal_keys(None, AUTO_ANCHORED_ABOVE + 1, sd_modes).mode == "anchored"
    assert temporal_keys(None, 1000, ("full",)).mode == "full"  # a backbone without anchored
    chosen = temporal_keys(Modulation(temporal="sparse_causal", anchors=3), 1000, sd_modes)
    assert (chosen.mode, chosen.anchors) == ("sparse_causal", 3)


# hand-written key frame sets (distinct frames; duplicates do not change a share)
KEY_FRAME_SETS = {
    "full": lambda f, n_frames: list(range(n_frames)),
    "sparse_causal": lambda f, n_frames: sorted({0, max(f - 1, 0)}),
    "per_frame": lambda f, n_frames: [f],
    "anchored": lambda f, n_frames: sorted({0, 4, 9} | set(range(f // 3 * 3, min(f // 3 * 3 + 3, n_frames)))),
}


@pytest.mark.parametrize("temporal", ["full", "sparse_causal", "per_frame", "anchored"])
def test_region_share_brute_force(temporal):
    g = torch.Generator().manual_seed(1)
    n_frames, n = 10, 12
    values = torch.tensor([0, 0b001, 0b011, 0b100, 0b110, 1 << 40])
    bits = values[torch.randint(len(values), (n_frames, n), generator=g)]
    keys = TemporalKeys(temporal, anchors=3, group=3)
    if temporal == "anchored":
        assert keys.anchor_frames(n_frames).tolist() == [0, 4, 9]  # 4.5 rounds to even
    share = region_share(bits, keys.groups(n_frames))
    assert share.shape == (n_frames, n) and share.dtype == torch.float32
    flat = bits.flatten()
    r = (flat[:, None] & flat[None, :]) != 0  # explicit (N, N) relation, frame-major
    for f in range(n_frames):
        cols = torch.cat([torch.arange(j * n, (j + 1) * n) for j in KEY_FRAME_SETS[temporal](f, n_frames)])
        for i in range(n):
            want = r[f * n + i, cols].double().mean().item()
            assert share[f, i].item() == pytest.approx(want, abs=1e-6)
    assert (share[bits == 0] == 0).all()


def test_text_token_bits_known_answer():
    bits = text_token_bits([(1, 3), None, (2, 5), (6, 7)], 9)
    assert bits.dtype == torch.int64
    assert bits.tolist() == [0, 0b0001, 0b0101, 0b0100, 0b0100, 0, 0b1000, 0, 0]


def test_build_layout_levels_and_tables():
    n_frames = 2
    masks = torch.zeros(2, n_frames, 96, 128, dtype=torch.bool)  # pixels = 8× latent (12, 16)
    masks[0, :, 0:32, 0:64] = True  # aligned to 16-pixel cells (the 6×8 grid)
    masks[1, 0, 16:32, 32:64] = True  # a part inside region 0 in frame 0 only
    layout = build_layout(masks, [(1, 3), None], latent_size=(12, 16), num_levels=2, temporal=TemporalKeys())
    assert sorted(layout.levels) == [48, 192]
    fine, coarse = layout.at(192), layout.at(48)
    assert (fine.index, fine.height, fine.width) == (0, 12, 16)
    assert (coarse.index, coarse.height, coarse.width) == (1, 6, 8)
    assert layout.num_frames == n_frames and layout.temporal.mode == "full"
    assert layout.text_bits.tolist() == [0, 1, 1] + [0] * 74

    expected = torch.zeros(n_frames, 6, 8, dtype=torch.int64)
    expected[:, 0:2, 0:4] = 0b01
    expected[0, 1, 2:4] = 0b11
    assert torch.equal(coarse.bits, expected.flatten(1))
    expected_fine = torch.zeros(n_frames, 12, 16, dtype=torch.int64)
    expected_fine[:, 0:4, 0:8] = 0b01
    expected_fine[0, 2:4, 4:8] = 0b11
    assert torch.equal(fine.bits, expected_fine.flatten(1))

    # size terms at the coarse level, counted by hand: 48 tokens per frame, 96 keys in all
    # region 0 has 8 tokens per frame (16 keys); the part (frame 0) 2 tokens, both inside region 0
    assert coarse.self_share[1, 0].item() == pytest.approx(16 / 96)  # region-0 token: all of region 0
    assert coarse.self_share[0, 8 + 2].item() == pytest.approx(16 / 96)  # part token shares bit 0 too
    assert coarse.self_share[0, 47].item() == 0.0  # background
    assert coarse.cross_share[1, 0].item() == pytest.approx(8 / 48)
    assert coarse.cross_share[0, 10].item() == pytest.approx(8 / 48)
    assert coarse.self_share.dtype == torch.float32 and coarse.cross_share.shape == (n_frames, 48)


def test_build_layout_too_many_regions():
    with pytest.raises(ValueError):
        build_layout(torch.zeros(63, 1, 8, 8, dtype=torch.bool), [None] * 63, (1, 1), 1)


def test_blend_mask_single_pixel_marks_its_latent_cell():
    masks = torch.zeros(3, 2, 64, 64, dtype=torch.bool)
    masks[0, 0, 19, 42] = True  # one edited pixel: latent cell (2, 5) of frame 0
    masks[1, :, :32, :32] = True  # not edited: ignored
    masks[2, 1, 60:64, 0:9] = True  # edited in frame 1: cells (7, 0) and (7, 1)
    got = blend_mask(masks, [True, False, True], (8, 8))
    expected = torch.zeros(2, 1, 8, 8)
    expected[0, 0, 2, 5] = 1
    expected[1, 0, 7, 0:2] = 1
    assert got.shape == (2, 1, 8, 8) and got.is_floating_point()
    assert torch.equal(got, expected)


def test_blend_mask_nothing_edited_is_zero():
    masks = torch.ones(2, 3, 16, 16, dtype=torch.bool)
    got = blend_mask(masks, [False, False], (2, 2))
    assert got.shape == (3, 1, 2, 2) and torch.equal(got, torch.zeros(3, 1, 2, 2))


def test_composite_weights_keep_kept_regions_exact_and_feather_elsewhere():
    """Known answer from a loop over pixels: weight = share of the (2m+1)² window (inside the frame)
    whose pixels lie within Chebyshev distance m of an edited pixel, and 0 on kept pixels that no
    edited region covers (an edited part inside a kept region stays edited)."""
    h, w, m = 12, 20, 1
    masks = torch.zeros(3, 1, h, w, dtype=torch.bool)
    masks[0, 0, 4:8, 4:8] = True  # edited object
    masks[1, 0, 2:10, 8:12] = True  # kept region right next to it
    masks[2, 0, 5:7, 10:12] = True  # edited part inside the kept region
    got = composite_weights(masks, [True, False, True], m)
    edited = (masks[0, 0] | masks[2, 0]).numpy()
    kept = masks[1, 0].numpy() & ~edited
    ys, xs = np.nonzero(edited)
    near = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            near[y, x] = bool((np.maximum(abs(ys - y), abs(xs - x)) <= m).any())
    want = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            window = near[max(0, y - m) : y + m + 1, max(0, x - m) : x + m + 1]
            want[y, x] = 0.0 if kept[y, x] else window.mean()
    assert got.shape == (1, 1, h, w)
    np.testing.assert_allclose(got[0, 0].numpy(), want, atol=1e-6)
    assert got[0, 0, 5, 8] == 0 and got[0, 0, 5, 10] == 1 and 0 < got[0, 0, 5, 3] < 1


def test_latent_frame_masks_follow_an_object_across_wans_four_frame_groups():
    """A 2x2-pixel object on a 4x4 frame (2x2 tokens of 2x2 pixels) at the left on frame 0, then moving
    right one pixel a frame and leaving on frame 4. By hand: frame 0 covers token (0,0) fully; frame 1
    half of (0,0) and half of (0,1); frames 2 and 3 (0,1) fully / half; frame 4 nothing. Latent frame
    0 is source frame 0: token (0,0); latent frame 1 is source frames 1-4: tokens (0,0) and (0,1)."""
    masks = torch.zeros(1, 5, 4, 4, dtype=torch.bool)
    for frame, x in enumerate([0, 1, 2, 3]):
        masks[0, frame, 0:2, x:x + 2] = True
    tokens = downsample_masks(masks, 2, 2)
    latent = latent_frame_masks(tokens, 4)
    expected = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    expected[0, 0, 0, 0] = True
    expected[0, 1, 0, :] = True
    assert torch.equal(latent, expected)
