"""Bad arguments to the Python API, held to the config's standard: each is one clean ValueError/TypeError
(or WeightsUnavailable) naming the argument, raised before any model runs (the UNet is never called).
The arguments of one feature (Wan, flow editing, ReAtCo) are checked beside that feature's tests.
"""

from __future__ import annotations

import time

import numpy as np
import PIL.Image
import pytest
import torch

from videograin.method.settings import Modulation, ReAtCoSettings, Window


def _video(frames: int = 3) -> torch.Tensor:
    return torch.rand(frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _masks(frames: int = 3) -> torch.Tensor:
    masks = torch.zeros(1, frames, 32, 32, dtype=torch.bool)
    masks[..., :16] = True
    return masks


def _nan_video():
    video = _video()
    video[0, 0, 0, 0] = float("nan")
    return video


def _nan_masks():
    masks = _masks().float()
    masks[0, 0, 0, 0] = float("nan")
    return masks


def _mixed_pil():
    return [PIL.Image.new("RGB", (32, 32)), PIL.Image.new("RGB", (48, 32))]


# (case, the call's arguments as a function (settings that reject themselves raise inside it), the name
# the error must start with)
CASES = [
    ("video with NaN", lambda: {"video": _nan_video()}, "video"),
    ("video of no frames", lambda: {"video": torch.zeros(0, 3, 32, 32)}, "video"),
    ("PIL frames of mixed sizes", lambda: {"video": _mixed_pil()}, "video"),
    ("masks with NaN", lambda: {"masks": _nan_masks()}, "masks"),
    ("guidance NaN", lambda: {"guidance_scale": float("nan")}, "guidance_scale"),
    ("guidance infinite", lambda: {"guidance_scale": float("inf")}, "guidance_scale"),
    ("guidance absurd", lambda: {"guidance_scale": 1e30}, "guidance_scale"),
    ("strength NaN", lambda: {"modulation": Modulation(self_strength=float("nan"))}, "modulation.self_strength"),
    ("latents NaN", lambda: {"latents": torch.full((3, 4, 4, 4), float("nan"))}, "latents"),
    ("latents numpy", lambda: {"latents": np.zeros((3, 4, 4, 4), np.float32)}, "latents"),
    ("steps negative", lambda: {"num_inference_steps": -1}, "num_inference_steps"),
    ("steps zero", lambda: {"num_inference_steps": 0}, "num_inference_steps"),
    ("steps fractional", lambda: {"num_inference_steps": 1.5}, "num_inference_steps"),
    ("levels the model lacks", lambda: {"modulation": Modulation(levels=(99,))}, "modulation.levels"),
    ("modulation as a dict", lambda: {"modulation": {"self_strength": 0.3}}, "modulation"),
    ("window stride past its size", lambda: {"window": Window(size=2, stride=3)}, "window.stride"),
    ("window of size 0", lambda: {"window": Window(size=0)}, "window.size"),
    ("top_k 0", lambda: {"reatco": ReAtCoSettings(top_k=0)}, "reatco.top_k"),
    ("RAD iterations absurd", lambda: {"reatco": ReAtCoSettings(iterations=1_000_000)}, "reatco.iterations"),
    ("words of the wrong length", lambda: {"words": ["apple", "ball"]}, "words"),
    ("generator an int", lambda: {"generator": 42}, "generator"),
    ("generators ints", lambda: {"generator": [1, 2, 3]}, "generator"),
    ("record_attention unknown", lambda: {"record_attention": "bogus"}, "record_attention"),
    ("no region prompts", lambda: {"region_prompts": [], "masks": torch.zeros(0, 3, 32, 32, dtype=torch.bool)},
     "region_prompts"),
    ("callback not callable", lambda: {"callback_on_step_end": "print"}, "callback_on_step_end"),
    ("blend not a bool", lambda: {"blend": "yes"}, "blend"),
    ("a 20 MB prompt", lambda: {"prompt": "a red apple " * 1_750_000}, "prompt"),
    ("a source prompt that is not text", lambda: {"source_prompt": 5}, "source_prompt"),
]


@pytest.mark.parametrize("arguments, name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_argument_is_one_clean_error_naming_it_before_any_model_runs(tiny_pipe, arguments, name):
    calls = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises((ValueError, TypeError)) as info:
            call = {"video": _video(), "masks": _masks(), "prompt": "a red apple on the grass",
                    "region_prompts": ["red apple"], "num_inference_steps": 2, "output_type": "latent"}
            call.update(arguments())
            tiny_pipe(**call)
    finally:
        hook.remove()
    message = str(info.value)
    assert message.startswith(name), message
    assert "\n" not in message and not calls


def test_a_one_element_prompt_list_is_still_one_prompt(tiny_pipe):
    """diffusers' convention: a list of one prompt is that prompt."""
    out = tiny_pipe(_video(), _masks(), ["a red apple on the grass"], ["red apple"], num_inference_steps=1,
                    output_type="latent")
    assert out.latents.shape[0] == 3


def test_a_scheduler_the_method_cannot_use_is_refused_with_the_fix(tiny_model_dir):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from videograin import VideoGrainPipeline

    pipe = VideoGrainPipeline.from_pretrained(tiny_model_dir)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="^scheduler: DPMSolverMultistepScheduler .*DDIMScheduler.from_config"):
        pipe(_video(), _masks(), "a red apple", ["red apple"], num_inference_steps=1, output_type="latent")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # the fix the error names
    assert pipe(_video(), _masks(), "a red apple", ["red apple"], num_inference_steps=1,
                output_type="latent").latents.shape[0] == 3


def test_uncached_metric_weights_offline_fail_at_once():
    """CLIP weights that are not in the cache, offline: WeightsUnavailable within 2 s, no hub retries."""
    from videograin.errors import WeightsUnavailable
    from videograin.eval.clip_scores import DEFAULT_CLIP, ClipScorer

    start = time.monotonic()
    with pytest.raises(WeightsUnavailable, match="hub cannot be reached"):
        ClipScorer.from_pretrained(DEFAULT_CLIP)
    assert time.monotonic() - start < 2
