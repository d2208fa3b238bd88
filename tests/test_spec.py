"""Tests for the edit spec: valid configs parse into the expected dataclasses, every invalid one fails clearly."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from videograin.config.spec import DEFAULT_MODEL, EditSettings, EditSpec, RegionSpec, VideoSpec

from videograin.method.settings import Modulation

from videograin.errors import SpecError

from videograin.config.parse import load_spec, spec_from_dict

FRAMES = 4
TREE_BOXES = [[i, i, 10 + i, 10 + i] for i in range(FRAMES)]
DELETE = object()


def base_config() -> dict:
    """A minimal valid config (relative paths point into the ``project`` fixture)."""
    return {
        "video": {"path": "clip.mp4", "frames": FRAMES},
        "prompt": "Spiderman and Polar Bear jogging under cherry trees",
        "regions": [
            {"name": "left_man", "masks": "masks/left_man", "prompt": "Spiderman"},
            {"name": "right_man", "masks": [10, 20, 200, 300], "prompt": "Polar Bear"},
            {"name": "trees", "masks": copy.deepcopy(TREE_BOXES), "prompt": "cherry trees"},
            {"name": "ground", "masks": "masks/ground", "prompt": ""},
        ],
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a dummy video file and two mask folders."""
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "masks" / "left_man").mkdir(parents=True)
    (tmp_path / "masks" / "ground").mkdir()
    return tmp_path


def write_config(folder: Path, config: dict | str, name: str = "edit.yaml") -> Path:
    path = folder / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


def set_at(config: dict, dotted: str, value: object) -> None:
    """Set (or with DELETE remove) ``config`` at a path like ``regions[1].prompt``, creating sections."""
    keys = [int(index) if index else key for key, index in re.findall(r"(\w+)|\[(\d+)\]", dotted)]
    node = config
    for key in keys[:-1]:
        if isinstance(key, str):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


def test_valid_config_round_trips(project: Path) -> None:
    spec = load_spec(write_config(project, base_config()))
    root = project.resolve()
    assert spec.prompt == "Spiderman and Polar Bear jogging under cherry trees"
    assert spec.video == VideoSpec(path=root / "clip.mp4", frames=FRAMES)
    assert spec.regions == (
        RegionSpec(name="left_man", prompt="Spiderman", masks=root / "masks" / "left_man"),
        RegionSpec(name="right_man", prompt="Polar Bear", boxes=((10, 20, 200, 300),)),
        RegionSpec(name="trees", prompt="cherry trees", boxes=tuple(tuple(b) for b in TREE_BOXES)),
        RegionSpec(name="ground", prompt="", masks=root / "masks" / "ground"),
    )
    assert [region.edited for region in spec.regions] == [True, True, True, False]
    assert (spec.model, spec.source_prompt, spec.negative_prompt) == (DEFAULT_MODEL, "", "")
    assert spec.edit == EditSettings() and spec.edit.modulation == Modulation()
    assert spec.output is None and spec.base_dir == root
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.prompt = "changed"  # type: ignore[misc]

    data = json.loads(json.dumps(spec.to_dict()))
    assert data["video"]["path"] == str(root / "clip.mp4")
    assert data["regions"][1]["masks"] == [10, 20, 200, 300]
    assert data["regions"][2]["masks"] == TREE_BOXES
    assert "base_dir" not in data
    assert spec_from_dict(data, spec.base_dir) == spec


def test_every_key_set_is_parsed(project: Path) -> None:
    (project / "models" / "sd").mkdir(parents=True)
    config = base_config()
    config.update(
        model="models/sd",
        source_prompt="two men jogging",
        negative_prompt="ugly, blurry",
        output="out/run",
        edit={"steps": 30, "guidance_scale": 7, "seed": 3, "blend": False,
              "modulation": {"steps": 0, "self_strength": 0, "cross_strength": 2.5,
                             "levels": [2, 0], "temporal": "sparse_causal"}},
    )
    config["video"].update(start=5, stride=2, size=[640, 384])
    spec = load_spec(write_config(project, config))
    root = project.resolve()
    assert spec.model == str(root / "models" / "sd")
    assert (spec.source_prompt, spec.negative_prompt) == ("two men jogging", "ugly, blurry")
    assert spec.output == root / "out" / "run"
    assert spec.video == VideoSpec(path=root / "clip.mp4", frames=FRAMES, start=5, stride=2, size=(640, 384))
    assert spec.edit == EditSettings(
        steps=30, guidance_scale=7.0, seed=3, blend=False,
        modulation=Modulation(steps=0, self_strength=0.0, cross_strength=2.5, levels=(2, 0),
                                  temporal="sparse_causal"),
    )
    assert isinstance(spec.edit.guidance_scale, float)
    assert spec_from_dict(json.loads(json.dumps(spec.to_dict())), spec.base_dir) == spec
    assert spec_from_dict(yaml.safe_load(spec.to_yaml()), spec.base_dir) == spec  # the file the app offers
    portable = yaml.safe_load(spec.to_yaml(output=False))
    assert "output" not in portable and spec_from_dict(portable, spec.base_dir) == dataclasses.replace(spec, output=None)
    long = dict(config, edit={"modulation": {"temporal": "anchored", "anchors": 4, "group": 2, "chunk": 8}})
    anchored = load_spec(write_config(project, long))
    assert anchored.edit.modulation == Modulation(temporal="anchored", anchors=4, group=2, chunk=8)
    assert spec_from_dict(yaml.safe_load(anchored.to_yaml()), anchored.base_dir) == anchored


def test_paths_resolve_against_config_folder_not_cwd(project: Path, tmp_path_factory, monkeypatch) -> None:
    config = base_config()
    set_at(config, "video.path", "../clip.mp4")
    set_at(config, "regions[0].masks", "../masks/left_man")
    set_at(config, "regions[3].masks", str(project / "masks" / "ground"))  # absolute stays as is
    (project / "configs").mkdir()
    path = write_config(project / "configs", config)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    spec = load_spec(path)
    assert spec.base_dir == (project / "configs").resolve()
    assert spec.video.path == (project / "clip.mp4").resolve()
    assert spec.regions[0].masks == (project / "masks" / "left_man").resolve()
    assert spec.regions[3].masks == (project / "masks" / "ground").resolve()


def test_hub_id_stays_a_string_and_null_sections_mean_defaults(project: Path) -> None:
    config = base_config()
    config.update(model="someone/some-model", edit={"modulation": None})
    spec = load_spec(write_config(project, config))
    assert spec.model == "someone/some-model"
    assert spec.edit == EditSettings()
    assert spec_from_dict({**base_config(), "edit": None}, project).edit == EditSettings()


def test_region_needs_exactly_one_of_masks_or_boxes() -> None:
    with pytest.raises(ValueError):
        RegionSpec(name="a", prompt="")
    with pytest.raises(ValueError):
        RegionSpec(name="a", prompt="", masks=Path("m"), boxes=((0, 0, 1, 1),))


def test_a_config_region_given_by_clicks_cannot_carry_a_ready_mask() -> None:
    import numpy as np

    from videograin.config.spec import MaskPrompt

    assert RegionSpec(name="a", prompt="", prompts=MaskPrompt(box=(0, 0, 4, 4))).prompts.box == (0, 0, 4, 4)
    with pytest.raises(ValueError, match="ready mask"):
        RegionSpec(name="a", prompt="", prompts=MaskPrompt(mask=np.ones((4, 4), bool)))


def test_overrides_by_shortcut_keep_the_config_on_none_and_a_dotted_null_sets_null(project: Path) -> None:
    """One mechanism for CLI flags, edit() keywords and a batch job's keys: a shortcut left at None (a
    flag not given) keeps the config's value, a dotted key set to null sets null (a batch's ``set:``)."""
    from videograin.config.overrides import shortcut_keys, with_overrides

    spec = load_spec(write_config(project, {**base_config(), "edit": {"seed": 7}, "video": {**base_config()["video"],
                                                                                            "size": [64, 32]}}))
    kept = with_overrides(spec, shortcut_keys({"seed": None, "steps": 3}))
    assert kept.edit.seed == 7 and kept.edit.steps == 3
    assert with_overrides(spec, {"video.size": None}).video.size is None
    with pytest.raises(TypeError, match="unknown override"):
        shortcut_keys({"sede": 1})
    with pytest.raises(SpecError) as err:
        with_overrides(spec, {"prompt.text": "x"})
    assert err.value.field == "set.prompt.text"


def test_spec_error_is_one_line() -> None:
    err = SpecError("video.path", "missing", "add it")
    assert str(err) == "video.path: missing; fix: add it"
    assert (err.field, err.problem, err.fix) == ("video.path", "missing", "add it")


# (path to change, new value or DELETE, expected err.field, text the message must contain)
INVALID = {
    # unknown keys, at every level, with the closest valid key suggested
    "typo top": ("promt", "x", "promt", "did you mean 'prompt'"),
    "typo video": ("video.frame", 8, "video.frame", "did you mean 'frames'"),
    "typo region": ("regions[0].mask", "m", "regions[0].mask", "did you mean 'masks'"),
    "typo edit": ("edit.gudiance_scale", 7.5, "edit.gudiance_scale", "did you mean 'guidance_scale'"),
    "typo modulation": ("edit.modulation.self_strenght", 0.3, "edit.modulation.self_strenght",
                        "did you mean 'self_strength'"),
    "unknown key lists valid": ("edit.zzz", 1, "edit.zzz",
                                "steps, guidance_scale, guidance_scale_2, seed, blend, composite, record_attention, method"),
    # sections of the wrong kind
    "video not mapping": ("video", "clip.mp4", "video", "key: value"),
    "edit not mapping": ("edit", [1], "edit", "key: value"),
    "modulation not mapping": ("edit.modulation", 3, "edit.modulation", "key: value"),
    "regions not list": ("regions", "left_man", "regions", "one `- {name"),
    "region not mapping": ("regions[0]", "left_man", "regions[0]", "- {name: ..., masks: ..., prompt: ...}"),
    "regions empty": ("regions", [], "regions", "at least one"),
    # integers: no floats, no booleans, no strings, ranges
    "frames float": ("video.frames", 16.0, "video.frames", "e.g. 16"),
    "frames bool": ("video.frames", True, "video.frames", "whole number"),
    "frames zero": ("video.frames", 0, "video.frames", ">= 1"),
    "start string": ("video.start", "0", "video.start", "whole number"),
    "start negative": ("video.start", -1, "video.start", ">= 0"),
    "stride zero": ("video.stride", 0, "video.stride", ">= 1"),
    "steps zero": ("edit.steps", 0, "edit.steps", ">= 1"),
    "steps bool": ("edit.steps", True, "edit.steps", "whole number"),
    "seed float": ("edit.seed", 1.5, "edit.seed", "whole number"),
    "seed negative": ("edit.seed", -1, "edit.seed", ">= 0"),
    "modulation steps negative": ("edit.modulation.steps", -1, "edit.modulation.steps", ">= 0"),
    # size
    "size one number": ("video.size", [512], "video.size", "size: [512, 512]"),
    "size scalar": ("video.size", 512, "video.size", "size: [512, 512]"),
    "size zero": ("video.size", [0, 512], "video.size", "size: [512, 512]"),
    "size float": ("video.size", [512.0, 512], "video.size", "size: [512, 512]"),
    # floats: numbers, finite, >= 0, not booleans
    "guidance string": ("edit.guidance_scale", "high", "edit.guidance_scale", "a number"),
    "guidance bool": ("edit.guidance_scale", True, "edit.guidance_scale", "a number"),
    "guidance infinite": ("edit.guidance_scale", float("inf"), "edit.guidance_scale", "a number"),
    "guidance negative": ("edit.guidance_scale", -1, "edit.guidance_scale", ">= 0"),
    "self strength negative": ("edit.modulation.self_strength", -0.1, "edit.modulation.self_strength", ">= 0"),
    # booleans
    "blend string": ("edit.blend", "yes", "edit.blend", "true or false"),
    "blend int": ("edit.blend", 1, "edit.blend", "true or false"),
    "record_attention string": ("edit.record_attention", "yes", "edit.record_attention", "true, false or compare"),
    # levels and temporal
    "levels word": ("edit.modulation.levels", "some", "edit.modulation.levels", "levels: all"),
    "levels empty": ("edit.modulation.levels", [], "edit.modulation.levels", "levels: all"),
    "level negative": ("edit.modulation.levels", [0, -1], "edit.modulation.levels[1]", ">= 0"),
    "level float": ("edit.modulation.levels", [0, 1.5], "edit.modulation.levels[1]", "whole number"),
    "levels repeated": ("edit.modulation.levels", [1, 0, 1], "edit.modulation.levels", "each level once"),
    "temporal typo": ("edit.modulation.temporal", "sparse-causal", "edit.modulation.temporal",
                      "did you mean 'sparse_causal'"),
    "temporal unknown": ("edit.modulation.temporal", "xyz", "edit.modulation.temporal",
                         "full, sparse_causal, per_frame"),
    # text fields
    "prompt number": ("prompt", 123, "prompt", "as text"),
    "prompt blank": ("prompt", "  ", "prompt", "non-empty"),
    "source prompt number": ("source_prompt", 5, "source_prompt", "as text"),
    "negative prompt list": ("negative_prompt", ["ugly"], "negative_prompt", "as text"),
    "region prompt null": ("regions[1].prompt", None, "regions[1].prompt", 'write ""'),
    "region name number": ("regions[0].name", 7, "regions[0].name", "as text"),
    "model number": ("model", 5, "model", "as text"),
    "model missing local folder": ("model", "./models/sd", "model", "hub id"),
    "output number": ("output", 5, "output", "as text"),
    # required keys
    "prompt missing": ("prompt", DELETE, "prompt", "add `prompt:"),
    "video missing": ("video", DELETE, "video", "add `video:"),
    "video path missing": ("video.path", DELETE, "video.path", "add `path:"),
    "regions missing": ("regions", DELETE, "regions", "add a `regions:`"),
    "region name missing": ("regions[1].name", DELETE, "regions[1].name", "add `name:"),
    "region masks missing": ("regions[0].masks", DELETE, "regions[0].masks", "add `masks:"),
    "region prompt missing": ("regions[3].prompt", DELETE, "regions[3].prompt", 'prompt: ""'),
    # files and folders
    "video path absent": ("video.path", "missing.mp4", "video.path", "resolved against the config folder"),
    "mask folder absent": ("regions[0].masks", "masks/nope", "regions[0].masks", "does not exist"),
    "mask folder is a file": ("regions[0].masks", "clip.mp4", "regions[0].masks", "folder of per-frame PNGs"),
    "masks wrong type": ("regions[0].masks", 5, "regions[0].masks", "one such box per frame"),
    # boxes
    "box three numbers": ("regions[1].masks", [1, 2, 3], "regions[1].masks", "[x0, y0, x1, y1]"),
    "box empty list": ("regions[1].masks", [], "regions[1].masks", "[x0, y0, x1, y1]"),
    "box float": ("regions[1].masks", [0, 0, 10.5, 10], "regions[1].masks", "whole source-frame pixels"),
    "box bool": ("regions[1].masks", [0, 0, True, 10], "regions[1].masks", "whole source-frame pixels"),
    "box negative": ("regions[1].masks", [-1, 0, 10, 10], "regions[1].masks", ">= 0"),
    "box flipped x": ("regions[1].masks", [10, 0, 5, 10], "regions[1].masks", "[left, top, right, bottom]"),
    "box empty y": ("regions[1].masks", [0, 10, 10, 10], "regions[1].masks", "[left, top, right, bottom]"),
    "per-frame count": ("regions[2].masks", TREE_BOXES[:3], "regions[2].masks", "exactly 4 boxes"),
    "per-frame bad box": ("regions[2].masks[1]", [0, 0, 0, 0], "regions[2].masks[1]", "[left, top, right"),
    "per-frame mixed": ("regions[2].masks[1]", 5, "regions[2].masks[1]", "[x0, y0, x1, y1]"),
    # region names
    "name duplicate": ("regions[1].name", "left_man", "regions[1].name", "unique"),
    "name with space": ("regions[0].name", "left man", "regions[0].name", "letters, digits"),
    "name dot dot": ("regions[0].name", "..", "regions[0].name", "letters, digits"),
    "name empty": ("regions[0].name", "", "regions[0].name", "non-empty"),
}


@pytest.mark.parametrize(("where", "value", "field", "hint"), INVALID.values(), ids=INVALID.keys())
def test_invalid_config_names_field_and_fix(project: Path, where: str, value, field: str, hint: str) -> None:
    config = base_config()
    set_at(config, where, value)
    with pytest.raises(SpecError) as info:
        load_spec(write_config(project, config))
    err = info.value
    assert err.field == field
    assert hint in str(err)
    assert "\n" not in str(err) and str(err).startswith(f"{field}: ")


def test_per_frame_count_error_names_both_numbers(project: Path) -> None:
    config = base_config()
    set_at(config, "regions[2].masks", TREE_BOXES[:3])
    with pytest.raises(SpecError, match=r"has 3 per-frame boxes but video\.frames is 4"):
        load_spec(write_config(project, config))


def test_missing_video_error_names_resolved_path(project: Path) -> None:
    config = base_config()
    set_at(config, "video.path", "sub/../missing.mp4")
    with pytest.raises(SpecError) as info:
        load_spec(write_config(project, config))
    assert str((project / "missing.mp4").resolve()) in info.value.problem


BAD_FILES = {
    "syntax error": ("video:\n  path: clip.mp4\n  frames: [4\nprompt: x\n", "line 4"),
    "top level list": ("- prompt: x\n", "mapping of keys"),
    "empty file": ("", "mapping of keys"),
    "duplicate key": ("prompt: a\nvideo: {path: clip.mp4}\nprompt: b\n", "duplicate key 'prompt' at line 3"),
}


@pytest.mark.parametrize(("text", "hint"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_config_file(project: Path, text: str, hint: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(write_config(project, text))
    assert info.value.field == "config"
    assert hint in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert info.value.field == "config" and "nope.yaml" in str(info.value)


def test_config_not_utf8(project: Path) -> None:
    path = project / "edit.yaml"
    path.write_bytes(b"prompt: \xff\xfe\n")
    with pytest.raises(SpecError, match="UTF-8") as info:
        load_spec(path)
    assert info.value.field == "config"


def test_edit_spec_defaults_match_loader(project: Path) -> None:
    spec = load_spec(write_config(project, base_config()))
    direct = EditSpec(prompt=spec.prompt, video=spec.video, regions=spec.regions, base_dir=spec.base_dir)
    assert spec == direct
