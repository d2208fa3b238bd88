"""Bad job lists for `videograin batch`: one stderr line naming the job entry, exit code 2, nothing written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from videograin.cli import main

from conftest import snapshot


def test_job_list_errors_name_the_entry(tmp_path, capsys):
    from videograin.cli import main

    bad = tmp_path / "jobs.yaml"
    bad.write_text(yaml.safe_dump({"jobs": [{"config": "a.yaml", "sead": 1}]}))
    assert main(["batch", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "jobs[0]" in err and "sead" in err and len(err.strip().splitlines()) == 1
    assert main(["batch", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("name", ["../escaped", "/abs/path", "", ".", "..", "a/b", "with space"])
def test_a_batch_job_name_that_is_not_a_plain_name_is_refused(example_config, tmp_path, name, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"jobs": [{"config": str(example_config), "name": name}]}))
    before = snapshot(tmp_path)
    assert main(["batch", str(jobs), "--out", str(tmp_path / "batch"), "--quiet"]) == 2
    assert "cannot be used as a file or folder name" in capsys.readouterr().err
    assert snapshot(tmp_path) == before and not Path("/abs/path").exists()


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
