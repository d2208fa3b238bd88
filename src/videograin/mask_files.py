"""Region masks from files and boxes: mask image folders, boxes rasterised, masks resized.

Masks are bool ``(F, H, W)`` per region; boxes ``[x0, y0, x1, y1]`` in pixels with x1, y1 exclusive;
sizes ``(width, height)``. Bad user input raises :class:`~videograin.errors.SpecError` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import SpecError
from .media import WIDE_GREY, list_images, selection_end

MASK_THRESHOLD = 128  # an 8-bit mask pixel is in its region from this value on (half of 255, rounded up)


def _mask_from_image(im: Image.Image) -> np.ndarray:
    """bool (H, W): True where any colour channel is at least half its full scale (128 of 255, 32768
    of 65535 for 16-bit) and the pixel is not fully transparent."""
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode == "1":
        return np.asarray(im).astype(bool)
    arr = np.asarray(im)
    if im.mode in WIDE_GREY:
        return arr >= WIDE_GREY[im.mode] / 2
    opaque = True
    if im.mode in ("RGBA", "LA", "PA"):
        arr, opaque = arr[..., :-1], arr[..., -1] != 0
    on = arr >= MASK_THRESHOLD
    return (on if on.ndim == 2 else on.any(axis=-1)) & opaque


def read_mask_folder(
    path: Path, start: int, frames: int, stride: int, total_source_frames: int, field: str
) -> np.ndarray:
    """Read one region's per-frame mask images. Returns bool ``(F, H, W)`` (F = ``frames``).

    A pixel is in the region when any colour channel is at least half its full scale (``MASK_THRESHOLD``,
    128 of 255; fully transparent pixels are not).
    Images are naturally sorted by file name. If the folder holds exactly ``frames`` images they match the
    selected frames in order; else if it holds exactly ``total_source_frames`` images the same
    ``start``/``stride`` selection as for the video is applied; otherwise SpecError(``field``).
    """
    path = Path(path)
    if not path.is_dir():
        raise SpecError(field, f"{path} is not a folder", "give a folder with one mask image per frame")
    files = list_images(path)
    if len(files) == frames:
        chosen = files
    elif len(files) == total_source_frames:
        chosen = files[start : selection_end(start, frames, stride) : stride]
    else:
        raise SpecError(
            field,
            f"{path} holds {len(files)} mask images, but the video selection has {frames} frames "
            f"(source has {total_source_frames})",
            f"give exactly {frames} masks (one per selected frame) or {total_source_frames} (one per source frame)",
        )
    masks = []
    for file in chosen:
        try:
            with Image.open(file) as im:
                masks.append(_mask_from_image(im))
        except OSError as err:
            raise SpecError(field, f"cannot read mask image {file} ({err})", "replace the broken file") from None
    sizes = {(m.shape[1], m.shape[0]) for m in masks}
    if len(sizes) != 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise SpecError(field, f"mask images in {path} differ in size ({listed})", "export all masks at one size")
    return np.stack(masks)


def boxes_to_masks(boxes: Sequence[Sequence[int]], frames: int, height: int, width: int) -> np.ndarray:
    """Rasterise boxes ``[x0, y0, x1, y1]`` (x1, y1 exclusive) into bool masks ``(F, H, W)``.

    ``boxes`` is one static box (repeated on every frame) or one box per frame. Boxes are clipped to the
    frame; a box with ``x1 <= x0`` or ``y1 <= y0`` (after clipping) is empty.
    """
    boxes = [tuple(int(v) for v in b) for b in boxes]
    if any(len(b) != 4 for b in boxes):
        raise ValueError(f"boxes must be [x0, y0, x1, y1], got {boxes}")
    if len(boxes) == 1:
        boxes = boxes * frames
    elif len(boxes) != frames:
        raise ValueError(f"need 1 static box or {frames} (one per frame), got {len(boxes)}")
    masks = np.zeros((frames, height, width), dtype=bool)
    for f, (x0, y0, x1, y1) in enumerate(boxes):
        x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
        y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
        if x1 > x0 and y1 > y0:
            masks[f, y0:y1, x0:x1] = True
    return masks


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel, matching pixel centres: floor((i + 0.5) * src / dst)."""
    idx = np.floor((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64)
    return np.clip(idx, 0, src - 1)


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of bool masks ``(..., H, W)`` to ``size = (w, h)`` -> bool ``(..., h, w)``.

    Pixel-centre aligned (unlike cv2.INTER_NEAREST, which shifts by half a pixel), so masks stay on the
    content resized by :func:`resize_frames`.
    """
    masks = np.asarray(masks, dtype=bool)
    w, h = int(size[0]), int(size[1])
    src_h, src_w = masks.shape[-2:]
    if (w, h) == (src_w, src_h):
        return masks.copy()
    ys, xs = _nearest_index(src_h, h), _nearest_index(src_w, w)
    return masks[..., ys[:, None], xs[None, :]]
