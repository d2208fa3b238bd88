"""A deterministic, learning-free judge: reads each shape's colour, class and place from uint8 frames.

1. Background: the world's background colour nearest to the median of the frame border.
2. Foreground: pixels farther than ``FG_DIST`` from the background colour; each gets the nearest of
   the world's shape colours, and pixels far from every shape colour are dropped.
3. Shapes: 8-connected components of foreground, at least ``MIN_AREA`` px (shapes never touch), each
   of its most frequent colour label.
4. Class: the component is compared with a circle, a square and an (apex-up) triangle of its area,
   rendered at its centroid as the world renders them; the best intersection-over-union wins.
5. Place: the third of the frame width that holds the component's centroid.
6. Parts: the largest piece of one other colour inside a shape, of at least MIN_PART_SHARE of it and
   mostly off its rim (so a blurred edge is none): its colour, and "stripe" when its box is at least
   STRIPE_ASPECT times as wide as high, else "dot". Classes are fitted to the shape's filled outline,
   so a shape with a part reads as the same shape without one.

On frames rendered by :mod:`toyworld.world` the judge is exact (see tests/test_toyworld_world.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .world import BACKGROUNDS, COLORS, SHAPES, Shape, place_of, shape_mask

FG_DIST = 60.0  # RGB distance from the background colour above which a pixel is foreground
COLOR_DIST = 110.0  # a foreground pixel farther than this from every shape colour is ignored
MIN_AREA = 10  # px; smaller components are noise
MIN_PART_AREA = 3  # px; a part smaller than this is not read
MIN_PART_SHARE = 0.05  # nor one covering less than this share of its shape
STRIPE_ASPECT = 1.3  # a part box this many times wider than high is a stripe (rendered: dots 0.8-1.25, stripes 1.33-3.7)
_OFFSETS = (-0.5, -0.25, 0.0, 0.25, 0.5)  # px searched around the centroid when fitting a shape

_SHAPE_RGB = np.array(list(COLORS.values()), dtype=np.float32)
_SHAPE_NAMES = list(COLORS)
_BG_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
_BG_NAMES = list(BACKGROUNDS)


@dataclass(frozen=True)
class Detection:
    """One detected shape: colour and class names, centroid (x, y) in px, area, its mask (H, W) bool,
    and ``score``: IoU with the best-fitting template."""

    color: str
    kind: str
    x: float
    y: float
    area: int
    mask: np.ndarray
    score: float
    part: str | None = None
    part_color: str | None = None

    @property
    def place(self) -> str:
        return place_of(self.x, self.mask.shape[1])

    @property
    def identity(self) -> tuple[str, str]:
        return (self.color, self.kind)

    @property
    def part_identity(self) -> tuple[str, str] | None:
        """(part colour, part kind), or None without a part."""
        return None if self.part is None else (self.part_color, self.part)


def background_color(frame: np.ndarray) -> str:
    """Name of the world background colour nearest to the median border pixel."""
    f = np.asarray(frame, dtype=np.float32)
    border = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
    med = np.median(border, axis=0)
    return _BG_NAMES[int(np.argmin(((_BG_RGB - med) ** 2).sum(1)))]


def classify(mask: np.ndarray) -> tuple[str, float]:
    """Class of one component mask (H, W) bool: each world shape is rendered (as the world renders it)
    with the component's area, centred on its centroid (a triangle's centroid lies r/3 below its box
    centre), over a small grid of sub-pixel offsets and sizes; the best intersection-over-union wins.
    Returns (kind, IoU)."""
    ys, xs = np.nonzero(mask)
    area = len(ys)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    r_of_area = {"circle": np.sqrt(area / np.pi), "square": np.sqrt(area) / 2, "triangle": np.sqrt(area / 2)}
    pad = int(np.ceil(1.2 * max(r_of_area.values()))) + 2  # fit inside a window around the centroid
    x0, y0w = max(int(cx) - pad, 0), max(int(cy) - pad, 0)
    mask = mask[y0w : int(cy) + pad + 1, x0 : int(cx) + pad + 1]
    cx, cy = cx - x0, cy - y0w
    h, w = mask.shape
    best, best_iou = SHAPES[0], -1.0
    for kind in SHAPES:
        r0 = r_of_area[kind]
        y0 = cy - (r0 / 3 if kind == "triangle" else 0.0)
        for r in (0.9 * r0, r0, 1.1 * r0):
            for ox in _OFFSETS:
                for oy in _OFFSETS:
                    tmpl = shape_mask(Shape(kind, "", cx + ox, y0 + oy, r), h, w)
                    iou = float((tmpl & mask).sum() / max((tmpl | mask).sum(), 1))
                    if iou > best_iou:
                        best, best_iou = kind, iou
    return best, best_iou


def detect(frame: np.ndarray) -> tuple[str, list[Detection]]:
    """Background name and the shapes of one uint8 frame (H, W, 3), sorted by centroid x."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    bg = background_color(frame)
    f = frame.astype(np.float32)
    fg = np.sqrt(((f - np.array(BACKGROUNDS[bg], dtype=np.float32)) ** 2).sum(-1)) > FG_DIST
    dist = np.sqrt(((f[..., None, :] - _SHAPE_RGB) ** 2).sum(-1))  # (H, W, C)
    label = dist.argmin(-1)
    ok = fg & (dist.min(-1) <= COLOR_DIST)
    count, objects, stats, _ = cv2.connectedComponentsWithStats(ok.astype(np.uint8), connectivity=8)
    found = []
    for i in range(1, count):
        if stats[i, cv2.CC_STAT_AREA] < MIN_AREA:
            continue
        pixels = objects == i
        c = int(np.bincount(label[pixels], minlength=len(_SHAPE_NAMES)).argmax())
        shape = _filled(pixels)
        part, part_color = _part(shape, pixels & (label != c), label)
        kind, score = classify(shape)
        ys, xs = np.nonzero(shape)
        found.append(Detection(_SHAPE_NAMES[c], kind, float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, int(shape.sum()),
                               shape, score, part, part_color))
    return bg, sorted(found, key=lambda d: d.x)


def _part(shape: np.ndarray, others: np.ndarray, label: np.ndarray) -> tuple[str | None, str | None]:
    """(kind, colour) of the largest piece of one other colour inside ``shape`` (bool (H, W), filled)
    that is at least MIN_PART_SHARE of it and lies mostly off its rim (a blurred edge is no part)."""
    inner = cv2.erode(shape.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    best, best_area = (None, None), max(MIN_PART_AREA, MIN_PART_SHARE * shape.sum()) - 1
    for c in np.unique(label[others]):
        count, pieces = cv2.connectedComponents((others & (label == c)).astype(np.uint8), connectivity=8)
        for i in range(1, count):
            piece = pieces == i
            area = int(piece.sum())
            if area > best_area and (piece & inner).sum() >= 0.5 * area:
                ys, xs = np.nonzero(piece)
                kind = "stripe" if np.ptp(xs) + 1 >= STRIPE_ASPECT * (np.ptp(ys) + 1) else "dot"
                best, best_area = (kind, _SHAPE_NAMES[int(c)]), area
    return best


def _filled(mask: np.ndarray) -> np.ndarray:
    """bool (H, W): ``mask`` with its holes filled (its outer contours drawn filled)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, dtype=np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out.astype(bool) | mask


def detect_video(frames: np.ndarray) -> list[tuple[str, list[Detection]]]:
    """``detect`` for every frame of uint8 (F, H, W, 3)."""
    return [detect(f) for f in frames]


def color_share(frame: np.ndarray, mask: np.ndarray, color: str) -> float:
    """Share of the pixels of ``mask`` (H, W) bool in a uint8 frame (H, W, 3) whose nearest world shape
    colour is ``color`` (and within COLOR_DIST of it): reads a part of a shape, too small or oddly
    shaped for ``detect``'s class fit."""
    f = np.asarray(frame, dtype=np.float32)[mask]
    if not len(f):
        return 0.0
    dist = np.sqrt(((f[:, None, :] - _SHAPE_RGB) ** 2).sum(-1))  # (P, C)
    ok = (dist.argmin(-1) == _SHAPE_NAMES.index(color)) & (dist.min(-1) <= COLOR_DIST)
    return float(ok.mean())


def in_region(detections: list[Detection], region: np.ndarray) -> Detection | None:
    """The detection overlapping the bool mask ``region`` (H, W) most (None when none overlaps)."""
    best, best_overlap = None, 0
    for d in detections:
        overlap = int((d.mask & region).sum())
        if overlap > best_overlap:
            best, best_overlap = d, overlap
    return best
