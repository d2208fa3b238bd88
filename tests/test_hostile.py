"""The hostile-input suite (issue 17): one test per cause found by hostile testing, named after it.

Through ``case.fail`` (conftest.py) each bad input must end with exit code 2 and one stderr line
``error: <field>: <problem>; fix: <fix>``, no traceback, before the weights load, with nothing written
and every input untouched. The fault tests run the CLI in a subprocess and signal it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from videograin import io, runner
from videograin.cli import main
from videograin.config.parse import spec_from_dict
from videograin.config.preflight import notes
from videograin.errors import SpecError


def _region(case, name: str) -> dict:
    return next(r for r in case.config["regions"] if r["name"] == name)


def _boxes_everywhere(case) -> None:
    """Every region a box, so a changed frame count needs no new mask folders."""
    for region in case.config["regions"]:
        region["masks"] = [0, 0, 96, 64]


# --- data loss ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["config folder", "video file", "mask folder", "inside masks", "notes"])
def test_cause_01_overwrite_never_deletes_an_input_or_a_foreign_folder(case, where):
    notes_folder = case.root / "notes"
    notes_folder.mkdir()
    (notes_folder / "todo.txt").write_text("mine")
    out = {"config folder": case.folder, "video file": case.folder / "video.mp4",
           "mask folder": case.folder / "masks" / "left_ball", "inside masks": case.folder / "masks" / "left_ball" / "out",
           "notes": notes_folder}[where]
    case.fail("output", "--out", str(out), "--overwrite")


def test_cause_01_an_empty_out_is_an_error(case):
    case.fail("--out", "--out", "", "--overwrite")


def _start_edit(case, steps: int = 400) -> subprocess.Popen:
    """A long CLI edit in a subprocess; returns once it writes into its temporary folder."""
    case.config["edit"]["steps"] = steps
    proc = subprocess.Popen([sys.executable, "-m", "videograin.cli", "edit", str(case.write())],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(f".{case.out.name}.") and p.is_dir() for p in case.root.iterdir()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the edit never started writing"
        time.sleep(0.2)
    return proc


def test_cause_02_two_runs_into_one_output_give_one_refusal(case):
    """A second run while the first is writing: refused at once, before its weights load; the first
    goes on (ended here with SIGTERM) and leaves nothing behind."""
    proc = _start_edit(case)
    try:
        case.monkeypatch.setattr(runner, "load_pipeline", lambda *a: pytest.fail("the second run loaded weights"))
        case.capsys.readouterr()
        assert main(["edit", str(case.path)]) == 2
        line = case.capsys.readouterr().err.strip()
        assert line.startswith("error: output: another videograin run") and "\n" not in line
        assert proc.poll() is None  # the first run was not disturbed
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert not case.out.exists()


# --- silent wrong results ---------------------------------------------------------------------------------


def test_cause_03_levels_the_model_lacks(case):
    case.config["edit"]["modulation"] = {"levels": [9]}
    assert "levels 0..1" in case.fail("edit.modulation.levels")


def test_cause_04_sixteen_bit_grey_frames_are_scaled(tmp_path):
    """A 16-bit grey PNG at half scale reads as mid-grey, not white (PIL's RGB conversion clips)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    ramp = np.linspace(0, 65535, 64).astype(np.uint16)[None].repeat(8, 0)
    for i in range(2):
        Image.fromarray(ramp).save(folder / f"{i}.png")  # a 16-bit grey PNG
    frames, _ = io.read_video(folder, 0, 2, 1)
    assert frames.dtype == np.uint8 and frames.shape == (2, 8, 64, 3)
    want = np.round(ramp.astype(np.float64) / 65535 * 255)
    assert np.abs(frames[0, ..., 0] - want).max() <= 1  # 8-bit from 16-bit, as the file says
    assert frames[0, 0, 0, 0] == 0 and frames[0, 0, 32, 0] in (129, 130)


def test_cause_05_a_faint_mask_background_is_not_in_the_region(case):
    """Background 3 and object 255: only the object is the region (half-scale threshold); a region that
    still covers over 95% of the clip is noted in run.json."""
    folder = case.folder / "masks" / "left_ball"
    for path in sorted(folder.glob("*.png")):
        mask = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(np.where(mask > 0, 255, 3).astype(np.uint8)).save(path)
    spec_data = dict(case.config, video=dict(case.config["video"], path=str(case.folder / "video.mp4")))
    spec_data["regions"] = [dict(r, masks=str(case.folder / r["masks"])) for r in case.config["regions"]]
    inputs = io.load_inputs(spec_from_dict(spec_data, case.folder), 64)
    share = float(inputs.masks[0].float().mean())
    assert 0 < share < 0.2, share  # the ball, not the whole frame
    full = case.folder / "masks" / "ground"
    for path in sorted(full.glob("*.png")):
        Image.fromarray(np.full(np.asarray(Image.open(path)).shape[:2], 200, np.uint8)).save(path)
    inputs = io.load_inputs(spec_from_dict(spec_data, case.folder), 64)
    assert any("'ground' covers 100%" in note for note in inputs.notes), inputs.notes


def test_cause_06_eval_says_when_it_resizes(tmp_path, offline, capsys):
    edited, source = tmp_path / "edited.mp4", tmp_path / "source.mp4"
    rng = np.random.default_rng(0)
    io.write_video(edited, rng.integers(0, 255, (3, 128, 32, 3), dtype=np.uint8), 8)
    io.write_video(source, rng.integers(0, 255, (3, 64, 128, 3), dtype=np.uint8), 8)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"prompt": "a cat", "video": {"path": str(source), "frames": 3},
                                      "regions": [{"name": "cat", "masks": [0, 0, 64, 32], "prompt": "a cat"}]}))
    out = tmp_path / "m.json"
    assert main(["eval", "--edited", str(edited), "--config", str(config), "--out", str(out), "--clip",
                 str(tmp_path / "no-clip"), "--pickscore", str(tmp_path / "no-pickscore")]) == 0
    record = json.loads(out.read_text())
    assert any("resized to the edit's 32x128" in note for note in record["notes"]), record["notes"]
    captured = capsys.readouterr()
    assert "resized to the edit's 32x128" in captured.out + captured.err  # said, not only recorded


def test_cause_07_convert_config_rejects_duplicate_keys(tmp_path, capsys):
    official = tmp_path / "official.yaml"
    official.write_text("pretrained_model_path: a\npretrained_model_path: b\n")
    assert main(["convert-config", str(official), "--out", str(tmp_path / "new.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config: duplicate key 'pretrained_model_path'") and err.count("\n") == 1
    assert not (tmp_path / "new.yaml").exists()


# --- tracebacks after the weights load -----------------------------------------------------------------


def test_cause_08_steps_above_the_training_timesteps(case):
    case.config["edit"]["steps"] = 2000
    assert "1000" in case.fail("edit.steps")


def test_cause_08_reconstruct_steps_above_the_training_timesteps(case):
    assert "1000" in case.fail("edit.steps", "--steps", "2000", command="reconstruct")


def test_cause_09_a_seed_past_64_bits(case):
    case.config["edit"]["seed"] = 2**64
    case.fail("edit.seed")


@pytest.mark.parametrize("frames", [16, 1])
def test_cause_10_flow_aids_the_model_or_clip_cannot_take(case, frames):
    case.config["video"]["frames"] = frames
    _boxes_everywhere(case)
    case.config["edit"]["temporal_aids"] = {"flow": {"levels": [0] if frames == 1 else [9]}}
    case.fail("edit.temporal_aids.flow" if frames == 1 else "edit.temporal_aids.flow.levels")


def test_cause_11_a_frame_size_the_encoder_cannot_write(case):
    case.config["video"]["size"] = [100032, 64]
    assert "8192" in case.fail("video.size")


def test_cause_12_more_regions_than_bits(case):
    case.config["regions"] = [{"name": f"r{i}", "masks": [0, 0, 8, 8], "prompt": ""} for i in range(70)]
    assert "62" in case.fail("regions")


def test_cause_13_corrupt_safetensors_weights(case, tiny_model_dir):
    import shutil

    model = case.root / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    case.config["model"] = str(model)
    assert weights.name in case.fail("model")


@pytest.mark.parametrize("device", ["tpu", "cuda", "cuda:7"])
def test_cause_14_devices_this_build_lacks(case, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    case.fail("--device", "--device", device)


@pytest.mark.parametrize("where", ["parent is a file", "proc"])
def test_cause_15_outputs_that_cannot_be_written(case, where):
    if where == "parent is a file":
        (case.root / "a_file").write_text("x")
        out = case.root / "a_file" / "out"
    else:
        out = Path("/proc/videograin_out")
    case.config["output"] = str(out)
    case.fail("output")


def test_cause_16_a_full_disk_is_found_before_the_edit(case):
    case.monkeypatch.setattr(io, "free_space", lambda folder: (2**20, None))
    assert "MiB free" in case.fail("output")


@pytest.mark.parametrize("sig,times", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 4)])
def test_cause_17_an_interrupt_leaves_nothing(case, sig, times):
    """Once, or again and again while the first one cleans up (an impatient Ctrl-C): the same clean end."""
    proc = _start_edit(case)
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; nothing written"
    assert "Traceback" not in err
    assert not case.out.exists()
    assert not [p.name for p in case.root.iterdir() if p.name.startswith(".out")], "temp folder or lock left"


def test_cause_17_a_killed_runs_leftovers_are_cleaned_by_the_next_run(case):
    """SIGKILL cannot be caught: the next run into the same place takes over the lock and removes the
    temporary folder (here it stops at an input error, and still leaves the place clean)."""
    proc = _start_edit(case)
    proc.kill()
    proc.communicate(timeout=60)
    leftovers = [p.name for p in case.root.iterdir() if p.name.startswith(".out")]
    assert any(name.endswith(".lock") for name in leftovers) and len(leftovers) == 2
    case.config["edit"]["steps"] = 50
    case.config["video"]["frames"] = 40  # too many: an input error after the lock
    config = case.write()
    case.monkeypatch.setattr(runner, "load_pipeline", lambda *a: pytest.fail("weights were loaded"))
    assert main(["edit", str(config)]) == 2
    assert not [p.name for p in case.root.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("content", ["{not json", '{"command": "edit"}', "[1, 2]"])
def test_cause_18_eval_of_a_folder_with_a_broken_run_json(tmp_path, capsys, content):
    folder = tmp_path / "out"
    folder.mkdir()
    io.write_video(folder / "edited.mp4", np.zeros((2, 16, 16, 3), np.uint8), 8)
    (folder / "run.json").write_text(content)
    assert main(["eval", "--edited", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --edited: ") and err.count("\n") == 1 and "--config" in err


def test_cause_19_segment_steps_above_the_training_timesteps_blames_steps(case):
    line = case.fail("--steps", "--k", "3", "--steps", "5000", "--out", str(case.root / "segments"),
                     command="segment")
    assert "--k" not in line


def test_cause_20_a_huge_frame_count_fails_fast(case):
    case.config["video"]["frames"] = 1_000_000_000
    _boxes_everywhere(case)
    start = time.monotonic()
    case.fail("video.frames")
    assert time.monotonic() - start < 20  # no set of a billion frame indices first


# --- the minor ones ----------------------------------------------------------------------------------------


def test_minor_a_long_negative_or_source_prompt(case):
    case.config["negative_prompt"] = " ".join(["blurry"] * 100)
    case.fail("negative_prompt")
    case.config["negative_prompt"] = ""
    case.config["source_prompt"] = " ".join(["two"] * 100)
    case.fail("source_prompt")


def test_minor_absurd_strengths_and_a_window_of_the_whole_clip(case):
    case.config["edit"]["modulation"] = {"cross_strength": 1e6}
    case.fail("edit.modulation.cross_strength")
    case.config["edit"].update(modulation={}, window={"size": 16, "stride": 8})  # the same edit as no window: noted
    spec_data = dict(case.config, video=dict(case.config["video"], path=str(case.folder / "video.mp4")))
    spec_data["regions"] = [dict(r, masks=str(case.folder / r["masks"])) for r in case.config["regions"]]
    found = notes(spec_from_dict(spec_data, case.folder))
    assert any("edit.window.size 16 covers all 16 (latent) frames" in n for n in found), found


def test_minor_a_box_error_names_the_key_it_is_written_under(case):
    _region(case, "left_ball")["masks"] = [500, 500, 600, 600]  # outside the 192x128 frame
    case.fail("regions[0].masks")


def test_minor_a_missing_model_path_is_not_taken_for_a_hub_id(case):
    assert "does not exist" in case.fail("model", "--model", "/missing/path")


def test_minor_modulation_steps_past_the_edit_and_the_seed_are_noted(case):
    case.config["edit"].update(steps=4, modulation={"steps": 15}, seed=0)
    spec_data = dict(case.config, video=dict(case.config["video"], path=str(case.folder / "video.mp4")))
    spec_data["regions"] = [dict(r, masks=str(case.folder / r["masks"])) for r in case.config["regions"]]
    found = notes(spec_from_dict(spec_data, case.folder))
    assert any("edit.modulation.steps is 15, more than edit.steps (4)" in n for n in found)
    assert not any("edit.seed" in n for n in found)  # the default seed: nothing to say
    spec_data["edit"] = dict(spec_data["edit"], seed=3)
    assert any("edit.seed 3 does not change this edit" in n for n in notes(spec_from_dict(spec_data, case.folder)))


# --- the loader on anything ------------------------------------------------------------------------------


_KEYS = st.sampled_from(["model", "video", "prompt", "regions", "edit", "control", "output", "path", "frames",
                         "size", "name", "masks", "steps", "seed", "modulation", "levels", "window", "typo"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=12), st.just("video.mp4"), st.just("all"))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.dictionaries(_KEYS, _VALUES, max_size=8), _VALUES))
def test_the_loader_returns_a_spec_or_raises_spec_error(tmp_path, data):
    """Any parsed YAML: a valid EditSpec or a one-line SpecError, never another exception."""
    (tmp_path / "video.mp4").touch()
    try:
        spec = spec_from_dict(data, tmp_path)
    except SpecError as err:
        assert "\n" not in str(err) and err.field and err.fix
    else:
        assert spec.prompt.strip() and spec.regions


def test_minor_an_uncached_hub_id_offline_fails_at_once(case, offline):
    """Before: 30 s and 24 lines of retries, then an error about config.json."""
    start = time.monotonic()
    line = case.fail("model", "--model", "someorg/not-downloaded")
    assert time.monotonic() - start < 2 and "local diffusers folder" in line


def test_minor_offline_metric_weights_fail_at_once():
    """`eval` offline spent ~47 of 54 s in hub retries for CLIP and PickScore."""
    from videograin.errors import WeightsUnavailable
    from videograin.eval.metrics import DEFAULT_CLIP, ClipScorer

    start = time.monotonic()
    with pytest.raises(WeightsUnavailable, match="hub cannot be reached"):
        ClipScorer.from_pretrained(DEFAULT_CLIP)
    assert time.monotonic() - start < 2
