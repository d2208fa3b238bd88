"""Ctrl-C, SIGTERM and SIGKILL during an edit run as a subprocess: a caught signal ends the run with exit
code 130 and nothing written; what a killed run leaves (a lock, a temporary folder, an output moved
aside mid-swap) is cleaned or put back by the next run.
"""

from __future__ import annotations

import signal
import time

import pytest

from videograin import loading
from videograin.cli import main

from conftest import start_edit


@pytest.mark.parametrize("sig,times", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 4)])
def test_an_interrupt_leaves_nothing(case, sig, times):
    """Once, or again and again while the first one cleans up (an impatient Ctrl-C): the same clean end."""
    proc = start_edit(case)
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; nothing written"
    assert "Traceback" not in err
    assert not case.out.exists()
    assert not [p.name for p in case.root.iterdir() if p.name.startswith(".out")], "temp folder or lock left"


def test_a_killed_runs_leftovers_are_cleaned_by_the_next_run(case):
    """SIGKILL cannot be caught: the next run into the same place takes over the lock and removes the
    temporary folder (here it stops at an input error, and still leaves the place clean)."""
    proc = start_edit(case)
    proc.kill()
    proc.communicate(timeout=60)
    leftovers = [p.name for p in case.root.iterdir() if p.name.startswith(".out")]
    assert any(name.endswith(".lock") for name in leftovers) and len(leftovers) == 2
    case.config["edit"]["steps"] = 50
    case.config["video"]["frames"] = 40  # too many: an input error after the lock
    config = case.write()
    case.monkeypatch.setattr(loading, "load_pipeline", lambda *a: pytest.fail("weights were loaded"))
    assert main(["edit", str(config)]) == 2
    assert not [p.name for p in case.root.iterdir() if p.name.startswith(".out")]


def test_an_output_moved_aside_by_a_run_killed_mid_swap_is_put_back_not_deleted(tmp_path):
    """The state a kill leaves between output_folder's two renames (the old output moved aside to
    .out.<hex>.old, the new one still .out.<hex>, nothing under out): the next run restores the old one
    under its name and removes only the unfinished new one."""
    from videograin import outputs

    final = tmp_path / "out"
    old, new = tmp_path / ".out.0123abcd.old", tmp_path / ".out.0123abcd"
    old.mkdir()
    (old / "run.json").write_text('{"command": "edit"}')
    new.mkdir()
    (new / "partial.png").write_bytes(b"x")
    with outputs.output_lock(final):
        assert (final / "run.json").read_text() == '{"command": "edit"}'
    assert not old.exists() and not new.exists()
