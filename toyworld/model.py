"""The toy world's text-to-image model: stock diffusers / transformers classes at a tiny size.

- AutoencoderKL with two blocks: 2x downsampling, 4 latent channels (32x32 frames -> 16x16 latents);
- CLIPTextModel (64 wide, 2 layers) and a CLIPTokenizer in which every world word is one token;
- UNet2DConditionModel with cross-attention at each of its three levels (16x16, 8x8, 4x4) and the mid
  block, one attention head (fastest on CPU at this width); the 4x4 level lets a convolution with zero
  padding tell the thirds of the frame apart, which the place words need;
- DDIMScheduler with Stable Diffusion's scaled-linear betas (steps_offset 1, set_alpha_to_one False,
  clip_sample False).

So the pipeline's size multiple is 2 (VAE) * 4 (UNet) = 8.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from videograin.testing import clip_text_encoder, sd15_scheduler, word_tokenizer
from videograin.toy import SD_MODEL

from .world import SIZE, WORDS

TEXT_WIDTH = 64


def make_tokenizer():
    return word_tokenizer(WORDS, model_max_length=77)


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=SIZE,
        mid_block_add_attention=False,  # local decoder: an edit cannot shift far-away pixels
    )


def make_text_encoder(tokenizer) -> CLIPTextModel:
    return clip_text_encoder(tokenizer, width=TEXT_WIDTH, heads=2)


def make_unet(channels: tuple[int, ...] = (32, 64, 64)) -> UNet2DConditionModel:
    """One cross-attention down and up block per entry of ``channels``."""
    return UNet2DConditionModel(
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * len(channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(channels),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=1,  # diffusers' legacy name: the number of heads
        norm_num_groups=16,
    )


def save_pipeline(folder: Path, vae, text_encoder, tokenizer, unet) -> Path:
    """Save as a Stable Diffusion folder (safetensors) that ``VideoGrainPipeline.from_pretrained`` loads."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def load_pipeline(folder: str | Path = SD_MODEL):
    """The saved toy model as a VideoGrainPipeline (CPU, eval mode, progress bars off)."""
    from videograin.pipeline_sd import VideoGrainPipeline

    pipe = VideoGrainPipeline.from_pretrained(str(folder))
    # VideoGrainPipeline.invert/__call__ call set_progress_bar_config(desc=...), which replaces the
    # whole config (diffusers), so a plain disable=True would not last: keep it on every call.
    def quiet(**kwargs):
        VideoGrainPipeline.set_progress_bar_config(pipe, **{**kwargs, "disable": True})

    pipe.set_progress_bar_config = quiet
    quiet()
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.eval()
    return pipe


def token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """(B, 77) token ids, padded as the pipeline pads them."""
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
