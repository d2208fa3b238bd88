"""Convert an official VideoGrain config (github.com/knightyxp/VideoGrain) into this project's spec YAML.

The official code is run from its repository root as ``python test.py --config X.yaml``; every path in
its config (``dataset_config.path``, ``layout_mask_dir``, ``pretrained_model_path``, ``logdir``) is
relative to that folder, here ``root``. What its ``ImageSequenceDataset`` does, and how it maps:

- frames: the image files of ``dataset_config.path`` in sorted order; frame indices
  ``start_sample_frame + i * sampling_rate`` for ``i < n_sample_frame``  ->  ``video.path/start/stride/frames``;
- masks: ``<layout_mask_dir>/<name>/{index:05d}.png`` for every name of ``layout_mask_order`` and every
  selected frame index  ->  ``regions[k].masks = <layout_mask_dir>/<name>`` in the same order;
- frames are scaled (short side) to ``image_size`` (default 512) and centre-cropped to a square
  ->  ``video.size = [image_size, image_size]`` (videograin resizes without cropping);
- ``editing_config.editing_prompts = [[global, local_1, ..., local_R], ...]``: one edit per entry; local
  prompt k belongs to layout k, ``''`` (or no local prompt for the last layouts) leaves the region
  unedited  ->  ``prompt`` and ``regions[k].prompt``.

The temporal aids and ControlNet (``test.py``, ``video_diffusion/...``) map as follows:

- ``editing_config.flatten_res: [f, ...]``: FLATTEN's flow-guided attention runs in every self-attention
  whose per-frame token grid is ``(H/8 // f, W/8 // f)`` (test.py builds that list; attention.py tests
  ``[h, w] in flatten_res``), in every inversion and editing step  ->  ``edit.temporal_aids.flow.levels``
  with level ``log2 f`` (1 -> 0 = 64x64 tokens for 512² frames, 2 -> 1, 4 -> 2, 8 -> 3 = the 8x8 mid block);
  ``old_qk: 1`` (the flow attention takes the frame attention's projected q/k, the output only as value)
  is not applied: videograin uses the attention output as q, k and v, the official ``old_qk: 0``;
- ``use_pnp: true, inject_step: N``: the pipeline injects the inversion's decoder self-attention q/k
  while ``i < inject_step`` (i counts the editing steps from 0), i.e. the first N steps  ->
  ``edit.temporal_aids.pnp.steps: N`` (videograin injects the same residual-block features,
  up_blocks[1].resnets[0,1] and up_blocks[2].resnets[0], but the q/k of every decoder self-attention,
  not the official six layers);
- ``control_config``: the official run always conditions inversion and editing on a ControlNet
  (``pretrained_controlnet_path``, ``controlnet_conditioning_scale``) fed with annotator maps of the
  frames (``control_type``)  ->  ``control: {model, condition, scale}``; canny -> canny, depth/depth_zoe
  -> depth, openpose/dwpose -> pose. The official code reads no condition folder; the condition images a
  previous official run wrote to ``<logdir>/control/`` are used instead of an annotator when videograin's
  reader picks exactly those.

Options that change the official result but are not implemented here (old_qk: 1, PnP's choice of
q/k layers, FreeU, ...) are listed as comments at the top of the written file and logged as warnings;
nothing is dropped silently. The written file is read back with :func:`videograin.config.parse.load_spec` before
it is kept.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from .parse import UniqueKeyLoader, load_spec
from .spec import DEFAULT_MODEL, EditSpec

logger = logging.getLogger(__name__)

# video_diffusion/common/image_util.py: the files the official dataset lists as frames (str.endswith).
OFFICIAL_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".JPEG")
OFFICIAL_IMAGE_SIZE = 512  # ImageSequenceDataset(image_size=512)
OFFICIAL_GUIDANCE = 7.0  # SampleLogger(guidance_scale=7)

# Keys with no effect on the official result (or replaced by videograin's own mechanism): noted, not warned.
_INERT_KEYS = {
    "clip_length": "always the number of sampled frames",
    "test_pipeline_config": "selects the official pipeline class",
    "modulated_percentage": "not read by the official pipeline, which modulates the first 15 steps",
    "use_invertion_latents": "videograin always starts from the DDIM inversion",
    "use_inversion_attention": "not read by the official code",
    "image_mode": "frames are read as RGB",
    "mixed_precision": "precision is the pipeline's choice here",
    "batch_size": "one video per run",
    "gradient_accumulation_steps": "no training",
    "pretrained_epoch_list": "no training checkpoints",
    "num_samples_per_prompt": "replaced by sample_seeds",
    "annotate": "display only",
    "annotate_size": "display only",
    "make_grid": "display only",
    "grid_column_size": "display only",
}
_TOP_KEYS = ("pretrained_model_path", "logdir", "dataset_config", "control_config", "editing_config",
             "seed", "model_config", "cluster_inversion_feature")
_DATASET_KEYS = ("path", "prompt", "n_sample_frame", "start_sample_frame", "sampling_rate", "layout_mask_dir",
                 "layout_mask_order", "negative_promot", "negative_prompt", "image_size", "crop", "offset",
                 "stride", "class_data_root")
_EDITING_KEYS = ("editing_prompts", "guidance_scale", "num_inference_steps", "sample_seeds", "use_pnp",
                 "inject_step", "flatten_res", "old_qk", "use_freeu", "blending_percentage",
                 "cluster_inversion_feature", "vis_cross_attn", "strength")

# videograin field (as load_spec names it) -> official key, for errors found when reading the file back.
_FIELD_TO_OFFICIAL = {
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


@dataclass(frozen=True)
class Conversion:
    """The result of :func:`convert_config`.

    ``path``: the written spec YAML; ``spec``: it as ``load_spec`` reads it; ``unsupported``: official
    options that are not applied (the comments under "NOT APPLIED" at the top of the file); ``warnings``:
    every warning logged (the unsupported options included).
    """

    path: Path
    spec: EditSpec
    unsupported: tuple[str, ...]
    warnings: tuple[str, ...]


def default_out_path(official: str | Path) -> Path:
    """Where ``convert-config`` writes without ``--out``: ``<official stem>.videograin.yaml`` in the current folder."""
    return Path.cwd() / f"{Path(official).stem}.videograin.yaml"


def convert_config(
    official: str | Path,
    out: str | Path | None = None,
    *,
    root: str | Path | None = None,
    prompt_index: int = 0,
    overwrite: bool = False,
) -> Conversion:
    """Convert the official config file ``official`` into a spec YAML at ``out``; return what was written.

    ``root`` is the folder the official relative paths are resolved against (the official repository
    root, where its ``test.py`` runs; default: the current folder). ``prompt_index`` picks the entry of
    ``editing_config.editing_prompts`` to convert (one spec holds one edit). Paths in the new file are
    relative to its folder when possible. The file is written to a temporary name, read back with
    ``load_spec`` and only then renamed to ``out``; an existing ``out`` is replaced only with ``overwrite``.
    Raises SpecError naming the official key (e.g. ``editing_config.editing_prompts[0]``) when something
    cannot be mapped; nothing is left behind then.
    """
    official = Path(official)
    out = Path(out) if out is not None else default_out_path(official)
    root_dir = Path(root if root is not None else Path.cwd()).expanduser().resolve()
    if not root_dir.is_dir():
        raise SpecError("--root", f"{root_dir} is not a folder", "give the official repository root (where test.py is)")
    if out.is_dir():
        raise SpecError("--out", f"{out} is a folder", "give the path of the YAML file to write")
    if out.exists() and out.resolve() == official.resolve():
        raise SpecError("--out", "is the official config itself", "choose another --out")
    if out.exists() and not overwrite:
        raise SpecError("--out", f"{out} exists", "pass --overwrite to replace it, or choose another --out")
    data = read_official(official)
    out_dir = out.resolve().parent
    spec_data, header, unsupported, warnings = official_to_spec_data(
        data, root=root_dir, out_dir=out_dir, prompt_index=prompt_index, source=official.resolve()
    )
    for message in warnings:
        logger.warning("warning: %s", message)
    text = "".join(f"# {line}".rstrip() + "\n" for line in header) + "\n" + _dump(spec_data)

    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            spec = load_spec(tmp)
        except SpecError as err:
            raise SpecError(f"{_official_field(err.field, prompt_index)} (videograin {err.field})",
                            err.problem, err.fix) from err
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in created:  # deepest first; only what this call created, and only if still empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return Conversion(path=out, spec=spec, unsupported=tuple(unsupported), warnings=tuple(warnings))


def read_official(path: str | Path) -> dict:
    """The official config as a plain dict (OmegaConf interpolations such as ``${..x}`` stay strings)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("config", f"file {path} not found", "give the path of an official VideoGrain config (YAML)")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # OmegaConf rejects them too
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise SpecError("config", f"cannot read {path} as YAML ({str(err).splitlines()[0]})",
                        "give an official VideoGrain config (YAML)") from err
    if not isinstance(data, dict):
        raise SpecError("config", f"{path} is not a mapping of keys", "give an official VideoGrain config (YAML)")
    return data


def official_to_spec_data(
    data: dict, *, root: Path, out_dir: Path, prompt_index: int = 0, source: Path | None = None
) -> tuple[dict, list[str], list[str], list[str]]:
    """Map a parsed official config to ``(spec_data, header, unsupported, warnings)``.

    ``spec_data`` is the spec YAML as a dict (paths relative to ``out_dir`` when possible), ``header``
    the comment lines for the top of the file, ``unsupported`` the official options not applied and
    ``warnings`` the messages to log. Checks the frame folder and every mask file the official code
    would read under ``root``.
    """
    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    dataset = _section(data, "dataset_config", required=True)
    editing = _section(data, "editing_config", required=True)
    control = _section(data, "control_config")
    unsupported: list[str] = []
    notes: list[str] = []
    inert: list[str] = []
    warnings: list[str] = []

    sel = _frames(dataset, root, warnings)
    size, first = _frame_size(dataset, sel.first_frame, unsupported, warnings)
    key, global_prompt, local_prompts, order = _prompts(dataset, editing, prompt_index, warnings)
    regions = _regions(dataset, root, out_dir, sel, order, local_prompts, key, global_prompt, notes, warnings)
    _blend_notes(regions, key, global_prompt, notes, warnings)
    steps, guidance, seed = _sampling(data, editing, notes, warnings, inert)
    source_prompt, negative = _dataset_prompts(dataset)
    model, output = _model_and_output(data, root, out_dir, notes, warnings)
    aids = _temporal_aids(editing, size, steps, unsupported, notes, warnings, inert)
    control_spec = _control_section(data, control, root, out_dir, sel, first, unsupported, notes, warnings, inert)

    more_unsupported, more_inert = _not_applied(data, dataset, editing)
    unsupported += more_unsupported
    inert += more_inert
    if negative is None:
        notes.append("dataset_config.negative_promot: missing; no negative prompt")
    warnings = [f"not applied: {item}" for item in unsupported] + warnings

    spec_data = _spec_data(model=model, sel=sel, size=size, out_dir=out_dir, source_prompt=source_prompt,
                           global_prompt=global_prompt, negative=negative, regions=regions, steps=steps,
                           guidance=guidance, seed=seed, aids=aids, control_spec=control_spec, output=output)
    header = _header(source, root, prompt_index, unsupported, warnings, notes, inert)
    return spec_data, header, unsupported, warnings


# --- the sections of official_to_spec_data ------------------------------------------------------------


@dataclass(frozen=True)
class _Frames:
    """The frames the official dataset selects (``video_dir``: the folder; ``total``: how many frames
    videograin lists there; ``first_frame``: the first selected one)."""

    video_dir: Path
    start: int
    rate: int
    frames: int
    indices: list[int]
    total: int
    first_frame: Path


def _frames(dataset: dict, root: Path, warnings: list[str]) -> _Frames:
    """Map ``dataset_config.path/start_sample_frame/sampling_rate/n_sample_frame`` to the frame selection."""
    video_dir = _official_path(_require(dataset, "path", "dataset_config"), "dataset_config.path", root)
    if not video_dir.is_dir():
        raise SpecError("dataset_config.path", f"frame folder {video_dir} not found",
                        f"run from the official repository root or pass --root DIR (now {root})")
    images = sorted(f for f in os.listdir(video_dir) if f.endswith(OFFICIAL_IMAGE_EXTENSIONS))
    start = _int(dataset.get("start_sample_frame", 0) or 0, "dataset_config.start_sample_frame", 0)
    rate = _int(dataset.get("sampling_rate", 1), "dataset_config.sampling_rate", 1)
    frames = _int(_require(dataset, "n_sample_frame", "dataset_config"), "dataset_config.n_sample_frame", None)
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
    from ..io import list_images  # heavy imports (torch, av) only when converting

    ours = list_images(video_dir)
    official_names = [images[i] for i in indices]
    if [p.name for p in ours[start::rate][:frames]] != official_names:  # io.read_video's selection
        warnings.append(f"dataset_config.path: videograin lists {len(ours)} frames in {video_dir} (png/jpg/jpeg/"
                        f"webp/bmp, natural order), the official code {len(images)} (sorted names); the selected "
                        "frames differ: rename the frames %05d.jpg")
    return _Frames(video_dir=video_dir, start=start, rate=rate, frames=frames, indices=indices, total=len(ours),
                   first_frame=video_dir / official_names[0])


def _frame_size(dataset: dict, first_frame: Path, unsupported: list[str],
                warnings: list[str]) -> tuple[int, tuple[int, int] | None]:
    """Map ``dataset_config.image_size`` (and crop/offset/stride/class_data_root) to ``video.size``."""
    size = _int(dataset.get("image_size", OFFICIAL_IMAGE_SIZE), "dataset_config.image_size", 1)
    first = _image_size(first_frame)
    if first is not None and first[0] != first[1]:
        warnings.append(f"dataset_config.image_size: the frames are {first[0]}x{first[1]}; the official code "
                        f"scales their short side to {size} and centre-crops a {size}x{size} square, videograin "
                        f"resizes the whole frame to {size}x{size} (aspect change)")
    for key in ("width", "height"):
        if key in dataset:
            warnings.append(f"dataset_config.{key}: not read by the official dataset (its size is image_size); "
                            f"video.size follows image_size = {size}")
    if dataset.get("crop", "center") != "center":
        unsupported.append(f"dataset_config.crop: {_fmt(dataset['crop'])} (random crop)")
    offset = dataset.get("offset")
    if isinstance(offset, dict) and any(offset.values()):
        unsupported.append(f"dataset_config.offset: {_fmt(offset)} (crop before scaling)")
    if isinstance(dataset.get("stride"), int) and dataset["stride"] > 0:
        unsupported.append(f"dataset_config.stride: {dataset['stride']} (random clip of a long video, tuning only)")
    if dataset.get("class_data_root"):
        unsupported.append(f"dataset_config.class_data_root: {_fmt(dataset['class_data_root'])} (tuning only)")
    return size, first


def _prompts(dataset: dict, editing: dict, prompt_index: int,
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


def _regions(dataset: dict, root: Path, out_dir: Path, sel: _Frames, order: list[str], local_prompts: list[str],
             key: str, global_prompt: str, notes: list[str], warnings: list[str]) -> list[dict]:
    """Map ``layout_mask_dir``/``layout_mask_order`` and the local prompts to the spec's ``regions``."""
    mask_dir = _official_path(_require(dataset, "layout_mask_dir", "dataset_config"),
                              "dataset_config.layout_mask_dir", root)
    regions = []
    seen: dict[str, int] = {}
    for k, (name, local) in enumerate(zip(order, local_prompts)):
        field = f"dataset_config.layout_mask_order[{k}]"
        if name in seen:
            raise SpecError(field, f"{name!r} is listed twice (also [{seen[name]}])", "list each mask folder once")
        seen[name] = k
        folder = mask_dir / name
        _check_masks(folder, sel.indices, sel.total, sel.start, sel.frames, sel.rate, field)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        if safe in (".", "..") or safe in {r["name"] for r in regions}:
            safe = f"region{k}_{safe.strip('.')}"
        if safe != name:
            notes.append(f"{field}: region named {safe!r} (folder names allow only letters, digits, _ - .)")
        regions.append({"name": safe, "masks": _relative(folder, out_dir), "prompt": local})
        if local.strip() and not _occurs(_words(local), _words(global_prompt)):
            closest = _closest(local, global_prompt)
            hint = f" (closest words there: {closest!r})" if closest else ""
            warnings.append(
                f"{key}[{k + 1}]: local prompt {local!r} does not occur word for word in the global prompt "
                f"{global_prompt!r}{hint}; kept, but `videograin edit` will reject it (the official code silently "
                f"leaves that region without text); fix: rewrite the prompt so it contains {local!r} word for "
                f"word, or use the prompt's own words as the local prompt")
    return regions


def _blend_notes(regions: list[dict], key: str, global_prompt: str, notes: list[str], warnings: list[str]) -> None:
    """Map the official latent blending of the layouts to a note or warning about regions without a prompt."""
    # Official latent blending keeps only the pixels outside the union of *all* layouts; videograin's keeps
    # everything outside the regions that have a prompt.
    kept = [r["name"] for r in regions if not r["prompt"].strip()]
    if kept and len(kept) == len(regions):
        warnings.append(f"{key}: no layout has a local prompt; the official code re-generates the layouts {kept} "
                        "under the global prompt, but videograin's latent blend keeps regions without a prompt, so "
                        "this edit would change nothing; fix: give regions a local prompt taken from the global "
                        f"prompt {global_prompt!r}, or set edit.blend: false (re-generates the whole frame)")
    elif kept:
        notes.append(f"regions {kept} have no local prompt: videograin keeps them as they are (latent blend); the "
                     "official blend re-generates every layout region and keeps only pixels outside all layouts")


def _sampling(data: dict, editing: dict, notes: list[str], warnings: list[str],
              inert: list[str]) -> tuple[int, Any, int]:
    """Map ``num_inference_steps``, ``guidance_scale`` and ``seed``/``sample_seeds`` to (steps, guidance, seed)."""
    steps = _int(_require(editing, "num_inference_steps", "editing_config"), "editing_config.num_inference_steps", 1)
    guidance = editing.get("guidance_scale", OFFICIAL_GUIDANCE)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 0:
        raise SpecError("editing_config.guidance_scale", f"must be a number >= 0, got {guidance!r}",
                        "write e.g. guidance_scale: 7.5")
    sample_seeds = editing.get("sample_seeds")
    if "seed" in data and data["seed"] is not None:
        seed = _int(data["seed"], "seed", 0)
    elif isinstance(sample_seeds, list) and sample_seeds:
        seed = _int(sample_seeds[0], "editing_config.sample_seeds[0]", 0)
    else:
        seed = 0
        notes.append("seed: not set (the official run is unseeded); edit.seed: 0")
    if isinstance(sample_seeds, list) and len(sample_seeds) > 1:
        warnings.append(f"editing_config.sample_seeds: {_fmt(sample_seeds)} makes {len(sample_seeds)} samples per "
                        f"prompt officially; this file makes one with edit.seed {seed} (change it for others)")
    elif sample_seeds is not None:
        inert.append(f"sample_seeds {_fmt(sample_seeds)} (generator seed of the official sampler; "
                     f"edit.seed takes the global seed {seed})")
    return steps, guidance, seed


def _dataset_prompts(dataset: dict) -> tuple[str, str | None]:
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


def _model_and_output(data: dict, root: Path, out_dir: Path, notes: list[str],
                      warnings: list[str]) -> tuple[str, str | None]:
    """Map ``pretrained_model_path`` and ``logdir`` to the spec's ``model`` and ``output`` (None when unset)."""
    model = DEFAULT_MODEL
    model_path = data.get("pretrained_model_path")
    if isinstance(model_path, str) and model_path:
        local = _official_path(model_path, "pretrained_model_path", root)
        if local.is_dir():
            model = _relative(local, out_dir)
        else:
            warnings.append(f"pretrained_model_path: {local} not found; model: {DEFAULT_MODEL} (the hub's SD 1.5, "
                            "which the official configs use); pass --model DIR_OR_ID to `videograin edit` to change")
    output = None
    if isinstance(data.get("logdir"), str) and data["logdir"]:
        output = _relative(_official_path(data["logdir"], "logdir", root) / "videograin", out_dir)
        notes.append("output: the official logdir + /videograin (the official results there stay untouched)")
    return model, output


def _control_section(data: dict, control: dict, root: Path, out_dir: Path, sel: _Frames,
                     first: tuple[int, int] | None, unsupported: list[str], notes: list[str], warnings: list[str],
                     inert: list[str]) -> dict | None:
    """Map ``control_config`` (with ``logdir``'s saved conditions) to the spec's ``control`` (None without one)."""
    if not control:
        return None
    logdir = _official_path(data["logdir"], "logdir", root) if isinstance(data.get("logdir"), str) and \
        data["logdir"] else None
    square = first is None or first[0] == first[1]
    return _control(control, root, out_dir, logdir, sel.frames, sel.start, sel.rate, square,
                    unsupported, notes, warnings, inert)


def _spec_data(*, model: str, sel: _Frames, size: int, out_dir: Path, source_prompt: str, global_prompt: str,
               negative: str | None, regions: list[dict], steps: int, guidance: Any, seed: int, aids: dict,
               control_spec: dict | None, output: str | None) -> dict[str, Any]:
    """Map the converted parts to the spec YAML as a dict, in the order the file lists them."""
    spec_data: dict[str, Any] = {"model": model}
    spec_data["video"] = {"path": _relative(sel.video_dir, out_dir), "frames": sel.frames, "start": sel.start,
                          "stride": sel.rate, "size": [size, size]}
    spec_data["source_prompt"] = source_prompt
    spec_data["prompt"] = global_prompt
    if negative:
        spec_data["negative_prompt"] = negative
    spec_data["regions"] = regions
    spec_data["edit"] = {"steps": steps, "guidance_scale": float(guidance), "seed": seed, "blend": True}
    if aids:
        spec_data["edit"]["temporal_aids"] = aids
    if control_spec is not None:
        spec_data["control"] = control_spec
    if output is not None:
        spec_data["output"] = output
    return spec_data


def _header(source: Path | None, root: Path, prompt_index: int, unsupported: list[str], warnings: list[str],
            notes: list[str], inert: list[str]) -> list[str]:
    """Map the source, the options not applied and the notes to the comment lines at the top of the file."""
    header = [
        "videograin spec converted by `videograin convert-config` from the official VideoGrain config",
        f"  {source if source is not None else '(dict)'}",
        f"(github.com/knightyxp/VideoGrain; its relative paths resolved against {root}).",
        f"Edit: editing_config.editing_prompts[{prompt_index}].",
        "",
        "NOT APPLIED - official options videograin does not support yet:",
        *([f"  {item}" for item in unsupported] or ["  (none)"]),
    ]
    other = [w for w in warnings if not w.startswith("not applied: ")]
    if other or notes or inert:
        header += ["", "Notes:", *[f"  {line}" for line in other + notes]]
        if inert:
            header.append(f"  ignored (no effect on the official result, or replaced here): {'; '.join(inert)}")
    return header


# --- helpers ----------------------------------------------------------------------------------------


def _not_applied(data: dict, dataset: dict, editing: dict) -> tuple[list[str], list[str]]:
    """Official options that change the official result but are not implemented here (unknown keys
    included), and keys without effect on the official result; one line each. (FLATTEN, PnP and the
    ControlNet: :func:`_temporal_aids`, :func:`_control`.)"""
    unsupported: list[str] = []
    inert: list[str] = []
    if editing.get("use_freeu"):
        unsupported.append("editing_config.use_freeu: true (FreeU, b1=1.2, b2=1.5, s1=1.0, s2=1.0)")
    blending = editing.get("blending_percentage", 0)
    if blending:
        unsupported.append(f"editing_config.blending_percentage: {_fmt(blending)} (skips the first "
                           f"{_fmt(blending)} of the denoising steps)")
    if editing.get("cluster_inversion_feature") or data.get("cluster_inversion_feature"):
        unsupported.append("editing_config.cluster_inversion_feature: true (K-means of inversion features, a "
                           "diagnostic output)")
    if editing.get("vis_cross_attn"):
        unsupported.append("editing_config.vis_cross_attn: true (cross-attention visualisation; see "
                           "`videograin edit --eval` for attention mass)")
    if editing.get("strength") is not None:
        unsupported.append(f"editing_config.strength: {_fmt(editing['strength'])} (partial denoising)")
    if data.get("model_config"):
        unsupported.append(f"model_config: {_fmt(data['model_config'])} (official UNet options)")
    for section, known, prefix in ((data, _TOP_KEYS, ""), (dataset, _DATASET_KEYS, "dataset_config."),
                                   (editing, _EDITING_KEYS, "editing_config.")):
        for name in section:
            if name in known:
                continue
            if name in _INERT_KEYS:
                inert.append(f"{name} ({_INERT_KEYS[name]})")
            elif not (section is dataset and name in ("width", "height")):
                unsupported.append(f"{prefix}{name}: {_fmt(section[name])} (unknown to the converter)")
    return unsupported, inert


# SD 1.5 UNet levels with self-attention: 64, 32, 16 (down/up blocks) and 8 (mid block) tokens a side for
# 512² frames. The official flatten_res factor f selects the grid (H/8 // f); level k halves it k times.
_SD_LEVELS = 4
# ckpt/download.sh of the official repository: the ControlNets its configs load from ./ckpt/<name>.
_OFFICIAL_CONTROLNETS = ("control_v11p_sd15_openpose", "control_v11f1p_sd15_depth", "sd-controlnet-depth",
                         "sd-controlnet-openpose")
# annotator/util.py get_control + test.py: official control_type -> videograin annotator.
_CONDITIONS = {"canny": "canny", "depth": "depth", "depth_zoe": "depth", "openpose": "pose", "dwpose": "pose"}
_CONTROL_KEYS = {"control_type", "pretrained_controlnet_path", "controlnet_conditioning_scale", "low_threshold",
                 "high_threshold", "hand", "face", "value", "bg_threshold", "value_threshold",
                 "distance_threshold"}


def _temporal_aids(editing: dict, size: int, steps: int, unsupported: list[str], notes: list[str],
                   warnings: list[str], inert: list[str]) -> dict:
    """``edit.temporal_aids`` from ``flatten_res``/``old_qk`` and ``use_pnp``/``inject_step`` ({} when
    neither is active); what does not map goes to ``unsupported``/``inert``."""
    aids: dict[str, Any] = {}
    flatten = editing.get("flatten_res")
    if flatten is not None and not (isinstance(flatten, list) and all(
            isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in flatten)):
        raise SpecError("editing_config.flatten_res", f"must be a list of downsampling factors, got {flatten!r}",
                        "write e.g. flatten_res: [1] (1 = 64x64 latent tokens for 512x512 frames)")
    latent = size // 8
    levels: list[int] = []
    for factor in flatten or []:
        level = factor.bit_length() - 1
        if factor != 1 << level or latent % factor or level >= _SD_LEVELS:
            inert.append(f"flatten_res factor {factor} (a {latent // factor}x{latent // factor} token grid, which "
                         "no attention layer of SD 1.5 has: no effect officially)")
        elif level not in levels:
            levels.append(level)
    old_qk = editing.get("old_qk", 0)
    if levels:
        aids["flow"] = {"levels": sorted(levels)}
        notes.append(f"editing_config.flatten_res {_fmt(flatten)} -> edit.temporal_aids.flow.levels "
                     f"{_fmt(sorted(levels))} (factor 2^k = level k), every inversion and editing step as "
                     "officially; trajectories from OpenCV DIS flow (official: RAFT-large)")
        if old_qk:
            unsupported.append(f"editing_config.old_qk: {_fmt(old_qk)} (flatten_res is applied as "
                               "edit.temporal_aids.flow, but FLATTEN's flow attention there takes the frame "
                               "attention's projected queries/keys; videograin's uses the attention output as "
                               "query, key and value, the official old_qk: 0)")
    elif "old_qk" in editing:
        inert.append(f"old_qk {_fmt(old_qk)} (no flatten_res level)")

    inject = editing.get("inject_step")
    if editing.get("use_pnp"):
        inject = _int(inject if inject is not None else 0, "editing_config.inject_step", 0)
        if inject:
            aids["pnp"] = {"steps": inject}
            notes.append(f"editing_config.use_pnp, inject_step {inject} -> edit.temporal_aids.pnp.steps {inject} "
                         f"(decoder self-attention queries/keys of the inversion injected in the first {inject} "
                         f"of {steps} editing steps)")
            unsupported.append(f"editing_config.use_pnp: true, inject_step: {inject} (applied as "
                               "edit.temporal_aids.pnp, residual features included; not applied: the official "
                               "choice of q/k layers, up_blocks[1].attentions[1,2], [2].attentions[0-2], "
                               "[3].attentions[0]; videograin injects every decoder self-attention's)")
        else:
            inert.append("use_pnp true with inject_step 0 (injects on no step)")
    elif inject:
        inert.append(f"inject_step {_fmt(inject)} (use_pnp is false)")
    return aids


def _control(control: dict, root: Path, out_dir: Path, logdir: Path | None, frames: int, start: int, rate: int,
             square: bool, unsupported: list[str], notes: list[str], warnings: list[str],
             inert: list[str]) -> dict | None:
    """The spec's ``control`` from ``control_config`` (None when it does not map: then it is listed in
    ``unsupported``)."""
    kind = control.get("control_type")
    scale = control.get("controlnet_conditioning_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise SpecError("control_config.controlnet_conditioning_scale", f"must be a number, got {scale!r}",
                        "write e.g. controlnet_conditioning_scale: 1.0")
    if "controlnet_conditioning_scale" not in control:
        notes.append("control_config.controlnet_conditioning_scale: missing (the official code requires it); "
                     "control.scale: 1.0")
    for name, value in control.items():
        if name not in _CONTROL_KEYS:
            unsupported.append(f"control_config.{name}: {_fmt(value)} (unknown to the converter)")
    model = _controlnet_model(control, root, out_dir, unsupported, notes)
    if model is None:
        return None
    condition = _saved_condition(logdir, kind, frames, start, rate, square, out_dir, notes)
    if condition is None:
        condition = _annotator_condition(control, kind, unsupported, warnings)
        if condition is None:
            return None
    used = {"control_type", "pretrained_controlnet_path", "controlnet_conditioning_scale"}
    used |= {"canny": {"low_threshold", "high_threshold"}, "openpose": {"hand", "face"},
             "dwpose": {"hand", "face"}}.get(kind, set())
    for name in sorted(_CONTROL_KEYS & set(control) - used):
        inert.append(f"control_config.{name} (not read for {kind})")
    notes.append(f"control_config -> control: ControlNet {model}, condition {condition}, scale {_fmt(scale)}, in "
                 "inversion and editing as officially (the official ControlNet is inflated to sparse-causal "
                 "frame attention; videograin's attends per frame)")
    return {"model": model, "condition": condition, "scale": float(scale)}


def _controlnet_model(control: dict, root: Path, out_dir: Path, unsupported: list[str],
                      notes: list[str]) -> str | None:
    """Map ``pretrained_controlnet_path`` to ``control.model`` (None, listed in ``unsupported``, when it does not)."""
    # the ControlNet: a local folder under the official root, else the hub model ckpt/download.sh clones
    raw = control.get("pretrained_controlnet_path")
    model = None
    if isinstance(raw, str) and raw.strip():
        local = _official_path(raw, "control_config.pretrained_controlnet_path", root)
        if local.is_dir():
            model = _relative(local, out_dir)
        elif local.name in _OFFICIAL_CONTROLNETS:
            model = f"lllyasviel/{local.name}"
            notes.append(f"control_config.pretrained_controlnet_path: {local} not found; control.model: {model} "
                         "(what the official ckpt/download.sh clones there)")
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", raw.strip()) and not raw.strip().startswith("."):
            model = raw.strip()  # a hub id
    if model is None:
        unsupported.append(f"control_config: {_fmt(control)} (ControlNet {raw!r} is neither a folder under "
                           f"{root} nor a known hub model; give control.model by hand)")
    return model


def _saved_condition(logdir: Path | None, kind: Any, frames: int, start: int, rate: int, square: bool,
                     out_dir: Path, notes: list[str]) -> str | None:
    """Map an official run's ``<logdir>/control`` images to ``control.condition`` (None when not usable)."""
    # the conditions: the images an official run wrote to <logdir>/control, when videograin's reader (which
    # selects start/stride out of a folder) picks exactly them; else videograin's annotator for the type
    condition = None
    saved = logdir / "control" if logdir is not None else None
    if saved is not None and saved.is_dir():
        names = sorted(p.name for p in saved.iterdir() if p.suffix.lower() == ".jpg")
        if names != sorted(f"{i}.jpg" for i in range(frames)):
            why = f"it holds {len(names)} .jpg files, not 0.jpg..{frames - 1}.jpg"
        elif start != 0 or rate != 1:
            why = "videograin would select start_sample_frame/sampling_rate out of the already selected images"
        elif not square:
            why = "the frames are not square (the official conditions are of the centre crop)"
        else:
            why = ""
            condition = _relative(saved, out_dir)
            notes.append(f"control.condition: the condition images of the official run in {saved} "
                         f"({kind} annotator of test.py)")
        if why:
            notes.append(f"control.condition: {saved} (a previous official run's conditions) not used: {why}")
    return condition


def _annotator_condition(control: dict, kind: Any, unsupported: list[str], warnings: list[str]) -> str | None:
    """Map ``control_type`` (and its annotator options) to videograin's annotator (None, listed, when none)."""
    condition = _CONDITIONS.get(kind) if isinstance(kind, str) else None
    if condition is None:
        unsupported.append(f"control_config: {_fmt(control)} (videograin has no {kind!r} annotator: only "
                           f"canny, depth, pose; give a folder of condition images as control.condition)")
        return None
    if kind == "canny":
        from ..control import CANNY_THRESHOLDS

        thresholds = (control.get("low_threshold"), control.get("high_threshold"))
        if thresholds != CANNY_THRESHOLDS:
            unsupported.append(f"control_config.low_threshold/high_threshold: {_fmt(list(thresholds))} "
                               f"(videograin's canny uses {list(CANNY_THRESHOLDS)})")
    elif kind in ("openpose", "dwpose"):
        drawn = [part for part in ("hand", "face") if control.get(part)]
        if drawn:
            unsupported.append(f"control_config.{'/'.join(drawn)}: true ({' and '.join(drawn)} keypoints in "
                               "the pose condition; videograin's pose annotator draws bodies only)")
        if kind == "dwpose":
            warnings.append("control_config.control_type: dwpose (DWPose keypoints); videograin's pose "
                            "annotator is OpenPose (controlnet_aux), the official openpose")
    elif kind == "depth_zoe":
        warnings.append("control_config.control_type: depth_zoe (ZoeDepth); videograin's depth annotator is "
                        "DPT-hybrid MiDaS, the official depth")
    return condition



def _section(data: dict, name: str, required: bool = False) -> dict:
    value = data.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise SpecError(name, "is missing" if value is None else f"must be a mapping, got {value!r}",
                        f"give an official VideoGrain config (with `{name}:`)")
    return value


def _require(section: dict, key: str, prefix: str) -> Any:
    if section.get(key) is None:
        raise SpecError(f"{prefix}.{key}", "is missing (the official code requires it)", f"add `{key}:` under {prefix}")
    return section[key]


def _int(value: Any, field: str, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"must be an integer, got {value!r}", "write a whole number")
    if minimum is not None and value < minimum:
        raise SpecError(field, f"must be >= {minimum}, got {value}", f"use a value >= {minimum}")
    return value


def _official_path(value: Any, field: str, root: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(field, f"must be a path, got {value!r}", "write the path as the official code reads it")
    return (root / Path(value).expanduser()).resolve()


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when possible (same drive), else absolute; forward slashes."""
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:
        return path.as_posix()


def _select(files: list, start: int, frames: int, stride: int, total: int) -> list | None:
    """The files videograin's mask/frame loader picks (see io.read_mask_folder), None when it would refuse."""
    if len(files) == frames:
        return files
    if len(files) == total and start + (frames - 1) * stride < total:
        return files[start : start + (frames - 1) * stride + 1 : stride]
    return None


def _check_masks(folder: Path, indices: list[int], total: int, start: int, frames: int, stride: int,
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
    from ..io import list_images

    files = list_images(folder)
    chosen = _select(files, start, frames, stride, total)
    if chosen is None or [p.name for p in chosen] != wanted:
        raise SpecError(field, f"{folder} holds {len(files)} mask images; videograin picks masks by position (all "
                        f"{frames} when there are as many as selected frames, else the frame selection out of one "
                        f"per source frame, {total}) and would not pick {wanted[0]}..{wanted[-1]}",
                        f"keep exactly {total} masks (one per source frame) or {frames} (the selected ones) there")


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return None


def _words(text: str) -> list[str]:
    """Lower-case words and punctuation marks, as CLIP's tokenizer separates them."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def _occurs(sub: list[str], seq: list[str]) -> bool:
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def _closest(local: str, global_prompt: str) -> str:
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


def _official_field(field: str, prompt_index: int) -> str:
    """The official key behind a videograin spec field (for errors found when reading the file back)."""
    match = re.match(r"regions\[(\d+)\]\.(\w+)", field)
    if match:
        k = int(match.group(1))
        if match.group(2) == "prompt":
            return f"editing_config.editing_prompts[{prompt_index}][{k + 1}]"
        return f"dataset_config.layout_mask_order[{k}]"
    if field == "prompt":
        return f"editing_config.editing_prompts[{prompt_index}][0]"
    for ours, official in _FIELD_TO_OFFICIAL.items():
        if field == ours or field.startswith((ours + ".", ours + "[")):
            return official
    return "config"


def _fmt(value: Any) -> str:
    """A value as one line of flow YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6, allow_unicode=True).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _dump(data: dict) -> str:
    """The spec as YAML: sections in block style, regions one flow mapping per line."""
    parts = []
    for key, value in data.items():
        if key == "regions":
            parts.append("regions:\n" + "".join(f"  - {_fmt(r)}\n" for r in value))
        elif isinstance(value, dict):
            parts.append(f"{key}: {_fmt(value)}\n")
        else:
            parts.append(yaml.safe_dump({key: value}, allow_unicode=True, width=10**6))
    return "".join(parts)
