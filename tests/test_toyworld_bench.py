"""The toy benchmark: its cases, scores and quick runs on the shipped toy models, and the published
Wan numbers reproduced."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from toyworld import bench, judge, world
from toyworld.cases import (CASES, FRAMES, PART_CASES, PART_VALIDATION_CASES, QUICK_CASES, RANDOM_TEST_SEED,
                            RANDOM_VALIDATION_SEED, VALIDATION_CASES, case_inputs, random_instance_cases, region_target)
from toyworld.methods import METHODS, Method, tuned
from toyworld.scoring import score
from videograin.toy import PARTS_MODEL, SD_MODEL, WAN_MODEL


needs_model = pytest.mark.skipif(not (SD_MODEL / "model_index.json").is_file(), reason="the SD toy model is not there")

needs_wan_model = pytest.mark.skipif(not (WAN_MODEL / "model_index.json").is_file(),
                                     reason="the Wan toy model is not there")


def test_judge_reads_every_bench_video_exactly():
    for case in CASES + VALIDATION_CASES:
        clip, region_masks, shape_masks = case_inputs(case)
        for f, (bg, found) in enumerate(judge.detect_video(clip)):
            assert bg == case.scene.background
            for s, shape in enumerate(case.scene.shapes):
                d = judge.in_region(found, shape_masks[s, f])
                assert d is not None and d.identity == (shape.color, shape.kind) and (d.mask == shape_masks[s, f]).all()


def _paint(case, source, shape_masks, colors_kinds):
    """The source clip with each shape repainted as (colour, kind) at its place and size in every frame."""
    out = source.copy()
    out[shape_masks.any(0)] = world.BACKGROUNDS[case.scene.background]
    for f in range(len(out)):
        for s, (color, kind) in enumerate(colors_kinds):
            ys, xs = np.nonzero(shape_masks[s, f])
            shape = world.Shape(kind, color, xs.mean() + 0.5, ys.mean() + 0.5, (xs.max() - xs.min() + 1) / 2)
            out[f][world.shape_mask(shape)] = world.COLORS[color]
    return out


def test_scores_of_a_perfect_and_of_a_swapped_edit():
    """The benchmark's scoring on hand-made outputs: the target scene scores 1, a swapped one leaks."""
    case = next(c for c in CASES if c.name == "instance_shapes")
    source, masks, shape_masks = case_inputs(case)
    good = score(case, source, _paint(case, source, shape_masks, [("red", "square"), ("blue", "triangle")]),
                       masks, shape_masks)
    assert good["instance_accuracy"] == 1.0 and good["leakage"] == 0.0 and good["temporal_stability"] == 1.0
    assert good["background_change"] == 0.0
    swapped = score(case, source, _paint(case, source, shape_masks, [("blue", "triangle"), ("red", "square")]),
                          masks, shape_masks)
    assert swapped["instance_accuracy"] == 0.0 and swapped["leakage"] == 1.0


def test_latents_only_accuracy_scores_the_decoded_latents_and_not_the_composite():
    """run_case with blend scores the composite and, apart, the latents decoded without it: a pipe whose
    composite shows the source but whose latents decode to the target edit scores 0 and 1."""
    import torch

    from videograin import media

    case = next(c for c in CASES if c.name == "instance_shapes")
    source, masks, shape_masks = case_inputs(case)
    target = _paint(case, source, shape_masks, [("red", "square"), ("blue", "triangle")])

    class Pipe:
        def __call__(self, *args, **kwargs):
            frames = source.astype(np.float32)[None] / 255  # "np" output: the source untouched
            return type("Out", (), {"frames": frames, "latents": torch.zeros(1)})()

        def decode_latents(self, latents):
            return media.from_uint8(target)

    _, blended = bench.run_case(Pipe(), case, METHODS[0], True, 2, 5.0)
    assert blended["instance_accuracy"] == 0.0 and blended["instance_accuracy_latents"] == 1.0
    _, plain = bench.run_case(Pipe(), case, METHODS[0], False, 2, 5.0)  # no composite: one output
    assert plain["instance_accuracy"] == plain["instance_accuracy_latents"] == 0.0


def test_random_instance_cases_are_seeded_disjoint_well_formed_and_scored_by_their_targets():
    """random_instance_cases: the same cases from the same seed, none shared between the test and the
    held-out seeds; each source (9 frames, as the Wan toy's) holds two identical shapes the judge reads
    exactly; its two targets differ from each other and from the source shape, the prompt names both and
    no place; painting the targets scores 1, the unedited source 0."""
    test = random_instance_cases(24, RANDOM_TEST_SEED)
    assert test == random_instance_cases(24, RANDOM_TEST_SEED)
    held_out = random_instance_cases(24, RANDOM_VALIDATION_SEED)
    assert not {(c.scene, c.motions, c.prompt) for c in test} & {(c.scene, c.motions, c.prompt) for c in held_out}
    for case in test:
        a, b = case.scene.shapes
        assert (a.kind, a.color) == (b.kind, b.color) and a.x < b.x
        targets = [tuple(r.prompt.split()) for r in case.regions[:2]]
        assert targets[0] != targets[1] and (a.color, a.kind) not in targets, case
        assert all(" ".join(t) in case.prompt for t in targets) and "left" not in case.prompt, case
        source, masks, shape_masks = case_inputs(case, 9)
        for f, (bg, found) in enumerate(judge.detect_video(source)):
            assert bg == case.scene.background
            for s in range(2):
                d = judge.in_region(found, shape_masks[s, f])
                assert d is not None and d.identity == (a.color, a.kind) and (d.mask == shape_masks[s, f]).all()
        assert score(case, source, source, masks, shape_masks)["instance_accuracy"] == 0.0
        painted = _paint(case, source, shape_masks, targets)
        assert score(case, source, painted, masks, shape_masks)["instance_accuracy"] == 1.0, case


def test_part_case_halves_and_scores():
    """The part case's halves split the left shape's box in two (top above bottom, nothing shared or
    lost); painting the top half of the circle red scores 1 and keeps the bottom half, painting the
    whole circle red loses the kept half, and the unedited source scores 0."""
    case = next(c for c in CASES if c.name == "part_half")
    source, masks, shape_masks = case_inputs(case)
    names = [r.name for r in case.regions]
    top, bottom = masks[names.index("left_top")], masks[names.index("left_bottom")]
    box = world.box_masks(shape_masks, margin=1)[0]
    assert not (top & bottom).any() and ((top | bottom) == box).all()
    for f in range(len(source)):
        assert np.nonzero(top[f])[0].max() < np.nonzero(bottom[f])[0].min()
        assert abs(int(top[f].sum()) - int(bottom[f].sum())) <= 2 * box[f].any(0).sum()  # halves within a row
    red = np.array(world.COLORS["red"], np.uint8)
    half = source.copy()
    half[top & shape_masks[0]] = red
    good = score(case, source, half, masks, shape_masks)
    assert good["instance_accuracy"] == 1.0 and good["kept_accuracy"] == 1.0 and good["background_change"] == 0.0
    whole = source.copy()
    whole[shape_masks[0]] = red
    assert score(case, source, whole, masks, shape_masks)["kept_accuracy"] == 0.5  # bottom half lost, right kept
    assert score(case, source, source, masks, shape_masks)["instance_accuracy"] == 0.0


def test_part_cases_score_the_intended_result_right_and_the_source_wrong():
    """The world renders what each part case asks for (the target scene: parts added or recoloured,
    instance edits drawn); scored as the output it is right on every frame, with no leakage and the
    rest of the shape kept; the unedited source scores no part accuracy. A target with the part on the
    other shape is leakage."""
    from dataclasses import replace

    def target_scene(case):
        shapes = list(case.scene.shapes)
        for region in case.regions:
            what, target = region_target(case, region)
            s = shapes[region.shape] if region.shape is not None else None
            if what == "add_part":
                shapes[region.shape] = replace(s, part=target[1], part_color=target[0])
            elif what == "shape":
                shapes[region.shape] = replace(s, color=target[0], kind=target[1], part=None, part_color=None)
        return replace(case.scene, shapes=tuple(shapes))

    for case in PART_CASES + PART_VALIDATION_CASES:
        source, masks, shape_masks = case_inputs(case)
        for r, region in enumerate(case.regions):  # the part region lies inside its shape's region
            if region.carries:
                shape_region = next(m for o, m in zip(case.regions, masks) if o.shape == region.shape and o.mask == "box")
                assert masks[r].any() and (masks[r] <= shape_region).all()
        target, _ = world.video(target_scene(case), list(case.motions), FRAMES)
        right = score(case, source, target, masks, shape_masks)
        assert (right["part_accuracy"], right["part_leakage"], right["part_kept_accuracy"]) == (1.0, 0.0, 1.0), case.name
        assert score(case, source, source, masks, shape_masks)["part_accuracy"] == 0.0, case.name
    case = PART_CASES[0]  # the dot drawn on the right circle instead of the left one
    wrong = replace(case.scene, shapes=(case.scene.shapes[0], replace(case.scene.shapes[1], part="dot", part_color="red")))
    source, masks, shape_masks = case_inputs(case)
    leaked = score(case, source, world.video(wrong, list(case.motions), FRAMES)[0], masks, shape_masks)
    assert leaked["part_accuracy"] == 0.0 and leaked["part_leakage"] == 1.0


@needs_model
def test_quick_benchmark_videograin_beats_baseline():
    """Two instance-level cases (same-class shapes edited into different things), blend on, at the
    strengths the demo uses (``tuned(SD_MODEL)``, picked on held-out clips; the paper's default strengths
    beat the baseline by less on this model: README, "Reading the numbers")."""
    from toyworld.model import load_pipeline

    start = time.perf_counter()
    pipe = load_pipeline()
    cases = [c for c in CASES if c.name in QUICK_CASES]
    methods = [m for m in METHODS if m.name == "baseline"] + [tuned(SD_MODEL)]
    results, _, _ = bench.run(pipe, cases, methods, blends=(True,), steps=25, log=lambda *_: None)
    base, vg = results["summary"]["baseline+blend"], results["summary"]["videograin_tuned+blend"]
    assert vg["instance_accuracy"] > base["instance_accuracy"], results["summary"]
    assert time.perf_counter() - start < 180


@pytest.mark.skipif(not (PARTS_MODEL / "model_index.json").is_file(), reason="the parts toy model is not there")
def test_quick_part_case_videograin_beats_baseline():
    """The part case where modulation matters on model_parts (toyworld/README.md, "Parts toy"): the left circle
    becomes a triangle while the right one gains a dot; with the blend, the right one carries the dot
    in more frames at the part-tuned strengths than without modulation, and no other shape does."""
    from toyworld.model import load_pipeline

    pipe = load_pipeline(PARTS_MODEL)
    cases = [c for c in PART_CASES if c.name == "part_and_instance"]
    methods = [m for m in METHODS if m.name == "baseline"] + [Method("parts_tuned", 0.3, 4.0, 0.3)]
    results, _, _ = bench.run(pipe, cases, methods, blends=(True,), steps=25, log=lambda *_: None)
    base, tuned = results["summary"]["baseline+blend"], results["summary"]["parts_tuned+blend"]
    assert tuned["part_accuracy"] > base["part_accuracy"] and tuned["part_leakage"] == 0.0, results["summary"]


@pytest.mark.skipif(not (PARTS_MODEL / "model_index.json").is_file(), reason="the parts toy model is not there")
def test_part_prompt_attention_moves_into_the_part_region_with_modulation():
    """bench.part_attention on model_parts: at every UNet level the part prompt's cross-attention mass
    inside its region (a box of ~6% of the tokens) is about its area share without modulation and
    several times it with the part-tuned modulation (README: 6-12x)."""
    from toyworld.model import load_pipeline

    cases = [c for c in PART_CASES if c.name == "part_add"]
    rows = bench.part_attention(load_pipeline(PARTS_MODEL), cases, Method("parts_tuned", 0.3, 4.0, 0.3))
    assert sorted(r["level"] for r in rows) == [0, 1, 2]
    for r in rows:
        assert 0.02 < r["area_share"] < 0.15, r
        assert r["unmodulated"] < 2 * r["area_share"] and r["modulated"] > 4 * r["area_share"], r


WAN_RESULTS = Path(bench.__file__).parent / "results" / "wan"


@needs_wan_model
def test_the_wan_toy_reproduces_its_published_random_case_results():
    """The shipped Wan toy (videograin.toy.WAN_MODEL, moved from results_wan/.../same_color_3000/model)
    gives, on the first three of the 32 random instance cases, exactly the per-case judge results its
    published table was computed from (random_results.json): baseline and cross-attention modulation
    (the model's recommended strengths: self 0, cross 1). Run at the table's 2 torch threads."""
    import json

    import torch

    from toyworld.sample_wan import load_pipeline
    from toyworld.wan_model import FRAMES

    published = json.loads((WAN_RESULTS / "random_results.json").read_text())
    settings = published["settings"]
    cases = random_instance_cases(32, RANDOM_TEST_SEED)[:3]
    methods = [m for m in METHODS if m.name in ("baseline", "cross_only")]
    threads = torch.get_num_threads()
    torch.set_num_threads(settings["torch_threads"])
    try:
        results, _, _ = bench.run(load_pipeline(WAN_MODEL), list(cases), methods, blends=(True,),
                                  steps=settings["steps"], guidance=settings["guidance_scale"], frames=FRAMES,
                                  log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    for variant in ("baseline+blend", "cross_only+blend"):
        for case in cases:
            got, want = results["per_case"][variant][case.name], published["per_case"][variant][case.name]
            assert got["found"] == want["found"], (variant, case.name)
            assert got["instance_accuracy"] == want["instance_accuracy"], (variant, case.name)
