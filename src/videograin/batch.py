"""Many edits: a job list run one after another in this process, or as Ray tasks over a cluster.

Jobs come from a folder of configs, a list of config paths, or a YAML job list::

    jobs:
      - config: examples/two_balls/config.yaml        # relative to the job list's folder
        name: balls_seed1                             # default: the config's file name
        seed: 1                                       # any of SHORTCUTS
        set: {edit.modulation.cross_strength: 2.0}    # any config key, dotted

Each job writes ``<out>/<name>/`` (the output folder of `videograin edit`). A job whose run.json holds
the same resolved config (compared by hash) is skipped unless ``force``. Errors other than input errors
are retried; a job that still fails is recorded with its one-line error and the others go on. The
batch's own record is ``<out>/batch.json``; results.csv / results.md / report.html are written from
it and the output folders (``report.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import media, runner
from .config.overrides import SHORTCUTS, shortcut_keys, with_overrides
from .config.parse import load_spec
from .config.yaml_fields import UniqueKeyLoader
from .config.preflight import model_recommended, with_recommended
from .config.spec import EditSpec, plain_name
from .errors import SpecError, first_line
from .inversion_cache import INVERSIONS, InversionCache

logger = logging.getLogger("videograin")

CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Job:
    """One edit of a batch: its config file, the overrides (SHORTCUTS) and dotted config keys to
    set, and the name of its output folder."""

    name: str
    config: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    sets: dict[str, Any] = field(default_factory=dict)

    def spec(self, out_root: Path) -> EditSpec:
        """The resolved config, writing to ``out_root / name``; SpecError for a bad config or key."""
        spec = with_overrides(load_spec(self.config), {**self.sets, **shortcut_keys(self.overrides)})
        return dataclasses.replace(spec, output=(Path(out_root) / self.name).resolve())


def config_hash(config: dict) -> str:
    """sha256 of a resolved config (as run.json records it), its output folder left out."""
    data = {k: v for k, v in config.items() if k != "output"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _job_list(path: Path) -> list[Job]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    entries = data.get("jobs")
    if not isinstance(entries, list) or not entries:
        raise SpecError("jobs", f"{path}: `jobs` must be a non-empty list", "list one mapping per job with `config:`")
    jobs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "config" not in entry:
            raise SpecError(f"jobs[{i}]", "needs a `config:` path", "give each job `config: path/to/config.yaml`")
        entry = dict(entry)
        config = (path.parent / str(entry.pop("config"))).resolve()
        name = str(entry.pop("name", config.stem))
        sets = entry.pop("set", {}) or {}
        if not isinstance(sets, dict):
            raise SpecError(f"jobs[{i}].set", f"must be a mapping of dotted config keys to values, got {sets!r}",
                            "write e.g. `set: {edit.modulation.cross_strength: 2.0}`")
        unknown = set(entry) - set(SHORTCUTS)
        if unknown:
            raise SpecError(f"jobs[{i}]", f"unknown key(s) {sorted(unknown)}",
                            f"use config, name, set or one of {', '.join(SHORTCUTS)}")
        jobs.append(Job(name, config, entry, dict(sets)))
    return jobs


def load_jobs(sources: list[str | Path]) -> list[Job]:
    """Jobs from config files, folders of configs and YAML job lists (a mapping with ``jobs:``). Names
    are made unique (``name``, ``name_2``, ...)."""
    jobs: list[Job] = []
    for source in map(Path, sources):
        if source.is_dir():
            configs = sorted((p for p in source.iterdir() if p.suffix in CONFIG_SUFFIXES), key=lambda p: media.natural_key(p.name))
            if not configs:
                raise SpecError("JOBS", f"{source} holds no .yaml configs", "give a folder of configs or a job list")
            jobs += [Job(p.stem, p.resolve()) for p in configs]
        elif source.is_file():
            try:
                data = yaml.load(source.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
            except yaml.YAMLError as err:
                raise SpecError("JOBS", f"{source} is not YAML ({first_line(err)})", "fix the file") from None
            jobs += _job_list(source) if isinstance(data, dict) and "jobs" in data else [Job(source.stem, source.resolve())]
        else:
            raise SpecError("JOBS", f"{source} does not exist", "give configs, folders of configs or a job list")
    seen: dict[str, int] = {}
    unique = []
    for job in jobs:
        plain_name(job.name, f"job {job.name!r} ({job.config.name})")  # its output folder's name under --out
        seen[job.name] = seen.get(job.name, 0) + 1
        unique.append(job if seen[job.name] == 1 else Job(f"{job.name}_{seen[job.name]}", job.config, job.overrides, job.sets))
    return unique


def run_job(job: Job, out_root: Path, *, evaluate: bool, force: bool, retries: int, device: str | None,
            pipelines: dict | None) -> dict:
    """One job: skipped (same config already done), done, or failed (after ``retries`` more tries of a
    runtime error; input errors are not retried). Returns its row for batch.json."""
    row: dict[str, Any] = {"name": job.name, "config": str(job.config), "out": str(Path(out_root) / job.name)}
    clock = time.perf_counter()
    try:
        spec = job.spec(out_root)
        spec = with_recommended(spec, model_recommended(spec.model))  # the config as run.json records it
    except SpecError as err:
        return {**row, "status": "failed", "attempts": 0, "error": str(err), "seconds": 0.0}
    digest = config_hash(spec.to_dict())
    row["config_hash"] = digest
    done = spec.output / "run.json"
    if done.is_file() and not force:
        try:
            if config_hash(json.loads(done.read_text(encoding="utf-8"))["config"]) == digest:
                return {**row, "status": "skipped", "attempts": 0, "seconds": 0.0}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable run.json is redone
    for attempt in range(1, retries + 2):
        try:
            runner.edit(spec, overwrite=True, evaluate=evaluate, device=device, progress=False, pipelines=pipelines,
                        argv=["videograin", "batch", job.name], inversion_cache=InversionCache(out_root / INVERSIONS))
            return {**row, "status": "done", "attempts": attempt, "seconds": round(time.perf_counter() - clock, 3)}
        except SpecError as err:
            return {**row, "status": "failed", "attempts": attempt, "error": str(err),
                    "seconds": round(time.perf_counter() - clock, 3)}
        except Exception as err:  # noqa: BLE001 - a failed job is recorded, the batch goes on
            error = f"{type(err).__name__}: {first_line(err)}"
            logger.warning("job %s, attempt %d: %s", job.name, attempt, error)
    return {**row, "status": "failed", "attempts": retries + 1, "error": error,
            "seconds": round(time.perf_counter() - clock, 3)}


class _Worker:
    """A Ray actor: runs jobs with one pipeline cache, so each model loads once per worker."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.pipelines: dict = {}

    def run(self, job: Job, out_root: str, options: dict) -> dict:
        return run_job(job, Path(out_root), pipelines=self.pipelines, **options)


def _ray_rows(jobs: list[Job], out_root: Path, options: dict, address: str | None, gpus_per_job: float | None,
              cpus_per_job: int, on_row) -> list[dict]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise SpecError("--ray", "needs Ray, which is not installed", 'pip install "videograin[cluster]"') from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    resources = ray.cluster_resources()
    gpus = gpus_per_job if gpus_per_job is not None else (1 if resources.get("GPU", 0) >= 1 else 0)
    if gpus:
        workers = int(resources.get("GPU", 0) // gpus)
        if workers < 1:
            raise SpecError("--gpus-per-job", f"{gpus} GPUs per job but the cluster has {resources.get('GPU', 0)}",
                            "lower --gpus-per-job or pass --gpus-per-job 0 for CPU jobs")
    else:
        workers = max(1, int(resources.get("CPU", 1) // cpus_per_job))
    actor = ray.remote(num_gpus=gpus, num_cpus=cpus_per_job)(_Worker)
    pool = ActorPool([actor.remote(cpus_per_job) for _ in range(min(workers, len(jobs)))])
    rows = []
    for row in pool.map_unordered(lambda a, job: a.run.remote(job, str(out_root), options), jobs):
        rows.append(row)
        on_row(row)
    order = {job.name: i for i, job in enumerate(jobs)}
    return sorted(rows, key=lambda r: order[r["name"]])


def run_batch(jobs: list[Job], out_root: str | Path, *, evaluate: bool = False, force: bool = False,
              retries: int = 1, device: str | None = None, ray_address: str | None = None, use_ray: bool = False,
              gpus_per_job: float | None = None, cpus_per_job: int = 1, progress: bool = True) -> list[dict]:
    """Run ``jobs`` into ``out_root`` (one after another here, or on Ray with ``use_ray``); writes
    batch.json and the results table and report. Returns the rows (status done / skipped / failed)."""
    from tqdm.auto import tqdm

    from .report import write_report

    out_root = Path(out_root).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    if retries < 0:
        raise SpecError("--retries", f"must be >= 0, got {retries}", "pass 0 for no retries")
    if cpus_per_job < 1:
        raise SpecError("--cpus-per-job", f"must be >= 1, got {cpus_per_job}", "pass a positive number of CPUs")
    options = {"evaluate": evaluate, "force": force, "retries": retries, "device": device}
    counts = {"done": 0, "skipped": 0, "failed": 0}
    bar = tqdm(total=len(jobs), desc="batch", unit="job", disable=not progress)

    def on_row(row: dict) -> None:
        counts[row["status"]] += 1
        bar.set_postfix(counts)
        bar.update()
        if row["status"] == "failed":
            logger.warning("job %s failed: %s", row["name"], row["error"])

    try:
        if use_ray:
            rows = _ray_rows(jobs, out_root, options, ray_address, gpus_per_job, cpus_per_job, on_row)
        else:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(cpus_per_job)  # as on a Ray worker, so both give the same frames
            pipelines: dict = {}
            rows = []
            try:
                for job in jobs:
                    rows.append(run_job(job, out_root, pipelines=pipelines, **options))
                    on_row(rows[-1])
            finally:
                torch.set_num_threads(threads)
    finally:
        bar.close()
    media.write_json(out_root / "batch.json", {"jobs": rows, "counts": counts})
    write_report(out_root)
    return rows
