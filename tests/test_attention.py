"""ST-Layout attention (VideoGrain, arXiv:2502.17258, §3.4) against float64 references written here.

The references implement the paper's modulation literally (positive pairs raised towards the row
maximum, negative pairs pushed towards the row minimum),

    s'[x,y] = s + λ_x·( R·(rowmax − s) − (1−R)·(s − rowmin) ),   R = (q_bits[x] & k_bits[y]) ≠ 0,

with plain float64 tensor ops, and never call the library's math.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

import videograin.method.attention as vga
from videograin.backbones.sd_processors import LayoutAttnProcessor, StepContext, layout_processors
from videograin.method.attention import layout_attention
from videograin.method.layout import TemporalKeys, build_layout
from videograin.method.modulation import ModulationContext

ATOL = 1e-5
B, H, N, D = 2, 3, 150, 16
L_TEXT = 77
FRAMES = 3
# instance (bit 0), a part inside it (bits 0+1), a separate region (bit 2), nothing (0)
SELF_BIT_VALUES = torch.tensor([0, 0b001, 0b011, 0b100, 0b101])


# ----------------------------------------------------------------------------------------------
# float64 references


def reference_attention(q, k, v, q_bits, k_bits, strength, scale=None) -> torch.Tensor:
    """The modulation formula in float64. q: (B,H,Nq,D); k,v: (B,H,Nk,D); bits (N,) or (B,N);
    strength scalar, (Nq,) or (B,Nq)."""
    q, k, v = q.double(), k.double(), v.double()
    b, _, n_q, d = q.shape
    n_k = k.shape[-2]
    scale = d**-0.5 if scale is None else scale
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    qb = torch.as_tensor(q_bits).reshape(-1, n_q).expand(b, n_q)
    kb = torch.as_tensor(k_bits).reshape(-1, n_k).expand(b, n_k)
    lam = torch.broadcast_to(torch.as_tensor(strength, dtype=torch.float64), (b, n_q))
    r = ((qb[:, :, None] & kb[:, None, :]) != 0).double()[:, None]  # (B,1,Nq,Nk)
    row_max = s.max(-1, keepdim=True).values
    row_min = s.min(-1, keepdim=True).values
    s_mod = s + lam[:, None, :, None] * (r * (row_max - s) - (1 - r) * (s - row_min))
    e = torch.exp(s_mod - s_mod.max(-1, keepdim=True).values)
    p = e / e.sum(-1, keepdim=True)
    return p @ v


def plain_attention(q, k, v, scale=None) -> torch.Tensor:
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    e = torch.exp(q @ k.transpose(-1, -2) * scale)
    return (e / e.sum(-1, keepdim=True)) @ v


def random_bits(shape, values, generator) -> torch.Tensor:
    return values[torch.randint(len(values), shape, generator=generator)]


def text_bits_random(batch, generator) -> torch.Tensor:
    """(batch, 77): most tokens 0, a few carry a region's bit."""
    bits = torch.zeros(batch, L_TEXT, dtype=torch.int64)
    bits[:, 2:4] = 0b001
    bits[:, 5] = 0b010
    bits[:, 7:9] = 0b100
    flip = torch.rand(batch, L_TEXT, generator=generator) < 0.05
    return torch.where(flip, random_bits((batch, L_TEXT), SELF_BIT_VALUES, generator), bits)


def make_case(kind: str, strength_kind: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_k = N if kind == "self" else L_TEXT
    q = torch.randn(B, H, N, D, generator=g)
    k = torch.randn(B, H, n_k, D, generator=g)
    v = torch.randn(B, H, n_k, D, generator=g)
    per_batch = strength_kind == "batch"
    q_bits = random_bits((B, N) if per_batch else (N,), SELF_BIT_VALUES, g)
    if kind == "self":
        k_bits = random_bits((B, n_k) if per_batch else (n_k,), SELF_BIT_VALUES, g)
    else:
        k_bits = text_bits_random(B, g) if per_batch else text_bits_random(1, g)[0]
    if strength_kind == "float":
        strength = 0.37
    elif strength_kind == "rows":
        strength = torch.rand(N, generator=g)
    else:
        strength = torch.rand(B, N, generator=g)
    return q, k, v, q_bits, k_bits, strength


CASES = [(kind, sk) for kind in ("self", "cross") for sk in ("float", "rows", "batch")]


# ----------------------------------------------------------------------------------------------
# layout_attention


@pytest.mark.parametrize("kind,strength_kind", CASES)
def test_layout_attention_matches_float64_reference(kind, strength_kind):
    q, k, v, q_bits, k_bits, strength = make_case(kind, strength_kind)
    got = layout_attention(q, k, v, q_bits, k_bits, strength)
    want = reference_attention(q, k, v, q_bits, k_bits, strength)
    assert got.shape == q.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)
    # the modulation does something on these inputs (the test would catch a no-op)
    assert (want - plain_attention(q, k, v)).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["dense", "grouped", "flex"])
@pytest.mark.parametrize("kind,strength_kind", CASES)
def test_every_path_matches_float64_reference_with_uneven_blocks(monkeypatch, method, kind, strength_kind):
    """Tiny block sizes force many query and key blocks that end mid-group and mid-row, and one head
    per block: each path must still equal the formula."""
    monkeypatch.setattr(vga, "DENSE_CHUNK_ELEMENTS", 7 * H * B * (N if kind == "self" else L_TEXT) + 5)
    monkeypatch.setattr(vga, "AUTO_DENSE_ELEMENTS", 37 * 23)  # 37 query rows x 23 keys per block
    monkeypatch.setattr(vga, "ROW_STAT_BLOCK_ELEMENTS", B * H * 29 * 23)  # 29 rows x 23 keys
    monkeypatch.setattr(vga, "MIN_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(vga, "MIN_KEY_BLOCK", 23)
    monkeypatch.setattr(vga, "HEAD_BLOCK_ELEMENTS", N * D)
    q, k, v, q_bits, k_bits, strength = make_case(kind, strength_kind, seed=3)
    got = layout_attention(q, k, v, q_bits, k_bits, strength, method=method)
    torch.testing.assert_close(got.double(), reference_attention(q, k, v, q_bits, k_bits, strength), atol=ATOL, rtol=0)


def test_fast_paths_handle_strength_above_one_and_a_single_group():
    """λ > 1 flips the sign of (1 − λ)·s (the online kernel's running max must follow) and keys that
    all share one bitmask leave one side of the softmax empty."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 64, 8, generator=g) for _ in range(3))
    q_bits = random_bits((64,), SELF_BIT_VALUES, g)
    for k_bits in (random_bits((64,), SELF_BIT_VALUES, g), torch.full((64,), 0b010)):
        want = reference_attention(q, k, v, q_bits, k_bits, 1.6)
        for method in ("grouped", "flex"):
            got = layout_attention(q, k, v, q_bits, k_bits, 1.6, method=method)
            torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)


def test_auto_takes_a_fast_path_on_large_inputs(monkeypatch):
    calls = []
    monkeypatch.setattr(vga, "AUTO_DENSE_ELEMENTS", 1000)
    original = vga._attention_with_lse
    monkeypatch.setattr(vga, "_attention_with_lse", lambda *a: calls.append(1) or original(*a))
    q, k, v, q_bits, k_bits, strength = make_case("self", "rows")
    got = layout_attention(q, k, v, q_bits, k_bits, strength)
    assert calls, "auto did not take the grouped path"
    torch.testing.assert_close(got.double(), reference_attention(q, k, v, q_bits, k_bits, strength), atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["grouped", "flex"])
def test_half_precision_inputs_match_the_formula_to_output_rounding(method):
    """bf16 q, k, v: the output is bf16 and as close to the float64 formula on the same (rounded)
    inputs as rounding the output to bf16 allows (on the CPU both paths compute in float32)."""
    q, k, v, q_bits, k_bits, strength = make_case("self", "batch", seed=4)
    q, k, v = (x.mul(3).bfloat16() for x in (q, k, v))  # larger scores: bf16 statistics would show
    got = layout_attention(q, k, v, q_bits, k_bits, strength, method=method)
    want = reference_attention(q, k, v, q_bits, k_bits, strength)
    assert got.dtype == torch.bfloat16
    rounding = (want - want.bfloat16().double()).abs().max()
    assert (got.double() - want).abs().max() <= 2 * rounding + 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled FlexAttention, Triton)")
@pytest.mark.parametrize("method", ["triton", "flex"])
@pytest.mark.parametrize("dim", [40, 80, 160])
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_gpu_kernels_in_fp16_match_the_formula(method, dim, kind):
    """The GPU paths (triton: the default; flex) on fp16 inputs at SD 1.5's head dims, self-attention
    (N keys) and cross-attention (77 keys), per-batch bits, autotuned tiles; float32 statistics keep
    them within fp16 output rounding of the float64 formula."""
    g = torch.Generator().manual_seed(7)
    n, n_k = 1000, (1000 if kind == "self" else L_TEXT)
    q, k, v = (torch.randn(2, 8, m, dim, generator=g).half().cuda() for m in (n, n_k, n_k))
    q_bits = random_bits((2, n), SELF_BIT_VALUES, g)
    k_bits = random_bits((2, n_k), SELF_BIT_VALUES, g) if kind == "self" else text_bits_random(2, g)
    strength = torch.rand(2, n, generator=g)
    got = layout_attention(q, k, v, q_bits.cuda(), k_bits.cuda(), strength.cuda(), method=method)
    want = reference_attention(q.cpu(), k.cpu(), v.cpu(), q_bits, k_bits, strength)
    assert got.dtype == torch.float16
    rounding = (want - want.half().double()).abs().max()
    assert (got.cpu().double() - want).abs().max() <= 4 * rounding


NO_TRITON = "the Triton kernel's tests need triton (the test extra on Linux x86_64)"


def triton_kernel():
    """The Triton kernel: compiled on CUDA, else run by Triton's interpreter on the CPU (float32)."""
    pytest.importorskip("triton", reason=NO_TRITON)
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1 (conftest.py sets it where /dev/nvidiactl is absent)")
    from videograin.method.triton_layout import triton_layout_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return triton_layout_attention, device


@pytest.mark.parametrize("kind,strength_kind", CASES)
def test_triton_kernel_matches_float64_reference_with_uneven_tiles(kind, strength_kind):
    """Tiles of 32 queries x 16 keys end mid-group and past the last row and key (N = 150, 77 keys,
    head dim 16 is one full tile); per-batch bits and strengths."""
    kernel, device = triton_kernel()
    q, k, v, q_bits, k_bits, strength = make_case(kind, strength_kind, seed=8)
    lam = torch.as_tensor(strength, dtype=torch.float32)
    lam = lam.expand(N).unsqueeze(0) if lam.ndim < 2 else lam
    q_bits2 = q_bits if q_bits.ndim == 2 else q_bits.unsqueeze(0)
    got = kernel(*(x.to(device) for x in (q, k, v, q_bits2, k_bits, lam)), D**-0.5, block=(32, 16))
    torch.testing.assert_close(got.cpu().double(), reference_attention(q, k, v, q_bits, k_bits, strength), atol=ATOL, rtol=0)


@pytest.mark.parametrize("k_bits_kind,n", [("runs", 200), ("runs", 192), ("one_group", 192)])
def test_triton_kernel_on_one_value_tiles_strength_above_one_and_a_padded_head_dim(k_bits_kind, n):
    """Keys in long runs of one bitmask value (most tiles take the one-product branch) or all in one
    group (one side of the softmax empty), λ up to 1.6 (the sign of (1 − λ)·s flips), head dim 40
    padded to 64; 192 keys fill the 32-key tiles (no masking), 200 leave a tail."""
    kernel, device = triton_kernel()
    g = torch.Generator().manual_seed(9)
    dim = 40
    q, k, v = (torch.randn(1, 2, n, dim, generator=g) for _ in range(3))
    q_bits = random_bits((1, n), SELF_BIT_VALUES, g)
    runs = SELF_BIT_VALUES[torch.arange(n) * len(SELF_BIT_VALUES) // n]
    k_bits = runs[torch.randperm(n, generator=g)] if k_bits_kind == "runs" else torch.full((n,), 0b010)
    lam = torch.rand(1, n, generator=g) * 1.6
    got = kernel(*(x.to(device) for x in (q, k, v, q_bits, k_bits, lam)), dim**-0.5, block=(64, 32))
    want = reference_attention(q, k, v, q_bits, k_bits, lam)
    torch.testing.assert_close(got.cpu().double(), want, atol=ATOL, rtol=0)


H100_SHARED_MEMORY = 227 * 1024  # bytes one block may use on sm_90


def test_triton_kernel_compiles_for_hopper_in_fp16_with_every_tile_config(tmp_path):
    """The interpreter runs the kernel's arithmetic, not Triton's compiler (which, say, rejects a name
    bound to two shapes in the two branches of an if): compile every autotuned tile config for sm_90 in
    fp16 at SD 1.5's smallest and largest head dims (40; 160, padded to 256), and check each fits an
    H100's shared memory. Needs no GPU; runs in a subprocess without TRITON_INTERPRET."""
    pytest.importorskip("triton", reason=NO_TRITON)
    script = Path(__file__).with_name("compile_triton_kernel.py")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    command = [sys.executable, str(script), "90", "fp16", "40", "160"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(compiled) == 7 + 2 + 2  # every config for head dim 40, two for 160; the first with a key tail too
    assert all(0 < c["shared"] <= H100_SHARED_MEMORY for c in compiled), compiled


def test_block_sizes_follow_free_memory(monkeypatch):
    """With little free memory the dense path holds smaller score chunks (never more than
    FREE_MEMORY_SHARE of it) and still equals the formula; with plenty it uses its whole cap."""
    q, k, v, q_bits, k_bits, strength = make_case("self", "rows", seed=6)
    sizes = []
    original = vga.modulated_scores
    monkeypatch.setattr(vga, "modulated_scores", lambda *a: sizes.append(original(*a).numel()) or original(*a))
    monkeypatch.setattr(vga, "MIN_BLOCK_ELEMENTS", 1)
    free = 4 * B * H * N * 40 * 16  # bytes: a sixteenth of it holds 40 float32 score rows
    monkeypatch.setattr(vga, "free_memory", lambda device: free)
    got = layout_attention(q, k, v, q_bits, k_bits, strength, method="dense")
    torch.testing.assert_close(got.double(), reference_attention(q, k, v, q_bits, k_bits, strength), atol=ATOL, rtol=0)
    assert len(sizes) == math.ceil(N / 40) and max(sizes) * 4 <= free * vga.FREE_MEMORY_SHARE
    monkeypatch.setattr(vga, "free_memory", lambda device: 2**40)
    assert vga.block_elements(vga.DENSE_CHUNK_ELEMENTS, q.device) == vga.DENSE_CHUNK_ELEMENTS


def test_auto_method():
    q, k, v, *_ = make_case("self", "rows")
    assert vga.auto_method(q, k, v) == "dense"  # all scores fit one block
    big = torch.zeros(1, 8, 4096, 8)
    assert vga.auto_method(big, big, big) == "grouped"
    assert vga.auto_method(big.requires_grad_(), big, big) == "dense"  # ReAtCo's gradients


def test_layout_attention_explicit_scale():
    q, k, v, q_bits, k_bits, strength = make_case("self", "rows", seed=3)
    got = layout_attention(q, k, v, q_bits, k_bits, strength, scale=0.07)
    want = reference_attention(q, k, v, q_bits, k_bits, strength, scale=0.07)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind,strength_kind", [("self", "batch"), ("self", "rows"), ("cross", "float")])
def test_layout_attention_chunked_queries(monkeypatch, kind, strength_kind):
    q, k, v, q_bits, k_bits, strength = make_case(kind, strength_kind, seed=1)
    n_k = k.shape[-2]
    rows_per_chunk = 7  # 150 = 21·7 + 3: uneven last chunk
    monkeypatch.setattr(vga, "DENSE_CHUNK_ELEMENTS", B * H * n_k * rows_per_chunk + 5)
    calls = []
    original = vga.modulated_scores

    def spy(q_chunk, *args, **kwargs):
        calls.append(q_chunk.shape[2])
        return original(q_chunk, *args, **kwargs)

    monkeypatch.setattr(vga, "modulated_scores", spy)
    got = layout_attention(q, k, v, q_bits, k_bits, strength)
    assert calls == [rows_per_chunk] * 21 + [3]
    want = reference_attention(q, k, v, q_bits, k_bits, strength)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_layout_attention_strength_zero_is_softmax_attention(kind):
    q, k, v, q_bits, k_bits, _ = make_case(kind, "float", seed=2)
    got = layout_attention(q, k, v, q_bits, k_bits, 0.0)
    want = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(D), -1) @ v.double()
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("positive", [[17], [0, 5, 6, 40, 77, 99]])
def test_layout_attention_strength_one_known_answer(positive):
    """λ = 1: every positive key's score becomes the row max, every negative key's the row min, so
    out = (P·e^max·mean_P v + Q·e^min·mean_Q v) / (P·e^max + Q·e^min)."""
    g = torch.Generator().manual_seed(5)
    n_k = 100
    q = torch.randn(1, 2, 30, 8, generator=g)
    k = torch.randn(1, 2, n_k, 8, generator=g)
    v = torch.randn(1, 2, n_k, 8, generator=g)
    q_bits = torch.full((30,), 0b011)
    k_bits = torch.full((n_k,), 0b100)  # negative
    k_bits[::3] = 0  # negative, no region
    k_bits[positive] = torch.tensor([0b001, 0b010, 0b111])[torch.arange(len(positive)) % 3]
    got = layout_attention(q, k, v, q_bits, k_bits, 1.0).double()

    mask = torch.zeros(n_k, dtype=torch.bool)
    mask[positive] = True
    n_pos, n_neg = int(mask.sum()), int((~mask).sum())
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8)  # (1,2,30,n_k)
    w_max = n_pos * torch.exp(s.max(-1).values)[..., None]  # (1,2,30,1)
    w_min = n_neg * torch.exp(s.min(-1).values)[..., None]
    mean_pos = v.double()[:, :, mask].mean(2, keepdim=True)  # (1,2,1,8)
    mean_neg = v.double()[:, :, ~mask].mean(2, keepdim=True)
    want = (w_max * mean_pos + w_min * mean_neg) / (w_max + w_min)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_layout_attention_no_region_query_at_strength_one_averages_values():
    """A query in no region (bits 0) at λ = 1: every key goes to the row min -> uniform weights."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 20, 8, generator=g) for _ in range(3))
    k_bits = random_bits((20,), SELF_BIT_VALUES, g)
    got = layout_attention(q, k, v, torch.zeros(20, dtype=torch.int64), k_bits, 1.0)
    want = v.double().mean(2, keepdim=True).expand_as(got)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------
# the processor on the tiny UNet


@pytest.fixture(scope="module")
def unet(tiny_model_dir):
    model = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet").eval()
    model.set_attn_processor(AttnProcessor2_0())
    return model


@pytest.fixture(scope="module")
def unet_inputs():
    g = torch.Generator().manual_seed(11)
    latents = torch.randn(FRAMES, 4, 16, 16, generator=g)
    text = torch.randn(FRAMES, L_TEXT, 32, generator=g)
    return latents, torch.tensor(500), text


def self_module(unet):
    return unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1


def cross_module(unet):
    return unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2


@torch.no_grad()
def test_processor_without_context_reproduces_stock_unet(unet, unet_inputs):
    latents, t, text = unet_inputs
    stock = unet(latents, t, encoder_hidden_states=text).sample
    with layout_processors(unet):
        assert all(isinstance(p, LayoutAttnProcessor) for p in unet.attn_processors.values())
        ours = unet(latents, t, encoder_hidden_states=text).sample
        ctx = StepContext(num_frames=FRAMES, modulation=ModulationContext(0), temporal=TemporalKeys("per_frame"))
        per_frame = unet(latents, t, encoder_hidden_states=text, cross_attention_kwargs={"videograin": ctx}).sample
    torch.testing.assert_close(ours, stock, atol=ATOL, rtol=0)
    torch.testing.assert_close(per_frame, stock, atol=ATOL, rtol=0)
    # (test_full_frame_self_attention_module shows the context does change attention when full)


def _linear64(layer, x):
    return F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())


def _split_heads(x, heads):  # (B, N, C) -> (B, H, N, C/H)
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge_heads(x):  # (B, H, N, d) -> (B, N, H·d)
    return x.transpose(1, 2).flatten(2)


def full_frame_reference(attn, hidden, frames, modulate=None):
    """Hand-written spatio-temporal self-attention in float64: each branch's F frames form one
    sequence of F·n tokens. ``modulate(branch) -> (bits (F·n,), lam (F·n,))`` or None."""
    heads = attn.heads
    branches = hidden.shape[0] // frames
    n = hidden.shape[1]
    q, k, v = (_linear64(lin, hidden) for lin in (attn.to_q, attn.to_k, attn.to_v))  # (B·F, n, C)
    seq = lambda x: _split_heads(x.reshape(branches, frames * n, -1), heads)  # (branches, H, F·n, d)
    q, k, v = seq(q), seq(k), seq(v)
    outs = []
    for b in range(branches):
        mod = modulate(b) if modulate is not None else None
        if mod is None:
            outs.append(plain_attention(q[b : b + 1], k[b : b + 1], v[b : b + 1]))
        else:
            bits, lam = mod
            outs.append(reference_attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], bits, bits, lam))
    out = _merge_heads(torch.cat(outs)).reshape(branches * frames, n, -1)
    return _linear64(attn.to_out[0], out)


@torch.no_grad()
def test_full_frame_self_attention_module(unet):
    attn = self_module(unet)
    g = torch.Generator().manual_seed(12)
    hidden = torch.randn(FRAMES, 64, attn.to_q.in_features, generator=g)
    with layout_processors(unet):
        got = attn(hidden, videograin=StepContext(num_frames=FRAMES, modulation=ModulationContext(0), temporal=TemporalKeys("full")))
        per_frame = attn(hidden)
    want = full_frame_reference(attn, hidden, FRAMES)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)
    assert (per_frame.double() - want).abs().max() > 1e-4  # frames really see each other


def random_masks(num_frames, size, generator) -> torch.Tensor:
    """(3, F, size, size) bool: an instance, a part inside it, a separate region; moving per frame."""
    masks = torch.zeros(3, num_frames, size, size, dtype=torch.bool)
    for f in range(num_frames):
        y, x = (int(i) for i in torch.randint(0, size // 3, (2,), generator=generator))
        hh, ww = (int(i) for i in torch.randint(size // 3, size // 2, (2,), generator=generator))
        masks[0, f, y : y + hh, x : x + ww] = True
        masks[1, f, y + hh // 4 : y + hh // 2, x + ww // 4 : x + 3 * ww // 4] = True  # part of 0
        masks[2, f, size - 1 - size // 4 - f * 4 : size - 1 - f * 4, size // 2 : size - 2] = True
    return masks


@pytest.fixture(scope="module")
def layout():
    g = torch.Generator().manual_seed(13)
    masks = random_masks(FRAMES, 128, g)
    return build_layout(masks, [(2, 4), (5, 6), None], latent_size=(16, 16), num_levels=2)


def self_share_brute_force(bits_flat: torch.Tensor) -> torch.Tensor:
    r = (bits_flat[:, None] & bits_flat[None, :]) != 0
    return r.double().sum(1) / bits_flat.numel()


@torch.no_grad()
def test_modulated_self_attention_module(unet, layout):
    attn = self_module(unet)
    n = 256  # level 0: 16×16 tokens per frame
    bits = layout.at(n).bits
    assert bits.shape == (FRAMES, n)
    assert len(torch.unique(bits)) >= 4  # none, instance, part, separate region all present
    g = torch.Generator().manual_seed(14)
    hidden = torch.randn(2 * FRAMES, n, attn.to_q.in_features, generator=g)
    ctx = StepContext(num_frames=FRAMES, modulation=ModulationContext(0, layout, self_scale=0.4), temporal=TemporalKeys("full"),
                      cond_branch=1)
    with layout_processors(unet):
        got = attn(hidden, videograin=ctx)

    flat = bits.flatten()  # frame-major, the order of the full-frame sequence
    lam = 0.4 * (1 - self_share_brute_force(flat))
    want = full_frame_reference(attn, hidden, FRAMES, modulate=lambda b: (flat, lam) if b == 1 else None)
    plain = full_frame_reference(attn, hidden, FRAMES)
    torch.testing.assert_close(got[:FRAMES].double(), plain[:FRAMES], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[FRAMES:].double(), want[FRAMES:], atol=ATOL, rtol=0)
    assert (want[FRAMES:] - plain[FRAMES:]).abs().max() > 1e-3


@torch.no_grad()
def test_modulated_self_attention_module_sparse_causal(unet):
    """Sparse-causal keys: frame f attends to frames {0, f−1}; S_x is the share of those keys."""
    frames, n = 4, 256
    masks = random_masks(frames, 128, torch.Generator().manual_seed(15))
    layout = build_layout(masks, [None, None, None], (16, 16), 2, temporal=TemporalKeys("sparse_causal"))
    attn = self_module(unet)
    bits = layout.at(n).bits
    hidden = torch.randn(2 * frames, n, attn.to_q.in_features, generator=torch.Generator().manual_seed(16))
    ctx = StepContext(num_frames=frames, modulation=ModulationContext(0, layout, self_scale=0.3), temporal=TemporalKeys("sparse_causal"),
                      cond_branch=0)
    with layout_processors(unet):
        got = attn(hidden, videograin=ctx)

    heads = attn.heads
    q, k, v = (_split_heads(_linear64(lin, hidden), heads) for lin in (attn.to_q, attn.to_k, attn.to_v))
    outs = []
    for row in range(2 * frames):
        branch, f = divmod(row, frames)
        kf = sorted({0, max(f - 1, 0)})
        base = branch * frames
        ks = torch.cat([k[base + j] for j in kf], 1)[None]
        vs = torch.cat([v[base + j] for j in kf], 1)[None]
        if branch == 0:
            k_bits = torch.cat([bits[j] for j in kf])
            share = ((bits[f][:, None] & k_bits[None, :]) != 0).double().mean(1)
            outs.append(reference_attention(q[row : row + 1], ks, vs, bits[f], k_bits, 0.3 * (1 - share)))
        else:
            outs.append(plain_attention(q[row : row + 1], ks, vs))
    want = _linear64(attn.to_out[0], _merge_heads(torch.cat(outs)))
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)


@torch.no_grad()
def test_unmodulated_level_runs_plain(unet, layout):
    """``levels`` excludes level 0: the level-0 module computes plain full-frame attention."""
    attn = self_module(unet)
    hidden = torch.randn(2 * FRAMES, 256, attn.to_q.in_features, generator=torch.Generator().manual_seed(17))
    ctx = StepContext(
        num_frames=FRAMES, modulation=ModulationContext(0, layout, self_scale=0.4, levels=frozenset({1})), cond_branch=1
    )
    with layout_processors(unet):
        got = attn(hidden, videograin=ctx)
    torch.testing.assert_close(got.double(), full_frame_reference(attn, hidden, FRAMES), atol=ATOL, rtol=0)


@torch.no_grad()
def test_modulated_cross_attention_module(unet, layout):
    attn = cross_module(unet)
    n = 256
    bits = layout.at(n).bits  # (F, n)
    text_bits = layout.text_bits
    expected_text_bits = torch.zeros(L_TEXT, dtype=torch.int64)
    expected_text_bits[2:4] = 0b001
    expected_text_bits[5] = 0b010
    assert torch.equal(text_bits, expected_text_bits)
    g = torch.Generator().manual_seed(18)
    hidden = torch.randn(2 * FRAMES, n, attn.to_q.in_features, generator=g)
    text = torch.randn(2 * FRAMES, L_TEXT, attn.to_k.in_features, generator=g)
    ctx = StepContext(num_frames=FRAMES, modulation=ModulationContext(0, layout, cross_scale=1.0), cond_branch=1)
    with layout_processors(unet):
        got = attn(hidden, encoder_hidden_states=text, videograin=ctx)

    heads = attn.heads
    q = _split_heads(_linear64(attn.to_q, hidden), heads)
    k = _split_heads(_linear64(attn.to_k, text), heads)
    v = _split_heads(_linear64(attn.to_v, text), heads)
    outs = []
    for row in range(2 * FRAMES):
        branch, f = divmod(row, FRAMES)
        sl = slice(row, row + 1)
        if branch == 1:
            share = ((bits[f][:, None] & bits[f][None, :]) != 0).double().sum(1) / n  # own frame
            outs.append(reference_attention(q[sl], k[sl], v[sl], bits[f], text_bits, 1.0 * (1 - share)))
        else:
            outs.append(plain_attention(q[sl], k[sl], v[sl]))
    want = _linear64(attn.to_out[0], _merge_heads(torch.cat(outs)))
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)
    unmodulated = [plain_attention(q[r : r + 1], k[r : r + 1], v[r : r + 1]) for r in range(2 * FRAMES)]
    unmodulated = _linear64(attn.to_out[0], _merge_heads(torch.cat(unmodulated)))
    assert (want[FRAMES:] - unmodulated[FRAMES:]).abs().max() > 1e-3


def test_layout_processors_restores_original_processors(unet):
    before = dict(unet.attn_processors)
    assert len(before) > 0
    with layout_processors(unet):
        inside = unet.attn_processors
        assert set(inside) == set(before)
        assert all(isinstance(p, LayoutAttnProcessor) for p in inside.values())
    after = unet.attn_processors
    assert set(after) == set(before) and all(after[name] is before[name] for name in before)

    with pytest.raises(RuntimeError, match="boom"):
        with layout_processors(unet):
            raise RuntimeError("boom")
    after = unet.attn_processors
    assert all(after[name] is before[name] for name in before)


def test_auto_falls_back_through_the_gpu_kernels_when_they_fail(monkeypatch, caplog):
    """Where auto picks the Triton kernel (CUDA) and it fails, the call still returns the formula's
    answer through the next GPU path (flex), says why, and auto stops picking triton; should flex fail
    too, grouped answers. An explicit method raises instead."""
    q, k, v, q_bits, k_bits, strength = make_case("self", "rows")
    want = reference_attention(q, k, v, q_bits, k_bits, strength)
    on_gpu = types.SimpleNamespace(shape=(1, 8, 4096, 40), requires_grad=False, device=torch.device("cuda"))
    kernels = vga.KernelChoice()
    real_auto = vga.auto_method
    assert real_auto(on_gpu, on_gpu, on_gpu, kernels) == "triton"

    def broken(message):
        def kernel(*args):
            raise RuntimeError(message)
        return kernel

    monkeypatch.setitem(sys.modules, "videograin.method.triton_layout",
                        types.SimpleNamespace(triton_layout_attention=broken("triton: out of shared memory")))
    monkeypatch.setattr(vga, "auto_method", lambda q, k, v, chosen: real_auto(on_gpu, on_gpu, on_gpu, chosen))  # a GPU
    with caplog.at_level("WARNING", logger="videograin.method.attention"):
        got = layout_attention(q, k, v, q_bits, k_bits, strength, kernels=kernels)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)  # flex, eager on the CPU
    assert "triton kernel failed (RuntimeError: triton: out of shared memory)" in caplog.text
    assert real_auto(on_gpu, on_gpu, on_gpu, kernels) == "flex"

    monkeypatch.setitem(vga.KERNELS, "flex", broken("flex: no kernel for this GPU"))
    with caplog.at_level("WARNING", logger="videograin.method.attention"):
        got = layout_attention(q, k, v, q_bits, k_bits, strength, kernels=kernels)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)  # grouped
    assert "flex kernel failed (RuntimeError: flex: no kernel for this GPU)" in caplog.text
    assert real_auto(on_gpu, on_gpu, on_gpu, kernels) == "grouped"
    assert real_auto(on_gpu, on_gpu, on_gpu) == "triton"  # a fresh choice (the next edit) tries triton again
    for method, message in [("triton", "shared memory"), ("flex", "no kernel")]:
        with pytest.raises(RuntimeError, match=message):
            layout_attention(q, k, v, q_bits, k_bits, strength, method=method)
