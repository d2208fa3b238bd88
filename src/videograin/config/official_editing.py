"""What an official config's ``editing_config`` and ``control_config`` convert to: sampling, the model and
output, the temporal aids (FLATTEN, PnP) and the ControlNet."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .official_dataset import Frames
from .official_fields import fmt_value, official_path, relative, require, whole_number
from .spec import DEFAULT_MODEL

OFFICIAL_GUIDANCE = 7.0  # SampleLogger(guidance_scale=7)


def sampling(data: dict, editing: dict, notes: list[str], warnings: list[str],
              inert: list[str]) -> tuple[int, Any, int]:
    """Map ``num_inference_steps``, ``guidance_scale`` and ``seed``/``sample_seeds`` to (steps, guidance, seed)."""
    steps = whole_number(require(editing, "num_inference_steps", "editing_config"), "editing_config.num_inference_steps", 1)
    guidance = editing.get("guidance_scale", OFFICIAL_GUIDANCE)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 0:
        raise SpecError("editing_config.guidance_scale", f"must be a number >= 0, got {guidance!r}",
                        "write e.g. guidance_scale: 7.5")
    sample_seeds = editing.get("sample_seeds")
    if "seed" in data and data["seed"] is not None:
        seed = whole_number(data["seed"], "seed", 0)
    elif isinstance(sample_seeds, list) and sample_seeds:
        seed = whole_number(sample_seeds[0], "editing_config.sample_seeds[0]", 0)
    else:
        seed = 0
        notes.append("seed: not set (the official run is unseeded); edit.seed: 0")
    if isinstance(sample_seeds, list) and len(sample_seeds) > 1:
        warnings.append(f"editing_config.sample_seeds: {fmt_value(sample_seeds)} makes {len(sample_seeds)} samples per "
                        f"prompt officially; this file makes one with edit.seed {seed} (change it for others)")
    elif sample_seeds is not None:
        inert.append(f"sample_seeds {fmt_value(sample_seeds)} (generator seed of the official sampler; "
                     f"edit.seed takes the global seed {seed})")
    return steps, guidance, seed


def model_and_output(data: dict, root: Path, out_dir: Path, notes: list[str],
                      warnings: list[str]) -> tuple[str, str | None]:
    """Map ``pretrained_model_path`` and ``logdir`` to the spec's ``model`` and ``output`` (None when unset)."""
    model = DEFAULT_MODEL
    model_path = data.get("pretrained_model_path")
    if isinstance(model_path, str) and model_path:
        local = official_path(model_path, "pretrained_model_path", root)
        if local.is_dir():
            model = relative(local, out_dir)
        else:
            warnings.append(f"pretrained_model_path: {local} not found; model: {DEFAULT_MODEL} (the hub's SD 1.5, "
                            "which the official configs use); pass --model DIR_OR_ID to `videograin edit` to change")
    output = None
    if isinstance(data.get("logdir"), str) and data["logdir"]:
        output = relative(official_path(data["logdir"], "logdir", root) / "videograin", out_dir)
        notes.append("output: the official logdir + /videograin (the official results there stay untouched)")
    return model, output


def control_section(data: dict, control: dict, root: Path, out_dir: Path, sel: Frames,
                     first: tuple[int, int] | None, unsupported: list[str], notes: list[str], warnings: list[str],
                     inert: list[str]) -> dict | None:
    """Map ``control_config`` (with ``logdir``'s saved conditions) to the spec's ``control`` (None without one)."""
    if not control:
        return None
    logdir = official_path(data["logdir"], "logdir", root) if isinstance(data.get("logdir"), str) and \
        data["logdir"] else None
    square = first is None or first[0] == first[1]
    return _control(control, root, out_dir, logdir, sel.frames, sel.start, sel.rate, square,
                    unsupported, notes, warnings, inert)


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


def temporal_aids(editing: dict, size: int, steps: int, unsupported: list[str], notes: list[str],
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
        notes.append(f"editing_config.flatten_res {fmt_value(flatten)} -> edit.temporal_aids.flow.levels "
                     f"{fmt_value(sorted(levels))} (factor 2^k = level k), every inversion and editing step as "
                     "officially; trajectories from OpenCV DIS flow (official: RAFT-large)")
        if old_qk:
            unsupported.append(f"editing_config.old_qk: {fmt_value(old_qk)} (flatten_res is applied as "
                               "edit.temporal_aids.flow, but FLATTEN's flow attention there takes the frame "
                               "attention's projected queries/keys; videograin's uses the attention output as "
                               "query, key and value, the official old_qk: 0)")
    elif "old_qk" in editing:
        inert.append(f"old_qk {fmt_value(old_qk)} (no flatten_res level)")

    inject = editing.get("inject_step")
    if editing.get("use_pnp"):
        inject = whole_number(inject if inject is not None else 0, "editing_config.inject_step", 0)
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
        inert.append(f"inject_step {fmt_value(inject)} (use_pnp is false)")
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
            unsupported.append(f"control_config.{name}: {fmt_value(value)} (unknown to the converter)")
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
    notes.append(f"control_config -> control: ControlNet {model}, condition {condition}, scale {fmt_value(scale)}, in "
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
        local = official_path(raw, "control_config.pretrained_controlnet_path", root)
        if local.is_dir():
            model = relative(local, out_dir)
        elif local.name in _OFFICIAL_CONTROLNETS:
            model = f"lllyasviel/{local.name}"
            notes.append(f"control_config.pretrained_controlnet_path: {local} not found; control.model: {model} "
                         "(what the official ckpt/download.sh clones there)")
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", raw.strip()) and not raw.strip().startswith("."):
            model = raw.strip()  # a hub id
    if model is None:
        unsupported.append(f"control_config: {fmt_value(control)} (ControlNet {raw!r} is neither a folder under "
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
            condition = relative(saved, out_dir)
            notes.append(f"control.condition: the condition images of the official run in {saved} "
                         f"({kind} annotator of test.py)")
        if why:
            notes.append(f"control.condition: {saved} (a previous official run's conditions) not used: {why}")
    return condition


def _annotator_condition(control: dict, kind: Any, unsupported: list[str], warnings: list[str]) -> str | None:
    """Map ``control_type`` (and its annotator options) to videograin's annotator (None, listed, when none)."""
    condition = _CONDITIONS.get(kind) if isinstance(kind, str) else None
    if condition is None:
        unsupported.append(f"control_config: {fmt_value(control)} (videograin has no {kind!r} annotator: only "
                           f"canny, depth, pose; give a folder of condition images as control.condition)")
        return None
    if kind == "canny":
        from ..control import CANNY_THRESHOLDS

        thresholds = (control.get("low_threshold"), control.get("high_threshold"))
        if thresholds != CANNY_THRESHOLDS:
            unsupported.append(f"control_config.low_threshold/high_threshold: {fmt_value(list(thresholds))} "
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
