"""``VideoGrainPipeline``: VideoGrain on Stable Diffusion 1.x/2.x (``backbones.sd``)."""

from __future__ import annotations

from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from diffusers.loaders import FromSingleFileMixin, StableDiffusionLoraLoaderMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTokenizer

from .backbones.base import Backbone
from .backbones.sd import StableDiffusionBackbone
from .pipeline import BaseVideoGrainPipeline


class VideoGrainPipeline(BaseVideoGrainPipeline, StableDiffusionLoraLoaderMixin, FromSingleFileMixin):
    """Multi-grained zero-shot video editing with a frozen SD 1.x/2.x checkpoint (VideoGrain, arXiv:2502.17258).

    Frames travel as the batch dimension; the spatio-temporal and layout-modulated attention lives in
    processors installed for the duration of a call. Extra components of a Stable Diffusion folder
    (safety checker, feature extractor) are ignored; any scheduler is replaced by DDIM with its config.
    ``load_lora_weights`` (diffusers' LoRA loader, with PEFT) applies LoRAs to the UNet and text encoder;
    ``from_single_file`` loads a single-file checkpoint (``config=``: a diffusers folder or hub id of
    the same architecture, for its config files and tokenizer).
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["controlnet"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        controlnet: ControlNetModel | None = None,
    ):
        super().__init__()
        if not isinstance(scheduler, DDIMScheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, controlnet=controlnet
        )

    @property
    def backbone(self) -> Backbone:
        return StableDiffusionBackbone(self)
