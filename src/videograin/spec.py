"""The edit spec: a YAML config validated into dataclasses, with one-line errors naming field and fix.

Everything here is checked without reading the video or loading a model: types, ranges, required and
unknown keys, that referenced files and folders exist, and box geometry. Checks that need the video or
the model (frame counts of mask folders, prompt tokens, size multiples) belong to the modules that load them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TEMPORAL_MODES = ("full", "sparse_causal", "per_frame")
METHODS = ("videograin", "reatco", "videograin+reatco")

_TOP_KEYS = ("model", "video", "source_prompt", "prompt", "negative_prompt", "regions", "edit", "control", "output")
_CONTROL_KEYS = ("model", "condition", "scale")
ANNOTATORS = ("canny", "depth", "pose")
_VIDEO_KEYS = ("path", "frames", "start", "stride", "size")
_REGION_KEYS = ("name", "masks", "prompt", "word")
_EDIT_KEYS = (
    "steps", "guidance_scale", "seed", "blend", "composite", "record_attention", "method", "modulation", "reatco",
    "window", "temporal_aids",
)
_MODULATION_KEYS = ("steps", "self_strength", "cross_strength", "levels", "temporal")
_REATCO_KEYS = ("steps", "iterations", "step_size", "top_k", "level", "irjs")
_WINDOW_KEYS = ("size", "stride")
_AIDS_KEYS = ("flow", "pnp")
_FLOW_KEYS = ("levels", "steps")
_PNP_KEYS = ("steps",)
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class SpecError(ValueError):
    """A problem with the user's input: names the config field, what is wrong and how to fix it.

    ``str(err)`` is one line: ``"<field>: <problem>; fix: <fix>"``.
    """

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}; fix: {fix}")


@dataclass(frozen=True)
class VideoSpec:
    """Which frames to edit: ``frames`` frames from index ``start``, every ``stride``-th.

    ``size`` is (width, height) to resize to; None leaves the choice to the loader.
    """

    path: Path
    frames: int = 16
    start: int = 0
    stride: int = 1
    size: tuple[int, int] | None = None


@dataclass(frozen=True)
class RegionSpec:
    """One region and its prompt; located by a folder of per-frame mask PNGs or by boxes.

    ``boxes`` holds one (x0, y0, x1, y1) box in source-frame pixels for a static box, else one per frame.
    ``word`` is the word of interest ReAtCo's guidance steers into the region (None: the prompt's last word).
    """

    name: str
    prompt: str
    masks: Path | None = None
    boxes: tuple[tuple[int, int, int, int], ...] | None = None
    word: str | None = None

    def __post_init__(self) -> None:
        if (self.masks is None) == (self.boxes is None):
            raise ValueError(f"RegionSpec {self.name!r} needs exactly one of masks or boxes")

    @property
    def edited(self) -> bool:
        """Whether the region's content changes (an empty prompt keeps it as it is)."""
        return self.prompt.strip() != ""


@dataclass(frozen=True)
class ModulationSpec:
    """ST-Layout attention settings: active for the first ``steps`` steps at UNet ``levels`` (0 = highest res)."""

    steps: int = 15
    self_strength: float = 0.3
    cross_strength: float = 1.0
    levels: str | tuple[int, ...] = "all"
    temporal: str = "full"


@dataclass(frozen=True)
class ReAtCoSpec:
    """ReAtCo settings (papers/003): RAD guidance on the first ``steps`` denoising steps, ``iterations``
    gradient steps each, of size ``step_size`` times a factor falling linearly from 1 to 0.5; top-K
    share ``top_k`` of each mask's area; cross-attention maps of UNet ``level`` (None: the level at
    H/32, the paper's, or the coarsest the model has); ``irjs``: invariant-region joint sampling."""

    steps: int = 25
    iterations: int = 1
    step_size: float = 20.0
    top_k: float = 0.2
    level: int | None = None
    irjs: bool = True


@dataclass(frozen=True)
class WindowSpec:
    """Overlapping temporal windows of ``size`` frames, ``stride`` apart, denoised separately and
    averaged where they overlap (ReAtCo's resource-friendly mode)."""

    size: int = 4
    stride: int = 2


@dataclass(frozen=True)
class FlowSpec:
    """FLATTEN's flow-guided attention at UNet ``levels`` (0 = highest resolution): in every inversion
    step and the first ``steps`` editing steps (None: all)."""

    levels: tuple[int, ...] = (0,)
    steps: int | None = None


@dataclass(frozen=True)
class PnPSpec:
    """Plug-and-play injection: the inversion's self-attention queries and keys replace the edit's
    during its first ``steps`` steps."""

    steps: int = 5


@dataclass(frozen=True)
class TemporalAidsSpec:
    """Optional aids for temporal consistency used by the paper (§4.1); None: off."""

    flow: FlowSpec | None = None
    pnp: PnPSpec | None = None


@dataclass(frozen=True)
class EditSettings:
    """Sampling settings of the edit pass. ``method`` picks VideoGrain's ST-Layout attention
    (``modulation``), ReAtCo's guidance (``reatco``) or both; ``window`` None denoises all frames at once."""

    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    blend: bool = True
    composite: bool = True  # with blend/IRJS: unedited pixels are the source's after decoding
    record_attention: bool | str = False  # heat maps of the region prompts ("compare": also unmodulated)
    method: str = "videograin"
    modulation: ModulationSpec = ModulationSpec()
    reatco: ReAtCoSpec = ReAtCoSpec()
    window: WindowSpec | None = None
    temporal_aids: TemporalAidsSpec = TemporalAidsSpec()

    @property
    def uses_videograin(self) -> bool:
        return "videograin" in self.method.split("+")

    @property
    def uses_reatco(self) -> bool:
        return "reatco" in self.method.split("+")


@dataclass(frozen=True)
class ControlSpec:
    """ControlNet conditioning in inversion and editing: ``model`` a hub id or local ControlNet folder;
    ``condition`` an annotator name (canny, depth, pose) computed from the source frames, or a video
    file / folder of condition images (Path) aligned with the source; ``scale`` its strength."""

    model: str
    condition: str | Path
    scale: float = 1.0


@dataclass(frozen=True)
class EditSpec:
    """A validated edit: paths are absolute; ``model`` is a hub id or an absolute local folder."""

    prompt: str
    video: VideoSpec
    regions: tuple[RegionSpec, ...]
    model: str = DEFAULT_MODEL
    source_prompt: str = ""
    negative_prompt: str = ""
    edit: EditSettings = EditSettings()
    control: ControlSpec | None = None
    output: Path | None = None
    base_dir: Path = Path(".")

    def to_dict(self) -> dict:
        """The resolved config in the YAML's shape, JSON-serialisable, for run.json.

        Defaults are filled in and paths are absolute strings, so
        ``spec_from_dict(spec.to_dict(), spec.base_dir) == spec``.
        """
        data = _plain(dataclasses.asdict(self))
        del data["base_dir"]
        data["regions"] = [
            {"name": region.name, "masks": _plain(_masks_value(region)), "prompt": region.prompt}
            | ({} if region.word is None else {"word": region.word})
            for region in self.regions
        ]
        return data


def read_config(path: str | Path) -> tuple[Any, Path]:
    """Parse a YAML config file: (its data, its folder). Raises SpecError("config") when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("config", f"file {path} not found", "check the config path")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise SpecError("config", f"{path} is not UTF-8 text", "save the config as UTF-8 YAML") from err
    except yaml.YAMLError as err:
        raise SpecError("config", f"invalid YAML in {path}: {_yaml_problem(err)}",
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
        raise SpecError("config", f"top level must be a mapping of keys, got {_describe(data)}",
                        "write `key: value` lines such as `video: ...`, `source_prompt: ...`")
    _check_keys(data, _TOP_KEYS, "")
    video = _video(_require(data, "video", "", "add `video: {path: <video file or frame folder>}`"), base_dir)
    return EditSpec(
        prompt="",
        video=video,
        regions=(),
        model=_model(data.get("model", EditSpec.model), base_dir),
        source_prompt=_text(data.get("source_prompt", EditSpec.source_prompt), "source_prompt"),
        base_dir=base_dir,
    )


def spec_from_dict(data: dict, base_dir: Path) -> EditSpec:
    """Validate a parsed config into an EditSpec; relative paths are resolved against ``base_dir``."""
    base_dir = Path(base_dir).resolve()
    if not isinstance(data, dict):
        raise SpecError("config", f"top level must be a mapping of keys, got {_describe(data)}",
                        "write `key: value` lines such as `prompt: ...`, `video: ...`, `regions: ...`")
    _check_keys(data, _TOP_KEYS, "")
    prompt = _text(_require(data, "prompt", "", 'add `prompt: "<the edited video in words>"`'),
                   "prompt", nonempty=True)
    video = _video(_require(data, "video", "", "add `video: {path: <video file or frame folder>}`"), base_dir)
    regions = _regions(_require(data, "regions", "", "add a `regions:` list with one entry per region"),
                       video.frames, base_dir)
    output = data.get("output")
    return EditSpec(
        prompt=prompt,
        video=video,
        regions=regions,
        model=_model(data.get("model", EditSpec.model), base_dir),
        source_prompt=_text(data.get("source_prompt", EditSpec.source_prompt), "source_prompt"),
        negative_prompt=_text(data.get("negative_prompt", EditSpec.negative_prompt), "negative_prompt"),
        edit=_edit(data.get("edit")),
        control=_control(data.get("control"), base_dir),
        output=None if output is None else _path(output, "output", base_dir),
        base_dir=base_dir,
    )


# --- sections ---------------------------------------------------------------------------------------


def _video(value: Any, base_dir: Path) -> VideoSpec:
    data = _mapping(value, "video")
    _check_keys(data, _VIDEO_KEYS, "video")
    path = _path(_require(data, "path", "video", "add `path: <video file or folder of frames>` under video"),
                 "video.path", base_dir)
    if not path.exists():
        raise SpecError("video.path", f"{path} does not exist",
                        f"fix the path (relative paths are resolved against the config folder {base_dir})")
    size = data.get("size")
    return VideoSpec(
        path=path,
        frames=_int(data.get("frames", VideoSpec.frames), "video.frames", 1),
        start=_int(data.get("start", VideoSpec.start), "video.start", 0),
        stride=_int(data.get("stride", VideoSpec.stride), "video.stride", 1),
        size=None if size is None else _size(size),
    )


def _size(value: Any) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)):
        raise SpecError("video.size", f"must be [width, height] as two positive integers, got {_describe(value)}",
                        "write e.g. `size: [512, 512]`, or leave it out to decide from the video")
    return (value[0], value[1])


def _regions(value: Any, frames: int, base_dir: Path) -> tuple[RegionSpec, ...]:
    if not isinstance(value, list):
        raise SpecError("regions", f"must be a list of regions, got {_describe(value)}",
                        "write one `- {name: ..., masks: ..., prompt: ...}` entry per region")
    if not value:
        raise SpecError("regions", "is empty",
                        "add at least one `- {name: ..., masks: ..., prompt: ...}` entry")
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
    data = _mapping(value, prefix, fix="write each region as `- {name: ..., masks: ..., prompt: ...}`")
    _check_keys(data, _REGION_KEYS, prefix)
    name = _text(_require(data, "name", prefix, "add `name: <folder-safe name>`, e.g. `name: left_man`"),
                 f"{prefix}.name", nonempty=True)
    if not _FOLDER_NAME.fullmatch(name) or name in (".", ".."):
        raise SpecError(f"{prefix}.name", f"{name!r} cannot be used as a folder name",
                        "use only letters, digits, '_', '-' and '.', e.g. `left_man`")
    masks = _require(data, "masks", prefix,
                     "add `masks: <folder of per-frame PNGs>` or a box `masks: [x0, y0, x1, y1]`")
    prompt = _text(_require(data, "prompt", prefix,
                            'add `prompt: <its words in the global prompt>` (`prompt: ""` keeps it unedited)'),
                   f"{prefix}.prompt")
    word = data.get("word")
    if word is not None:
        word = _text(word, f"{prefix}.word", nonempty=True).strip()
        if word not in prompt.split():
            raise SpecError(f"{prefix}.word", f"{word!r} is not a word of the region prompt {prompt!r}",
                            "name one word of the region's prompt (its head noun), or leave `word` out")
    field = f"{prefix}.masks"
    if isinstance(masks, str):
        return RegionSpec(name=name, prompt=prompt, masks=_mask_folder(masks, field, base_dir), word=word)
    if isinstance(masks, list):
        return RegionSpec(name=name, prompt=prompt, boxes=_boxes(masks, field, frames), word=word)
    raise SpecError(field, f"must be a folder path or a box, got {_describe(masks)}",
                    "give a folder of per-frame PNGs, a box [x0, y0, x1, y1], or one such box per frame")


def _mask_folder(value: str, field: str, base_dir: Path) -> Path:
    path = _path(value, field, base_dir)
    if not path.exists():
        raise SpecError(field, f"mask folder {path} does not exist",
                        f"fix the path (relative paths are resolved against the config folder {base_dir})")
    if not path.is_dir():
        raise SpecError(field, f"{path} is not a folder",
                        "point masks at a folder of per-frame PNGs, or give a box [x0, y0, x1, y1]")
    return path


def _boxes(value: list, field: str, frames: int) -> tuple[tuple[int, int, int, int], ...]:
    if not any(isinstance(item, list) for item in value):
        return (_box(value, field),)
    if len(value) != frames:
        raise SpecError(field, f"has {len(value)} per-frame boxes but video.frames is {frames}",
                        f"give exactly {frames} boxes, one per frame, or a single [x0, y0, x1, y1] for all frames")
    return tuple(_box(item, f"{field}[{i}]") for i, item in enumerate(value))


def _box(value: Any, field: str) -> tuple[int, int, int, int]:
    if not (isinstance(value, list) and len(value) == 4 and all(_is_int(v) for v in value)):
        raise SpecError(field, f"must be a box of 4 integers [x0, y0, x1, y1], got {_describe(value)}",
                        "write the box as [x0, y0, x1, y1] in whole source-frame pixels")
    x0, y0, x1, y1 = value
    if min(value) < 0:
        raise SpecError(field, f"box {value} has a negative coordinate",
                        "use pixel coordinates >= 0 (clip the box to the frame)")
    if not (x0 < x1 and y0 < y1):
        raise SpecError(field, f"box {value} is empty or flipped: needs x0 < x1 and y0 < y1",
                        "order the corners as [left, top, right, bottom]")
    return (x0, y0, x1, y1)


def _edit(value: Any) -> EditSettings:
    data = _mapping(value, "edit", optional=True)
    _check_keys(data, _EDIT_KEYS, "edit")
    return EditSettings(
        steps=_int(data.get("steps", EditSettings.steps), "edit.steps", 1),
        guidance_scale=_number(data.get("guidance_scale", EditSettings.guidance_scale), "edit.guidance_scale"),
        seed=_int(data.get("seed", EditSettings.seed), "edit.seed", 0),
        blend=_bool(data.get("blend", EditSettings.blend), "edit.blend"),
        composite=_bool(data.get("composite", EditSettings.composite), "edit.composite"),
        record_attention=_record_attention(data.get("record_attention", EditSettings.record_attention)),
        method=_choice(data.get("method", EditSettings.method), "edit.method", METHODS),
        modulation=_modulation(data.get("modulation")),
        reatco=_reatco(data.get("reatco")),
        window=_window(data.get("window")),
        temporal_aids=_temporal_aids(data.get("temporal_aids")),
    )


def _temporal_aids(value: Any) -> TemporalAidsSpec:
    prefix = "edit.temporal_aids"
    data = _mapping(value, prefix, optional=True)
    _check_keys(data, _AIDS_KEYS, prefix)
    flow = pnp = None
    if data.get("flow") is not None:
        section = _mapping(data["flow"], f"{prefix}.flow", fix="write e.g. `flow: {levels: [0]}`")
        _check_keys(section, _FLOW_KEYS, f"{prefix}.flow")
        steps = section.get("steps")
        flow = FlowSpec(
            levels=_levels(section.get("levels", list(FlowSpec.levels)), f"{prefix}.flow.levels", allow_all=False),
            steps=None if steps is None else _int(steps, f"{prefix}.flow.steps", 0),
        )
    if data.get("pnp") is not None:
        section = _mapping(data["pnp"], f"{prefix}.pnp", fix="write e.g. `pnp: {steps: 5}`")
        _check_keys(section, _PNP_KEYS, f"{prefix}.pnp")
        pnp = PnPSpec(steps=_int(section.get("steps", PnPSpec.steps), f"{prefix}.pnp.steps", 0))
    return TemporalAidsSpec(flow=flow, pnp=pnp)


def _control(value: Any, base_dir: Path) -> ControlSpec | None:
    if value is None:
        return None
    data = _mapping(value, "control", fix="write `control: {model: <ControlNet>, condition: canny}`")
    _check_keys(data, _CONTROL_KEYS, "control")
    model = _model(_require(data, "model", "control", "add `model: <ControlNet hub id or folder>` under control"),
                   base_dir, "control.model")
    condition = _text(_require(data, "condition", "control",
                               f"add `condition:` ({', '.join(ANNOTATORS)}, or a folder/video of condition images)"),
                      "control.condition", nonempty=True)
    if condition not in ANNOTATORS:
        path = _path(condition, "control.condition", base_dir)
        if not path.exists():
            raise SpecError("control.condition", f"{condition!r} is neither an annotator nor an existing path",
                            f"use one of {', '.join(ANNOTATORS)}, or a folder/video of condition images "
                            f"(relative paths are resolved against {base_dir})")
        condition = path
    return ControlSpec(model=model, condition=condition,
                       scale=_number(data.get("scale", ControlSpec.scale), "control.scale"))


def _record_attention(value: Any) -> bool | str:
    if value == "compare":
        return value
    if not isinstance(value, bool):
        raise SpecError("edit.record_attention", f"must be true, false or compare, got {_describe(value)}",
                        "write `record_attention: true`, or `compare` to also see the maps without modulation")
    return value


def _reatco(value: Any) -> ReAtCoSpec:
    prefix = "edit.reatco"
    data = _mapping(value, prefix, optional=True)
    _check_keys(data, _REATCO_KEYS, prefix)
    top_k = _number(data.get("top_k", ReAtCoSpec.top_k), f"{prefix}.top_k")
    if not 0 < top_k <= 1:
        raise SpecError(f"{prefix}.top_k", f"must be a share in (0, 1], got {top_k}",
                        "write e.g. `top_k: 0.2` (20% of each mask's area, the paper's value)")
    level = data.get("level", ReAtCoSpec.level)
    return ReAtCoSpec(
        steps=_int(data.get("steps", ReAtCoSpec.steps), f"{prefix}.steps", 0),
        iterations=_int(data.get("iterations", ReAtCoSpec.iterations), f"{prefix}.iterations", 1),
        step_size=_number(data.get("step_size", ReAtCoSpec.step_size), f"{prefix}.step_size"),
        top_k=top_k,
        level=None if level is None else _int(level, f"{prefix}.level", 0),
        irjs=_bool(data.get("irjs", ReAtCoSpec.irjs), f"{prefix}.irjs"),
    )


def _window(value: Any) -> WindowSpec | None:
    if value is None:
        return None
    prefix = "edit.window"
    data = _mapping(value, prefix, fix="write `window: {size: 4, stride: 2}`, or leave it out to denoise all frames at once")
    _check_keys(data, _WINDOW_KEYS, prefix)
    size = _int(data.get("size", WindowSpec.size), f"{prefix}.size", 1)
    stride = _int(data.get("stride", WindowSpec.stride), f"{prefix}.stride", 1)
    if stride > size:
        raise SpecError(f"{prefix}.stride", f"{stride} is larger than the window size {size}, so frames would be skipped",
                        f"use a stride <= {size} (e.g. half the size, so windows overlap)")
    return WindowSpec(size=size, stride=stride)


def _modulation(value: Any) -> ModulationSpec:
    prefix = "edit.modulation"
    data = _mapping(value, prefix, optional=True)
    _check_keys(data, _MODULATION_KEYS, prefix)
    return ModulationSpec(
        steps=_int(data.get("steps", ModulationSpec.steps), f"{prefix}.steps", 0),
        self_strength=_number(data.get("self_strength", ModulationSpec.self_strength), f"{prefix}.self_strength"),
        cross_strength=_number(data.get("cross_strength", ModulationSpec.cross_strength),
                               f"{prefix}.cross_strength"),
        levels=_levels(data.get("levels", ModulationSpec.levels), f"{prefix}.levels"),
        temporal=_temporal(data.get("temporal", ModulationSpec.temporal), f"{prefix}.temporal"),
    )


def _levels(value: Any, field: str, allow_all: bool = True) -> str | tuple[int, ...]:
    if value == "all" and allow_all:
        return "all"
    if not isinstance(value, list) or not value:
        lead, fix = ("'all' or ", "`levels: all`, or ") if allow_all else ("", "")
        raise SpecError(field, f"must be {lead}a non-empty list of UNet level indices, got {_describe(value)}",
                        f"write {fix}e.g. `levels: [0, 1, 2]` (0 = highest resolution)")
    levels = tuple(_int(v, f"{field}[{i}]", 0) for i, v in enumerate(value))
    repeated = sorted({level for level in levels if levels.count(level) > 1})
    if repeated:
        raise SpecError(field, f"repeats level(s) {repeated}", "list each level once")
    return levels


def _temporal(value: Any, field: str) -> str:
    return _choice(value, field, TEMPORAL_MODES)


def _choice(value: Any, field: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise SpecError(field, f"unknown value {value!r}", _suggest(str(value), options, "choose one of"))
    return value


def _model(value: Any, base_dir: Path, field: str = "model") -> str:
    name = _text(value, field, nonempty=True)
    local = (base_dir / Path(name).expanduser()).resolve()
    if local.exists():
        return str(local)
    # Hub ids look like "org/name"; anything else that names a path must exist locally.
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        raise SpecError(field, f"local model folder {local} does not exist",
                        f"fix the path, or give a Hugging Face hub id such as {DEFAULT_MODEL}")
    return name


# --- value checks -----------------------------------------------------------------------------------


def _check_keys(data: dict, valid: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in valid:
            raise SpecError(_join(prefix, str(key)), f"unknown key {str(key)!r}",
                            _suggest(str(key), valid, "remove it or use one of the valid keys:"))


def _suggest(word: str, options: tuple[str, ...], lead: str) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    listing = ", ".join(options)
    return f"did you mean {close[0]!r}? valid: {listing}" if close else f"{lead} {listing}"


def _require(data: dict, key: str, prefix: str, fix: str) -> Any:
    if key not in data:
        raise SpecError(_join(prefix, key), "is missing (required)", fix)
    return data[key]


def _mapping(value: Any, field: str, optional: bool = False, fix: str = "") -> dict:
    """A config section; for an ``optional`` one, null (``edit:`` with nothing under it) means defaults."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise SpecError(field, f"must be a mapping of keys, got {_describe(value)}",
                        fix or f"write `key: value` lines indented under `{field.rsplit('.', 1)[-1]}:`")
    return value


def _int(value: Any, field: str, minimum: int) -> int:
    if not _is_int(value):
        example = f", e.g. {int(value)}" if isinstance(value, float) and value.is_integer() else ""
        raise SpecError(field, f"must be an integer, got {_describe(value)}",
                        f"write a whole number >= {minimum}{example}")
    if value < minimum:
        raise SpecError(field, f"must be >= {minimum}, got {value}", f"use a value >= {minimum}")
    return value


def _number(value: Any, field: str) -> float:
    """A finite float >= 0 (ints accepted, booleans not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(field, f"must be a finite number, got {_describe(value)}", "write a number such as 1.0")
    if value < 0:
        raise SpecError(field, f"must be >= 0, got {value}", "use a value >= 0")
    return float(value)


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(field, f"must be true or false, got {_describe(value)}", "write true or false (unquoted)")
    return value


def _text(value: Any, field: str, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        fix = 'write "" for an empty value' if value is None else "write it as text, in quotes if in doubt"
        raise SpecError(field, f"must be text, got {_describe(value)}", fix)
    if nonempty and not value.strip():
        raise SpecError(field, "is empty", "write a non-empty value")
    return value


def _path(value: Any, field: str, base_dir: Path) -> Path:
    text = _text(value, field, nonempty=True)
    return (base_dir / Path(text).expanduser()).resolve()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


# --- YAML and serialisation -------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (plain PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # super() reports unhashable keys
            if key in seen:
                raise SpecError("config", f"duplicate key {key!r} at line {key_node.start_mark.line + 1}",
                                "keep only one of them")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def _masks_value(region: RegionSpec) -> Path | tuple:
    """A region's ``masks`` as written in YAML: the folder, one static box, or one box per frame."""
    if region.masks is not None:
        return region.masks
    return region.boxes[0] if len(region.boxes) == 1 else region.boxes


def _plain(value: Any) -> Any:
    """Paths to strings and tuples to lists, recursively."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    return value
