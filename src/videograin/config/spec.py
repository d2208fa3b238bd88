"""The edit spec: the dataclasses a YAML config is validated into (config/parse.py builds them).

Paths are absolute; the method's own settings (modulation, ReAtCo, windows, temporal aids) are the
plain dataclasses of ``videograin.method.settings``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import SpecError
from ..method.settings import InversionFree, Modulation, ReAtCoSettings, TemporalAidSettings, Window
from ..values import is_edited

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: What a name that becomes a file or folder name inside an output may hold (region names, batch job names).
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: The config field of each pipeline argument a rule can name (a setting's own keys follow its section's).
CONFIG_FIELDS = {"video": "video.frames", "num_inference_steps": "edit.steps", "guidance_scale": "edit.guidance_scale",
                 "guidance_scale_2": "edit.guidance_scale_2", "modulation": "edit.modulation", "reatco": "edit.reatco",
                 "window": "edit.window", "temporal_aids": "edit.temporal_aids",
                 "record_attention": "edit.record_attention", "control_images": "control", "solver": "edit.solver",
                 "inversion": "edit.inversion", "inversion_free": "edit.inversion_free"}
METHODS = ("videograin", "reatco", "videograin+reatco")
ANNOTATORS = ("canny", "depth", "pose")
MASK_ENGINES = ("auto", "flow", "sam2")  # how regions given by a box or clicks get their masks


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
class MaskPrompt:
    """A region to segment and track through the clip (``videograin.masks``): a box (x0, y0, x1, y1)
    and/or positive and negative clicks (x, y), in source-frame pixels, on ``frame`` of the selected
    clip; or, from Python, a ready ``mask`` (H, W) bool of that frame to propagate (never in a config)."""

    box: tuple[int, int, int, int] | None = None
    points: tuple[tuple[int, int], ...] = ()
    negative: tuple[tuple[int, int], ...] = ()
    frame: int = 0
    mask: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

    def check(self, num_frames: int, width: int, height: int, field_name: str) -> None:
        """SpecError naming ``field_name`` for prompts outside the frame or the clip, or no prompt."""
        if self.box is None and not self.points and self.mask is None:
            raise SpecError(field_name, "has neither a box, positive points nor a mask",
                            "give a box [x0, y0, x1, y1] or at least one positive point [x, y]")
        if not 0 <= self.frame < num_frames:
            raise SpecError(f"{field_name}.frame", f"{self.frame} is outside the clip's frames 0..{num_frames - 1}",
                            "give a frame index of the selected clip")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise SpecError(f"{field_name}.box", f"{list(self.box)} is not inside the {width}x{height} frame "
                                "with x0 < x1, y0 < y1", f"give pixels within 0..{width} x 0..{height}")
        for kind, points in (("points", self.points), ("negative", self.negative)):
            for x, y in points:
                if not (0 <= x < width and 0 <= y < height):
                    raise SpecError(f"{field_name}.{kind}", f"[{x}, {y}] is outside the {width}x{height} frame",
                                    f"give points within 0..{width - 1} x 0..{height - 1}")

    def to_dict(self) -> dict:
        """The prompt as recorded in masks.json / run.json (a ready mask as ``mask: true``)."""
        return {"box": list(self.box) if self.box else None, "points": [list(p) for p in self.points],
                "negative": [list(p) for p in self.negative], "frame": self.frame, "mask": self.mask is not None}


@dataclass(frozen=True)
class RegionSpec:
    """One region and its prompt; located by a folder of per-frame mask PNGs, by boxes, or by a
    ``MaskPrompt`` (masks made from a box or clicks).

    ``boxes`` holds one (x0, y0, x1, y1) box in source-frame pixels for a static box, else one per frame.
    ``word`` is the word of interest ReAtCo's guidance steers into the region (None: the prompt's last word).
    """

    name: str
    prompt: str
    masks: Path | None = None
    boxes: tuple[tuple[int, int, int, int], ...] | None = None
    word: str | None = None
    prompts: MaskPrompt | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.masks, self.boxes, self.prompts)) != 1:
            raise ValueError(f"RegionSpec {self.name!r} needs exactly one of masks, boxes or prompts")
        if self.prompts is not None and self.prompts.mask is not None:
            raise ValueError(f"RegionSpec {self.name!r}: a config's region is given by a box or clicks; a ready mask "
                             "goes to videograin.masks.make_masks, or as a mask folder in `masks:`")

    @property
    def edited(self) -> bool:
        """Whether the region's content changes (an empty prompt keeps it as it is)."""
        return is_edited(self.prompt)


@dataclass(frozen=True)
class EditSettings:
    """Sampling settings of the edit pass. ``method`` picks VideoGrain's ST-Layout attention
    (``modulation``), ReAtCo's guidance (``reatco``) or both; ``window`` None denoises all frames at once.
    ``steps``, ``guidance_scale`` and the modulation's steps and strengths None: the model's recommended
    values (``backbones.recommended``), filled in by ``config.preflight.preflight``."""

    steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None  # a two-expert model's second expert (None: guidance_scale)
    seed: int = 0
    blend: bool = True
    composite: bool = True  # with blend/IRJS: unedited pixels are the source's after decoding
    record_attention: bool | str = False  # heat maps of the region prompts ("compare": also unmodulated)
    method: str = "videograin"
    modulation: Modulation = Modulation()
    reatco: ReAtCoSettings = ReAtCoSettings()
    window: Window | None = None
    temporal_aids: TemporalAidSettings = TemporalAidSettings()
    solver: str | None = None  # the samplers' step rule (None: the model's recommended)
    inversion: str | None = None  # "ode" or "none" (inversion-free, flow models; None: recommended)
    inversion_free: InversionFree = InversionFree()

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
class LoraSpec:
    """A LoRA (diffusers or kohya format, .safetensors) applied to the model at ``scale`` before the edit."""

    path: Path
    scale: float = 1.0


@dataclass(frozen=True)
class EditSpec:
    """A validated edit: paths are absolute; ``model`` is a hub id, an absolute local folder or a
    single-file checkpoint (.safetensors) whose config files come from ``model_config``."""

    prompt: str
    video: VideoSpec
    regions: tuple[RegionSpec, ...]
    model: str = DEFAULT_MODEL
    model_config: str | None = None  # a single-file checkpoint's config files: a folder or hub id (None: SD 1.5's)
    source_prompt: str = ""
    negative_prompt: str = ""
    edit: EditSettings = EditSettings()
    control: ControlSpec | None = None
    lora: tuple[LoraSpec, ...] = ()
    output: Path | None = None
    masks_engine: str = "auto"  # for regions given by a MaskPrompt: auto / flow / sam2 (videograin.masks)
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

    def to_yaml(self, output: bool = True) -> str:
        """``to_dict`` as a config file's text (``output: False`` leaves the output folder out, so the
        file runs anywhere with ``--out``); ``spec_from_dict(yaml.safe_load(text), base_dir)`` reads it
        back as this spec."""
        data = self.to_dict()
        if not output:
            del data["output"]
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _masks_value(region: RegionSpec) -> Path | tuple | dict:
    """A region's ``masks`` as written in YAML: the folder, one static box, one box per frame, or the
    mapping of a MaskPrompt."""
    if region.masks is not None:
        return region.masks
    if region.prompts is not None:
        return {key: value for key, value in dataclasses.asdict(region.prompts).items() if key != "mask"}
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


def config_field(name: str) -> str:
    """The config field of a SettingError's ``name`` (a pipeline argument, "modulation.levels[1]" ->
    "edit.modulation.levels[1]"): the one map between the two entrances' names."""
    head, dot, rest = name.partition(".")
    return CONFIG_FIELDS.get(head, head) + dot + rest


def plain_name(name: object, field: str) -> str:
    """``name`` when it can become one file or folder name inside an output folder: letters, digits,
    '_', '-' and '.', not "." or ".." (so never a path, never the folder itself); SpecError(field) else.
    The one rule for every name joined onto an output (region names, batch job names, masks regions)."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise SpecError(field, f"{name!r} cannot be used as a file or folder name",
                        "use only letters, digits, '_', '-' and '.', e.g. `left_man`")
    return name
