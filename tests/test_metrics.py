"""Evaluation metrics on synthetic videos, a tiny random-weight CLIP and stub scorers (CPU, offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from videograin.eval import evaluate as E
from videograin.eval import clip_scores as C
from videograin.eval import metrics as M
from videograin.method.recorder import AttentionRecorder
from videograin.method.layout import Layout, LevelLayout, TemporalKeys

from conftest import EXAMPLE, copy_example



# ----------------------------------------------------------------------------------------------- fixtures


def _tiny_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, **ids),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


@pytest.fixture(scope="module")
def clip_tokenizer(tiny_model_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")


@pytest.fixture(scope="module")
def tiny_scorer(clip_tokenizer):
    return C.ClipScorer(_tiny_clip(clip_tokenizer), clip_tokenizer)


def _texture(height: int, width: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Smoothed colour noise stretched to 0..255, uint8 (H, W, 3)."""
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).round().astype(np.uint8)


def _moving_window(frames: int = 8, size=(96, 128), step=(1, 3), seed: int = 0) -> np.ndarray:
    """A window moving over a texture by integer (dy, dx) pixels per frame: (F, H, W, 3) uint8."""
    h, w = size
    big = _texture(h + frames * step[0] + 20, w + frames * step[1] + 20, seed)
    return np.stack([big[10 + t * step[0] : 10 + t * step[0] + h, 10 + t * step[1] : 10 + t * step[1] + w]
                     for t in range(frames)])


# ----------------------------------------------------------------------------------------------- CLIP


def test_clip_f_is_100_for_identical_frames_and_lower_otherwise(tiny_scorer):
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    same = C.clip_frame_consistency(tiny_scorer, np.repeat(image[None], 5, 0))
    assert same["clip_f"] == pytest.approx(100, abs=1e-3)
    assert same["clip_f_all_pairs"] == pytest.approx(100, abs=1e-3)
    varied = C.clip_frame_consistency(tiny_scorer, np.random.default_rng(1).integers(0, 256, (5, 48, 64, 3), np.uint8))
    assert varied["clip_f"] < 99.9 and varied["clip_f_all_pairs"] < 99.9


def test_clip_f_pairs_consecutive_frames_and_all_pairs():
    """With a stub scorer giving known embeddings the two means are checked by hand."""

    class Angles:
        logit_scale = 100.0

        def embed_images(self, images):  # frame i -> angle 0, 60, 120 degrees
            angles = torch.tensor([math.radians(float(im[0, 0, 0])) for im in images])
            return torch.stack([angles.cos(), angles.sin()], -1)

    frames = np.stack([np.full((4, 4, 3), a, np.uint8) for a in (0, 60, 120)])
    out = C.clip_frame_consistency(Angles(), frames)
    assert out["clip_f"] == pytest.approx(50.0, abs=1e-4)  # cos 60° twice
    assert out["clip_f_all_pairs"] == pytest.approx((50 + 50 - 50) / 3, abs=1e-4)  # and cos 120°


def test_clip_t_matches_the_models_own_forward(tiny_scorer):
    """CLIP-T from the scorer's separate image and text embeddings equals CLIPModel.forward's
    logits_per_image / logit_scale, averaged over frames, ×100."""
    frames = np.stack([_texture(40, 56, seed) for seed in range(3)])
    prompt = "a red apple on the grass"
    value = C.clip_text_score(tiny_scorer, frames, prompt)
    tokens = tiny_scorer.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        out = tiny_scorer.model(input_ids=tokens["input_ids"], pixel_values=tiny_scorer.preprocess(list(frames)))
    expected = float(out.logits_per_image.mean() / tiny_scorer.model.logit_scale.detach().exp() * 100)
    assert value == pytest.approx(expected, abs=1e-3)
    assert C.pick_score(tiny_scorer, frames, prompt) == pytest.approx(expected * tiny_scorer.logit_scale / 100, abs=1e-3)


def test_preprocessing_matches_clip_image_processor(tiny_scorer):
    """Resize of the short side, centre crop and normalisation as transformers' CLIP processor does
    (built here without downloads); only bicubic/rounding details differ."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = [_texture(48, 64, 0, sigma=3), _texture(70, 40, 1, sigma=3)]
    mine = tiny_scorer.preprocess(images)
    theirs = torch.stack([processor(images=im, return_tensors="pt")["pixel_values"][0] for im in images])
    assert mine.shape == theirs.shape == (2, 3, 32, 32)
    assert (mine - theirs).abs().mean() < 0.01 and (mine - theirs).abs().max() < 0.05


# ----------------------------------------------------------------------------------------------- Warp-Err


def test_warp_err_is_near_zero_for_a_shifted_texture_and_large_when_shuffled():
    source = _moving_window()
    same = M.warp_error(source, source)
    assert same["flow"] == "dis" and same["valid_share"] > 0.8
    assert same["warp_err"] < 0.3
    recoloured = M.warp_error(255 - source, source)  # same motion, other colours: still consistent
    assert recoloured["warp_err"] < 0.3
    shuffled = M.warp_error(source[[5, 0, 3, 1, 7, 2, 6, 4]], source)
    assert shuffled["warp_err"] > 3 and shuffled["warp_err"] > 20 * same["warp_err"]


def test_warp_err_uses_the_flow_of_the_source():
    """A still edit of a moving source is inconsistent under the source's motion (and vice versa),
    though each video is perfectly consistent with its own motion."""
    moving = _moving_window()
    still = np.repeat(moving[:1], len(moving), 0)
    assert M.warp_error(still, still)["warp_err"] < 0.3
    assert M.warp_error(still, moving)["warp_err"] > 3
    assert M.warp_error(moving, still)["warp_err"] > 3


def test_flow_directions_and_occlusion_mask():
    frames = _moving_window(frames=2, step=(1, 3))
    forward, backward = M.optical_flow(frames)
    # the window moves right/down, so content moves left/up by (3, 1) px per frame
    np.testing.assert_allclose(np.median(forward[0].reshape(-1, 2), 0), [-3, -1], atol=0.1)
    np.testing.assert_allclose(np.median(backward[0].reshape(-1, 2), 0), [3, 1], atol=0.1)
    valid = M.consistency_mask(forward[0], backward[0])
    assert valid[:, :-6].mean() > 0.95
    assert not valid[:, -2:].any(), "pixels whose source lies outside the previous frame must be invalid"
    with pytest.raises(ValueError, match="backend"):
        M.optical_flow(frames, "farneback")


def test_consistency_mask_drops_pixels_uncovered_by_a_moving_object():
    """A textured square moves 8 px right over a still texture: the background it uncovers in frame 1
    was hidden in frame 0, so the round trip fails there; the square and the far background pass."""
    background, square = _texture(96, 128, 0), _texture(40, 40, 1)
    frames = np.stack([background.copy(), background.copy()])
    frames[0, 28:68, 30:70] = square
    frames[1, 28:68, 38:78] = square
    forward, backward = M.optical_flow(frames)
    valid = M.consistency_mask(forward[0], backward[0])
    assert valid[30:66, 30:38].mean() < 0.5  # uncovered
    assert valid[32:64, 44:74].mean() > 0.95 and valid[:20].mean() > 0.9 and valid[80:].mean() > 0.9


# ----------------------------------------------------------------------------------------------- fidelity


def _fidelity_scene():
    """Texture video, region 0 (edited, a square) and region 1 (kept: empty prompt, a bar)."""
    source = np.stack([_texture(64, 96, seed) for seed in range(3)])
    masks = np.zeros((2, 3, 64, 96), dtype=bool)
    masks[0, :, 10:40, 10:40] = True
    masks[1, :, 50:60, :] = True
    return source, masks, ["red apple", ""]


def test_psnr_masked_by_hand():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = a.copy()
    mask = np.zeros((2, 8, 8), bool)
    mask[:, :4] = True
    b[:, :4] = 10  # MSE 100 inside
    b[:, 4:, :, 0] = 3  # MSE 3 outside (one channel in three at 3²)
    assert M.psnr_masked(a, b, mask) == (pytest.approx(10 * math.log10(255**2 / 100)), False)
    assert M.psnr_masked(a, b, ~mask) == (pytest.approx(10 * math.log10(255**2 / 3)), False)
    assert M.psnr_masked(a, a, mask) == (M.PSNR_CAP_DB, True)


def test_masked_psnr_is_capped_on_an_untouched_background_and_drops_where_pixels_change():
    source, masks, prompts = _fidelity_scene()
    edited = source.copy()
    edited[:, 10:40, 10:40] = np.random.default_rng(5).integers(0, 256, (3, 30, 30, 3), np.uint8)
    result = E.evaluate(edited, source, masks, "a red apple", prompts, clip=None, pickscore=None, lpips=False)
    m = result.metrics
    assert m["psnr_outside_db"] == M.PSNR_CAP_DB
    assert any("psnr_outside_db" in note and "cap" in note for note in result.notes)
    assert m["psnr_inside_db"] < 15
    assert m["ssim_inside"] < 0.2 and m["ssim_outside"] > 0.9
    assert result.details["edited_area_share"] == pytest.approx(30 * 30 / (64 * 96))
    assert set(result.skipped) >= {"clip_t", "clip_f", "pickscore", "lpips_inside", "q_edit", "attention_mass"}

    # a change inside the kept region (empty prompt) is outside the edited union: the background PSNR drops
    edited[:, 52:58, :] = np.clip(edited[:, 52:58, :].astype(int) + 20, 0, 255).astype(np.uint8)
    changed = E.evaluate(edited, source, masks, "a red apple", prompts, clip=None, pickscore=None, lpips=False)
    assert 20 < changed.metrics["psnr_outside_db"] < 40
    assert changed.metrics["psnr_inside_db"] == pytest.approx(m["psnr_inside_db"])
    assert changed.metrics["ssim_outside"] < m["ssim_outside"]


# ----------------------------------------------------------------------------------------------- instances


COLOURS = {"red apple": (1.0, 0.0, 0.0), "green ball": (0.0, 1.0, 0.0), "blue car": (0.0, 0.0, 1.0)}


class ColourScorer:
    """Stub with ClipScorer's interface: an image is its mean colour minus grey, a prompt its colour
    minus grey, so the grey fill outside a region's mask counts for nothing."""

    logit_scale = 10.0

    def embed_images(self, images):
        means = torch.tensor(np.stack([im.reshape(-1, 3).mean(0) / 255.0 - CROP_GREY for im in images]))
        return torch.nn.functional.normalize(means.float(), dim=-1)

    def embed_texts(self, texts):
        return torch.nn.functional.normalize(torch.tensor([COLOURS[t] for t in texts]) - CROP_GREY, dim=-1)


CROP_GREY = M.CROP_FILL / 255.0


def _instance_scene(frames: int = 4):
    """Grey-noise frames with a thin red bar, a green square right next to it and a blue disc (moving)."""
    rng = np.random.default_rng(0)
    video = rng.integers(100, 156, (frames, 64, 96, 3)).astype(np.uint8)
    masks = np.zeros((3, frames, 64, 96), dtype=bool)
    yy, xx = np.mgrid[0:64, 0:96]
    for f in range(frames):
        masks[0, f, 10:50, 10 + f : 14 + f] = True  # 4 x 40 bar: its square crop reaches into the green
        masks[1, f, 10:50, 14 + f : 54 + f] = True
        masks[2, f] = (yy - 30) ** 2 + (xx - 80 + f) ** 2 < 8**2
        for r, colour in enumerate(COLOURS.values()):
            video[f][masks[r, f]] = (np.array(colour) * 255).astype(np.uint8)
    return video, masks


def test_region_crops_are_square_and_grey_outside_the_mask():
    video, masks = _instance_scene(2)
    crops = M.region_crops(video, masks[0])
    assert [f for f, _ in crops] == [0, 1]
    crop = crops[0][1]
    assert crop.shape == (40, 40, 3)
    red = (crop == [255, 0, 0]).all(-1)
    assert red.sum() == 4 * 40 and red[:, 18:22].all()  # the bar, centred
    assert (crop[~red] == M.CROP_FILL).all()  # the green square next to it is masked out
    empty = np.zeros_like(masks[0])
    empty[1, 5, 5] = True
    assert [f for f, _ in M.region_crops(video, empty)] == [1]


def test_confusion_is_diagonal_for_own_renders_and_off_diagonal_when_regions_swap():
    video, masks = _instance_scene()
    prompts, names = list(COLOURS), ["bar", "square", "disc"]
    out = M.instance_accuracy(ColourScorer(), video, masks, prompts, names)
    assert out["accuracy"] == 1.0 and out["per_region"] == {"bar": 1.0, "square": 1.0, "disc": 1.0}
    assert out["confusion_hits"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
    soft = np.array(out["confusion_softmax"])
    assert (soft.argmax(1) == [0, 1, 2]).all() and np.allclose(soft.sum(1), 1)

    swapped = M.instance_accuracy(ColourScorer(), video, masks[[1, 0, 2]], prompts, names)
    assert swapped["confusion_hits"] == [[0, 4, 0], [4, 0, 0], [0, 0, 4]]
    assert swapped["accuracy"] == pytest.approx(1 / 3)
    assert swapped["per_region"] == {"bar": 0.0, "square": 0.0, "disc": 1.0}


def test_instance_accuracy_ignores_kept_regions_and_needs_two_edited():
    video, masks = _instance_scene(2)
    out = M.instance_accuracy(ColourScorer(), video, masks, ["red apple", "", "blue car"])
    assert out["regions"] == ["region0", "region2"] and out["confusion_hits"] == [[2, 0], [0, 2]]
    with pytest.raises(ValueError, match="at least 2 edited"):
        M.instance_accuracy(ColourScorer(), video, masks, ["red apple", "", ""])


# ----------------------------------------------------------------------------------------------- attention


def _synthetic_attention():
    """One frame; level 0 is a 2x2 grid (tokens: region 0, region 0, region 1, none), level 1 a 1x1
    grid in both regions; text tokens: 1 = region 0's prompt, 2 = region 1's."""
    level0 = LevelLayout(0, 2, 2, torch.tensor([[1, 1, 2, 0]]), torch.zeros(1, 4), torch.zeros(1, 4))
    level1 = LevelLayout(1, 1, 1, torch.tensor([[3]]), torch.zeros(1, 1), torch.zeros(1, 1))
    layout = Layout({4: level0, 1: level1}, torch.tensor([0, 1, 2, 0]), 1, TemporalKeys())
    step0 = torch.tensor([[0.1, 0.6, 0.2, 0.1],
                          [0.1, 0.4, 0.3, 0.2],
                          [0.1, 0.2, 0.6, 0.1],
                          [0.4, 0.2, 0.2, 0.2]]).view(1, 2, 2, 4)
    step1 = torch.full((1, 2, 2, 4), 0.25)
    recorder = AttentionRecorder()
    wobble = torch.tensor([0.05, -0.05, 0.0, 0.0])  # two "layers" whose mean is step0
    recorder.add(0, 0, step0 + wobble)
    recorder.add(0, 0, step0 - wobble)
    recorder.add(1, 0, step1)
    recorder.add(0, 1, torch.full((1, 1, 1, 4), 0.25))
    return recorder, layout


def test_attention_mass_matches_hand_computed_values():
    recorder, layout = _synthetic_attention()
    out = M.attention_mass(recorder, layout, ["apple", "ball", "grass"])
    assert out["steps"] == [0, 1] and out["levels"] == [0, 1]
    apple, ball = out["regions"]["apple"], out["regions"]["ball"]
    assert "grass" not in out["regions"]  # no prompt tokens
    # step 0, level 0: apple's token 1 gets 0.6 + 0.4 inside of 0.6 + 0.4 + 0.2 + 0.2 in all
    assert apple["per_level"]["0"] == pytest.approx([1.0 / 1.4, 0.5])
    assert ball["per_level"]["0"] == pytest.approx([0.6 / 1.3, 0.25])
    assert apple["per_level"]["1"] == pytest.approx([1.0]) and ball["per_level"]["1"] == pytest.approx([1.0])
    assert apple["area_share"] == {"0": 0.5, "1": 1.0} and ball["area_share"] == {"0": 0.25, "1": 1.0}
    assert apple["mean"] == pytest.approx((1 / 1.4 + 0.5 + 1) / 3)
    assert out["mean"] == pytest.approx((apple["mean"] + ball["mean"]) / 2)

    frames = np.zeros((2, 8, 8, 3), np.uint8)
    result = E.evaluate(frames, frames, region_names=["apple", "ball", "grass"], clip=None, pickscore=None,
                        recorder=recorder, layout=layout)
    assert result.metrics["attention_mass"] == pytest.approx(out["mean"])
    assert result.details["attention_mass"] == out
    assert "smaller than" in result.skipped["warp_err"]  # DIS needs 12 px; the rest still runs


# ----------------------------------------------------------------------------------------------- evaluate


def test_evaluate_with_a_local_clip_folder_and_missing_weights(tmp_path, clip_tokenizer, offline):
    """A CLIP saved to a folder loads through from_pretrained (as PickScore too: its default tokenizer
    id is unreachable, so the folder's own is used); an unreachable hub id is skipped with the reason,
    and everything else still runs."""
    folder = tmp_path / "clip"
    _tiny_clip(clip_tokenizer).save_pretrained(folder)
    clip_tokenizer.save_pretrained(folder)
    video, masks = _instance_scene()
    source = video.copy()
    source[:, :, :, 2] //= 2
    prompts = ["red apple", "green ball", ""]
    result = E.evaluate(video, source, masks, "a red apple and a green ball", prompts,
                        clip=str(folder), pickscore=str(folder), lpips=True)
    assert {"clip_t", "clip_f", "clip_f_all_pairs", "instance_accuracy", "warp_err", "q_edit", "pickscore",
            "psnr_inside_db", "psnr_outside_db", "ssim_inside", "ssim_outside"} <= set(result.metrics)
    assert result.metrics["q_edit"] == pytest.approx(result.metrics["clip_t"] / result.metrics["warp_err"])
    assert result.metrics["pickscore"] == pytest.approx(
        result.metrics["clip_t"] / 100 * float(_tiny_clip(clip_tokenizer).logit_scale.detach().exp()), abs=1e-3)
    assert "lpips" in result.skipped["lpips_inside"].lower()
    assert result.flow == "dis" and result.details["clip_model"] == str(folder)
    table = E.format_table(result)
    assert "clip_t" in table and "skipped:" in table and "lpips_inside, lpips_outside:" in table

    missing = E.evaluate(video, source, masks, "a red apple", prompts, clip="nobody/no-such-clip",
                         pickscore="nobody/no-such-pickscore", lpips=False, flow="raft")
    assert "nobody/no-such-pickscore" in missing.skipped["pickscore"]
    for name in ("clip_t", "clip_f", "instance_accuracy"):
        assert "nobody/no-such-clip" in missing.skipped[name]
    assert "clip_t" in missing.skipped["q_edit"]
    assert "warp_err" in missing.metrics and missing.flow == "dis"
    assert "used OpenCV DIS instead" in missing.skipped["flow_raft"]
    json.dumps(missing.to_dict())

    bare = tmp_path / "clip_without_tokenizer"
    _tiny_clip(clip_tokenizer).save_pretrained(bare)
    with pytest.raises(M.WeightsUnavailable, match="no tokenizer files"):
        C.ClipScorer.from_pretrained(str(bare))


# ----------------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def short_example(tmp_path, tiny_model_dir) -> Path:
    """The bundled example on the tiny model, cut to 4 frames (the masks select the same frames)."""
    return copy_example(tmp_path / "two_balls", tiny_model_dir, frames=4)


def test_cli_edit_eval_and_eval_subcommand_offline(short_example, tmp_path, offline, capsys):
    from videograin.cli import main

    out = tmp_path / "out"
    assert main(["edit", str(short_example), "--steps", "2", "--out", str(out), "--eval"]) == 0
    run = json.loads((out / "run.json").read_text())
    evaluation = run["eval"]
    assert evaluation["flow"] == "dis"
    assert {"warp_err", "psnr_inside_db", "psnr_outside_db", "ssim_inside", "attention_mass"} <= set(evaluation["metrics"])
    assert set(evaluation["details"]["attention_mass"]["regions"]) == {"left_ball", "right_ball"}
    for name in ("clip_t", "clip_f", "instance_accuracy", "pickscore"):
        assert name in evaluation["skipped"], name
    assert C.DEFAULT_CLIP in evaluation["skipped"]["clip_t"]
    capsys.readouterr()

    # the output folder: its lossless frames/ and the source as run.json's config reads it
    assert main(["eval", "--edited", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    assert result["flow"] == "dis" and set(result) >= {"metrics", "skipped", "flow"}
    assert C.DEFAULT_CLIP in result["skipped"]["clip_t"] and "clip_t" in printed and "warp_err" in printed
    assert "attention_mass" in result["skipped"]
    # the same numbers as the in-memory evaluation of the edit (the attention mass needs the edit's maps)
    for name, value in evaluation["metrics"].items():
        if name != "attention_mass":
            assert result["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name

    # an mp4 with the original source video (frame selection of the config applied) and a named output
    target = tmp_path / "elsewhere" / "m.json"
    assert main(["eval", "--edited", str(out / "edited.mp4"), "--source", str(EXAMPLE / "video.mp4"),
                 "--config", str(short_example), "--out", str(target), "--clip", "nobody/no-such-clip"]) == 0
    explicit = json.loads(target.read_text())
    assert "nobody/no-such-clip" in explicit["skipped"]["clip_t"]
    assert explicit["metrics"]["psnr_inside_db"] == pytest.approx(result["metrics"]["psnr_inside_db"], abs=3)


def test_cli_eval_input_errors(tmp_path, capsys):
    from videograin.cli import main

    video = tmp_path / "clip.mp4"
    from videograin import media

    media.write_video(video, np.zeros((2, 16, 16, 3), np.uint8), 8)
    assert main(["eval", "--edited", str(video)]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["eval", "--edited", str(tmp_path / "missing")]) == 2
    assert "--edited" in capsys.readouterr().err
    masks = tmp_path / "masks"
    media.write_frames(masks, np.full((2, 16, 16, 3), 255, np.uint8))
    assert main(["eval", "--edited", str(video), "--source", str(video), "--regions", f"a={masks}:x",
                 f"a={masks}:y"]) == 2
    assert "--regions: region name(s) ['a'] given more than once" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- eval of any video


def test_eval_of_any_video_without_a_config(tmp_path, offline):
    """Another method's output as a frames folder or an mp4, the source as an mp4, a prompt and
    regions from the flags: Warp-Err near 0 when the edit follows the source's motion, large when its
    frames are shuffled; regions give the masked metrics; differing counts and sizes are one line."""
    from PIL import Image

    from videograin import media
    from videograin.cli import main

    source = _moving_window()  # (8, 48, 64, 3): a texture moving under the window
    follows = 255 - source  # recoloured, same motion
    frames_dir = tmp_path / "theirs"
    media.write_frames(frames_dir, follows)
    media.write_video(tmp_path / "source.mp4", source, 8)
    media.write_video(tmp_path / "shuffled.mp4", follows[[5, 0, 3, 1, 7, 2, 6, 4]], 8)
    left = tmp_path / "masks" / "left"
    left.mkdir(parents=True)
    for i in range(len(source)):
        mask = np.zeros(source.shape[1:3], np.uint8)
        mask[:, : source.shape[2] // 2] = 255
        Image.fromarray(mask).save(left / f"{i:05d}.png")
    common = ["--source", str(tmp_path / "source.mp4"), "--prompt", "a negative texture", "--clip",
              str(tmp_path / "no-clip"), "--pickscore", str(tmp_path / "no-pickscore")]
    assert main(["eval", "--edited", str(frames_dir), *common, "--regions", f"left={left}:a negative texture",
                 "--out", str(tmp_path / "follows.json")]) == 0
    follows_record = json.loads((tmp_path / "follows.json").read_text())
    assert main(["eval", "--edited", str(tmp_path / "shuffled.mp4"), *common, "--out", str(tmp_path / "shuffled.json")]) == 0
    shuffled_record = json.loads((tmp_path / "shuffled.json").read_text())
    assert follows_record["metrics"]["warp_err"] < 1.0 < 3 < shuffled_record["metrics"]["warp_err"]
    assert follows_record["inputs"]["regions"] == ["left"] and follows_record["inputs"]["prompt"] == "a negative texture"
    assert "psnr_inside_db" in follows_record["metrics"] and "psnr_inside_db" not in shuffled_record["metrics"]
    assert "no-clip" in follows_record["skipped"]["clip_t"]  # CLIP-T skipped for want of weights, not of a prompt


def test_eval_of_mismatched_videos_is_one_line_and_resize_compares_at_the_source_size(tmp_path, offline, capsys):
    from videograin import media
    from videograin.cli import main

    source = _moving_window()
    media.write_video(tmp_path / "source.mp4", source, 8)
    media.write_video(tmp_path / "short.mp4", source[:5], 8)
    media.write_video(tmp_path / "big.mp4", media.resize_frames(source, (256, 192)), 8)
    assert main(["eval", "--edited", str(tmp_path / "short.mp4"), "--source", str(tmp_path / "source.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--source" in err[0] and "gives 8 frames, the edit has 5" in err[0]
    assert main(["eval", "--edited", str(tmp_path / "big.mp4"), "--source", str(tmp_path / "source.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is 256x192 but the source is 128x96" in err[0] and "--resize" in err[0]
    assert main(["eval", "--edited", str(tmp_path / "big.mp4"), "--source", str(tmp_path / "source.mp4"), "--resize",
                 "--clip", str(tmp_path / "none"), "--pickscore", str(tmp_path / "none")]) == 0
    record = json.loads((tmp_path / "big.metrics.json").read_text())
    assert record["inputs"]["size"] == [128, 96] and record["metrics"]["warp_err"] < 1.0
    # a second video of the same folder: its own metrics file, the first one kept
    assert main(["eval", "--edited", str(tmp_path / "source.mp4"), "--source", str(tmp_path / "source.mp4"),
                 "--clip", str(tmp_path / "none"), "--pickscore", str(tmp_path / "none")]) == 0
    assert json.loads((tmp_path / "source.metrics.json").read_text())["inputs"]["edited"].endswith("source.mp4")
    assert json.loads((tmp_path / "big.metrics.json").read_text()) == record
    assert main(["eval", "--edited", str(tmp_path / "big.mp4"), "--source", str(tmp_path / "source.mp4"), "--resize",
                 "--regions", "left"]) == 2
    assert "NAME=MASK_DIR:PROMPT" in capsys.readouterr().err
