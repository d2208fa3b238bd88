"""What an official config's ``dataset_config`` converts to: the frame selection and size, the prompts and
the regions (their mask folders checked as the official loader reads them)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError
from ..values import is_edited
from .official_fields import (
    check_masks, closest, fmt_value, image_size, occurs, official_path, relative, require, whole_number, words,
)

# video_diffusion/common/image_util.py: the files the official dataset lists as frames (str.endswith).
OFFICIAL_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".JPEG")
OFFICIAL_IMAGE_SIZE = 512  # ImageSequenceDataset(image_size=512)


@dataclass(frozen=True)
class Frames:
    """The frames the official dataset selects (``video_dir``: the folder; ``total``: how many frames
    videograin lists there; ``first_frame``: the first selected one)."""

    video_dir: Path
    start: int
    rate: int
    frames: int
    indices: list[int]
    total: int
    first_frame: Path


def frames(dataset: dict, root: Path, warnings: list[str]) -> Frames:
    """Map ``dataset_config.path/start_sample_frame/sampling_rate/n_sample_frame`` to the frame selection."""
    video_dir = official_path(require(dataset, "path", "dataset_config"), "dataset_config.path", root)
    if not video_dir.is_dir():
        raise SpecError("dataset_config.path", f"frame folder {video_dir} not found",
                        f"run from the official repository root or pass --root DIR (now {root})")
    images = sorted(f for f in os.listdir(video_dir) if f.endswith(OFFICIAL_IMAGE_EXTENSIONS))
    start = whole_number(dataset.get("start_sample_frame", 0) or 0, "dataset_config.start_sample_frame", 0)
    rate = whole_number(dataset.get("sampling_rate", 1), "dataset_config.sampling_rate", 1)
    frames = whole_number(require(dataset, "n_sample_frame", "dataset_config"), "dataset_config.n_sample_frame", None)
    if frames < 0:  # official: all frames of the folder
        frames = len(images)
    if frames == 0:
        raise SpecError("dataset_config.n_sample_frame", "is 0", "sample at least one frame")
    indices = [start + i * rate for i in range(frames)]
    if not images or indices[-1] >= len(images):
        raise SpecError("dataset_config.n_sample_frame",
                        f"{video_dir} has {len(images)} frames, but start_sample_frame={start}, "
                        f"sampling_rate={rate}, n_sample_frame={frames} needs {indices[-1] + 1}",
                        "lower n_sample_frame or sampling_rate, or add frames")
    from ..media import list_images  # heavy imports (torch, av) only when converting

    ours = list_images(video_dir)
    official_names = [images[i] for i in indices]
    if [p.name for p in ours[start::rate][:frames]] != official_names:  # media.read_video's selection
        warnings.append(f"dataset_config.path: videograin lists {len(ours)} frames in {video_dir} (png/jpg/jpeg/"
                        f"webp/bmp, natural order), the official code {len(images)} (sorted names); the selected "
                        "frames differ: rename the frames %05d.jpg")
    return Frames(video_dir=video_dir, start=start, rate=rate, frames=frames, indices=indices, total=len(ours),
                   first_frame=video_dir / official_names[0])


def video_size(dataset: dict, first_frame: Path, unsupported: list[str],
                warnings: list[str]) -> tuple[int, tuple[int, int] | None]:
    """Map ``dataset_config.image_size`` (and crop/offset/stride/class_data_root) to ``video.size``."""
    size = whole_number(dataset.get("image_size", OFFICIAL_IMAGE_SIZE), "dataset_config.image_size", 1)
    first = image_size(first_frame)
    if first is not None and first[0] != first[1]:
        warnings.append(f"dataset_config.image_size: the frames are {first[0]}x{first[1]}; the official code "
                        f"scales their short side to {size} and centre-crops a {size}x{size} square, videograin "
                        f"resizes the whole frame to {size}x{size} (aspect change)")
    for key in ("width", "height"):
        if key in dataset:
            warnings.append(f"dataset_config.{key}: not read by the official dataset (its size is image_size); "
                            f"video.size follows image_size = {size}")
    if dataset.get("crop", "center") != "center":
        unsupported.append(f"dataset_config.crop: {fmt_value(dataset['crop'])} (random crop)")
    offset = dataset.get("offset")
    if isinstance(offset, dict) and any(offset.values()):
        unsupported.append(f"dataset_config.offset: {fmt_value(offset)} (crop before scaling)")
    if isinstance(dataset.get("stride"), int) and dataset["stride"] > 0:
        unsupported.append(f"dataset_config.stride: {dataset['stride']} (random clip of a long video, tuning only)")
    if dataset.get("class_data_root"):
        unsupported.append(f"dataset_config.class_data_root: {fmt_value(dataset['class_data_root'])} (tuning only)")
    return size, first


def prompts(dataset: dict, editing: dict, prompt_index: int,
             warnings: list[str]) -> tuple[str, str, list[str], list[str]]:
    """Map ``editing_prompts[prompt_index]`` and ``layout_mask_order`` to (key, global, local prompts, order)."""
    prompts = editing.get("editing_prompts")
    if not isinstance(prompts, list) or not prompts:
        raise SpecError("editing_config.editing_prompts", f"must be a list of [global, local_1, ...] lists, "
                        f"got {prompts!r}", "write editing_prompts: [['<global prompt>', '<local 1>', ...]]")
    if not 0 <= prompt_index < len(prompts):
        raise SpecError("--index", f"{prompt_index} is out of range: editing_config.editing_prompts has "
                        f"{len(prompts)} entr{'y' if len(prompts) == 1 else 'ies'}",
                        f"pass --index 0..{len(prompts) - 1}")
    key = f"editing_config.editing_prompts[{prompt_index}]"
    entry = prompts[prompt_index]
    if not isinstance(entry, list) or not entry or not all(isinstance(p, str) for p in entry):
        raise SpecError(key, f"must be a list of text [global, local_1, ...], got {entry!r}",
                        "write ['<global prompt>', '<local prompt 1>', ...] with one local prompt per layout mask")
    global_prompt, local_prompts = entry[0], entry[1:]
    if not global_prompt.strip():
        raise SpecError(f"{key}[0]", "the global prompt is empty", "write the edited video in words")
    order = dataset.get("layout_mask_order")
    if not isinstance(order, list) or not order or not all(isinstance(n, str) and n for n in order):
        raise SpecError("dataset_config.layout_mask_order", f"must be a non-empty list of mask folder names, "
                        f"got {order!r}", "list the folders under layout_mask_dir, e.g. ['left_man', 'right_man']")
    if len(local_prompts) > len(order):  # the official code fails on a local prompt without a layout
        raise SpecError(key, f"has {len(local_prompts)} local prompts for {len(order)} layout masks {order} "
                        "(dataset_config.layout_mask_order)",
                        "give one local prompt per layout mask, in the same order, or add the missing mask names")
    if len(local_prompts) < len(order):
        # Official: layouts without a local prompt still separate the regions in self-attention and get no
        # text, exactly as with '' (e.g. config/part_level/modification/man_text_message/black_suit.yaml).
        missing = order[len(local_prompts):]
        warnings.append(f"{key} has {len(local_prompts)} local prompt(s) for {len(order)} layout masks; "
                        f"{missing} get '' (kept unedited), as in the official code")
        local_prompts = local_prompts + [""] * len(missing)
    if len(prompts) > 1:
        others = [f"[{i}] {p[0]!r}" if isinstance(p, list) and p else f"[{i}] {p!r}"
                  for i, p in enumerate(prompts) if i != prompt_index]
        warnings.append(f"editing_config.editing_prompts has {len(prompts)} edits; this file is entry "
                        f"{prompt_index}; convert again with --index N for {'; '.join(others)}")
    return key, global_prompt, local_prompts, order


def regions(dataset: dict, root: Path, out_dir: Path, sel: Frames, order: list[str], local_prompts: list[str],
             key: str, global_prompt: str, notes: list[str], warnings: list[str]) -> list[dict]:
    """Map ``layout_mask_dir``/``layout_mask_order`` and the local prompts to the spec's ``regions``."""
    mask_dir = official_path(require(dataset, "layout_mask_dir", "dataset_config"),
                              "dataset_config.layout_mask_dir", root)
    regions = []
    seen: dict[str, int] = {}
    for k, (name, local) in enumerate(zip(order, local_prompts)):
        field = f"dataset_config.layout_mask_order[{k}]"
        if name in seen:
            raise SpecError(field, f"{name!r} is listed twice (also [{seen[name]}])", "list each mask folder once")
        seen[name] = k
        folder = mask_dir / name
        check_masks(folder, sel.indices, sel.total, sel.start, sel.frames, sel.rate, field)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        if safe in (".", "..") or safe in {r["name"] for r in regions}:
            safe = f"region{k}_{safe.strip('.')}"
        if safe != name:
            notes.append(f"{field}: region named {safe!r} (folder names allow only letters, digits, _ - .)")
        regions.append({"name": safe, "masks": relative(folder, out_dir), "prompt": local})
        if is_edited(local) and not occurs(words(local), words(global_prompt)):
            near = closest(local, global_prompt)
            hint = f" (closest words there: {near!r})" if near else ""
            warnings.append(
                f"{key}[{k + 1}]: local prompt {local!r} does not occur word for word in the global prompt "
                f"{global_prompt!r}{hint}; kept, but `videograin edit` will reject it (the official code silently "
                f"leaves that region without text); fix: rewrite the prompt so it contains {local!r} word for "
                f"word, or use the prompt's own words as the local prompt")
    return regions


def blend_notes(regions: list[dict], key: str, global_prompt: str, notes: list[str], warnings: list[str]) -> None:
    """Map the official latent blending of the layouts to a note or warning about regions without a prompt."""
    # Official latent blending keeps only the pixels outside the union of *all* layouts; videograin's keeps
    # everything outside the regions that have a prompt.
    kept = [r["name"] for r in regions if not is_edited(r["prompt"])]
    if kept and len(kept) == len(regions):
        warnings.append(f"{key}: no layout has a local prompt; the official code re-generates the layouts {kept} "
                        "under the global prompt, but videograin's latent blend keeps regions without a prompt, so "
                        "this edit would change nothing; fix: give regions a local prompt taken from the global "
                        f"prompt {global_prompt!r}, or set edit.blend: false (re-generates the whole frame)")
    elif kept:
        notes.append(f"regions {kept} have no local prompt: videograin keeps them as they are (latent blend); the "
                     "official blend re-generates every layout region and keeps only pixels outside all layouts")


def dataset_prompts(dataset: dict) -> tuple[str, str | None]:
    """Map ``dataset_config.prompt`` and ``negative_promot`` to (source prompt, negative prompt or None)."""
    negative = dataset.get("negative_promot", dataset.get("negative_prompt"))
    if negative is not None and not isinstance(negative, str):
        raise SpecError("dataset_config.negative_promot", f"must be text, got {negative!r}", "write it in quotes")
    source_prompt = dataset.get("prompt", "")
    if source_prompt is None:
        source_prompt = ""
    if not isinstance(source_prompt, str):
        raise SpecError("dataset_config.prompt", f"must be text, got {source_prompt!r}", "write it in quotes")
    return source_prompt, negative