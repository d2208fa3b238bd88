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

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from ..media import natural_key
from . import official_dataset, official_editing
from .official_fields import dump, fmt_value, official_field, relative, section
from .parse import load_spec
from .yaml_fields import UniqueKeyLoader
from .spec import EditSpec

logger = logging.getLogger(__name__)


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
    text = "".join(f"# {line}".rstrip() + "\n" for line in header) + "\n" + dump(spec_data)

    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            spec = load_spec(tmp)
        except SpecError as err:
            raise SpecError(f"{official_field(err.field, prompt_index)} (videograin {err.field})",
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
    dataset = section(data, "dataset_config", required=True)
    editing = section(data, "editing_config", required=True)
    control = section(data, "control_config")
    unsupported: list[str] = []
    notes: list[str] = []
    inert: list[str] = []
    warnings: list[str] = []

    sel = official_dataset.frames(dataset, root, warnings)
    size, first = official_dataset.video_size(dataset, sel.first_frame, unsupported, warnings)
    key, global_prompt, local_prompts, order = official_dataset.prompts(dataset, editing, prompt_index, warnings)
    regions = official_dataset.regions(dataset, root, out_dir, sel, order, local_prompts, key, global_prompt, notes, warnings)
    official_dataset.blend_notes(regions, key, global_prompt, notes, warnings)
    steps, guidance, seed = official_editing.sampling(data, editing, notes, warnings, inert)
    source_prompt, negative = official_dataset.dataset_prompts(dataset)
    model, output = official_editing.model_and_output(data, root, out_dir, notes, warnings)
    aids = official_editing.temporal_aids(editing, size, steps, unsupported, notes, warnings, inert)
    control_spec = official_editing.control_section(data, control, root, out_dir, sel, first, unsupported, notes, warnings, inert)

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


def _spec_data(*, model: str, sel: official_dataset.Frames, size: int, out_dir: Path, source_prompt: str, global_prompt: str,
               negative: str | None, regions: list[dict], steps: int, guidance: Any, seed: int, aids: dict,
               control_spec: dict | None, output: str | None) -> dict[str, Any]:
    """Map the converted parts to the spec YAML as a dict, in the order the file lists them."""
    spec_data: dict[str, Any] = {"model": model}
    spec_data["video"] = {"path": relative(sel.video_dir, out_dir), "frames": sel.frames, "start": sel.start,
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
        unsupported.append(f"editing_config.blending_percentage: {fmt_value(blending)} (skips the first "
                           f"{fmt_value(blending)} of the denoising steps)")
    if editing.get("cluster_inversion_feature") or data.get("cluster_inversion_feature"):
        unsupported.append("editing_config.cluster_inversion_feature: true (K-means of inversion features, a "
                           "diagnostic output)")
    if editing.get("vis_cross_attn"):
        unsupported.append("editing_config.vis_cross_attn: true (cross-attention visualisation; see "
                           "`videograin edit --eval` for attention mass)")
    if editing.get("strength") is not None:
        unsupported.append(f"editing_config.strength: {fmt_value(editing['strength'])} (partial denoising)")
    if data.get("model_config"):
        unsupported.append(f"model_config: {fmt_value(data['model_config'])} (official UNet options)")
    for keys, known, prefix in ((data, _TOP_KEYS, ""), (dataset, _DATASET_KEYS, "dataset_config."),
                                (editing, _EDITING_KEYS, "editing_config.")):
        for name in keys:
            if name in known:
                continue
            if name in _INERT_KEYS:
                inert.append(f"{name} ({_INERT_KEYS[name]})")
            elif not (keys is dataset and name in ("width", "height")):
                unsupported.append(f"{prefix}{name}: {fmt_value(keys[name])} (unknown to the converter)")
    return unsupported, inert


def convert_folder(folder: str | Path, out: str | Path | None, *, root: str | Path | None = None,
                   prompt_index: int | None = None, overwrite: bool = False) -> Path:
    """Every official config under ``folder`` into ``out`` (a folder, default converted/), and
    ``out/jobs.yaml`` listing the ones that converted for `videograin batch`; the others are logged with
    their one-line reason. Returns the job list's path."""
    folder, out = Path(folder), Path(out or "converted")
    if out.is_file():
        raise SpecError("--out", f"{out} is a file", "give a folder for the converted configs and jobs.yaml")
    officials = sorted(folder.rglob("*.yaml"), key=lambda p: natural_key(str(p)))
    if not officials:
        raise SpecError("OFFICIAL", f"{folder} holds no .yaml configs", "give the official repository's config folder")
    out.mkdir(parents=True, exist_ok=True)
    jobs, failed = [], 0
    for official in officials:
        name = "_".join(official.relative_to(folder).with_suffix("").parts)
        try:
            result = convert_config(official, out / f"{name}.yaml", root=root, prompt_index=prompt_index,
                                    overwrite=overwrite)
        except SpecError as err:
            failed += 1
            logger.warning("not converted: %s (%s)", official, err)
            continue
        jobs.append({"config": result.path.name, "name": name})
    if not jobs:
        raise SpecError("OFFICIAL", f"none of the {len(officials)} configs in {folder} converted",
                        "see the reasons above; check --root")
    (out / "jobs.yaml").write_text(yaml.safe_dump({"jobs": jobs}, sort_keys=False), encoding="utf-8")
    logger.info("wrote %s: %d jobs (%d configs not converted); run them with `videograin batch %s --out DIR`",
                out / "jobs.yaml", len(jobs), failed, out / "jobs.yaml")
    return out / "jobs.yaml"
