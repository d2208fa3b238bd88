"""The web app's pictures: the frame being marked with each region's box and clicks, the region swatches,
enlarged GIFs, and a finished run's source | edit frame view. Plain numpy and PIL, no Gradio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageSequence

from . import media, viz
from .errors import SpecError
from .masks import parse_region
from .app import MAX_REGIONS


def draw_prompts(frame: np.ndarray, wheres: list[str], scale: int,
                 corner: tuple[tuple[int, int], int] | None = None) -> np.ndarray:
    """uint8 (H, W, 3) frame enlarged ``scale`` times (nearest) with each region's box and clicks drawn
    in its colour (positive clicks filled, negative ones hollow); unreadable ``where`` texts skipped.
    ``corner``: ((x, y), region index) of a box's first corner, drawn as a cross until the second."""
    image = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    colours = viz.region_colors(MAX_REGIONS)
    if corner is not None:
        (x, y), region = corner
        colour, arm = tuple(int(c) for c in colours[region]), max(3, 2 * scale)
        cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
        draw.line((cx - arm, cy, cx + arm, cy), fill=colour, width=max(1, scale // 2))
        draw.line((cx, cy - arm, cx, cy + arm), fill=colour, width=max(1, scale // 2))
    for where, colour in zip(wheres, colours):
        try:
            prompt = parse_region(f"r:{where}")[1] if where and where.strip() else None
        except SpecError:
            continue
        if prompt is None:
            continue
        colour = tuple(int(c) for c in colour)
        if prompt.box is not None:
            x0, y0, x1, y1 = (v * scale for v in prompt.box)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=max(1, scale // 2))
        r = max(2, scale)
        for points, fill in ((prompt.points, colour), (prompt.negative, None)):
            for x, y in points:
                cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=colour, width=max(1, scale // 3))
    return np.asarray(image)


def swatch(region: int, active: bool) -> str:
    """A region row's colour swatch (its outline's colour on the frame), marked when clicks go to it."""
    r, g, b = (int(c) for c in viz.region_colors(MAX_REGIONS)[region])
    mark = "<b>clicks mark this region</b>" if active else ""
    return (f"<div style='display:flex;align-items:center;gap:6px'><span style='display:inline-block;width:18px;"
            f"height:18px;background:rgb({r},{g},{b});border:{'3px solid black' if active else '1px solid gray'}'>"
            f"</span>{mark}</div>")


def display_scale(frame: np.ndarray, target: int = 384) -> int:
    """Whole-number enlargement so a small frame shows at about ``target`` pixels (1 for large frames)."""
    return max(1, target // max(frame.shape[:2]))


def enlarged_gif(source: Path, target: Path, fps: float, long_side: int = 512) -> Path:
    """``source`` GIF enlarged (nearest) by a whole number so its long side is about ``long_side``."""
    with Image.open(source) as gif:
        frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
    scale = display_scale(frames[0], long_side)
    target.parent.mkdir(parents=True, exist_ok=True)
    media.write_gif(target, frames.repeat(scale, axis=1).repeat(scale, axis=2), fps)
    return target


def result_frames(folder: Path) -> dict[str, np.ndarray]:
    """A finished run's clips for the frame-by-frame view, uint8 (F, H, W, 3) each: its source and
    regions overlay (source.mp4, masks_overlay.mp4) and its edit (the lossless frames/)."""
    count = len(media.list_images(folder / "frames"))
    return {name: media.read_video(path, 0, count, 1)[0] for name, path in
            (("source", folder / "source.mp4"), ("regions", folder / "masks_overlay.mp4"),
             ("edited", folder / "frames"))}


def compare_frame(clips: dict[str, np.ndarray], index: int, width: int = 768) -> np.ndarray:
    """Frame ``index`` of source | edited side by side, the regions overlay under the source, enlarged
    (nearest) by a whole factor to about ``width`` pixels: uint8 (H', W', 3)."""
    i = min(max(0, int(index)), len(clips["edited"]) - 1)
    top = viz.side_by_side(clips["source"][i : i + 1], clips["edited"][i : i + 1])[0]
    below = np.full_like(top, 255)
    below[:, : clips["regions"].shape[2]] = clips["regions"][i]
    both = np.concatenate([top, np.full((2, top.shape[1], 3), 255, np.uint8), below])
    scale = max(1, width // both.shape[1])
    return both.repeat(scale, 0).repeat(scale, 1)
