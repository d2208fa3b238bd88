"""videograin: zero-shot multi-grained video editing on stock diffusers models.

``videograin.edit(config, out)`` runs an edit and writes its output folder; ``VideoGrainPipeline`` is
the diffusers pipeline underneath. Both are imported on first use (torch and diffusers are heavy).
``CUSTOM_PIPELINE`` is the file for ``DiffusionPipeline.from_pretrained(..., custom_pipeline=...)``.
"""

from pathlib import Path

__version__ = "0.1.0"

CUSTOM_PIPELINE = str(Path(__file__).with_name("custom_pipeline.py"))

__all__ = ["CUSTOM_PIPELINE", "VideoGrainPipeline", "edit"]


def __getattr__(name: str):
    if name == "edit":
        from .runner import edit

        return edit
    if name == "VideoGrainPipeline":
        from .pipeline import VideoGrainPipeline

        return VideoGrainPipeline
    raise AttributeError(f"module 'videograin' has no attribute {name!r}")
