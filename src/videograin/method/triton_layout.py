"""ST-Layout attention as one fused Triton kernel: the GPU path of ``layout_attention`` (method "triton").

One pass over the keys per block of queries, FlashAttention style, with what the modulation needs
tracked on the fly. With t = (1 − λ)·s and c the row max (keys sharing a region with the query) or
row min (the others) of the scores s, exp(s') = exp(t)·exp(λ·c), so two running sums, one per side,

    A± = Σ exp(t − m)·v,   Z± = Σ exp(t − m)      (m: the running max of t, shared by both sides)

give the output once the row max and min are known at the end:

    out = (e^{λ·max}·A₊ + e^{λ·min}·A₋) / (e^{λ·max}·Z₊ + e^{λ·min}·Z₋).

Keys are sorted by bitmask value first, so nearly every key block holds one value and is wholly
positive or negative for a query: one P·V product per block, as in plain FlashAttention; the few
blocks on a value boundary split P into two products. A block's max of t follows from its max or
min of s (by the sign of 1 − λ), so a block costs three row reductions (max, min, sum) to
FlashAttention's two. Scores and sums are float32 (log2 units, exp2) whatever the input dtype.
Kept apart from attention.py because Triton is imported only where it runs: on CUDA, or on the CPU
under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


def _configs() -> list[triton.Config]:
    """Tile sizes tried once per head dim and key count (``triton.autotune``)."""
    tiles = [(128, 64, 8, 2), (128, 32, 8, 2), (128, 64, 4, 3),  # (BLOCK_M, BLOCK_N, warps, stages)
             (64, 64, 4, 2), (64, 32, 4, 3), (64, 64, 8, 2), (64, 32, 8, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in tiles]


def _prune(configs, named_args, **kwargs):
    """Head dims padded to 256 (SD 1.5's 160) keep to 64-query tiles over 8 warps: the two
    accumulators fill the registers (ptxas 13.4 for sm_90a: 68-260 bytes of spills there, 6-22 KB
    with 4 warps or 128-query tiles). ``D_PAD`` arrives among the keyword arguments, like every
    constexpr passed by name."""
    if {**named_args, **kwargs}["D_PAD"] <= 128:
        return configs
    return [c for c in configs if c.kwargs["BLOCK_M"] == 64 and c.num_warps == 8]


# one function: a fused Triton kernel cannot call out for its inner loop without losing the fusion
@triton.jit
def _layout_attention_kernel(
    Q, K, V, Q_BITS, LAM, K_BITS, OUT,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_q_bits, stride_lam, stride_k_bits,
    heads, n_q, n_k, qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // heads
    h = tl.program_id(1) % heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D_PAD)
    row_ok = rows < n_q
    dim_ok = dims < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    q_bits = tl.load(Q_BITS + b * stride_q_bits + rows, mask=row_ok, other=0)
    lam = tl.load(LAM + b * stride_lam + rows, mask=row_ok, other=0.0)
    factor = (1.0 - lam) * qk_scale  # t = factor·s in log2 units, s the raw q·k; negative where λ > 1

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)  # of the raw scores
    row_min = tl.full([BLOCK_M], float("inf"), tl.float32)
    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)  # of t
    z_pos = tl.zeros([BLOCK_M], tl.float32)
    z_neg = tl.zeros([BLOCK_M], tl.float32)
    acc_pos = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    acc_neg = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    bits_base = K_BITS + b * stride_k_bits
    for start in range(0, n_k, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_k
        kv_mask = col_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_base + cols[:, None] * stride_kn + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        if EVEN_K:  # no key past the end: SD's token counts are multiples of 64
            block_max, block_min = tl.max(s, 1), tl.min(s, 1)
        else:
            block_max = tl.max(tl.where(col_ok[None, :], s, float("-inf")), 1)
            block_min = tl.min(tl.where(col_ok[None, :], s, float("inf")), 1)
        row_max = tl.maximum(row_max, block_max)
        row_min = tl.minimum(row_min, block_min)
        new_max = tl.maximum(run_max, tl.where(factor >= 0, factor * block_max, factor * block_min))
        alpha = tl.exp2(run_max - new_max)
        p = tl.exp2(s * factor[:, None] - new_max[:, None])
        if not EVEN_K:
            p = tl.where(col_ok[None, :], p, 0.0)
        run_max = new_max
        v = tl.load(v_base + cols[:, None] * stride_vn + dims[None, :], mask=kv_mask, other=0.0)
        acc_pos = acc_pos * alpha[:, None]
        acc_neg = acc_neg * alpha[:, None]
        z_pos = z_pos * alpha
        z_neg = z_neg * alpha
        first = tl.load(bits_base + start)
        last = tl.load(bits_base + tl.minimum(start + BLOCK_N, n_k) - 1)
        if first == last:  # sorted keys: the block holds one bitmask value, one side per query
            row_positive = (q_bits & first) != 0  # (BLOCK_M,)
            pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            p_sum = tl.sum(p, 1)
            acc_pos += tl.where(row_positive[:, None], pv, 0.0)
            acc_neg += tl.where(row_positive[:, None], 0.0, pv)
            z_pos += tl.where(row_positive, p_sum, 0.0)
            z_neg += tl.where(row_positive, 0.0, p_sum)
        else:
            k_bits = tl.load(bits_base + cols, mask=col_ok, other=0)
            pair_positive = (q_bits[:, None] & k_bits[None, :]) != 0  # (BLOCK_M, BLOCK_N); names differ per branch:
            p_pos = tl.where(pair_positive, p, 0.0)                    # Triton rejects one name with two shapes
            p_neg = tl.where(pair_positive, 0.0, p)
            acc_pos += tl.dot(p_pos.to(v.dtype), v, input_precision=PRECISION)
            acc_neg += tl.dot(p_neg.to(v.dtype), v, input_precision=PRECISION)
            z_pos += tl.sum(p_pos, 1)
            z_neg += tl.sum(p_neg, 1)

    high, low = lam * qk_scale * row_max, lam * qk_scale * row_min
    top = tl.maximum(high, low)
    w_pos, w_neg = tl.exp2(high - top), tl.exp2(low - top)
    out = (acc_pos * w_pos[:, None] + acc_neg * w_neg[:, None]) / (z_pos * w_pos + z_neg * w_neg)[:, None]
    tl.store(OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + dims[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


#: EVEN_K: the key count is a multiple of the key tile, so no score needs masking
_kernel = triton.heuristics({"EVEN_K": lambda args: args["n_k"] % args["BLOCK_N"] == 0})(_layout_attention_kernel)

_tuned_kernel = triton.autotune(
    _configs(), key=["D_PAD", "n_k"], prune_configs_by={"early_config_prune": _prune}
)(_kernel)


def triton_layout_attention(q, k, v, q_bits, k_bits, lam, scale, block: tuple[int, int] | None = None) -> torch.Tensor:
    """q (B, H, Nq, D); k, v (B, H, Nk, D); q_bits, lam (B|1, Nq); k_bits (Nk,) or (B, Nk). Returns
    (B, H, Nq, D) in q's dtype. ``block`` = (BLOCK_M, BLOCK_N) skips autotuning (the tests). float32
    inputs multiply in full float32 (no TF32)."""
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    k_bits = k_bits if k_bits.ndim == 2 else k_bits.unsqueeze(0)
    order = torch.argsort(k_bits, dim=-1, stable=True)  # (B|1, Nk)
    gather = order[:, None, :, None].expand(batch, heads, n_k, dim)
    k, v = k.gather(2, gather), v.gather(2, gather)  # sorted by bitmask value, contiguous
    k_bits = k_bits.gather(1, order).contiguous()
    q = q.contiguous()
    q_bits, lam = q_bits.contiguous(), lam.float().contiguous()
    out = torch.empty_like(q)
    args = (
        q, k, v, q_bits, lam, k_bits, out,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        q_bits.stride(0) if q_bits.shape[0] > 1 else 0,
        lam.stride(0) if lam.shape[0] > 1 else 0,
        k_bits.stride(0) if k_bits.shape[0] > 1 else 0,
        heads, n_q, n_k, scale * math.log2(math.e),
    )
    meta = dict(HEAD_DIM=dim, D_PAD=max(16, triton.next_power_of_2(dim)),
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    if block is None:
        grid = lambda config: (triton.cdiv(n_q, config["BLOCK_M"]), batch * heads)  # noqa: E731
        _tuned_kernel[grid](*args, **meta)
    else:
        _kernel[(triton.cdiv(n_q, block[0]), batch * heads)](
            *args, **meta, BLOCK_M=block[0], BLOCK_N=block[1])
    return out
