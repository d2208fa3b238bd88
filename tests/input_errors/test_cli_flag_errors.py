"""Bad command-line flags: one stderr line naming the flag, exit code 2, before the weights load, nothing
written (``case.fail`` in conftest.py, or ``cli.main`` directly), also from the installed command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from videograin.cli import main

from conftest import snapshot

# --- the installed command -------------------------------------------------------------------------------------


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


# --- edit and reconstruct --------------------------------------------------------------------------------------


def test_an_empty_out_is_refused(case):
    case.fail("--out", "--out", "", "--overwrite")


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_steps_option_below_one(case, steps):
    line = case.fail("--steps", "--steps", steps)
    assert f"got {steps}" in line


def test_reconstruct_steps_above_the_training_timesteps_are_refused(case):
    assert "1000" in case.fail("edit.steps", "--steps", "2000", command="reconstruct")


@pytest.mark.parametrize("device", ["tpu", "cuda", "cuda:7"])
def test_a_device_this_build_lacks_is_refused(case, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    case.fail("--device", "--device", device)


# --- segment and masks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,field", [(["--level", "2", "--k", "3"], "--level"),
                                         (["--k", "100000"], "--k")])
def test_segment_arguments_checked_against_the_model(case, flags, field):
    """The tiny UNet has decoder self-attention at levels 0 and 1."""
    case.fail(field, *flags, "--out", str(case.root / "segments"), command="segment")


def test_segment_steps_above_the_training_timesteps_blame_steps_not_k(case):
    line = case.fail("--steps", "--k", "3", "--steps", "5000", "--out", str(case.root / "segments"),
                     command="segment")
    assert "--k" not in line


@pytest.mark.parametrize("name", ["../x", "/abs/x", ".", "a/b"])
def test_a_masks_region_name_that_is_not_a_plain_name_is_refused(tmp_path, name, capsys):
    video = Path(__file__).resolve().parents[1] / "examples" / "two_balls" / "video.mp4"
    before = snapshot(tmp_path)
    assert main(["masks", str(video), "--region", f"{name}:box=10,10,40,40", "--frames", "2", "--out",
                 str(tmp_path / "masks"), "--engine", "flow", "--quiet"]) == 2
    assert "--region" in capsys.readouterr().err and snapshot(tmp_path) == before


def test_masks_frame_selection_and_a_batch_set_that_is_not_a_mapping_are_one_line(example_config, tmp_path, capsys):
    video = Path(__file__).resolve().parents[1] / "examples" / "two_balls" / "video.mp4"
    for flag, value in (("--stride", "0"), ("--start", "-1"), ("--frames", "0")):
        assert main(["masks", str(video), "--region", "a:box=1,1,9,9", flag, value, "--out", str(tmp_path / "m"),
                     "--quiet"]) == 2
        assert capsys.readouterr().err.startswith(f"error: {flag}: must be >=")
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"jobs": [{"config": str(example_config), "set": [1, 2]}]}))
    assert main(["batch", str(jobs), "--out", str(tmp_path / "batch"), "--quiet"]) == 2
    assert "jobs[0].set" in capsys.readouterr().err and not (tmp_path / "batch").exists()
