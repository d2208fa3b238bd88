"""Shared fixtures: a tiny random-weight SD-shaped model written once per test session."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "two_balls"

# Without an NVIDIA GPU the Triton kernel's tests run in Triton's interpreter, which must be chosen
# before anything (torch's FlexAttention, say) imports triton.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def copy_example(folder: Path, model: Path, frames: int | None = None, **top_level) -> Path:
    """Copy the bundled example into ``folder`` with its config pointing at ``model``; ``frames``
    shortens the clip, ``top_level`` sets other top-level keys. Returns the config path."""
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("out"))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config.update(model=str(model), **top_level)
    if frames is not None:
        config["video"]["frames"] = frames
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder of the tiny model (diffusers layout), built offline once per session."""
    from videograin.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    """VideoGrainPipeline loaded from ``tiny_model_dir`` with progress bars off."""
    from videograin.pipeline_sd import VideoGrainPipeline

    pipe = VideoGrainPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> Path:
    """Folder of the tiny Wan 2.1 model (diffusers' WanPipeline layout), built offline once per session."""
    from videograin.testing import make_tiny_wan_model

    return make_tiny_wan_model(tmp_path_factory.mktemp("wan") / "tiny-wan")


@pytest.fixture(scope="session")
def wan_pipe(tiny_wan_dir):
    """WanVideoGrainPipeline loaded from ``tiny_wan_dir`` with progress bars off."""
    from videograin import WanVideoGrainPipeline

    pipe = WanVideoGrainPipeline.from_pretrained(tiny_wan_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def example_config(tmp_path, tiny_model_dir) -> Path:
    """A copy of the bundled example on the tiny model, writing to ``tmp_path / "out"``."""
    return copy_example(tmp_path / "two_balls", tiny_model_dir, output=str(tmp_path / "out"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test reaches the network: hub look-ups fail at once, in this process and in the CLI
    subprocesses that tests start (as offline, without the retries of an unreachable network)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sd_pipe():
    """VideoGrainPipeline on trained SD 1.x weights from VIDEOGRAIN_TEST_MODEL; skips without them (a
    random VAE decoder spreads any latent change over the whole frame, so pixels cannot be checked)."""
    folder = os.environ.get("VIDEOGRAIN_TEST_MODEL")
    if not folder:
        pytest.skip("needs trained SD 1.x weights: set VIDEOGRAIN_TEST_MODEL to a local diffusers folder (a "
                    "random VAE decoder spreads any latent change over the whole frame, so pixels cannot be checked)")
    from videograin.pipeline_sd import VideoGrainPipeline

    pipe = VideoGrainPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------- bad inputs
# The input-error tests (tests/input_errors/) share the ``case`` fixture and the helpers below.


def _tree(root: Path) -> dict[str, object]:
    """Everything under ``root``: folders by name, files by size, mtime and content hash."""
    state: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            state[rel] = "dir"
        else:
            stat = p.stat()
            state[rel] = (stat.st_size, stat.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return state


class Case:
    """A tmp copy of the bundled example pointed at the tiny model; ``config`` is edited before ``fail``."""

    def __init__(self, tmp_path: Path, model: Path, monkeypatch, capsys):
        self.root = tmp_path
        self.folder = tmp_path / "two_balls"
        shutil.copytree(EXAMPLE, self.folder, ignore=shutil.ignore_patterns("out"))
        self.config = yaml.safe_load((self.folder / "config.yaml").read_text())
        self.config["model"] = str(model)
        self.out = tmp_path / "out"
        self.config["output"] = str(self.out)
        self.monkeypatch, self.capsys = monkeypatch, capsys

    @property
    def path(self) -> Path:
        return self.folder / "config.yaml"

    def write(self) -> Path:
        self.path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return self.path

    def masks(self, region: str) -> list[Path]:
        return sorted((self.folder / "masks" / region).glob("*.png"))

    def fail(self, field: str, *extra: str, command: str = "edit") -> str:
        """Run the CLI, expect the one-line error naming ``field``; returns the line."""
        config = self.write()
        out = Path(self.config.get("output", self.out))
        if not out.is_absolute():
            out = self.folder / out

        def tripwire(*args, **kwargs):
            raise AssertionError("weights were loaded: the input error was not caught before the edit")

        from videograin import loading

        self.monkeypatch.setattr(loading, "load_pipeline", tripwire)
        existed = out.exists()
        before = _tree(self.root)
        self.capsys.readouterr()
        from videograin.cli import main

        code = main([command, str(config), *extra])
        captured = self.capsys.readouterr()
        assert code == 2, captured.err
        assert captured.out == ""
        assert captured.err.endswith("\n") and captured.err.count("\n") == 1, captured.err
        line = captured.err.rstrip("\n")
        assert line.startswith(f"error: {field}: "), line
        problem, sep, fix = line[len(f"error: {field}: "):].partition("; fix: ")
        assert sep and problem.strip() and fix.strip(), line
        assert out.exists() == existed
        if out.parent.is_dir():
            assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folder left"
        assert _tree(self.root) == before, "files were written or changed"
        return line


@pytest.fixture()
def case(tmp_path, tiny_model_dir, monkeypatch, capsys) -> Case:
    return Case(tmp_path, tiny_model_dir, monkeypatch, capsys)


def region_entry(case: Case, name: str) -> dict:
    """The config entry of the region called ``name``."""
    return next(r for r in case.config["regions"] if r["name"] == name)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash (and every folder), to compare before and after."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def start_edit(case: Case, steps: int = 400) -> subprocess.Popen:
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
