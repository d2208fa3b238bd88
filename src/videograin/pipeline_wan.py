"""``WanVideoGrainPipeline``: VideoGrain on Wan 2.1 / 2.2 text-to-video models (``backbones.wan``)."""

from __future__ import annotations

from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanTransformer3DModel
from diffusers.loaders import WanLoraLoaderMixin
from transformers import AutoTokenizer, UMT5EncoderModel

from .backbones.base import Backbone
from .backbones.wan import WanBackbone
from .pipeline import BaseVideoGrainPipeline


class WanVideoGrainPipeline(BaseVideoGrainPipeline, WanLoraLoaderMixin):
    """VideoGrain on a Wan 2.x text-to-video model (``backbones.wan``): the same call, the same stages.

    The components of diffusers' ``WanPipeline``: Wan 2.2 A14B's second expert ``transformer_2`` takes
    the steps below ``boundary_ratio`` (both experts carry the layout processors) and Wan 2.2 TI2V-5B's
    ``expand_timesteps`` gives each token its time. Frames must number 4k + 1 and their sides be
    multiples of the VAE's factor times the patch (16; TI2V-5B: 32); the inversion and the edit are Euler
    steps on the velocity over the flow scheduler's σ grid (its ``flow_shift``). ``modulation.levels``
    and ``reatco.level`` name transformer blocks here; ``temporal`` is always "full"; ``window`` counts
    latent frames. The temporal aids and ControlNet are not on Wan (``capabilities``).
    """

    model_cpu_offload_seq = "text_encoder->transformer->transformer_2->vae"
    _optional_components = ["transformer_2"]

    def __init__(
        self,
        vae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer: AutoTokenizer,
        transformer: WanTransformer3DModel,
        scheduler: UniPCMultistepScheduler | FlowMatchEulerDiscreteScheduler,
        transformer_2: WanTransformer3DModel | None = None,
        boundary_ratio: float | None = None,
        expand_timesteps: bool = False,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                              scheduler=scheduler, transformer_2=transformer_2)
        self.register_to_config(boundary_ratio=boundary_ratio, expand_timesteps=expand_timesteps)

    @property
    def backbone(self) -> Backbone:
        return WanBackbone(self)
