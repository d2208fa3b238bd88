"""The checks that need the model's config files or the tokenizer, all before any weights load.

``read_model`` reads what a model folder or hub id says about itself (config JSONs, tokenizer);
``check_spec`` holds an EditSpec against it. Library errors (plain ValueErrors) are turned here into
SpecErrors that name the config field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError, first_line
from ..hub import obtainable
from ..method.tokens import PromptError, region_token_spans, word_token_indices
from .spec import EditSpec

logger = logging.getLogger(__name__)

_WAN_FIX = "give a local Wan 2.x text-to-video diffusers folder (model_index.json, transformer/, vae/, " \
           "text_encoder/, tokenizer/, scheduler/) or its hub id"
_MODEL_FIX = "give a local diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/) or a hub id"


@dataclass(frozen=True)
class ModelFacts:
    """What a model's config files say, no weights loaded: the frame size multiple, the number of
    levels (a Wan transformer's: its blocks), the levels whose decoder has self-attention, the training
    timesteps, the tokenizer and the backbone ("sd" or "wan")."""

    size_multiple: int
    vae_factor: int
    num_levels: int
    self_attention_levels: tuple[int, ...]
    num_train_timesteps: int
    tokenizer: Any
    backbone: str = "sd"


#: model_index.json class names of Wan 2.x text-to-video folders
WAN_PIPELINES = ("WanPipeline", "WanVideoGrainPipeline")


def model_backbone(model: str) -> str:
    """"wan" for a Wan 2.x text-to-video folder or hub id (its model_index.json), else "sd"."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(model)
    except (OSError, ValueError):
        return "sd"  # read_model says why it cannot be read
    return "wan" if index.get("_class_name") in WAN_PIPELINES else "sd"


def _read_wan(model: str) -> ModelFacts:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer

    from ..backbones.wan import vae_factors

    try:
        vae = AutoencoderKLWan.load_config(model, subfolder="vae")
        transformer = WanTransformer3DModel.load_config(model, subfolder="transformer")
        scheduler = UniPCMultistepScheduler.load_config(model, subfolder="scheduler")  # any scheduler's JSON
        tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    except (OSError, ValueError) as err:
        raise SpecError("model", f"cannot read {model!r} ({first_line(err)})", _WAN_FIX) from err
    if transformer.get("image_dim"):
        raise SpecError("model", f"{model!r} is an image-to-video Wan model", "give a Wan text-to-video model "
                        "(Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    spatial = vae_factors(vae)[0]
    return ModelFacts(spatial * transformer["patch_size"][1], spatial, transformer["num_layers"], (),
                      scheduler.get("num_train_timesteps", 1000), tokenizer, "wan")


def read_model(model: str) -> ModelFacts:
    """Read a diffusers SD folder or hub id's config files and tokenizer; SpecError("model") if it cannot."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from ..backbones.sd import size_multiple

    local = Path(model)
    if model_backbone(model) == "wan":
        if local.is_dir():
            _check_weight_files(local)
        return _read_wan(model)
    if local.is_dir():
        missing = [p for p in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer") if not (local / p).exists()]
        if missing:
            raise SpecError("model", f"{local} lacks {', '.join(missing)}", _MODEL_FIX)
    elif not obtainable(model, "model_index.json"):
        raise SpecError("model", f"{model!r} is not in the local cache and the Hugging Face hub cannot be reached",
                        "download it once where there is network (huggingface-cli download <id>), or pass "
                        "--model a local diffusers folder")
    try:
        vae = AutoencoderKL.load_config(model, subfolder="vae")
        unet = UNet2DConditionModel.load_config(model, subfolder="unet")
        scheduler = DDIMScheduler.load_config(model, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    except (OSError, ValueError) as err:
        raise SpecError("model", f"cannot read {model!r} ({first_line(err)})", _MODEL_FIX) from err
    if len(tokenizer) < 256:  # transformers 5 returns an empty tokenizer instead of raising when none is found
        raise SpecError("model", f"no tokenizer found for {model!r} (offline, or not a diffusers model?)", _MODEL_FIX)
    if local.is_dir():
        _check_weight_files(local)
    num_levels = len(unet["block_out_channels"])
    up_blocks = unet.get("up_block_types", ())
    attention = tuple(sorted(num_levels - 1 - i for i, kind in enumerate(up_blocks) if "Attn" in kind))
    vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return ModelFacts(size_multiple(vae, unet), vae_factor, num_levels, attention, scheduler.get("num_train_timesteps", 1000),
                      tokenizer)


def _check_weight_files(folder: Path) -> None:
    """Every safetensors file of a local model opens (its header is read, not its tensors)."""
    from safetensors import safe_open

    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError
            raise SpecError("model", f"{path} is not a readable safetensors file ({first_line(err)})",
                            "download or copy that file again") from None


def check_control_model(spec: EditSpec) -> None:
    """A local ControlNet folder must hold its config.json."""
    if spec.control is not None and Path(spec.control.model).is_dir() and not (Path(spec.control.model) / "config.json").exists():
        raise SpecError("control.model", f"{spec.control.model} has no config.json", "point it at a diffusers ControlNet folder")


def _levels(levels, field: str, facts: ModelFacts, fix: str) -> None:
    missing = [level for level in levels if level >= facts.num_levels]
    if missing:
        raise SpecError(field, f"level(s) {missing} do not exist: the model has levels 0..{facts.num_levels - 1}", fix)


def check_spec(spec: EditSpec, facts: ModelFacts) -> None:
    """Every check of ``spec`` against the model: prompts and words as tokens, levels, step counts."""
    settings = spec.edit
    if settings.steps > facts.num_train_timesteps:
        raise SpecError("edit.steps", f"{settings.steps} is more than the model's {facts.num_train_timesteps} "
                        "training timesteps", f"use at most {facts.num_train_timesteps} steps (50 is usual)")
    if settings.modulation.levels != "all":
        _levels(settings.modulation.levels, "edit.modulation.levels", facts,
                "pick levels among those, or write `levels: all`")
    flow = settings.temporal_aids.flow
    if flow is not None:
        _levels(flow.levels, "edit.temporal_aids.flow.levels", facts, "pick levels among those (0 = FLATTEN's)")
        if spec.video.frames < 2:
            raise SpecError("edit.temporal_aids.flow", "flow-guided attention needs at least 2 frames, "
                            f"video.frames is {spec.video.frames}", "select more frames or remove `flow`")
    if settings.uses_reatco and settings.reatco.level is not None:
        _levels([settings.reatco.level], "edit.reatco.level", facts,
                "pick one of those, or leave `level` out for the paper's H/32 level")
    if facts.backbone == "wan":
        check_wan(spec, facts)
    check_prompts(spec, facts.tokenizer)


def check_wan(spec: EditSpec, facts: ModelFacts) -> None:
    """A Wan model's rules: 4k + 1 frames, and only what its backbone implements."""
    from ..backbones.wan import FRAME_CHUNK, nearest_frame_counts

    frames = spec.video.frames
    if (frames - 1) % FRAME_CHUNK:
        below, above = nearest_frame_counts(frames)
        raise SpecError("video.frames", f"{frames} frames: Wan takes 4k + 1 frames (its VAE encodes frame 0, then "
                        "chunks of 4)", f"use {below} or {above}")
    settings, fix = spec.edit, "remove it: a Wan model edits with VideoGrain's modulation and the latent blend"
    unsupported = [("edit.method", settings.uses_reatco, "method: videograin"),
                   ("edit.window", settings.window is not None, fix),
                   ("edit.temporal_aids", settings.temporal_aids.flow is not None or settings.temporal_aids.pnp
                    is not None, "remove it: Wan's self-attention spans every frame already"),
                   ("edit.record_attention", bool(settings.record_attention), "set it to false"),
                   ("control", spec.control is not None, fix),
                   ("edit.modulation.temporal", settings.modulation.temporal != "full",
                    "use temporal: full (Wan attends over all frames)")]
    for field, used, what in unsupported:
        if used:
            raise SpecError(field, "is SD-only for now (not on a Wan model)", what)


def check_prompts(spec: EditSpec, tokenizer) -> None:
    """Each region prompt occurs in the prompt as tokens, and each word of interest in its region
    prompt; SpecError naming the field otherwise."""
    limit = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add()
    for field in ("source_prompt", "negative_prompt"):
        length = len(tokenizer(getattr(spec, field), add_special_tokens=False).input_ids)
        if length > limit:
            raise SpecError(field, f"is {length} tokens long, the text encoder reads at most {limit}",
                            "shorten it (the rest would be cut off unseen)")
    try:
        spans = region_token_spans(tokenizer, spec.prompt, [r.prompt for r in spec.regions])
        word_token_indices(tokenizer, spec.prompt, spans, [r.word for r in spec.regions])
    except PromptError as err:
        field = "prompt" if err.region is None else f"regions[{err.region}].{err.part}"
        raise SpecError(field, err.problem, err.fix) from None


def notes(spec: EditSpec) -> list[str]:
    """Remarks on settings that are valid but may surprise (for the log and run.json)."""
    settings, found = spec.edit, []
    active = [("edit.modulation.steps", settings.modulation.steps, settings.uses_videograin),
              ("edit.reatco.steps", settings.reatco.steps, settings.uses_reatco)]
    for field, steps, used in active:
        if used and steps > settings.steps:
            found.append(f"{field} is {steps}, more than edit.steps ({settings.steps}): active on every step")
    if not settings.uses_reatco:
        found.append("edit.seed does not change this edit: DDIM inversion and sampling are deterministic "
                     "(the seed drives ReAtCo's IRJS noise)")
    return found


def preflight(spec: EditSpec) -> ModelFacts:
    """Read the model's config files and check ``spec`` against them (no weights load)."""
    facts = read_model(spec.model)
    check_control_model(spec)
    check_spec(spec, facts)
    return facts
