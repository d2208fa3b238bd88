"""Bad values in the config's YAML fields. Most run the CLI through ``case.fail`` (conftest.py): the
run ends with exit code 2 and one stderr line ``error: <field>: <problem>; fix: <fix>`` naming the
field, before the weights load, with nothing written and every input untouched; a setting that is
valid but has no effect is noted instead.

The parser's own field-by-field table (``load_spec`` alone, no CLI and no model) is tests/test_spec.py;
the settings of one feature (Wan, ReAtCo, ControlNet, flow editing, masks) are checked beside that
feature's tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from videograin.cli import main
from videograin.config.parse import spec_from_dict
from videograin.config.preflight import notes
from videograin.errors import SpecError

from conftest import region_entry

# --- the config file -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, typo, right",
    [("edit", "gudiance_scale", "guidance_scale"), ("", "prompts", "prompt"), ("video", "frame", "frames"),
     ("regions[0]", "mask", "masks"), ("edit.modulation", "self_strenght", "self_strength")],
)
def test_unknown_key_with_suggestion(case, where, typo, right):
    section = {
        "": case.config,
        "edit": case.config["edit"],
        "video": case.config["video"],
        "regions[0]": case.config["regions"][0],
    }.get(where)
    if where == "edit.modulation":
        section = case.config["edit"].setdefault("modulation", {})
    section[typo] = 1
    line = case.fail(f"{where}.{typo}" if where else typo)
    assert f"unknown key '{typo}'" in line and f"did you mean '{right}'" in line


def test_duplicate_yaml_key(case):
    text = case.write().read_text().replace("prompt: a red apple", "prompt: a red apple\nprompt: a red apple", 1)

    def write() -> Path:  # keep the hand-written text
        case.path.write_text(text)
        return case.path

    case.write = write
    line = case.fail("config")
    assert "duplicate key 'prompt'" in line


def test_a_20_mb_prompt_in_a_config_is_refused_in_under_a_second(example_config, tmp_path):
    import time

    from videograin.config.parse import spec_from_dict
    from videograin.errors import SpecError

    config = yaml.safe_load(example_config.read_text())
    config["prompt"] = "a red apple " * 1_750_000
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        spec_from_dict(config, example_config.parent)
    assert info.value.field == "prompt" and time.perf_counter() - start < 1


def test_convert_config_refuses_an_official_config_with_a_duplicate_key(tmp_path, capsys):
    official = tmp_path / "official.yaml"
    official.write_text("pretrained_model_path: a\npretrained_model_path: b\n")
    assert main(["convert-config", str(official), "--out", str(tmp_path / "new.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config: duplicate key 'pretrained_model_path'") and err.count("\n") == 1
    assert not (tmp_path / "new.yaml").exists()


_KEYS = st.sampled_from(["model", "video", "prompt", "regions", "edit", "control", "output", "path", "frames",
                         "size", "name", "masks", "steps", "seed", "modulation", "levels", "window", "typo"])


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=12), st.just("video.mp4"), st.just("all"))


_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.dictionaries(_KEYS, _VALUES, max_size=8), _VALUES))
def test_the_loader_returns_a_spec_or_raises_spec_error(tmp_path, data):
    """Any parsed YAML: a valid EditSpec or a one-line SpecError, never another exception."""
    (tmp_path / "video.mp4").touch()
    try:
        spec = spec_from_dict(data, tmp_path)
    except SpecError as err:
        assert "\n" not in str(err) and err.field and err.fix
    else:
        assert spec.prompt.strip() and spec.regions


# --- prompts ---------------------------------------------------------------------------------------------------


BASE_PROMPT = "a red apple and an orange ball on the grass"  # 10 tokens with the tiny tokenizer


@pytest.mark.parametrize("region_prompt", ["green apple", "apple red", "red apple and a dog"])
def test_region_prompt_not_a_token_subsequence(case, region_prompt):
    region_entry(case, "right_ball")["prompt"] = region_prompt
    line = case.fail("regions[1].prompt")
    assert repr(region_prompt) in line


def _prompt_of(tokens: int, tokenizer) -> str:
    words = BASE_PROMPT.split()
    filler = "and the sky".split()
    while len(words) < tokens:
        words.append(filler[len(words) % 3])
    prompt = " ".join(words[:tokens])
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == tokens
    return prompt


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    assert tok.model_max_length == 77
    return tok


@pytest.mark.parametrize("tokens", [76, 120])
def test_prompt_over_77_tokens(case, tokenizer, tokens):
    """76 words + start and end tokens = 78 > 77."""
    case.config["prompt"] = _prompt_of(tokens, tokenizer)
    line = case.fail("prompt")
    assert f"{tokens} tokens" in line and "75" in line


def test_prompt_of_exactly_77_tokens_is_accepted(case, tokenizer):
    case.config["prompt"] = _prompt_of(75, tokenizer)
    case.config["video"]["frames"] = 40  # a later check stops the run: the prompt passed
    case.fail("video.frames")


def test_a_negative_or_source_prompt_over_the_token_limit_is_refused(case):
    case.config["negative_prompt"] = " ".join(["blurry"] * 100)
    case.fail("negative_prompt")
    case.config["negative_prompt"] = ""
    case.config["source_prompt"] = " ".join(["two"] * 100)
    case.fail("source_prompt")


# --- video: size and frames ------------------------------------------------------------------------------------


def _boxes_everywhere(case) -> None:
    """Every region a box, so a changed frame count needs no new mask folders."""
    for region in case.config["regions"]:
        region["masks"] = [0, 0, 96, 64]


@pytest.mark.parametrize(
    "size, expected",
    [([200, 128], "width 192 or 208 and height 128"), ([192, 120], "width 192 and height 112 or 128"),
     ([8, 128], "width 16 and height 128")],
)
def test_size_not_a_multiple(case, size, expected):
    case.config["video"]["size"] = size
    line = case.fail("video.size")
    assert f"{size[0]}x{size[1]}" in line and "16" in line
    assert expected in line


def test_a_frame_size_the_video_encoder_cannot_write_is_refused(case):
    case.config["video"]["size"] = [100032, 64]
    assert "8192" in case.fail("video.size")


@pytest.mark.parametrize(
    "selection, suggestion",
    [({"frames": 40}, "frames: 16"), ({"frames": 16, "start": 4}, "frames: 12"),
     ({"frames": 16, "stride": 2}, "frames: 8")],
)
def test_fewer_frames_than_requested(case, selection, suggestion):
    case.config["video"].update(selection)
    line = case.fail("video.frames")
    assert "only 16 frames" in line and suggestion in line


def test_a_huge_frame_count_is_refused_at_once(case):
    case.config["video"]["frames"] = 1_000_000_000
    _boxes_everywhere(case)
    start = time.monotonic()
    case.fail("video.frames")
    assert time.monotonic() - start < 20  # no set of a billion frame indices first


# --- regions ---------------------------------------------------------------------------------------------------


def test_duplicate_region_names(case):
    case.config["regions"][2]["name"] = "left_ball"
    line = case.fail("regions[2].name")
    assert "'left_ball'" in line and "regions[0]" in line


def test_more_regions_than_the_layout_has_bits_are_refused(case):
    case.config["regions"] = [{"name": f"r{i}", "masks": [0, 0, 8, 8], "prompt": ""} for i in range(70)]
    assert "62" in case.fail("regions")


def test_a_box_error_names_the_key_it_is_written_under(case):
    region_entry(case, "left_ball")["masks"] = [500, 500, 600, 600]  # outside the 192x128 frame
    case.fail("regions[0].masks")


# --- edit settings, checked against the model's config files before weights load -------------------------------


def test_steps_in_config_below_one(case):
    case.config["edit"]["steps"] = 0
    case.fail("edit.steps")


def test_steps_above_the_training_timesteps_are_refused(case):
    case.config["edit"]["steps"] = 2000
    assert "1000" in case.fail("edit.steps")


def test_a_seed_past_64_bits_is_refused(case):
    case.config["edit"]["seed"] = 2**64
    case.fail("edit.seed")


def test_modulation_levels_the_model_lacks_are_refused(case):
    case.config["edit"]["modulation"] = {"levels": [9]}
    assert "levels 0..1" in case.fail("edit.modulation.levels")


@pytest.mark.parametrize("edit,field", [
    ({"method": "reatco", "reatco": {"level": 9}}, "edit.reatco.level"),
])
def test_settings_the_model_cannot_take_end_before_weights_load(case, edit, field):
    """The tiny UNet has 2 levels."""
    case.config["edit"].update(edit)
    assert "levels 0..1" in case.fail(field)


@pytest.mark.parametrize("frames", [16, 1])
def test_flow_aids_the_model_or_clip_cannot_take_are_refused(case, frames):
    case.config["video"]["frames"] = frames
    _boxes_everywhere(case)
    case.config["edit"]["temporal_aids"] = {"flow": {"levels": [0] if frames == 1 else [9]}}
    case.fail("edit.temporal_aids.flow" if frames == 1 else "edit.temporal_aids.flow.levels")


def test_an_absurd_strength_is_refused_and_a_window_of_the_whole_clip_is_noted(case):
    case.config["edit"]["modulation"] = {"cross_strength": 1e6}
    case.fail("edit.modulation.cross_strength")
    case.config["edit"].update(modulation={}, window={"size": 16, "stride": 8})  # the same edit as no window: noted
    spec_data = dict(case.config, video=dict(case.config["video"], path=str(case.folder / "video.mp4")))
    spec_data["regions"] = [dict(r, masks=str(case.folder / r["masks"])) for r in case.config["regions"]]
    found = notes(spec_from_dict(spec_data, case.folder))
    assert any("edit.window.size 16 covers all 16 (latent) frames" in n for n in found), found


def test_modulation_steps_past_the_edit_and_a_seed_without_effect_are_noted(case):
    case.config["edit"].update(steps=4, modulation={"steps": 15}, seed=0)
    spec_data = dict(case.config, video=dict(case.config["video"], path=str(case.folder / "video.mp4")))
    spec_data["regions"] = [dict(r, masks=str(case.folder / r["masks"])) for r in case.config["regions"]]
    found = notes(spec_from_dict(spec_data, case.folder))
    assert any("edit.modulation.steps is 15, more than edit.steps (4)" in n for n in found)
    assert not any("edit.seed" in n for n in found)  # the default seed: nothing to say
    spec_data["edit"] = dict(spec_data["edit"], seed=3)
    assert any("edit.seed 3 does not change this edit" in n for n in notes(spec_from_dict(spec_data, case.folder)))
