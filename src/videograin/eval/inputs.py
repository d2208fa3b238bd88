"""What `videograin eval` compares, read from disk: any edited video against its source.

The edited video is an output folder of `videograin edit` (its lossless frames/ and run.json, whose
config reads the source as the edit did; edited.mp4 and source.mp4 without them), a video file (mp4, webm, gif, mov, ...) or a folder of frames: this project's edit, the official
VideoGrain code's, another method's. The source, the prompt and the regions come from the flags, else
from the edit's config (``--config`` or the folder's run.json).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import mask_files, media
from ..inputs import load_inputs
from ..config.parse import load_spec, spec_from_dict
from ..config.spec import EditSpec
from ..errors import SpecError, first_line

logger = logging.getLogger("videograin")


@dataclass
class EvalInputs:
    """edited, source: uint8 (F, H, W, 3) at one size; masks bool (R, F, H, W) or None; the prompt and
    per-region prompts and names (None when not given); where the metrics go; notes said to the user."""

    edited: np.ndarray
    source: np.ndarray
    masks: np.ndarray | None
    prompt: str | None
    region_prompts: list[str] | None
    region_names: list[str] | None
    edited_path: Path
    source_path: Path
    default_out: Path
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RegionArg:
    """One ``--regions NAME=MASK_DIR:PROMPT``."""

    name: str
    masks: Path
    prompt: str

    @classmethod
    def parse(cls, text: str) -> RegionArg:
        name, eq, rest = text.partition("=")
        folder, colon, prompt = rest.partition(":")
        if not (eq and colon and name.strip() and folder.strip()):
            raise SpecError("--regions", f"{text!r} is not NAME=MASK_DIR:PROMPT",
                            'write e.g. --regions left=masks/left:"red square" (an empty PROMPT: kept)')
        return cls(name.strip(), Path(folder.strip()), prompt.strip())


def read_frames(path: Path, field_name: str, frames: int | None = None, spec: EditSpec | None = None) -> np.ndarray:
    """All frames of a video file or frames folder, or, when their count is not ``frames``, the
    config's start/stride selection of ``frames``. Read errors name ``field_name``."""
    try:
        total = media.count_frames(path)
        if frames is None or total == frames or spec is None:
            return media.read_video(path, 0, total, 1)[0]
        return media.read_video(path, spec.video.start, frames, spec.video.stride)[0]
    except SpecError as err:
        raise SpecError(field_name, err.problem, err.fix) from None


def _run_config(path: Path) -> dict:
    """The resolved config an edit recorded in its run.json; SpecError("--edited") if it cannot be read."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SpecError("--edited", f"{path} holds no readable edit config ({type(err).__name__}: {first_line(err)})",
                        "pass --config CONFIG (the edit's config)") from None
    if not isinstance(config, dict):
        raise SpecError("--edited", f"{path} holds no edit config", "pass --config CONFIG (the edit's config)")
    return config


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    logger.warning("note: %s", text)


def load(edited: str | Path, source: str | Path | None = None, config: str | Path | None = None,
         prompt: str | None = None, regions: list[str] | None = None, resize: bool = False) -> EvalInputs:
    """Read an edited video and its source for evaluation (see the module docstring).

    With a config (given, or the output folder's run.json) the frames are the config's selection and
    the source and masks are resized to the edit's size, as the edit was made. Without one, frame counts
    must match, and sizes too unless ``resize`` (the edited video is then resized to the source's).
    ``prompt`` and ``regions`` (``NAME=MASK_DIR:PROMPT``) replace the config's.
    """
    given = Path(edited)
    if not given.exists():
        raise SpecError("--edited", f"{given} does not exist", "give an output folder of `videograin edit`, a video "
                        "or a folder of frames")
    spec, source_path = (load_spec(config) if config else None), Path(source) if source else None
    if given.is_dir() and (given / "edited.mp4").is_file():  # an output folder of `videograin edit`
        # its lossless frames/, and the source as the edit read it (the config's), as `edit --eval` does:
        # the mp4s are lossy copies for viewing
        edited_path = given / "frames" if (given / "frames").is_dir() else given / "edited.mp4"
        default_out = given / "metrics.json"
        if spec is None and (given / "run.json").is_file():
            spec = spec_from_dict(_run_config(given / "run.json"), given)
        if spec is None:
            source_path = source_path or given / "source.mp4"
    else:
        # named after what was evaluated: two videos of one folder never share (and replace) a metrics file
        edited_path, default_out = given, given.parent / f"{given.stem if given.is_file() else given.name}.metrics.json"
    if spec is None and source_path is None:
        raise SpecError("--source", f"is needed to evaluate {given} (no edit config to find it in)",
                        "pass --source SOURCE (a video or a folder of frames), or --config CONFIG")
    frames = read_frames(edited_path, "--edited")
    count, height, width = frames.shape[:3]
    notes: list[str] = []
    masks = None
    if spec is not None:
        if count != spec.video.frames:
            raise SpecError("--edited", f"{edited_path} has {count} frames but the config selects {spec.video.frames}",
                            "give the config the edit was made with")
        from ..inputs import PromptedMasks  # regions given by a box or clicks: the edit's masks/ (or made again)

        # masks (and the source when --source is not given) at the config's size
        inputs = load_inputs(spec, 1, PromptedMasks(spec, "cpu", progress=False))
        source_frames = inputs.frames_uint8 if source_path is None else read_frames(source_path, "--source", count, spec)
        masks = inputs.masks.numpy()
    else:
        source_frames = read_frames(source_path, "--source")
    if len(source_frames) != count:
        raise SpecError("--source", f"{source_path} gives {len(source_frames)} frames, the edit has {count}",
                        "give the source clip the edit was made from (the same frames)")
    source_size = (source_frames.shape[2], source_frames.shape[1])
    if source_size != (width, height):
        if spec is not None:
            _note(notes, f"the source ({source_size[0]}x{source_size[1]}) and the masks were resized to the edit's "
                         f"{width}x{height}")
            source_frames = media.resize_frames(source_frames, (width, height))
        elif resize:
            _note(notes, f"the edited video ({width}x{height}) was resized to the source's "
                         f"{source_size[0]}x{source_size[1]}")
            frames = media.resize_frames(frames, source_size)
            width, height = source_size
        else:
            raise SpecError("--edited", f"{edited_path} is {width}x{height} but the source is "
                            f"{source_size[0]}x{source_size[1]}", "pass --resize to compare at the source's size")
    names = region_prompts = None
    if spec is not None:
        names, region_prompts = [r.name for r in spec.regions], [r.prompt for r in spec.regions]
    if regions:
        parsed = [RegionArg.parse(text) for text in regions]
        repeated = sorted({r.name for r in parsed if [q.name for q in parsed].count(r.name) > 1})
        if repeated:
            raise SpecError("--regions", f"region name(s) {repeated} given more than once", "give each region once")
        masks = np.stack([mask_files.read_mask_folder(r.masks, 0, count, 1, count, "--regions") for r in parsed])
        names, region_prompts = [r.name for r in parsed], [r.prompt for r in parsed]
    if masks is not None and masks.shape[-2:] != (height, width):
        masks = mask_files.resize_masks(masks, (width, height))
    return EvalInputs(frames, source_frames, masks, prompt if prompt is not None else (spec.prompt if spec else None),
                      region_prompts, names, edited_path, source_path or spec.video.path, default_out, notes)
