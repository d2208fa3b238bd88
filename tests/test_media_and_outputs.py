"""Files in and out on small synthetic inputs: media (video and image reading, writing, resizing),
mask_files (mask folders, boxes), inputs (an edit's inputs from its config), sizes (the frame-size
rule), outputs (the output folder) and viz's overlays and grids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from videograin import mask_files, media, outputs, viz
from videograin.inputs import load_inputs
from videograin.errors import SpecError


def smooth_clip(frames: int = 6, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 (F, H, W, 3): gentle gradients that move a little each frame (easy for a codec)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for f in range(frames):
        r = 60 + 120 * x / width + 4 * f
        g = 50 + 150 * y / height
        b = 128 + 60 * np.sin((x + 2 * f) / 9.0) * np.cos(y / 11.0)
        out.append(np.stack([r, g, b], -1))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def index_folder(folder: Path, count: int, size=(20, 12)) -> Path:
    """Image folder whose frame i has every pixel = (i, 255 - i, 7); names unpadded to test natural sort."""
    folder.mkdir()
    for i in range(count):
        img = np.empty((size[1], size[0], 3), np.uint8)
        img[...] = (i, 255 - i, 7)
        Image.fromarray(img).save(folder / f"frame{i}.png")
    return folder


def mask_folder(folder: Path, masks: np.ndarray, mode: str = "L") -> Path:
    folder.mkdir()
    for i, m in enumerate(masks):
        arr = m.astype(np.uint8) * 255
        if mode == "RGB":  # nonzero only in the blue channel
            arr = np.stack([np.zeros_like(arr), np.zeros_like(arr), arr], -1)
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def make_spec(video: Path, regions, frames: int, start: int = 0, stride: int = 1, size=None):
    """Duck-typed EditSpec: load_inputs only reads .video and .regions."""
    regs = tuple(
        SimpleNamespace(name=f"r{i}", prompt="x", masks=m, boxes=b, prompts=None) for i, (m, b) in enumerate(regions)
    )
    vid = SimpleNamespace(path=video, frames=frames, start=start, stride=stride, size=size)
    return SimpleNamespace(video=vid, regions=regs)


# ------------------------------------------------------------------------------------------ reading video


def test_mp4_round_trip(tmp_path):
    clip = smooth_clip(6, 48, 64)
    path = tmp_path / "clip.mp4"
    media.write_video(path, clip, fps=12.5)
    frames, fps = media.read_video(path, start=0, frames=6, stride=1)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(12.5)
    err = np.abs(frames.astype(int) - clip.astype(int))
    assert err.mean() < 3, err.mean()
    # frames stay in order (each frame closer to its own source than to the neighbouring one)
    for f in range(5):
        own = np.abs(frames[f].astype(int) - clip[f]).mean()
        other = np.abs(frames[f].astype(int) - clip[f + 1]).mean()
        assert own < other
    assert media.count_frames(path) == 6


def test_mp4_odd_size_padded_and_ntsc_rate(tmp_path):
    clip = smooth_clip(3, 31, 45)
    path = tmp_path / "odd.mp4"
    media.write_video(path, clip, fps=30000 / 1001)
    frames, fps = media.read_video(path, 0, 3, 1)
    assert frames.shape == (3, 32, 46, 3)
    assert fps == pytest.approx(29.97, abs=1e-3)
    assert np.abs(frames[:, :31, :45].astype(int) - clip).mean() < 3


def test_mp4_stride_selection(tmp_path):
    clip = np.zeros((9, 16, 16, 3), np.uint8)
    clip[:] = (np.arange(9) * 25)[:, None, None, None]  # frame i has grey level 25 i
    path = tmp_path / "levels.mp4"
    media.write_video(path, clip, fps=8, crf=0)
    frames, _ = media.read_video(path, start=1, frames=3, stride=3)
    levels = frames.reshape(3, -1).mean(1)
    np.testing.assert_allclose(levels, [25, 100, 175], atol=3)


def test_gif_write_read(tmp_path):
    clip = np.zeros((4, 10, 14, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for f, c in enumerate(colours):
        clip[f] = c
    path = tmp_path / "a.gif"
    media.write_gif(path, clip, fps=10)
    with Image.open(path) as im:
        assert im.info.get("loop") == 0 and im.n_frames == 4
    frames, fps = media.read_video(path, 0, 4, 1)
    assert frames.shape == (4, 10, 14, 3)
    assert np.abs(frames.astype(int) - clip).max() <= 8
    assert fps == pytest.approx(10, rel=0.05)


def test_image_folder_natural_sort_and_selection(tmp_path):
    folder = index_folder(tmp_path / "frames", 12)
    frames, fps = media.read_video(folder, start=2, frames=4, stride=3)
    assert fps == media.FOLDER_FPS
    assert frames.shape == (4, 12, 20, 3)
    # red channel encodes the frame index: 2, 5, 8, 11 (lexicographic sort would give frame10 after frame1)
    assert frames[:, 0, 0, 0].tolist() == [2, 5, 8, 11]
    assert (frames[:, :, :, 0] == frames[:, :1, :1, 0]).all()


def test_too_few_frames(tmp_path):
    folder = index_folder(tmp_path / "frames", 10)
    with pytest.raises(SpecError) as exc:
        media.read_video(folder, start=2, frames=5, stride=2)  # needs 11
    assert exc.value.field == "video.frames"
    assert "only 10 frames" in str(exc.value)
    assert "frames: 4" in exc.value.fix  # (10 - 1 - 2) // 2 + 1
    # the suggested frame count really fits
    assert media.read_video(folder, start=2, frames=4, stride=2)[0].shape[0] == 4

    clip = smooth_clip(4, 16, 16)
    media.write_video(tmp_path / "short.mp4", clip, fps=8)
    with pytest.raises(SpecError) as exc:
        media.read_video(tmp_path / "short.mp4", 0, 5, 1)
    assert exc.value.field == "video.frames" and "only 4 frames" in str(exc.value)


def test_unreadable_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(SpecError) as exc:
        media.read_video(bad, 0, 1, 1)
    assert exc.value.field == "video.path"
    with pytest.raises(SpecError) as exc:
        media.read_video(tmp_path / "missing.mp4", 0, 1, 1)
    assert exc.value.field == "video.path"


# ------------------------------------------------------------------------------------------ masks


def test_mask_folder_count_mismatch(tmp_path):
    masks = np.zeros((5, 8, 8), bool)
    folder = mask_folder(tmp_path / "m", masks)
    with pytest.raises(SpecError) as exc:
        mask_files.read_mask_folder(folder, start=0, frames=4, stride=1, total_source_frames=10, field="regions[1].masks")
    assert exc.value.field == "regions[1].masks"
    assert "5" in exc.value.problem and "4" in exc.value.problem and "10" in exc.value.fix


def test_mask_folder_full_length_subselected(tmp_path):
    # source of 10 frames, mask i is a single pixel at column i
    masks = np.zeros((10, 4, 12), bool)
    for i in range(10):
        masks[i, 1, i] = True
    folder = mask_folder(tmp_path / "m", masks, mode="RGB")
    got = mask_files.read_mask_folder(folder, start=1, frames=3, stride=4, total_source_frames=10, field="f")
    assert got.dtype == bool and got.shape == (3, 4, 12)
    np.testing.assert_array_equal(got, masks[[1, 5, 9]])
    # exactly `frames` images: taken in order, no selection
    got = mask_files.read_mask_folder(folder, start=1, frames=10, stride=4, total_source_frames=40, field="f")
    np.testing.assert_array_equal(got, masks)


def test_boxes_to_masks_static_per_frame_and_clipping():
    static = mask_files.boxes_to_masks([(1, 2, 4, 3)], frames=2, height=4, width=5)
    expected = np.zeros((4, 5), bool)
    expected[2, 1:4] = True  # x1, y1 exclusive
    assert static.shape == (2, 4, 5)
    np.testing.assert_array_equal(static[0], expected)
    np.testing.assert_array_equal(static[1], expected)

    per_frame = mask_files.boxes_to_masks([(-3, -3, 2, 1), (3, 2, 99, 99), (2, 2, 2, 4)], frames=3, height=4, width=5)
    e0 = np.zeros((4, 5), bool)
    e0[0, 0:2] = True
    e1 = np.zeros((4, 5), bool)
    e1[2:4, 3:5] = True
    np.testing.assert_array_equal(per_frame[0], e0)
    np.testing.assert_array_equal(per_frame[1], e1)
    assert not per_frame[2].any()  # zero width
    with pytest.raises(ValueError):
        mask_files.boxes_to_masks([(0, 0, 1, 1)] * 2, frames=3, height=4, width=5)


# ------------------------------------------------------------------------------------------ resizing + load_inputs


def test_resize_keeps_masks_aligned_non_square(tmp_path):
    # 96x48 source (aspect 2.0) resized to 40x40 (aspect 1.0): a white square on black stays under its mask
    h, w = 48, 96
    frames = np.zeros((3, h, w, 3), np.uint8)
    masks = np.zeros((3, h, w), bool)
    for f, (x0, y0) in enumerate([(10, 8), (40, 20), (70, 4)]):
        frames[f, y0 : y0 + 20, x0 : x0 + 20] = 255
        masks[f, y0 : y0 + 20, x0 : x0 + 20] = True
    folder = tmp_path / "frames"
    folder.mkdir()
    for f in range(3):
        Image.fromarray(frames[f]).save(folder / f"{f:03d}.png")
    mfolder = mask_folder(tmp_path / "mask", masks)
    spec = make_spec(folder, [(mfolder, None), (None, ((40, 20, 60, 40),))], frames=3, size=(40, 40))

    inputs = load_inputs(spec, 8)
    assert inputs.frames.shape == (3, 3, 40, 40) and inputs.masks.shape == (2, 3, 40, 40)
    assert inputs.masks.dtype.is_floating_point is False
    assert float(inputs.frames.min()) >= -1 and float(inputs.frames.max()) <= 1
    assert inputs.source_size == (96, 48) and inputs.size == (40, 40)
    assert any("aspect ratio changed from 2.000 to 1.000" in n for n in inputs.notes)
    img = inputs.frames_uint8.mean(-1) / 255.0  # (F, 40, 40); 2.4x shrink in x, 1.2x in y
    m = inputs.masks[0].numpy()
    # fully white pixels are all in the mask, fully black ones all outside; only blurred edge pixels
    # (partly covered by the square) may go either way
    assert m[img > 0.97].all() and not m[img < 0.03].any()
    assert img[m].min() > 0.5  # every mask pixel is mostly covered by the square
    ys, xs = np.mgrid[0:40, 0:40]
    for f in range(3):
        wgt = img[f] / img[f].sum()
        centre_img = ((xs * wgt).sum(), (ys * wgt).sum())
        centre_mask = (xs[m[f]].mean(), ys[m[f]].mean())
        np.testing.assert_allclose(centre_mask, centre_img, atol=0.45)  # no shift (cv2 INTER_NEAREST: 0.66)
    # the static box marks frame 1's square in source pixels: same geometry as the mask image there
    box = inputs.masks[1].numpy()
    np.testing.assert_array_equal(box[1], m[1])
    assert (box == box[0]).all()  # static box: identical on every frame


def test_resize_frames_and_masks_shapes():
    frames = np.random.default_rng(0).integers(0, 256, (2, 10, 30, 3), dtype=np.uint8)
    assert media.resize_frames(frames, (15, 5)).shape == (2, 5, 15, 3)  # shrink
    assert media.resize_frames(frames, (60, 8)).shape == (2, 8, 60, 3)  # mixed
    m = np.zeros((4, 2, 6), bool)
    m[:, :, 3:] = True
    out = mask_files.resize_masks(m, (12, 4))
    assert out.shape == (4, 4, 12) and out.dtype == bool
    assert (out[..., 6:]).all() and not out[..., :6].any()  # right half stays the right half


def test_empty_mask_error(tmp_path):
    folder = index_folder(tmp_path / "frames", 2, size=(32, 32))
    full = mask_folder(tmp_path / "full", np.ones((2, 32, 32), bool))
    empty = mask_folder(tmp_path / "empty", np.zeros((2, 32, 32), bool))
    with pytest.raises(SpecError) as exc:
        load_inputs(make_spec(folder, [(full, None), (empty, None)], frames=2, size=(32, 32)), 8)
    assert exc.value.field == "regions[1].masks"
    # a box entirely outside the frame is empty too
    with pytest.raises(SpecError) as exc:
        load_inputs(make_spec(folder, [(None, ((40, 40, 50, 50),))], frames=2, size=(32, 32)), 8)
    assert exc.value.field == "regions[0].masks"  # the key a box is written under


def test_mask_size_mismatch(tmp_path):
    folder = index_folder(tmp_path / "frames", 2, size=(32, 24))
    wrong = mask_folder(tmp_path / "m", np.ones((2, 24, 30), bool))
    with pytest.raises(SpecError) as exc:
        load_inputs(make_spec(folder, [(wrong, None)], frames=2, size=(32, 24)), 8)
    assert exc.value.field == "regions[0].masks"
    assert "30x24" in str(exc.value) and "32x24" in str(exc.value)


# ------------------------------------------------------------------------------------------ writers


def test_write_frames_png_json(tmp_path):
    clip = smooth_clip(3, 8, 10)
    paths = media.write_frames(tmp_path / "frames", clip)
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[2])), clip[2])
    media.write_json(tmp_path / "run.json", {"b": 1, "a": Path("x/y"), "n": np.float32(0.5)})
    text = (tmp_path / "run.json").read_text()
    assert text.index('"b"') < text.index('"a"') and '\n  "a": "x/y"' in text and "0.5" in text


# ------------------------------------------------------------------------------------------ output folder


def test_output_folder_refuses_non_empty(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("keep")
    with pytest.raises(SpecError) as exc:
        with outputs.output_folder(final, overwrite=False):
            pass
    assert exc.value.field == "output"
    assert (final / "old.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_folder_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with outputs.output_folder(final, overwrite=False) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out")
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # with an existing output and overwrite: old content survives a failure
    final.mkdir()
    (final / "old.txt").write_text("keep")
    (final / "run.json").write_text('{"command": "edit"}')  # a previous output: --overwrite may replace it
    with pytest.raises(RuntimeError):
        with outputs.output_folder(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in final.iterdir()) == ["old.txt", "run.json"]


def test_output_folder_replaces_on_success(tmp_path):
    final = tmp_path / "sub" / "out"
    with outputs.output_folder(final, overwrite=False) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "run.json").write_text('{"command": "edit"}')
    assert (final / "a.txt").read_text() == "1"
    with outputs.output_folder(final, overwrite=True) as tmp:
        assert not (tmp / "a.txt").exists()
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["out"]  # no temp/old leftovers
    final_empty = tmp_path / "empty"
    final_empty.mkdir()
    with outputs.output_folder(final_empty, overwrite=False) as tmp:  # empty folder is fine without overwrite
        (tmp / "c.txt").write_text("3")
    assert (final_empty / "c.txt").exists()


def test_overwrite_replaces_only_our_outputs_and_never_an_input(tmp_path):
    """--overwrite replaces only a videograin output: never a foreign folder, a file, or a folder that is or
    holds an input (the config's folder, the video)."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    video = tmp_path / "clip" / "video.mp4"
    video.parent.mkdir()
    video.write_bytes(b"not really")
    for final, inputs, words in [(notes, [], "not a videograin output"), (video, [], "is a file"),
                                 (tmp_path / "clip", [video], "input"), (tmp_path, [video], "input"),
                                 (tmp_path / "clip" / "out", [video.parent], "input")]:
        with pytest.raises(SpecError, match=words) as exc:
            outputs.check_output_folder(final, overwrite=True, inputs=inputs)
        assert exc.value.field == "output"
    assert (notes / "todo.txt").read_text() == "mine" and video.read_bytes() == b"not really"


def test_output_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path):
    """A second run into a locked output folder is refused; the lock goes with the run; a lock of a process
    that has exited is taken over and that run's temporary folder removed, and nothing else."""
    final = tmp_path / "out"
    with outputs.output_lock(final):
        with pytest.raises(SpecError, match="another videograin run") as exc:
            with outputs.output_lock(final):
                pass
        assert exc.value.field == "output"
    assert list(tmp_path.iterdir()) == []  # the lock is gone with the run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".out.lock").write_text(dead.stdout.strip())  # a process that has exited
    (tmp_path / ".out.0123abcd").mkdir()  # what a killed run leaves
    (tmp_path / ".out.0123abcd" / "half.png").write_bytes(b"")
    (tmp_path / ".outside").mkdir()  # not ours
    with outputs.output_lock(final):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", ".outside"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".outside"]


# ------------------------------------------------------------------------------------------ viz


def test_mask_overlay_changes_only_inside():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
    masks = np.zeros((2, 2, 20, 30), bool)
    masks[0, :, 2:10, 3:12] = True
    masks[1, 1, 12:18, 15:28] = True
    out = viz.mask_overlay(frames, masks)
    assert out.shape == frames.shape and out.dtype == np.uint8
    inside = masks.any(0)
    np.testing.assert_array_equal(out[~inside], frames[~inside])
    assert (out[inside] != frames[inside]).any(-1).mean() > 0.95
    colors = viz.region_colors(2)
    assert (out[0, 2, 5] == colors[0]).all()  # outline pixel in region 0's colour
    assert len({tuple(c) for c in viz.region_colors(15)}) == 15


def test_grid_and_side_by_side():
    a = np.zeros((10, 4, 5, 3), np.uint8)
    a[:] = np.arange(10)[:, None, None, None]
    g = viz.grid([a, a], max_columns=4)
    assert g.shape == (4 * 2 + 2, 5 * 4 + 3 * 2, 3)
    assert [g[0, j * 7, 0] for j in range(4)] == [0, 3, 6, 9]  # evenly spaced, first and last
    assert (g[4:6] == 255).all()  # white gap between rows
    s = viz.side_by_side(a, a + 1)
    assert s.shape == (10, 4, 12, 3) and (s[:, :, 5:7] == 255).all() and (s[3, :, 7:] == 4).all()


def test_the_size_rule_checks_a_requested_size_and_fits_the_default():
    """One rule for every entrance (sizes.py): the config's video.size, the pipeline's width/height."""
    from videograin import sizes
    from videograin.inputs import requested_size

    assert requested_size((1920, 1080), (512, 256), 64) == (512, 256)
    with pytest.raises(SpecError) as exc:
        requested_size((1920, 1080), (500, 288), 64)
    assert exc.value.field == "video.size" and "448 or 512" in str(exc.value) and "256 or 320" in str(exc.value)
    assert sizes.default_size((1920, 1080), 64) == (512, 320)  # 288 rounds to the nearest multiple, 320
    assert sizes.default_size((192, 128), 16) == (192, 128)  # small sources keep their size
    assert sizes.default_size((100, 10), 64) == (128, 64)  # never below one multiple
    assert sizes.edit_size((1920, 1080), None, 256, 64) == (448, 256)  # a side left out keeps the aspect (455 -> 448)
    with pytest.raises(ValueError, match="above 8192"):
        sizes.check_frame_size(8256, 64, 64)


def test_labelled_grid_keeps_the_tiles_and_adds_names_numbers_and_legend():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    colours = viz.region_colors(2)
    legend = viz.region_legend(["left", "right"], ["red square", ""])
    assert [text for text, _ in legend] == ["left: red square", "right: (kept)"]
    img = viz.labelled_grid([a, a[::-1]], ["source", "edited"], legend, max_columns=4)
    body = viz.grid([a.repeat(3, 1).repeat(3, 2), a[::-1].repeat(3, 1).repeat(3, 2)], max_columns=4)  # 32 px -> 96
    found = [(y, x) for y in range(img.shape[0] - body.shape[0] + 1) for x in range(img.shape[1] - body.shape[1] + 1)
             if np.array_equal(img[y : y + body.shape[0], x : x + body.shape[1]], body)]
    assert len(found) == 1, "the tiles are the grid's, enlarged, untouched"
    y, x = found[0]
    assert x > 20 and y > 10  # room for the row names and the frame numbers
    for row in range(2):  # each row's name is written left of it
        band = img[y + row * 98 : y + row * 98 + 96, :x]
        assert (band < 128).any(axis=-1).sum() > 20
    assert (img[:y, x:] < 128).any(axis=-1).sum() > 20  # frame numbers above
    below = img[y + body.shape[0]:]
    for colour in colours:
        assert (below == colour).all(-1).sum() >= 100  # a 12x12 swatch per legend entry
    with pytest.raises(ValueError, match="labels"):
        viz.labelled_grid([a], ["one", "two"])
