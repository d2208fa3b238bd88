"""Optical flow of a video: OpenCV DIS (no weights) or torchvision RAFT-large (its weights on disk).

Used by the metrics' Warp-Err (forward and backward, numpy), the mask tracker (masks.py) and, as the
forward flow tensor, by the FLATTEN trajectories of method/trajectories.py; ``consistency_mask`` is the
forward-backward check both the metrics and the tracker use. Frames are uint8 ``(F, H, W, 3)`` or float
``(F, 3, H, W)`` in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import WeightsUnavailable, first_line
from .media import as_uint8_frames, from_uint8

FLOW_BACKENDS = ("dis", "raft")
DIS_MIN_SIZE = 12  # OpenCV's DIS refuses smaller frames


def _dis_flow(frames: np.ndarray, backward: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """frames uint8 (F, H, W, 3) -> forward, backward (F-1, H, W, 2) float32 (backward None if not asked)."""
    if min(frames.shape[1:3]) < DIS_MIN_SIZE:
        raise ValueError(f"DIS flow needs frames of at least {DIS_MIN_SIZE}x{DIS_MIN_SIZE} pixels, got {frames.shape[2]}x{frames.shape[1]}")
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    fwd = np.stack([dis.calc(grey[t], grey[t + 1], None) for t in range(len(grey) - 1)]).astype(np.float32)
    if not backward:
        return fwd, None
    bwd = np.stack([dis.calc(grey[t + 1], grey[t], None) for t in range(len(grey) - 1)]).astype(np.float32)
    return fwd, bwd


def _raft_model():
    try:
        from torchvision.models.optical_flow import Raft_Large_Weights, raft_large
    except ImportError as err:
        raise WeightsUnavailable("RAFT needs torchvision, which is not installed (pip install torchvision)") from err
    weights = Raft_Large_Weights.DEFAULT
    try:
        return raft_large(weights=weights, progress=False)
    except Exception as err:  # offline: URLError (an OSError); a broken cache: RuntimeError
        raise WeightsUnavailable(f"RAFT weights could not be loaded: {first_line(err)}") from err


def _raft_flow(frames: np.ndarray, device):
    """frames uint8 (F, H, W, 3) -> forward, backward (F-1, H, W, 2) float32."""
    model = _raft_model()
    device = torch.device(device or "cpu")
    model = model.eval().to(device)
    x = from_uint8(frames)
    h, w = x.shape[-2:]
    x = F.pad(x, (0, -w % 8, 0, -h % 8), mode="replicate")  # RAFT needs sizes divisible by 8
    fwd, bwd = [], []
    with torch.no_grad():
        for t in range(len(frames) - 1):
            a, b = x[t : t + 1].to(device), x[t + 1 : t + 2].to(device)
            flows = model(torch.cat([a, b]), torch.cat([b, a]))[-1][..., :h, :w]
            flows = flows.permute(0, 2, 3, 1).float().cpu().numpy()
            fwd.append(flows[0])
            bwd.append(flows[1])
    return np.stack(fwd), np.stack(bwd)


def optical_flow(frames: Any, backend: str = "dis", device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward optical flow of consecutive frames, each ``(F-1, H, W, 2)`` float32 (x, y):
    ``frame[t](p) ≈ frame[t+1](p + forward[t](p))`` and ``frame[t+1](p) ≈ frame[t](p + backward[t](p))``.

    frames: uint8 ``(F, H, W, 3)`` or float ``(F, 3, H, W)`` in [-1, 1]. backend ``"dis"``: OpenCV DIS
    (medium preset) on grey frames, no weights; ``"raft"``: torchvision RAFT-large (raises
    ``errors.WeightsUnavailable`` without torchvision or its weights; may download them).
    """
    frames = as_uint8_frames(frames)
    if len(frames) < 2:
        raise ValueError("optical flow needs at least 2 frames")
    if backend == "dis":
        return _dis_flow(frames)
    if backend == "raft":
        return _raft_flow(frames, device)
    raise ValueError(f"flow backend must be one of {FLOW_BACKENDS}, got {backend!r}")


def video_flow(frames: Any) -> torch.Tensor:
    """Forward DIS flow between consecutive frames: float32 ``(F-1, 2, H, W)``, channels (x, y) in
    pixels (what ``method.trajectories.build_trajectories`` takes).

    frames: uint8 ``(F, H, W, 3)`` (numpy or tensor) or float ``(F, 3, H, W)`` in [-1, 1].
    """
    frames = as_uint8_frames(frames)
    if len(frames) < 2:
        raise ValueError("optical flow needs at least 2 frames")
    fwd, _ = _dis_flow(frames, backward=False)
    return torch.from_numpy(np.ascontiguousarray(fwd)).permute(0, 3, 1, 2).contiguous()


def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel, float32 (H, W) each (cv2.remap's maps of the identity)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def consistency_mask(forward: np.ndarray, backward: np.ndarray, alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    """Pixels of frame t+1 whose backward flow is trusted: bool ``(H, W)``.

    forward, backward: ``(H, W, 2)`` flows t→t+1 and t+1→t. A pixel p is valid when p + b(p) lies inside
    the frame and the round trip closes (Sundaram et al. 2010):
    ``|b(p) + f(p + b(p))|² ≤ alpha·(|b(p)|² + |f(p + b(p))|²) + beta``; occluded pixels fail it.
    """
    h, w = backward.shape[:2]
    xs, ys = pixel_grid(h, w)
    map_x, map_y = xs + backward[..., 0], ys + backward[..., 1]
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    f_at = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    loop = ((backward + f_at) ** 2).sum(-1)
    bound = alpha * ((backward**2).sum(-1) + (f_at**2).sum(-1)) + beta
    return inside & (loop <= bound)
