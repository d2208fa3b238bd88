"""Video and image files: reading frames (PyAV, PIL), writing videos, GIFs, PNGs and JSON, resizing frames.

Conventions:
- frames as numpy arrays are uint8 ``(F, H, W, 3)`` RGB; as tensors float32 ``(F, 3, H, W)`` in [-1, 1];
- sizes are ``(width, height)``.

Bad user input raises :class:`~videograin.errors.SpecError` naming the config field and the fix.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
from PIL import Image

from .errors import SpecError

logger = logging.getLogger(__name__)

#: What a video file and an image may be named (a folder of images is a video too).
VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".avi", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FOLDER_FPS = 8.0  # frame rate assumed for a folder of images

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


def selection_end(start: int, frames: int, stride: int) -> int:
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
    need = selection_end(start, frames, stride)
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
WIDE_GREY = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I": 65535, "F": 1.0}


def _read_rgb(path: Path, field: str) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB; 16-bit and float grey images are scaled, not clipped."""
    try:
        with Image.open(path) as im:
            if im.mode in WIDE_GREY:
                grey = np.asarray(im, dtype=np.float64) / WIDE_GREY[im.mode] * 255
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
    need = selection_end(start, frames, stride)
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
