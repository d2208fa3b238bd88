"""Shared fixtures: a tiny random-weight SD-shaped model written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder of the tiny model (diffusers layout), built offline once per session."""
    from videograin.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    """VideoGrainPipeline loaded from ``tiny_model_dir`` with progress bars off."""
    from videograin.pipeline import VideoGrainPipeline

    pipe = VideoGrainPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe
