"""The Wan 2.1 backbone's pieces that stand today: the tiny offline Wan model (tests' stand-in for
Wan-AI/Wan2.1-T2V-1.3B-Diffusers), its tokenizer and the layout-modulated attention processors. The sampler (FlowSchedule) is tested in
test_flow_matching.py, the latent-frame token masks in test_layout.py."""

from __future__ import annotations

import json

import pytest
import torch

from videograin.cli import main
from videograin.testing import WORDS, t5_word_tokenizer


@pytest.fixture(scope="module")
def tiny_wan_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "tiny-wan"
    assert main(["make-tiny-model", str(folder), "--wan", "--quiet"]) == 0
    return folder


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
    from videograin.backbones.wan_processors import WanLayoutContext

    g = torch.Generator().manual_seed(seed)
    bits = torch.tensor([1, 1, 2, 0, 1, 2, 2, 0, 3, 1, 2, 0])  # 12 tokens: regions 1, 2, both (3), none
    text_bits = torch.tensor([0, 1, 1, 0, 2, 0])
    lam = strength * torch.rand(12, generator=g)
    return WanLayoutContext(bits, text_bits, lam, lam.flip(0), blocks=blocks)


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
    """Block 1's self- (after RoPE) or cross-attention under strength > 0 equals DESIGN.md's formula in
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
    want = reference_attention(q, k, v, context.bits, context.text_bits if cross else context.bits,
                               context.cross_strength if cross else context.self_strength)
    want = want.transpose(1, 2).flatten(2) @ attn.to_out[0].weight.double().T + attn.to_out[0].bias.double()
    assert (seen["output"].double() - want).abs().max() < 1e-5
    assert (want - attn.to_out[0](torch.nn.functional.scaled_dot_product_attention(
        *(y.float() for y in (q, k, v))).transpose(1, 2).flatten(2)).double()).abs().max() > 1e-3  # not plain
