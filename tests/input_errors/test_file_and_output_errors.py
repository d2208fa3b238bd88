"""Files the inputs name (video, masks, model folders) and the output folder: a missing, unreadable or odd
file is one stderr line naming the field, exit code 2, before the weights load; an output that cannot
be written, a full disk or a second run into the same place is refused, and a refused run creates,
changes and deletes nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from videograin import loading, media, outputs
from videograin.cli import main
from videograin.config.parse import spec_from_dict
from videograin.inputs import load_inputs

from conftest import region_entry, snapshot, start_edit

# --- the video -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["edit", "reconstruct"])
def test_missing_video(case, command):
    case.config["video"]["path"] = "no_such_video.mp4"
    line = case.fail("video.path", command=command)
    assert "no_such_video.mp4" in line and "does not exist" in line


def test_a_fifo_as_the_video_is_refused_at_once(example_config, tmp_path, capsys):
    import os
    import time

    fifo = tmp_path / "video.mp4"
    os.mkfifo(fifo)
    config = yaml.safe_load(example_config.read_text())
    config["video"] = {**config["video"], "path": str(fifo)}
    path = tmp_path / "fifo.yaml"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    assert main(["edit", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "video.path" in capsys.readouterr().err and time.perf_counter() - start < 5


def test_sixteen_bit_grey_frames_are_scaled_to_eight_bits(tmp_path):
    """A 16-bit grey PNG at half scale reads as mid-grey, not white (PIL's RGB conversion clips)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    ramp = np.linspace(0, 65535, 64).astype(np.uint16)[None].repeat(8, 0)
    for i in range(2):
        Image.fromarray(ramp).save(folder / f"{i}.png")  # a 16-bit grey PNG
    frames, _ = media.read_video(folder, 0, 2, 1)
    assert frames.dtype == np.uint8 and frames.shape == (2, 8, 64, 3)
    want = np.round(ramp.astype(np.float64) / 65535 * 255)
    assert np.abs(frames[0, ..., 0] - want).max() <= 1  # 8-bit from 16-bit, as the file says
    assert frames[0, 0, 0, 0] == 0 and frames[0, 0, 32, 0] in (129, 130)


# --- mask folders ----------------------------------------------------------------------------------------------


def test_missing_mask_folder(case):
    region_entry(case, "right_ball")["masks"] = "masks/no_such_region"
    line = case.fail("regions[1].masks")
    assert "no_such_region" in line and "does not exist" in line


def test_mask_path_that_is_a_file(case):
    region_entry(case, "left_ball")["masks"] = "video.mp4"
    case.fail("regions[0].masks")


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
    region_entry(case, "left_ball")["prompt"] = "green apple"  # not in the prompt: fails in the model check
    case.fail("regions[0].prompt")
    case.config["video"]["size"] = [200, 128]  # fails after the masks are read
    region_entry(case, "left_ball")["prompt"] = "red apple"
    case.fail("video.size")


@pytest.mark.parametrize("region, index", [("left_ball", 0), ("ground", 2)])
def test_mask_empty_in_every_frame(case, region, index):
    for file in case.masks(region):
        with Image.open(file) as im:
            size, mode = im.size, im.mode
        Image.fromarray(np.zeros((size[1], size[0]), dtype=np.uint8)).convert(mode).save(file)
    line = case.fail(f"regions[{index}].masks")
    assert region in line and "empty in every frame" in line


def test_a_faint_mask_background_is_not_part_of_the_region(case):
    """Background 3 and object 255: only the object is the region (half-scale threshold); a region that
    still covers over 95% of the clip is noted in run.json."""
    folder = case.folder / "masks" / "left_ball"
    for path in sorted(folder.glob("*.png")):
        mask = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(np.where(mask > 0, 255, 3).astype(np.uint8)).save(path)
    spec_data = dict(case.config, video=dict(case.config["video"], path=str(case.folder / "video.mp4")))
    spec_data["regions"] = [dict(r, masks=str(case.folder / r["masks"])) for r in case.config["regions"]]
    inputs = load_inputs(spec_from_dict(spec_data, case.folder), 64)
    share = float(inputs.masks[0].float().mean())
    assert 0 < share < 0.2, share  # the ball, not the whole frame
    full = case.folder / "masks" / "ground"
    for path in sorted(full.glob("*.png")):
        Image.fromarray(np.full(np.asarray(Image.open(path)).shape[:2], 200, np.uint8)).save(path)
    inputs = load_inputs(spec_from_dict(spec_data, case.folder), 64)
    assert any("'ground' covers 100%" in note for note in inputs.notes), inputs.notes


# --- the model folder ------------------------------------------------------------------------------------------


def test_model_folder_missing_in_config(case):
    case.config["model"] = "./no_such_model"
    line = case.fail("model")
    assert "no_such_model" in line


def test_model_folder_missing_on_the_command_line(case):
    line = case.fail("model", "--model", str(case.root / "no_such_model"))
    assert "no_such_model" in line


def test_a_missing_model_path_is_not_taken_for_a_hub_id(case):
    assert "does not exist" in case.fail("model", "--model", "/missing/path")


def test_an_uncached_hub_id_offline_fails_at_once(case, offline):
    """A hub id that is not in the cache, offline: one line naming `model` within 2 s, no hub retries."""
    start = time.monotonic()
    line = case.fail("model", "--model", "someorg/not-downloaded")
    assert time.monotonic() - start < 2 and "local diffusers folder" in line


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


def test_a_model_index_that_is_not_json_is_refused_before_loading(tiny_model_dir, tmp_path):
    import shutil

    from videograin.config.preflight import read_model
    from videograin.errors import SpecError

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(SpecError, match="model_index.json is not readable JSON"):
        read_model(str(folder))


def test_corrupt_safetensors_weights_are_refused_naming_the_file(case, tiny_model_dir):
    import shutil

    model = case.root / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    case.config["model"] = str(model)
    assert weights.name in case.fail("model")


# --- eval's inputs ---------------------------------------------------------------------------------------------


def test_eval_says_when_it_resizes_the_source_to_the_edit(tmp_path, offline, capsys):
    edited, source = tmp_path / "edited.mp4", tmp_path / "source.mp4"
    rng = np.random.default_rng(0)
    media.write_video(edited, rng.integers(0, 255, (3, 128, 32, 3), dtype=np.uint8), 8)
    media.write_video(source, rng.integers(0, 255, (3, 64, 128, 3), dtype=np.uint8), 8)
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


@pytest.mark.parametrize("content", ["{not json", '{"command": "edit"}', "[1, 2]"])
def test_eval_of_a_folder_with_a_broken_run_json_asks_for_the_config(tmp_path, capsys, content):
    folder = tmp_path / "out"
    folder.mkdir()
    media.write_video(folder / "edited.mp4", np.zeros((2, 16, 16, 3), np.uint8), 8)
    (folder / "run.json").write_text(content)
    assert main(["eval", "--edited", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --edited: ") and err.count("\n") == 1 and "--config" in err


# --- the output folder -----------------------------------------------------------------------------------------


def test_output_not_empty_without_overwrite(case):
    case.out.mkdir()
    (case.out / "old.txt").write_text("keep me")
    line = case.fail("output")
    assert "not empty" in line and "--overwrite" in line
    assert (case.out / "old.txt").read_text() == "keep me"


def test_output_that_is_a_file(case):
    case.out.write_text("a file")
    case.fail("output")


def test_input_error_creates_no_parent_of_the_output(case):
    case.config["output"] = str(case.root / "results" / "run1")
    case.config["video"]["frames"] = 40
    case.fail("video.frames")
    assert not (case.root / "results").exists()


@pytest.mark.parametrize("where", ["parent is a file", "proc"])
def test_an_output_that_cannot_be_written_is_refused(case, where):
    if where == "parent is a file":
        (case.root / "a_file").write_text("x")
        out = case.root / "a_file" / "out"
    else:
        out = Path("/proc/videograin_out")
    case.config["output"] = str(out)
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


@pytest.mark.parametrize("where", ["config folder", "video file", "mask folder", "inside masks", "notes"])
def test_overwrite_never_deletes_an_input_or_a_foreign_folder(case, where):
    notes_folder = case.root / "notes"
    notes_folder.mkdir()
    (notes_folder / "todo.txt").write_text("mine")
    out = {"config folder": case.folder, "video file": case.folder / "video.mp4",
           "mask folder": case.folder / "masks" / "left_ball", "inside masks": case.folder / "masks" / "left_ball" / "out",
           "notes": notes_folder}[where]
    case.fail("output", "--out", str(out), "--overwrite")


def test_eval_out_is_never_an_input_nor_a_folder(example_config, tmp_path, capsys):
    assert main(["edit", str(example_config), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"]) == 0
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    for target in (example_config, out / "edited.mp4", out / "source.mp4", out / "run.json", out):
        assert main(["eval", "--edited", str(out), "--config", str(example_config), "--out", str(target)]) == 2, target
        assert "--out" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_make_tiny_model_writes_only_into_a_new_or_empty_folder(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.yaml").write_text("model: x\n")
    before = snapshot(tmp_path)
    assert main(["make-tiny-model", str(taken), "--quiet"]) == 2
    assert "not an empty folder" in capsys.readouterr().err and snapshot(tmp_path) == before
    (tmp_path / "empty").mkdir()
    assert main(["make-tiny-model", str(tmp_path / "empty"), "--wan", "--quiet"]) == 0


# --- one run at a time -----------------------------------------------------------------------------------------


def test_a_second_run_into_an_output_being_written_is_refused_at_once(case):
    """A second run while the first is writing: refused at once, before its weights load; the first
    goes on (ended here with SIGTERM) and leaves nothing behind."""
    proc = start_edit(case)
    try:
        case.monkeypatch.setattr(loading, "load_pipeline", lambda *a: pytest.fail("the second run loaded weights"))
        case.capsys.readouterr()
        assert main(["edit", str(case.path)]) == 2
        line = case.capsys.readouterr().err.strip()
        assert line.startswith("error: output: another videograin run") and "\n" not in line
        assert proc.poll() is None  # the first run was not disturbed
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert not case.out.exists()


@pytest.mark.parametrize("content", ["99999999999999999999", "0", "-1", "junk", ""])
def test_a_lock_file_holding_anything_but_a_live_process_is_stale(tmp_path, content):
    from videograin import outputs

    final = tmp_path / "out"
    (tmp_path / ".out.lock").write_text(content)
    with outputs.output_lock(final):
        assert (tmp_path / ".out.lock").read_text() == str(__import__("os").getpid())
    assert not (tmp_path / ".out.lock").exists()


# --- a full disk -----------------------------------------------------------------------------------------------


def test_a_full_disk_is_found_before_the_edit(case):
    case.monkeypatch.setattr(outputs, "free_space", lambda folder: (2**20, None))
    assert "MiB free" in case.fail("output")


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])
def test_a_full_disk_while_writing_is_one_output_line_with_nothing_left(example_config, tmp_path, monkeypatch, capsys,
                                                                          code):
    import errno

    from videograin import media

    def full(*args, **kwargs):
        raise OSError(getattr(errno, code), "No space left on device")

    monkeypatch.setattr(media, "write_gif", full)
    before = snapshot(tmp_path)
    assert main(["edit", str(example_config), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output: no room left") and err.count("\n") == 1
    assert snapshot(tmp_path) == before


@pytest.fixture()
def small_tmpfs(tmp_path):
    """Mount a tmpfs of the given options at a new folder (root, with mounting allowed), unmounted after."""
    import subprocess

    mounts = []

    def mount(options: str) -> Path:
        point = tmp_path / f"fs{len(mounts)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if proc.returncode:
            pytest.skip(f"needs a tmpfs mount (root with CAP_SYS_ADMIN): {proc.stderr.strip() or proc.returncode}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.parametrize("limit", ["nr_inodes=24", "size=256k"])
def test_a_real_file_system_out_of_files_or_bytes_is_one_output_line_with_nothing_left(example_config, small_tmpfs,
                                                                                          monkeypatch, capsys, limit):
    """First the free-space check refuses it before the edit; without the check, the file system's own
    ENOSPC in mid-write ends the same way, with nothing left there."""
    from videograin import outputs

    fs = small_tmpfs(limit)
    assert main(["edit", str(example_config), "--out", str(fs / "out"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output: only ") and err.count("\n") == 1, err
    assert list(fs.iterdir()) == []
    monkeypatch.setattr(outputs, "check_free_space", lambda *args: None)
    assert main(["edit", str(example_config), "--out", str(fs / "out"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output: no room left") and err.count("\n") == 1, err
    assert list(fs.iterdir()) == []
