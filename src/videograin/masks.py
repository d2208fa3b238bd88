"""Masks from a click or a box: one mask sequence per region, made from prompts on one frame.

Two engines:

- ``"flow"`` (no weights, always available): GrabCut (OpenCV) on the prompt frame, from the box (its
  inside probable foreground, its outside background) and the clicks (positive clicks foreground,
  negative ones background); then frame by frame, forward and backward from the prompt frame: the mask
  warped with the source's DIS optical flow, trusted where the flow is forward-backward consistent, and
  re-fitted with GrabCut initialised from it (its eroded core foreground, a band around it probable,
  farther away background), so it follows the object without drifting or eroding.
- ``"sam2"``: transformers' ``Sam2VideoModel`` (one inference session per clip, the prompts added on
  their frame, propagated forward and, from a later frame, backward; what its processor would do is
  done with torch, as that processor needs torchvision).

``make_masks(frames, prompts, engine)`` returns bool (R, F, H, W); ``write_masks`` writes the folders
``regions[].masks`` reads, an overlay video, a grid and masks.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from . import media, outputs, values, viz
from .config.spec import MASK_ENGINES as ENGINES
from .config.spec import MaskPrompt, plain_name
from .errors import SettingError, SpecError, WeightsUnavailable
from .loading import resolve_device

logger = logging.getLogger("videograin")

DEFAULT_SAM2 = "facebook/sam2.1-hiera-tiny"


def parse_region(text: str) -> tuple[str, MaskPrompt]:
    """``NAME:box=x0,y0,x1,y1[@F]`` and/or ``points=x,y[@F],-x,y[@F],...`` (a minus sign marks a negative
    click, ``@F`` the frame, default 0), joined by ``;``. SpecError("--region") when malformed."""
    name, colon, rest = text.partition(":")
    fix = "write e.g. --region man:box=40,60,200,300 or --region face:points=150,90,-160,140@0"
    if not colon or not name.strip() or not rest.strip():
        raise SpecError("--region", f"{text!r} is not NAME:box=...|points=...", fix)
    plain_name(name.strip(), "--region")  # it names the region's folder under --out
    box, points, negative, frames = None, [], [], set()

    def number(token: str) -> int:  # whole pixels, as in a config (ValueError for 10.5)
        value, _, frame = token.partition("@")
        if frame:
            frames.add(int(frame))
        return int(value)

    try:
        for part in rest.split(";"):
            key, eq, listed = part.partition("=")
            tokens = [t for t in listed.split(",") if t.strip()]
            if key.strip() == "box" and len(tokens) == 4:
                box = [number(t) for t in tokens]
            elif key.strip() == "points" and tokens and len(tokens) % 2 == 0:
                for x, y in zip(tokens[::2], tokens[1::2]):
                    (negative if x.strip().startswith("-") else points).append((abs(number(x)), number(y)))
            else:
                raise ValueError(part)
    except ValueError:
        raise SpecError("--region", f"{text!r}: cannot read {part!r}", fix) from None
    if box is not None:
        try:
            box = values.box(box, "--region")
        except SettingError as err:
            raise SpecError("--region", f"{text!r}: {err.problem}", err.fix) from None
    if len(frames) > 1:
        raise SpecError("--region", f"{text!r} puts prompts on frames {sorted(frames)}", "give one region's prompts on one frame")
    return name.strip(), MaskPrompt(box, tuple(points), tuple(negative), frames.pop() if frames else 0)


# ------------------------------------------------------------------------------------------- flow engine


def _grabcut(frame: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
    """GrabCut of uint8 (H, W, 3) from GC labels (H, W), inside the box around the non-background
    labels (grown by a margin); bool (H, W) foreground."""
    unsure = labels != cv2.GC_BGD
    fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if not fg.any():
        return fg
    ys, xs = np.nonzero(unsure)
    h, w = labels.shape
    pad = max(4, (ys.max() - ys.min() + xs.max() - xs.min()) // 8)
    y0, y1, x0, x1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, h), max(xs.min() - pad, 0), min(xs.max() + pad + 1, w)
    crop = labels[y0:y1, x0:x1].copy()
    if not ((crop == cv2.GC_BGD) | (crop == cv2.GC_PR_BGD)).any():  # GrabCut needs both classes
        return fg
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(np.ascontiguousarray(frame[y0:y1, x0:x1]), crop, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    out = np.zeros((h, w), bool)
    out[y0:y1, x0:x1] = (crop == cv2.GC_FGD) | (crop == cv2.GC_PR_FGD)
    return out


def _disc(shape: tuple[int, int], points, radius: int) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for x, y in points:
        cv2.circle(out, (int(x), int(y)), radius, 1, -1)
    return out.astype(bool)


def first_mask(frame: np.ndarray, prompt: MaskPrompt, iterations: int = 5) -> np.ndarray:
    """The prompt frame's mask, bool (H, W): the given mask, or GrabCut from the box and clicks. Only
    the connected pieces holding a positive click (or, without clicks, inside the box) are kept."""
    if prompt.mask is not None:
        return np.asarray(prompt.mask, bool)
    h, w = frame.shape[:2]
    radius = max(2, min(h, w) // 50)
    labels = np.full((h, w), cv2.GC_PR_BGD if prompt.box is None else cv2.GC_BGD, np.uint8)
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
    labels[_disc((h, w), prompt.points, radius)] = cv2.GC_FGD
    labels[_disc((h, w), prompt.negative, radius)] = cv2.GC_BGD
    if prompt.box is None:  # clicks alone: the foreground may only grow a while around them
        near = cv2.dilate(_disc((h, w), prompt.points, radius).astype(np.uint8), None, iterations=min(h, w) // 4)
        labels[(near == 0) & (labels == cv2.GC_PR_BGD)] = cv2.GC_BGD
        labels[(near > 0) & (labels == cv2.GC_PR_BGD)] = cv2.GC_PR_FGD
    mask = _grabcut(frame, labels, iterations)
    count, pieces = cv2.connectedComponents(mask.astype(np.uint8))
    keep = set(int(pieces[y, x]) for x, y in prompt.points) - {0} if prompt.points else set(range(1, count))
    return np.isin(pieces, list(keep)) if keep else mask


def refit(frame: np.ndarray, warped: np.ndarray, valid: np.ndarray, iterations: int = 3) -> np.ndarray:
    """The mask of ``frame`` from the previous frame's mask warped onto it (float (H, W) in [0, 1]) and
    the flow's consistency (bool (H, W)): GrabCut from its eroded core (foreground where the flow is
    trusted), the rest of it and a band around it (probable), background beyond. Falls back to the
    warped mask when GrabCut's answer is less than half or more than twice its area."""
    inside = warped >= 0.5
    area = int(inside.sum())
    if area == 0:
        return inside
    band = max(2, int(round(0.15 * np.sqrt(area))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    core = cv2.erode(inside.astype(np.uint8), kernel).astype(bool)
    around = cv2.dilate(inside.astype(np.uint8), kernel).astype(bool)
    labels = np.full(inside.shape, cv2.GC_BGD, np.uint8)
    labels[around] = cv2.GC_PR_BGD
    labels[inside] = cv2.GC_PR_FGD
    labels[core & valid] = cv2.GC_FGD
    mask = _grabcut(frame, labels, iterations)
    return mask if 0.5 * area <= mask.sum() <= 2 * area else inside


def propagate(frames: np.ndarray, mask: np.ndarray, start: int, progress=None) -> np.ndarray:
    """bool (F, H, W): ``mask`` (H, W) on frame ``start`` carried to every other frame of uint8
    (F, H, W, 3), forward then backward, by flow warping and GrabCut re-fitting (``refit``)."""
    from .optical_flow import consistency_mask, optical_flow

    out = np.zeros(frames.shape[:3], bool)
    out[start] = mask
    h, w = mask.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for steps in (range(start, len(frames) - 1), range(start, 0, -1)):
        for t in steps:
            nxt = t + 1 if steps.step == 1 else t - 1
            forward, backward = (f[0] for f in optical_flow(frames[[t, nxt]]))
            warped = cv2.remap(out[t].astype(np.float32), xs + backward[..., 0], ys + backward[..., 1],
                               cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            out[nxt] = refit(frames[nxt], warped, consistency_mask(forward, backward))
            if progress is not None:
                progress.update()
    return out


# ------------------------------------------------------------------------------------------- SAM 2 engine


def _load_sam2(model: str, device: str):
    """Sam2VideoModel from a folder or the hub, on ``device`` (bfloat16 on CUDA) in eval mode;
    WeightsUnavailable when it cannot be had. No processor: transformers' SAM 2 image and video
    processors need torchvision, so ``sam2_masks`` does their few steps itself."""
    import torch
    from transformers import Sam2VideoModel

    from .hub import obtainable

    if not obtainable(model, "config.json"):
        raise WeightsUnavailable(f"SAM 2 weights {model!r} are neither on disk nor in the hub cache, and the hub "
                                 "cannot be reached")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return Sam2VideoModel.from_pretrained(model, dtype=dtype).to(device).eval()
    except OSError as err:
        raise WeightsUnavailable(f"cannot load SAM 2 from {model!r} ({str(err).splitlines()[0]})") from None


def sam2_masks(frames: np.ndarray, prompts: list[MaskPrompt], model, device: str = "cpu",
               progress=None) -> np.ndarray:
    """bool (R, F, H, W) for uint8 frames (F, H, W, 3) from a loaded Sam2VideoModel: region ``i`` is
    object ``i`` of one inference session, its box and clicks (or mask) added and run on its frame; then
    all objects are propagated forward from the earliest prompt frame and backward from the latest
    (``progress.update()`` per frame of each pass).

    Sam2VideoProcessor's part (it needs torchvision) is done here with torch as it does it: frames
    resized to the model's square input (bilinear, antialiased), scaled to [0, 1] and normalised with
    ImageNet's mean and std; prompt pixels scaled to that size, a box as two points labelled 2 and 3
    ahead of the clicks (1 positive, 0 negative); a mask resized and thresholded at 0.5; the mask
    logits resized to the frame and thresholded at 0."""
    import torch
    import torch.nn.functional as F
    from transformers import Sam2VideoInferenceSession
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    (h, w), size = frames.shape[1:3], model.config.image_size
    # the processed frames stay in host memory; the model moves one frame at a time to ``device``
    session = Sam2VideoInferenceSession(video_height=h, video_width=w, inference_device=device,
                                        inference_state_device=device, video_storage_device="cpu",
                                        dtype=next(model.parameters()).dtype)
    mean, std = (torch.tensor(v, device=device).view(3, 1, 1) for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    by_frame: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_frame.setdefault(prompt.frame, []).append(i)
    out = np.zeros((len(prompts), *frames.shape[:3]), bool)
    with torch.inference_mode():
        for frame in frames:  # resized on ``device``, stored on the CPU
            pixels = torch.from_numpy(frame).to(device).permute(2, 0, 1)[None].float()
            pixels = F.interpolate(pixels, (size, size), mode="bilinear", antialias=True, align_corners=False)
            session.add_new_frame((pixels[0] / 255 - mean) / std)
        for frame_idx, ids in sorted(by_frame.items()):
            for i in ids:
                prompt, obj = prompts[i], session.obj_id_to_idx(i)
                if prompt.mask is not None:
                    mask = torch.from_numpy(np.asarray(prompt.mask, np.float32))[None, None]
                    mask = F.interpolate(mask, (size, size), mode="bilinear", antialias=True, align_corners=False)
                    session.add_mask_inputs(obj, frame_idx, (mask >= 0.5).float())
                    continue
                corners = [prompt.box[:2], prompt.box[2:]] if prompt.box is not None else []
                points = torch.tensor([*corners, *prompt.points, *prompt.negative], dtype=torch.float32)
                labels = [2, 3][:len(corners)] + [1] * len(prompt.points) + [0] * len(prompt.negative)
                session.add_point_inputs(obj, frame_idx, {
                    "point_coords": (points * torch.tensor([size / w, size / h]))[None, None],
                    "point_labels": torch.tensor(labels)[None, None]})
            session.obj_with_new_inputs = list(ids)
            model(inference_session=session, frame_idx=frame_idx)  # the prompts' own masks, kept as memory
        for reverse, start in ((False, min(by_frame)), (True, max(by_frame))):  # no backward pass from 0
            for step in model.propagate_in_video_iterator(session, start_frame_idx=start, reverse=reverse):
                logits = F.interpolate(step.pred_masks.float(), (h, w), mode="bilinear", align_corners=False)
                out[step.object_ids, step.frame_idx] = (logits[:, 0] > 0).cpu().numpy()
                if progress is not None:
                    progress.update()
    return out


# ------------------------------------------------------------------------------------------- both


def resolve_engine(engine: str, model: str = DEFAULT_SAM2) -> str:
    """"auto": SAM 2 when its weights are on disk or cached, else the flow engine."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine
    from .hub import cached

    return "sam2" if Path(model).is_dir() or cached(model, "config.json") else "flow"


def make_masks(frames: np.ndarray, prompts: list[MaskPrompt], engine: str = "auto", model: str = DEFAULT_SAM2,
               device: str = "cpu", progress: bool = True) -> tuple[np.ndarray, dict]:
    """bool (R, F, H, W) for uint8 frames (F, H, W, 3) and one prompt per region, and the record of how
    (engine, model, prompts, seconds) for masks.json / run.json."""
    from tqdm.auto import tqdm

    engine = resolve_engine(engine, model)
    clock = time.perf_counter()
    sam = _load_sam2(model, device) if engine == "sam2" else None  # a missing model fails before the bar
    if engine == "flow":
        total = len(prompts) * (len(frames) - 1)
    else:  # forward from the first prompt frame to the end, backward from the last one to 0 (none from 0)
        last = max(p.frame for p in prompts)
        total = len(frames) - min(p.frame for p in prompts) + (last + 1 if last else 0)
    with tqdm(total=total, desc=f"masks ({engine})", unit="frame", disable=not progress) as bar:
        if engine == "sam2":
            masks = sam2_masks(frames, prompts, sam, device, progress=bar)
        else:
            masks = np.stack([propagate(frames, first_mask(frames[p.frame], p), p.frame, bar) for p in prompts])
    record = {"engine": engine, "model": model if engine == "sam2" else None,
              "prompts": [p.to_dict() for p in prompts], "seconds": round(time.perf_counter() - clock, 3)}
    return masks, record


def write_masks(folder: Path, frames: np.ndarray, masks: np.ndarray, names: list[str], record: dict, fps: float) -> None:
    """``folder/<name>/00000.png ...`` (255 inside), masks_overlay.mp4, masks.png (a labelled grid) and
    masks.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(names, masks):
        media.write_frames(folder / name, np.repeat(mask[..., None].astype(np.uint8) * 255, 3, -1))
    overlay = viz.mask_overlay(frames, masks)
    media.write_video(folder / "masks_overlay.mp4", overlay, fps)
    legend = viz.region_legend(names, [f"{record['engine']} engine"] * len(names))
    media.write_png(folder / "masks.png", viz.labelled_grid([frames, overlay], ["source", "masks"], legend))
    media.write_json(folder / "masks.json", {"command": "masks", **record, "regions": names, "frames": len(frames),
                                          "size": [frames.shape[2], frames.shape[1]]})


# ------------------------------------------------------------------------------------ the `videograin masks` job


def masks_job(video: str | Path, regions: list[str], out: str | Path, *, start: int = 0, frames: int | None = None,
              stride: int = 1, engine: str = "auto", model: str = DEFAULT_SAM2, device: str | None = None,
              overwrite: bool = False, progress: bool = True) -> dict:
    """`videograin masks`: a mask sequence per region (``regions``: "NAME:box=...|points=..." as
    ``parse_region`` reads them) over the frames ``start, start + stride, ...`` (``frames`` of them,
    default all) of ``video``, written by ``write_masks`` into ``out`` through the edit's output
    skeleton. Returns the masks.json record; SpecError naming the flag for bad input."""
    for flag, value, minimum in (("--stride", stride, 1), ("--start", start, 0), ("--frames", frames, 1)):
        if value is not None and value < minimum:
            raise SpecError(flag, f"must be >= {minimum}, got {value}", f"pass a whole number >= {minimum}")
    if not regions:
        raise SpecError("--region", "no region given", "give one --region NAME:box=...|points=... per region")
    names, prompts = zip(*(parse_region(text) for text in regions))
    names, prompts = list(names), list(prompts)
    if len(set(names)) != len(names):
        raise SpecError("--region", f"region names repeat: {names}", "give every region its own name")
    video = Path(video)
    try:
        count = frames or max(1, (media.count_frames(video) - start + stride - 1) // stride)
        pixels, fps = media.read_video(video, start, count, stride)
    except SpecError as err:
        raise SpecError({"video.path": "VIDEO", "video.frames": "--frames"}.get(err.field, err.field), err.problem,
                        err.fix) from None
    for name, prompt in zip(names, prompts):
        prompt.check(len(pixels), pixels.shape[2], pixels.shape[1], f"--region {name}")
    try:
        engine = resolve_engine(engine, model)
    except ValueError as err:
        raise SpecError("--engine", str(err), "pass auto, flow or sam2") from None
    out = Path(out)
    with outputs.locked_output(out, overwrite, [video]), outputs.output_folder(out, overwrite) as folder:
        try:
            masks, record = make_masks(pixels, prompts, engine, model, resolve_device(device), progress=progress)
        except WeightsUnavailable as err:
            raise SpecError("--model", str(err), "give a local SAM 2 folder, or --engine flow (no weights)") from None
        record = {**record, "video": str(video.resolve()), "start": start, "stride": stride}
        write_masks(folder, pixels, masks, names, record, fps)
    logger.info("masks of %d regions (%s engine, %.1f s): %s", len(names), record["engine"], record["seconds"], out)
    return record
