"""Reading an official VideoGrain config's fields: sections, numbers, paths under its root, the files its
loaders pick, prompt words, the official key a videograin field came from, and the spec YAML written
(``dump``)."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError

# videograin field (as load_spec names it) -> official key, for errors found when reading the file back.
FIELD_TO_OFFICIAL = {
    "video.path": "dataset_config.path",
    "video.frames": "dataset_config.n_sample_frame",
    "video.start": "dataset_config.start_sample_frame",
    "video.stride": "dataset_config.sampling_rate",
    "video.size": "dataset_config.image_size",
    "source_prompt": "dataset_config.prompt",
    "negative_prompt": "dataset_config.negative_promot",
    "edit.steps": "editing_config.num_inference_steps",
    "edit.guidance_scale": "editing_config.guidance_scale",
    "edit.seed": "seed",
    "model": "pretrained_model_path",
    "edit.temporal_aids.flow": "editing_config.flatten_res",
    "edit.temporal_aids.pnp": "editing_config.inject_step",
    "control.model": "control_config.pretrained_controlnet_path",
    "control.condition": "control_config.control_type",
    "control.scale": "control_config.controlnet_conditioning_scale",
    "output": "logdir",
}

def section(data: dict, name: str, required: bool = False) -> dict:
    value = data.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise SpecError(name, "is missing" if value is None else f"must be a mapping, got {value!r}",
                        f"give an official VideoGrain config (with `{name}:`)")
    return value


def require(section: dict, key: str, prefix: str) -> Any:
    if section.get(key) is None:
        raise SpecError(f"{prefix}.{key}", "is missing (the official code requires it)", f"add `{key}:` under {prefix}")
    return section[key]


def whole_number(value: Any, field: str, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"must be an integer, got {value!r}", "write a whole number")
    if minimum is not None and value < minimum:
        raise SpecError(field, f"must be >= {minimum}, got {value}", f"use a value >= {minimum}")
    return value


def official_path(value: Any, field: str, root: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(field, f"must be a path, got {value!r}", "write the path as the official code reads it")
    return (root / Path(value).expanduser()).resolve()


def relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when possible (same drive), else absolute; forward slashes."""
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:
        return path.as_posix()


def select(files: list, start: int, frames: int, stride: int, total: int) -> list | None:
    """The files videograin's mask/frame loader picks (see mask_files.read_mask_folder), None when it would refuse."""
    if len(files) == frames:
        return files
    if len(files) == total and start + (frames - 1) * stride < total:
        return files[start : start + (frames - 1) * stride + 1 : stride]
    return None


def check_masks(folder: Path, indices: list[int], total: int, start: int, frames: int, stride: int,
                 field: str) -> None:
    """Every mask the official code reads exists, and videograin's loader picks the same files."""
    if not folder.is_dir():
        raise SpecError(field, f"mask folder {folder} not found (dataset_config.layout_mask_dir + name)",
                        "fix layout_mask_dir or the name, or pass --root DIR (the official repository root)")
    wanted = [f"{i:05d}.png" for i in indices]
    missing = [w for w in wanted if not (folder / w).is_file()]
    if missing:
        raise SpecError(field, f"{folder} lacks {missing[0]}"
                        f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} (the official code reads "
                        "<layout_mask_dir>/<name>/<frame index %05d>.png)", "add the masks of the selected frames")
    from ..media import list_images

    files = list_images(folder)
    chosen = select(files, start, frames, stride, total)
    if chosen is None or [p.name for p in chosen] != wanted:
        raise SpecError(field, f"{folder} holds {len(files)} mask images; videograin picks masks by position (all "
                        f"{frames} when there are as many as selected frames, else the frame selection out of one "
                        f"per source frame, {total}) and would not pick {wanted[0]}..{wanted[-1]}",
                        f"keep exactly {total} masks (one per source frame) or {frames} (the selected ones) there")


def image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return None


def words(text: str) -> list[str]:
    """Lower-case words and punctuation marks, as CLIP's tokenizer separates them."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def occurs(sub: list[str], seq: list[str]) -> bool:
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def closest(local: str, global_prompt: str) -> str:
    """The run of words in ``global_prompt`` (as written) most like ``local``, '' when nothing is close."""
    words = global_prompt.split()
    n = max(1, len(local.split()))
    runs = [" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))]
    lower = [r.lower() for r in runs]
    inside = [r for r, low in zip(runs, lower) if local.lower().strip() in low]  # e.g. 'man' in 'Spiderman'
    if inside:
        return inside[0]
    best = difflib.get_close_matches(local.lower(), lower, n=1, cutoff=0.6)
    return runs[lower.index(best[0])] if best else ""


def official_field(field: str, prompt_index: int) -> str:
    """The official key behind a videograin spec field (for errors found when reading the file back)."""
    match = re.match(r"regions\[(\d+)\]\.(\w+)", field)
    if match:
        k = int(match.group(1))
        if match.group(2) == "prompt":
            return f"editing_config.editing_prompts[{prompt_index}][{k + 1}]"
        return f"dataset_config.layout_mask_order[{k}]"
    if field == "prompt":
        return f"editing_config.editing_prompts[{prompt_index}][0]"
    for ours, official in FIELD_TO_OFFICIAL.items():
        if field == ours or field.startswith((ours + ".", ours + "[")):
            return official
    return "config"


def fmt_value(value: Any) -> str:
    """A value as one line of flow YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6, allow_unicode=True).strip()
    return text[:-3].strip() if text.endswith("...") else text


def dump(data: dict) -> str:
    """The spec as YAML: sections in block style, regions one flow mapping per line."""
    parts = []
    for key, value in data.items():
        if key == "regions":
            parts.append("regions:\n" + "".join(f"  - {fmt_value(r)}\n" for r in value))
        elif isinstance(value, dict):
            parts.append(f"{key}: {fmt_value(value)}\n")
        else:
            parts.append(yaml.safe_dump({key: value}, allow_unicode=True, width=10**6))
    return "".join(parts)