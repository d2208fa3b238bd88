"""Shape-video editing benchmark on the toy models: does ST-Layout attention separate same-class instances?

    python -m toyworld.bench --all                  # every published table, into toyworld/results/{sd,parts,wan}
    python -m toyworld.bench --all --jobs sd wan_random   # some of them (names: ALL below)
    python -m toyworld.bench --quick                # two instance cases, baseline vs videograin_tuned
    python -m toyworld.bench [--backbone wan] [--model DIR] [--parts] [--sweep] [--random-cases N] --out DIR

The cases (:mod:`toyworld.cases`) are two-shape clips with exact geometry; the methods
(:mod:`toyworld.methods`), each with latent blend on and off:
  baseline    modulation=None: plain inversion + target prompt (regional text embeddings still on)
  cross_only  ST-Layout modulation of cross-attention only (self_strength 0)
  self_only   ST-Layout modulation of self-attention only (cross_strength 0)
  videograin  both, at the paper's strengths (self 0.3, cross 1.0, first 30% of the steps)
  videograin_tuned  both, at the model's recommended strengths (its videograin.json: the sweep's pick)
  reatco      ReAtCo: RAD guidance on the first 50% of the steps, no modulation; its "+blend" variant
              uses IRJS (ReAtCo's own way to keep the invariant region) instead
  videograin+reatco  videograin's modulation and ReAtCo's RAD (and IRJS with "+blend")
(plus any variants given with --extra NAME:SELF:CROSS:FRACTION).

Scores (:mod:`toyworld.scoring`), read by the judge (:mod:`toyworld.judge`) from the uint8 output frames:
  instance_accuracy   share of (edited shape region, frame) pairs where the shape found in the region
                      has the region prompt's colour and class
  instance_accuracy_latents  the same for the edited latents decoded without the pixel composite
  color_accuracy      the same, colour only (any class)
  leakage             share of those pairs where the region shows another region's target colour or class
  background_change   share of pixels outside every edited region that changed by more than 25/255 in
                      some channel ("latents only": decoded without the pixel composite)
  kept_shapes_change  the same in the background case, where the unedited pixels are the kept shapes
  temporal_stability  share of frames in which an edited region shows its most frequent identity
  kept_accuracy       share of (kept shape region, frame) pairs still showing the source shape
  background_accuracy the background case: share of frames whose background has the target colour
  part_accuracy       part cases: share of (part region, frame) pairs whose shape carries the region
                      prompt's part (kind and colour)
  part_leakage        share of (other shape, frame) pairs where another shape shows that part
  part_kept_accuracy  share of (part region, frame) pairs where the rest of that shape is still the source shape
  seconds             wall-clock seconds of the pipeline call

Every run writes JSON results, a markdown table and a contact sheet into its results folder; nothing
else (the README quotes the tables by hand).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from videograin import formats, media, viz
from videograin.method.sampling import SOLVERS
from videograin.method.settings import INVERSIONS, InversionFree
from videograin.toy import PARTS_MODEL, SD_MODEL, WAN_MODEL

from . import model_label, world
from .cases import (
    CASES,
    FRAMES,
    PART_CASES,
    PART_VALIDATION_CASES,
    QUICK_CASES,
    RANDOM_TEST_SEED,
    RANDOM_VALIDATION_SEED,
    VALIDATION_CASES,
    Case,
    case_inputs,
    random_instance_cases,
    source_prompt,
)
from .methods import METHODS, SWEEP_GRID, WAN_SWEEP_GRID, Method, tuned
from .report import contact_sheet, markdown, part_attention_markdown, sweep_markdown
from .scoring import CHANGE_THRESHOLD, score, summarise, unedited_change

RESULTS = Path(__file__).resolve().parent / "results"
_PUBLISHED_METHODS = ("--methods", "baseline", "cross_only", "videograin", "videograin_tuned", "--no-blend-off")
_PARTS = ("--model", str(PARTS_MODEL))
#: Every published table: (job, results subfolder, module whose ``main`` runs it, its arguments). ``--all``
#: runs them in this order, each with ``--out results/FOLDER --threads N``.
ALL: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("sd_prompts", "sd", "toyworld.sample", ()),
    ("sd_sweep", "sd", "toyworld.bench", ("--sweep",)),
    ("sd", "sd", "toyworld.bench", ()),
    ("sd_random", "sd", "toyworld.bench", ("--random-cases", "32", *_PUBLISHED_METHODS)),
    ("parts_prompts", "parts", "toyworld.sample", _PARTS),
    ("parts_sweep", "parts", "toyworld.bench", (*_PARTS, "--parts", "--sweep")),
    ("parts", "parts", "toyworld.bench", (*_PARTS, "--parts")),
    ("parts_attention", "parts", "toyworld.bench", (*_PARTS, "--parts", "--attention")),
    ("parts_instance_sweep", "parts", "toyworld.bench", (*_PARTS, "--sweep")),
    ("parts_instance", "parts", "toyworld.bench", (*_PARTS, "--extra", "parts_inst:1.0:4.0:0.3", "--methods", "baseline",
                                                   "videograin_tuned", "parts_inst", "--no-blend-off")),
    ("wan_prompts", "wan", "toyworld.sample_wan", ("--guidance", "3")),
    ("wan_random_sweep", "wan", "toyworld.bench", ("--backbone", "wan", "--sweep", "--random-cases", "12", "--grid",
                                                   "0:1:0.5", "0:1:0.3", "0.1:1:0.3", "0:2:0.3", "0.3:2:0.3", "0.3:1:0.3")),
    ("wan_random", "wan", "toyworld.bench", ("--backbone", "wan", "--random-cases", "32", *_PUBLISHED_METHODS)),
    ("long_clip", "long_clip", "toyworld.long_clip", ()),
)
logger = logging.getLogger("toyworld.bench")


def run_case(pipe, case: Case, method: Method, blend: bool, steps: int, guidance: float, frames: int = FRAMES,
             options: dict | None = None, inputs: tuple | None = None):
    """One edit of ``case``, scored; ``options``: more pipeline arguments (solver, inversion, ...);
    ``inputs``: its clip, region and shape masks (default ``case_inputs(case, frames)``)."""
    source, masks, shape_masks = inputs if inputs is not None else case_inputs(case, frames)
    clock = time.perf_counter()
    out = pipe(source, masks, case.prompt, [r.prompt for r in case.regions],
               source_prompt=source_prompt(case), negative_prompt="", num_inference_steps=steps,
               guidance_scale=guidance, modulation=method.modulation(steps), blend=blend,
               reatco=method.reatco_spec(steps, blend), generator=torch.Generator().manual_seed(0), output_type="np",
               **(options or {}))
    seconds = time.perf_counter() - clock
    output = formats.output_to_uint8(out.frames[0])
    result = score(case, source, output, masks, shape_masks)
    result["seconds"] = round(seconds, 2)
    # what the latents alone give (the papers' output): decoded without the pixel composite
    plain = media.to_uint8(pipe.decode_latents(out.latents)) if blend else output  # no composite without blend
    result["background_change_latents"] = unedited_change(case, source, plain, masks)
    result["instance_accuracy_latents"] = score(case, source, plain, masks, shape_masks)["instance_accuracy"]
    return output, result


def variant_name(method: Method, blend: bool) -> str:
    return f"{method.name}+blend" if blend else method.name


def run(pipe, cases: list[Case], methods: list[Method], blends=(True, False), steps: int = 25,
        guidance: float = 7.5, frames: int = FRAMES, log=print, options: dict | None = None):
    """Returns (results dict, outputs {variant: {case: uint8 frames}}, sources {case: uint8 frames}).
    ``options``: more pipeline arguments for every edit (``run_case``)."""
    per_variant, outputs = {}, {}
    sources = {c.name: case_inputs(c, frames)[0] for c in cases}
    for method in methods:
        for blend in blends:
            name = variant_name(method, blend)
            per_variant[name], outputs[name] = {}, {}
            for case in cases:
                out, res = run_case(pipe, case, method, blend, steps, guidance, frames, options)
                per_variant[name][case.name] = res
                outputs[name][case.name] = out
                log(f"{name:>20} {case.name:>16}: acc {res['instance_accuracy']} leak {res['leakage']} "
                    f"bg {res['background_change']} kept {res['kept_accuracy']} bgacc {res['background_accuracy']} "
                    f"{res['seconds']}s {res['found']}")
    summary = {name: summarise(per_variant[name], cases) for name in per_variant}
    settings = {"steps": steps, "guidance_scale": guidance, "frames": frames, "size": world.SIZE,
                "change_threshold": CHANGE_THRESHOLD, "torch_threads": torch.get_num_threads(),
                **{k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in (options or {}).items()},
                "methods": {m.name: {"self_strength": m.self_strength, "cross_strength": m.cross_strength,
                                     "modulated_steps": None if m.self_strength is None else m.modulation(steps).steps,
                                     "rad_steps": m.reatco_spec(steps, True).steps if m.reatco else None}
                            for m in methods}}
    cases_info = {c.name: {"level": c.level, "prompt": c.prompt, "source_prompt": source_prompt(c), "note": c.note,
                           "regions": [{"name": r.name, "prompt": r.prompt, "mask": r.mask} for r in c.regions]}
                  for c in cases}
    results = {"settings": settings, "cases": cases_info, "summary": summary, "per_case": per_variant}
    return results, outputs, sources


def sweep(pipe, cases: list[Case], grid=SWEEP_GRID, steps: int = 25, guidance: float = 7.5, log=print,
          keys: tuple[str, str] = ("instance_accuracy", "leakage"), frames: int = FRAMES,
          options: dict | None = None) -> list[dict]:
    """Score every (self, cross, fraction) of ``grid`` on ``cases`` with blend on: one row each, with
    the accuracy and leakage scores named by ``keys`` averaged over the cases, best first
    (ties: the earlier grid entry, i.e. the weaker modulation). The baseline (no modulation) is a row
    with strengths None."""
    rows = []
    for self_strength, cross_strength, fraction in ((None, None, None), *grid):
        method = Method(f"s{self_strength}_c{cross_strength}_f{fraction}", self_strength, cross_strength, fraction)
        results, _, _ = run(pipe, cases, [method], (True,), steps, guidance, frames, log=lambda *_: None,
                            options=options)
        row = {"self_strength": self_strength, "cross_strength": cross_strength, "fraction": fraction,
               **{k: results["summary"][variant_name(method, True)][k] for k in keys}}
        log(row)
        rows.append(row)
    return sorted(rows, key=lambda r: (-r[keys[0]], r[keys[1]] or 0.0))


def part_attention(pipe, cases: list[Case], method: Method, steps: int = 25, guidance: float = 7.5,
                   frames: int = FRAMES) -> list[dict]:
    """Where each part prompt's cross-attention goes, per UNet level (the reason a part is drawn or not).

    For each case's part region (``mask`` "dot" / "stripe"): the share of its prompt tokens' attention
    that falls inside the region (``metrics.attention_mass``), with ``method``'s modulation and without
    it (maps of the same latents recomputed unmodulated), averaged over the modulated steps, beside the
    region's share of the tokens (what flat attention gives). Blend on. One row per (case, level).
    """
    from videograin.eval.metrics import attention_mass

    modulated = method.modulation(steps).steps
    rows = []
    for case in cases:
        source, masks, _ = case_inputs(case, frames)
        out = pipe(source, masks, case.prompt, [r.prompt for r in case.regions], source_prompt=source_prompt(case),
                   negative_prompt="", num_inference_steps=steps, guidance_scale=guidance,
                   modulation=method.modulation(steps), blend=True, record_attention="compare",
                   generator=torch.Generator().manual_seed(0), output_type="latent")
        names = [r.name for r in case.regions]
        part = next(r for r in case.regions if r.mask in world.PARTS)
        sizes = {grid.index: f"{grid.height}x{grid.width}" for grid in out.layout.levels.values()}
        with_mod, without = (attention_mass(rec, out.layout, names)["regions"][part.name]
                             for rec in (out.recorder, out.recorder.unmodulated))
        for level, values in with_mod["per_level"].items():
            rows.append({"case": case.name, "region": part.name, "prompt": part.prompt, "level": int(level),
                         "tokens": sizes[int(level)], "area_share": round(with_mod["area_share"][level], 4),
                         "unmodulated": round(float(np.nanmean(without["per_level"][level][:modulated])), 4),
                         "modulated": round(float(np.nanmean(values[:modulated])), 4)})
    return rows


def run_all(jobs: list[str], threads: int, results: Path = RESULTS) -> dict[str, float]:
    """Run the ``ALL`` jobs named in ``jobs`` (all when empty) into ``results``; their seconds, also
    written to ``results/times.json``."""
    names = [name for name, *_ in ALL]
    unknown = set(jobs) - set(names)
    if unknown:
        raise SystemExit(f"unknown job(s) {sorted(unknown)}; the jobs are {names}")
    times_file = results / "times.json"
    times = json.loads(times_file.read_text(encoding="utf-8")) if times_file.is_file() else {}
    for name, folder, module, argv in ALL:
        if jobs and name not in jobs:
            continue
        logger.info("bench --all: %s", name)
        clock = time.perf_counter()
        importlib.import_module(module).main([*argv, "--out", str(results / folder), "--threads", str(threads)])
        times[name] = {"seconds": round(time.perf_counter() - clock), "threads": threads,
                       "command": " ".join(["python -m", module, *(os.path.relpath(a) if os.path.isabs(a) else a
                                                                    for a in argv), "--out", f"toyworld/results/{folder}"])}
        media.write_json(times_file, times)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--all", action="store_true", help="every published table (ALL), into toyworld/results/")
    p.add_argument("--jobs", nargs="*", default=[], help="with --all: only these jobs of ALL")
    p.add_argument("--backbone", choices=("sd", "wan"), default="sd",
                   help="the toy model's architecture: sd (UNet, videograin.toy.SD_MODEL, 8 frames) or wan "
                        "(DiT, videograin.toy.WAN_MODEL, 9 frames; ReAtCo rows left out)")
    p.add_argument("--model", default=None, help="model folder (default: the backbone's toy model)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: toyworld/results/sd, parts (with --parts) or wan)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's recommended (its videograin.json)")
    p.add_argument("--quick", action="store_true", help="two instance cases, baseline and videograin_tuned, blend on")
    p.add_argument("--cases", nargs="*", help="case names (default: all)")
    p.add_argument("--methods", nargs="*", help="method names (default: all)")
    p.add_argument("--extra", nargs="*", default=[], help="tuned variants NAME:SELF:CROSS:FRACTION")
    p.add_argument("--no-blend-off", action="store_true", help="only run with blend on")
    p.add_argument("--random-cases", type=int, default=0,
                   help="N instance cases drawn by random_instance_cases in place of the fixed ones (the test set; "
                        "with --sweep the held-out set); files named random_*")
    p.add_argument("--sweep", action="store_true",
                   help="score SWEEP_GRID (Wan: WAN_SWEEP_GRID) on the held-out cases, write sweep.json/.md")
    p.add_argument("--grid", nargs="*", default=None, help="with --sweep: these SELF:CROSS:FRACTION in place of the grid")
    p.add_argument("--parts", action="store_true",
                   help="the part-level cases (PART_CASES; with --sweep PART_VALIDATION_CASES), on a model of the world "
                        "with parts; writes parts_results.json/.md, parts_contact_sheet.png (parts_sweep.* with --sweep)")
    p.add_argument("--attention", action="store_true",
                   help="with --parts: each part prompt's attention mass inside its region per UNet level, with and "
                        "without modulation (the first --extra method, else videograin_tuned); writes "
                        "parts_attention.json/.md")
    p.add_argument("--solver", choices=tuple(SOLVERS), default=None, help="the samplers' step rule (default: the model's)")
    p.add_argument("--inversion", choices=INVERSIONS, default=None,
                   help="ode: invert, then edit; none: inversion-free (flow models; default: the model's)")
    p.add_argument("--skip", type=float, default=None, help="with --inversion none: the share of the steps skipped")
    p.add_argument("--source-guidance", type=float, default=None,
                   help="with --inversion none: the source velocity's guidance (default: the edit's)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.all:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        times = run_all(args.jobs, args.threads)
        print("\n".join(f"{name}: {t['seconds']} s" for name, t in times.items()))
        return 0
    if args.jobs:
        p.error("--jobs picks jobs of --all: add --all")
    if args.parts and args.quick:
        p.error("--parts has no --quick")
    if args.attention and not args.parts:
        p.error("--attention measures the part cases: add --parts")
    if args.grid and not args.sweep:
        p.error("--grid is the grid of --sweep: add --sweep")
    if args.random_cases and (args.parts or args.quick):
        p.error("--random-cases draws instance cases: it takes no --parts or --quick")
    wan = args.backbone == "wan"
    if wan:
        from .sample_wan import load_pipeline as load
        from .wan_model import FRAMES as frames
        default_model = WAN_MODEL
    else:
        from .model import load_pipeline as load
        frames, default_model = FRAMES, SD_MODEL
    args.model = args.model or str(default_model)
    tuned_method = tuned(args.model)
    if args.guidance is None:
        from videograin.config.preflight import model_recommended

        args.guidance = model_recommended(args.model).guidance_scale
    options = {"solver": args.solver, "inversion": args.inversion}
    if args.skip is not None or args.source_guidance is not None:
        options["inversion_free"] = InversionFree(**({} if args.skip is None else {"skip": args.skip}),
                                                  source_guidance=args.source_guidance)
    options = {name: value for name, value in options.items() if value is not None}
    args.out = args.out or RESULTS / ("parts" if args.parts else args.backbone)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    prefix = "parts_" if args.parts else ("random_" if args.random_cases else "")
    if args.sweep:
        held_out = list(PART_VALIDATION_CASES if args.parts else (random_instance_cases(
            args.random_cases, RANDOM_VALIDATION_SEED) if args.random_cases else VALIDATION_CASES))
        keys = ("part_accuracy", "part_leakage") if args.parts else ("instance_accuracy", "leakage")
        grid = WAN_SWEEP_GRID if wan and not args.parts else SWEEP_GRID
        if args.grid:
            grid = tuple(tuple(float(x) for x in spec.split(":")) for spec in args.grid)
        rows = sweep(load(args.model), held_out, grid, steps=args.steps, guidance=args.guidance, keys=keys, frames=frames,
                     options=options)
        table = sweep_markdown(rows, held_out, keys)
        media.write_json(args.out / f"{prefix}sweep.json", {"model": model_label(args.model), "steps": args.steps,
                                                          "guidance_scale": args.guidance, "rows": rows})
        media.write_text(args.out / f"{prefix}sweep.md", table)
        print(table)
        return 0

    methods = [m for m in (*METHODS, tuned_method) if not (wan and m.reatco)]  # ReAtCo is not benchmarked on Wan
    extra = [Method(name, float(s), float(c), float(f)) for name, s, c, f in (spec.split(":") for spec in args.extra)]
    methods += extra
    if args.attention:
        method = extra[0] if extra else tuned_method
        rows = part_attention(load(args.model), list(PART_CASES), method, args.steps, args.guidance, frames)
        table = part_attention_markdown(rows, method, args.steps)
        media.write_json(args.out / "parts_attention.json", {"model": model_label(args.model), "steps": args.steps,
                                                           "guidance_scale": args.guidance, "rows": rows})
        media.write_text(args.out / "parts_attention.md", table)
        print(table)
        return 0
    all_cases = list(PART_CASES if args.parts else (
        random_instance_cases(args.random_cases, RANDOM_TEST_SEED) if args.random_cases else CASES))
    cases = all_cases
    blends = (True, False)
    if args.quick:
        cases = [c for c in CASES if c.name in QUICK_CASES]
        methods = [m for m in methods if m.name in ("baseline", tuned_method.name)]
        blends = (True,)
    if args.cases:
        cases = [c for c in all_cases if c.name in args.cases]
    if args.methods:
        methods = [m for m in methods if m.name in args.methods]
    if args.no_blend_off:
        blends = (True,)

    pipe = load(args.model)
    results, outputs, sources = run(pipe, cases, methods, blends, args.steps, args.guidance, frames, options=options)
    results["settings"].update(model=model_label(args.model), backbone=args.backbone)
    settings = results["settings"]
    table = (f"Editing benchmark ({settings['steps']} steps, guidance {settings['guidance_scale']}, {frames} frames "
             f"of {world.SIZE}x{world.SIZE}; `{prefix}contact_sheet.png`):\n\n" + markdown(results))
    masks = {c.name: viz.mask_overlay(sources[c.name], case_inputs(c, frames)[1]) for c in cases}
    media.write_png(args.out / f"{prefix}contact_sheet.png", contact_sheet(outputs, sources, masks))
    media.write_json(args.out / f"{prefix}results.json", results)
    media.write_text(args.out / f"{prefix}results.md", table)
    print(table)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
