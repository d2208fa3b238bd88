"""One call that runs every metric its inputs and weights allow (``evaluate``), and its text table.

Metrics that need weights load them through eval/clip_scores.py and eval/metrics.py; when they cannot (offline, not installed)
the reason is recorded under ``skipped`` and the other metrics still run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import WeightsUnavailable
from ..media import as_uint8_frames
from ..values import is_edited
from .clip_scores import (
    DEFAULT_CLIP, DEFAULT_PICKSCORE, DEFAULT_PICKSCORE_PROCESSOR, ClipScorer, ImageTextScorer, clip_frame_consistency,
    clip_text_score, pick_score,
)
from .metrics import (
    _as_masks, _check_same, attention_mass, edited_union, instance_accuracy, load_lpips, masked_fidelity, warp_error,
)
from ..optical_flow import DIS_MIN_SIZE, optical_flow

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What :func:`evaluate` found: ``metrics`` (name -> number), ``skipped`` (name -> reason),
    ``flow`` (backend used for Warp-Err, None if not run), ``notes`` and ``details`` (confusion
    matrices, attention mass tables, valid-pixel share)."""

    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    flow: str | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "skipped": self.skipped, "flow": self.flow, "notes": self.notes,
                "details": self.details}


CLIP_METRICS = ("clip_t", "clip_f", "clip_f_all_pairs", "instance_accuracy")


def _load_scorer(spec, what: str, tokenizer_id: str | None, device) -> tuple[ImageTextScorer | None, str | None]:
    """A scorer object passes through; an id is loaded; None means disabled."""
    if spec is None:
        return None, f"{what} disabled"
    if not isinstance(spec, str):
        return spec, None
    try:
        return ClipScorer.from_pretrained(spec, tokenizer_id, device=device), None
    except WeightsUnavailable as err:
        logger.info("%s", err)
        return None, f"{err} (give a local folder, or a hub id with network access or a filled cache)"


def evaluate(
    edited: Any,
    source: Any,
    masks: Any | None = None,
    prompt: str | None = None,
    region_prompts: Sequence[str] | None = None,
    region_names: Sequence[str] | None = None,
    *,
    clip: str | ImageTextScorer | None = DEFAULT_CLIP,
    pickscore: str | ImageTextScorer | None = DEFAULT_PICKSCORE,
    pickscore_processor: str = DEFAULT_PICKSCORE_PROCESSOR,
    flow: str = "dis",
    lpips: bool | Any = True,
    recorder=None,
    layout=None,
    device: str | None = None,
) -> EvalResult:
    """Run every metric that its inputs and weights allow; the rest are listed in ``skipped`` with why.

    edited, source: uint8 (F, H, W, 3) or float (F, 3, H, W) in [-1, 1], same shape (source = the
    frames that were edited, at the edit's size). masks: bool (R, F, H, W); prompt: the target prompt;
    region_prompts: one per region ("" = not edited). clip / pickscore: a model id or folder to load, a
    scorer object, or None to skip. flow: "dis" (default) or "raft" (falls back to DIS, with the reason
    in ``skipped["flow_raft"]``, when RAFT cannot load). lpips: True to try the lpips package, a loaded
    LPIPS model, or False. recorder + layout (from ``pipe(..., record_attention=True)``): attention mass.
    """
    edited, source, masks, region_prompts, names = _check_inputs(edited, source, masks, region_prompts, region_names)
    result = EvalResult()
    _clip_metrics(result, clip, edited, masks, prompt, region_prompts, names, device)
    _warp_and_q_edit(result, edited, source, flow, device)
    _pickscore(result, pickscore, pickscore_processor, edited, prompt, device)
    _masked_fidelity(result, lpips, edited, source, masks, region_prompts, device)
    _attention_mass(result, recorder, layout, names)
    return result


def _check_inputs(edited, source, masks, region_prompts, region_names):
    """Frames as uint8 of the same shape, masks and region prompts checked, and the region names."""
    edited, source = as_uint8_frames(edited), as_uint8_frames(source)
    _check_same(edited, source, "edited vs source")
    region_prompts = list(region_prompts) if region_prompts is not None else None
    if masks is not None:
        masks = _as_masks(masks)
        if masks.shape[1:] != edited.shape[:3]:
            raise ValueError(f"masks {masks.shape} do not fit frames {edited.shape}")
        if region_prompts is None or len(region_prompts) != len(masks):
            raise ValueError("give one region prompt per mask sequence")
    names = list(region_names) if region_names is not None else (
        [f"region{r}" for r in range(len(region_prompts))] if region_prompts is not None else None)
    return edited, source, masks, region_prompts, names


def _clip_metrics(result: EvalResult, clip, edited, masks, prompt, region_prompts, names, device) -> None:
    """CLIP-T, CLIP-F (adjacent and all pairs) and instance accuracy, or why each was skipped."""
    metrics, skipped = result.metrics, result.skipped
    scorer, reason = _load_scorer(clip, "CLIP", None, device)
    if scorer is None:
        skipped.update({name: reason for name in CLIP_METRICS})
        return
    result.details["clip_model"] = getattr(scorer, "name", type(scorer).__name__)
    if prompt:
        metrics["clip_t"] = clip_text_score(scorer, edited, prompt)
    else:
        skipped["clip_t"] = "needs the target prompt"
    if len(edited) >= 2:
        metrics.update(clip_frame_consistency(scorer, edited))
    else:
        skipped["clip_f"] = skipped["clip_f_all_pairs"] = "needs at least 2 frames"
    edited_count = sum(1 for p in region_prompts or [] if is_edited(p))
    if masks is None:
        skipped["instance_accuracy"] = "needs region masks and prompts"
    elif edited_count < 2:
        skipped["instance_accuracy"] = f"needs at least 2 edited regions, got {edited_count}"
    else:
        acc = instance_accuracy(scorer, edited, masks, region_prompts, names)
        metrics["instance_accuracy"] = acc["accuracy"]
        result.details["instance_accuracy"] = acc


def _warp_and_q_edit(result: EvalResult, edited, source, flow: str, device) -> None:
    """Warp-Err on the source's optical flow (RAFT falling back to DIS), then Q-edit = CLIP-T / Warp-Err."""
    metrics, skipped = result.metrics, result.skipped
    if len(edited) < 2:
        skipped["warp_err"] = "needs at least 2 frames"
    elif min(edited.shape[1:3]) < DIS_MIN_SIZE:
        skipped["warp_err"] = f"frames smaller than {DIS_MIN_SIZE}x{DIS_MIN_SIZE} pixels"
    else:
        backend = flow
        try:
            flows = optical_flow(source, backend, device)
        except WeightsUnavailable as err:
            if backend == "dis":
                raise
            skipped[f"flow_{backend}"] = f"{err}; used OpenCV DIS instead"
            backend = "dis"
            flows = optical_flow(source, backend)
        warp = warp_error(edited, flows=flows)
        warp["flow"] = result.flow = backend
        metrics["warp_err"] = warp["warp_err"]
        result.details["warp_err"] = warp
    if "clip_t" in metrics and "warp_err" in metrics and metrics["warp_err"] > 0:
        metrics["q_edit"] = metrics["clip_t"] / metrics["warp_err"]
    else:
        missing = [name for name in ("clip_t", "warp_err") if name in skipped]
        skipped["q_edit"] = f"needs {' and '.join(missing)} (skipped)" if missing else "Warp-Err is 0"


def _pickscore(result: EvalResult, pickscore, pickscore_processor: str, edited, prompt, device) -> None:
    """PickScore of the edited frames against the target prompt, or why it was skipped."""
    if not prompt:
        result.skipped["pickscore"] = "needs the target prompt"
        return
    picker, reason = _load_scorer(pickscore, "PickScore", pickscore_processor, device)
    if picker is None:
        result.skipped["pickscore"] = reason
    else:
        result.metrics["pickscore"] = pick_score(picker, edited, prompt)


def _masked_fidelity(result: EvalResult, lpips, edited, source, masks, region_prompts, device) -> None:
    """PSNR, SSIM and LPIPS inside and outside the edited regions, or why each was skipped."""
    metrics, skipped = result.metrics, result.skipped
    lpips_names = ("lpips_inside", "lpips_outside")
    if masks is None:
        for name in ("psnr_inside_db", "psnr_outside_db", "ssim_inside", "ssim_outside", *lpips_names):
            skipped[name] = "needs region masks and prompts"
        return
    lpips_model = None
    if lpips is True:
        try:
            lpips_model = load_lpips()
            if device:
                lpips_model = lpips_model.to(device)
        except WeightsUnavailable as err:
            skipped.update({name: str(err) for name in lpips_names})
    elif lpips is False or lpips is None:
        skipped.update({name: "LPIPS disabled" for name in lpips_names})
    else:
        lpips_model = lpips
    union = edited_union(masks, region_prompts)
    values, notes = masked_fidelity(source, edited, union, lpips_model)
    metrics.update(values)
    result.notes.extend(notes)
    result.details["edited_area_share"] = float(union.mean())
    for side in ("inside", "outside"):
        if f"psnr_{side}_db" not in values:
            reason = "no edited region" if side == "inside" else "the edited regions cover every pixel"
            for name in (f"psnr_{side}_db", f"ssim_{side}", f"lpips_{side}"):
                skipped.setdefault(name, reason)


def _attention_mass(result: EvalResult, recorder, layout, names) -> None:
    """Share of each region's cross-attention that falls inside its mask, or why it was skipped."""
    if recorder is None or layout is None:
        result.skipped["attention_mass"] = "needs the attention recorder and layout of the edit (record_attention=True)"
    elif not recorder.maps:
        result.skipped["attention_mass"] = "the attention recorder is empty"
    else:
        mass = attention_mass(recorder, layout, names)
        result.metrics["attention_mass"] = mass["mean"]
        result.details["attention_mass"] = mass


def format_table(result: EvalResult | dict) -> str:
    """A small two-column text table of the metrics, then the skipped ones with their reasons."""
    data = result.to_dict() if isinstance(result, EvalResult) else result
    rows = [(name, f"{value:.4f}" if isinstance(value, float) else str(value)) for name, value in data["metrics"].items()]
    width = max([len(name) for name, _ in rows] + [len(n) for n in data["skipped"]] + [6])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    if data.get("flow"):
        lines.append(f"{'flow':<{width}}  {data['flow']}")
    if data["skipped"]:
        lines.append("skipped:")
        by_reason: dict[str, list[str]] = {}
        for name, reason in data["skipped"].items():
            by_reason.setdefault(reason, []).append(name)
        lines += [f"  {', '.join(names)}: {reason}" for reason, names in by_reason.items()]
    for note in data.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def evaluate_files(edited: str | Path, source: str | Path | None = None, config: str | Path | None = None, *,
                   prompt: str | None = None, regions: list[str] | None = None, resize: bool = False,
                   out: str | Path | None = None, clip: str | None = None, pickscore: str = DEFAULT_PICKSCORE,
                   flow: str = "dis", device: str | None = None) -> tuple[EvalResult, dict, Path]:
    """`videograin eval`: the metrics of an edited video (a file, a frames folder or an edit's output
    folder) against its source, read from disk by ``eval.inputs.load``, written as JSON to ``out``
    (default: metrics.json in an output folder, else beside the edit), which may not be one of the
    inputs. Returns (the result, the JSON record, where it was written)."""
    from ..loading import resolve_device
    from ..media import write_json
    from ..outputs import check_output_file
    from .inputs import load

    inputs = load(edited, source, config, prompt, regions, resize)
    read = [Path(p) for p in (inputs.edited_path, inputs.source_path, config) if p is not None]
    if Path(edited).is_dir():  # an edit's output folder: its files are the edit, only metrics JSON may go there
        read += [p for p in Path(edited).iterdir() if p.suffix != ".json" or p.name == "run.json"]
    out = check_output_file(Path(out) if out else inputs.default_out, read, "--out")
    evaluation = evaluate(
        inputs.edited, inputs.source, inputs.masks, inputs.prompt, inputs.region_prompts, inputs.region_names,
        clip=clip or DEFAULT_CLIP, pickscore=pickscore, flow=flow, device=resolve_device(device),
    )
    record = evaluation.to_dict()
    count, height, width = inputs.edited.shape[:3]
    record["inputs"] = {"edited": inputs.edited_path.resolve(), "source": Path(inputs.source_path).resolve(),
                        "prompt": inputs.prompt, "regions": inputs.region_names, "frames": count, "size": [width, height]}
    record["notes"].extend(inputs.notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    return evaluation, record, out

