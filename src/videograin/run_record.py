"""run.json: what an output folder records about the run that wrote it (config, command, versions,
git commit, device, sizes, timings, peak memory), and the run's summary line."""

from __future__ import annotations

import datetime
import platform
import resource
import subprocess
from pathlib import Path

import torch

from . import __version__
from .inputs import VideoInputs


def versions() -> dict[str, str]:
    """Versions of the project and the libraries an edit depends on."""
    import diffusers
    import transformers

    return {
        "videograin": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def peak_memory(device: str) -> dict[str, float | str]:
    """Peak memory of this process so far (CUDA: allocated on the GPU; else max RSS), in MiB."""
    if device.startswith("cuda"):
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "memory_kind": "cuda max allocated"}
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory_kind": "process max RSS"}


def run_record(config: dict, command: str, pipe, device: str, inputs: VideoInputs,
               argv: list[str] | None = None) -> dict:
    """The start of run.json: the resolved config, the command (and its argv), when (UTC), versions
    (and the project's git commit), device (and GPU), the model and the input sizes."""
    return {
        "config": config,
        "command": command,
        "argv": argv,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git_commit": _git_commit(),
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "model": pipe.name_or_path,
        "dtype": str(pipe.dtype),
        "frames": int(inputs.frames.shape[0]),
        "size": list(inputs.size),
        "source_size": list(inputs.source_size),
        "fps": inputs.fps,
        "notes": inputs.notes,
    }


def _git_commit() -> str | None:
    """The commit of the project's checkout this package runs from, if it runs from one."""
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def summary(folder: Path, record: dict) -> str:
    """The end of a run in a few lines, under io's "wrote <folder>": which files, how long, how much memory."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(folder).iterdir())
    timings = record["timings"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total")
    return (f"  files: {' '.join(names)}\n  seconds: {timings['total']:.1f} ({stages})\n"
            f"  peak memory: {record['peak_memory_mb']:.0f} MiB ({record['memory_kind']})")
