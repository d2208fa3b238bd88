"""Mask-free layouts (`videograin segment`): K-means, the config loader, and segments of a toy-world video.

The IoU tests use the trained toy-world model (random weights have meaningless features). The toy
frames are 32x32; they are segmented at a 64x64 working size (`video.size`), where the coarsest decoder
self-attention level has 16x16 tokens. At the native 32x32 (8x8 tokens, a shape ~2.5 tokens wide) the
clusters are too coarse: object-vs-background IoU 0.58-0.70 on the scenes below, short of 0.7.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from videograin import mask_files, media
from videograin.inputs import load_inputs
from videograin.cli import main
from videograin.config.preflight import read_model
from videograin.segment import kmeans, label_masks, order_by_size, upsample_labels
from videograin.errors import SpecError
from videograin.config.parse import load_source_spec, load_spec

from toyworld import world
from videograin.toy import SD_MODEL as MODEL

FRAMES = 6
APPROACH = (world.Motion(dx=2.5, dy=3.0, scale=1.1), world.Motion(dx=-2.5, dy=-3.0, scale=0.9))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _matched_ious(segments: np.ndarray, targets: list[np.ndarray]) -> list[float]:
    """IoU of each target with its cluster, clusters matched one-to-one to targets for the best mean."""
    return max(
        ([_iou(segments[c], t) for c, t in zip(perm, targets)]
         for perm in itertools.permutations(range(len(segments)), len(targets))),
        key=np.mean,
    )


def _toy_config(folder: Path, scene: world.Scene, source_prompt: str, **extra) -> tuple[Path, np.ndarray]:
    """A 32x32 toy clip as PNG frames and a config reading it at 64x64; returns (config, true masks (S, F, H, W))."""
    clip, masks = world.video(scene, list(APPROACH), FRAMES)
    folder.mkdir(parents=True)
    media.write_frames(folder / "frames", clip)
    config = {"model": str(MODEL), "video": {"path": "frames", "frames": FRAMES, "size": [64, 64]},
              "source_prompt": source_prompt, **extra}
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder / "config.yaml", masks


# ------------------------------------------------------------------------------------------------ k-means


def test_kmeans_finds_separated_blobs_deterministically():
    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    truth = torch.arange(3).repeat_interleave(torch.tensor([50, 30, 20]))
    points = centres[truth] + 0.3 * torch.randn(100, 2, generator=generator)
    labels, centroids = kmeans(points, 3, seed=0)
    again, _ = kmeans(points, 3, seed=0)
    assert torch.equal(labels, again)
    assert centroids.shape == (3, 2) and labels.dtype == torch.int64
    for j in range(3):  # each true blob is exactly one cluster
        assert len(set(labels[truth == j].tolist())) == 1
    assert len(set(labels.tolist())) == 3
    ordered = order_by_size(labels, 3)
    assert torch.equal(torch.bincount(ordered), torch.tensor([50, 30, 20]))


def test_kmeans_edge_cases():
    same = torch.zeros(5, 3)
    labels, _ = kmeans(same, 2, seed=0)  # coincident points: no crash, valid ids
    assert labels.min() >= 0 and labels.max() <= 1
    with pytest.raises(ValueError):
        kmeans(same, 6)


def test_upsample_labels_and_masks():
    labels = torch.tensor([[[0, 1], [2, 1]]])
    up = upsample_labels(labels, (4, 6))
    assert up.shape == (1, 4, 6) and up.dtype == torch.int64
    assert up[0, :2, :3].eq(0).all() and up[0, 2:, :3].eq(2).all() and up[0, :, 3:].eq(1).all()
    masks = label_masks(up, 3)
    assert masks.shape == (3, 1, 4, 6) and (masks.sum(0) == 1).all()


# ------------------------------------------------------------------------------------------------ config


def test_config_loader_reads_only_what_segment_needs(tmp_path):
    (tmp_path / "frames").mkdir()
    base = {"video": {"path": "frames", "frames": 2}, "source_prompt": "a red circle"}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(base))
    spec = load_source_spec(tmp_path / "a.yaml")  # no prompt, no regions: fine
    assert spec.regions == () and spec.source_prompt == "a red circle" and spec.video.path == tmp_path / "frames"
    with_regions = {**base, "prompt": "x", "regions": [{"name": "r", "masks": "nowhere", "prompt": "y"}]}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(with_regions))
    assert load_source_spec(tmp_path / "b.yaml").regions == ()  # regions are not read
    for data, field in [({**base, "vidoe": 1}, "vidoe"), ({"source_prompt": "x"}, "video"),
                        ({**base, "video": {"path": "missing"}}, "video.path")]:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(SpecError) as err:
            load_source_spec(tmp_path / "c.yaml")
        assert err.value.field == field


def test_cli_rejects_bad_k_before_loading(tmp_path, capsys):
    config, _ = _toy_config(tmp_path / "clip", world.Scene((world.Shape("circle", "red", 7.0, 12.0, 5.0),)), "")
    for k in ("1", "0", "-3"):
        assert main(["segment", str(config), "--k", k, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --k: must be at least 2") and "\n" not in err
    assert main(["segment", str(config), "--k", "2", "--steps", "0", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: --steps")
    assert main(["segment", str(tmp_path / "none.yaml"), "--k", "2"]) == 2
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ end to end


def _two(kind_l: str, color_l: str, kind_r: str, color_r: str, background: str) -> world.Scene:
    return world.Scene((world.Shape(kind_l, color_l, 7.0, 12.0, 5.0), world.Shape(kind_r, color_r, 25.0, 19.0, 5.0)),
                       background)


@pytest.mark.parametrize(
    "scene, prompt, k",
    [
        (_two("circle", "yellow", "square", "green", "white"),
         "a yellow circle and a green square on a white background", 3),
        (_two("triangle", "green", "square", "purple", "black"),
         "a green triangle and a purple square on a black background", 2),
    ],
    ids=["two_objects_k3", "object_vs_background_k2"],
)
def test_segment_cli_separates_toy_objects(tmp_path, scene, prompt, k):
    config, true = _toy_config(tmp_path / "clip", scene, prompt, prompt="ignored",
                               regions=[{"name": "r", "masks": "not/read", "prompt": "x"}])
    out = tmp_path / "segments"
    assert main(["segment", str(config), "--k", str(k), "--steps", "4", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["run.json", "segments.png", "segments_overlay.mp4", *(f"segment_{i}" for i in range(k))])
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "segment" and record["k"] == k and record["steps"] == 4
    coarsest = 64 // read_model(str(MODEL)).size_multiple  # the coarsest decoder self-attention level at 64x64
    assert record["features"]["grid"] == [coarsest, coarsest]
    assert record["size"] == [64, 64] and record["source_size"] == [32, 32]
    assert media.count_frames(out / "segments_overlay.mp4") == FRAMES
    segments = np.stack([mask_files.read_mask_folder(out / f"segment_{i}", 0, FRAMES, 1, FRAMES, "m") for i in range(k)])
    assert segments.shape == (k, FRAMES, 32, 32) and (segments.sum(0) == 1).all()  # a partition at source size
    background = ~true.any(0)
    targets = [*true, background] if k == 3 else [true.any(0), background]
    ious = _matched_ious(segments, targets)
    print(f"{k=} IoU per target (objects..., background): {np.round(ious, 3).tolist()}")
    # measured 0.68 / 0.67 / 0.91 (k=3) and 0.56 / 0.89 (k=2) with the 3-level toy model (8x8 features;
    # 0.72-0.96 with the previous 2-level one at 16x16); a random partition scores ~0.1 on an object
    assert min(ious) >= 0.5, ious
    # a config can name a segment folder as a region's masks
    edit = {**yaml.safe_load(config.read_text()), "prompt": "a red square on a gray background",
            "regions": [{"name": "object", "masks": str(out / "segment_1"), "prompt": "red square"}]}
    config.write_text(yaml.safe_dump(edit))
    inputs = load_inputs(load_spec(config), 4)
    assert inputs.masks.shape == (1, FRAMES, 64, 64)
    # the folder exists now: a second run needs --overwrite
    assert main(["segment", str(config), "--k", str(k), "--out", str(out)]) == 2
