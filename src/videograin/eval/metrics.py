"""Evaluation: the paper's Warp-Err and Q-edit, masked fidelity (PSNR, SSIM, LPIPS outside the edited
regions), per-instance accuracy and attention mass; the CLIP scores (CLIP-T, CLIP-F, PickScore) are in
clip_scores.py.

Inputs follow the package conventions: frames are uint8 ``(F, H, W, 3)`` RGB arrays or float tensors
``(F, 3, H, W)`` in [-1, 1]; masks are bool ``(R, F, H, W)``, regions in config order; a region is
*edited* when its prompt is not empty. Every function returns plain Python numbers (JSON-ready).

Metrics that need weights (LPIPS, RAFT; the CLIP scorer for instance accuracy) load them with the library's own
``from_pretrained`` (or the package's loader); when that fails (offline, not installed) they raise
:class:`WeightsUnavailable`, and :func:`evaluate` records the reason under ``skipped`` while the other
metrics still run. Nothing here reads or writes files other than model weights.

Scales: CLIP-T, CLIP-F and Warp-Err are ×100 as in the paper (Warp-Err on pixels in [0, 1]); PSNR is
in dB and capped at :data:`PSNR_CAP_DB` where the pixels are identical (JSON has no infinity).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from ..errors import WeightsUnavailable, first_line
from ..media import as_uint8_frames, from_uint8
from ..values import is_edited
from .clip_scores import ImageTextScorer
from ..optical_flow import consistency_mask, optical_flow, pixel_grid

logger = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0
CROP_FILL = 128  # grey put outside a region's mask (and around non-square boxes) in instance crops


# ----------------------------------------------------------------------------------------------- inputs


def _as_masks(masks: Any) -> np.ndarray:
    masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim != 4:
        raise ValueError(f"masks must be (R, F, H, W), got {masks.shape}")
    return masks.astype(bool)


def _check_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {a.shape} vs {b.shape}")


# ----------------------------------------------------------------------------------------------- flow


def warp_error(
    edited: Any, source: Any | None = None, backend: str = "dis", flows: tuple[np.ndarray, np.ndarray] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Warp-Err: each edited frame t is warped onto frame t+1 with the flow of the *source* video
    (bilinear, backward flow t+1→t), and the absolute difference to edited frame t+1 is averaged over
    channels and over the pixels valid under forward-backward consistency, pooled over all frame pairs;
    pixels in [0, 1], result ×100.

    Give ``source`` (flow computed with ``backend``) or precomputed ``flows`` from :func:`optical_flow`.
    Returns ``{"warp_err", "valid_share" (share of pixels used), "flow" (backend)}``.
    """
    edited = as_uint8_frames(edited)
    if len(edited) < 2:
        raise ValueError("Warp-Err needs at least 2 frames")
    if flows is None:
        if source is None:
            raise ValueError("give the source frames or their flows")
        source = as_uint8_frames(source)
        _check_same(edited, source, "Warp-Err edited vs source")
        flows = optical_flow(source, backend, device)
    forward, backward = flows
    if forward.shape != (len(edited) - 1, *edited.shape[1:3], 2):
        raise ValueError(f"flows {forward.shape} do not fit frames {edited.shape}")
    h, w = edited.shape[1:3]
    xs, ys = pixel_grid(h, w)
    images = edited.astype(np.float32) / 255.0
    total, count = 0.0, 0
    for t in range(len(edited) - 1):
        warped = cv2.remap(images[t], xs + backward[t, ..., 0], ys + backward[t, ..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        valid = consistency_mask(forward[t], backward[t])
        error = np.abs(warped - images[t + 1]).mean(-1)
        total += float(error[valid].sum())
        count += int(valid.sum())
    pixels = (len(edited) - 1) * h * w
    value = total / count * 100 if count else float("nan")
    return {"warp_err": value, "valid_share": count / pixels, "flow": backend}


# ----------------------------------------------------------------------------------------------- fidelity


def psnr_masked(a: Any, b: Any, mask: np.ndarray | None = None, cap: float = PSNR_CAP_DB) -> tuple[float, bool]:
    """PSNR in dB between uint8 frames over the pixels where ``mask`` (F, H, W) is True (all channels),
    and whether it was capped: identical pixels give ``cap`` (default 100 dB) instead of infinity.
    Returns ``(nan, False)`` for an empty mask."""
    a, b = as_uint8_frames(a), as_uint8_frames(b)
    _check_same(a, b, "PSNR")
    diff = a.astype(np.float64) - b.astype(np.float64)
    if mask is not None:
        diff = diff[np.asarray(mask, dtype=bool)]
    if diff.size == 0:
        return float("nan"), False
    mse = float(np.mean(diff**2))
    if mse == 0:
        return cap, True
    value = 10 * math.log10(255.0**2 / mse)
    return (cap, True) if value >= cap else (value, False)


def ssim_map(a: Any, b: Any) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004: 11×11 Gaussian window, σ 1.5, K1 0.01, K2 0.03, pixels in
    [0, 1]) averaged over RGB channels: float64 ``(F, H, W)``. Its mean over a mask is masked SSIM;
    pixels within ~5 px of a change see it through the window."""
    a, b = as_uint8_frames(a), as_uint8_frames(b)
    _check_same(a, b, "SSIM")
    c1, c2 = 0.01**2, 0.03**2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    out = np.empty(a.shape[:3], dtype=np.float64)
    for f in range(len(a)):
        x, y = a[f].astype(np.float64) / 255.0, b[f].astype(np.float64) / 255.0
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out[f] = s.mean(-1)
    return out


def load_lpips(net: str = "alex"):
    """The ``lpips`` package's LPIPS (spatial output) or WeightsUnavailable. Not a dependency: install
    ``lpips`` (its linear layers ship with it; the ``net`` backbone weights come through torchvision)."""
    try:
        import lpips
    except ImportError as err:
        raise WeightsUnavailable("the lpips package is not installed (pip install lpips)") from err
    try:
        return lpips.LPIPS(net=net, spatial=True, verbose=False).eval()
    except Exception as err:  # offline backbone download (URLError), missing torchvision, ...
        raise WeightsUnavailable(f"LPIPS ({net}) weights could not be loaded: {first_line(err)}") from err


@torch.no_grad()
def _lpips_map(model, a: np.ndarray, b: np.ndarray, batch: int = 8) -> np.ndarray:
    device = next(model.parameters()).device
    maps = [model(from_uint8(a[i : i + batch]).to(device), from_uint8(b[i : i + batch]).to(device))[:, 0].float().cpu()
            for i in range(0, len(a), batch)]
    return torch.cat(maps).numpy()


def edited_union(masks: Any, region_prompts: Sequence[str]) -> np.ndarray:
    """Per-frame union of the edited regions (non-empty prompt): bool ``(F, H, W)``."""
    masks = _as_masks(masks)
    if len(region_prompts) != len(masks):
        raise ValueError(f"{len(masks)} mask sequences but {len(region_prompts)} region prompts")
    chosen = [m for m, p in zip(masks, region_prompts) if is_edited(p)]
    return np.any(chosen, axis=0) if chosen else np.zeros(masks.shape[1:], dtype=bool)


def masked_fidelity(source: Any, edited: Any, union: np.ndarray, lpips_model=None) -> tuple[dict[str, float], list[str]]:
    """PSNR (dB), SSIM and, with ``lpips_model``, LPIPS between source and edit inside and outside
    ``union`` (F, H, W) bool, the edited area. Returns ``(metrics, notes)``; keys
    ``psnr_inside_db, psnr_outside_db, ssim_inside, ssim_outside[, lpips_inside, lpips_outside]``; an
    empty side is left out. Notes say when a PSNR was capped at PSNR_CAP_DB."""
    source, edited = as_uint8_frames(source), as_uint8_frames(edited)
    _check_same(source, edited, "masked fidelity")
    union = np.asarray(union, dtype=bool)
    if union.shape != source.shape[:3]:
        raise ValueError(f"mask {union.shape} does not fit frames {source.shape}")
    ssim = ssim_map(source, edited)
    lp = _lpips_map(lpips_model, source, edited) if lpips_model is not None else None
    out: dict[str, float] = {}
    notes: list[str] = []
    for side, where in (("inside", union), ("outside", ~union)):
        if not where.any():
            continue
        value, capped = psnr_masked(source, edited, where)
        out[f"psnr_{side}_db"] = value
        if capped:
            notes.append(f"psnr_{side}_db: source and edit are identical there; reported as the cap {PSNR_CAP_DB:g} dB")
        out[f"ssim_{side}"] = float(ssim[where].mean())
        if lp is not None:
            out[f"lpips_{side}"] = float(lp[where].mean())
    return out, notes


# ----------------------------------------------------------------------------------------------- instances


def region_crops(frames: Any, mask: Any, fill: int = CROP_FILL) -> list[tuple[int, np.ndarray]]:
    """Square crops of one region: for each frame where ``mask`` (F, H, W) is non-empty, the mask's
    bounding box widened to a square around its centre, pixels outside the mask (or the frame) set to
    ``fill`` grey. Returns ``[(frame index, uint8 (S, S, 3)), ...]``."""
    frames = as_uint8_frames(frames)
    mask = np.asarray(mask, dtype=bool)
    out = []
    for f in range(len(frames)):
        ys, xs = np.nonzero(mask[f])
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        side = max(y1 - y0, x1 - x0)
        top, left = (y0 + y1 - side) // 2, (x0 + x1 - side) // 2
        crop = np.full((side, side, 3), fill, dtype=np.uint8)
        src = np.where(mask[f][..., None], frames[f], np.uint8(fill))
        sy0, sy1 = max(top, 0), min(top + side, frames.shape[1])
        sx0, sx1 = max(left, 0), min(left + side, frames.shape[2])
        crop[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = src[sy0:sy1, sx0:sx1]
        out.append((f, crop))
    return out


def instance_accuracy(
    scorer: ImageTextScorer, frames: Any, masks: Any, region_prompts: Sequence[str],
    region_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-instance accuracy (cross-instance confusion) of the edited regions.

    Every frame's crop of edited region r (:func:`region_crops`) is scored against every edited region's
    prompt; it is a hit when its own prompt scores highest. Returns ``accuracy`` (hits / crops),
    ``per_region`` accuracies, and two confusion matrices with rows = regions, columns = prompts (same
    order, ``regions``/``prompts``): ``confusion_hits`` (how often each prompt scored highest) and
    ``confusion_softmax`` (mean softmax over prompts of logit_scale · cos). Needs 2+ edited regions.
    """
    frames, masks = as_uint8_frames(frames), _as_masks(masks)
    if len(region_prompts) != len(masks):
        raise ValueError(f"{len(masks)} mask sequences but {len(region_prompts)} region prompts")
    names = list(region_names) if region_names is not None else [f"region{r}" for r in range(len(masks))]
    edited = [r for r, p in enumerate(region_prompts) if is_edited(p)]
    if len(edited) < 2:
        raise ValueError(f"needs at least 2 edited regions (non-empty prompts), got {len(edited)}")
    prompts = [region_prompts[r] for r in edited]
    texts = scorer.embed_texts(prompts)  # (K, D)
    k = len(edited)
    hits = np.zeros((k, k), dtype=np.int64)
    soft = np.zeros((k, k), dtype=np.float64)
    per_region, crops_per_region = {}, {}
    for row, r in enumerate(edited):
        crops = [crop for _, crop in region_crops(frames, masks[r])]
        crops_per_region[names[r]] = len(crops)
        if not crops:
            per_region[names[r]] = float("nan")
            continue
        sims = scorer.embed_images(crops) @ texts.T  # (N, K)
        hits[row] = np.bincount(sims.argmax(-1).numpy(), minlength=k)
        soft[row] = (sims * scorer.logit_scale).softmax(-1).mean(0).double().numpy()
        per_region[names[r]] = float(hits[row, row] / len(crops))
    total = int(hits.sum())
    return {
        "accuracy": float(np.trace(hits) / total) if total else float("nan"),
        "per_region": per_region,
        "regions": [names[r] for r in edited],
        "prompts": prompts,
        "crops": crops_per_region,
        "confusion_hits": hits.tolist(),
        "confusion_softmax": soft.tolist(),
    }


# ----------------------------------------------------------------------------------------------- attention


def attention_mass(recorder, layout, region_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Share of each region prompt's cross-attention that falls inside the region's mask.

    recorder: AttentionRecorder, ``recorder.mean(step, level)`` (F, h, w, L) probabilities averaged over
    heads and layers; layout: the edit's Layout (region r ↔ bit r of the per-level token bits and of
    ``text_bits``). For region r, step s, level l: with A(p) = Σ_{j in r's prompt tokens} attention of
    token p to j, mass = Σ_{p in r} A(p) / Σ_p A(p), pooled over frames. Regions without prompt tokens
    are left out. ``area_share`` (share of tokens inside the mask) is what flat attention would give.

    Returns ``{"steps", "levels", "regions": {name: {"mean", "area_share": {level: v},
    "per_level": {level: [mass per step]}}}, "mean"}`` (levels as strings, JSON keys).
    """
    keys = sorted(recorder.maps)
    steps = sorted({s for s, _ in keys})
    levels = sorted({lv for _, lv in keys})
    text_bits = layout.text_bits
    num_regions = len(region_names) if region_names is not None else int(text_bits.max()).bit_length()
    names = list(region_names) if region_names is not None else [f"region{r}" for r in range(num_regions)]
    regions: dict[str, Any] = {}
    for r in range(num_regions):
        tokens = (text_bits & (1 << r)) != 0  # (L,)
        if not tokens.any():
            continue
        per_level, area = {}, {}
        for level in levels:
            grid = layout.grid(level)
            inside = (grid.bits & (1 << r)) != 0  # (F, h·w)
            area[str(level)] = float(inside.float().mean())
            values = []
            for step in steps:
                if (step, level) not in recorder.maps:
                    continue
                maps = recorder.mean(step, level)  # (F, h, w, L)
                span = maps[..., tokens[: maps.shape[-1]]].sum(-1).flatten(1)  # (F, h·w)
                total = float(span.sum())
                values.append(float(span[inside].sum()) / total if total > 0 else float("nan"))
            per_level[str(level)] = values
        flat = [v for vs in per_level.values() for v in vs if not math.isnan(v)]
        regions[names[r]] = {
            "mean": float(np.mean(flat)) if flat else float("nan"),
            "area_share": area,
            "per_level": per_level,
        }
    means = [v["mean"] for v in regions.values() if not math.isnan(v["mean"])]
    return {"steps": steps, "levels": levels, "regions": regions, "mean": float(np.mean(means)) if means else float("nan")}
