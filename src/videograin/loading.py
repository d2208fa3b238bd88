"""Loading a model for an edit: the torch device, the pipeline of the config's model (SD, single-file SD
or Wan; its ControlNet and LoRAs) in the device's dtype, and the libraries' own loading bars."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

from .config.spec import DEFAULT_MODEL, EditSpec
from .errors import SpecError, first_line


def resolve_device(flag: str | None) -> str:
    """The torch device of ``--device`` (default: cuda when PyTorch sees a GPU), checked."""
    if flag is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if flag == "cpu":
        return flag
    match = re.fullmatch(r"cuda(?::(\d+))?", flag)
    if match is None:
        raise SpecError("--device", f"unknown device {flag!r}", "pass cpu or cuda (cuda:N for the N-th GPU)")
    if not torch.cuda.is_available():
        raise SpecError("--device", f"{flag}: this PyTorch build sees no CUDA GPU",
                        "pass --device cpu, or install a CUDA build of torch on a machine with a GPU")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise SpecError("--device", f"{flag}: there are {torch.cuda.device_count()} GPUs", "pick an index below that")
    return flag


def load_pipeline(spec: EditSpec, device: str):
    """The pipeline of ``spec.model`` (and its ControlNet, with its LoRAs) on ``device``: float16 on CUDA
    (Wan: bfloat16), float32 else."""
    from .config.preflight import model_backbone
    from .pipeline_sd import VideoGrainPipeline
    from .pipeline_wan import WanVideoGrainPipeline

    if model_backbone(str(spec.model)) == "wan":  # bfloat16 on CUDA, as Wan is trained; statistics in float32
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return _with_loras(WanVideoGrainPipeline.from_pretrained(spec.model, dtype=dtype), spec).to(device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    extra = {}
    if spec.control is not None:
        from diffusers import ControlNetModel

        try:
            extra["controlnet"] = ControlNetModel.from_pretrained(spec.control.model, dtype=dtype)
        except (OSError, ValueError) as err:
            raise SpecError("control.model", f"cannot load ControlNet {spec.control.model!r} "
                            f"({str(err).splitlines()[0]})", "give a local ControlNet folder or a hub id") from err
    # the dtype at load time (a later .to(dtype) makes diffusers warn about float32 modules)
    if Path(spec.model).is_file():  # a single-file checkpoint: its configs and tokenizer from model_config
        pipe = VideoGrainPipeline.from_single_file(spec.model, config=spec.model_config or DEFAULT_MODEL, dtype=dtype,
                                                   **extra)
    else:
        pipe = VideoGrainPipeline.from_pretrained(spec.model, dtype=dtype, **extra)
    return _with_loras(pipe, spec).to(device)


def _with_loras(pipe, spec: EditSpec):
    """``pipe`` with ``spec.lora`` loaded (diffusers' ``load_lora_weights``, PEFT) at their scales, before
    any attention processor is installed; SpecError naming the LoRA that does not fit the model."""
    if not spec.lora:
        return pipe
    names = [f"lora{i}" for i in range(len(spec.lora))]
    for i, (name, lora) in enumerate(zip(names, spec.lora)):
        try:
            pipe.load_lora_weights(str(lora.path), adapter_name=name)
        except (ImportError, ValueError, KeyError, RuntimeError) as err:
            raise SpecError(f"lora[{i}].path", f"cannot apply {lora.path.name} to {spec.model} ({first_line(err)})",
                            "give a LoRA trained for this model (install peft: pip install 'videograin[lora]')") from None
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in spec.lora])
    return pipe


@contextlib.contextmanager
def loading_bars(shown: bool):
    """diffusers' and transformers' own progress bars (loading components and weights) off inside the
    block unless ``shown``; their previous setting is restored after."""
    import diffusers.utils.logging
    import transformers.utils.logging

    libraries = [lib for lib in (diffusers.utils.logging, transformers.utils.logging) if lib.is_progress_bar_enabled()]
    if not shown:
        for lib in libraries:
            lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()
