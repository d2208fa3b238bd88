"""The Wan 2.1 backbone's pieces: the tiny offline Wan model (tests' stand-in for
Wan-AI/Wan2.1-T2V-1.3B-Diffusers), its tokenizer and the layout-modulated attention processors. The sampler (FlowSchedule) is tested in
test_flow_matching_sampling.py, the latent-frame token masks in test_layout.py."""

from __future__ import annotations

import json

import pytest
import torch

from videograin.cli import main
from videograin.method.layout import TemporalKeys
from videograin.testing import WORDS, t5_word_tokenizer


def test_make_tiny_model_writes_the_tiny_wan_model(tmp_path):
    assert main(["make-tiny-model", str(tmp_path / "wan"), "--wan", "--quiet"]) == 0
    assert json.loads((tmp_path / "wan" / "model_index.json").read_text())["_class_name"] == "WanPipeline"


def test_the_tiny_wan_model_is_a_wan_pipeline_diffusers_runs(tiny_wan_dir):
    """diffusers' own WanPipeline loads the folder and makes a 9-frame clip: 9 = 4·2 + 1 frames give
    3 latent frames (the VAE's 4x in time) of 4x4 latents (8x in space) = 2x2 tokens of 2x2 patches."""
    from diffusers import WanPipeline

    index = json.loads((tiny_wan_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["transformer"][1] == "WanTransformer3DModel"
    pipe = WanPipeline.from_pretrained(tiny_wan_dir)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    out = pipe("a red circle", num_frames=9, height=32, width=32, num_inference_steps=2, output_type="np",
               max_sequence_length=32, generator=torch.Generator().manual_seed(0),
               callback_on_step_end=lambda p, i, t, kw: seen.append(tuple(kw["latents"].shape)) or kw)
    assert out.frames.shape == (1, 9, 32, 32, 3)
    assert seen == [(1, 4, 3, 4, 4)] * 2  # (batch, channels, latent frames, h, w)


def test_the_t5_style_tokenizer_keeps_each_word_one_token_and_appends_eos():
    tokenizer = t5_word_tokenizer()
    ids = tokenizer("a red circle and a purple square").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁a", "▁red", "▁circle", "▁and", "▁a", "▁purple", "▁square", "</s>"]
    assert tokenizer.pad_token_id == 0 and tokenizer.model_max_length == 512
    spelled = tokenizer.convert_ids_to_tokens(tokenizer("zebra").input_ids)
    assert "zebra" not in WORDS and spelled[-1] == "</s>" and "".join(spelled[:-1]).lstrip("▁") == "zebra"


# ------------------------------------------------------------------------------ layout-modulated processors

@pytest.fixture(scope="module")
def tiny_transformer(tiny_wan_dir):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(tiny_wan_dir / "transformer").eval()


def _call(transformer, seed: int = 0):
    """One transformer call on 3 latent frames of 4x4 latents (N = 3·2·2 = 12 tokens) and 6 text tokens."""
    g = torch.Generator().manual_seed(seed)
    latents, text = torch.randn(1, 4, 3, 4, 4, generator=g), torch.randn(1, 6, 32, generator=g)
    with torch.no_grad():
        return transformer(latents, torch.tensor([700]), text, return_dict=False)[0]


def _context(strength: float, blocks=None, seed: int = 0):
    """A ModulationContext on 3 latent frames of 2x2 tokens with random size terms, so λ = c·(1 − S)
    differs from token to token."""
    from videograin.method.layout import Layout, LevelLayout
    from videograin.method.modulation import ModulationContext

    g = torch.Generator().manual_seed(seed)
    bits = torch.tensor([1, 1, 2, 0, 1, 2, 2, 0, 3, 1, 2, 0]).view(3, 4)  # 12 tokens: regions 1, 2, both (3), none
    text_bits = torch.tensor([0, 1, 1, 0, 2, 0])
    share = torch.rand(3, 4, generator=g)
    layout = Layout({4: LevelLayout(0, 2, 2, bits, share, share.flip(0))}, text_bits, 3, TemporalKeys(), one_grid=True)
    return ModulationContext(0, layout, strength, strength, blocks)


def _lambda(context, cross: bool) -> torch.Tensor:
    return context.strength(context.layout.grid(0), cross).flatten()


def test_processors_at_strength_zero_give_the_stock_output_and_are_restored(tiny_transformer):
    from videograin.backbones.wan_processors import layout_processors

    stock = _call(tiny_transformer)
    before = {name: type(p) for name, p in tiny_transformer.attn_processors.items()}
    with layout_processors(tiny_transformer, _context(0.0)):
        zero = _call(tiny_transformer)
    with layout_processors(tiny_transformer, _context(1.0, blocks=frozenset())):
        none_modulated = _call(tiny_transformer)  # every layer runs the processor it replaced
    with layout_processors(tiny_transformer, _context(1.0)):
        modulated = _call(tiny_transformer)
    assert (zero - stock).abs().max() < 1e-5 and torch.equal(none_modulated, stock)
    assert (modulated - stock).abs().max() > 1e-3  # the modulation reaches the output
    assert {name: type(p) for name, p in tiny_transformer.attn_processors.items()} == before
    assert torch.equal(_call(tiny_transformer), stock)


def _qkv64(attn, x, context, rotary_emb):
    """q, k, v (B, H, N, D) in float64 written out: linear maps, RMSNorm over all heads, then RoPE as a
    complex rotation of channel pairs (2i, 2i+1) by the angle whose cos/sin Wan stores at channel 2i."""
    def linear(layer, inputs):
        return inputs.double() @ layer.weight.double().T + layer.bias.double()

    def rms(norm, y):
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()

    source = x if context is None else context
    q, k, v = rms(attn.norm_q, linear(attn.to_q, x)), rms(attn.norm_k, linear(attn.to_k, source)), linear(attn.to_v, source)
    q, k, v = (y.unflatten(2, (attn.heads, -1)) for y in (q, k, v))  # (B, N, H, D)
    if rotary_emb is not None:
        cos, sin = (r.double()[..., 0::2] for r in rotary_emb)  # (1, N, 1, D/2): one angle per pair
        turn = torch.complex(cos, sin)
        q, k = (torch.view_as_real(torch.view_as_complex(y.unflatten(-1, (-1, 2)).contiguous()) * turn).flatten(-2)
                for y in (q, k))
    return (y.transpose(1, 2) for y in (q, k, v))


@pytest.mark.parametrize("layer", ["attn1", "attn2"])
def test_modulated_attention_equals_the_float64_formula_on_the_layers_own_qkv(tiny_transformer, layer):
    """Block 1's self- (after RoPE) or cross-attention under strength > 0 equals the ST-Layout formula in
    float64 (tests/test_attention.py's reference) on q/k/v computed here from the layer's weights and
    its own inputs, then the layer's output projection."""
    from test_attention import reference_attention

    from videograin.backbones.wan_processors import layout_processors

    attn = getattr(tiny_transformer.blocks[1], layer)
    seen = {}
    hook = attn.register_forward_hook(lambda module, args, output: seen.update(args=args, output=output))
    context = _context(0.8, seed=3)
    try:
        with layout_processors(tiny_transformer, context):
            _call(tiny_transformer, seed=1)
    finally:
        hook.remove()
    x, text, _, rotary_emb = (*seen["args"], None, None, None)[:4]
    assert (rotary_emb is not None) == (layer == "attn1") and (text is not None) == (layer == "attn2")
    q, k, v = _qkv64(attn, x, text, rotary_emb)
    cross = layer == "attn2"
    bits = context.layout.grid(1).bits.flatten()
    want = reference_attention(q, k, v, bits, context.layout.text_bits if cross else bits, _lambda(context, cross))
    want = want.transpose(1, 2).flatten(2) @ attn.to_out[0].weight.double().T + attn.to_out[0].bias.double()
    assert (seen["output"].double() - want).abs().max() < 1e-5
    assert (want - attn.to_out[0](torch.nn.functional.scaled_dot_product_attention(
        *(y.float() for y in (q, k, v))).transpose(1, 2).flatten(2)).double()).abs().max() > 1e-3  # not plain


# ------------------------------------------------------------------------------------- the Wan backbone

def _moving_square(frames: int = 9, size: int = 32) -> torch.Tensor:
    """(1, F, 32, 32) bool: a 12x12 square whose left edge moves 2 px a frame from x = 0."""
    masks = torch.zeros(1, frames, size, size, dtype=torch.bool)
    for f in range(frames):
        masks[0, f, 2:14, 2 * f : 2 * f + 12] = True
    return masks


def test_the_layout_puts_a_token_in_a_region_when_half_its_patch_is_covered_in_any_of_its_frames(wan_pipe):
    """32x32 frames -> 4x4 latents -> 2x2 tokens of 16x16 pixels. The square (rows 2-13: 12 of a top
    token's 16 rows) covers >= half of a top-right token's 16 columns from frame 6 (x 12..23: columns
    16..23 = 8), so latent frame 0 (frame 0) and 1 (frames 1-4) hold only the top-left token, latent
    frame 2 (frames 5-8) both top tokens. Size terms: self over all 12 tokens (4 in the region), cross
    per latent frame (2 of 4 in frame 2); a token in no region shares none."""
    from videograin.backbones.wan import WanBackbone

    backbone = WanBackbone(wan_pipe)
    layout = backbone.layout(_moving_square(), [(1, 3)], (4, 4), TemporalKeys())
    (level,) = layout.levels.values()
    assert (level.height, level.width, layout.num_frames) == (2, 2, 3)
    assert level.bits.tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert torch.allclose(level.self_share[0], torch.tensor([4 / 12, 0, 0, 0]))  # no region: shares none
    assert torch.allclose(level.cross_share[2], torch.tensor([2 / 4, 2 / 4, 0, 0]))
    assert layout.text_bits.shape == (512,) and layout.text_bits[1:3].tolist() == [1, 1] and layout.text_bits.sum() == 2



def test_a_vae_that_halves_time_still_takes_4k_plus_1_frames_and_maps_pairs_of_frames_to_latent_frames():
    """AutoencoderKLWan encodes frame 0, then chunks of 4 frames, whatever its compression of time: with
    one temporal downsample (x2, as the Wan toy's VAE) 7 frames encode to 3 latent frames that decode
    to 5 frames (the last two dropped), so the backbone refuses 7 and takes 9 (-> 5 latent frames:
    frame 0, then frames 1-2, 3-4, 5-6, 7-8)."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKLWan
    from diffusers.configuration_utils import FrozenDict

    from videograin.backbones.wan import WanBackbone

    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    with torch.no_grad():
        z7 = vae.encode(torch.zeros(1, 3, 7, 16, 16)).latent_dist.mean
        assert z7.shape[2] == 3 and vae.decode(z7).sample.shape[2] == 5
        assert vae.encode(torch.zeros(1, 3, 9, 16, 16)).latent_dist.mean.shape[2] == 5
    pipe = SimpleNamespace(tokenizer=None, vae=vae,
                           transformer=SimpleNamespace(config=FrozenDict(patch_size=(1, 2, 2), num_layers=1)),
                           scheduler=SimpleNamespace(config=FrozenDict(num_train_timesteps=1000)))
    backbone = WanBackbone(pipe)
    assert (backbone.capabilities.vae_factor, backbone.capabilities.temporal_factor) == (2, 2)
    with pytest.raises(ValueError, match="7 frames: this model takes 4k \\+ 1 frames .* use 5 or 9"):
        backbone.check_size(7, 16, 16)
    backbone.check_size(9, 16, 16)
    masks = torch.zeros(1, 9, 4, 4, dtype=torch.bool)
    masks[0, 4, 0, 0] = masks[0, 7, 1, 1] = True  # frame 4 is in latent frame 2, frame 7 in latent frame 4
    latent = backbone.latent_frames(masks)
    assert latent.shape == (1, 5, 4, 4)
    assert latent[0].flatten(1).nonzero().tolist() == [[2, 0], [4, 5]]

def test_region_spans_and_the_regional_embedding_swap_on_umt5_tokens(wan_pipe):
    """T5 has no start token: "a blue square" is tokens 4..6 of "a red circle and a blue square"; its
    span's embeddings are those of the region prompt encoded alone, and the padding is zero."""
    from videograin.backbones.wan import WanBackbone
    from videograin.method.tokens import region_token_spans

    backbone = WanBackbone(wan_pipe)
    prompt, regions = "a red circle and a blue square", ["a red circle", "a blue square"]
    spans = region_token_spans(backbone.tokenizer, prompt, regions)
    assert spans == [(0, 3), (4, 7)]
    embeds = backbone.regional_prompt_embeds(prompt, regions, spans)
    alone = backbone.encode_prompt("a blue square")
    whole = backbone.encode_prompt(prompt)
    assert embeds.shape == (1, 512, 32) and torch.equal(embeds[:, 4:7], alone[:, :3])
    assert torch.equal(embeds[:, 3], whole[:, 3]) and not torch.equal(whole[:, 4:7], alone[:, :3])
    assert embeds[:, 8:].abs().max() == 0  # after the 7 words and the end token


def test_flow_inversion_then_sampling_returns_the_source_latents_to_first_order(wan_pipe):
    """Euler inversion evaluates the velocity at the start of each step, sampling at its end, so the
    round trip is exact only as the steps shrink: its error must fall like 1/steps (first order)."""
    from videograin.backbones.wan import WanBackbone
    from videograin.method.sampling import invert_latents, sample_latents

    backbone = WanBackbone(wan_pipe)
    source = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = backbone.encode_prompt("two blue squares")
    errors = {}
    for steps in (10, 40):
        schedule = backbone.schedule(steps)
        denoise = backbone.denoise_fn(cond, None, 1.0, 3, schedule)
        noise = invert_latents(denoise, source, schedule)[0]
        errors[steps] = ((sample_latents(denoise, noise, schedule) - source).norm() / source.norm()).item()
    assert errors[40] < 0.02 and errors[40] < errors[10] / 2.5, errors  # measured: 0.037 and 0.009


def test_the_edit_keeps_latents_outside_the_edited_regions_and_modulation_raises_prompt_mass(wan_pipe):
    """Latent blend: with a static mask on the left half, the edited latents of the right half equal
    the source's (the trajectory's clean end) exactly, the left half changes. Modulation: on step 0,
    the cross-attention mass on the region prompt's words, computed from block 0's q and k with the
    step's strengths, rises for the region's tokens and falls for the others."""
    from videograin.backbones.wan_processors import wan_qkv
    from videograin.method.attention import layout_attention

    video = torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(1, 9, 32, 32, dtype=torch.bool)
    masks[..., :16] = True
    source = wan_pipe.encode_frames(wan_pipe.prepare_video(video, 32, 32) * 2 - 1)
    seen = []
    attn = wan_pipe.transformer.blocks[0].attn2

    def record(module, args, output):
        context = getattr(module.processor, "context", None)
        if context is not None and not seen:
            seen.append((wan_qkv(module, args[0], args[1], None), context))

    hook = attn.register_forward_hook(record)
    try:
        out = wan_pipe(video, masks, "a red circle and a black background", ["a red circle"], height=32, width=32,
                       num_inference_steps=3, guidance_scale=3.0, output_type="latent")
    finally:
        hook.remove()
    edited = out.frames[0]
    assert edited.shape == source.shape == (3, 4, 4, 4)
    assert torch.equal(edited[..., 2:], source[..., 2:]) and (edited[..., :2] - source[..., :2]).abs().max() > 1e-3
    (q, k, _), context = seen[0]
    bits, text_bits, strength = context.layout.grid(0).bits.flatten(), context.layout.text_bits, _lambda(context, True)
    words = text_bits.float()[None, None, :, None].expand(*k.shape[:3], 1)  # 1 on the region's words
    left = bits == 1
    masses = [layout_attention(q, k, words, bits, text_bits, lam)[0, :, :, 0]  # (H, N)
              for lam in (torch.zeros_like(strength), strength)]
    assert strength.min() > 0  # σ ≈ 1 on step 0: ξ ≈ 1
    plain, modulated = masses
    # 3 of 512 text tokens are the region's words: masses are small, their ratios large
    assert modulated[:, left].mean() > 1.5 * plain[:, left].mean()  # the region's tokens: towards its words
    assert modulated[:, ~left].mean() < plain[:, ~left].mean() / 1.5  # the others: away from them


def test_videograin_edit_on_the_tiny_wan_model_writes_the_outputs_and_checks_frames_first(tiny_wan_dir, tmp_path):
    import yaml

    from videograin.toy import DEMO as TOY_EXAMPLE

    config = {"model": str(tiny_wan_dir), "video": {"path": str(TOY_EXAMPLE / "frames"), "frames": 9},
              "prompt": "a purple circle and a yellow triangle on a black background",
              "source_prompt": "two blue squares on a black background",
              "regions": [{"name": "left", "prompt": "a yellow triangle", "masks": {"box": [0, 5, 14, 19]}},
                          {"name": "right", "prompt": "a purple circle", "masks": {"box": [18, 12, 32, 26]}}],
              "edit": {"steps": 3}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["edit", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["frames"] == 9 and len(list((tmp_path / "out" / "frames").glob("*.png"))) == 9
    assert {"edited.mp4", "comparison.png", "masks_overlay.mp4"} <= {p.name for p in (tmp_path / "out").iterdir()}
    for field, change in [("video.frames", {"video": {**config["video"], "frames": 12}}),
                          ("edit.temporal_aids", {"edit": {"steps": 3, "temporal_aids": {"pnp": {"steps": 2}}}}),
                          ("video", {"video": {**config["video"], "width": 40, "height": 32}})]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, **change}))
        assert main(["edit", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad"), "--quiet"]) == 2, field
        assert not (tmp_path / "bad").exists()
