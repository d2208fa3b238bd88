"""The file to give diffusers' ``custom_pipeline``: it names the installed VideoGrainPipeline, so

    DiffusionPipeline.from_pretrained(folder, custom_pipeline=videograin.CUSTOM_PIPELINE)

loads a Stable Diffusion folder (or a saved VideoGrainPipeline) as this pipeline. diffusers copies
this file alone into its modules cache; the import below reaches the installed package, so every
part of the pipeline (flow aids, ControlNet, ...) comes from there.
"""

from videograin.pipeline_sd import VideoGrainPipeline

__all__ = ["VideoGrainPipeline"]
