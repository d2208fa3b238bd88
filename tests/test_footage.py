"""Real footage in and out: every frame on request, the output's frame rate after a stride, the
source's audio carried over (cut to the edited span), and the edit delivered at the source's size."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from videograin import media
from videograin.inputs import load_inputs
from videograin.cli import main
from videograin.config.parse import load_spec

FPS, RATE, FRAMES = 12, 16000, 24


def _footage(path: Path, audio: bool = True, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """An mp4 of FRAMES frames at FPS (a bright square moving right on a dark ramp), with a 440 Hz tone
    whose amplitude rises with time when ``audio``; returns the frames."""
    width, height = size
    frames = np.zeros((FRAMES, height, width, 3), np.uint8)
    frames[..., 1] = np.linspace(20, 90, width, dtype=np.uint8)
    for f in range(FRAMES):
        frames[f, 16:32, 4 + f: 20 + f] = 230
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=RATE, layout="mono") if audio else None
        for frame in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(video.encode())
        if sound is not None:
            t = np.arange(FRAMES * RATE // FPS) / RATE
            samples = (0.5 * (t / t[-1]) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = RATE, start, Fraction(1, RATE)
                out.mux(sound.encode(chunk))
            out.mux(sound.encode())
    return frames


def _config(folder: Path, model: Path, video: dict) -> Path:
    config = {"model": str(model), "video": {"path": "clip.mp4", **video},
              "source_prompt": "a square", "prompt": "a red square",
              "regions": [{"name": "square", "prompt": "red square", "masks": [2, 12, 48, 36]},
                          {"name": "rest", "prompt": "", "masks": [0, 0, 64, 48]}],
              "edit": {"steps": 2}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def _audio(path: Path) -> tuple[np.ndarray, int] | None:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        return np.concatenate([f.to_ndarray().mean(0) for f in container.decode(stream)]), stream.rate


def test_frames_all_reads_every_selected_frame(tmp_path, tiny_model_dir):
    _footage(tmp_path / "clip.mp4", audio=False)
    spec = load_spec(_config(tmp_path, tiny_model_dir, {"frames": "all", "start": 2, "stride": 3}))
    assert spec.video.frames == len(range(2, FRAMES, 3)) == 8
    for bad, field in (("most", "video.frames"),):
        with pytest.raises(Exception, match=field):
            load_spec(_config(tmp_path, tiny_model_dir, {"frames": bad}))
    with pytest.raises(Exception, match="video.start"):
        load_spec(_config(tmp_path, tiny_model_dir, {"frames": "all", "start": FRAMES}))


def test_a_stride_2_edit_plays_at_half_the_rate_with_the_sources_audio_of_its_span(tmp_path, tiny_model_dir):
    """Frames 4, 6, ..., 14 of a 12 fps clip: edited.mp4 is 6 fps and carries the source's audio from
    4/12 s to 15/12 s (its loudness envelope rises like the source's from there)."""
    _footage(tmp_path / "clip.mp4")
    config = _config(tmp_path, tiny_model_dir, {"frames": 6, "start": 4, "stride": 2, "size": [32, 32]})
    assert main(["edit", str(config), "--out", str(tmp_path / "out")]) == 0
    with av.open(str(tmp_path / "out" / "edited.mp4")) as container:
        assert container.streams.video[0].average_rate == 6
    source, rate = _audio(tmp_path / "clip.mp4")
    edited, edited_rate = _audio(tmp_path / "out" / "edited.mp4")
    assert edited_rate == rate
    span = (4 / FPS, 15 / FPS)
    assert abs(len(edited) / rate - (span[1] - span[0])) < 0.1  # AAC frames: ~64 ms granularity
    # the tone's loudness rises with time: the edit's track is as loud as the source's span, not as its start
    def loudness(x):
        return float(np.sqrt(np.mean(x**2)))
    chosen, first = source[int(span[0] * rate): int(span[1] * rate)], source[: int((span[1] - span[0]) * rate)]
    assert abs(loudness(edited) - loudness(chosen)) < 0.1 * loudness(chosen)
    assert abs(loudness(edited) - loudness(first)) > 0.3 * loudness(first)
    assert _audio(tmp_path / "out" / "edited_full.mp4") is not None
    record = yaml.safe_load((tmp_path / "out" / "run.json").read_text())
    assert "audio" in record


def test_without_audio_the_edit_has_none_and_the_full_size_edit_keeps_the_source_away_from_the_regions(
        tmp_path, tiny_model_dir):
    from videograin.runner import full_resolution

    frames = _footage(tmp_path / "clip.mp4", audio=False)
    config = _config(tmp_path, tiny_model_dir, {"frames": 4, "size": [32, 32]})
    assert main(["edit", str(config), "--out", str(tmp_path / "out")]) == 0
    assert _audio(tmp_path / "out" / "edited.mp4") is None
    full, _ = media.read_video(tmp_path / "out" / "edited_full.mp4", 0, 4, 1)
    assert full.shape == (4, 48, 64, 3)

    # the composite at the source size, against the source frames as decoded
    spec = load_spec(config)
    inputs = load_inputs(spec, 8)
    edited = np.full((4, 32, 32, 3), 255, np.uint8)  # an edit that changes every pixel
    out = full_resolution(edited, inputs, [True, False], margin=2, composite=True)
    source, _ = media.read_video(tmp_path / "clip.mp4", 0, 4, 1)
    np.testing.assert_array_equal(source, inputs.source_uint8)
    # the edited box [2, 12, 48, 36] in source pixels; at the edit size (x 1/2, 1/1.5) grown by 2 margins
    # of 2 edit pixels (8 source px across, 6 down, with the bilinear upsampling's pixel): the band
    far = np.ones((48, 64), bool)
    far[12 - 8: 36 + 8, 0: 48 + 10] = False
    assert np.array_equal(out[:, far], source[:, far])
    assert (out[:, 20:28, 10:40] == 255).all()  # inside the region: the edit
    assert np.array_equal(full_resolution(edited, inputs, [True, False], 2, composite=False),
                          np.full((4, 48, 64, 3), 255, np.uint8))
    del frames


def test_the_comparison_gif_of_a_long_small_clip_is_sampled_and_enlarged_crisply():
    from videograin import viz

    clip = np.zeros((300, 32, 66, 3), np.uint8)
    clip[:, :, :, 0] = (np.arange(300) % 256).astype(np.uint8)[:, None, None]  # frame number in red
    clip[:, 5, 7] = 255
    frames, kept = viz.preview(clip)
    assert frames.shape == (120, 256, 528, 3) and kept == 120 / 300
    assert frames[0, 0, 0, 0] == 0 and frames[-1, 0, 0, 0] == 299 % 256  # first and last frame kept
    assert (frames[:, 40:48, 56:64] == 255).all()  # one pixel is an 8x8 block: nearest neighbour
    short, kept = viz.preview(clip[:12, :, :, :])
    assert len(short) == 12 and kept == 1.0
    pair, kept = viz.preview(clip, clip[::-1])  # source | edit: the same frames of both, side by side
    assert pair.shape == (120, 256, (66 + 2 + 66) * 8, 3) and kept == 120 / 300
    assert pair[-1, 0, 0, 0] == 299 % 256 and pair[-1, 0, 68 * 8, 0] == 0  # last frame | the reversed clip's first
