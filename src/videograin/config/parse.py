"""YAML config -> validated EditSpec, with one-line errors naming the field and the fix.

Everything here is checked without reading the video or loading a model: types, ranges, required and
unknown keys, that referenced files and folders exist, and box geometry. Checks that need the video
header or the model's config files are in config/preflight.py, also before any weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .. import media, values
from ..errors import SettingError, SpecError
from ..method.sampling import SOLVERS
from ..method.settings import (
    INVERSIONS, MAX_REGIONS, FlowAid, InversionFree, Modulation, PnPAid, ReAtCoSettings, TemporalAidSettings, Window,
)
from .yaml_fields import (
    UniqueKeyLoader, boolean, check_keys, checked, choice, guidance, keys_of, mapping, number, path_value,
    prompt_text, require, text, unless_none, whole, yaml_problem,
)
from .spec import (
    ANNOTATORS, DEFAULT_MODEL, MASK_ENGINES, METHODS, ControlSpec, EditSettings, EditSpec, LoraSpec, MaskPrompt, RegionSpec,
    VideoSpec, config_field, plain_name,
)

#: A region's YAML keys: ``masks:`` holds a folder, boxes, or a box/clicks mapping (RegionSpec's masks,
#: boxes or prompts).
_REGION_KEYS = ("name", "masks", "prompt", "word")
MAX_SEED = 2**64 - 1  # the largest seed torch.Generator takes


def read_config(path: str | Path) -> tuple[Any, Path]:
    """Parse a YAML config file: (its data, its folder). Raises SpecError("config") when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("config", f"file {path} not found", "check the config path")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise SpecError("config", f"{path} is not UTF-8 text", "save the config as UTF-8 YAML") from err
    except yaml.YAMLError as err:
        raise SpecError("config", f"invalid YAML in {path}: {yaml_problem(err)}",
                        "fix the YAML syntax there (indentation, colons, quotes)") from err
    return data, path.resolve().parent


def load_spec(path: str | Path) -> EditSpec:
    """Read and validate a YAML config; relative paths in it are resolved against its folder."""
    return spec_from_dict(*read_config(path))


def load_source_spec(path: str | Path) -> EditSpec:
    """Read only the sections that describe the source: ``model``, ``video`` and ``source_prompt``
    (what `videograin segment` needs), validated as ``load_spec`` validates them. Other known sections
    may be present or absent and are not read; unknown top-level keys are still errors. Returns an
    EditSpec with no regions, an empty prompt and no output."""
    data, base_dir = read_config(path)
    if not isinstance(data, dict):
        raise SpecError("config", f"top level must be a mapping of keys, got {values.describe(data)}",
                        "write `key: value` lines such as `video: ...`, `source_prompt: ...`")
    check_keys(data, keys_of(EditSpec, "base_dir"), "")
    video = _video(require(data, "video", "", "add `video: {path: <video file or frame folder>}`"), base_dir)
    return EditSpec(
        prompt="",
        video=video,
        regions=(),
        model=resolve_model(data.get("model", EditSpec.model), base_dir),
        model_config=unless_none(resolve_model, data.get("model_config"), base_dir, "model_config"),
        source_prompt=prompt_text(data.get("source_prompt", EditSpec.source_prompt), "source_prompt"),
        base_dir=base_dir,
    )


def spec_from_dict(data: dict, base_dir: Path) -> EditSpec:
    """Validate a parsed config into an EditSpec; relative paths are resolved against ``base_dir``."""
    base_dir = Path(base_dir).resolve()
    if not isinstance(data, dict):
        raise SpecError("config", f"top level must be a mapping of keys, got {values.describe(data)}",
                        "write `key: value` lines such as `prompt: ...`, `video: ...`, `regions: ...`")
    check_keys(data, keys_of(EditSpec, "base_dir"), "")
    prompt = prompt_text(require(data, "prompt", "", 'add `prompt: "<the edited video in words>"`'), "prompt",
                     nonempty=True)
    video = _video(require(data, "video", "", "add `video: {path: <video file or frame folder>}`"), base_dir)
    regions = _regions(require(data, "regions", "", "add a `regions:` list with one entry per region"),
                       video.frames, base_dir)
    output = data.get("output")
    return EditSpec(
        prompt=prompt,
        video=video,
        regions=regions,
        model=resolve_model(data.get("model", EditSpec.model), base_dir),
        model_config=unless_none(resolve_model, data.get("model_config"), base_dir, "model_config"),
        source_prompt=prompt_text(data.get("source_prompt", EditSpec.source_prompt), "source_prompt"),
        negative_prompt=prompt_text(data.get("negative_prompt", EditSpec.negative_prompt), "negative_prompt"),
        edit=_edit(data.get("edit")),
        control=_control(data.get("control"), base_dir),
        lora=_loras(data.get("lora"), base_dir),
        output=None if output is None else path_value(output, "output", base_dir),
        masks_engine=choice(data.get("masks_engine", EditSpec.masks_engine), "masks_engine", MASK_ENGINES),
        base_dir=base_dir,
    )


# --- sections ---------------------------------------------------------------------------------------


def _video(value: Any, base_dir: Path) -> VideoSpec:
    data = mapping(value, "video")
    check_keys(data, keys_of(VideoSpec), "video")
    path = path_value(require(data, "path", "video", "add `path: <video file or folder of frames>` under video"),
                 "video.path", base_dir)
    if not path.exists():
        raise SpecError("video.path", f"{path} does not exist",
                        f"fix the path (relative paths are resolved against the config folder {base_dir})")
    if not (path.is_file() or path.is_dir()):  # a FIFO, device or socket would block the read
        raise SpecError("video.path", f"{path} is not a regular file or folder", "give a video file or a folder of frames")
    size = data.get("size")
    start = whole(data.get("start", VideoSpec.start), "video.start", 0)
    stride = whole(data.get("stride", VideoSpec.stride), "video.stride", 1)
    frames = data.get("frames", VideoSpec.frames)
    if isinstance(frames, str) and frames != "all":
        raise SpecError("video.frames", f"must be a whole number or 'all', got {frames!r}",
                        "give a number of frames, e.g. 16, or `all` (every frame from `start`, every `stride`-th)")
    if frames == "all":  # every frame from start, every stride-th
        total = media.count_frames(path)
        if start >= total:
            raise SpecError("video.start", f"{start} is past the last frame of {path.name} ({total} frames)",
                            f"use a start below {total}")
        frames = (total - start - 1) // stride + 1
    return VideoSpec(
        path=path,
        frames=whole(frames, "video.frames", 1),
        start=start,
        stride=stride,
        size=None if size is None else _size(size),
    )


def _size(value: Any) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(values.is_whole(v) and v > 0 for v in value)):
        raise SpecError("video.size", f"must be [width, height] as two positive integers, got {values.describe(value)}",
                        "write e.g. `size: [512, 512]`, or leave it out to decide from the video")
    return (value[0], value[1])


def _regions(value: Any, frames: int, base_dir: Path) -> tuple[RegionSpec, ...]:
    if not isinstance(value, list):
        raise SpecError("regions", f"must be a list of regions, got {values.describe(value)}",
                        "write one `- {name: ..., masks: ..., prompt: ...}` entry per region")
    if not value:
        raise SpecError("regions", "is empty",
                        "add at least one `- {name: ..., masks: ..., prompt: ...}` entry")
    if len(value) > MAX_REGIONS:
        raise SpecError("regions", f"has {len(value)} regions, at most {MAX_REGIONS} are supported",
                        "merge regions that get the same prompt (one region may cover several objects)")
    regions = tuple(_region(item, f"regions[{i}]", frames, base_dir) for i, item in enumerate(value))
    first_index: dict[str, int] = {}
    for i, region in enumerate(regions):
        if region.name in first_index:
            raise SpecError(f"regions[{i}].name",
                            f"duplicate name {region.name!r} (also regions[{first_index[region.name]}])",
                            "give every region a unique name")
        first_index[region.name] = i
    return regions


def _region(value: Any, prefix: str, frames: int, base_dir: Path) -> RegionSpec:
    data = mapping(value, prefix, fix="write each region as `- {name: ..., masks: ..., prompt: ...}`")
    check_keys(data, _REGION_KEYS, prefix)
    name = text(require(data, "name", prefix, "add `name: <folder-safe name>`, e.g. `name: left_man`"),
                 f"{prefix}.name", nonempty=True)
    plain_name(name, f"{prefix}.name")
    masks = require(data, "masks", prefix,
                     "add `masks: <folder of per-frame PNGs>` or a box `masks: [x0, y0, x1, y1]`")
    prompt = prompt_text(require(data, "prompt", prefix,
                              'add `prompt: <its words in the global prompt>` (`prompt: ""` keeps it unedited)'),
                     f"{prefix}.prompt")
    word = data.get("word")
    if word is not None:
        word = text(word, f"{prefix}.word", nonempty=True).strip()
        if word not in prompt.split():
            raise SpecError(f"{prefix}.word", f"{word!r} is not a word of the region prompt {prompt!r}",
                            "name one word of the region's prompt (its head noun), or leave `word` out")
    field = f"{prefix}.masks"
    if isinstance(masks, str):
        return RegionSpec(name=name, prompt=prompt, masks=_mask_folder(masks, field, base_dir), word=word)
    if isinstance(masks, list):
        return RegionSpec(name=name, prompt=prompt, boxes=_boxes(masks, field, frames), word=word)
    if isinstance(masks, dict):
        return RegionSpec(name=name, prompt=prompt, prompts=_mask_prompt(masks, field, frames), word=word)
    raise SpecError(field, f"must be a folder path, a box or a mapping of box/points, got {values.describe(masks)}",
                    "give a folder of per-frame PNGs, a box [x0, y0, x1, y1], or one such box per frame")


def _mask_prompt(value: dict, field: str, frames: int) -> MaskPrompt:
    """``{box: [x0, y0, x1, y1], points: [[x, y], ...], negative: [[x, y], ...], frame: N}`` (a box or
    points at least); whether they lie inside the frame is checked once the video's size is known."""
    check_keys(value, keys_of(MaskPrompt, "mask"), field)
    if value.get("box") is None and not value.get("points"):
        raise SpecError(field, "has neither `box` nor `points`",
                        "give `box: [x0, y0, x1, y1]` or `points: [[x, y]]` (and optionally `negative:`) on `frame:`")

    def points(key: str) -> tuple[tuple[int, int], ...]:
        items = value.get(key) or []
        if not isinstance(items, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(c, int) and not isinstance(c, bool) for c in p)
                for p in items):
            raise SpecError(f"{field}.{key}", f"must be a list of [x, y] pixel pairs, got {values.describe(items)}",
                            f"write e.g. `{key}: [[120, 80]]`")
        return tuple((int(x), int(y)) for x, y in items)

    frame = value.get("frame", 0)
    if not isinstance(frame, int) or isinstance(frame, bool) or not 0 <= frame < frames:
        raise SpecError(f"{field}.frame", f"must be a frame index of the selected clip, 0..{frames - 1}, got {frame!r}",
                        f"give a frame between 0 and {frames - 1} (counted in the selected frames)")
    box = value.get("box")
    return MaskPrompt(None if box is None else checked(values.box, box, f"{field}.box"), points("points"), points("negative"), frame)


def _mask_folder(value: str, field: str, base_dir: Path) -> Path:
    path = path_value(value, field, base_dir)
    if not path.exists():
        raise SpecError(field, f"mask folder {path} does not exist",
                        f"fix the path (relative paths are resolved against the config folder {base_dir})")
    if not path.is_dir():
        raise SpecError(field, f"{path} is not a folder",
                        "point masks at a folder of per-frame PNGs, or give a box [x0, y0, x1, y1]")
    return path


def _boxes(value: list, field: str, frames: int) -> tuple[tuple[int, int, int, int], ...]:
    if not any(isinstance(item, list) for item in value):
        return (checked(values.box, value, field),)
    if len(value) != frames:
        raise SpecError(field, f"has {len(value)} per-frame boxes but video.frames is {frames}",
                        f"give exactly {frames} boxes, one per frame, or a single [x0, y0, x1, y1] for all frames")
    return tuple(checked(values.box, item, f"{field}[{i}]") for i, item in enumerate(value))


def _edit(value: Any) -> EditSettings:
    data = mapping(value, "edit", optional=True)
    check_keys(data, keys_of(EditSettings), "edit")
    settings = EditSettings(
        steps=unless_none(whole, data.get("steps"), "edit.steps", 1),
        guidance_scale=unless_none(guidance, data.get("guidance_scale"), "edit.guidance_scale"),
        guidance_scale_2=unless_none(guidance, data.get("guidance_scale_2"), "edit.guidance_scale_2"),
        seed=whole(data.get("seed", EditSettings.seed), "edit.seed", 0, MAX_SEED),
        blend=boolean(data.get("blend", EditSettings.blend), "edit.blend"),
        composite=boolean(data.get("composite", EditSettings.composite), "edit.composite"),
        record_attention=checked(values.record_attention, data.get("record_attention", EditSettings.record_attention),
                                  "edit.record_attention"),
        method=choice(data.get("method", EditSettings.method), "edit.method", METHODS),
        modulation=_modulation(data.get("modulation")),
        reatco=_reatco(data.get("reatco")),
        window=_window(data.get("window")),
        temporal_aids=_temporal_aids(data.get("temporal_aids")),
        solver=unless_none(choice, data.get("solver"), "edit.solver", tuple(SOLVERS)),
        inversion=unless_none(choice, data.get("inversion"), "edit.inversion", INVERSIONS),
        inversion_free=_inversion_free(data.get("inversion_free")),
    )
    return settings


def _inversion_free(value: Any) -> InversionFree:
    prefix = "edit.inversion_free"
    data = mapping(value, prefix, optional=True)
    check_keys(data, keys_of(InversionFree), prefix)
    return _settings(InversionFree, data)


def _temporal_aids(value: Any) -> TemporalAidSettings:
    prefix = "edit.temporal_aids"
    data = mapping(value, prefix, optional=True)
    check_keys(data, keys_of(TemporalAidSettings), prefix)
    flow = pnp = None
    if data.get("flow") is not None:
        section = mapping(data["flow"], f"{prefix}.flow", fix="write e.g. `flow: {levels: [0]}`")
        check_keys(section, keys_of(FlowAid), f"{prefix}.flow")
        flow = _settings(FlowAid, section)
    if data.get("pnp") is not None:
        section = mapping(data["pnp"], f"{prefix}.pnp", fix="write e.g. `pnp: {steps: 5}`")
        check_keys(section, keys_of(PnPAid), f"{prefix}.pnp")
        pnp = _settings(PnPAid, section)
    return TemporalAidSettings(flow=flow, pnp=pnp)


def _settings(cls, data: dict):
    """One of the method's settings dataclasses from its YAML section (keys already checked): the
    dataclass holds the value rules; its SettingError becomes a SpecError naming the config field."""
    try:
        return cls(**data)
    except SettingError as err:
        raise SpecError(config_field(err.name), err.problem, err.fix) from None


def _control(value: Any, base_dir: Path) -> ControlSpec | None:
    if value is None:
        return None
    data = mapping(value, "control", fix="write `control: {model: <ControlNet>, condition: canny}`")
    check_keys(data, keys_of(ControlSpec), "control")
    model = resolve_model(require(data, "model", "control", "add `model: <ControlNet hub id or folder>` under control"),
                   base_dir, "control.model")
    condition = text(require(data, "condition", "control",
                               f"add `condition:` ({', '.join(ANNOTATORS)}, or a folder/video of condition images)"),
                      "control.condition", nonempty=True)
    if condition not in ANNOTATORS:
        path = path_value(condition, "control.condition", base_dir)
        if not path.exists():
            raise SpecError("control.condition", f"{condition!r} is neither an annotator nor an existing path",
                            f"use one of {', '.join(ANNOTATORS)}, or a folder/video of condition images "
                            f"(relative paths are resolved against {base_dir})")
        condition = path
    return ControlSpec(model=model, condition=condition,
                       scale=number(data.get("scale", ControlSpec.scale), "control.scale"))


def _loras(value: Any, base_dir: Path) -> tuple[LoraSpec, ...]:
    """``lora: [{path: <file.safetensors>, scale: 0.8}, ...]`` (a single mapping is one LoRA)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise SpecError("lora", f"must be a list of {{path, scale}} mappings, got {values.describe(value)}",
                        "write e.g. `lora: [{path: style.safetensors, scale: 0.8}]`")
    loras = []
    for i, item in enumerate(items):
        field = f"lora[{i}]"
        data = mapping(item, field, fix="write `{path: <file.safetensors>, scale: 1.0}`")
        check_keys(data, keys_of(LoraSpec), field)
        path = path_value(require(data, "path", field, "add `path: <LoRA file.safetensors>`"), f"{field}.path", base_dir)
        if not path.is_file() or path.suffix != ".safetensors":
            raise SpecError(f"{field}.path", f"{path} is not a .safetensors file", "give a LoRA saved as .safetensors "
                            "(pickled .bin/.ckpt files are not loaded)")
        loras.append(LoraSpec(path, number(data.get("scale", LoraSpec.scale), f"{field}.scale")))
    return tuple(loras)


def _reatco(value: Any) -> ReAtCoSettings:
    prefix = "edit.reatco"
    data = mapping(value, prefix, optional=True)
    check_keys(data, keys_of(ReAtCoSettings), prefix)
    return _settings(ReAtCoSettings, data)


def _window(value: Any) -> Window | None:
    if value is None:
        return None
    prefix = "edit.window"
    data = mapping(value, prefix, fix="write `window: {size: 4, stride: 2}`, or leave it out to denoise all frames at once")
    check_keys(data, keys_of(Window), prefix)
    return _settings(Window, data)


def _modulation(value: Any) -> Modulation:
    prefix = "edit.modulation"
    data = mapping(value, prefix, optional=True)
    check_keys(data, keys_of(Modulation), prefix)
    return _settings(Modulation, data)


def resolve_model(value: Any, base_dir: Path, field: str = "model") -> str:
    """A model given as a local folder (made absolute against ``base_dir``) or a hub id "org/name";
    SpecError(``field``) for a path that does not exist."""
    name = text(value, field, nonempty=True)
    local = (base_dir / Path(name).expanduser()).resolve()
    if local.exists():
        return str(local)
    # Hub ids look like "org/name"; anything else that names a path must exist locally.
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        raise SpecError(field, f"local model folder {local} does not exist",
                        f"fix the path, or give a Hugging Face hub id such as {DEFAULT_MODEL}")
    return name
