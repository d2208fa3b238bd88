"""Input validation of the `videograin` command, run through ``cli.main``.

Every bad input must end with exit code 2 and one stderr line ``error: <field>: <problem>; fix: <fix>``
before any weights are loaded (``runner.load_pipeline`` is replaced by a tripwire here) and without
writing anything: the output folder does not appear (or stays as it was), no temporary ``.<name>.*``
sibling is left, and no file under the test's tmp folder changes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videograin.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "two_balls"
BASE_PROMPT = "a red apple and an orange ball on the grass"  # 10 tokens with the tiny tokenizer


def _region(case, name: str) -> dict:
    return next(r for r in case.config["regions"] if r["name"] == name)


# --- 1. missing files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["edit", "reconstruct"])
def test_missing_video(case, command):
    case.config["video"]["path"] = "no_such_video.mp4"
    line = case.fail("video.path", command=command)
    assert "no_such_video.mp4" in line and "does not exist" in line


def test_missing_mask_folder(case):
    _region(case, "right_ball")["masks"] = "masks/no_such_region"
    line = case.fail("regions[1].masks")
    assert "no_such_region" in line and "does not exist" in line


def test_mask_path_that_is_a_file(case):
    _region(case, "left_ball")["masks"] = "video.mp4"
    case.fail("regions[0].masks")


# --- 2. mask count differs from the selected frames ----------------------------------------------------


@pytest.mark.parametrize(
    "frames, stride, keep",
    [(16, 1, 10), (8, 2, 12), (8, 1, 20)],
    ids=["16-selected-10-masks", "8-selected-12-masks", "8-selected-20-masks"],
)
def test_mask_count_differs_from_the_selection(case, frames, stride, keep):
    case.config["video"].update(frames=frames, stride=stride)
    files = case.masks("right_ball")
    for extra in files[keep:]:
        extra.unlink()
    for i in range(len(files), keep):  # more masks than source frames
        shutil.copy(files[0], files[0].with_name(f"{i:05d}.png"))
    assert len(case.masks("right_ball")) == keep
    line = case.fail("regions[1].masks")
    numbers = set(re.findall(r"\b\d+\b", line.split("; fix: ")[0]))
    assert {str(keep), str(frames)} <= numbers, line
    assert "mask images" in line


def test_all_source_frames_of_masks_are_accepted_with_a_selection(case):
    """16 masks for 16 source frames with 8 selected (stride 2) is valid; a later error proves it passed."""
    case.config["video"].update(frames=8, stride=2)
    _region(case, "left_ball")["prompt"] = "green apple"  # not in the prompt: fails in the model check
    case.fail("regions[0].prompt")
    case.config["video"]["size"] = [200, 128]  # fails after the masks are read
    _region(case, "left_ball")["prompt"] = "red apple"
    case.fail("video.size")


# --- 3. empty masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("region, index", [("left_ball", 0), ("ground", 2)])
def test_mask_empty_in_every_frame(case, region, index):
    for file in case.masks(region):
        with Image.open(file) as im:
            size, mode = im.size, im.mode
        Image.fromarray(np.zeros((size[1], size[0]), dtype=np.uint8)).convert(mode).save(file)
    line = case.fail(f"regions[{index}].masks")
    assert region in line and "empty in every frame" in line


# --- 4. region prompt not inside the prompt ------------------------------------------------------------


@pytest.mark.parametrize("region_prompt", ["green apple", "apple red", "red apple and a dog"])
def test_region_prompt_not_a_token_subsequence(case, region_prompt):
    _region(case, "right_ball")["prompt"] = region_prompt
    line = case.fail("regions[1].prompt")
    assert repr(region_prompt) in line


# --- 5. prompt too long --------------------------------------------------------------------------------


def _prompt_of(tokens: int, tokenizer) -> str:
    words = BASE_PROMPT.split()
    filler = "and the sky".split()
    while len(words) < tokens:
        words.append(filler[len(words) % 3])
    prompt = " ".join(words[:tokens])
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == tokens
    return prompt


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    assert tok.model_max_length == 77
    return tok


@pytest.mark.parametrize("tokens", [76, 120])
def test_prompt_over_77_tokens(case, tokenizer, tokens):
    """76 words + start and end tokens = 78 > 77."""
    case.config["prompt"] = _prompt_of(tokens, tokenizer)
    line = case.fail("prompt")
    assert f"{tokens} tokens" in line and "75" in line


def test_prompt_of_exactly_77_tokens_is_accepted(case, tokenizer):
    case.config["prompt"] = _prompt_of(75, tokenizer)
    case.config["video"]["frames"] = 40  # a later check stops the run: the prompt passed
    case.fail("video.frames")


# --- 6. size not a multiple of the model's downsampling -------------------------------------------------


@pytest.mark.parametrize(
    "size, expected",
    [([200, 128], "width 192 or 208 and height 128"), ([192, 120], "width 192 and height 112 or 128"),
     ([8, 128], "width 16 and height 128")],
)
def test_size_not_a_multiple(case, size, expected):
    case.config["video"]["size"] = size
    line = case.fail("video.size")
    assert f"{size[0]}x{size[1]}" in line and "16" in line
    assert expected in line


# --- 7. too few frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "selection, suggestion",
    [({"frames": 40}, "frames: 16"), ({"frames": 16, "start": 4}, "frames: 12"),
     ({"frames": 16, "stride": 2}, "frames: 8")],
)
def test_fewer_frames_than_requested(case, selection, suggestion):
    case.config["video"].update(selection)
    line = case.fail("video.frames")
    assert "only 16 frames" in line and suggestion in line


# --- 8. duplicate region names -------------------------------------------------------------------------


def test_duplicate_region_names(case):
    case.config["regions"][2]["name"] = "left_ball"
    line = case.fail("regions[2].name")
    assert "'left_ball'" in line and "regions[0]" in line


# --- 9. unknown keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, typo, right",
    [("edit", "gudiance_scale", "guidance_scale"), ("", "prompts", "prompt"), ("video", "frame", "frames"),
     ("regions[0]", "mask", "masks"), ("edit.modulation", "self_strenght", "self_strength")],
)
def test_unknown_key_with_suggestion(case, where, typo, right):
    section = {
        "": case.config,
        "edit": case.config["edit"],
        "video": case.config["video"],
        "regions[0]": case.config["regions"][0],
    }.get(where)
    if where == "edit.modulation":
        section = case.config["edit"].setdefault("modulation", {})
    section[typo] = 1
    line = case.fail(f"{where}.{typo}" if where else typo)
    assert f"unknown key '{typo}'" in line and f"did you mean '{right}'" in line


def test_duplicate_yaml_key(case):
    text = case.write().read_text().replace("prompt: a red apple", "prompt: a red apple\nprompt: a red apple", 1)

    def write() -> Path:  # keep the hand-written text
        case.path.write_text(text)
        return case.path

    case.write = write
    line = case.fail("config")
    assert "duplicate key 'prompt'" in line


# --- 10. output folder ---------------------------------------------------------------------------------


def test_output_not_empty_without_overwrite(case):
    case.out.mkdir()
    (case.out / "old.txt").write_text("keep me")
    line = case.fail("output")
    assert "not empty" in line and "--overwrite" in line
    assert (case.out / "old.txt").read_text() == "keep me"


def test_output_that_is_a_file(case):
    case.out.write_text("a file")
    case.fail("output")


def test_overwrite_keeps_an_old_output_on_an_input_error(case):
    case.out.mkdir()
    (case.out / "old.txt").write_text("keep me")
    (case.out / "run.json").write_text('{"command": "edit"}')  # a previous output of ours
    case.config["video"]["frames"] = 40
    case.fail("video.frames", "--overwrite")
    assert (case.out / "old.txt").read_text() == "keep me"


def test_overwrite_replaces_a_non_empty_output(case, capsys):
    case.out.mkdir()
    (case.out / "old.txt").write_text("old")
    (case.out / "run.json").write_text('{"command": "edit"}')  # a previous output of ours
    case.config["video"]["frames"] = 4
    case.config["video"]["size"] = [64, 48]  # fastest run on the tiny model
    # 48 is a multiple of 16; 4 frames need 4 masks of the 16: the selection applies to 16 source masks
    config = case.write()
    assert main(["edit", str(config), "--steps", "1", "--overwrite"]) == 0, capsys.readouterr().err
    assert not (case.out / "old.txt").exists()
    assert (case.out / "edited.mp4").stat().st_size > 0 and (case.out / "run.json").is_file()
    assert not [p for p in case.root.iterdir() if p.name.startswith(".")]


def test_input_error_creates_no_parent_of_the_output(case):
    case.config["output"] = str(case.root / "results" / "run1")
    case.config["video"]["frames"] = 40
    case.fail("video.frames")
    assert not (case.root / "results").exists()


# --- 11. model -----------------------------------------------------------------------------------------


def test_model_folder_missing_in_config(case):
    case.config["model"] = "./no_such_model"
    line = case.fail("model")
    assert "no_such_model" in line


def test_model_folder_missing_on_the_command_line(case):
    line = case.fail("model", "--model", str(case.root / "no_such_model"))
    assert "no_such_model" in line


def test_model_folder_that_is_not_a_diffusers_model(case):
    (case.root / "not_a_model").mkdir()
    (case.root / "not_a_model" / "readme.txt").write_text("nothing here")
    line = case.fail("model", "--model", str(case.root / "not_a_model"))
    assert "not_a_model" in line


def test_model_folder_with_a_broken_config(case, tiny_model_dir):
    model = case.root / "broken_model"
    shutil.copytree(tiny_model_dir, model)
    (model / "unet" / "config.json").write_text("{not json")
    case.fail("model", "--model", str(model))


def test_model_folder_without_tokenizer(case, tiny_model_dir):
    model = case.root / "no_tokenizer"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("tokenizer"))
    case.fail("model", "--model", str(model))


# --- 12. steps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_steps_option_below_one(case, steps):
    line = case.fail("--steps", "--steps", steps)
    assert f"got {steps}" in line


def test_steps_in_config_below_one(case):
    case.config["edit"]["steps"] = 0
    case.fail("edit.steps")


# --- the real process ------------------------------------------------------------------------------------


def test_the_installed_command_prints_one_line(case):
    """Outside pytest's capture, logging and library warnings also reach stderr: still one line.

    The empty mask of the last region is the last check before weights would load."""
    for file in case.masks("ground"):
        Image.fromarray(np.zeros((128, 192), dtype=np.uint8)).save(file)
    config = case.write()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "videograin.cli", "edit", str(config)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: regions[2].masks: "), proc.stderr
    assert not case.out.exists() and not [p for p in case.root.iterdir() if p.name.startswith(".")]


# --- the validation gate: checks against the model's config files, before weights load ------------------
# (each cause of the hostile testing has its own named test in test_hostile.py)


@pytest.mark.parametrize("edit,field", [
    ({"method": "reatco", "reatco": {"level": 9}}, "edit.reatco.level"),
])
def test_settings_the_model_cannot_take_end_before_weights_load(case, edit, field):
    """The tiny UNet has 2 levels."""
    case.config["edit"].update(edit)
    assert "levels 0..1" in case.fail(field)


@pytest.mark.parametrize("flags,field", [(["--level", "2", "--k", "3"], "--level"),
                                         (["--k", "100000"], "--k")])
def test_segment_arguments_checked_against_the_model(case, flags, field):
    """The tiny UNet has decoder self-attention at levels 0 and 1."""
    case.fail(field, *flags, "--out", str(case.root / "segments"), command="segment")
