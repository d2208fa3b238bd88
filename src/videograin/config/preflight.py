"""The checks that need the model's config files or the tokenizer, all before any weights load.

``read_model`` reads what a model folder or hub id says about itself (config JSONs, tokenizer, its
capabilities and recommended settings); ``preflight`` fills the settings a config leaves unset from the
recommended ones and holds the spec against the model with the backbone's own rule set
(``backbones.base.check_settings``). Library errors (plain ValueErrors) are turned here into SpecErrors
that name the config field.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backbones.base import Capabilities, check_settings
from ..backbones.recommended import Recommended, recommended_settings, resolve_modulation
from ..errors import SettingError, SpecError, first_line
from ..hub import obtainable
from ..method.tokens import PromptError, region_token_spans, word_token_indices
from .spec import DEFAULT_MODEL, EditSettings, EditSpec, config_field

logger = logging.getLogger(__name__)

_WAN_FIX = "give a local Wan 2.x text-to-video diffusers folder (model_index.json, transformer/, vae/, " \
           "text_encoder/, tokenizer/, scheduler/) or its hub id"
_MODEL_FIX = "give a local diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/) or a hub id"


@dataclass(frozen=True)
class ModelFacts:
    """What a model's config files say, no weights loaded: its capabilities (levels, temporal modes,
    frame and size rules, training timesteps, ...), its recommended settings, the levels whose decoder
    has self-attention (SD) and the tokenizer."""

    capabilities: Capabilities
    recommended: Recommended
    self_attention_levels: tuple[int, ...]
    tokenizer: Any

    @property
    def size_multiple(self) -> int:
        return self.capabilities.size_multiple

    @property
    def vae_factor(self) -> int:
        return self.capabilities.vae_factor

    @property
    def backbone(self) -> str:
        return self.capabilities.family


#: model_index.json class names of Wan 2.x text-to-video folders
WAN_PIPELINES = ("WanPipeline", "WanVideoGrainPipeline")
_SUPPORTED = ("supported: SD 1.x/2.x, and Wan 2.x text-to-video (WanPipeline folders: Wan 2.1 T2V, Wan 2.2 "
              "T2V-A14B, Wan 2.2 TI2V-5B)")


def _model_index(model: str) -> dict:
    """A model's model_index.json ({} when it cannot be read: read_model then says why). SpecError("model")
    at once for a hub id that is neither cached nor reachable (instead of the hub client's retries)."""
    if Path(model).is_file():  # a single-file checkpoint (SD): no index
        return {}
    if not obtainable(model, "model_index.json"):
        raise SpecError("model", f"{model!r} is not in the local cache and the Hugging Face hub cannot be reached",
                        "download it once where there is network (hf download <id>), or pass "
                        "--model a local diffusers folder")
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(model)
    except (OSError, ValueError):
        return {}


def model_backbone(model: str) -> str:
    """"wan" for a Wan 2.x text-to-video folder or hub id (its model_index.json), else "sd"."""
    return "wan" if _model_index(model).get("_class_name") in WAN_PIPELINES else "sd"


def refuse_other_pipelines(model: str) -> None:
    """SpecError("model") for a folder of a Wan pipeline other than text-to-video (image-to-video,
    VACE, Animate, ...), named by its model_index.json, before anything else is read."""
    name = _model_index(model).get("_class_name") or ""
    if name.startswith("Wan") and name not in WAN_PIPELINES:
        raise SpecError("model", f"{model!r} is a {name} folder, which videograin does not edit with (yet)", _SUPPORTED)


def _read_wan(model: str) -> ModelFacts:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer

    from ..backbones.wan import wan_capabilities

    index = _model_index(model)
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
    two_experts = (index.get("transformer_2") or [None])[0] is not None and index.get("boundary_ratio") is not None
    return ModelFacts(wan_capabilities(vae, transformer, scheduler, 2 if two_experts else 1),
                      _recommended(model, "wan"), (), tokenizer)


def _recommended(model: str, family: str) -> Recommended:
    try:
        return recommended_settings(model, family)
    except ValueError as err:
        raise SpecError("model", str(err), "fix or delete that file (it holds the model's recommended settings)") from None


def model_recommended(model: str) -> Recommended:
    """The recommended settings of a model folder or hub id (its videograin.json, else its family's
    defaults), without reading the rest of its configs; SpecError("model") for a bad file."""
    return _recommended(model, model_backbone(model))


def read_single_file(model: str, model_config: str | None) -> ModelFacts:
    """A single-file SD checkpoint: its header is read and its architecture's config files and tokenizer
    come from ``model_config`` (a diffusers folder or hub id in the cache; None: SD 1.5's, as diffusers'
    ``from_single_file`` assumes for an SD 1.x file)."""
    if Path(model).suffix != ".safetensors":
        raise SpecError("model", f"{model} is not a .safetensors file", "convert it to safetensors (pickled .ckpt/.bin "
                        "checkpoints are not loaded), or give a diffusers folder")
    check_safetensors(Path(model), "model")
    source = model_config or DEFAULT_MODEL
    try:
        return read_model(source)
    except SpecError as err:
        raise SpecError("model_config", f"the config files of the single-file checkpoint {Path(model).name} are not "
                        f"available: {err.problem}", "set `model_config:` to a diffusers folder of the same architecture "
                        f"(for SD 1.5: hf download {DEFAULT_MODEL} --exclude '*.safetensors' '*.bin' "
                        "'*.ckpt' once where there is network)") from None


def read_model(model: str, model_config: str | None = None) -> ModelFacts:
    """Read a diffusers SD folder or hub id's config files and tokenizer, or a single-file checkpoint's
    (``read_single_file``); SpecError("model") if it cannot."""
    local = Path(model)
    if local.is_file():
        return read_single_file(model, model_config)
    if (local / "model_index.json").is_file():
        try:
            json.loads((local / "model_index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SpecError("model", f"{local / 'model_index.json'} is not readable JSON ({first_line(err)})",
                            "download or copy the model folder again") from None
    refuse_other_pipelines(model)  # first: a hub id that cannot be obtained fails here, before heavy imports
    if model_backbone(model) == "wan":
        if local.is_dir():
            _check_weight_files(local)
        return _read_wan(model)
    if local.is_dir():
        missing = [p for p in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer") if not (local / p).exists()]
        if missing:
            raise SpecError("model", f"{local} lacks {', '.join(missing)}", _MODEL_FIX)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from ..backbones.sd import sd_capabilities

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
    capabilities = sd_capabilities(vae, unet, scheduler)
    up_blocks = unet.get("up_block_types", ())
    attention = tuple(sorted(capabilities.num_levels - 1 - i for i, kind in enumerate(up_blocks) if "Attn" in kind))
    return ModelFacts(capabilities, _recommended(model, "sd"), attention, tokenizer)


def _check_weight_files(folder: Path) -> None:
    """Every safetensors file of a local model opens (its header is read, not its tensors)."""
    for path in sorted(folder.rglob("*.safetensors")):
        check_safetensors(path, "model")


def check_safetensors(path: Path, field: str) -> None:
    """SpecError(field) unless ``path`` is a readable safetensors file (its header is read, not its tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError
        raise SpecError(field, f"{path} is not a readable safetensors file ({first_line(err)})",
                        "download or copy that file again") from None


def check_control_model(spec: EditSpec) -> None:
    """A local ControlNet folder must hold its config.json."""
    if spec.control is not None and Path(spec.control.model).is_dir() and not (Path(spec.control.model) / "config.json").exists():
        raise SpecError("control.model", f"{spec.control.model} has no config.json", "point it at a diffusers ControlNet folder")


def with_recommended(spec: EditSpec, recommended: Recommended) -> EditSpec:
    """``spec`` with the settings it leaves unset (None) taken from the model's ``recommended`` ones."""
    settings = spec.edit
    return dataclasses.replace(spec, edit=dataclasses.replace(
        settings,
        steps=settings.steps if settings.steps is not None else recommended.steps,
        guidance_scale=settings.guidance_scale if settings.guidance_scale is not None else recommended.guidance_scale,
        modulation=resolve_modulation(settings.modulation, recommended),
        solver=settings.solver if settings.solver is not None else recommended.solver,
        inversion=settings.inversion if settings.inversion is not None else recommended.inversion,
    ))


def check_spec(spec: EditSpec, facts: ModelFacts) -> None:
    """Every check of ``spec`` (its settings resolved) against the model: frame and step counts, levels,
    temporal mode, aids and control by the backbone's rule set; prompts and words as tokens."""
    settings = spec.edit
    try:
        check_settings(facts.capabilities, num_frames=spec.video.frames, num_inference_steps=settings.steps,
                       modulation=settings.modulation,
                       reatco=settings.reatco if settings.uses_reatco else None,
                       temporal_aids=settings.temporal_aids, control=spec.control is not None,
                       guidance_scale_2=settings.guidance_scale_2, solver=settings.solver,
                       inversion=settings.inversion)
    except SettingError as err:
        raise SpecError(config_field(err.name), err.problem, err.fix) from None
    flow = settings.temporal_aids.flow
    if flow is not None and spec.video.frames < 2:
        raise SpecError("edit.temporal_aids.flow", "flow-guided attention needs at least 2 frames, "
                        f"video.frames is {spec.video.frames}", "select more frames or remove `flow`")
    check_prompts(spec, facts.tokenizer)


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


def notes(spec: EditSpec, capabilities: Capabilities | None = None) -> list[str]:
    """Remarks on settings that are valid but may surprise (for the log and run.json); ``capabilities``:
    the model's, for the latent frames a window counts (None: one per frame)."""
    settings, found = spec.edit, []
    active = [("edit.modulation.steps", settings.modulation.steps, settings.uses_videograin),
              ("edit.reatco.steps", settings.reatco.steps, settings.uses_reatco)]
    for field, steps, used in active:
        if used and None not in (steps, settings.steps) and steps > settings.steps:
            found.append(f"{field} is {steps}, more than edit.steps ({settings.steps}): active on every step")
    if settings.window is not None:
        latent_frames = capabilities.latent_frames(spec.video.frames) if capabilities else spec.video.frames
        if settings.window.size >= latent_frames:
            found.append(f"edit.window.size {settings.window.size} covers all {latent_frames} (latent) frames: the "
                         "clip is denoised in one window, as without `window`")
    if not settings.uses_reatco and settings.seed != EditSettings.seed:  # said only to whoever set one
        found.append(f"edit.seed {settings.seed} does not change this edit: the inversion and sampling are "
                     "deterministic (the seed drives ReAtCo's IRJS noise)")
    return found


def preflight(spec: EditSpec) -> tuple[EditSpec, ModelFacts]:
    """Read the model's config files, fill the settings ``spec`` leaves unset from the model's
    recommended ones and check the result against the model (no weights load). Returns both."""
    facts = read_model(spec.model, spec.model_config)
    spec = with_recommended(spec, facts.recommended)
    check_control_model(spec)
    for i, lora in enumerate(spec.lora):
        check_safetensors(lora.path, f"lora[{i}].path")
    check_spec(spec, facts)
    return spec, facts
