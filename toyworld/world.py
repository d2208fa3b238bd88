"""The toy world: flat-coloured circles, squares and triangles on a plain background, with captions.

A shape may carry one part drawn inside it in another colour: a "dot" (a disc at the shape's inner
centre) or a "stripe" (a horizontal band across its middle), captioned "a yellow circle with a red dot".
Parts keep at least one pixel of the shape's own colour around them (they are cut from the shape eroded
by one pixel), so the shape's colour stays one connected piece around its part.

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
COUNTS = (0.35, 0.5, 0.15)  # probabilities of a random scene holding one, two, three shapes
RADII = (4.0, 5.0, 6.0)  # half-extent in px: the shape fits a (2r x 2r) box around its centre
PLACES = ("left", "middle", "right")
PLACE_MARGIN = 1.0  # px: shape centres keep this far from the thirds' borders (places are unambiguous)
PLACE_PHRASE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
GAP = 2.0  # min px between bounding boxes of two shapes (and the frame border keeps 1 px)

PARTS = ("dot", "stripe")
PART_MIN_RADIUS = 5.0  # only shapes this large carry parts (a dot is then >= ~12 px, a stripe 2-3 rows)
DOT_RADIUS = 0.45  # x the shape's half-extent
STRIPE_HALF_HEIGHT = 0.3  # x the shape's half-extent

# new words come last: the tokenizer's earlier words keep their merges (see videograin.testing)
WORDS = ["a", "and", "on", "the", "in", "background", *PLACES, *SHAPES, *COLORS, *BACKGROUNDS, "with", *PARTS]


@dataclass(frozen=True)
class Shape:
    """One shape: class, colour name, centre (x, y) in px (pixel i covers [i, i+1)), half-extent r, and
    optionally a part (one of PARTS) with its colour."""

    kind: str
    color: str
    x: float
    y: float
    r: float
    part: str | None = None
    part_color: str | None = None

    @property
    def phrase(self) -> str:
        """E.g. "a yellow circle" or "a yellow circle with a red dot"."""
        text = f"a {self.color} {self.kind}"
        return text + (f" with a {self.part_color} {self.part}" if self.part else "")

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


def part_mask(shape: Shape, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """bool (H, W): the pixels of the shape's part (all False without one), inside the shape eroded by
    one pixel (3x3). The dot is centred on the shape's incentre (the triangle's lies 0.382 r below its
    centre), the stripe on the same row."""
    if shape.part is None:
        return np.zeros((height, width), dtype=bool)
    inner = np.zeros((height + 2, width + 2), dtype=bool)
    inner[1:-1, 1:-1] = shape_mask(shape, height, width)
    inner = np.logical_and.reduce([inner[1 + dy : height + 1 + dy, 1 + dx : width + 1 + dx]
                                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    inradius = (np.sqrt(5) - 1) / 2 * shape.r  # of the apex-up triangle of half-extent r
    cy = shape.y + shape.r - inradius if shape.kind == "triangle" else shape.y
    if shape.part == "dot":
        region = (xs - shape.x) ** 2 + (ys - cy) ** 2 <= (DOT_RADIUS * shape.r) ** 2
    elif shape.part == "stripe":
        region = np.abs(ys - cy) <= STRIPE_HALF_HEIGHT * shape.r
    else:
        raise ValueError(f"unknown part {shape.part!r}")
    return region & inner


def render(scene: Scene, height: int = SIZE, width: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Frame uint8 (H, W, 3) and per-shape masks bool (S, H, W) (exactly the pixels painted per shape,
    its part included; :func:`part_mask` gives the part alone)."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = BACKGROUNDS[scene.background]
    masks = np.zeros((len(scene.shapes), height, width), dtype=bool)
    for i, shape in enumerate(scene.shapes):
        masks[i] = shape_mask(shape, height, width)
        frame[masks[i]] = COLORS[shape.color]
        if shape.part is not None:
            frame[part_mask(shape, height, width)] = COLORS[shape.part_color]
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
    phrases = [s.phrase + (f" {PLACE_PHRASE[s.place]}" if positions else "") for s in shapes]
    return " and ".join(phrases) + f" on a {scene.background} background"


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


def random_scene(rng: np.random.Generator, count: int | None = None, size: int = SIZE, part_prob: float = 0.0,
                 counts: tuple[float, float, float] = COUNTS, same_color: float | None = None) -> Scene:
    """A random scene of ``count`` shapes (1-3; default: drawn with the probabilities ``counts``).

    ``same_color``: the share of two-shape scenes whose shapes have one colour (None: each colour drawn
    on its own, so 1 in 5; None keeps the draws unchanged).

    ``part_prob``: each shape of half-extent >= PART_MIN_RADIUS in a scene of one or two shapes carries a
    random part, of a colour other than its own, with this probability (0: the draws of the world without
    parts, unchanged)."""
    if count is None:
        count = int(rng.choice([1, 2, 3], p=list(counts)))
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
        if same_color is not None and count == 2:
            first = shapes[0].color
            second = first if rng.random() < same_color else str(rng.choice([c for c in COLORS if c != first]))
            shapes[1] = replace(shapes[1], color=second)
        if part_prob > 0 and count < 3:
            shapes = [_with_random_part(s, rng) if s.r >= PART_MIN_RADIUS and rng.random() < part_prob else s
                      for s in shapes]
        if _fits(shapes, size, size):
            return Scene(tuple(shapes), background)


def _with_random_part(shape: Shape, rng: np.random.Generator) -> Shape:
    part_color = str(rng.choice([c for c in COLORS if c != shape.color]))
    return replace(shape, part=str(rng.choice(PARTS)), part_color=part_color)


def dataset(n: int, seed: int, size: int = SIZE, part_prob: float = 0.0) -> tuple[np.ndarray, list[Scene]]:
    """``n`` random scenes and their frames uint8 (n, H, W, 3); deterministic given ``seed``."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, size=size, part_prob=part_prob) for _ in range(n)]
    frames = np.stack([render(s, size, size)[0] for s in scenes])
    return frames, scenes


# ------------------------------------------------------------------------------------------------ video


@dataclass(frozen=True)
class Motion:
    """Linear motion of one shape over the clip: centre moves by (dx, dy) px, half-extent scales by ``scale``."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


def scene_at(scene: Scene, motions: list[Motion], frame: int, frames: int) -> Scene:
    """The scene at ``frame`` of a clip of ``frames``: each shape at ``start + u * motion`` with
    u = frame / (frames - 1) eased (smoothstep)."""
    u = frame / max(frames - 1, 1)
    u = u * u * (3 - 2 * u)
    return replace(scene, shapes=tuple(replace(s, x=s.x + u * m.dx, y=s.y + u * m.dy, r=s.r * (1 + u * (m.scale - 1)))
                                       for s, m in zip(scene.shapes, motions)))


def video(scene: Scene, motions: list[Motion], frames: int = 8, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` moving smoothly (:func:`scene_at` for every frame). Returns frames uint8 (F, H, W, 3) and masks bool (S, F, H, W).

    Raises ValueError if shapes leave the frame, touch each other, or change their third mid-clip
    (captions and judge read places by thirds).
    """
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    masks = np.zeros((len(scene.shapes), frames, size, size), dtype=bool)
    for f in range(frames):
        shapes = list(scene_at(scene, motions, f, frames).shapes)
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
