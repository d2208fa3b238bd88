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
from videograin.masks import RegionPrompt, make_masks


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
    from_box, record = make_masks(frames, [RegionPrompt("shape", box=_box(truth[0]))], "flow", progress=False)
    ious = [_iou(m, t) for m, t in zip(from_box[0], truth)]
    assert np.mean(ious) >= 0.85 and record["engine"] == "flow", ious
    from_mask, _ = make_masks(frames, [RegionPrompt("shape", mask=truth[0])], "flow", progress=False)
    assert np.mean([_iou(m, t) for m, t in zip(from_mask[0], truth)]) >= 0.9
    still = np.repeat(from_box[0, :1], len(frames), 0)  # a tracker that does not track scores far lower
    assert np.mean([_iou(m, t) for m, t in zip(still, truth)]) < 0.5


def test_no_drift_when_the_shape_stops_and_turns_and_prompts_on_a_later_frame_go_backward():
    frames, truth = _clip(_stop_and_turn, seed=1)
    masks, _ = make_masks(frames, [RegionPrompt("shape", points=((40, 45),))], "flow", progress=False)
    assert _iou(masks[0, -1], truth[-1]) >= 0.8
    assert min(_iou(m, t) for m, t in zip(masks[0], truth)) >= 0.8
    later, _ = make_masks(frames, [RegionPrompt("shape", box=_box(truth[9]), frame=9)], "flow", progress=False)
    assert min(_iou(m, t) for m, t in zip(later[0], truth)) >= 0.8  # frames 0-8 reached backward


def test_masks_command_writes_folders_a_config_reads(tmp_path, capsys):
    from videograin import io
    from videograin.cli import main
    from videograin.config.parse import spec_from_dict

    out = tmp_path / "masks"
    assert main(["masks", str(EXAMPLE / "video.mp4"), "--frames", "4", "--engine", "flow", "--out", str(out),
                 "--region", "left:box=10,60,70,120", "--region", "right:points=150,90,-100,30"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["left", "masks.json", "masks.png", "masks_overlay.mp4", "right"]
    record = json.loads((out / "masks.json").read_text())
    assert record["engine"] == "flow" and record["prompts"][1]["negative"] == [[100, 30]]
    truth = {name: io.read_mask_folder(EXAMPLE / "masks" / name, 0, 4, 1, 16, "masks")
             for name in ("left_ball", "right_ball")}
    spec = spec_from_dict({"prompt": "a red apple and an orange ball on the grass", "video": {"path": str(EXAMPLE / "video.mp4"), "frames": 4},
                           "regions": [{"name": "left", "masks": str(out / "left"), "prompt": "red apple"},
                                       {"name": "right", "masks": str(out / "right"), "prompt": "orange ball"}]}, tmp_path)
    masks = io.load_inputs(spec, 16).masks.numpy()
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

    from videograin import io
    from videograin.cli import main

    config = _prompted_config(tmp_path, tiny_model_dir, masks_engine="flow")
    assert main(["edit", str(config), "--steps", "2"]) == 0
    out = tmp_path / "out"
    run = json.loads((out / "run.json").read_text())
    assert run["masks"]["engine"] == "flow" and run["config"]["regions"][1]["masks"]["frame"] == 1
    truth = io.read_mask_folder(EXAMPLE / "masks" / "left_ball", 0, 4, 1, 16, "masks")
    made = io.read_mask_folder(out / "masks" / "left_ball", 0, 4, 1, 4, "masks")
    assert _iou(made, truth) > 0.85 and (out / "masks" / "masks_overlay.mp4").is_file()
    overlay, _ = io.read_video(out / "masks_overlay.mp4", 0, 4, 1)
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
    masks, record = make_masks(frames, [RegionPrompt("shape", box=_box(truth[8]), frame=8)], "sam2",
                               model=os.environ["VIDEOGRAIN_SAM2_MODEL"], progress=False)
    assert record["engine"] == "sam2" and np.mean([_iou(m, t) for m, t in zip(masks[0], truth)]) >= 0.85
