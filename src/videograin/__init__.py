"""videograin: zero-shot multi-grained video editing on stock diffusers models.

``videograin.edit(config, out)`` runs an edit and writes its output folder; ``VideoGrainPipeline`` (SD)
and ``WanVideoGrainPipeline`` (Wan 2.x) are the diffusers pipelines underneath. They are imported on
first use (torch and diffusers are heavy).
``CUSTOM_PIPELINE`` is the file for ``DiffusionPipeline.from_pretrained(..., custom_pipeline=...)``.
"""

from pathlib import Path

__version__ = "0.1.0"

CUSTOM_PIPELINE = str(Path(__file__).with_name("custom_pipeline.py"))

__all__ = ["CUSTOM_PIPELINE", "VideoGrainPipeline", "WanVideoGrainPipeline", "edit"]


def __getattr__(name: str):
    if name == "edit":
        from .runner import edit

        return edit
    if name == "VideoGrainPipeline":
        from .pipeline_sd import VideoGrainPipeline

        return VideoGrainPipeline
    if name == "WanVideoGrainPipeline":
        from .pipeline_wan import WanVideoGrainPipeline

        return WanVideoGrainPipeline
    raise AttributeError(f"module 'videograin' has no attribute {name!r}")
