"""The benchmark's tables (markdown) and contact sheets, written beside its JSON results."""

from __future__ import annotations

import numpy as np

from videograin import viz

from .cases import Case
from .methods import Method


def part_attention_markdown(rows: list[dict], method: Method, steps: int) -> str:
    lines = [f"Attention mass of each part prompt inside its region (share of its tokens' cross-attention; "
             f"{method.name}: self {method.self_strength}, cross {method.cross_strength}, mean of the first "
             f"{method.modulation(steps).steps} of {steps} steps, blend on), per UNet level:", "",
             "| case | part prompt | level (tokens per frame) | region's share of the tokens | without modulation "
             "| with modulation |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['prompt']} | {r['level']} ({r['tokens']}) | {r['area_share']:.2f} "
              f"| {r['unmodulated']:.2f} | {r['modulated']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def sweep_markdown(rows: list[dict], cases: list[Case], keys: tuple[str, str] = ("instance_accuracy", "leakage")) -> str:
    labels = " | ".join(k.replace("_", " ") for k in keys)
    lines = [f"Modulation strengths on the held-out cases ({', '.join(c.name for c in cases)}), blend on, best first:",
             "", f"| self | cross | fraction of steps | {labels} |", "|---|---|---|---|---|"]
    lines += [(f"| {r['self_strength']} | {r['cross_strength']} | {r['fraction']} " if r["self_strength"] is not None
               else "| baseline (no modulation) | | ") + f"| {_fmt(r[keys[0]])} | {_fmt(r[keys[1]])} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def markdown(results: dict) -> str:
    summary, per_case, cases = results["summary"], results["per_case"], list(results["cases"])
    lines = ["| method | instance acc. (all / instance cases) | instance acc., latents only | colour acc. | leakage "
             "| background change (latents only) | temporal stability | kept acc. | background acc. (kept shapes "
             "change, latents only) | seconds / clip |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {_fmt(s['instance_accuracy'])} / {_fmt(s['instance_accuracy_instance_cases'])} "
                     f"| {_fmt(s.get('instance_accuracy_latents'))} | {_fmt(s['color_accuracy'])} | {_fmt(s['leakage'])} "
                     f"| {_fmt(s['background_change'])} ({_fmt(s['background_change_latents'])}) | {_fmt(s['temporal_stability'])} "
                     f"| {_fmt(s['kept_accuracy'])} | {_fmt(s['background_accuracy'])} "
                     f"({_fmt(s['kept_shapes_change'])}, {_fmt(s['kept_shapes_change_latents'])}) | {s['seconds']:.1f} |")
    if any(s.get("part_accuracy") is not None for s in summary.values()):
        lines += ["", "Part cases: | method | part acc. | part leakage | rest of the shape kept |", "|---|---|---|---|"]
        lines += [f"| {name} | {_fmt(s['part_accuracy'])} | {_fmt(s['part_leakage'])} | {_fmt(s['part_kept_accuracy'])} |"
                  for name, s in summary.items()]
    lines += ["", "Per case: part accuracy, else instance accuracy (background case: background accuracy) / share of unedited pixels "
              "changed (latents only: decoded without the pixel composite)", "",
              "| method | " + " | ".join(cases) + " |", "|---|" + "---|" * len(cases)]
    for name, rows in per_case.items():
        cells = []
        for c in cases:
            r = rows[c]
            acc = next((r.get(k) for k in ("part_accuracy", "instance_accuracy", "background_accuracy")
                        if r.get(k) is not None), None)
            cells.append(f"{_fmt(acc)} / {_fmt(r['background_change'])} ({_fmt(r['background_change_latents'])})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def contact_sheet(outputs: dict, sources: dict, masks: dict | None = None, picks=(0, 7), zoom: int = 2) -> np.ndarray:
    """Rows: source (and masks), then one per variant; columns: cases, each showing frames ``picks``."""

    def row(clips):
        tiles = []
        for clip in clips:
            frames = [np.repeat(np.repeat(clip[min(p, len(clip) - 1)], zoom, 0), zoom, 1) for p in picks]
            gap = np.full((frames[0].shape[0], 1, 3), 255, np.uint8)
            tiles.append(np.concatenate(sum(([f, gap] for f in frames), [])[:-1], axis=1))
        return np.stack(tiles)  # (cases, h, w, 3): one "clip" whose frames are the cases

    rows = [row([sources[c] for c in sources])]
    if masks is not None:
        rows.append(row([masks[c] for c in sources]))
    rows += [row([outputs[v][c] for c in sources]) for v in outputs]
    return viz.grid(rows, max_columns=len(sources), gap=4)

