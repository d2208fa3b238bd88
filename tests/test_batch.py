"""`videograin batch` and `videograin report`: a job list with a broken job, in this process and on a
local Ray cluster, resumable, one results table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import copy_example


@pytest.fixture()
def job_list(tmp_path, tiny_model_dir):
    config = copy_example(tmp_path / "two_balls", tiny_model_dir, frames=2)
    broken = tmp_path / "broken.yaml"
    data = yaml.safe_load(config.read_text())
    data["video"]["path"] = str(tmp_path / "no-such-video.mp4")
    broken.write_text(yaml.safe_dump(data))
    jobs = {"jobs": [
        {"config": "two_balls/config.yaml", "name": "plain", "steps": 2},
        {"config": "two_balls/config.yaml", "name": "seeded", "steps": 2, "seed": 3, "method": "reatco"},
        {"config": "two_balls/config.yaml", "name": "strong", "steps": 2, "set": {"edit.modulation.cross_strength": 2.0}},
        {"config": "broken.yaml", "name": "broken"},
    ]}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(jobs))
    return path


def _frames(folder):
    return {p.name: p.read_bytes() for p in sorted((folder / "frames").iterdir())}


def test_batch_runs_resumes_and_reports_and_ray_gives_the_same_frames(job_list, tmp_path, capsys, monkeypatch):
    from videograin import loading
    from videograin.cli import main

    loads = []
    load = loading.load_pipeline
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: loads.append(1) or load(*a, **k))
    out = tmp_path / "batch"
    assert main(["batch", str(job_list), "--out", str(out), "--quiet"]) == 1  # one job failed
    assert len(loads) == 1  # three jobs of one model: loaded once
    rows = {r["name"]: r for r in json.loads((out / "batch.json").read_text())["jobs"]}
    assert {n: r["status"] for n, r in rows.items()} == {"plain": "done", "seeded": "done", "strong": "done",
                                                         "broken": "failed"}
    assert "video.path" in rows["broken"]["error"] and "\n" not in rows["broken"]["error"]
    runs = {n: json.loads((out / n / "run.json").read_text()) for n in ("plain", "seeded", "strong")}
    assert runs["seeded"]["config"]["edit"]["seed"] == 3 and runs["seeded"]["config"]["edit"]["method"] == "reatco"
    assert runs["strong"]["config"]["edit"]["modulation"]["cross_strength"] == 2.0
    assert _frames(out / "plain") != _frames(out / "strong")
    first = {n: (out / n / "run.json").stat().st_mtime_ns for n in runs}

    assert main(["batch", str(job_list), "--out", str(out), "--quiet"]) == 1
    again = {r["name"]: r["status"] for r in json.loads((out / "batch.json").read_text())["jobs"]}
    assert again == {"plain": "skipped", "seeded": "skipped", "strong": "skipped", "broken": "failed"}
    assert {n: (out / n / "run.json").stat().st_mtime_ns for n in runs} == first  # nothing redone
    with open(out / "results.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [(r["name"], r["status"]) for r in table] == [("broken", "failed"), ("plain", "skipped"),
                                                         ("seeded", "skipped"), ("strong", "skipped")]
    assert float(table[1]["seconds"]) > 0 and table[0]["error"].startswith("video.path")
    page = (out / "report.html").read_text()
    assert page.count("<tr class=") == 4 and 'src="plain/comparison.gif"' in page
    assert main(["report", str(out)]) == 0 and (out / "results.md").read_text().count("\n") == 6

    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = tmp_path / "on_ray"
        assert main(["batch", str(job_list), "--out", str(on_ray), "--ray", "--cpus-per-job", "1", "--quiet"]) == 1
    finally:
        ray.shutdown()
    statuses = {r["name"]: r["status"] for r in json.loads((on_ray / "batch.json").read_text())["jobs"]}
    assert statuses == {"plain": "done", "seeded": "done", "strong": "done", "broken": "failed"}
    for name in runs:
        assert _frames(on_ray / name) == _frames(out / name), name


def test_report_shows_metrics_found_beside_a_job_and_survives_junk(tmp_path, caplog):
    """report of a folder whose records are junk: a batch.json that is a list, then not JSON, a run.json
    with wrong types, a run.json that is a FIFO (read, it would block for ever): the good rows, at once."""
    import os
    import threading

    from videograin.cli import main

    def job(name: str, record) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(record))
        return tmp_path / name

    config = {"prompt": "two balls", "regions": [{"name": "left", "prompt": "a red ball"}, {"name": "right"}]}
    good = job("good", {"config": config, "timings": {"total": 3.5}, "eval": {"metrics": {"psnr_outside_db": 30.0}}})
    (good / "metrics.json").write_text(json.dumps({"metrics": {"psnr_outside_db": 31.0, "warp_err": 2.5,
                                                               "flag": True}}))
    job("typed", {"config": {"prompt": 5, "regions": "left"}, "timings": [1], "eval": {"metrics": [1]}})
    job("listed", [1, 2])
    (tmp_path / "piped").mkdir()
    os.mkfifo(tmp_path / "piped" / "run.json")
    (tmp_path / "good" / "frames").mkdir()

    for batch in ("[1, 2]", "{not json", json.dumps({"jobs": [{"name": "good", "status": "done"}, 7,
                                                              {"name": "gone", "status": "failed", "error": "x"}]})):
        (tmp_path / "batch.json").write_text(batch)
        result = {}
        thread = threading.Thread(target=lambda: result.update(rc=main(["report", str(tmp_path)])), daemon=True)
        thread.start()
        thread.join(5)
        assert result.get("rc") == 0, "report blocked or failed"
        with open(tmp_path / "results.csv", encoding="utf-8") as f:
            rows = {row["name"]: row for row in csv.DictReader(f)}
        expected = {"good", "typed"} | ({"gone"} if "gone" in batch else set())
        assert set(rows) == expected, batch
        assert rows["good"]["psnr_outside_db"] == "31" and rows["good"]["warp_err"] == "2.5"  # the later eval's
        assert rows["good"]["seconds"] == "3.5" and rows["good"]["regions"] == "left: a red ball; right: (kept)"
        assert "flag" not in rows["good"] and rows["typed"]["seconds"] == "" and rows["typed"]["regions"] == ""
    assert "is not a batch record" in caplog.text
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
