"""The pipeline's call contract as diffusers users know it: video and mask formats, height/width,
output_type, return_dict, callback_on_step_end, latents, generators, loading and memory helpers."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from videograin.method.reatco import invariant_region_sampling
from videograin.method.sampling import DDIMSchedule
from videograin.method.settings import FlowAid, Modulation, TemporalAidSettings

PROMPT, REGIONS = "a red apple on the grass", ["red apple", ""]
STEPS = 3


@pytest.fixture(scope="module")
def clip():
    """uint8 video (3, 32, 48, 3) of smooth random colour and masks (2, 3, 32, 48): left | right half."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(3, 4, 6, 3)).astype(np.uint8)
    video = np.stack([np.asarray(PIL.Image.fromarray(f).resize((48, 32), PIL.Image.BILINEAR)) for f in coarse])
    masks = np.zeros((2, 3, 32, 48), dtype=bool)
    masks[0, :, :, :24], masks[1, :, :, 24:] = True, True
    return video, masks


def _edit(pipe, video, masks, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(video, masks, PROMPT, REGIONS, **kwargs)


def test_pil_uint8_and_float_videos_and_masks_of_another_size_give_the_same_edit(tiny_pipe, clip):
    video, masks = clip
    reference = _edit(tiny_pipe, video, masks, output_type="latent").frames
    pil = [PIL.Image.fromarray(f) for f in video]
    as_float = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255
    # masks at twice the size, as 0/255 uint8 numpy: the nearest resize back gives the same bits
    big = (np.repeat(np.repeat(masks, 2, axis=2), 2, axis=3) * 255).astype(np.uint8)
    for other_video, other_masks in [(pil, masks), (as_float, masks), (video, big),
                                     (video, [list(m.astype(np.float32)) for m in masks])]:
        out = _edit(tiny_pipe, other_video, other_masks, output_type="latent").frames
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


def test_each_output_type_holds_the_same_video(tiny_pipe, clip):
    video, masks = clip
    outs = {kind: _edit(tiny_pipe, video, masks, output_type=kind) for kind in ("pt", "np", "pil", "latent")}
    pt, np_video, pil = outs["pt"].frames, outs["np"].frames, outs["pil"].frames
    assert pt.shape == (1, 3, 3, 32, 48) and np_video.shape == (1, 3, 32, 48, 3)
    assert 0 <= float(pt.min()) and float(pt.max()) <= 1
    np.testing.assert_allclose(pt[0].permute(0, 2, 3, 1).numpy(), np_video[0], rtol=0, atol=0)
    assert len(pil) == 1 and len(pil[0]) == 3 and pil[0][0].size == (48, 32)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil[0]]), (np_video[0] * 255).round())
    latent = outs["latent"].frames
    assert latent.shape == (1, 3, 4, 4, 6)
    torch.testing.assert_close(latent[0], outs["pt"].latents, rtol=0, atol=0)
    assert outs["pt"][0] is pt  # a BaseOutput: indexable like diffusers' outputs
    plain = _edit(tiny_pipe, video, masks, output_type="np", return_dict=False)
    assert isinstance(plain, tuple) and len(plain) == 1
    np.testing.assert_array_equal(plain[0], np_video)


def test_callback_on_step_end_sees_every_step_and_can_change_the_latents(tiny_pipe, clip):
    video, masks = clip
    seen = []

    def record(pipe, step, t, tensors):
        assert pipe is tiny_pipe and set(tensors) == {"latents"}
        seen.append((step, int(t), tensors["latents"].clone()))
        return tensors

    out = _edit(tiny_pipe, video, masks, output_type="latent", callback_on_step_end=record,
                callback_on_step_end_tensor_inputs=["latents"])
    assert [s for s, _, _ in seen] == list(range(STEPS))
    assert [t for _, t, _ in seen] == tiny_pipe.backbone.schedule(STEPS).timesteps.tolist()
    torch.testing.assert_close(seen[-1][2], out.latents, rtol=0, atol=0)

    def zero_last(pipe, step, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == STEPS - 1 else tensors

    assert float(_edit(tiny_pipe, video, masks, output_type="latent", callback_on_step_end=zero_last)
                 .latents.abs().max()) == 0.0

    def stop_after_first(pipe, step, t, tensors):
        pipe._interrupt = True
        seen.append(step)
        return tensors

    seen.clear()
    stopped = _edit(tiny_pipe, video, masks, output_type="latent", callback_on_step_end=stop_after_first)
    assert seen == [0] and not torch.equal(stopped.latents, out.latents)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        _edit(tiny_pipe, video, masks, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["noise"])


def test_callback_on_invert_step_sees_every_inversion_step_and_an_interrupt_there_skips_the_edit(tiny_pipe, clip):
    """Interrupted after the second inversion step, the call returns the latents of that step of a
    full inversion (run separately) and runs no edit step."""
    video, masks = clip
    source = tiny_pipe.encode_frames(tiny_pipe.prepare_video(video, None, None) * 2 - 1)
    full = tiny_pipe.invert(source, "", STEPS)
    seen, edit_steps = [], []

    def invert_step(pipe, step, t):
        seen.append((step, int(t)))
        pipe._interrupt = step == 1

    out = _edit(tiny_pipe, video, masks, output_type="latent", modulation=None, callback_on_invert_step=invert_step,
                callback_on_step_end=lambda pipe, step, t, tensors: edit_steps.append(step) or tensors)
    timesteps = tiny_pipe.backbone.schedule(STEPS).timesteps.tolist()
    assert seen == [(0, timesteps[-1]), (1, timesteps[-2])]  # inversion walks the schedule backwards
    assert edit_steps == []
    torch.testing.assert_close(out.latents, full[-3], rtol=0, atol=1e-6)
    seen.clear()
    _edit(tiny_pipe, video, masks, output_type="latent", modulation=None,
          callback_on_invert_step=lambda pipe, step, t: seen.append(step))
    assert seen == list(range(STEPS))  # the next call starts uninterrupted


def test_given_latents_start_the_edit(tiny_pipe, clip):
    """Other starting latents than the inverted noise change the edit; the wrong shape is refused."""
    video, masks = clip
    default = _edit(tiny_pipe, video, masks, output_type="latent", modulation=None, blend=False)
    noise = torch.randn(default.latents.shape, generator=torch.Generator().manual_seed(1))
    other = _edit(tiny_pipe, video, masks, output_type="latent", modulation=None, blend=False, latents=noise)
    assert (other.latents - default.latents).abs().mean() > 0.1
    with pytest.raises(ValueError, match="latents must be"):
        _edit(tiny_pipe, video, masks, latents=noise[:2])


def test_height_and_width_resize_video_and_masks_or_name_the_valid_sizes(tiny_pipe, clip):
    video, masks = clip
    out = _edit(tiny_pipe, video, masks, height=48, width=64, output_type="np")
    assert out.frames.shape == (1, 3, 48, 64, 3) and tuple(out.layout.region_masks(0, [0]).shape[-2:]) == (6, 8)
    assert _edit(tiny_pipe, video, masks, width=96, output_type="np").frames.shape == (1, 3, 64, 96, 3)
    with pytest.raises(ValueError, match=r"height 40 must be a positive multiple of 16.*use 32 or 48"):
        _edit(tiny_pipe, video, masks, height=40, width=48)


@pytest.mark.parametrize(("change", "message"), [
    (lambda v, m: ((torch.from_numpy(v).permute(0, 3, 1, 2).float() / 127.5 - 1), m),
     r"video is float with values in \[-0\.\d+, 0\.\d+\], expected \[0, 1\]; .*\(video \+ 1\) / 2"),
    (lambda v, m: (v, m.astype(np.uint8)), r"masks\[0\] is uint8 with values 0/1"),
    (lambda v, m: (v, m[:, :2]), r"masks\[0\] has 2 frames but the video has 3"),
    (lambda v, m: (v, m[:1]), "1 mask sequences but 2 region prompts"),
    (lambda v, m: (PIL.Image.fromarray(v[0]), m), "video is one image"),
])
def test_misuse_is_one_plain_line(tiny_pipe, clip, change, message):
    video, masks = change(*clip)
    with pytest.raises(ValueError, match=message) as info:
        _edit(tiny_pipe, video, masks)
    assert "\n" not in str(info.value) and "edit." not in str(info.value)  # no config field names


def test_prompt_lists_and_output_types_are_checked(tiny_pipe, clip):
    video, masks = clip
    torch.testing.assert_close(tiny_pipe(video, masks, [PROMPT], REGIONS, num_inference_steps=1, output_type="pt").frames,
                               tiny_pipe(video, masks, PROMPT, REGIONS, num_inference_steps=1, output_type="pt").frames)
    with pytest.raises(ValueError, match="prompt must be one string"):
        tiny_pipe(video, masks, [PROMPT, PROMPT], REGIONS, num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type 'gif' is not one of pil, np, pt, latent"):
        _edit(tiny_pipe, video, masks, output_type="gif")
    with pytest.raises(ValueError, match="one per latent frame: 2 for 3"):
        _edit(tiny_pipe, video, masks, generator=[torch.Generator(), torch.Generator()])


def test_irjs_draws_each_frames_noise_from_its_own_generator():
    source = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(5))
    keep_nothing = torch.zeros(3, 1, 2, 2)
    seeds = [11, 12, 13]
    step = invariant_region_sampling(source, keep_nothing, DDIMSchedule(torch.tensor([700, 400]), [0.5, 0.25, 0.9], 1000),
                                     [torch.Generator().manual_seed(s) for s in seeds])
    out = step(0, 500, torch.zeros_like(source))
    for f, seed in enumerate(seeds):
        noise = torch.randn((1, 4, 2, 2), generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out[f : f + 1], 0.25**0.5 * source[f : f + 1] + 0.75**0.5 * noise)


def test_the_users_attention_processor_runs_wherever_the_method_changes_nothing(tiny_pipe, clip):
    """A counting AttnProcessor2_0 set by the user: called during the edit's unmodulated steps (also
    for the full spatio-temporal self-attention, all frames as one sequence), the edit unchanged,
    and still installed afterwards."""
    video, masks = clip

    class Counting(AttnProcessor2_0):
        calls = 0

        def __call__(self, *args, **kwargs):
            Counting.calls += 1
            return super().__call__(*args, **kwargs)

    reference = _edit(tiny_pipe, video, masks, output_type="latent", modulation=Modulation(steps=1))
    original = tiny_pipe.unet.attn_processors
    tiny_pipe.unet.set_attn_processor(Counting())
    try:
        counted = _edit(tiny_pipe, video, masks, output_type="latent", modulation=Modulation(steps=1))
        assert Counting.calls > 0
        assert all(isinstance(p, Counting) for p in tiny_pipe.unet.attn_processors.values())
    finally:
        tiny_pipe.unet.set_attn_processor(original)
    torch.testing.assert_close(counted.latents, reference.latents, rtol=0, atol=1e-5)


def test_vae_slicing_and_tiling_reach_the_vae(tiny_pipe, clip):
    video, masks = clip
    reference = _edit(tiny_pipe, video, masks, output_type="pt").frames
    tiled = []
    original = tiny_pipe.vae.tiled_decode
    tiny_pipe.vae.tiled_decode = lambda *a, **k: tiled.append(1) or original(*a, **k)
    try:
        tiny_pipe.enable_vae_slicing()
        # decoding one frame at a time rounds differently from the batch (CI saw 1.6e-5 on [0, 1] pixels);
        # a slicing mistake (a frame dropped or reordered) moves pixels by far more than 1e-4
        torch.testing.assert_close(_edit(tiny_pipe, video, masks, output_type="pt").frames, reference,
                                   rtol=0, atol=1e-4)
        tiny_pipe.vae.tile_sample_min_size, tiny_pipe.vae.tile_latent_min_size = 32, 4
        tiny_pipe.enable_vae_tiling()
        assert _edit(tiny_pipe, video, masks, output_type="pt").frames.shape == reference.shape and tiled
    finally:
        tiny_pipe.disable_vae_slicing()
        tiny_pipe.disable_vae_tiling()
        del tiny_pipe.vae.tiled_decode
        tiny_pipe.vae.tile_sample_min_size = tiny_pipe.vae.config.sample_size
        tiny_pipe.vae.tile_latent_min_size = tiny_pipe.vae.config.sample_size // 8


def test_diffusers_custom_pipeline_loads_it_with_flow_aids_working(tiny_model_dir, tiny_pipe, clip, tmp_path,
                                                                   monkeypatch):
    import diffusers.utils.dynamic_modules_utils as dynamic
    from diffusers import DiffusionPipeline

    import videograin

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    video, masks = clip
    flow = TemporalAidSettings(flow=FlowAid(levels=(0,)))
    reference = _edit(tiny_pipe, video, masks, output_type="latent", temporal_aids=flow).latents
    tiny_pipe.save_pretrained(tmp_path / "saved")
    for folder in (tiny_model_dir, tmp_path / "saved"):
        pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=videograin.CUSTOM_PIPELINE, trust_remote_code=True)
        assert type(pipe).__name__ == "VideoGrainPipeline"
        pipe.set_progress_bar_config(disable=True)
        torch.testing.assert_close(_edit(pipe, video, masks, output_type="latent", temporal_aids=flow).latents,
                                   reference, rtol=0, atol=0)
