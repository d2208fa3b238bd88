"""Scores of one edited clip, read by the judge (:mod:`toyworld.judge`) from its uint8 frames, and their
means over cases (the score names are listed in :mod:`toyworld.bench`)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from . import judge
from .cases import Case, region_target

CHANGE_THRESHOLD = 25  # /255, max over channels


def score(case: Case, source: np.ndarray, output: np.ndarray, masks: np.ndarray, shape_masks: np.ndarray) -> dict:
    """Judge one edited clip. source, output: uint8 (F, H, W, 3); masks: the case's region masks;
    shape_masks: the source shapes' exact masks (S, F, H, W). A half of a shape counts as right in a
    frame when most of the source shape's pixels in it show the target colour (``judge.color_share``)."""
    detections = judge.detect_video(output)
    targets = [region_target(case, r) for r in case.regions]
    frames = len(output)
    correct, colour_ok, leaked, stable, kept, bg_ok, found = [], [], [], [], [], [], {}
    part_ok, part_leaked, part_kept = [], [], []
    shape_targets = [t[1] for t in targets if t[0] == "shape"]
    for r, (region, (what, target)) in enumerate(zip(case.regions, targets)):
        if what in ("shape", "keep"):
            ids = []
            for f in range(frames):
                d = judge.in_region(detections[f][1], masks[r, f])
                ids.append(None if d is None else d.identity)
            found[region.name] = [None if i is None else " ".join(i) for i in ids]
            if what == "keep":
                kept += [i == target for i in ids]
                continue
            correct += [i == target for i in ids]
            colour_ok += [i is not None and i[0] == target[0] for i in ids]
            others = [t for t in shape_targets if t != target]
            if others:
                for i in ids:
                    colour_leak = i is not None and i[0] != target[0] and any(i[0] == o[0] for o in others)
                    kind_leak = i is not None and i[1] != target[1] and any(i[1] == o[1] for o in others)
                    leaked.append(colour_leak or kind_leak)
            mode = Counter(ids).most_common(1)[0][1]
            stable.append(mode / frames)
        elif what in ("part", "keep_part"):
            pixels = masks[r] & shape_masks[region.shape]
            ids = [judge.color_share(output[f], pixels[f], target) > 0.5 for f in range(frames)]
            found[region.name] = [target if ok else "other" for ok in ids]
            if what == "keep_part":
                kept += ids
                continue
            correct += ids
            colour_ok += ids
            stable.append(max(ids.count(True), ids.count(False)) / frames)
        elif what == "add_part":
            shape = case.scene.shapes[region.shape]
            here = [judge.in_region(detections[f][1], shape_masks[region.shape, f]) for f in range(frames)]
            part_ok += [d is not None and d.part_identity == target for d in here]
            part_kept += [d is not None and d.identity == (shape.color, shape.kind) for d in here]
            found[region.name] = [None if d is None or d.part is None else " ".join(d.part_identity) for d in here]
            for o, other in enumerate(case.scene.shapes):
                if o != region.shape and (other.part_color, other.part) != target:
                    there = [judge.in_region(detections[f][1], shape_masks[o, f]) for f in range(frames)]
                    part_leaked += [d is not None and d.part_identity == target for d in there]
        elif what == "background":
            bg_ok += [detections[f][0] == target for f in range(frames)]
            found[region.name] = [detections[f][0] for f in range(frames)]
    change = unedited_change(case, source, output, masks)

    def mean(x):
        return None if not x else round(float(np.mean(x)), 4)

    return {
        "instance_accuracy": mean(correct),
        "color_accuracy": mean(colour_ok),
        "leakage": mean(leaked),
        "background_change": change,
        "temporal_stability": mean(stable),
        "kept_accuracy": mean(kept),
        "background_accuracy": mean(bg_ok),
        "part_accuracy": mean(part_ok),
        "part_leakage": mean(part_leaked),
        "part_kept_accuracy": mean(part_kept),
        "found": found,
    }


def unedited_change(case: Case, source: np.ndarray, output: np.ndarray, masks: np.ndarray) -> float | None:
    """Share of the pixels outside every edited region that changed by more than CHANGE_THRESHOLD."""
    edited = np.zeros(masks.shape[1:], dtype=bool)
    for r, region in enumerate(case.regions):
        if region.edited:
            edited |= masks[r]
    if edited.all():
        return None
    diff = np.abs(output.astype(np.int16) - source.astype(np.int16)).max(-1) > CHANGE_THRESHOLD
    return round(float(diff[~edited].mean()), 4)


SUMMARY_KEYS = ("instance_accuracy", "leakage", "background_change", "temporal_stability", "seconds")
PART_KEYS = ("part_accuracy", "part_leakage", "part_kept_accuracy")


def summarise(per_case: dict[str, dict], cases: list[Case]) -> dict:
    """Means over cases of each score (cases where it is defined), plus instance-level-only accuracy.

    ``background_change`` (and ``background_change_latents``, decoded without the pixel composite)
    averages the cases that keep the background; in the background case the unedited pixels are the
    kept shapes, reported as ``kept_shapes_change`` (``kept_shapes_change_latents``).
    ``instance_accuracy_latents``: instance accuracy of the latents decoded without the composite.
    """
    out = {}
    changes = ("background_change", "background_change_latents")
    for key in SUMMARY_KEYS + ("background_change_latents", "instance_accuracy_latents", "color_accuracy",
                               "kept_accuracy", "background_accuracy", *PART_KEYS):
        values = [per_case[c.name][key] for c in cases
                  if per_case[c.name].get(key) is not None and (key not in changes or c.level != "background")]
        out[key] = None if not values else round(float(np.mean(values)), 4)
    for key in changes:
        kept = [per_case[c.name][key] for c in cases if c.level == "background"]
        out[key.replace("background", "kept_shapes")] = None if not kept else round(float(np.mean(kept)), 4)
    inst = [per_case[c.name]["instance_accuracy"] for c in cases if c.level == "instance"]
    out["instance_accuracy_instance_cases"] = None if not inst else round(float(np.mean(inst)), 4)
    return out
