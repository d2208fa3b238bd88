"""An edit's inputs, assembled from its config: the frames and every region's masks at the edit size.

Regions come from mask folders, boxes, or a box or clicks given to the masks engine (``PromptedMasks``,
reused from the previous output's masks/ when they match). Bad user input raises
:class:`~videograin.errors.SpecError` naming the config field and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config.spec import EditSpec, VideoSpec
from .errors import SpecError, WeightsUnavailable
from .mask_files import MASK_THRESHOLD, boxes_to_masks, read_mask_folder, resize_masks
from .media import count_frames, from_uint8, list_images, read_video, resize_frames
from .sizes import default_size, side_problem

logger = logging.getLogger(__name__)

#: A region covering more of the clip than this is noted in run.json (a mask with a light background?).
FULL_REGION_SHARE = 0.95


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


def inputs_of(spec: EditSpec, config: str | Path | None) -> list[Path]:
    """Every file or folder an edit reads (``config``: its YAML file, if any): what its output may not
    be, hold or sit inside."""
    paths = [*([Path(config)] if config is not None else []), spec.video.path, *(r.masks for r in spec.regions if r.masks is not None)]
    for model in (spec.model, spec.model_config, spec.control.model if spec.control else None):
        if model is not None and Path(model).exists():
            paths.append(Path(model))
    if spec.control is not None and isinstance(spec.control.condition, Path):
        paths.append(spec.control.condition)
    return paths + [lora.path for lora in spec.lora]


def requested_size(source: tuple[int, int], requested: tuple[int, int] | None, multiple: int) -> tuple[int, int]:
    """``video.size`` when set (SpecError naming the nearest valid sizes when it breaks the size rule),
    else the source's default edit size."""
    if requested is None:
        return default_size(source, multiple)
    w, h = requested
    found = {name: side_problem(name, value, multiple) for name, value in (("width", w), ("height", h))}
    problems = [f[0] for f in found.values() if f is not None]
    if problems:
        near = {name: f[1] if f is not None else str(value) for (name, f), value in zip(found.items(), (w, h))}
        raise SpecError("video.size", f"{w}x{h}: " + "; ".join(problems),
                        f"use width {near['width']} and height {near['height']} (the edit is made at this size)")
    return w, h


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
    unset, ``sizes.default_size`` of the source.

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
    w, h = requested_size((src_w, src_h), video.size, multiple)
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


@dataclass
class PromptedMasks:
    """The masks of the regions given by a box or clicks (``RegionSpec.prompts``), made by the masks
    engine when ``load_inputs`` reads the source (its ``prompted``), or reused from the previous
    output's masks/ when its masks.json holds the same prompts, engine and frames; written into the new
    output's masks/ (the folders a region's ``masks:`` reads, with an overlay and masks.json)."""

    spec: EditSpec
    device: str
    progress: bool
    frames: np.ndarray | None = None
    masks: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    record: dict | None = None

    def __call__(self, frames: np.ndarray) -> dict[int, np.ndarray]:
        from .masks import make_masks

        spec, video = self.spec, self.spec.video
        indices = [i for i, r in enumerate(spec.regions) if r.prompts is not None]
        prompts = [spec.regions[i].prompts for i in indices]
        for i, prompt in zip(indices, prompts):
            prompt.check(len(frames), frames.shape[2], frames.shape[1], f"regions[{i}].masks")
        key = {"requested_engine": spec.masks_engine, "prompts": [p.to_dict() for p in prompts],
               "video": {"path": str(video.path), "start": video.start, "frames": video.frames, "stride": video.stride}}
        self.frames, self.masks = frames, self._cached(key, indices, len(frames))
        if not self.masks:
            try:
                made, record = make_masks(frames, prompts, spec.masks_engine, device=self.device, progress=self.progress)
            except WeightsUnavailable as err:
                raise SpecError("masks_engine", str(err), "give `masks_engine: flow` (no weights) or make the SAM 2 "
                                "weights available") from None
            self.masks, self.record = dict(zip(indices, made)), {**record, **key}
        return self.masks

    def _cached(self, key: dict, indices: list[int], frames: int) -> dict[int, np.ndarray]:
        folder = self.spec.output / "masks"
        try:
            record = json.loads((folder / "masks.json").read_text(encoding="utf-8"))
            if any(record.get(k) != v for k, v in key.items()):
                return {}
            masks = {i: read_mask_folder(folder / self.spec.regions[i].name, 0, frames, 1, frames, "masks")
                     for i in indices}
        except (OSError, ValueError, SpecError):
            return {}
        logger.info("note: masks of %s reused from %s", ", ".join(self.spec.regions[i].name for i in indices), folder)
        self.record = record
        return masks

    def write(self, folder: Path, fps: float) -> None:
        if not self.masks:
            return
        from .masks import write_masks

        order = sorted(self.masks)
        write_masks(folder / "masks", self.frames, np.stack([self.masks[i] for i in order]),
                    [self.spec.regions[i].name for i in order], self.record, fps)
