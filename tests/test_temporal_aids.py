"""Temporal aids in the edit: FLATTEN flow-guided attention and PnP injection, tiny model, CPU."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from videograin.inputs import load_inputs
from videograin.backbones.sd_processors import FeatureStore
from videograin.cli import main
from videograin.method.trajectories import Trajectories
from videograin.backbones.sd import TemporalAids
from videograin.method.settings import FlowAid, PnPAid, TemporalAidSettings, Window
from videograin.errors import SpecError
from videograin.config.parse import load_spec, spec_from_dict

from conftest import EXAMPLE, copy_example


@pytest.fixture(scope="module")
def clip():
    spec = load_spec(EXAMPLE / "config.yaml")
    inputs = load_inputs(spec, 16)
    return spec.prompt, [r.prompt for r in spec.regions], inputs.frames[:4], inputs.masks[:, :4]


def _edit(pipe, clip, **kwargs):
    prompt, region_prompts, frames, masks = clip
    return pipe((frames + 1) / 2, masks, prompt, region_prompts, num_inference_steps=4, **kwargs)


def test_flow_guided_attention_changes_the_edit(tiny_pipe, clip):
    base = _edit(tiny_pipe, clip)
    flow = _edit(tiny_pipe, clip, temporal_aids=TemporalAidSettings(flow=FlowAid(levels=(0, 1))))
    assert (flow.latents - base.latents).abs().mean() > 1e-3


def test_singleton_trajectories_leave_the_attention_unchanged(tiny_pipe, clip):
    """A token alone on its trajectory attends only to itself, so FLATTEN's step returns the dense
    output: the processors must then reproduce the run without flow exactly."""
    prompt, region_prompts, frames, masks = clip
    latents = tiny_pipe.encode_frames(frames)
    h, w = latents.shape[-2:]
    singles = {}
    for level in range(tiny_pipe.num_levels):
        n = (h >> level) * (w >> level)
        singles[n] = Trajectories(torch.arange(4 * n).view(4, n), 4 * n, h >> level, w >> level)
    original = tiny_pipe.temporal_aids
    tiny_pipe.temporal_aids = lambda *args: TemporalAids(trajectories=singles)
    try:
        flat = _edit(tiny_pipe, clip)
    finally:
        tiny_pipe.temporal_aids = original
    torch.testing.assert_close(flat.latents, _edit(tiny_pipe, clip).latents, rtol=0, atol=1e-5)


def test_pnp_with_zero_steps_is_bit_for_bit_the_plain_run(tiny_pipe, clip):
    base = _edit(tiny_pipe, clip)
    zero = _edit(tiny_pipe, clip, temporal_aids=TemporalAidSettings(pnp=PnPAid(steps=0)))
    assert torch.equal(base.latents, zero.latents)
    two = _edit(tiny_pipe, clip, temporal_aids=TemporalAidSettings(pnp=PnPAid(steps=2)))
    assert (two.latents - base.latents).abs().mean() > 1e-3


def test_pnp_records_decoder_self_attention_of_the_first_steps(tiny_pipe, clip):
    prompt, region_prompts, frames, masks = clip
    latents = tiny_pipe.encode_frames(frames)
    aids = tiny_pipe.temporal_aids(frames, tuple(latents.shape[-2:]), TemporalAidSettings(pnp=PnPAid(steps=2)))
    tiny_pipe.invert(latents, "", 4, aids=aids)
    layers = {layer for layer, _ in aids.features.qk}
    expected = {name.removesuffix(".processor") for name in tiny_pipe.unet.attn_processors if FeatureStore.takes(name)}
    assert layers == expected and all(name.startswith("up_blocks") and ".attn1" in name for name in layers)
    assert {step for _, step in aids.features.qk} == {0, 1}
    q, k = next(iter(aids.features.qk.values()))
    assert q.shape[0] == 4 and q.shape == k.shape
    # the tiny UNet has two up blocks: of the official blocks only up_blocks.1.resnets.0/1 exist
    assert set(aids.features.residuals) == {(f"up_blocks.1.resnets.{i}", s) for i in (0, 1) for s in (0, 1)}
    channels = tiny_pipe.unet.config.block_out_channels[0]
    assert aids.features.residuals[("up_blocks.1.resnets.1", 0)].shape == (4, channels, *latents.shape[-2:])


def test_pnp_feeds_the_recorded_block_outputs_to_the_next_layer(tiny_pipe, clip):
    """The layer after an injected ResNet block must receive, on every guidance branch of an injected
    step, exactly what it received in the inversion at that step, and not on later steps."""
    seen = []
    layer = tiny_pipe.unet.up_blocks[1].attentions[1]  # follows up_blocks.1.resnets.1
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        _edit(tiny_pipe, clip, temporal_aids=TemporalAidSettings(pnp=PnPAid(steps=1)))
    finally:
        handle.remove()
    # inversion visits steps 3, 2, 1, 0 (calls 0-3); the edit starts at step 0 (call 4, two branches)
    assert len(seen) == 8 and seen[4].shape[0] == 2 * seen[3].shape[0]
    for branch in seen[4].chunk(2):
        torch.testing.assert_close(branch, seen[3], rtol=0, atol=0)
    assert not torch.allclose(seen[5].chunk(2)[1], seen[2], atol=1e-3)  # step 1: not injected


def test_aids_run_in_windows(tiny_pipe, clip):
    aids = TemporalAidSettings(flow=FlowAid(levels=(0,)), pnp=PnPAid(steps=2))
    out = _edit(tiny_pipe, clip, temporal_aids=aids, window=Window(size=2, stride=1))
    assert out.latents.isfinite().all()


@pytest.mark.parametrize(("aids", "field"), [
    ({"flow": {"levels": "all"}}, "edit.temporal_aids.flow.levels"),
    ({"flow": {"level": [0]}}, "edit.temporal_aids.flow.level"),
    ({"pnp": {"steps": -1}}, "edit.temporal_aids.pnp.steps"),
    ({"optical": {}}, "edit.temporal_aids.optical"),
])
def test_temporal_aids_are_validated(tmp_path, aids, field):
    (tmp_path / "video").mkdir()
    config = {"prompt": "a cat", "video": {"path": "video", "frames": 2},
              "regions": [{"name": "cat", "masks": [0, 0, 8, 8], "prompt": "a cat"}], "edit": {"temporal_aids": aids}}
    with pytest.raises(SpecError) as info:
        spec_from_dict(config, tmp_path)
    assert info.value.field == field


def test_cli_edit_with_flow_and_pnp(tmp_path, tiny_model_dir):
    config_path = copy_example(tmp_path / "ex", tiny_model_dir, frames=4, output=str(tmp_path / "out"))
    config = yaml.safe_load(config_path.read_text())
    config["edit"] = {"steps": 3, "temporal_aids": {"flow": {"levels": [0, 1], "steps": 2}, "pnp": {"steps": 1}}}
    config_path.write_text(yaml.safe_dump(config))
    assert main(["edit", str(config_path)]) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["config"]["edit"]["temporal_aids"] == {"flow": {"levels": [0, 1], "steps": 2}, "pnp": {"steps": 1}}
