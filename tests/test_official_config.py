"""`videograin convert-config`: official VideoGrain configs (knightyxp/VideoGrain) -> spec YAML.

The official configs below copy real ones from the official repository (config/...) key for key;
changes for the test are marked `# test:`. Frames (`%05d.jpg`) and masks (`<layout_mask_dir>/<name>/
%05d.png`, one per source frame) are written in the official folder layout under a fake repository root.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from videograin.cli import main
from videograin.config.official import convert_config
from videograin.config.spec import ControlSpec
from videograin.errors import SpecError
from videograin.config.parse import load_spec

# config/instance_level/running_two_man/4cls_spider_polar.yaml
INSTANCE = """\
pretrained_model_path: "./ckpt/stable-diffusion-v1-5"
logdir: ./result/run_two_man/instance_level/left2spider_right2polar_pnp5

dataset_config:
    path: "data/run_two_man/run_two_man_fr2"
    prompt: ''
    n_sample_frame: 16
    start_sample_frame: 0
    sampling_rate: 2
    image_size: 32  # test: tiny frames (official default 512)
    layout_mask_dir: "./data/run_two_man/layout_masks_fr2"
    layout_mask_order: ['left_man','right_man','ground','full_trees']
    negative_promot: "ugly, blurry, low res, unrealistic, unaesthetic"

control_config:
    control_type: "dwpose"
    pretrained_controlnet_path: "./ckpt/control_v11p_sd15_openpose"
    controlnet_conditioning_scale: 1.0
    hand: True
    face: False

editing_config:
    use_invertion_latents: true
    inject_step: 5
    old_qk: 1
    flatten_res: [1]
    guidance_scale: 7.5
    use_pnp: true
    use_freeu: false
    editing_prompts: [
            ['Spiderman and Polar Bear on grass meadow before cherry trees','Spiderman','Polar Bear','grass meadow',''],
    ]  # test: the trees keep an empty local prompt (unedited), as in config/demo_config.yaml

    clip_length: "${..dataset_config.n_sample_frame}"
    sample_seeds: [0]
    num_inference_steps: 50
    blending_percentage: 0

test_pipeline_config:
    target: video_diffusion.pipelines.ddim_spatial_temporal.DDIMSpatioTemporalStableDiffusionPipeline
    num_inference_steps: "${..validation_sample_logger.num_inference_steps}"



seed: 42
"""

# config/part_level/modification/man_text_message/blue_shirt.yaml
PART = """\
pretrained_model_path: "./ckpt/stable-diffusion-v1-5"
logdir: ./result/part_level/part_level_modification/man_text_message/blue_shirt

dataset_config:
    path: "data/man_text_message/man_text_message"
    prompt: A man in casual shirt is texting message
    start_sample_frame: 0
    n_sample_frame: 16
    sampling_rate: 1
    layout_mask_dir: "data/man_text_message/layout_masks"
    layout_mask_order: ['shirt']
    negative_promot: "jittery, ugly, blurry, low res, unrealistic, unaesthetic"

control_config:
   control_type: "dwpose"
   pretrained_controlnet_path:  "./ckpt/control_v11p_sd15_openpose"
   controlnet_conditioning_scale: 1.0
   hand: true
   face: false

editing_config:
    use_invertion_latents: true
    inject_step: 10
    old_qk: 1
    flatten_res: [1,2,4]
    guidance_scale: 7.5
    use_pnp: true
    use_freeu: false
    editing_prompts: [
        ['A man in blue shirt','blue shirt'],
    ]
    clip_length: "${..dataset_config.n_sample_frame}"
    sample_seeds: [0]
    num_inference_steps: 50
    blending_percentage: 0

test_pipeline_config:
    target: video_diffusion.pipelines.ddim_spatial_temporal.DDIMSpatioTemporalStableDiffusionPipeline
    num_inference_steps: "${..validation_sample_logger.num_inference_steps}"



seed: 42
"""

# config/class_level/wolf/wolf.yaml
CLASS = """\
pretrained_model_path: "./ckpt/stable-diffusion-v1-5"
logdir: ./result/class_level/wolf2pig_preserve_bg

dataset_config:
    path: "data/wolf/wolf"
    prompt: A wolf
    start_sample_frame: 3  # test: 0 officially; a non-zero start checks the frame selection
    n_sample_frame: 16
    sampling_rate: 2
    layout_mask_dir: "data/wolf/layout_masks/"
    layout_mask_order: ['wolf','bg']
    negative_promot: "a wolf, deformed"

control_config:
    control_type: "depth_zoe"
    pretrained_controlnet_path: "./ckpt/sd-controlnet-depth"
    controlnet_conditioning_scale: 0.7


editing_config:
    use_invertion_latents: true
    inject_step: 0
    old_qk: 1
    flatten_res: [1,2,4]
    guidance_scale: 7.5
    use_pnp: false
    use_freeu: false
    editing_prompts: [
            ['A cute pig in the autum forest','A cute pig','autum forest'],
            ['A husky in the green forest','A husky','green forest'],
            ['A tiger in the autum forest','A tiger','autum forest'],
            ['A bear in the autum  forest','A bear','autum forest'],

    ]
    clip_length: "${..dataset_config.n_sample_frame}"
    sample_seeds: [0]
    num_inference_steps: 50
    blending_percentage: 0
    modulated_percentage: 0.3

test_pipeline_config:
    target: video_diffusion.pipelines.ddim_spatial_temporal.DDIMSpatioTemporalStableDiffusionPipeline
    num_inference_steps: "${..validation_sample_logger.num_inference_steps}"



seed: 42"""


def make_repo(root: Path, text: str, name: str = "x.yaml", size: tuple[int, int] = (32, 32), extra: int = 3) -> Path:
    """Write an official config under ``root/config/`` and its frames and masks under ``root``, in the
    official layout; one frame and one mask per source frame, ``extra`` frames more than the config needs."""
    data = yaml.safe_load(text)
    ds = data["dataset_config"]
    total = ds.get("start_sample_frame", 0) + (ds["n_sample_frame"] - 1) * ds["sampling_rate"] + 1 + extra
    w, h = size
    frames = root / ds["path"]
    frames.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(total):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(frames / f"{i:05d}.jpg")
    order = ds["layout_mask_order"]
    for k, layout in enumerate(order):
        folder = root / ds["layout_mask_dir"] / layout
        folder.mkdir(parents=True)
        mask = np.zeros((h, w), np.uint8)
        band = w // len(order)
        mask[:, k * band : (k + 1) * band] = 255  # vertical bands, one per layout
        for i in range(total):
            Image.fromarray(mask).save(folder / f"{i:05d}.png")
    config = root / "config" / name
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    return config


def header(path: Path) -> list[str]:
    """The comment lines at the top of a converted file."""
    lines = path.read_text().splitlines()
    return [line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]]


def not_applied(path: Path) -> list[str]:
    lines = header(path)
    start = lines.index("# NOT APPLIED - official options videograin does not support yet:") + 1
    end = next((i for i in range(start, len(lines)) if lines[i] == "#"), len(lines))
    return [line[1:].strip() for line in lines[start:end]]


def check_against_official(spec, official: dict, root: Path, index: int = 0) -> None:
    """Every mapped field of ``spec`` equals the value written in the official config."""
    ds, ed = official["dataset_config"], official["editing_config"]
    entry = ed["editing_prompts"][index]
    assert spec.video.path == (root / ds["path"]).resolve()
    assert spec.video.frames == ds["n_sample_frame"]
    assert spec.video.start == ds.get("start_sample_frame", 0)
    assert spec.video.stride == ds["sampling_rate"]
    side = ds.get("image_size", 512)
    assert spec.video.size == (side, side)
    assert spec.source_prompt == ds["prompt"]
    assert spec.prompt == entry[0]
    assert spec.negative_prompt == ds["negative_promot"]
    assert [r.name for r in spec.regions] == ds["layout_mask_order"]
    assert [r.prompt for r in spec.regions] == entry[1:]
    assert [r.masks for r in spec.regions] == [(root / ds["layout_mask_dir"] / n).resolve()
                                               for n in ds["layout_mask_order"]]
    assert spec.edit.steps == ed["num_inference_steps"]
    assert spec.edit.guidance_scale == ed["guidance_scale"]
    assert spec.edit.seed == official["seed"]
    assert spec.edit.blend is True  # the official sampler always blends with the layout masks
    assert spec.output == (root / official["logdir"] / "videograin").resolve()
    check_aids_and_control(spec, official)


def check_aids_and_control(spec, official: dict) -> None:
    """FLATTEN, PnP and ControlNet as test.py and the pipeline use them: flatten_res factor 2^k -> flow
    level k; use_pnp with inject_step N -> pnp on the first N steps; control type, scale."""
    ed, control = official["editing_config"], official.get("control_config")
    aids = spec.edit.temporal_aids
    levels = sorted({f.bit_length() - 1 for f in ed.get("flatten_res") or []})
    assert (aids.flow.levels if aids.flow else ()) == tuple(levels)
    if aids.flow:
        assert aids.flow.steps is None  # every step, as officially
    inject = ed.get("inject_step") if ed.get("use_pnp") else 0
    assert (aids.pnp.steps if aids.pnp else 0) == inject
    if control and isinstance(spec.control.condition, str):
        conditions = {"canny": "canny", "depth": "depth", "depth_zoe": "depth", "openpose": "pose", "dwpose": "pose"}
        assert spec.control.condition == conditions[control["control_type"]]
    if control:
        assert spec.control.scale == control["controlnet_conditioning_scale"]


@pytest.fixture
def repo(tmp_path) -> Path:
    return tmp_path / "VideoGrain"


def test_instance_level(repo, tmp_path, caplog):
    official = make_repo(repo, INSTANCE)
    out = tmp_path / "converted" / "spider_polar.yaml"
    with caplog.at_level(logging.WARNING, logger="videograin"):
        result = convert_config(official, out, root=repo)
    assert result.path == out and out.is_file()
    spec = load_spec(out)
    assert spec == result.spec
    check_against_official(spec, yaml.safe_load(INSTANCE), repo)
    assert spec.regions[3].prompt == "" and not spec.regions[3].edited and spec.regions[2].edited
    assert spec.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"  # ./ckpt is absent: the hub's SD 1.5

    # paths are written relative to the new file's folder
    written = yaml.safe_load(out.read_text())
    assert written["video"]["path"] == "../VideoGrain/data/run_two_man/run_two_man_fr2"
    names = ("left_man", "right_man", "ground", "full_trees")
    masks = "../VideoGrain/data/run_two_man/layout_masks_fr2"
    assert [r["masks"] for r in written["regions"]] == [f"{masks}/{n}" for n in names]
    assert written["output"] == ("../VideoGrain/result/run_two_man/instance_level/left2spider_right2polar_pnp5/"
                                 "videograin")

    # FLATTEN, PnP and the ControlNet are mapped; what of them does not map is listed at the top and logged
    assert spec.edit.temporal_aids.flow.levels == (0,) and spec.edit.temporal_aids.pnp.steps == 5
    assert written["edit"]["temporal_aids"] == {"flow": {"levels": [0]}, "pnp": {"steps": 5}}
    # ./ckpt/control_v11p_sd15_openpose is absent: the hub model the official ckpt/download.sh clones
    assert spec.control == ControlSpec(model="lllyasviel/control_v11p_sd15_openpose", condition="pose", scale=1.0)
    items = not_applied(out)
    assert len(items) == 3 and items == list(result.unsupported)
    old_qk, pnp, hand = items
    assert old_qk.startswith("editing_config.old_qk: 1") and "edit.temporal_aids.flow" in old_qk
    assert pnp.startswith("editing_config.use_pnp: true, inject_step: 5") and "choice of q/k layers" in pnp
    assert hand.startswith("control_config.hand: true")
    assert not any("freeu" in line.lower() or "flatten_res:" in line for line in items)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for item in items:
        assert any(item in message for message in logged)
    assert not any("word for word" in m for m in logged)  # every local prompt is in the global one
    assert any("clip_length" in line for line in header(out))  # noted as ignored, not dropped silently


def test_part_level_and_non_square_frames(repo, tmp_path, caplog):
    official = make_repo(repo, PART, size=(48, 32))
    (repo / "ckpt" / "stable-diffusion-v1-5").mkdir(parents=True)  # a local model folder is kept as a path
    out = tmp_path / "blue_shirt.yaml"
    with caplog.at_level(logging.WARNING, logger="videograin"):
        spec = convert_config(official, out, root=repo).spec
    check_against_official(spec, yaml.safe_load(PART), repo)
    assert spec.video.size == (512, 512)  # official default image_size
    assert spec.model == str((repo / "ckpt" / "stable-diffusion-v1-5").resolve())
    assert yaml.safe_load(out.read_text())["model"] == "VideoGrain/ckpt/stable-diffusion-v1-5"
    assert spec.edit.temporal_aids.flow.levels == (0, 1, 2)  # flatten_res [1, 2, 4]: 64, 32, 16 tokens a side
    assert spec.edit.temporal_aids.pnp.steps == 10
    items = not_applied(out)
    assert not any(i.startswith("editing_config.flatten_res") for i in items)
    assert any(i.startswith("editing_config.use_pnp: true, inject_step: 10") for i in items)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "48x32" in logged and "centre-crops" in logged


def test_class_level_other_edit_by_index(repo, tmp_path, caplog):
    official = make_repo(repo, CLASS)
    out = tmp_path / "wolf_bear.yaml"
    with caplog.at_level(logging.WARNING, logger="videograin"):
        spec = convert_config(official, out, root=repo, prompt_index=3).spec
    check_against_official(spec, yaml.safe_load(CLASS), repo, index=3)
    assert spec.prompt == "A bear in the autum  forest" and spec.regions[0].prompt == "A bear"
    assert spec.video.start == 3  # from start_sample_frame
    items = not_applied(out)
    assert len(items) == 1 and items[0].startswith("editing_config.old_qk: 1")  # use_pnp is false
    assert spec.edit.temporal_aids.pnp is None
    assert spec.control == ControlSpec(model="lllyasviel/sd-controlnet-depth", condition="depth", scale=0.7)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "depth_zoe (ZoeDepth)" in logged  # mapped to videograin's depth annotator, with a warning
    assert "4 edits" in logged and "'A cute pig in the autum forest'" in logged and "--index" in logged
    assert "modulated_percentage" in "\n".join(header(out))


def test_cli_writes_a_loadable_file(repo, tmp_path, monkeypatch, capsys):
    official = make_repo(repo, INSTANCE)
    out = tmp_path / "a" / "b.yaml"
    assert main(["convert-config", str(official), "--out", str(out), "--root", str(repo)]) == 0
    check_against_official(load_spec(out), yaml.safe_load(INSTANCE), repo)
    # again without --overwrite: refused, file kept; with it: replaced
    before = out.read_text()
    out.write_text(before + "# mine\n")
    assert main(["convert-config", str(official), "--out", str(out), "--root", str(repo)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text().endswith("# mine\n")
    assert main(["convert-config", str(official), "--out", str(out), "--root", str(repo), "--overwrite"]) == 0
    assert out.read_text() == before
    # defaults: --root is the current folder (as the official test.py runs), --out <stem>.videograin.yaml there
    monkeypatch.chdir(repo)
    assert main(["convert-config", "config/x.yaml"]) == 0
    check_against_official(load_spec(repo / "x.videograin.yaml"), yaml.safe_load(INSTANCE), repo)
    written = yaml.safe_load((repo / "x.videograin.yaml").read_text())
    assert written["video"]["path"] == "data/run_two_man/run_two_man_fr2"


@pytest.mark.parametrize(
    "change, field",
    [
        (("'ground','full_trees']", "'ground']"), "editing_config.editing_prompts[0]"),  # 4 local prompts, 3 masks
        (("'left_man','right_man'", "'left_man','left_man'"), "dataset_config.layout_mask_order[1]"),
        (("n_sample_frame: 16", "n_sample_frame: 30"), "dataset_config.n_sample_frame"),  # needs 59 frames
        (("sampling_rate: 2", "sampling_rate: two"), "dataset_config.sampling_rate"),
        (("num_inference_steps: 50\n", "\n"), "editing_config.num_inference_steps"),
        (("['Spiderman and Polar Bear", "['  ','Spiderman and Polar Bear"), "editing_config.editing_prompts[0][0]"),
    ],
)
def test_unmappable_configs_name_the_official_key(repo, tmp_path, change, field):
    official = make_repo(repo, INSTANCE)
    official.write_text(INSTANCE.replace(*change))
    assert official.read_text() != INSTANCE
    out = tmp_path / "new" / "c.yaml"
    with pytest.raises(SpecError) as err:
        convert_config(official, out, root=repo)
    assert err.value.field == field
    assert not (tmp_path / "new").exists()  # nothing written, not even the folder


def test_layouts_without_local_prompt_are_kept_unedited(repo, tmp_path, caplog):
    # as in config/part_level/modification/man_text_message/black_suit.yaml: ['suit','suit_bg'] with
    # ['A man in black suit','black suit']; the official code gives the extra layout no text, like ''
    text = INSTANCE.replace("'grass meadow',''", "'grass meadow'").replace("'full_trees']", "'full_trees','sky']")
    official = make_repo(repo, text)
    with caplog.at_level(logging.WARNING, logger="videograin"):
        spec = convert_config(official, tmp_path / "c.yaml", root=repo).spec
    assert [r.name for r in spec.regions] == ["left_man", "right_man", "ground", "full_trees", "sky"]
    assert [r.prompt for r in spec.regions] == ["Spiderman", "Polar Bear", "grass meadow", "", ""]
    assert any("['full_trees', 'sky'] get ''" in r.getMessage() for r in caplog.records)


def test_no_local_prompt_at_all_warns_that_the_edit_would_keep_everything(repo, tmp_path, caplog):
    # config/class_level/tennis/1cls_man2iron_man.yaml: editing_prompts [['An Iron Man']], one layout
    text = (INSTANCE.replace("'left_man','right_man','ground','full_trees'", "'man'")
            .replace("'Spiderman and Polar Bear on grass meadow before cherry trees','Spiderman','Polar Bear',"
                     "'grass meadow',''", "'An Iron Man'"))
    official = make_repo(repo, text)
    with caplog.at_level(logging.WARNING, logger="videograin"):
        spec = convert_config(official, tmp_path / "c.yaml", root=repo).spec
    assert [(r.name, r.prompt) for r in spec.regions] == [("man", "")]
    assert any("would change nothing" in r.getMessage() and "edit.blend: false" in r.getMessage()
               for r in caplog.records)


def test_missing_data_and_masks(repo, tmp_path, capsys):
    official = make_repo(repo, INSTANCE)
    out = tmp_path / "c.yaml"
    # run from elsewhere: the official relative paths do not resolve, the fix names --root
    assert main(["convert-config", str(official), "--out", str(out), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset_config.path:") and "--root" in err and not out.exists()
    # a mask the official code would read (frame index 30 of right_man) is missing
    (repo / "data/run_two_man/layout_masks_fr2/right_man/00030.png").unlink()
    with pytest.raises(SpecError) as e:
        convert_config(official, out, root=repo)
    assert e.value.field == "dataset_config.layout_mask_order[1]" and "00030.png" in e.value.problem
    # index out of range
    with pytest.raises(SpecError) as e:
        convert_config(official, out, root=repo, prompt_index=1)
    assert e.value.field == "--index"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VideoGrain"]


def test_local_prompt_not_in_global_prompt_is_kept_with_a_warning(repo, tmp_path, caplog):
    # config/demo_config.yaml: local prompt 'man' is part of the word 'Spiderman' only
    text = INSTANCE.replace("'Spiderman and Polar Bear on grass meadow before cherry trees','Spiderman'",
                            "'Spiderman and Polar Bear on grass meadow before cherry trees','man'")
    official = make_repo(repo, text)
    with caplog.at_level(logging.WARNING, logger="videograin"):
        spec = convert_config(official, tmp_path / "c.yaml", root=repo).spec
    assert spec.regions[0].prompt == "man"
    messages = [r.getMessage() for r in caplog.records if "word for word" in r.getMessage()]
    assert len(messages) == 1
    assert "editing_prompts[0][1]" in messages[0] and "'man'" in messages[0] and "videograin edit" in messages[0]
    assert "fix:" in messages[0] and "closest words there: 'Spiderman'" in messages[0]


def test_freeu_blending_and_unknown_keys_are_listed(repo, tmp_path):
    text = (INSTANCE.replace("use_freeu: false", "use_freeu: true")
            .replace("blending_percentage: 0", "blending_percentage: 0.25\n    my_option: 3"))
    official = make_repo(repo, text)
    items = not_applied(convert_config(official, tmp_path / "c.yaml", root=repo).path)
    assert any(i.startswith("editing_config.use_freeu: true") for i in items)
    assert any(i.startswith("editing_config.blending_percentage: 0.25") for i in items)
    assert any(i.startswith("editing_config.my_option: 3") and "unknown" in i for i in items)


def test_converted_instance_config_runs_edit(repo, tmp_path, tiny_model_dir, capsys):
    from diffusers import UNet2DConditionModel

    from videograin.testing import tiny_controlnet

    # test: fewer frames; canny conditions (the pose annotator needs weights) from a tiny local ControlNet
    text = (INSTANCE.replace("n_sample_frame: 16", "n_sample_frame: 4")
            .replace('control_type: "dwpose"', 'control_type: "canny"\n    low_threshold: 100\n    high_threshold: 200'))
    official = make_repo(repo, text)
    controlnet = repo / "ckpt" / "control_v11p_sd15_openpose"
    tiny_controlnet(UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")).save_pretrained(controlnet)
    config = tmp_path / "spider_polar.yaml"
    assert main(["convert-config", str(official), "--out", str(config), "--root", str(repo)]) == 0
    written = yaml.safe_load(config.read_text())
    assert written["control"] == {"model": "VideoGrain/ckpt/control_v11p_sd15_openpose", "condition": "canny",
                                  "scale": 1.0}
    assert not_applied(config)[-1].startswith("editing_config.use_pnp")  # canny with the thresholds videograin uses
    out = tmp_path / "edit"
    code = main(["edit", str(config), "--model", str(tiny_model_dir), "--steps", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "edited.mp4").stat().st_size > 0
    run = json.loads((out / "run.json").read_text())
    assert [r["name"] for r in run["config"]["regions"]] == ["left_man", "right_man", "ground", "full_trees"]
    assert run["config"]["video"]["frames"] == 4 and run["config"]["video"]["stride"] == 2
    assert run["config"]["edit"]["temporal_aids"]["pnp"]["steps"] == 5


# (control_config, editing_config) pairs of real official configs, put into INSTANCE (its own: dwpose, hand,
# flatten_res [1], pnp 5): ControlNet path -> hub id, control type -> condition, NOT APPLIED lines expected
REAL = {
    # config/class_level/car/posche.yaml
    "posche": (('control_type: "depth_zoe"\n    pretrained_controlnet_path: "./ckpt/sd-controlnet-depth"\n'
               "    controlnet_conditioning_scale: 1.0"),
               "inject_step: 10\n    old_qk: 1\n    flatten_res: [1]\n    use_pnp: true\n    use_freeu: false",
               "lllyasviel/sd-controlnet-depth", "depth", ["old_qk", "use_pnp"]),
    # config/instance_level/2_cars/left_firetruck_right_bus.yaml
    "firetruck": (('control_type: "depth_zoe"\n    pretrained_controlnet_path: ./ckpt/control_v11f1p_sd15_depth\n'
                  "    controlnet_conditioning_scale: 0.7"),
                  "inject_step: 30\n    old_qk: 1\n    flatten_res: [1,2,4]\n    use_pnp: true\n    use_freeu: true",
                  "lllyasviel/control_v11f1p_sd15_depth", "depth", ["old_qk", "use_pnp", "use_freeu"]),
    # config/instance_level/2_cats/4cls_panda_vs_poddle.yaml
    "panda": (('control_type: "depth"\n    pretrained_controlnet_path: "./ckpt/sd-controlnet-depth"\n'
              "    controlnet_conditioning_scale: 0.53"),
              "inject_step: 0\n    old_qk: 1\n    flatten_res: [1,2,4]\n    use_pnp: false\n    use_freeu: false",
              "lllyasviel/sd-controlnet-depth", "depth", ["old_qk"]),
    # config/instance_level/badminton/2cls_wonder_woman_spiderman.yaml
    "badminton": (('control_type: "dwpose"\n    pretrained_controlnet_path: "./ckpt/control_v11p_sd15_openpose"\n'
                  "    controlnet_conditioning_scale: 1.0\n    hand: True\n    face: True"),
                  "inject_step: 12\n    old_qk: 1\n    flatten_res: [1,2]\n    use_pnp: true\n    use_freeu: false",
                  "lllyasviel/control_v11p_sd15_openpose", "pose", ["old_qk", "use_pnp", "hand/face"]),
    # config/class_level/tennis/1cls_man2iron_man.yaml
    "tennis": (("control_type: \"openpose\"\n    pretrained_controlnet_path: ./ckpt/sd-controlnet-openpose\n"
               "    controlnet_conditioning_scale: 1.0\n    hand: false\n    face: false"),
               "inject_step: 0\n    old_qk: 1\n    flatten_res: [1]\n    use_pnp: false\n    use_freeu: false",
               "lllyasviel/sd-controlnet-openpose", "pose", ["old_qk"]),
    # config/instance_level/soap-box/soap-box.yaml (hand/face under a depth type: not read)
    "soap-box": (('control_type: "depth_zoe"\n    pretrained_controlnet_path: "./ckpt/control_v11f1p_sd15_depth"\n'
                 "    controlnet_conditioning_scale: 1.0\n    hand: False\n    face: False"),
                 "inject_step: 5\n    old_qk: 1\n    flatten_res: [1]\n    use_pnp: true\n    use_freeu: false",
                 "lllyasviel/control_v11f1p_sd15_depth", "depth", ["old_qk", "use_pnp"]),
    # config/instance_level/soely_edit/only_right.yaml (use_pnp with inject_step 0 injects on no step)
    "only_right": (('control_type: "dwpose"\n    pretrained_controlnet_path:  "./ckpt/control_v11p_sd15_openpose"\n'
                   "    controlnet_conditioning_scale: 1.0\n    hand: True\n    face: False"),
                   "inject_step: 0\n    old_qk: 1\n    flatten_res: [1]\n    use_pnp: true\n    use_freeu: false",
                   "lllyasviel/control_v11p_sd15_openpose", "pose", ["old_qk", "hand"]),
}
OWN_CONTROL = ('control_type: "dwpose"\n    pretrained_controlnet_path: "./ckpt/control_v11p_sd15_openpose"\n'
               "    controlnet_conditioning_scale: 1.0\n    hand: True\n    face: False")
OWN_EDITING = "inject_step: 5\n    old_qk: 1\n    flatten_res: [1]\n    guidance_scale: 7.5\n    use_pnp: true\n" \
              "    use_freeu: false"


def with_aids(control: str, editing: str) -> str:
    assert OWN_CONTROL in INSTANCE and OWN_EDITING in INSTANCE
    return INSTANCE.replace(OWN_CONTROL, control).replace(OWN_EDITING, editing + "\n    guidance_scale: 7.5")


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_aids_and_control_blocks(repo, tmp_path, name):
    control, editing, model, condition, expected = REAL[name]
    text = with_aids(control, editing)
    official = make_repo(repo, text)
    result = convert_config(official, tmp_path / "c.yaml", root=repo)
    check_against_official(result.spec, yaml.safe_load(text), repo)
    assert result.spec.control.model == model and result.spec.control.condition == condition
    keys = [item.split(":")[0].removeprefix("editing_config.").removeprefix("control_config.")
            for item in result.unsupported]
    assert keys == expected
    if name == "only_right":
        assert result.spec.edit.temporal_aids.pnp is None
        assert "use_pnp true with inject_step 0" in "\n".join(header(result.path))


@pytest.mark.parametrize(
    "flatten, old_qk, levels, listed",
    [
        ("[1]", 0, (0,), False),  # old_qk: 0 is videograin's variant: nothing left out
        ("[1,2,4,8]", 1, (0, 1, 2, 3), True),  # 8: the 8x8 mid block of SD 1.5
        ("[2,1,2]", 1, (0, 1), True),  # repeats collapse
        ("[3,16]", 1, None, False),  # no SD 1.5 layer has those grids: no effect officially
        ("[]", 1, None, False),
    ],
)
def test_flatten_res_levels(repo, tmp_path, flatten, old_qk, levels, listed):
    text = with_aids(OWN_CONTROL, f"inject_step: 0\n    old_qk: {old_qk}\n    flatten_res: {flatten}\n"
                                  "    use_pnp: false\n    use_freeu: false")
    text = text.replace("image_size: 32", "image_size: 512")  # factors act on the 64x64 latent grid
    official = make_repo(repo, text)
    result = convert_config(official, tmp_path / "c.yaml", root=repo)
    flow = result.spec.edit.temporal_aids.flow
    assert (flow.levels if flow else None) == levels
    assert any(i.startswith("editing_config.old_qk") for i in result.unsupported) is listed
    if flatten == "[3,16]":
        assert "flatten_res factor 16 (a 4x4 token grid" in "\n".join(header(result.path))


def test_flatten_res_must_be_factors(repo, tmp_path):
    official = make_repo(repo, INSTANCE.replace("flatten_res: [1]", "flatten_res: 1"))
    with pytest.raises(SpecError) as err:
        convert_config(official, tmp_path / "c.yaml", root=repo)
    assert err.value.field == "editing_config.flatten_res"


def test_control_local_model_and_unmapped_types(repo, tmp_path, caplog):
    # a ControlNet folder under the official root is used as it is, relative to the new file
    official = make_repo(repo, INSTANCE)
    (repo / "ckpt" / "control_v11p_sd15_openpose").mkdir(parents=True)
    out = tmp_path / "c.yaml"
    spec = convert_config(official, out, root=repo).spec
    assert spec.control.model == str((repo / "ckpt" / "control_v11p_sd15_openpose").resolve())
    assert yaml.safe_load(out.read_text())["control"]["model"] == "VideoGrain/ckpt/control_v11p_sd15_openpose"

    # canny with other thresholds than videograin's: mapped, the thresholds listed
    canny = ('control_type: "canny"\n    pretrained_controlnet_path: "./ckpt/control_v11p_sd15_openpose"\n'
             "    controlnet_conditioning_scale: 0.5\n    low_threshold: 50\n    high_threshold: 100")
    official.write_text(INSTANCE.replace(OWN_CONTROL, canny))
    result = convert_config(official, out, root=repo, overwrite=True)
    assert result.spec.control.condition == "canny" and result.spec.control.scale == 0.5
    assert result.unsupported[-1].startswith("control_config.low_threshold/high_threshold: [50, 100]")

    # an annotator videograin lacks (hed, seg, mlsd, ...), or a ControlNet that is neither here nor known:
    # no control section, the whole control_config listed
    for control in (OWN_CONTROL.replace('"dwpose"', '"hed"'),
                    OWN_CONTROL.replace("./ckpt/control_v11p_sd15_openpose", "./ckpt/my_controlnet")):
        official.write_text(INSTANCE.replace(OWN_CONTROL, control))
        result = convert_config(official, out, root=repo, overwrite=True)
        assert result.spec.control is None and "control" not in yaml.safe_load(out.read_text())
        assert result.unsupported[-1].startswith("control_config: {control_type:")
        assert "hed" in result.unsupported[-1] or "my_controlnet" in result.unsupported[-1]


def test_control_images_of_an_official_run_are_preferred(repo, tmp_path):
    # test.py writes the conditions it computed to <logdir>/control/{i}.jpg (and control.mp4); PART samples
    # frames 0..15 with sampling_rate 1, so videograin's folder reader picks exactly those
    official = make_repo(repo, PART.replace("n_sample_frame: 16", "n_sample_frame: 4"))
    saved = repo / yaml.safe_load(PART)["logdir"] / "control"
    saved.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(saved / f"{i}.jpg")
    (saved / "control.mp4").write_bytes(b"")
    out = tmp_path / "c.yaml"
    result = convert_config(official, out, root=repo)
    assert result.spec.control.condition == saved.resolve()
    assert yaml.safe_load(out.read_text())["control"]["condition"] == (
        "VideoGrain/result/part_level/part_level_modification/man_text_message/blue_shirt/control")
    assert not any(i.startswith("control_config.hand") for i in result.unsupported)  # drawn in those images

    # INSTANCE samples every 2nd frame: the reader would re-select out of the saved images, so the annotator
    instance = make_repo(tmp_path / "other", INSTANCE.replace("n_sample_frame: 16", "n_sample_frame: 4"))
    saved = tmp_path / "other" / yaml.safe_load(INSTANCE)["logdir"] / "control"
    saved.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(saved / f"{i}.jpg")
    result = convert_config(instance, out, root=tmp_path / "other", overwrite=True)
    assert result.spec.control.condition == "pose"
    assert "not used: videograin would select" in "\n".join(header(out))


def test_a_folder_of_official_configs_becomes_a_job_list(repo, tmp_path, caplog):
    from videograin.batch import load_jobs

    make_repo(repo, INSTANCE)
    (repo / "config" / "notes.yaml").write_text("just: notes\n")  # not an official config: named, not converted
    out = tmp_path / "converted"
    with caplog.at_level(logging.WARNING, logger="videograin"):
        assert main(["convert-config", str(repo / "config"), "--out", str(out), "--root", str(repo)]) == 0
    assert any("not converted" in r.message and "notes.yaml" in r.message for r in caplog.records)
    jobs = load_jobs([out / "jobs.yaml"])
    assert [job.name for job in jobs] == ["x"]
    spec = jobs[0].spec(tmp_path / "batch")
    assert [r.name for r in spec.regions] == ["left_man", "right_man", "ground", "full_trees"]
    assert spec.output == (tmp_path / "batch" / "x").resolve()
