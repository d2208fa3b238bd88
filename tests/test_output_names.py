"""Names that become paths and outputs that are files: one rule each, at every door (batch job names,
masks regions, eval --out, make-tiny-model). A refused run creates, changes and deletes nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from videograin.cli import main


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash (and every folder), to compare before and after."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name", ["../escaped", "/abs/path", "", ".", "..", "a/b", "with space"])
def test_a_batch_job_name_that_is_not_a_plain_name_is_refused(example_config, tmp_path, name, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"jobs": [{"config": str(example_config), "name": name}]}))
    before = _snapshot(tmp_path)
    assert main(["batch", str(jobs), "--out", str(tmp_path / "batch"), "--quiet"]) == 2
    assert "cannot be used as a file or folder name" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before and not Path("/abs/path").exists()


@pytest.mark.parametrize("name", ["../x", "/abs/x", ".", "a/b"])
def test_a_masks_region_name_that_is_not_a_plain_name_is_refused(tmp_path, name, capsys):
    video = Path(__file__).resolve().parents[1] / "examples" / "two_balls" / "video.mp4"
    before = _snapshot(tmp_path)
    assert main(["masks", str(video), "--region", f"{name}:box=10,10,40,40", "--frames", "2", "--out",
                 str(tmp_path / "masks"), "--engine", "flow", "--quiet"]) == 2
    assert "--region" in capsys.readouterr().err and _snapshot(tmp_path) == before


def test_eval_out_is_never_an_input_nor_a_folder(example_config, tmp_path, capsys):
    assert main(["edit", str(example_config), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"]) == 0
    out = tmp_path / "out"
    before = _snapshot(tmp_path)
    for target in (example_config, out / "edited.mp4", out / "source.mp4", out / "run.json", out):
        assert main(["eval", "--edited", str(out), "--config", str(example_config), "--out", str(target)]) == 2, target
        assert "--out" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_make_tiny_model_writes_only_into_a_new_or_empty_folder(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.yaml").write_text("model: x\n")
    before = _snapshot(tmp_path)
    assert main(["make-tiny-model", str(taken), "--quiet"]) == 2
    assert "not an empty folder" in capsys.readouterr().err and _snapshot(tmp_path) == before
    (tmp_path / "empty").mkdir()
    assert main(["make-tiny-model", str(tmp_path / "empty"), "--wan", "--quiet"]) == 0


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


@pytest.mark.parametrize("content", ["99999999999999999999", "0", "-1", "junk", ""])
def test_a_lock_file_holding_anything_but_a_live_process_is_stale(tmp_path, content):
    from videograin import io

    final = tmp_path / "out"
    (tmp_path / ".out.lock").write_text(content)
    with io.output_lock(final):
        assert (tmp_path / ".out.lock").read_text() == str(__import__("os").getpid())
    assert not (tmp_path / ".out.lock").exists()


def test_an_output_moved_aside_by_a_run_killed_mid_swap_is_put_back_not_deleted(tmp_path):
    """The state a kill leaves between output_folder's two renames (the old output moved aside to
    .out.<hex>.old, the new one still .out.<hex>, nothing under out): the next run restores the old one
    under its name and removes only the unfinished new one."""
    from videograin import io

    final = tmp_path / "out"
    old, new = tmp_path / ".out.0123abcd.old", tmp_path / ".out.0123abcd"
    old.mkdir()
    (old / "run.json").write_text('{"command": "edit"}')
    new.mkdir()
    (new / "partial.png").write_bytes(b"x")
    with io.output_lock(final):
        assert (final / "run.json").read_text() == '{"command": "edit"}'
    assert not old.exists() and not new.exists()


def test_a_model_index_that_is_not_json_is_refused_before_loading(tiny_model_dir, tmp_path):
    import shutil

    from videograin.config.preflight import read_model
    from videograin.errors import SpecError

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(SpecError, match="model_index.json is not readable JSON"):
        read_model(str(folder))


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])
def test_a_full_disk_while_writing_is_one_output_line_with_nothing_left(example_config, tmp_path, monkeypatch, capsys,
                                                                          code):
    import errno

    from videograin import io

    def full(*args, **kwargs):
        raise OSError(getattr(errno, code), "No space left on device")

    monkeypatch.setattr(io, "write_gif", full)
    before = _snapshot(tmp_path)
    assert main(["edit", str(example_config), "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output: no room left") and err.count("\n") == 1
    assert _snapshot(tmp_path) == before


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
    from videograin import io

    fs = small_tmpfs(limit)
    assert main(["edit", str(example_config), "--out", str(fs / "out"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output: only ") and err.count("\n") == 1, err
    assert list(fs.iterdir()) == []
    monkeypatch.setattr(io, "check_free_space", lambda *args: None)
    assert main(["edit", str(example_config), "--out", str(fs / "out"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output: no room left") and err.count("\n") == 1, err
    assert list(fs.iterdir()) == []


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


def test_yaml_merge_keys_work_and_a_batch_job_with_a_key_twice_is_refused(example_config, tmp_path, capsys):
    from videograin.config.parse import load_spec

    config = yaml.safe_load(example_config.read_text())
    del config["edit"]
    merged = example_config.with_name("merged.yaml")
    merged.write_text(yaml.safe_dump(config) + "edit:\n  <<: {steps: 3, seed: 4}\n  seed: 5\n")
    spec = load_spec(merged)
    assert (spec.edit.steps, spec.edit.seed) == (3, 5)  # merged, and an explicit key overrides a merged one
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"jobs:\n  - config: {example_config}\n    name: a\n    name: b\n")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "batch"), "--quiet"]) == 2
    assert "duplicate key 'name'" in capsys.readouterr().err
