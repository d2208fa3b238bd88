"""Shared fixtures: a tiny random-weight SD-shaped model written once per test session."""

from __future__ import annotations

import os
import shutil
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
    from videograin.pipeline import VideoGrainPipeline

    pipe = VideoGrainPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def example_config(tmp_path, tiny_model_dir) -> Path:
    """A copy of the bundled example on the tiny model, writing to ``tmp_path / "out"``."""
    return copy_example(tmp_path / "two_balls", tiny_model_dir, output=str(tmp_path / "out"))


@pytest.fixture(scope="session")
def sd_pipe():
    """VideoGrainPipeline on trained SD 1.x weights from VIDEOGRAIN_TEST_MODEL; skips without them (a
    random VAE decoder spreads any latent change over the whole frame, so pixels cannot be checked)."""
    folder = os.environ.get("VIDEOGRAIN_TEST_MODEL")
    if not folder:
        pytest.skip("needs trained SD 1.x weights: set VIDEOGRAIN_TEST_MODEL to a local diffusers folder (a "
                    "random VAE decoder spreads any latent change over the whole frame, so pixels cannot be checked)")
    from videograin.pipeline import VideoGrainPipeline

    pipe = VideoGrainPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe
