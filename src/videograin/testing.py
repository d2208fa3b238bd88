"""Tiny random-weight models, built offline, for smoke tests and CI.

``make_tiny_model``: the classes and folder layout of SD 1.5 (AutoencoderKL with 8x downsampling, CLIP
text encoder and tokenizer, UNet2DConditionModel with cross-attention at two levels, DDIM scheduler),
a few MB in all. ``make_tiny_wan_model``: those of Wan 2.1 text-to-video (AutoencoderKLWan, 4x in
time and 8x in space; umT5 encoder and a T5-style tokenizer; WanTransformer3DModel with 2x2 patches;
the flow-matching UniPC scheduler with shift 3), under 1 MB, or of Wan 2.2 (two experts; TI2V's
patchifying 48-channel VAE). Their output is noise.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from tokenizers.pre_tokenizers import ByteLevel

# Words that become single tokens; anything else is spelled out in characters (always tokenisable).
WORDS = """a an and the of on in under over with at by to from near behind front left right top bottom
man men woman women person people boy girl child dog dogs cat cats horse bird car cars bus truck bike
ball balls apple orange lemon pear red green blue yellow white black gray grey orange purple pink brown
gold silver tree trees cherry blossom blossoms flower flowers grass ground sky sea beach road street
water snow sand forest mountain city wall house sunglasses hat glasses shirt jacket spiderman iron
polar bear panda monkey robot superhero running jogging walking sitting standing rolling playing two
one three big small circle square triangle star ring background""".split()


def _bpe(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge every occurrence of the best-ranked pair."""
    while len(parts) > 1:
        best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if tuple(parts[i : i + 2]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def _tokenizer_files(folder: Path, words: Iterable[str] = WORDS) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt of a byte-level BPE in which each of ``words`` (default WORDS)
    is one token.

    Each word gets the merges it still needs after the earlier words' merges have applied; a merge
    added later ranks below all earlier ones, so it never changes how an earlier word splits.
    """
    chars = sorted(ByteLevel.alphabet())  # the 256 byte-level symbols CLIP's BPE starts from
    vocab = chars + [c + "</w>" for c in chars]
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):
        parts = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(parts) > 1:
            ranks[(parts[0], parts[1])] = len(ranks)
            vocab.append(parts[0] + parts[1])
            parts = _bpe(parts, ranks)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(dict.fromkeys(vocab))}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in ranks) + "\n")
    return vocab_file, merges_file


def word_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer whose BPE makes each of ``words`` (lower-case) one token; other text is spelled
    out in characters. Built offline in a temporary folder; save it with ``save_pretrained``."""
    with tempfile.TemporaryDirectory() as scratch:
        return CLIPTokenizer(*map(str, _tokenizer_files(Path(scratch), list(words))), model_max_length=model_max_length)


def sd15_scheduler() -> DDIMScheduler:
    """A DDIM scheduler with Stable Diffusion 1.5's noise schedule (1000 steps, scaled linear betas)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def clip_text_encoder(tokenizer: CLIPTokenizer, width: int, heads: int, layers: int = 2) -> CLIPTextModel:
    """A small random CLIP text encoder for ``tokenizer`` (77 positions, MLP twice the width)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def make_tiny_model(folder: str | Path, seed: int = 0, controlnet: bool = False) -> Path:
    """Write a tiny random-weight SD-style pipeline (diffusers folder layout, safetensors) to ``folder``;
    ``controlnet`` adds a tiny ControlNet made from its UNet in ``folder/controlnet``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / "tokenizer_source"
    scratch.mkdir(exist_ok=True)
    tokenizer = CLIPTokenizer(*map(str, _tokenizer_files(scratch)), model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = clip_text_encoder(tokenizer, width=32, heads=4)
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    unet = UNet2DConditionModel(
        sample_size=32,  # native size 256: the example clip (192x128) edits at its own size
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    scheduler = sd15_scheduler()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    if controlnet:
        tiny_controlnet(unet).save_pretrained(folder / "controlnet", safe_serialization=True)
    for file in scratch.iterdir():
        file.unlink()
    scratch.rmdir()
    return folder


def tiny_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """A ControlNet copied from ``unet`` whose zero-initialised output convolutions get small random
    weights, so that (unlike a fresh ControlNet) its conditions change the UNet's prediction."""
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.normal_(0, 0.1)
    return controlnet


def t5_word_tokenizer(words: Iterable[str] = WORDS, model_max_length: int = 512):
    """A T5-style tokenizer (SentencePiece-like Unigram with ▁ word starts, ``</s>`` appended, ``<pad>``
    id 0) in which each of ``words`` is one token and other text is spelled in characters; offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(words))
    chars = sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz0123456789,.-'"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in words] + [("▁", -2.0)]
    tokenizer = Tokenizer(models.Unigram(vocab + [(c, -5.0) for c in chars], unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length)


#: The tiny Wan variants: Wan 2.1 text-to-video, Wan 2.2 A14B (two experts switched at a boundary) and
#: Wan 2.2 TI2V-5B (a 48-channel VAE that patchifies its input 2x2: 16x in space; a time per token).
WAN_VARIANTS = ("2.1", "2.2-a14b", "2.2-ti2v")


def make_tiny_wan_model(folder: str | Path, seed: int = 0, variant: str = "2.1") -> Path:
    """Write a tiny random-weight Wan text-to-video pipeline (diffusers' WanPipeline folder layout) to
    ``folder``: 2 transformer blocks of 2 heads of dim 12 (RoPE splits 4/4/4 over time, height, width), a
    2-layer umT5 of width 32, and by ``variant`` (WAN_VARIANTS): "2.1", a 4-channel VAE latent (8x in
    space, 4x in time); "2.2-a14b", the same with a second expert ``transformer_2`` (other weights) for
    the steps below ``boundary_ratio`` 0.875 (Wan 2.2 T2V-A14B's); "2.2-ti2v", a 48-channel VAE that
    patchifies 2x2 (16x in space: a token covers 32 px) and ``expand_timesteps``."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if variant not in WAN_VARIANTS:
        raise ValueError(f"variant must be one of {WAN_VARIANTS}, got {variant!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = t5_word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8))
    channels = 48 if variant == "2.2-ti2v" else 4
    patchify = {"is_residual": True, "in_channels": 12, "out_channels": 12, "patch_size": 2,
                "scale_factor_spatial": 16} if variant == "2.2-ti2v" else {}
    vae = AutoencoderKLWan(base_dim=8, z_dim=channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * channels,
                           latents_std=[1.0] * channels, **patchify)

    def transformer():
        return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                     in_channels=channels, out_channels=channels, text_dim=32, freq_dim=32, ffn_dim=32,
                                     num_layers=2, rope_max_seq_len=32)

    experts = {"transformer": transformer()}
    if variant == "2.2-a14b":
        experts.update(transformer_2=transformer(), boundary_ratio=0.875)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                expand_timesteps=variant == "2.2-ti2v", **experts).save_pretrained(folder, safe_serialization=True)
    return folder


_LDM_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
               ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def _ldm_unet(state: dict, config) -> dict:
    """A diffusers UNet2DConditionModel's weights under the original (LDM) names: input_blocks /
    middle_block / output_blocks, numbered by the config's levels and layers per block."""
    per_block, levels = config["layers_per_block"], len(config["block_out_channels"])
    names = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             "mid_block.attentions.0.": "middle_block.1.", "mid_block.resnets.0.": "middle_block.0.",
             "mid_block.resnets.1.": "middle_block.2."}
    for i in range(levels):
        first = i * (per_block + 1)
        for j in range(per_block):
            names[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{first + j + 1}.0."
            names[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{first + j + 1}.1."
        names[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{first + per_block + 1}.0.op."
        for j in range(per_block + 1):
            names[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{first + j}.0."
            names[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{first + j}.1."
        upsampler = 2 if "CrossAttn" in config["up_block_types"][i] else 1
        names[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{first + per_block}.{upsampler}."
    out = {}
    for key, value in state.items():
        prefix = next(p for p in names if key.startswith(p))
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            rest = next((new + rest[len(old):] for old, new in _LDM_RESNET if rest.startswith(old)), rest)
        out["model.diffusion_model." + names[prefix] + rest] = value
    return out


def _ldm_vae(state: dict, config) -> dict:
    """A diffusers AutoencoderKL's weights under the original names (decoder levels numbered from the
    bottom, attention projections as 1x1 convolutions)."""
    levels = len(config["block_out_channels"])
    names = {}
    for part in ("encoder", "decoder"):
        names[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        for k in range(2):
            names[f"{part}.mid_block.resnets.{k}."] = f"{part}.mid.block_{k + 1}."
    for i in range(levels):
        for j in range(config["layers_per_block"] + 1):
            names[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            names[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{levels - 1 - i}.block.{j}."
        names[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        names[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    renames = [("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out"), ("group_norm", "norm"),
               ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
    out = {}
    for key, value in state.items():
        prefix = next((p for p in names if key.startswith(p)), "")
        new = names.get(prefix, "") + key[len(prefix):]
        for old, replacement in renames:
            new = new.replace(old, replacement)
        out["first_stage_model." + new] = value[..., None, None] if ".attn_1." in new and value.ndim == 2 else value
    return out


def save_single_file(model: str | Path, path: str | Path) -> Path:
    """Write the SD-style diffusers folder ``model`` as one checkpoint in the original (LDM) layout, as
    fine-tuned SD checkpoints are shared (what diffusers' ``from_single_file`` reads): UNet, VAE and
    CLIP text encoder under model.diffusion_model / first_stage_model / cond_stage_model.transformer."""
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    text = {"cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
            for k, v in pipe.text_encoder.state_dict().items()}  # transformers >= 5.6 drops the text_model prefix
    state = {**_ldm_unet(pipe.unet.state_dict(), pipe.unet.config), **_ldm_vae(pipe.vae.state_dict(), pipe.vae.config),
             **text}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return Path(path)
