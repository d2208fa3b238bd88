"""Make the `two_balls` example: a small synthetic clip with exact region masks and a config.

Run from anywhere: ``python examples/make_example.py``. Deterministic (seeded texture, analytic geometry).
Writes into ``examples/two_balls/``:

- ``video.mp4``: 16 frames, 192x128, 8 fps: sky, a grassy field, two identical white balls rolling
  towards each other with a slight bounce (an instance-level editing case: same class, different edits);
- ``masks/left_ball/``, ``masks/right_ball/``, ``masks/ground/``: ``00000.png`` ... (0/255), computed
  from the same geometry as the pixels (ground = grass not covered by a ball; the sky is no region);
- ``config.yaml``.

Only numpy, PIL, PyAV and ``videograin.media`` are used.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing

from videograin import media  # noqa: E402

OUT = HERE / "two_balls"
W, H, FRAMES, FPS = 192, 128, 16, 8
RADIUS = 18.0
REST_Y = 94.0  # ball centre when touching the grass
BOUNCE = 5.0  # px
LEFT_X = (30.0, 76.0)  # start, end of the left ball's centre
RIGHT_X = (162.0, 116.0)
SEED = 0

CONFIG = """\
# two_balls: a synthetic instance-level example. Two identical white balls roll towards each other on
# the grass (16 frames, 192x128); each ball gets its own edit in one pass: the left one becomes a red
# apple, the right one an orange ball, and the grass (empty prompt) is kept as it is.
# Masks are exact (rendered from the same geometry as the video). Regenerate everything with
#   python examples/make_example.py
# and edit with (paths below are relative to this file):
#   videograin edit examples/two_balls/config.yaml
model: stable-diffusion-v1-5/stable-diffusion-v1-5
video:
  path: video.mp4
  frames: 16
  size: [192, 128]   # width, height
source_prompt: "two balls on the grass"
prompt: "a red apple and an orange ball on the grass"
regions:
  - name: left_ball
    prompt: "red apple"
    masks: masks/left_ball
  - name: right_ball
    prompt: "orange ball"
    masks: masks/right_ball
  - name: ground
    prompt: ""   # kept: takes part in layout attention, not edited
    masks: masks/ground
edit:
  steps: 50
  guidance_scale: 7.5
  seed: 0
  blend: true
output: out
"""


def smooth_noise(rng: np.random.Generator, cells: tuple[int, int]) -> np.ndarray:
    """(H, W) float noise in about [-1, 1], smooth at the scale of W/cells[0] x H/cells[1] pixels."""
    coarse = rng.uniform(0, 255, (cells[1], cells[0])).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((W, H), Image.BICUBIC), np.float32) / 127.5 - 1.0


def horizon() -> np.ndarray:
    """(W,) y of the far edge of the field (gentle hills); pixel (x, y) is ground when y >= horizon[x]."""
    x = np.arange(W, dtype=np.float32)
    return 56.0 + 3.0 * np.sin(x / 23.0) + 1.5 * np.sin(x / 9.0 + 1.0)


def background(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sky and grass: float (H, W, 3) in [0, 255] and the bool (H, W) ground mask."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    ground = ys >= horizon()[None, :]

    t = ys / H
    sky = np.stack([70 + 150 * t, 125 + 110 * t, 205 + 40 * t], -1)
    sky += 6 * smooth_noise(rng, (5, 3))[..., None] * np.array([1.0, 1.0, 0.6])  # faint haze

    depth = np.clip((ys - 52) / (H - 52), 0, 1)  # 0 far, 1 near
    grass = np.stack([55 + 45 * depth, 105 + 60 * depth, 35 + 20 * depth], -1)
    patches = smooth_noise(rng, (9, 6))
    blades = rng.normal(0, 1, (H + 3, W)).astype(np.float32)
    blades = (blades[:-3] + blades[1:-2] + blades[2:-1] + blades[3:]) / 2  # short vertical streaks
    grass *= (1 + 0.12 * patches + 0.07 * (0.4 + 0.6 * depth) * blades)[..., None]
    return np.where(ground[..., None], grass, sky), ground


def ball_state(x_range: tuple[float, float], phase: float) -> list[tuple[float, float, float]]:
    """Per frame (cx, cy, roll angle): eased motion along x, small hops, rolling without slipping."""
    out = []
    for f in range(FRAMES):
        t = f / (FRAMES - 1)
        s = 0.5 * t + 0.5 * t * (2 - t)  # rolling in, slowing down (speed 1.5 -> 0.5 of the mean)
        cx = x_range[0] + (x_range[1] - x_range[0]) * s
        cy = REST_Y - BOUNCE * abs(np.sin(2 * np.pi * t + phase)) * (1 - 0.5 * t)
        out.append((cx, cy, (cx - x_range[0]) / RADIUS))
    return out


def draw_ball(img: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """Shade a white ball with a rotating seam into img (float (H, W, 3)); returns its bool (H, W) mask."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    dx, dy = xs - cx, ys - cy
    d = np.hypot(dx, dy)
    mask = d < RADIUS
    cover = np.clip(RADIUS - d + 0.5, 0, 1)[..., None]  # antialiased rim
    nz = np.sqrt(np.clip(RADIUS**2 - d**2, 0, None)) / RADIUS
    light = np.array([-0.45, -0.65, 0.61])
    lambert = np.clip((dx / RADIUS) * light[0] + (dy / RADIUS) * light[1] + nz * light[2], 0, 1)
    spec = np.clip(lambert, 0, 1) ** 24
    # the seam: a band in the ball's own (rotating) frame, curved like a tennis-ball line
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / RADIUS, (-s * dx + c * dy) / RADIUS
    seam = np.exp(-(((u - 0.35 * np.sin(2.5 * v)) / 0.09) ** 2))
    base = np.array([228.0, 226.0, 218.0]) * (1 - 0.35 * seam[..., None])
    shade = base * (0.38 + 0.62 * lambert[..., None]) + 70 * spec[..., None]
    img[:] = img * (1 - cover) + shade * cover
    return mask


def draw_shadow(img: np.ndarray, cx: float, cy: float) -> None:
    """Soft contact shadow on the grass below a ball (lighter and wider when it is in the air)."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    lift = REST_Y - cy
    sy = REST_Y + RADIUS - 2
    e = ((xs - cx - 3) / (RADIUS * (1.0 + 0.03 * lift))) ** 2 + ((ys - sy) / 4.5) ** 2
    img *= 1 - (0.45 - 0.04 * lift) * np.exp(-2.5 * e)[..., None]


def main() -> None:
    rng = np.random.default_rng(SEED)
    sky_grass, ground = background(rng)
    left, right = ball_state(LEFT_X, 0.0), ball_state(RIGHT_X, 0.9)
    frames = np.empty((FRAMES, H, W, 3), np.uint8)
    masks = {name: np.empty((FRAMES, H, W), bool) for name in ("left_ball", "right_ball", "ground")}
    for f in range(FRAMES):
        img = sky_grass.copy()
        for cx, cy, _ in (left[f], right[f]):
            draw_shadow(img, cx, cy)
        masks["left_ball"][f] = draw_ball(img, *left[f])
        masks["right_ball"][f] = draw_ball(img, *right[f])
        masks["ground"][f] = ground & ~masks["left_ball"][f] & ~masks["right_ball"][f]
        frames[f] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    assert not (masks["left_ball"] & masks["right_ball"]).any()

    OUT.mkdir(exist_ok=True)
    media.write_video(OUT / "video.mp4", frames, FPS, crf=12)
    for name, m in masks.items():
        folder = OUT / "masks" / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for f in range(FRAMES):
            Image.fromarray(m[f].astype(np.uint8) * 255, mode="L").save(folder / f"{f:05d}.png", optimize=True)
    (OUT / "config.yaml").write_text(CONFIG)

    decoded, _ = media.read_video(OUT / "video.mp4", 0, FRAMES, 1)  # the file really holds these frames
    err = np.abs(decoded.astype(np.int16) - frames).mean()
    assert decoded.shape == frames.shape and err < 3, err
    size = (OUT / "video.mp4").stat().st_size
    print(f"wrote {OUT} (video.mp4 {size / 1024:.0f} KiB, mean abs codec error {err:.2f})")


if __name__ == "__main__":
    main()
