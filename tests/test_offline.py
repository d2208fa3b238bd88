"""With no network and no HF_HUB_OFFLINE: the real offline case, which the suite's autouse fixture hides.

The hub's endpoint is a closed local port (connections are refused at once, as on a machine without a
network route), the hub cache a fresh folder. Without the checks in hub.py, the hub client retries each
file for about 30 s (52 s measured for one edit) and prints its socket errors.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: connections to it are refused


@pytest.fixture()
def no_network(tmp_path) -> dict:
    """Environment of a process that has no network and was not told so."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
            "OMP_NUM_THREADS": "1"}


_TIMED = """
import sys, time
from videograin.config.preflight import read_model
from videograin.errors import SpecError
import diffusers, transformers  # imported before the clock starts: only the hub's part is timed
start = time.perf_counter()
try:
    facts = read_model(sys.argv[1])
    print("read", facts.capabilities.family)
except SpecError as err:
    print("error", err)
if len(sys.argv) > 2:
    from videograin import VideoGrainPipeline
    VideoGrainPipeline.from_pretrained(sys.argv[1])
    print("loaded")
print(f"seconds {time.perf_counter() - start:.2f}")
"""


def _timed(model: str, env: dict, load: bool = False) -> tuple[str, float]:
    proc = subprocess.run([sys.executable, "-c", _TIMED, model, *(["load"] if load else [])], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *lines, last = proc.stdout.strip().splitlines()
    return "\n".join(lines), float(last.split()[1])


def test_an_uncached_hub_id_fails_in_seconds_with_the_download_hint(no_network):
    out, seconds = _timed("someorg/uncached-model", no_network)
    assert seconds < 3, seconds
    assert out.startswith("error model: ") and "hf download" in out and "cannot be reached" in out, out


def test_the_cli_says_it_in_one_line(no_network, example_config, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "videograin.cli", "edit", str(example_config), "--model",
                           "someorg/uncached-model", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=no_network, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: model: "), proc.stderr
    assert "hf download" in proc.stderr and not (tmp_path / "o").exists()


def _put_in_hub_cache(folder: Path, hf_home: Path, repo: str) -> None:
    """``folder`` as the hub cache holds a downloaded ``repo`` (its main revision's snapshot)."""
    cache = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(folder, cache / "snapshots" / revision)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(revision)


def test_a_cached_hub_id_is_read_and_loaded_without_the_retries(no_network, tiny_model_dir):
    """The cache holds the model but the hub cannot be reached: the hub client is put offline at once."""
    _put_in_hub_cache(tiny_model_dir, Path(no_network["HF_HOME"]), "someorg/tiny")
    out, seconds = _timed("someorg/tiny", no_network, load=True)
    assert out == "read sd\nloaded", out
    assert seconds < 10, seconds  # one retry sequence alone is about 30 s
