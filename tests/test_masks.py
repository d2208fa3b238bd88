"""Masks from a click or a box (videograin.masks, `videograin masks`, `regions[].masks: {box: ...}`), on
synthetic clips with known motion and exact masks."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import yaml

from conftest import EXAMPLE, copy_example
from videograin.config.spec import MaskPrompt
from videograin.masks import make_masks


def _texture(h: int, w: int, rng, low, high, cell: int = 6) -> np.ndarray:
    small = rng.uniform(low, high, size=(h // cell + 2, w // cell + 2, 3)).astype(np.float32)
    return cv2.resize(small, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell : cell + h, cell : cell + w]


def _clip(path, frames: int = 16, size=(128, 160), seed: int = 0):
    """uint8 (F, H, W, 3) and exact masks (F, H, W): a textured ellipse at ``path(f) = (cx, cy, r)``
    over a textured background that scrolls down 1 px per frame; the two textures' colours overlap
    (greens and blues against a redder mix), so colour alone does not separate them."""
    h, w = size
    rng = np.random.default_rng(seed)
    background = _texture(h + frames + 20, w, rng, (30, 60, 30), (170, 200, 170))
    inside = cv2.resize(_texture(80, 80, rng, (90, 60, 30), (230, 200, 170)), (w, h))
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    video, masks = [], []
    for f in range(frames):
        cx, cy, r = path(f)
        mask = ((xs - cx) / (1.3 * r)) ** 2 + ((ys - cy) / r) ** 2 <= 1
        frame = background[10 + f : 10 + f + h].copy()
        frame[mask] = inside[mask]
        video.append(np.clip(frame, 0, 255).astype(np.uint8))
        masks.append(mask)
    return np.stack(video), np.stack(masks)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _box(mask: np.ndarray, margin: int = 2) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()) - margin, int(ys.min()) - margin, int(xs.max()) + 1 + margin, int(ys.max()) + 1 + margin


def _moving(f):  # right and down, growing 2% a frame
    return 40 + 3 * f, 50 + 1.5 * f, 18 * (1 + 0.02 * f)


def _stop_and_turn(f):  # right for 8 frames, still for 3, then down
    return (40 + 4 * min(f, 7), 45 + 4 * max(0, f - 10), 18)


def test_the_flow_engine_follows_a_moving_growing_shape_from_a_box_or_a_mask():
    frames, truth = _clip(_moving)
    from_box, record = make_masks(frames, [MaskPrompt(box=_box(truth[0]))], "flow", progress=False)
    ious = [_iou(m, t) for m, t in zip(from_box[0], truth)]
    assert np.mean(ious) >= 0.85 and record["engine"] == "flow", ious
    from_mask, _ = make_masks(frames, [MaskPrompt(mask=truth[0])], "flow", progress=False)
    assert np.mean([_iou(m, t) for m, t in zip(from_mask[0], truth)]) >= 0.9
    still = np.repeat(from_box[0, :1], len(frames), 0)  # a tracker that does not track scores far lower
    assert np.mean([_iou(m, t) for m, t in zip(still, truth)]) < 0.5


def test_no_drift_when_the_shape_stops_and_turns_and_prompts_on_a_later_frame_go_backward():
    frames, truth = _clip(_stop_and_turn, seed=1)
    masks, _ = make_masks(frames, [MaskPrompt(points=((40, 45),))], "flow", progress=False)
    assert _iou(masks[0, -1], truth[-1]) >= 0.8
    assert min(_iou(m, t) for m, t in zip(masks[0], truth)) >= 0.8
    later, _ = make_masks(frames, [MaskPrompt(box=_box(truth[9]), frame=9)], "flow", progress=False)
    assert min(_iou(m, t) for m, t in zip(later[0], truth)) >= 0.8  # frames 0-8 reached backward


def test_masks_command_writes_folders_a_config_reads(tmp_path, capsys):
    from videograin import mask_files
    from videograin.inputs import load_inputs
    from videograin.cli import main
    from videograin.config.parse import spec_from_dict

    out = tmp_path / "masks"
    assert main(["masks", str(EXAMPLE / "video.mp4"), "--frames", "4", "--engine", "flow", "--out", str(out),
                 "--region", "left:box=10,60,70,120", "--region", "right:points=150,90,-100,30"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["left", "masks.json", "masks.png", "masks_overlay.mp4", "right"]
    record = json.loads((out / "masks.json").read_text())
    assert record["engine"] == "flow" and record["prompts"][1]["negative"] == [[100, 30]]
    truth = {name: mask_files.read_mask_folder(EXAMPLE / "masks" / name, 0, 4, 1, 16, "masks")
             for name in ("left_ball", "right_ball")}
    spec = spec_from_dict({"prompt": "a red apple and an orange ball on the grass", "video": {"path": str(EXAMPLE / "video.mp4"), "frames": 4},
                           "regions": [{"name": "left", "masks": str(out / "left"), "prompt": "red apple"},
                                       {"name": "right", "masks": str(out / "right"), "prompt": "orange ball"}]}, tmp_path)
    masks = load_inputs(spec, 16).masks.numpy()
    assert _iou(masks[0], truth["left_ball"]) > 0.85 and _iou(masks[1], truth["right_ball"]) > 0.85
    assert main(["masks", str(EXAMPLE / "video.mp4"), "--frames", "4", "--out", str(out), "--overwrite",
                 "--region", "left:box=10,60,70,120"]) == 0  # a previous masks folder may be replaced


@pytest.mark.parametrize(("region", "field"), [
    ("left:box=10,60,700,120", "--region left.box"),
    ("left:points=150,9000", "--region left.points"),
    ("left:box=10,60,70,120@9", "--region left.frame"),
    ("left:circle=3", "--region"),
])
def test_masks_command_bad_prompts_are_one_line(tmp_path, capsys, region, field):
    from videograin.cli import main

    assert main(["masks", str(EXAMPLE / "video.mp4"), "--frames", "4", "--out", str(tmp_path / "m"),
                 "--region", region]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}"), err
    assert not (tmp_path / "m").exists()


def _prompted_config(tmp_path, tiny_model_dir, **top):
    config = copy_example(tmp_path / "two_balls", tiny_model_dir, frames=4, output=str(tmp_path / "out"), **top)
    data = yaml.safe_load(config.read_text())
    data["regions"][0]["masks"] = {"box": [10, 60, 70, 120], "frame": 0}
    data["regions"][1]["masks"] = {"points": [[150, 90]], "negative": [[100, 30]], "frame": 1}
    config.write_text(yaml.safe_dump(data))
    return config


def test_a_config_with_a_box_and_clicks_edits_end_to_end_and_reuses_its_masks(tmp_path, tiny_model_dir, caplog):
    import logging

    from videograin import mask_files, media
    from videograin.cli import main

    config = _prompted_config(tmp_path, tiny_model_dir, masks_engine="flow")
    assert main(["edit", str(config), "--steps", "2"]) == 0
    out = tmp_path / "out"
    run = json.loads((out / "run.json").read_text())
    assert run["masks"]["engine"] == "flow" and run["config"]["regions"][1]["masks"]["frame"] == 1
    truth = mask_files.read_mask_folder(EXAMPLE / "masks" / "left_ball", 0, 4, 1, 16, "masks")
    made = mask_files.read_mask_folder(out / "masks" / "left_ball", 0, 4, 1, 4, "masks")
    assert _iou(made, truth) > 0.85 and (out / "masks" / "masks_overlay.mp4").is_file()
    overlay, _ = media.read_video(out / "masks_overlay.mp4", 0, 4, 1)
    assert overlay.shape[0] == 4
    with caplog.at_level(logging.INFO, logger="videograin"):
        assert main(["edit", str(config), "--steps", "2", "--overwrite"]) == 0
        assert any("reused" in r.message for r in caplog.records)
        caplog.clear()
        assert main(["eval", "--edited", str(out), "--clip", str(tmp_path / "none"), "--pickscore",
                     str(tmp_path / "none")]) == 0  # its regions' masks: the output's masks/
        assert any("reused" in r.message for r in caplog.records)
    assert "psnr_inside_db" in json.loads((out / "metrics.json").read_text())["metrics"]


def _prompt_regions(case, engine: str) -> None:
    case.config["video"]["frames"] = 4
    case.config["masks_engine"] = engine
    case.config["regions"][0]["masks"] = {"box": [10, 60, 70, 120], "frame": 0}
    case.config["regions"][1]["masks"] = {"points": [[150, 90]], "frame": 1}


@pytest.mark.parametrize(("change", "field"), [
    ({"box": [10, 60, 700, 120]}, "regions[0].masks.box"),
    ({"points": [[150, 900]]}, "regions[0].masks.points"),
    ({"box": [10, 60, 70, 120], "frame": 9}, "regions[0].masks.frame"),
    ({"points": [[1, 2, 3]]}, "regions[0].masks.points"),
    ({"frame": 0}, "regions[0].masks"),
])
def test_bad_prompts_in_a_config_are_one_line_before_any_weights(case, change, field):
    _prompt_regions(case, "flow")
    case.config["regions"][0]["masks"] = change
    case.fail(field)


@pytest.mark.parametrize("engine", ["sam3", "sam2"])  # unknown; SAM 2 without its weights (offline)
def test_an_unknown_engine_and_missing_sam2_weights_are_one_line(case, engine):
    _prompt_regions(case, engine)
    case.fail("masks_engine")


@pytest.mark.skipif(not os.environ.get("VIDEOGRAIN_SAM2_MODEL"),
                    reason="needs SAM 2 weights: set VIDEOGRAIN_SAM2_MODEL to a local folder (e.g. a download of "
                           "facebook/sam2.1-hiera-tiny)")
def test_sam2_with_real_weights_follows_the_shape():
    frames, truth = _clip(_moving)
    masks, record = make_masks(frames, [MaskPrompt(box=_box(truth[8]), frame=8)], "sam2",
                               model=os.environ["VIDEOGRAIN_SAM2_MODEL"], progress=False)
    assert record["engine"] == "sam2" and np.mean([_iou(m, t) for m, t in zip(masks[0], truth)]) >= 0.85


# ------------------------------------------------------------------------------------------- SAM 2 engine
# A tiny random-weight Sam2VideoModel built in code (64x64 input): its masks mean nothing, so these
# tests check the wiring. transformers' SAM 2 processors need torchvision (not installed), which is
# why sam2_masks does their steps with torch; the prompt test checks those against the processor's
# own code, which for prompts needs only its target size.

def _tiny_sam2():
    import torch
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

    size, hidden = 64, 128  # hidden: a multiple of the memory's 64 channels, as in the real models
    backbone = Sam2HieraDetConfig(hidden_size=8, image_size=[size, size], blocks_per_stage=[1, 1, 2, 1],
                                  embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                                  window_size_per_stage=[4, 2, 2, 1], global_attention_blocks=[3],
                                  window_positional_embedding_background_size=[2, 2])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8], fpn_hidden_size=hidden,
                              backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2])
    config = Sam2VideoConfig(
        vision_config=vision, image_size=size,
        prompt_encoder_config={"hidden_size": hidden, "image_size": size, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": hidden, "mlp_dim": 64, "num_attention_heads": 2,
                             "iou_head_hidden_dim": 32},
        memory_attention_hidden_size=hidden, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[size // 16] * 2, memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=hidden, memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64)
    torch.manual_seed(0)
    return Sam2VideoModel(config).eval()


@pytest.fixture(scope="module")
def tiny_sam2():
    return _tiny_sam2()


class _Count:
    n = 0

    def update(self):
        self.n += 1


_SAM2_FRAMES = np.random.default_rng(0).integers(0, 256, (5, 48, 80, 3), dtype=np.uint8)  # not square: h, w stay apart


def _rect(x0, y0, x1, y1, shape=(48, 80)):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_sam2_gives_each_region_its_masks_on_every_frame_forward_and_backward(tiny_sam2):
    from videograin.masks import sam2_masks

    left, right = _rect(5, 6, 40, 30), _rect(45, 10, 75, 44)
    count = _Count()
    masks = sam2_masks(_SAM2_FRAMES, [MaskPrompt(mask=left, frame=2), MaskPrompt(mask=right, frame=2)],
                       tiny_sam2, progress=count)
    assert masks.shape == (2, 5, 48, 80) and masks.dtype == bool
    assert _iou(masks[0, 2], left) > 0.95 and _iou(masks[1, 2], right) > 0.95  # a mask prompt: its frame's mask
    assert _iou(masks[0, 2], right) == 0  # of its own region
    assert count.n == 3 + 3  # frames 2, 3, 4 forward, then 2, 1, 0 backward
    assert masks.any(axis=(2, 3)).all()  # every frame of both regions written by the model


def test_sam2_prompts_reach_the_session_as_transformers_processor_puts_them(tiny_sam2, monkeypatch):
    import torch
    import transformers
    from transformers import Sam2VideoInferenceSession, Sam2VideoProcessor

    from videograin.masks import sam2_masks

    sessions = []

    class Recorded(Sam2VideoInferenceSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sessions.append(self)

    monkeypatch.setattr(transformers, "Sam2VideoInferenceSession", Recorded)
    mask = _rect(45, 10, 75, 44)
    prompts = [MaskPrompt(box=(5, 6, 40, 30), points=((20, 15),), negative=((60, 40),), frame=2),
               MaskPrompt(points=((70, 12), (50, 30)), frame=1), MaskPrompt(mask=mask, frame=3)]
    frames = _SAM2_FRAMES.copy()
    frames[0] = (10, 128, 250)
    count = _Count()
    sam2_masks(frames, prompts, tiny_sam2, progress=count)
    assert count.n == 4 + 4  # forward from frame 1 (1..4), backward from frame 3 (3..0)
    made = sessions[0]
    assert made.num_frames == 5 and made.get_frame(4).shape == (3, 64, 64)  # the model's input size
    imagenet_mean, imagenet_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    colour = (torch.tensor([10, 128, 250]) / 255 - imagenet_mean) / imagenet_std
    assert torch.allclose(made.get_frame(0), colour.view(3, 1, 1).expand(3, 64, 64), atol=1e-5)  # RGB, ImageNet
    processor = object.__new__(Sam2VideoProcessor)  # its image processor needs torchvision; prompts use only:
    processor.point_pad_value, processor.target_size = -10, tiny_sam2.config.image_size
    want = Sam2VideoInferenceSession(video_height=48, video_width=80, dtype=torch.float32)
    processor.add_inputs_to_inference_session(want, frame_idx=2, obj_ids=0, input_boxes=[[[5, 6, 40, 30]]],
                                              input_points=[[[[20, 15], [60, 40]]]], input_labels=[[[1, 0]]])
    processor.add_inputs_to_inference_session(want, frame_idx=1, obj_ids=1, input_points=[[[[70, 12], [50, 30]]]],
                                              input_labels=[[[1, 1]]])
    processor.add_inputs_to_inference_session(want, frame_idx=3, obj_ids=2, input_masks=mask)
    for region in range(3):
        obj, ref = made.obj_id_to_idx(region), want.obj_id_to_idx(region)
        got, expected = made.point_inputs_per_obj[obj], want.point_inputs_per_obj[ref]
        assert got.keys() == expected.keys()
        for frame in expected:
            assert torch.allclose(got[frame]["point_coords"], expected[frame]["point_coords"])
            assert got[frame]["point_labels"].tolist() == expected[frame]["point_labels"].tolist()
        got, expected = made.mask_inputs_per_obj[obj], want.mask_inputs_per_obj[ref]
        assert got.keys() == expected.keys() and all(torch.equal(got[f], expected[f]) for f in expected)
    assert made.point_inputs_per_obj[made.obj_id_to_idx(0)][2]["point_labels"].tolist() == [[[2, 3, 1, 0]]]


def test_sam2_regions_are_separate_objects_and_a_run_repeats(tiny_sam2):
    from videograin.masks import sam2_masks

    left, right = _rect(5, 6, 40, 30), _rect(45, 10, 75, 44)
    prompts = [MaskPrompt(mask=left, frame=2), MaskPrompt(mask=right, frame=2)]
    both = sam2_masks(_SAM2_FRAMES, prompts, tiny_sam2)
    assert np.array_equal(both, sam2_masks(_SAM2_FRAMES, prompts, tiny_sam2))  # nothing left over between runs
    moved = sam2_masks(_SAM2_FRAMES, [prompts[0], MaskPrompt(mask=_rect(10, 20, 70, 40), frame=2)], tiny_sam2)
    assert np.array_equal(moved[0], both[0])  # region 0 does not see region 1's prompt
    assert (moved[1, 2] != both[1, 2]).any() and (moved[1, 3:] != both[1, 3:]).any()  # region 1 does, tracked too
    assert np.array_equal(sam2_masks(_SAM2_FRAMES, prompts[:1], tiny_sam2)[0], both[0])  # nor whether region 1 exists
    later_first = [MaskPrompt(mask=left, frame=3), MaskPrompt(mask=right, frame=1)]
    later_first = sam2_masks(_SAM2_FRAMES, later_first, tiny_sam2)  # objects enter the session by frame: region 1 first
    assert _iou(later_first[0, 3], left) > 0.95 and _iou(later_first[1, 1], right) > 0.95


def test_make_masks_loads_a_saved_sam2_folder(tiny_sam2, tmp_path, capsys):
    from videograin.masks import resolve_engine, sam2_masks

    folder = tmp_path / "sam2"
    tiny_sam2.save_pretrained(folder)
    prompts = [MaskPrompt(box=(5, 6, 40, 30), frame=1), MaskPrompt(points=((60, 20),), frame=3)]
    assert resolve_engine("auto", str(folder)) == "sam2"
    capsys.readouterr()
    masks, record = make_masks(_SAM2_FRAMES, prompts, "sam2", model=str(folder))
    assert record["engine"] == "sam2" and record["model"] == str(folder)
    assert np.array_equal(masks, sam2_masks(_SAM2_FRAMES, prompts, tiny_sam2))  # the saved weights, loaded
    assert "8/8" in capsys.readouterr().err  # the bar's total: forward 1..4, backward 3..0


@pytest.mark.parametrize("box,problem", [("10.5,1,20,20", "cannot read"), ("20,1,10,20", "empty or flipped"),
                                         ("1,1,20,20", None)])
def test_a_box_on_the_command_line_follows_the_configs_rule(box, problem):
    """--region box=... and a config's box: the same rule (values.box), whole pixels, ordered corners."""
    from videograin.config.parse import _mask_prompt
    from videograin.errors import SpecError
    from videograin.masks import parse_region

    corners = [float(v) if "." in v else int(v) for v in box.split(",")]
    if problem is None:
        assert parse_region(f"a:box={box}")[1].box == tuple(corners) == _mask_prompt({"box": corners}, "m", 1).box
        return
    with pytest.raises(SpecError, match=problem):
        parse_region(f"a:box={box}")
    with pytest.raises(SpecError, match="must be a box of 4 integers" if "." in box else problem):
        _mask_prompt({"box": corners}, "m", 1)
