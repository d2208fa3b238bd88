"""The Wan 2.1 backbone's pieces that stand today: the tiny offline Wan model (tests' stand-in for
Wan-AI/Wan2.1-T2V-1.3B-Diffusers) and its tokenizer. The sampler (FlowSchedule) is tested in
test_flow_matching.py, the latent-frame token masks in test_layout.py."""

from __future__ import annotations

import json

import pytest
import torch

from videograin.cli import main
from videograin.testing import WORDS, t5_word_tokenizer


@pytest.fixture(scope="module")
def tiny_wan_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "tiny-wan"
    assert main(["make-tiny-model", str(folder), "--wan", "--quiet"]) == 0
    return folder


def test_the_tiny_wan_model_is_a_wan_pipeline_diffusers_runs(tiny_wan_dir):
    """diffusers' own WanPipeline loads the folder and makes a 9-frame clip: 9 = 4·2 + 1 frames give
    3 latent frames (the VAE's 4x in time) of 4x4 latents (8x in space) = 2x2 tokens of 2x2 patches."""
    from diffusers import WanPipeline

    index = json.loads((tiny_wan_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["transformer"][1] == "WanTransformer3DModel"
    pipe = WanPipeline.from_pretrained(tiny_wan_dir)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    out = pipe("a red circle", num_frames=9, height=32, width=32, num_inference_steps=2, output_type="np",
               max_sequence_length=32, generator=torch.Generator().manual_seed(0),
               callback_on_step_end=lambda p, i, t, kw: seen.append(tuple(kw["latents"].shape)) or kw)
    assert out.frames.shape == (1, 9, 32, 32, 3)
    assert seen == [(1, 4, 3, 4, 4)] * 2  # (batch, channels, latent frames, h, w)


def test_the_t5_style_tokenizer_keeps_each_word_one_token_and_appends_eos():
    tokenizer = t5_word_tokenizer()
    ids = tokenizer("a red circle and a purple square").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁a", "▁red", "▁circle", "▁and", "▁a", "▁purple", "▁square", "</s>"]
    assert tokenizer.pad_token_id == 0 and tokenizer.model_max_length == 512
    spelled = tokenizer.convert_ids_to_tokens(tokenizer("zebra").input_ids)
    assert "zebra" not in WORDS and spelled[-1] == "</s>" and "".join(spelled[:-1]).lstrip("▁") == "zebra"
