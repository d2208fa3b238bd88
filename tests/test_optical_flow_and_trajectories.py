"""Optical flow between video frames (DIS, and RAFT where torchvision has it), FLATTEN patch trajectories
per UNet level, and flow-guided (trajectory) attention against a dense masked reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videograin import optical_flow as OF
from videograin.method import trajectories as FL
from videograin.method.layout import token_grid
from videograin.eval import metrics as M


def shifted_video(height: int, width: int, frames: int, shift: int, seed: int = 0) -> np.ndarray:
    """uint8 (F, H, W, 3): smooth random texture moving right by ``shift`` pixels per frame; new texture
    enters at the left edge (crops of one wider image)."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.rand(1, 3, (height + 8) // 8, (width + frames * shift + 8) // 8, generator=g)
    wide = F.interpolate(wide, scale_factor=8, mode="bicubic", align_corners=False).clamp(0, 1)
    wide = (wide[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    x0 = frames * shift
    return np.stack([wide[:height, x0 - f * shift : x0 - f * shift + width] for f in range(frames)])


def constant_flow(frames: int, height: int, width: int, dx: float, dy: float) -> torch.Tensor:
    flows = torch.zeros(frames - 1, 2, height, width)
    flows[:, 0], flows[:, 1] = dx, dy
    return flows


def assert_follows_shift(traj: FL.Trajectories, sx: int, sy: int) -> None:
    """Token (y, x) of frame f shares the trajectory of token (y - f·sy, x - f·sx) of frame 0 where that is
    inside, and the trajectory count is exactly h·w plus the tokens that enter the frame later."""
    frames, h, w = traj.num_frames, traj.height, traj.width
    ids = traj.traj_id.view(frames, h, w)
    entering = 0
    for f in range(frames):
        oy, ox = f * sy, f * sx
        ys = slice(max(oy, 0), min(h, h + oy))
        xs = slice(max(ox, 0), min(w, w + ox))
        y0 = slice(max(-oy, 0), min(h, h - oy))
        x0 = slice(max(-ox, 0), min(w, w - ox))
        assert torch.equal(ids[f, ys, xs], ids[0, y0, x0]), f"frame {f} does not follow the shift"
        if f:
            # tokens whose content was not in the previous frame start new trajectories
            entering += h * w - max(h - abs(sy), 0) * max(w - abs(sx), 0)
    assert traj.count == h * w + entering


def check_invariants(traj: FL.Trajectories, disp: torch.Tensor) -> None:
    """Every token on exactly one trajectory; a trajectory is a chain through consecutive frames whose
    links follow the rounded token flow ``disp`` (F-1, 2, h, w)."""
    frames, n = traj.traj_id.shape
    w = traj.width
    flat = traj.traj_id.reshape(-1)
    assert flat.dtype == torch.int64 and flat.min() >= 0 and flat.max() == traj.count - 1
    assert (traj.lengths() > 0).all() and traj.lengths().sum() == frames * n
    frame_of = torch.arange(frames).repeat_interleave(n)
    for t in range(traj.count):
        members = (flat == t).nonzero().flatten()  # frame-major, so in frame order
        fs = frame_of[members]
        assert torch.equal(fs, torch.arange(int(fs[0]), int(fs[0]) + len(fs))), "not one token per consecutive frame"
        for a, b in zip(members[:-1].tolist(), members[1:].tolist()):
            f, p = divmod(a, n)
            y, x = divmod(p, w)
            assert b - (f + 1) * n == (y + int(disp[f, 1, y, x])) * w + (x + int(disp[f, 0, y, x]))


def reference_trajectories(flows: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Plain-Python FLATTEN chains with the documented conflict rule: (F, h*w) ids."""
    h, w = hw
    disp = FL.flow_to_tokens(flows, hw)
    exact = F.adaptive_avg_pool2d(flows, hw) * torch.tensor([w / flows.shape[-1], h / flows.shape[-2]]).view(1, 2, 1, 1)
    ids = [list(range(h * w))]
    count = h * w
    for t in range(len(flows)):
        best: dict[int, tuple[float, int]] = {}
        for p in range(h * w):
            y, x = divmod(p, w)
            ty, tx = y + int(disp[t, 1, y, x]), x + int(disp[t, 0, y, x])
            if 0 <= ty < h and 0 <= tx < w:
                err = float(((exact[t, :, y, x] - disp[t, :, y, x]) ** 2).sum())
                best[ty * w + tx] = min(best.get(ty * w + tx, (err, p)), (err, p))
        row = []
        for q in range(h * w):
            if q in best:
                row.append(ids[-1][best[q][1]])
            else:
                row.append(count)
                count += 1
        ids.append(row)
    return torch.tensor(ids)


# ----------------------------------------------------------------------------------------------- flow


def test_dis_trajectories_follow_an_integer_shift_at_every_level():
    # 32 px per frame: 4, 2 and 1 tokens per frame at levels 0, 1, 2 of a 64x64 latent
    video = shifted_video(512, 512, 4, 32)
    flows = OF.video_flow(video)
    assert flows.shape == (3, 2, 512, 512) and flows.dtype == torch.float32
    assert float(flows[:, 0].median()) == pytest.approx(32, abs=0.05)
    assert float(flows[:, 1].abs().median()) < 0.05
    levels = FL.trajectories_for_levels(flows, (64, 64), 3)
    assert sorted(levels) == [16 * 16, 32 * 32, 64 * 64]
    for level, tokens in enumerate([64 * 64, 32 * 32, 16 * 16]):
        traj = levels[tokens]
        assert (traj.height, traj.width) == token_grid((64, 64), level)
        assert_follows_shift(traj, 32 * traj.width // 512, 0)


def test_video_flow_inputs_and_errors():
    video = shifted_video(64, 64, 3, 4, seed=1)
    flows = OF.video_flow(video)
    as_float = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(OF.video_flow(as_float), flows)
    assert torch.allclose(OF.video_flow(torch.from_numpy(video)), flows)
    forward, backward = OF.optical_flow(video)
    assert np.allclose(forward, flows.permute(0, 2, 3, 1).numpy()) and backward.shape == forward.shape
    assert M.optical_flow is OF.optical_flow  # one place for flow
    with pytest.raises(ValueError, match="must be one of"):
        OF.optical_flow(video, "farneback")
    with pytest.raises(ValueError, match="at least 2 frames"):
        OF.video_flow(video[:1])
    with pytest.raises(ValueError, match="at least 12x12"):
        OF.video_flow(video[:, :8, :8])
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except ImportError:
        with pytest.raises(M.WeightsUnavailable, match="torchvision") as err:
            OF.optical_flow(video, "raft")
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------- trajectories


def test_exact_shift_non_square_and_up_left():
    # 64x96 frames, latent 8x12; shift (-16, +16) px: 2 tokens at level 0, 1 at level 1
    flows = constant_flow(5, 64, 96, dx=-16, dy=16)
    levels = FL.trajectories_for_levels(flows, (8, 12), 2)
    assert_follows_shift(levels[8 * 12], -2, 2)
    assert_follows_shift(levels[4 * 6], -1, 1)


def test_flow_to_tokens_scales_each_axis_and_pools():
    flows = constant_flow(2, 64, 128, dx=32, dy=-16)  # anisotropic grid: 16 px wide, 8 px tall tokens
    disp = FL.flow_to_tokens(flows, (8, 8))
    assert disp.dtype == torch.int64 and disp.shape == (1, 2, 8, 8)
    assert (disp[:, 0] == 2).all() and (disp[:, 1] == -2).all()
    # area: the patch mean; nearest: FLATTEN's one pixel (the patch's top-left)
    spiky = torch.zeros(1, 2, 16, 16)
    spiky[:, 0, ::8, ::8] = 64.0  # one pixel per 8x8 patch moves 64 px (8 tokens)
    assert (FL.flow_to_tokens(spiky, (2, 2)) == 0).all()  # mean 1 px = 1/8 token
    assert (FL.flow_to_tokens(spiky, (2, 2), mode="nearest")[:, 0] == 8).all()


def test_sub_token_shift_rounds_to_staying_put():
    # 4 px per frame is half a level-0 token: rounded (to even) away, every token keeps its trajectory
    traj = FL.build_trajectories(constant_flow(4, 64, 64, dx=4, dy=0), (8, 8))
    assert traj.count == 64 and torch.equal(traj.traj_id, torch.arange(64).expand(4, 64))
    # 5 px rounds up to one token
    assert_follows_shift(FL.build_trajectories(constant_flow(4, 64, 64, dx=5, dy=0), (8, 8)), 1, 0)


def test_random_flow_matches_reference_and_every_token_is_on_one_trajectory():
    g = torch.Generator().manual_seed(3)
    frames, h, w, patch = 5, 6, 7, 8
    # per-token flows of up to ±2 tokens plus sub-token noise, constant inside each patch: many conflicts
    coarse = torch.randint(-2, 3, (frames - 1, 2, h, w), generator=g).float()
    coarse += (torch.rand(frames - 1, 2, h, w, generator=g) - 0.5) * 0.8
    flows = coarse.repeat_interleave(patch, 2).repeat_interleave(patch, 3) * patch
    traj = FL.build_trajectories(flows, (h, w))
    assert torch.equal(traj.traj_id, reference_trajectories(flows, (h, w)))
    check_invariants(traj, FL.flow_to_tokens(flows, (h, w)))
    assert traj.count < frames * h * w  # some chains do continue
    # FLATTEN's one-pixel sampling is available and gives valid trajectories too
    nearest = FL.build_trajectories(flows, (h, w), mode="nearest")
    check_invariants(nearest, FL.flow_to_tokens(flows, (h, w), mode="nearest"))


def test_levels_round_up_and_key_by_tokens_per_frame():
    assert [token_grid((9, 13), lv) for lv in range(4)] == [(9, 13), (5, 7), (3, 4), (2, 2)]
    levels = FL.trajectories_for_levels(constant_flow(3, 72, 104, 0, 0), (9, 13), 4)
    assert sorted(levels) == [4, 12, 35, 117]
    for tokens, traj in levels.items():
        assert traj.traj_id.shape == (3, tokens) and traj.count == tokens


# ----------------------------------------------------------------------------------------------- attention


def dense_reference(q, k, v, traj_id, scale):
    flat = traj_id.reshape(-1)
    same = flat[:, None] == flat[None, :]
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    return s.masked_fill(~same, float("-inf")).softmax(-1) @ v.double()


def random_trajectories(seed: int = 0) -> FL.Trajectories:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(-1, 2, (3, 2, 4, 5), generator=g).float()
    return FL.build_trajectories(coarse.repeat_interleave(8, 2).repeat_interleave(8, 3) * 8, (4, 5))


def test_flow_attention_matches_dense_masked_reference():
    traj = random_trajectories()
    lengths = traj.lengths()
    assert lengths.max() == 4 and (lengths == 1).any() and len(set(lengths.tolist())) >= 3
    g = torch.Generator().manual_seed(1)
    n = traj.traj_id.numel()
    q, k = torch.randn(2, 3, n, 8, generator=g), torch.randn(2, 3, n, 8, generator=g)
    v = torch.randn(2, 3, n, 6, generator=g)
    expected = dense_reference(q, k, v, traj.traj_id, 8**-0.5)
    out = FL.flow_attention(q, k, v, traj)
    assert out.shape == v.shape and out.dtype == v.dtype
    assert torch.allclose(out.double(), expected, atol=1e-5)
    # the bare traj_id works the same; an explicit scale is used
    assert torch.allclose(FL.flow_attention(q, k, v, traj.traj_id), out)
    expected = dense_reference(q, k, v, traj.traj_id, 0.3)
    assert torch.allclose(FL.flow_attention(q, k, v, traj, scale=0.3).double(), expected, atol=1e-5)
    # gradients agree with the reference too
    qd, kd, vd = (x.double().requires_grad_() for x in (q, k, v))
    (FL.flow_attention(qd, kd, vd, traj) * vd.detach().flip(-2)).sum().backward()
    grads = [x.grad for x in (qd, kd, vd)]
    qr, kr, vr = (x.double().requires_grad_() for x in (q, k, v))
    (dense_reference(qr, kr, vr, traj.traj_id, 8**-0.5) * vr.detach().flip(-2)).sum().backward()
    for got, want in zip(grads, (qr.grad, kr.grad, vr.grad)):
        assert torch.allclose(got, want, atol=1e-10)
    with pytest.raises(ValueError, match="tokens"):
        FL.flow_attention(q[:, :, :-1], k, v, traj)


def test_combine_is_flatten_sequential_use():
    traj = random_trajectories(seed=2)
    g = torch.Generator().manual_seed(4)
    n = traj.traj_id.numel()
    dense, q, k = (torch.randn(1, 2, n, 4, generator=g) for _ in range(3))
    assert torch.allclose(FL.combine(dense, traj), FL.flow_attention(dense, dense, dense, traj))
    assert torch.allclose(FL.combine(dense, traj, q=q, k=k).double(), dense_reference(q, k, dense, traj.traj_id, 0.5), atol=1e-6)
    # tokens alone on their trajectory keep the dense output
    alone = traj.lengths()[traj.traj_id.reshape(-1)] == 1
    assert torch.equal(FL.combine(dense, traj)[:, :, alone], dense[:, :, alone])
