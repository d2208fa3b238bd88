"""The toy world: flat-coloured circles, squares and triangles on a plain background, with captions.

Geometry is analytic and sampled at pixel centres, so a shape's mask is exactly the set of pixels painted
in its colour (no anti-aliasing; shapes never overlap or touch). Frames are uint8 ``(H, W, 3)`` RGB.

Placement is captioned by thirds of the frame width: a shape whose centre lies in the left third is
"on the left", the middle third "in the middle", the right third "on the right". Scenes hold one shape
(any third), two (one on the left, one on the right) or three (one per third, small sizes). Vertical
placement and size are free (not captioned). Captions list shapes with their places in random order
(or, ``places_left_to_right``, left to right: the committed model's last training stage), or
(``positions=False``) without places, in random order: then the caption says nothing about where
things are, as in the paper's prompts ("Spiderman and Polar Bear").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SIZE = 32  # frames are SIZE x SIZE
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
RADII = (4.0, 5.0, 6.0)  # half-extent in px: the shape fits a (2r x 2r) box around its centre
PLACES = ("left", "middle", "right")
PLACE_MARGIN = 1.0  # px: shape centres keep this far from the thirds' borders (places are unambiguous)
PLACE_PHRASE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
GAP = 2.0  # min px between bounding boxes of two shapes (and the frame border keeps 1 px)

WORDS = ["a", "and", "on", "the", "in", "background", *PLACES, *SHAPES, *COLORS, *BACKGROUNDS]


@dataclass(frozen=True)
class Shape:
    """One shape: class, colour name, centre (x, y) in px (pixel i covers [i, i+1)), half-extent r."""

    kind: str
    color: str
    x: float
    y: float
    r: float

    @property
    def place(self) -> str:
        return place_of(self.x)

    def box(self) -> tuple[float, float, float, float]:
        return (self.x - self.r, self.y - self.r, self.x + self.r, self.y + self.r)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str = "gray"


def place_of(x: float, width: int = SIZE) -> str:
    """'left' / 'middle' / 'right': which third of the frame width the x coordinate lies in."""
    return PLACES[min(2, max(0, int(3 * x / width)))]


def shape_mask(shape: Shape, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """bool (H, W): pixels whose centre lies inside the shape."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    dx, dy = xs - shape.x, ys - shape.y
    r = shape.r
    if shape.kind == "circle":
        return dx * dx + dy * dy <= r * r
    if shape.kind == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape.kind == "triangle":  # apex up at (x, y - r), base from (x - r, y + r) to (x + r, y + r)
        return (dy <= r) & (2 * np.abs(dx) <= dy + r)
    raise ValueError(f"unknown shape kind {shape.kind!r}")


def render(scene: Scene, height: int = SIZE, width: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Frame uint8 (H, W, 3) and per-shape masks bool (S, H, W) (exactly the pixels painted per shape)."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = BACKGROUNDS[scene.background]
    masks = np.zeros((len(scene.shapes), height, width), dtype=bool)
    for i, shape in enumerate(scene.shapes):
        masks[i] = shape_mask(shape, height, width)
        frame[masks[i]] = COLORS[shape.color]
    return frame, masks


def caption(scene: Scene, rng: np.random.Generator | None = None, positions: bool = True,
            places_left_to_right: bool = False) -> str:
    """E.g. "a red circle on the left and a blue square on the right on a gray background".

    Shapes are mentioned in random order when ``rng`` is given (left to right otherwise); ``positions``
    adds each shape's place phrase. ``places_left_to_right``: captions with places always name the
    shapes left to right (as one reads the frame); captions without places keep the random order.
    """
    shapes = sorted(scene.shapes, key=lambda s: s.x)
    if rng is not None and not (positions and places_left_to_right):
        shapes = [shapes[i] for i in rng.permutation(len(shapes))]
    parts = [f"a {s.color} {s.kind}" + (f" {PLACE_PHRASE[s.place]}" if positions else "") for s in shapes]
    return " and ".join(parts) + f" on a {scene.background} background"


def _fits(shapes: list[Shape], width: int, height: int) -> bool:
    for s in shapes:
        x0, y0, x1, y1 = s.box()
        if x0 < 1 or y0 < 1 or x1 > width - 1 or y1 > height - 1:
            return False
    for i, a in enumerate(shapes):
        for b in shapes[i + 1 :]:
            ax0, ay0, ax1, ay1 = a.box()
            bx0, by0, bx1, by1 = b.box()
            if not (ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0):
                return False
    return True


def random_scene(rng: np.random.Generator, count: int | None = None, size: int = SIZE) -> Scene:
    """A random scene of ``count`` shapes (1-3, default: 1 with p 0.35, 2 with p 0.5, 3 with p 0.15)."""
    if count is None:
        count = int(rng.choice([1, 2, 3], p=[0.35, 0.5, 0.15]))
    places = {1: [PLACES[int(rng.integers(3))]], 2: ["left", "right"], 3: list(PLACES)}[count]
    background = str(rng.choice(list(BACKGROUNDS)))
    third = size / 3
    while True:
        shapes = []
        for place in places:
            r = float(rng.choice(RADII[:2] if count == 3 else RADII))
            k = PLACES.index(place)
            lo = max(k * third + (PLACE_MARGIN if k else 0), r + 1)
            hi = min((k + 1) * third - (PLACE_MARGIN if k < 2 else 0), size - r - 1)
            x = float(rng.uniform(lo, hi - 1e-6))
            y = float(rng.uniform(r + 1, size - r - 1))
            shapes.append(Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), x, y, r))
        if _fits(shapes, size, size):
            return Scene(tuple(shapes), background)


def dataset(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, list[Scene]]:
    """``n`` random scenes and their frames uint8 (n, H, W, 3); deterministic given ``seed``."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, size=size) for _ in range(n)]
    frames = np.stack([render(s, size, size)[0] for s in scenes])
    return frames, scenes


# ------------------------------------------------------------------------------------------------ video


@dataclass(frozen=True)
class Motion:
    """Linear motion of one shape over the clip: centre moves by (dx, dy) px, half-extent scales by ``scale``."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


def video(scene: Scene, motions: list[Motion], frames: int = 8, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` moving smoothly: frame f shows each shape at ``start + u * motion`` with u = f/(F-1)
    eased (smoothstep). Returns frames uint8 (F, H, W, 3) and masks bool (S, F, H, W).

    Raises ValueError if shapes leave the frame, touch each other, or change their third mid-clip
    (captions and judge read places by thirds).
    """
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    masks = np.zeros((len(scene.shapes), frames, size, size), dtype=bool)
    for f in range(frames):
        u = f / max(frames - 1, 1)
        u = u * u * (3 - 2 * u)
        shapes = [
            replace(s, x=s.x + u * m.dx, y=s.y + u * m.dy, r=s.r * (1 + u * (m.scale - 1)))
            for s, m in zip(scene.shapes, motions)
        ]
        if not _fits(shapes, size, size):
            raise ValueError(f"frame {f}: shapes leave the frame or touch")
        for s, s0 in zip(shapes, scene.shapes):
            if s.place != s0.place:
                raise ValueError(f"frame {f}: a {s.kind} moves from the {s0.place} to the {s.place} third")
        clip[f], masks[:, f] = render(Scene(tuple(shapes), scene.background), size, size)
    return clip, masks


def box_masks(masks: np.ndarray, margin: int = 1) -> np.ndarray:
    """Per-frame bounding boxes of bool masks (..., H, W), grown by ``margin`` px: bool, same shape.

    Shape-changing edits need room: a square drawn where a circle was fills the circle's corners.
    """
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros_like(masks)
    h, w = masks.shape[-2:]
    flat_in, flat_out = masks.reshape(-1, h, w), out.reshape(-1, h, w)
    for m, o in zip(flat_in, flat_out):
        ys, xs = np.nonzero(m)
        if len(ys):
            o[max(ys.min() - margin, 0) : ys.max() + margin + 1, max(xs.min() - margin, 0) : xs.max() + margin + 1] = True
    return out
