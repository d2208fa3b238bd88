"""The SD toy models (videograin.toy.SD_MODEL, PARTS_MODEL): tokenizer, geometry, direct prompting and
the demo config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toyworld import world
from videograin.toy import DEMO, SD_MODEL


needs_model = pytest.mark.skipif(not (SD_MODEL / "model_index.json").is_file(), reason="the SD toy model is not there")


def test_tokenizer_has_every_world_word_as_one_token():
    from toyworld.model import make_tokenizer

    tok = make_tokenizer()
    for w in world.WORDS:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    ids = tok("a red circle on the left", add_special_tokens=False).input_ids
    assert len(ids) == 6


def test_default_tiny_model_tokenizer_unchanged(tmp_path):
    """Generalising _tokenizer_files over a word list keeps the default (WORDS) files byte for byte."""
    from videograin import testing as tiny_model

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    files_a = tiny_model._tokenizer_files(a)
    files_b = tiny_model._tokenizer_files(b, tiny_model.WORDS)
    for fa, fb in zip(files_a, files_b):
        assert fa.read_bytes() == fb.read_bytes()


@needs_model
def test_committed_model_loads_with_the_toy_world_geometry():
    from toyworld.model import load_pipeline

    pipe = load_pipeline()
    levels = len(pipe.unet.config.block_out_channels)
    assert pipe.size_multiple == 2 * 2 ** (levels - 1)  # the VAE's 2x and the UNet's downsamplings
    assert pipe.unet.config.sample_size == world.SIZE // 2
    cfg = pipe.scheduler.config
    assert cfg.steps_offset == 1 and not cfg.set_alpha_to_one and not cfg.clip_sample


@needs_model
def test_committed_model_draws_the_requested_colour_on_the_requested_background():
    """Smoke test of the model and the plain DDIM loop: on 15 single-object prompts the requested colour
    and background appear in most samples (the full prompt scores are in toyworld/README.md)."""
    from toyworld import sample
    from toyworld.model import load_pipeline

    cases = sample.single_prompts()[::9]
    frames = sample.text_to_image(load_pipeline(), [c[0] for c in cases])
    rows = sample.score(frames, cases)
    hits = [r["background"] == bg and any(f[0] == want[0][0] for f in r["found"]) for r, (_, want, bg) in zip(rows, cases)]
    assert sum(hits) >= 8, rows


@needs_model
def test_demo_config_is_valid_and_its_inputs_load():
    from videograin.inputs import load_inputs
    from videograin.config.preflight import read_model
    from videograin.config.parse import load_spec

    spec = load_spec(DEMO / "config.yaml")
    assert Path(spec.model) == SD_MODEL
    inputs = load_inputs(spec, read_model(spec.model).size_multiple)
    assert tuple(inputs.frames.shape) == (12, 3, 32, 32) and tuple(inputs.masks.shape) == (3, 12, 32, 32)
    assert not (inputs.masks[0] & inputs.masks[1]).any() and (inputs.masks.any(0)).all()


def test_prompt_scores_tell_a_swapped_pair_from_a_right_one():
    """Two-shape prompt scoring on rendered frames: the requested scene is right, the same shapes in
    each other's thirds are "swapped" (and not right), a lone shape is neither."""
    from toyworld import sample

    case = ("a red circle on the left and a blue square on the right on a gray background",
            (("red", "circle", "left"), ("blue", "square", "right")), "gray")

    def frame(*shapes):
        return world.render(world.Scene(tuple(world.Shape(k, c, x, 16.0, 5.0) for k, c, x in shapes), "gray"))[0]

    right = frame(("circle", "red", 7.0), ("square", "blue", 25.0))
    mirrored = frame(("circle", "red", 25.0), ("square", "blue", 7.0))
    alone = frame(("circle", "red", 7.0))
    rows = sample.score(np.stack([right, mirrored, alone]), [case] * 3)
    assert [(r["correct"], r["swapped"]) for r in rows] == [(True, False), (False, True), (False, False)]
    assert rows[1]["class_ok"] == [True, True] and rows[1]["place_ok"] == [False, False]


def test_part_prompts_are_scored_right_on_the_scene_they_describe_and_wrong_without_the_part():
    from toyworld import sample

    cases = sample.part_prompts(12)
    centre = {"left": 6.0, "middle": 16.0, "right": 26.0}
    drawn, plain = [], []
    for _, ((color, kind, place),), bg, (part_color, part) in cases:
        shape = world.Shape(kind, color, centre[place], 16.0, 5.0, part, part_color)
        drawn.append(world.render(world.Scene((shape,), bg))[0])
        plain.append(world.render(world.Scene((world.Shape(kind, color, centre[place], 16.0, 5.0),), bg))[0])
    assert all(r["correct"] and r["part_ok"] for r in sample.score_parts(np.stack(drawn), cases))
    rows = sample.score_parts(np.stack(plain), cases)
    assert all(r["shape_ok"] and not r["part_present"] and not r["correct"] for r in rows)
    assert all(" with a " in prompt for prompt, *_ in cases)
