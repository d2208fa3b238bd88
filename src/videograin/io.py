"""Reading inputs and writing outputs: the only module that touches files.

Conventions (see DESIGN.md):
- frames as numpy arrays are uint8 ``(F, H, W, 3)`` RGB; as tensors float32 ``(F, 3, H, W)`` in [-1, 1];
- masks are bool ``(F, H, W)`` per region, ``(R, F, H, W)`` for all regions;
- sizes are ``(width, height)``, boxes ``[x0, y0, x1, y1]`` in pixels with x1, y1 exclusive.

Bad user input raises :class:`~videograin.errors.SpecError` naming the config field and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import av
import cv2
import numpy as np
import torch
from PIL import Image

from .errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    from .config.spec import EditSpec, VideoSpec

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".avi", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FOLDER_FPS = 8.0  # frame rate assumed for a folder of images
MASK_THRESHOLD = 128  # an 8-bit mask pixel is in its region from this value on (half of 255, rounded up)
#: A region covering more of the clip than this is noted in run.json (a mask with a light background?).
FULL_REGION_SHARE = 0.95
#: Largest frame side written: H.264's highest level (6.2) covers 8192 pixels.
MAX_SIDE = 8192

# ----------------------------------------------------------------------------------------------- conversion


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Frames float ``(F, 3, H, W)`` in [-1, 1] -> uint8 ``(F, H, W, 3)`` numpy (clamped, rounded)."""
    return ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(frames: np.ndarray) -> torch.Tensor:
    """Frames uint8 ``(F, H, W, 3)`` -> float32 ``(F, 3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def as_uint8_frames(frames: Any) -> np.ndarray:
    """uint8 ``(F, H, W, 3)`` numpy from uint8 ``(F, H, W, 3)`` (numpy or tensor) or float ``(F, 3, H, W)``
    in [-1, 1]."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            if frames.ndim != 4 or frames.shape[1] != 3:
                raise ValueError(f"float frames must be (F, 3, H, W) in [-1, 1], got {tuple(frames.shape)}")
            return to_uint8(frames)
        frames = frames.cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


# ----------------------------------------------------------------------------------------------- reading


def natural_key(name: str) -> list:
    """Sort key that orders ``frame2.png`` before ``frame10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """Image files (png/jpg/jpeg/webp/bmp) directly inside ``folder``, naturally sorted by file name.

    Hidden files (names starting with ".") are skipped.
    """
    files = [
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def _needed(start: int, frames: int, stride: int) -> int:
    """Number of source frames needed to select ``frames`` frames from ``start`` every ``stride``."""
    return start + (frames - 1) * stride + 1


def _check_selection(start: int, frames: int, stride: int) -> None:
    if frames < 1:
        raise SpecError("video.frames", f"must be at least 1, got {frames}", "set video.frames to 1 or more")
    if start < 0:
        raise SpecError("video.start", f"must be 0 or more, got {start}", "set video.start to 0 or more")
    if stride < 1:
        raise SpecError("video.stride", f"must be at least 1, got {stride}", "set video.stride to 1 or more")


def _too_few(what: str, total: int, start: int, frames: int, stride: int) -> SpecError:
    """The ``video.frames`` error with values that fit ``total`` source frames."""
    need = _needed(start, frames, stride)
    options = []
    if total > start:
        options.append(f"frames: {(total - 1 - start) // stride + 1}")
    if stride > 1 and total > start:
        fitting = (total - 1 - start) // (frames - 1) if frames > 1 else stride
        if 1 <= fitting < stride:
            options.append(f"stride: {fitting}")
    if start > 0:
        latest = total - 1 - (frames - 1) * stride
        if latest >= 0:
            options.append(f"start: {latest}")
    if not options:
        options.append(f"start: 0, stride: 1, frames: {max(total, 1)}")
    return SpecError(
        "video.frames",
        f"{what} has only {total} frames, but start={start}, stride={stride}, frames={frames} needs {need}",
        "use " + " or ".join(options),
    )


def _video_fps(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return FOLDER_FPS


def _open_video(path: Path) -> Any:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise SpecError("video.path", f"cannot open {path} as a video ({err})", "give a readable video file") from None
    if not container.streams.video:
        container.close()
        raise SpecError("video.path", f"{path} has no video stream", "give a video file with a video track")
    return container


def _check_source(path: Path) -> None:
    path = Path(path)
    if not path.exists():
        raise SpecError("video.path", f"{path} does not exist", "give the path of a video file or a folder of frames")
    if path.is_file() and path.suffix.lower() not in VIDEO_SUFFIXES:
        raise SpecError(
            "video.path",
            f"{path.name} is not a supported video ({', '.join(VIDEO_SUFFIXES)})",
            "convert it to mp4 or give a folder of image frames",
        )


def count_frames(path: Path) -> int:
    """Number of frames of a video file (decoded to the end) or of a folder of images (listing only)."""
    path = Path(path)
    _check_source(path)
    if path.is_dir():
        return len(list_images(path))
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))
    except av.FFmpegError as err:
        raise SpecError("video.path", f"cannot decode {path} ({err})", "re-encode the video, e.g. to mp4") from None
    finally:
        container.close()


#: PIL modes of high-bit-depth grey images (16-bit PNGs open as one of these) and their full scale.
_WIDE_GREY = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I": 65535, "F": 1.0}


def _read_rgb(path: Path, field: str) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB; 16-bit and float grey images are scaled, not clipped."""
    try:
        with Image.open(path) as im:
            if im.mode in _WIDE_GREY:
                grey = np.asarray(im, dtype=np.float64) / _WIDE_GREY[im.mode] * 255
                return np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None], 3, -1)
            return np.asarray(im.convert("RGB"))
    except OSError as err:
        raise SpecError(field, f"cannot read image {path} ({err})", "replace or remove the broken file") from None


def read_video(path: Path, start: int, frames: int, stride: int) -> tuple[np.ndarray, float]:
    """Read the frames ``start, start+stride, ...`` (``frames`` of them) of a video file or image folder.

    Video files (mp4, webm, gif, mov, avi, mkv) are decoded with PyAV, stopping after the last selected
    frame. A folder of images (png/jpg/jpeg/webp/bmp, natural sort by file name) is read with PIL and has
    fps ``FOLDER_FPS`` (8). The returned fps is the source's; striding does not change it.

    Returns ``(frames uint8 (F, H, W, 3) RGB, fps)``.
    Raises SpecError("video.path") for a missing/unreadable source, SpecError("video.frames") when the
    source has fewer than ``start + (frames-1)*stride + 1`` frames.
    """
    path = Path(path)
    _check_selection(start, frames, stride)
    _check_source(path)
    need = _needed(start, frames, stride)
    out: list[np.ndarray] = []

    if path.is_dir():
        files = list_images(path)
        if len(files) < need:
            if not files:
                raise SpecError("video.path", f"folder {path} holds no images", f"put frames ({', '.join(IMAGE_SUFFIXES)}) in it")
            raise _too_few(f"folder {path}", len(files), start, frames, stride)
        for i in range(start, need, stride):
            out.append(_read_rgb(files[i], "video.path"))
        fps = FOLDER_FPS
    else:
        container = _open_video(path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = _video_fps(stream)
            index = -1
            for index, frame in enumerate(container.decode(stream)):
                if index >= start and (index - start) % stride == 0:
                    out.append(frame.to_ndarray(format="rgb24"))
                if index + 1 >= need:
                    break
            total = index + 1
        except av.FFmpegError as err:
            raise SpecError("video.path", f"cannot decode {path} ({err})", "re-encode the video, e.g. to mp4") from None
        finally:
            container.close()
        if total < need:
            if total == 0:
                raise SpecError("video.path", f"{path} has no decodable frames", "give a valid video")
            raise _too_few(str(path), total, start, frames, stride)

    shapes = {f.shape for f in out}
    if len(shapes) != 1:
        raise SpecError("video.path", f"frames of {path} differ in size: {sorted(shapes)}", "give frames of one size")
    logger.debug("read %d frames %s from %s (fps %.3f)", len(out), out[0].shape, path, fps)
    return np.stack(out), fps


def _mask_from_image(im: Image.Image) -> np.ndarray:
    """bool (H, W): True where any colour channel is at least half its full scale (128 of 255, 32768
    of 65535 for 16-bit) and the pixel is not fully transparent."""
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode == "1":
        return np.asarray(im).astype(bool)
    arr = np.asarray(im)
    if im.mode in _WIDE_GREY:
        return arr >= _WIDE_GREY[im.mode] / 2
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
        chosen = files[start : _needed(start, frames, stride) : stride]
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


# ----------------------------------------------------------------------------------------------- resizing


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 frames ``(F, H, W, 3)`` to ``size = (w, h)``; returns uint8 ``(F, h, w, 3)``.

    INTER_AREA when shrinking in both directions, INTER_CUBIC otherwise. Never crops: the aspect ratio may
    change. Pixel centres map onto pixel centres, as in :func:`resize_masks`.
    """
    frames = np.asarray(frames)
    w, h = int(size[0]), int(size[1])
    src_h, src_w = frames.shape[1:3]
    if (w, h) == (src_w, src_h):
        return frames.copy()
    interp = cv2.INTER_AREA if (w <= src_w and h <= src_h) else cv2.INTER_CUBIC
    out = np.empty((frames.shape[0], h, w, frames.shape[3]), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (w, h), interpolation=interp).reshape(h, w, -1)
    return out


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


# ----------------------------------------------------------------------------------------------- inputs


@dataclass
class VideoInputs:
    """Everything the pipeline needs from disk, at the working size.

    frames:        float32 ``(F, 3, H, W)`` in [-1, 1]
    masks:         bool ``(R, F, H, W)``, regions in config order
    frames_uint8:  uint8 ``(F, H, W, 3)`` RGB (the resized frames, for outputs and overlays)
    fps:           frame rate of the selected frames: the source's divided by the stride
    source_size:   ``(w, h)`` of the source frames
    size:          ``(w, h)`` working size (== W, H)
    notes:         human-readable remarks (resizing, aspect change, frames where a region is empty)
    source_uint8:  the selected frames at the source size when they were resized (else None)
    span:          (start, end) in seconds of the selected frames in the source (its audio's cut)
    """

    frames: torch.Tensor
    masks: torch.Tensor
    frames_uint8: np.ndarray
    fps: float
    source_size: tuple[int, int]
    size: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    source_uint8: np.ndarray | None = None
    span: tuple[float, float] = (0.0, 0.0)


def fit_size(source: tuple[int, int], requested: tuple[int, int] | None, multiple: int, long_side: int = 512) -> tuple[int, int]:
    """The (w, h) frames are resized to: ``requested`` if it is a multiple of ``multiple`` (else a
    SpecError naming the nearest valid sizes); without a request, the source aspect ratio with the long
    side at most ``long_side``, each side rounded to the nearest multiple."""
    if requested is not None:
        w, h = requested
        if max(w, h) > MAX_SIDE:
            raise SpecError("video.size", f"{w}x{h} has a side above {MAX_SIDE}, the most the mp4 writer (H.264) takes",
                            f"use sides of at most {MAX_SIDE} (the edit is made at this size)")
        if w % multiple or h % multiple:
            def near(x: int) -> str:
                low = max(multiple, x // multiple * multiple)
                return f"{low} or {low + multiple}" if low < x else str(low)
            raise SpecError(
                "video.size",
                f"{w}x{h} is not a multiple of {multiple}, the model's total downsampling",
                f"use width {near(w)} and height {near(h)}",
            )
        return w, h
    scale = min(1.0, long_side / max(source))
    return tuple(max(multiple, int(side * scale / multiple + 0.5) * multiple) for side in source)


def read_condition_images(path: Path, video: "VideoSpec", size: tuple[int, int]) -> np.ndarray:
    """ControlNet condition images from a video file or image folder, selected like the source frames
    (``video.start``/``frames``/``stride``) and resized to ``size`` (w, h): uint8 (F, H, W, 3).
    Raises SpecError("control.condition") when they cannot be read or are too few."""
    try:
        images, _ = read_video(path, video.start, video.frames, video.stride)
    except SpecError as err:
        raise SpecError("control.condition", err.problem, "give condition images for every selected frame") from err
    return resize_frames(images, size)


def load_inputs(spec: "EditSpec", multiple: int,
                prompted: Callable[[np.ndarray], dict[int, np.ndarray]] | None = None) -> VideoInputs:
    """Read the video and every region's masks of ``spec`` and resize both to the edit size:
    ``spec.video.size`` (checked against ``multiple``, the model's total downsampling) or, when
    unset, the source size fitted by ``fit_size``.

    Mask folders must have the source frames' size; boxes are in source pixels and are rasterised at the
    source size, then resized like the frames. Raises SpecError for: unreadable video / too few frames
    (``video.*``), mask count or size mismatch, a region empty in every frame after resizing
    (``regions[i].masks``). Regions given by a box or clicks (``RegionSpec.prompts``) get their masks
    from ``prompted(source frames uint8 (F, H, W, 3))`` -> {region index: bool (F, H, W)} (the runner's
    masks engine).
    """
    video = spec.video
    frames_u8, fps = read_video(video.path, video.start, video.frames, video.stride)
    n, src_h, src_w = frames_u8.shape[:3]
    w, h = fit_size((src_w, src_h), video.size, multiple)
    notes: list[str] = []
    source_frames = functools.cache(lambda: count_frames(video.path))  # decoded once, and only if a folder needs it
    made = prompted(frames_u8) if prompted is not None and any(r.prompts for r in spec.regions) else {}
    region_masks = [_region_masks(spec, i, n, (src_w, src_h), (w, h), notes, source_frames, made.get(i))
                    for i in range(len(spec.regions))]

    if (w, h) != (src_w, src_h):
        note = f"resized {src_w}x{src_h} -> {w}x{h}"
        a_src, a_dst = src_w / src_h, w / h
        if abs(a_src - a_dst) > 0.005 * a_src:
            note += f": aspect ratio changed from {a_src:.3f} to {a_dst:.3f}"
        notes.append(note)
    resized = resize_frames(frames_u8, (w, h))
    for note in notes:
        logger.info(note)

    masks = np.stack(region_masks) if region_masks else np.zeros((0, n, h, w), dtype=bool)
    return VideoInputs(
        frames=from_uint8(resized),
        masks=torch.from_numpy(np.ascontiguousarray(masks)),
        frames_uint8=resized,
        fps=fps / video.stride,
        source_size=(src_w, src_h),
        size=(w, h),
        notes=notes,
        source_uint8=None if (w, h) == (src_w, src_h) else frames_u8,
        span=(video.start / fps, (video.start + (n - 1) * video.stride + 1) / fps),
    )


def _region_masks(spec: "EditSpec", i: int, n: int, source_size: tuple[int, int], size: tuple[int, int],
                  notes: list[str], source_frames, made: np.ndarray | None) -> np.ndarray:
    """Region ``i``'s masks (n, h, w) bool at ``size``, from its folder (at ``source_size``), boxes, or
    ``made`` (at ``source_size``: from its MaskPrompt); frames where it is empty are noted in ``notes``.
    ``source_frames()``: the source's frame count."""
    region, video, field = spec.regions[i], spec.video, f"regions[{i}].masks"
    (src_w, src_h), (w, h) = source_size, size
    if region.prompts is not None:
        if made is None:
            raise ValueError(f"region {region.name!r} is given by a box or clicks: load_inputs needs `prompted`")
        m = made
    elif region.masks is not None:
        folder = Path(region.masks)
        # the source's frame count matters only when the folder does not hold one mask per selected frame
        total = source_frames() if folder.is_dir() and len(list_images(folder)) != n else n
        m = read_mask_folder(folder, video.start, n, video.stride, total, field)
        mh, mw = m.shape[1:]
        if (mw, mh) != (src_w, src_h):
            raise SpecError(field, f"mask images are {mw}x{mh} but video frames are {src_w}x{src_h}",
                            f"export the masks of region '{region.name}' at {src_w}x{src_h}")
    else:  # boxes: one static box or one per frame (config/parse.py checked the count)
        m = boxes_to_masks(region.boxes, n, src_h, src_w)
    m = resize_masks(m, (w, h))
    empty = [f for f in range(n) if not m[f].any()]
    if len(empty) == n:
        raise SpecError(field, f"region '{region.name}' is empty in every frame at {w}x{h}",
                        "check the masks/boxes (pixels from 128 of 255 mark the region) or use a larger size")
    if empty:
        notes.append(f"region '{region.name}' is empty in frames {empty}")
    if m.mean() > FULL_REGION_SHARE:
        notes.append(f"region '{region.name}' covers {m.mean():.0%} of the clip: check its masks (a mask pixel "
                     f"counts from {MASK_THRESHOLD} of 255)")
    return m


# ----------------------------------------------------------------------------------------------- writing


def _as_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected uint8 frames (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
    return frames


def _rate(fps: float) -> Fraction:
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def write_video(path: Path, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Write uint8 frames ``(F, H, W, 3)`` RGB as H.264 mp4 (libx264, yuv420p) at ``fps`` (may be fractional).

    Odd widths/heights are padded by one replicated row/column (yuv420p needs even sizes); the stored
    size is then ``(W + W % 2, H + H % 2)``. ``crf`` 0..51: lower is closer to lossless (12 is nearly
    lossless, 18 visually lossless). Colour conversion is BT.601 limited range, the PyAV/swscale default,
    so reading back with :func:`read_video` round-trips within a few levels.
    """
    frames = _as_frames(frames)
    f, h, w = frames.shape[:3]
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        logger.info("padded %dx%d -> %dx%d for yuv420p", w, h, frames.shape[2], frames.shape[1])
    container = av.open(str(path), mode="w")
    try:
        stream = container.add_stream("libx264", rate=_rate(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf))}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()


def add_audio(video: Path, source: Path, span: tuple[float, float]) -> bool:
    """Mux the audio of ``source`` between ``span`` (start, end) seconds into the mp4 ``video`` (its video
    stream copied, the audio encoded as AAC from the span's start), replacing it atomically. Returns
    False, leaving ``video`` as it was, when the source is a folder, has no audio track or its audio
    cannot be decoded (logged: the edit stands without sound)."""
    if Path(source).is_dir():
        return False
    try:
        return _add_audio(video, source, span)
    except av.FFmpegError as err:
        logger.warning("the source's audio was not carried into %s (%s)", video.name, err)
        return False


def _add_audio(video: Path, source: Path, span: tuple[float, float]) -> bool:
    with av.open(str(source)) as src:
        if not src.streams.audio:
            return False
        temporary = video.with_name(f".{video.name}.{secrets.token_hex(4)}.mp4")
        try:
            with av.open(str(video)) as original, av.open(str(temporary), mode="w") as out:
                video_in = original.streams.video[0]
                video_out = out.add_stream_from_template(video_in)
                audio_in = src.streams.audio[0]
                audio_out = out.add_stream("aac", rate=audio_in.rate, layout=audio_in.layout.name)
                for packet in original.demux(video_in):
                    if packet.dts is not None:
                        packet.stream = video_out
                        out.mux(packet)
                resampler = av.AudioResampler(format="fltp", layout=audio_in.layout.name, rate=audio_in.rate)
                start, end, written = span[0], span[1], 0
                for frame in src.decode(audio_in):
                    if frame.time is None or frame.time + frame.samples / frame.rate <= start:
                        continue
                    if frame.time >= end:
                        break
                    for part in resampler.resample(frame):
                        part.pts, part.time_base = written, Fraction(1, audio_in.rate)
                        written += part.samples
                        for packet in audio_out.encode(part):
                            out.mux(packet)
                for packet in audio_out.encode():
                    out.mux(packet)
            os.replace(temporary, video)
        finally:
            temporary.unlink(missing_ok=True)
    return True


def write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 frames ``(F, H, W, 3)`` as an animated GIF looping forever (PIL, adaptive palette).

    GIF delays are in 10 ms units, so the stored rate is approximate (e.g. 30 fps -> 30 ms or 40 ms).
    """
    frames = _as_frames(frames)
    images = [Image.fromarray(frame) for frame in frames]
    duration = max(int(round(1000.0 / float(fps))), 20)  # browsers slow delays < 20 ms down to 100 ms
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)


def write_frames(folder: Path, frames: np.ndarray) -> list[Path]:
    """Write uint8 frames ``(F, H, W, 3)`` as ``folder/00000.png, 00001.png, ...``; returns the paths.

    ``folder`` is created if missing (its parent must exist).
    """
    frames = _as_frames(frames)
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(folder / f"{i:05d}.png")
        write_png(paths[-1], frame)
    return paths


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 image ``(H, W, 3)`` RGB (or ``(H, W)`` grey) as PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}")
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, Fraction):
        return float(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically: a temporary file beside ``path`` renamed over it, so a reader never
    sees half of it and a failure leaves the old file (or none)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as UTF-8 JSON, indent 2, keys in insertion order (paths, numpy values, tensors
    converted), atomically (``write_text``)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=_json_default) + "\n")


def check_output_file(path: Path, inputs: Sequence[Path], field: str) -> Path:
    """SpecError(field) when the file output ``path`` may not be written: it is a folder, or it is one of
    the ``inputs`` (it would replace what is read). Returns it resolved."""
    path = Path(path).resolve()
    if path.is_dir():
        raise SpecError(field, f"{path} is a folder", "give a file name, e.g. metrics.json")
    if path in {Path(source).resolve() for source in inputs}:
        raise SpecError(field, f"{path} is one of the inputs", "write the result to another file")
    return path


#: What a videograin run writes into its record's "command" (run.json; masks.json for `masks`): the
#: mark of a folder --overwrite may replace.
OUTPUT_COMMANDS = ("edit", "reconstruct", "segment", "masks")


def _is_our_output(folder: Path) -> bool:
    """Whether ``folder`` holds a run.json (or masks.json) written by a videograin command."""
    for name in ("run.json", "masks.json"):
        try:
            record = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("command") in OUTPUT_COMMANDS:
            return True
    return False


def check_output_folder(final: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """SpecError("output") when ``final`` may not be written: it is a file, it is, holds or sits inside
    one of the ``inputs`` (config, video, mask folders, model ...), or it is a non-empty folder and
    ``overwrite`` is false or it is not a previous output of this tool (no run.json of ours)."""
    final = Path(final).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if final == source or source.is_relative_to(final) or final.is_relative_to(source):
            raise SpecError("output", f"{final} is, holds or sits inside the input {source}",
                            "choose an output folder apart from the config, video, masks and model")
    if final.exists() and not final.is_dir():
        raise SpecError("output", f"{final} is a file", "choose a folder (--overwrite replaces only output folders)")
    if final.is_dir() and any(final.iterdir()):
        if not overwrite:
            raise SpecError("output", f"{final} is not empty", "pass --overwrite or choose another folder")
        if not _is_our_output(final):
            raise SpecError("output", f"{final} is not a videograin output folder (no run.json of ours), so "
                            "--overwrite will not delete it", "choose an empty or new folder")


@contextlib.contextmanager
def output_lock(final: Path) -> Iterator[None]:
    """Hold ``.<final.name>.lock`` beside ``final`` (created with O_EXCL, holding this process's id) for
    one run: a second run into the same output is refused at once with SpecError("output"). A lock
    whose process is gone is taken over; the run's stale temporary folders are removed then, except an
    old output moved aside by a run killed between the two renames of ``output_folder``'s swap, which
    is put back under ``final``. Parent folders made for the lock are removed again if the run leaves
    them empty."""
    final = Path(final).resolve()
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]  # deepest first
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpecError("output", f"cannot make the folder {final.parent} ({err.strerror or err})",
                        "choose an output inside a folder you can write to") from None
    lock = final.parent / f".{final.name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None:
                raise SpecError("output", f"another videograin run (process {owner}) is writing {final}",
                                "wait for it to finish, or choose another folder") from None
            logger.info("removing the stale lock %s", lock)
            lock.unlink(missing_ok=True)
        except OSError as err:  # read-only, /proc, no permission
            raise SpecError("output", f"cannot write in {final.parent} ({err.strerror or err})",
                            "choose an output folder you can write to") from None
    else:
        raise SpecError("output", f"cannot take the lock {lock}", "remove it if no videograin run is writing there")
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    try:
        for stale in sorted(final.parent.glob(f".{final.name}.*"), key=lambda p: not p.name.endswith(".old")):
            if not (stale.is_dir() and re.fullmatch(rf"\.{re.escape(final.name)}\.[0-9a-f]{{8}}(\.old)?", stale.name)):
                continue
            if stale.name.endswith(".old") and not final.exists():  # killed mid-swap: the old output is this
                logger.info("restoring %s from %s, left by a run killed while replacing it", final, stale)
                os.replace(stale, final)
                continue
            logger.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        lock.unlink(missing_ok=True)
        for folder in created:  # what the lock needed: removed again unless the run wrote into it
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def free_space(folder: Path) -> tuple[int, int | None]:
    """Bytes and files (inodes) free to this user on the file system of ``folder`` (or of its nearest
    existing parent); files None where the file system sets no limit on them."""
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize, (stats.f_favail if stats.f_files else None)


def check_free_space(final: Path, frames: int, size: tuple[int, int]) -> None:
    """SpecError("output") when the file system of ``final`` lacks room for an edit's outputs, estimated
    as 8 bytes per output pixel (frames/ PNGs, the GIF and the mp4s, with margin) plus 16 MiB, and as
    one file per frame plus 32 (the other outputs and their folders, with margin)."""
    need, files = 8 * frames * size[0] * size[1] + 16 * 2**20, frames + 32
    free, free_files = free_space(Path(final).parent)
    if free < need:
        raise SpecError("output", f"only {free / 2**20:.0f} MiB free where {final} goes, the outputs need about "
                        f"{need / 2**20:.0f} MiB", "free some space or choose another folder")
    if free_files is not None and free_files < files:
        raise SpecError("output", f"only {free_files} more files (inodes) can be made where {final} goes, the "
                        f"outputs need about {files}", "delete some files there or choose another folder")


def _lock_owner(lock: Path) -> int | None:
    """The id of the live process holding ``lock``, or None when it is gone (a stale lock). A lock that
    is not a regular file, or holds anything but a process id (junk, 0, negative, out of range), is stale."""
    try:
        if not lock.is_file():
            return None
        pid = int(lock.read_text(encoding="utf-8", errors="replace").strip())
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except (OSError, ValueError, OverflowError):
        return None
    return pid


@contextlib.contextmanager
def output_folder(final: Path, overwrite: bool) -> Iterator[Path]:
    """Write outputs into a temporary sibling folder and move it to ``final`` only on success.

    Raises SpecError("output") as ``check_output_folder`` does. Yields the temporary folder (same parent, name ``.<final.name>.<random>``). On normal exit the
    old ``final`` (if any) is moved aside, the temporary folder renamed to ``final``, and the old one
    removed. On an exception the temporary folder is deleted and the exception re-raised; ``final`` is
    untouched. The parent of ``final`` is created if missing.
    """
    final = Path(final)
    check_output_folder(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:  # mkdir (not mkdtemp) so the folder gets the usual umask permissions, not 0700
        temp = final.parent / f".{final.name}.{secrets.token_hex(4)}"
        try:
            temp.mkdir()
            break
        except FileExistsError:
            continue
    try:
        yield temp
    except BaseException as err:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):  # bytes or inodes exhausted
            raise SpecError("output", f"no room left while writing {final} ({err.strerror}); nothing was written",
                            "free some space (or files: inodes) there, or choose another folder") from None
        raise
    old = None
    try:
        if final.exists() or final.is_symlink():
            old = final.parent / f"{temp.name}.old"
            os.replace(final, old)
        os.replace(temp, final)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)
            old = None
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    logger.info("wrote %s", final)
