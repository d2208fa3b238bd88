"""The toy world's text-to-video model on the Wan 2.1 architecture: stock diffusers / transformers
classes at a tiny size, saved as a Wan text-to-video folder that ``WanVideoGrainPipeline`` loads.

- AutoencoderKLWan, base width 16, two downsampling stages, both also in time: 32x32 frames -> 8x8
  latents, 9 frames -> 3 latent frames (frame 0, then frames 1-4 and 5-8), 16 channels as Wan 2.1's.
  Two stages because Wan's rule of 4k + 1 frames (the VAE encodes frame 0, then chunks of 4) fits a
  time factor of 4; its spatial factor is then 4. ``stages=1`` (16x16 latents, 2x in time: 5 latent
  frames) is the sharper VAE tried in toyworld/README, "On Wan".
- WanTransformer3DModel with patch (1, 1, 1): the 8x8 latent grid is the token grid, so a shape of
  8-12 px spans 2-3 tokens a side (a 2x2 patch would leave 4x4 tokens per frame, a shape about one);
  4 blocks of 2 heads of 32, RoPE over (time, height, width). On the one-stage VAE's 16x16 latents,
  patch 2 gives the same 8x8 tokens.
- UMT5EncoderModel, 64 wide, 2 layers, with a T5-style tokenizer in which every world word is one token.
- UniPC with flow sigmas and shift 3, as Wan ships (the edit reads only its σ grid).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from transformers import UMT5Config, UMT5EncoderModel

from videograin.backbones.wan import TEXT_LENGTH
from videograin.testing import t5_word_tokenizer

from .world import WORDS

TEXT_WIDTH = 64
FRAMES = 9  # 4·2 + 1: three latent frames
FLOW_SHIFT = 3.0
LATENT_CHANNELS = 16


def make_tokenizer():
    return t5_word_tokenizer(WORDS)


def make_text_encoder(tokenizer) -> UMT5EncoderModel:
    return UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_WIDTH, d_kv=16, d_ff=128, num_layers=2,
                                       num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0))


def make_vae(stages: int = 2, channels: int = LATENT_CHANNELS, time_stages: int | None = None) -> AutoencoderKLWan:
    """``stages`` downsampling stages, the last ``time_stages`` of them (default all) also in time, as
    Wan 2.1's first stage is not (2 and 2: 4x in space and time; 2 and 1: 4x in space, 2x in time; 1: 2x),
    ``channels`` latent channels. Its latents_mean / latents_std are set after training (``train_wan``). The posterior's log-variance
    starts at -8 (std 0.02): from the default 0 (std 1, as large as the latents) the trained decoder
    gives the same error on a sample as on the mean, i.e. it ignores the latents' detail."""
    time_stages = stages if time_stages is None else time_stages
    vae = AutoencoderKLWan(base_dim=16, z_dim=channels, dim_mult=[1] + [2] * stages, num_res_blocks=1,
                           temperal_downsample=[i >= stages - time_stages for i in range(stages)],
                           latents_mean=[0.0] * channels, latents_std=[1.0] * channels)
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0
        vae.quant_conv.bias[channels:] = -8.0
    return vae


def make_transformer(patch: int = 1, layers: int = 4, channels: int = LATENT_CHANNELS,
                     heads: int = 2) -> WanTransformer3DModel:
    """Patches of ``patch`` x ``patch`` latents of ``channels`` channels, ``layers`` blocks of ``heads`` heads
    of 32 (width 32 * heads, feed-forward 4x that)."""
    return WanTransformer3DModel(patch_size=(1, patch, patch), num_attention_heads=heads, attention_head_dim=32,
                                 in_channels=channels, out_channels=channels, text_dim=TEXT_WIDTH,
                                 freq_dim=64, ffn_dim=128 * heads, num_layers=layers, rope_max_seq_len=64)


def save_pipeline(folder: Path, vae, text_encoder, tokenizer, transformer, shift: float = FLOW_SHIFT) -> Path:
    """Save as a Wan text-to-video folder (safetensors) whose sampler shifts its σ grid by ``shift``."""
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def encode_captions(text_encoder, tokenizer, captions: list[str], fold_padding: bool = False) -> torch.Tensor:
    """(B, 512, D) as the pipeline encodes prompts (``WanBackbone.encode_prompt``): umT5's output for
    each caption's tokens, zero after them, to 512. Encoded at the longest caption's length, then
    padded: the same numbers (padding is masked out of umT5's attention), at a fraction of the cost
    of 512 tokens. Training sees the same zero keys the edit will.

    ``fold_padding``: (B, L + 1, D) instead, L the longest caption's length, the last row zero and
    standing for the padding after L (for a transformer with :func:`fold_text_padding`)."""
    tokens = tokenizer(captions, padding="longest", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
    embeds = text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state * tokens.attention_mask[..., None]
    rows = embeds.shape[1] + 1 if fold_padding else TEXT_LENGTH
    return torch.nn.functional.pad(embeds, (0, 0, 0, rows - embeds.shape[1]))


class FoldedPaddingAttnProcessor(WanAttnProcessor):
    """Wan cross-attention over a text context (B, L + 1, D) whose last row stands for the zero rows
    that would pad it to 512. Zero rows give identical keys and values (the text projection and the
    key norm act row by row), so attending to n of them equals attending to one whose score is raised
    by log n: the same output as over the 512 rows, at the cost of L + 1."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        rows = encoder_hidden_states.shape[1]
        bias = hidden_states.new_zeros(1, 1, 1, rows)
        bias[..., -1] = math.log(TEXT_LENGTH - rows + 1)
        return super().__call__(attn, hidden_states, encoder_hidden_states, bias, rotary_emb)


def fold_text_padding(transformer: WanTransformer3DModel) -> WanTransformer3DModel:
    """Install :class:`FoldedPaddingAttnProcessor` on every block's cross-attention (for training on
    ``encode_captions(..., fold_padding=True)``; a saved model keeps no processor)."""
    for block in transformer.blocks:
        block.attn2.set_processor(FoldedPaddingAttnProcessor())
    return transformer
