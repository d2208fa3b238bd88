"""One rule set for what a backbone supports (the pipeline's ValueError names the argument, the config's
SpecError the field, both before any weights load or any step runs), and a model's recommended settings
used wherever the caller sets nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from videograin.config.parse import spec_from_dict
from videograin.config.preflight import preflight
from videograin.errors import SpecError
from videograin.method.settings import FlowAid, Modulation, ReAtCoSettings, TemporalAidSettings

# (family, pipeline keyword arguments, the argument the error names, the config's edit section, its field)
UNSUPPORTED = [
    ("sd", {"modulation": Modulation(levels=(9,))}, "modulation.levels", {"modulation": {"levels": [9]}},
     "edit.modulation.levels"),
    ("sd", {"reatco": ReAtCoSettings(level=5)}, "reatco.level", {"method": "reatco", "reatco": {"level": 5}},
     "edit.reatco.level"),
    ("sd", {"temporal_aids": TemporalAidSettings(flow=FlowAid(levels=(4,)))}, "temporal_aids.flow.levels",
     {"temporal_aids": {"flow": {"levels": [4]}}}, "edit.temporal_aids.flow.levels"),
    ("wan", {"modulation": Modulation(levels=(2,))}, "modulation.levels", {"modulation": {"levels": [2]}},
     "edit.modulation.levels"),
    ("wan", {"modulation": Modulation(temporal="per_frame")}, "modulation.temporal",
     {"modulation": {"temporal": "per_frame"}}, "edit.modulation.temporal"),
    ("wan", {"reatco": ReAtCoSettings(level=7)}, "reatco.level", {"method": "reatco", "reatco": {"level": 7}},
     "edit.reatco.level"),
    ("wan", {"temporal_aids": TemporalAidSettings(flow=FlowAid())}, "temporal_aids",
     {"temporal_aids": {"flow": {}}}, "edit.temporal_aids"),
]


def _video(frames: int):
    masks = torch.zeros(1, frames, 32, 32, dtype=torch.bool)
    masks[..., :16] = True
    return torch.rand(frames, 3, 32, 32, generator=torch.Generator().manual_seed(0)), masks


@pytest.mark.parametrize("family, kwargs, argument, section, field", UNSUPPORTED,
                         ids=[f"{c[0]}-{c[2]}" for c in UNSUPPORTED])
def test_a_setting_the_backbone_lacks_is_one_error_at_both_doors(request, tmp_path, family, kwargs, argument, section,
                                                                  field, monkeypatch):
    pipe = request.getfixturevalue("tiny_pipe" if family == "sd" else "wan_pipe")
    model = request.getfixturevalue("tiny_model_dir" if family == "sd" else "tiny_wan_dir")
    calls = []
    monkeypatch.setattr(pipe.backbone.__class__, "encode", lambda self, frames: calls.append(1))
    video, masks = _video(9)
    with pytest.raises(ValueError) as info:
        pipe(video, masks, "a red circle on a black background", ["red circle"], height=32, width=32,
             num_inference_steps=2, output_type="latent", **kwargs)
    assert str(info.value).startswith(f"{argument}: ") and not calls  # before the first stage runs
    if family == "wan":
        assert "transformer block" in str(info.value) or "temporal" in argument

    (tmp_path / "frames").mkdir()
    spec = spec_from_dict({"model": str(model), "video": {"path": "frames", "frames": 9},
                           "prompt": "a red circle on a black background",
                           "regions": [{"name": "r", "prompt": "red circle", "masks": {"box": [0, 0, 8, 8]}}],
                           "edit": section}, tmp_path)
    monkeypatch.setattr("diffusers.DiffusionPipeline.from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(SpecError) as info:
        preflight(spec)
    assert info.value.field == field and "\n" not in str(info.value)


def test_wan_frame_counts_follow_one_rule_in_the_pipeline_and_the_config(wan_pipe, tiny_wan_dir, tmp_path):
    video, masks = _video(8)
    with pytest.raises(ValueError, match="^video: 8 frames: this model takes 4k \\+ 1 frames .* use 5 or 9$"):
        wan_pipe(video, masks, "a red circle", ["red circle"], height=32, width=32, output_type="latent")
    (tmp_path / "frames").mkdir()
    spec = spec_from_dict({"model": str(tiny_wan_dir), "video": {"path": "frames", "frames": 8}, "prompt": "a red circle",
                           "regions": [{"name": "r", "prompt": "red circle", "masks": {"box": [0, 0, 8, 8]}}]}, tmp_path)
    with pytest.raises(SpecError, match="video.frames: 8 frames: this model takes 4k \\+ 1 frames .* use 5 or 9"):
        preflight(spec)


# ------------------------------------------------------------------------------------ recommended settings

RECOMMENDED = {"steps": 3, "guidance_scale": 2.0, "modulation": {"steps": 2, "self_strength": 0.0,
                                                                 "cross_strength": 2.5}}


@pytest.fixture(scope="module")
def wan_with_settings(tiny_wan_dir, tmp_path_factory):
    """The tiny Wan model with a videograin.json of recommended settings."""
    folder = tmp_path_factory.mktemp("recommended") / "wan"
    shutil.copytree(tiny_wan_dir, folder)
    (folder / "videograin.json").write_text(json.dumps(RECOMMENDED))
    return folder


def _steps_and_contexts(pipe, monkeypatch, **kwargs):
    """Run an edit; return the number of edit steps and, per edit step, the (self, cross) scales its
    conditional model call was modulated with ((0, 0): plain)."""
    import videograin.backbones.wan as wan

    scales, real = [], wan.step_context

    def spy(step, t, schedule, layout=None, modulation=None, recorder=None, kernels=None):
        context = real(step, t, schedule, layout, modulation, recorder, kernels)
        if layout is not None:
            scales.append((step, context.self_scale, context.cross_scale, t))
        return context

    monkeypatch.setattr(wan, "step_context", spy)
    video, masks = _video(9)
    steps = []
    pipe(video, masks, "a red circle on a black background", ["red circle"], height=32, width=32,
         output_type="latent", callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw, **kwargs)
    return len(steps), scales


def test_the_pipeline_uses_the_models_recommended_settings_unless_the_caller_gives_some(wan_with_settings,
                                                                                        monkeypatch):
    from videograin import WanVideoGrainPipeline

    pipe = WanVideoGrainPipeline.from_pretrained(wan_with_settings)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.recommended.steps == 3 and pipe.recommended.source.endswith("videograin.json")
    steps, scales = _steps_and_contexts(pipe, monkeypatch)
    schedule = pipe.backbone.schedule(3)
    assert steps == 3
    xi = [schedule.time_factor(t) for _, _, _, t in scales]
    assert [(s, c) for _, s, c, _ in scales] == [(0.0, 2.5 * xi[0]), (0.0, 2.5 * xi[1]), (0.0, 0.0)]  # 2 of 3 steps
    steps, scales = _steps_and_contexts(pipe, monkeypatch, num_inference_steps=4,
                                        modulation=Modulation(self_strength=0.5))
    assert steps == 4 and [s > 0 for _, s, _, _ in scales] == [True, True, False, False]  # the rest recommended
    _, scales = _steps_and_contexts(pipe, monkeypatch, modulation=None)
    assert all(s == c == 0.0 for _, s, c, _ in scales)  # off stays off


def test_the_config_and_the_cli_use_the_recommended_settings_unless_the_config_gives_some(wan_with_settings,
                                                                                          tmp_path):
    from videograin.toy import DEMO as TOY_EXAMPLE
    from videograin.cli import main

    config = {"model": str(wan_with_settings), "video": {"path": str(TOY_EXAMPLE / "frames"), "frames": 9},
              "prompt": "a purple circle on a black background",
              "regions": [{"name": "left", "prompt": "purple circle", "masks": {"box": [0, 5, 14, 19]}}]}
    spec, _ = preflight(spec_from_dict(config, tmp_path))
    assert (spec.edit.steps, spec.edit.guidance_scale) == (3, 2.0)
    assert spec.edit.modulation == Modulation(steps=2, self_strength=0.0, cross_strength=2.5)
    given = {**config, "edit": {"steps": 5, "modulation": {"cross_strength": 1.0}}}
    spec, _ = preflight(spec_from_dict(given, tmp_path))
    assert (spec.edit.steps, spec.edit.guidance_scale) == (5, 2.0)
    assert spec.edit.modulation == Modulation(steps=2, self_strength=0.0, cross_strength=1.0)

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["edit", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["config"]["edit"]["steps"] == 3 and record["config"]["edit"]["modulation"]["cross_strength"] == 2.5
    assert main(["edit", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "out2"), "--steps", "2", "--quiet"]) == 0
    assert json.loads((tmp_path / "out2" / "run.json").read_text())["config"]["edit"]["steps"] == 2


def test_a_model_without_the_file_gets_its_familys_defaults_and_a_bad_file_is_one_line(tiny_wan_dir, tiny_pipe,
                                                                                       tmp_path):
    from videograin import WanVideoGrainPipeline
    from videograin.backbones.recommended import FAMILY_DEFAULTS

    assert tiny_pipe.recommended == FAMILY_DEFAULTS["sd"] and tiny_pipe.recommended.guidance_scale == 7.5
    assert WanVideoGrainPipeline.from_pretrained(tiny_wan_dir).recommended.guidance_scale == 5.0
    folder = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, folder)
    (folder / "videograin.json").write_text(json.dumps({"steps": 3, "modulation": {"cross_strenght": 2}}))
    (tmp_path / "frames").mkdir()
    spec = spec_from_dict({"model": str(folder), "video": {"path": "frames", "frames": 9}, "prompt": "a red circle",
                           "regions": [{"name": "r", "prompt": "red circle", "masks": {"box": [0, 0, 8, 8]}}]}, tmp_path)
    with pytest.raises(SpecError, match="model: .*videograin.json: unknown key\\(s\\) \\['cross_strenght'\\]"):
        preflight(spec)
