"""ControlNet conditioning: annotators, condition images, the edit with a tiny ControlNet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from diffusers import ControlNetModel

from videograin import media
from videograin.inputs import load_inputs
from videograin.cli import main
from videograin.control import annotate
from videograin.pipeline_sd import VideoGrainPipeline
from videograin.errors import SpecError, WeightsUnavailable
from videograin.config.parse import load_spec, spec_from_dict
from videograin.testing import make_tiny_model

from conftest import EXAMPLE, copy_example


@pytest.fixture(scope="module")
def control_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_cn"), controlnet=True)


@pytest.fixture(scope="module")
def clip():
    spec = load_spec(EXAMPLE / "config.yaml")
    inputs = load_inputs(spec, 16)
    return spec.prompt, [r.prompt for r in spec.regions], inputs


def test_canny_marks_the_edges_of_a_square():
    frame = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    frame[:, 8:24, 8:24] = 255
    edges = annotate("canny", frame)
    assert edges.shape == (1, 32, 32, 3) and edges.dtype == np.uint8
    on = edges[0, ..., 0] > 0
    assert on[8:24, 7:9].any() and on[8:24, 23:25].any()  # both vertical sides
    assert not on[12:20, 12:20].any() and not on[:4].any()  # flat inside and outside
    assert edges.max() == 255


def test_missing_annotator_weights_give_a_one_line_error():
    with pytest.raises(WeightsUnavailable) as info:
        annotate("depth", np.zeros((1, 8, 8, 3), dtype=np.uint8))
    assert "Intel/dpt-hybrid-midas" in str(info.value) and "\n" not in str(info.value)


def test_controlnet_conditions_change_the_edit_and_zero_scale_does_not(control_model_dir, clip):
    prompt, region_prompts, inputs = clip
    controlnet = ControlNetModel.from_pretrained(control_model_dir / "controlnet")
    pipe = VideoGrainPipeline.from_pretrained(control_model_dir, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    frames, masks = inputs.frames_uint8[:4], inputs.masks[:, :4]
    images = annotate("canny", inputs.frames_uint8[:4])
    run = lambda **kw: pipe(frames, masks, prompt, region_prompts, num_inference_steps=3, **kw).latents  # noqa: E731
    plain = run()
    assert (run(control_images=images) - plain).abs().mean() > 1e-2
    torch.testing.assert_close(run(control_images=images, control_scale=0.0), plain, rtol=0, atol=1e-5)


def test_control_spec_is_validated(tmp_path):
    (tmp_path / "video").mkdir()
    base = {"prompt": "a cat", "video": {"path": "video", "frames": 2},
            "regions": [{"name": "cat", "masks": [0, 0, 8, 8], "prompt": "a cat"}]}
    for control, field in [({"condition": "canny"}, "control.model"),
                           ({"model": "org/cn", "condition": "edges"}, "control.condition"),
                           ({"model": "org/cn", "condition": "canny", "scale": -1}, "control.scale")]:
        with pytest.raises(SpecError) as info:
            spec_from_dict({**base, "control": control}, tmp_path)
        assert info.value.field == field
    spec = spec_from_dict({**base, "control": {"model": "org/cn", "condition": "video"}}, tmp_path)
    assert spec.control.condition == tmp_path / "video"
    assert spec_from_dict(spec.to_dict(), tmp_path) == spec


def test_cli_edit_with_a_controlnet_writes_its_conditions(tmp_path, control_model_dir):
    config_path = copy_example(tmp_path / "ex", control_model_dir, frames=3, output=str(tmp_path / "out"))
    config = yaml.safe_load(config_path.read_text())
    config["edit"] = {"steps": 2}
    config["control"] = {"model": str(control_model_dir / "controlnet"), "condition": "canny", "scale": 0.5}
    config_path.write_text(yaml.safe_dump(config))
    assert main(["edit", str(config_path)]) == 0
    out = tmp_path / "out"
    control, _ = media.read_video(out / "control.mp4", 0, 3, 1)
    assert control.shape == (3, 128, 192, 3) and control.max() > 100  # edges drawn
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["control"]["condition"] == "canny" and run["config"]["control"]["scale"] == 0.5

    config["control"] = {"model": str(tmp_path / "ex"), "condition": "canny"}  # a folder without config.json
    config_path.write_text(yaml.safe_dump(config))
    assert main(["edit", str(config_path), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
