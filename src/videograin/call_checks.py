"""The Python API's gate: every argument of a pipeline call checked before any model runs, with the
rules the config shares (``values``, the settings dataclasses, ``backbones.base.check_settings``);
``BaseVideoGrainPipeline.check_inputs`` is this."""

from __future__ import annotations

import torch

from . import formats, values
from .backbones.base import check_settings
from .method.sampling import SOLVERS
from .method.settings import (
    INVERSIONS, MAX_REGIONS, InversionFree, Modulation, ReAtCoSettings, TemporalAidSettings, Window,
)


def check_call(pipe, prompt, region_prompts, output_type: str, generator, num_frames: int,
               callback_on_step_end_tensor_inputs: list[str] | None = None, **arguments) -> str:
    """Raise ValueError/TypeError naming the argument for any argument of ``pipe``'s call that cannot
    work: types, values and lengths, then what the model supports (``check_settings``). Returns the
    prompt as one string. ``arguments``: the call's other arguments by name (those not given are their
    defaults)."""
    a = {"num_inference_steps": None, "guidance_scale": None, "guidance_scale_2": None, "modulation": None,
         "reatco": None, "window": None, "temporal_aids": None, "control_images": None, "record_attention": False,
         "words": None, "latents": None, "blend": True, "composite": True, "callback_on_step_end": None,
         "callback_on_invert_step": None, "solver": None, "inversion": None, "inversion_free": None} | arguments
    for name, kind in (("modulation", Modulation), ("reatco", ReAtCoSettings), ("window", Window),
                       ("temporal_aids", TemporalAidSettings), ("latents", torch.Tensor),
                       ("inversion_free", InversionFree)):
        values.of_type(a[name], name, kind)
    for name, options in (("solver", tuple(SOLVERS)), ("inversion", INVERSIONS)):
        if a[name] is not None:
            values.choice(a[name], name, options)
    if a["inversion"] == "none" and a["latents"] is not None:
        raise ValueError("latents: inversion-free editing starts from the source itself, not from given latents; "
                         "remove latents, or use inversion='ode'")
    if a["num_inference_steps"] is not None:
        values.whole(a["num_inference_steps"], "num_inference_steps", 1)
    for name in ("guidance_scale", "guidance_scale_2"):
        if a[name] is not None:
            values.guidance(a[name], name)
    values.record_attention(a["record_attention"], "record_attention")
    values.boolean(a["blend"], "blend")
    values.boolean(a["composite"], "composite")
    for name in ("callback_on_step_end", "callback_on_invert_step"):
        if a[name] is not None and not callable(a[name]):
            raise TypeError(f"{name} must be callable (pipe, step, t, ...), got {values.describe(a[name])}")
    if a["latents"] is not None and not torch.isfinite(a["latents"]).all():
        raise ValueError("latents hold NaN or infinite values")
    if isinstance(prompt, (list, tuple)) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be one string (one video per call), got {type(prompt).__name__}")
    if not isinstance(region_prompts, (list, tuple)) or not all(isinstance(p, str) for p in region_prompts):
        raise ValueError("region_prompts must be a list of strings, one per mask sequence")
    values.prompt(prompt, "prompt")
    for r, text in enumerate(region_prompts):
        values.prompt(text, f"region_prompts[{r}]")
    for name in ("source_prompt", "negative_prompt"):
        values.prompt(a.get(name, ""), name)
    if not 1 <= len(region_prompts) <= MAX_REGIONS:
        raise ValueError(f"region_prompts: {len(region_prompts)} regions; give 1 to {MAX_REGIONS} (one per mask "
                         "sequence; an empty prompt keeps its region)")
    words = a["words"]
    if words is not None and (not isinstance(words, (list, tuple)) or len(words) != len(region_prompts)
                              or not all(w is None or isinstance(w, str) for w in words)):
        raise ValueError(f"words must be a list of {len(region_prompts)} (one per region) words or None, got "
                         f"{values.describe(words)}")
    if output_type not in formats.OUTPUT_TYPES:
        raise ValueError(f"output_type {output_type!r} is not one of {', '.join(formats.OUTPUT_TYPES)}")
    latent_frames = pipe.capabilities.latent_frames(num_frames)
    generators = generator if isinstance(generator, list) else [generator]
    if not all(g is None or isinstance(g, torch.Generator) for g in generators) or None in generators[1:]:
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {values.describe(generator)}")
    if isinstance(generator, list) and len(generator) != latent_frames:
        raise ValueError(f"a list of generators needs one per latent frame: {len(generator)} for {latent_frames} "
                         f"({num_frames} frames)")
    unknown = set(callback_on_step_end_tensor_inputs or []) - set(pipe._callback_tensor_inputs)
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {sorted(unknown)} are not among "
                         f"{pipe._callback_tensor_inputs}")
    check_settings(pipe.capabilities, num_frames=num_frames, num_inference_steps=a["num_inference_steps"],
                   modulation=a["modulation"], reatco=a["reatco"],
                   temporal_aids=a["temporal_aids"], control=a["control_images"] is not None,
                   guidance_scale_2=a["guidance_scale_2"], solver=a["solver"], inversion=a["inversion"],
                   scheduler=type(pipe.scheduler).__name__ if hasattr(pipe, "scheduler") else None)
    return prompt
