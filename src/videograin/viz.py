"""Pictures for humans: mask overlays, frame grids, side-by-side comparisons. Arrays in, arrays out (no files).

Frames are uint8 ``(F, H, W, 3)`` RGB; masks bool ``(R, F, H, W)``.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import torch.nn.functional as F

# Fixed, well-separated colours (Tableau-10 order, most saturated first); more regions get golden-ratio hues.
PALETTE = np.array(
    [
        (31, 119, 180),  # blue
        (255, 127, 14),  # orange
        (44, 160, 44),  # green
        (214, 39, 40),  # red
        (148, 103, 189),  # purple
        (23, 190, 207),  # cyan
        (227, 119, 194),  # pink
        (188, 189, 34),  # olive
        (140, 86, 75),  # brown
        (127, 127, 127),  # grey
    ],
    dtype=np.uint8,
)


def region_colors(num_regions: int) -> np.ndarray:
    """Distinct colours for ``num_regions`` regions: uint8 ``(R, 3)``, deterministic, palette first."""
    colors = [tuple(c) for c in PALETTE[:num_regions]]
    for k in range(len(colors), num_regions):
        hue = (0.11 + k * 0.618033988749895) % 1.0
        colors.append(tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb(hue, 0.85, 0.95)))
    return np.array(colors, dtype=np.uint8).reshape(num_regions, 3)


def _inner_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """bool ``(..., H, W)``: mask pixels within ``width`` px (4-neighbourhood) of a non-mask pixel.

    The frame border does not count as outside, so a region touching the edge gets no line along it.
    """
    inner = mask.copy()
    for _ in range(width):
        p = np.pad(inner, [(0, 0)] * (inner.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
        inner = inner & p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    return mask & ~inner


def mask_overlay(frames: np.ndarray, masks: np.ndarray, alpha: float = 0.45, outline: int = 1) -> np.ndarray:
    """Tint each region of ``masks`` bool ``(R, F, H, W)`` over ``frames`` uint8 ``(F, H, W, 3)``.

    Inside region r: ``(1 - alpha) * pixel + alpha * color_r`` (regions later in order tint on top), and an
    ``outline``-px line in the region colour along the inside of its border. Pixels outside every mask
    are returned unchanged. Returns uint8 ``(F, H, W, 3)``.
    """
    frames = np.asarray(frames)
    masks = np.asarray(masks).astype(bool)
    if masks.ndim == 3:
        masks = masks[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if masks.shape[1:] != frames.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match frames {frames.shape} (need (R, F, H, W))")
    out = frames.astype(np.float32)
    colors = region_colors(masks.shape[0]).astype(np.float32)
    for mask, color in zip(masks, colors):
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color
        if outline > 0:
            out[_inner_outline(mask, outline)] = color
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _pick(num_frames: int, max_columns: int) -> np.ndarray:
    n = max(1, min(num_frames, max_columns))
    return np.unique(np.round(np.linspace(0, num_frames - 1, n)).astype(int))


def grid(rows: list[np.ndarray], max_columns: int = 8, gap: int = 2) -> np.ndarray:
    """One image from several clips: row i shows up to ``max_columns`` evenly spaced frames of ``rows[i]``.

    ``rows``: list of uint8 ``(F_i, H_i, W_i, 3)`` (sizes may differ; rows are left-aligned).
    Tiles are separated by ``gap`` px of white. Returns uint8 ``(H_total, W_total, 3)``.
    """
    if not rows:
        raise ValueError("grid needs at least one row")
    picked = [np.asarray(r)[_pick(len(r), max_columns)] for r in rows]
    widths = [len(p) * p.shape[2] + (len(p) - 1) * gap for p in picked]
    heights = [p.shape[1] for p in picked]
    canvas = np.full((sum(heights) + gap * (len(rows) - 1), max(widths), 3), 255, dtype=np.uint8)
    y = 0
    for p in picked:
        h, w = p.shape[1:3]
        for j, tile in enumerate(p):
            x = j * (w + gap)
            canvas[y : y + h, x : x + w] = tile
        y += h + gap
    return canvas


_FONT, _FONT_SCALE, _INK = cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20)


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0]


def _put(canvas: np.ndarray, text: str, x: int, y: int) -> None:
    """Write ``text`` with its baseline at ``y``, in dark ink (anti-aliased)."""
    cv2.putText(canvas, text, (x, y), _FONT, _FONT_SCALE, _INK, 1, cv2.LINE_AA)


def labelled_grid(rows: list[np.ndarray], labels: list[str], legend: list[tuple[str, np.ndarray]] = (),
                  max_columns: int = 8, gap: int = 2, min_tile: int = 96) -> np.ndarray:
    """``grid`` of clips of one size with a row name left of each row, the frame numbers above the
    columns and a legend below (a colour swatch and its text per entry, e.g. region name and prompt).

    rows: uint8 ``(F, H, W, 3)`` each; labels: one per row; legend: (text, colour uint8 (3,)) pairs.
    Tiles smaller than ``min_tile`` px high are enlarged (nearest neighbour) so the text fits.
    Returns uint8 ``(H_total, W_total, 3)``.
    """
    if len(labels) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
    scale = min(8, max(1, -(-min_tile // rows[0].shape[1])))
    big = [np.asarray(r)[_pick(len(r), max_columns)].repeat(scale, 1).repeat(scale, 2) for r in rows]  # shown frames only
    body = grid(big, max_columns, gap)
    tile_h, tile_w = big[0].shape[1:3]
    line = 18  # pixels per line of text
    left = max(_text_width(label) for label in labels) + 12
    top = line + 4
    legend_h = line * len(legend) + (8 if legend else 0)
    canvas = np.full((top + body.shape[0] + legend_h, left + body.shape[1], 3), 255, dtype=np.uint8)
    canvas[top : top + body.shape[0], left:] = body
    for j, frame in enumerate(_pick(len(rows[0]), max_columns)):
        _put(canvas, f"frame {frame}", left + j * (tile_w + gap) + 2, top - 6)
    for i, label in enumerate(labels):
        _put(canvas, label, 4, top + i * (tile_h + gap) + tile_h // 2 + 5)
    y = top + body.shape[0] + 8
    for text, colour in legend:
        canvas[y + 3 : y + 15, 4:16] = np.asarray(colour, dtype=np.uint8)
        _put(canvas, text, 22, y + 13)
        y += line
    return canvas


def region_legend(names: list[str], prompts: list[str]) -> list[tuple[str, np.ndarray]]:
    """Legend entries of the regions in their overlay colours: "name: prompt" ("kept" when empty)."""
    colours = region_colors(len(names))
    return [(f"{name}: {prompt or '(kept)'}", colour) for name, prompt, colour in zip(names, prompts, colours)]


def preview(*clips: np.ndarray, max_frames: int = 120, min_side: int = 256) -> tuple[np.ndarray, float]:
    """Clips uint8 ``(F, H, W, 3)`` of one shape, side by side, made for viewing as a GIF: at most
    ``max_frames`` evenly spaced frames (every frame of a short clip, picked before anything is copied,
    so a long clip costs what the GIF holds), enlarged by a whole factor with nearest neighbour until
    the short side is at least ``min_side`` (small clips stay crisp). Returns (frames, kept frames / F:
    scale the fps by it)."""
    count = len(clips[0])
    picks = np.unique(np.linspace(0, count - 1, min(count, max_frames)).round().astype(int))
    frames = np.asarray(clips[0])[picks]
    for clip in clips[1:]:
        frames = side_by_side(frames, np.asarray(clip)[picks])
    scale = max(1, -(-min_side // min(frames.shape[1:3])))
    return frames.repeat(scale, 1).repeat(scale, 2), len(picks) / count


def side_by_side(a: np.ndarray, b: np.ndarray, gap: int = 2) -> np.ndarray:
    """Clips ``a`` and ``b`` uint8 ``(F, H, W, 3)`` next to each other with a white gap: ``(F, H, 2W + gap, 3)``."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"side_by_side needs equal shapes, got {a.shape} and {b.shape}")
    white = np.full(a.shape[:2] + (gap, 3), 255, dtype=np.uint8)
    return np.concatenate([a.astype(np.uint8), white, b.astype(np.uint8)], axis=2)


def prompt_attention(recorder, spans: list[tuple[int, int] | None], size: tuple[int, int]) -> np.ndarray:
    """Cross-attention of each region prompt's words, float32 ``(R, F, H, W)`` in [0, 1].

    recorder: an AttentionRecorder (maps per (step, level) of shape (F, h, w, L)); spans: the region
    prompts' token spans (None: no words, all zeros); size: (H, W). Each level's map is resized to
    (H, W), then levels and steps are averaged, and each region is scaled to its maximum over the video.
    """
    keys = list(recorder.maps)
    out = []
    for span in spans:
        if span is None or not keys:
            out.append(None)
            continue
        total = 0
        for step, level in keys:
            words = recorder.mean(step, level)[..., span[0] : span[1]].sum(-1)  # (F, h, w)
            total = total + F.interpolate(words[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        heat = total / len(keys)
        out.append((heat / heat.max().clamp(min=1e-12)).numpy())
    frames = next((h.shape[0] for h in out if h is not None), 0)
    return np.stack([h if h is not None else np.zeros((frames, *size), np.float32) for h in out])


def heatmap_overlay(frames: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Frames uint8 ``(F, H, W, 3)`` with ``heat`` ``(F, H, W)`` in [0, 1] as a jet colour map on top."""
    colored = np.stack([cv2.applyColorMap(np.uint8(np.clip(h, 0, 1) * 255), cv2.COLORMAP_JET) for h in heat])
    colored = colored[..., ::-1].astype(np.float32)  # BGR -> RGB
    return np.uint8(np.round((1 - alpha) * frames.astype(np.float32) + alpha * colored))
