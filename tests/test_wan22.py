"""Wan 2.2 on tiny models built offline: A14B's two experts (each called only on its side of the boundary,
each with its own guidance), TI2V-5B's patchifying 16x VAE (a token covers 32 px), and other Wan pipelines
refused by name before weights load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from videograin import WanVideoGrainPipeline
from videograin.config.parse import spec_from_dict
from videograin.config.preflight import preflight, read_model
from videograin.errors import SpecError
from videograin.method.layout import TemporalKeys
from videograin.testing import make_tiny_wan_model

PROMPT = "a red circle and a blue square on a black background"


@pytest.fixture(scope="module")
def a14b_dir(tmp_path_factory):
    return make_tiny_wan_model(tmp_path_factory.mktemp("a14b") / "wan22", seed=0, variant="2.2-a14b")


@pytest.fixture(scope="module")
def ti2v_dir(tmp_path_factory):
    return make_tiny_wan_model(tmp_path_factory.mktemp("ti2v") / "ti2v", seed=0, variant="2.2-ti2v")


def _load(folder):
    pipe = WanVideoGrainPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip(frames: int = 9, size: int = 32):
    video = torch.rand(frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, frames, size, size, dtype=torch.bool)
    masks[0, ..., : size // 4] = True
    masks[1, ..., -size // 4 :] = True
    return video, masks


def _edit(pipe, size: int = 32, **kwargs):
    video, masks = _clip(size=size)
    options = dict(height=size, width=size, num_inference_steps=4, guidance_scale=3.0, output_type="latent") | kwargs
    return pipe(video, masks, PROMPT, ["red circle", "blue square"], source_prompt="two gray squares", **options)


def test_each_expert_runs_only_on_its_side_of_the_boundary_in_inversion_and_edit(a14b_dir):
    """boundary_ratio 0.875 of 1000 training steps: 875. With 4 steps at shift 3 the times are 1000,
    900, 750 and 501: the high-noise ``transformer`` takes 1000 and 900, ``transformer_2`` the rest,
    in the inversion (backwards) and the edit alike; each guided step calls its expert twice."""
    pipe = _load(a14b_dir)
    assert pipe.capabilities.experts == 2 and read_model(str(a14b_dir)).capabilities.experts == 2
    calls = {"transformer": [], "transformer_2": []}
    hooks = [getattr(pipe, name).register_forward_pre_hook(
        lambda module, args, name=name: calls[name].append(round(float(args[1].flatten()[0]))))
        for name in calls]
    try:
        _edit(pipe)
    finally:
        for hook in hooks:
            hook.remove()
    times = [round(t) for t in pipe.backbone.schedule(4).timesteps.tolist()]
    assert times == [1000, 900, 750, 501]
    inversion_high, inversion_low = [900, 1000], [501, 750]  # inversion walks the schedule backwards, guidance 1
    assert calls["transformer"] == inversion_high + [1000, 1000, 900, 900]
    assert calls["transformer_2"] == inversion_low + [750, 750, 501, 501]


def test_the_second_expert_changes_the_edit_and_takes_its_own_guidance(a14b_dir, tmp_path):
    pipe = _load(a14b_dir)
    before = _edit(pipe).latents
    folder = tmp_path / "scaled"
    shutil.copytree(a14b_dir, folder)
    scaled = _load(folder)
    with torch.no_grad():
        for weight in scaled.transformer_2.parameters():
            weight.mul_(1.5)
    assert (_edit(scaled).latents - before).abs().max() > 1e-3  # the second expert is used

    # one low-noise step by hand: v_uncond + guidance_scale_2 · (v_cond − v_uncond) from transformer_2
    backbone = pipe.backbone
    schedule = backbone.schedule(4)
    cond, uncond = backbone.encode_prompt(PROMPT), backbone.encode_prompt("")
    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    t = float(schedule.timesteps[2])  # 750: transformer_2's
    got = backbone.denoise_fn(cond, uncond, 3.0, 3, schedule, guidance_scale_2=1.5)(latents, t, 2)
    x = latents.transpose(0, 1)[None]
    with torch.no_grad():
        v_c, v_u = (pipe.transformer_2(x, torch.tensor([t]), text, return_dict=False)[0][0].transpose(0, 1)
                    for text in (cond, uncond))
    torch.testing.assert_close(got, v_u + 1.5 * (v_c - v_u), rtol=0, atol=1e-5)
    high = backbone.denoise_fn(cond, uncond, 3.0, 3, schedule, guidance_scale_2=1.5)(latents, 1000.0, 0)
    with torch.no_grad():
        v_c, v_u = (pipe.transformer(x, torch.tensor([1000.0]), text, return_dict=False)[0][0].transpose(0, 1)
                    for text in (cond, uncond))
    torch.testing.assert_close(high, v_u + 3.0 * (v_c - v_u), rtol=0, atol=1e-5)
    assert (_edit(pipe, guidance_scale_2=1.0).latents - before).abs().max() > 1e-4  # reaches the edit


def test_guidance_scale_2_on_a_one_expert_model_is_one_error_at_both_doors(wan_pipe, tiny_wan_dir, tmp_path):
    with pytest.raises(ValueError, match="^guidance_scale_2: .*has one"):
        _edit(wan_pipe, guidance_scale_2=2.0)
    (tmp_path / "frames").mkdir()
    spec = spec_from_dict({"model": str(tiny_wan_dir), "video": {"path": "frames", "frames": 9}, "prompt": PROMPT,
                           "regions": [{"name": "r", "prompt": "red circle", "masks": {"box": [0, 0, 8, 8]}}],
                           "edit": {"guidance_scale_2": 2.0}}, tmp_path)
    with pytest.raises(SpecError) as info:
        preflight(spec)
    assert info.value.field == "edit.guidance_scale_2"


def test_ti2v_tokens_cover_32_pixels_and_sizes_are_multiples_of_32(ti2v_dir, tmp_path):
    """The 48-channel VAE patchifies 2x2 and downsamples 8x (16x), the transformer patches 2x2: a token
    is 32 px on a side. 9 frames of 64x96: 3 latent frames of 4x6 latents, 2x3 tokens. A region of
    exactly the pixels of token (0, 1), and from frame 5 (latent frame 2: frames 5-8) half of token
    (1, 2), sets those tokens' bits and no other (on a 16-px grid it would set other tokens)."""
    pipe = _load(ti2v_dir)
    caps = pipe.capabilities
    assert (caps.vae_factor, caps.size_multiple, pipe.backbone.native_size) == (16, 32, 1280)
    assert read_model(str(ti2v_dir)).size_multiple == 32
    with pytest.raises(ValueError, match="multiple of 32"):
        pipe.backbone.check_size(9, 48, 64)
    masks = torch.zeros(1, 9, 64, 96, dtype=torch.bool)
    masks[0, :, 0:32, 32:64] = True  # exactly token (0, 1) in every frame
    masks[0, 5:, 32:48, 64:96] = True  # half of token (1, 2), from frame 5 (latent frame 2) on
    layout = pipe.backbone.layout(masks, [(1, 3)], (4, 6), TemporalKeys())
    (grid,) = layout.levels.values()
    assert (grid.height, grid.width) == (2, 3)
    want = torch.zeros(3, 2, 3, dtype=torch.long)
    want[:, 0, 1] = 1
    want[2, 1, 2] = 1
    assert torch.equal(grid.bits.view(3, 2, 3), want)
    out = _edit(pipe, size=64)
    assert out.latents.shape == (3, 48, 4, 4)


@pytest.mark.parametrize("name", ["WanImageToVideoPipeline", "WanVACEPipeline", "WanAnimatePipeline"])
def test_other_wan_pipelines_are_refused_by_name_before_weights_load(tiny_wan_dir, tmp_path, name, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(tiny_wan_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": name}))
    (tmp_path / "frames").mkdir()
    spec = spec_from_dict({"model": str(folder), "video": {"path": "frames", "frames": 9}, "prompt": PROMPT,
                           "regions": [{"name": "r", "prompt": "red circle", "masks": {"box": [0, 0, 8, 8]}}]},
                          tmp_path)
    monkeypatch.setattr("diffusers.DiffusionPipeline.from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(SpecError) as info:
        preflight(spec)
    assert info.value.field == "model" and name in str(info.value) and "WanPipeline" in str(info.value)
    assert "\n" not in str(info.value)


def test_under_model_cpu_offload_the_expert_not_in_use_goes_back_first(a14b_dir, monkeypatch):
    """diffusers' offload hooks (``pipe._all_hooks``, one per component, ``offload()`` moves it to the
    CPU) stand in here for a GPU: before each expert runs, the other one's hook is offloaded, in the
    inversion (low noise first) as in the edit. On a GPU, benchmarks/cuda.sh's ``offload`` stage checks
    the real hooks (at most one expert on the GPU at any call)."""
    pipe = _load(a14b_dir)
    log = []

    class Hook:
        def __init__(self, model, name):
            self.model, self.name = model, name

        def offload(self):
            log.append(("offload", self.name))

    pipe._all_hooks = [Hook(pipe.text_encoder, "text_encoder"), Hook(pipe.transformer, "transformer"),
                       Hook(pipe.transformer_2, "transformer_2"), Hook(pipe.vae, "vae")]
    for name in ("transformer", "transformer_2"):
        getattr(pipe, name).register_forward_pre_hook(lambda module, args, name=name: log.append(("run", name)))
    _edit(pipe, guidance_scale=1.0)
    runs = [i for i, (kind, _) in enumerate(log) if kind == "run"]
    for i in runs:
        other = "transformer" if log[i][1] == "transformer_2" else "transformer_2"
        assert log[i - 1] == ("offload", other), log[max(0, i - 2): i + 1]
    assert ("offload", "text_encoder") not in log and ("offload", "vae") not in log


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (model CPU offload moves models to it)")
def test_cuda_model_cpu_offload_keeps_one_expert_on_the_gpu(a14b_dir):
    pipe = _load(a14b_dir)
    pipe.enable_model_cpu_offload()
    seen = []
    for name in ("transformer", "transformer_2"):
        getattr(pipe, name).register_forward_pre_hook(lambda module, args: seen.append(
            sorted(n for n in ("transformer", "transformer_2") if next(getattr(pipe, n).parameters()).is_cuda)))
    _edit(pipe)
    assert seen and all(len(on_gpu) == 1 for on_gpu in seen), seen
