"""ST-Layout attention (VideoGrain (arXiv:2502.17258) §3.4): the modulation math and its kernels,
backbone-agnostic.

For scaled scores s = (q·kᵀ)·scale, a query x with strength λ_x and a key y:

    s'[x, y] = (1 − λ_x)·s[x, y] + λ_x·(rowmax_y s[x, ·]  if R[x, y] else  rowmin_y s[x, ·])
    out      = softmax(s')·v,    R[x, y] = (q_bits[x] & k_bits[y]) ≠ 0

that is, positive pairs are raised towards the row max and negative pairs pushed towards the row
min, written with the row statistics only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import psutil
import torch
from torch.nn.attention.flex_attention import flex_attention

logger = logging.getLogger(__name__)

#: Largest number of float32 scores a dense chunk may hold (256 MiB).
DENSE_CHUNK_ELEMENTS = 64 * 2**20
#: ``auto`` takes the dense path when all scores of a call fit in this many (16 MiB).
AUTO_DENSE_ELEMENTS = 4 * 2**20
#: Elements of q a fast kernel sees at once (batch × heads × Nq × D), bounding its O(N) temporaries.
HEAD_BLOCK_ELEMENTS = 2**20
#: Keys per block of the row max/min pass, at least (queries are blocked to keep this many; measured
#: fastest on CPU).
MIN_KEY_BLOCK = 1024
#: Scores per block of the row max/min pass on the CPU (4 MiB: the block stays in cache for its two
#: reductions; 1.6x faster than 16 MiB blocks at N = 8192, D = 80, see benchmarks/README.md).
ROW_STAT_BLOCK_ELEMENTS = 2**20
#: Scores per block of the row max/min pass on a GPU, at most (fewer, larger matmuls; 512 MiB).
GPU_ROW_STAT_BLOCK_ELEMENTS = 2**27
#: Share of the device's free memory one block of scores may take: every block size above is capped
#: by it, so the kernels shrink their blocks on a machine that is short of memory.
FREE_MEMORY_SHARE = 1 / 16
#: Smallest block any memory budget gives (scores): CPU, GPU (tiny GPU blocks cost a launch each).
MIN_BLOCK_ELEMENTS = 2**16
GPU_MIN_BLOCK_ELEMENTS = 2**24


def free_memory(device: torch.device) -> int:
    """Bytes the device can still give: on CUDA the driver's free memory plus what PyTorch's caching
    allocator holds unused; else the system's available memory."""
    if device.type == "cuda":
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + unused
    return psutil.virtual_memory().available


def block_elements(cap: int, device: torch.device, bytes_per_element: int = 4) -> int:
    """Elements a block may hold: ``cap``, or fewer when FREE_MEMORY_SHARE of the free memory is less."""
    budget = int(free_memory(device) * FREE_MEMORY_SHARE) // bytes_per_element
    floor = MIN_BLOCK_ELEMENTS if device.type == "cpu" else GPU_MIN_BLOCK_ELEMENTS
    return max(min(cap, budget), min(cap, floor))


def _broadcast_rows(x: torch.Tensor | float, q: torch.Tensor) -> torch.Tensor:
    """A per-query quantity given as scalar, (Nq,) or (B, Nq) -> (B or 1, 1, Nq, 1) float32."""
    x = torch.as_tensor(x, dtype=torch.float32, device=q.device)
    if x.ndim == 0:
        x = x.expand(q.shape[-2])
    if x.ndim == 1:
        x = x.unsqueeze(0)
    return x[:, None, :, None]


def modulated_scores(q, k, q_bits, k_bits, strength, scale=None) -> torch.Tensor:
    """The modulated scores s' in float32: (B, H, Nq, Nk). Dense; see ``layout_attention``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    lam = _broadcast_rows(strength, q)
    if q_bits.ndim == 1:
        q_bits = q_bits.unsqueeze(0)
    if k_bits.ndim == 1:
        k_bits = k_bits.unsqueeze(0)
    positive = ((q_bits[:, :, None] & k_bits[:, None, :]) != 0).unsqueeze(1)  # (B|1, 1, Nq, Nk)
    target = torch.where(positive, s.amax(-1, keepdim=True), s.amin(-1, keepdim=True))
    return (1 - lam) * s + lam * target


def dense_layout_attention(q, k, v, q_bits, k_bits, lam, scale) -> torch.Tensor:
    """Reference path: the modulated scores materialised, DENSE_CHUNK_ELEMENTS at a time (queries
    chunked). Arguments as ``layout_attention`` with q_bits and lam (B|1, Nq). Returns float32."""
    chunk = max(1, block_elements(DENSE_CHUNK_ELEMENTS, q.device) // (q.shape[0] * q.shape[1] * k.shape[-2]))
    outputs = []
    for start in range(0, q.shape[2], chunk):
        rows = slice(start, start + chunk)
        s = modulated_scores(q[:, :, rows], k, q_bits[:, rows], k_bits, lam[:, rows], scale)
        outputs.append(torch.matmul(s.softmax(-1), v.float()))
    return torch.cat(outputs, dim=2)


def _attention_with_lse(q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q·kᵀ·scale)·v and its log-sum-exp: (B, H, Nq, D) and (B, H, Nq), float32.

    On the CPU PyTorch's fused flash kernel returns both in O(N) memory; elsewhere the scores are
    materialised DENSE_CHUNK_ELEMENTS at a time.
    """
    if q.device.type == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        return out, lse
    chunk = max(1, block_elements(DENSE_CHUNK_ELEMENTS, q.device) // (q.shape[0] * q.shape[1] * k.shape[-2]))
    outs, lses = [], []
    for start in range(0, q.shape[2], chunk):
        s = torch.matmul(q[:, :, start : start + chunk], k.transpose(-1, -2)) * scale
        lses.append(s.logsumexp(-1))
        outs.append(torch.matmul(torch.softmax(s, -1), v))
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _float32_scores(q, k) -> torch.Tensor:
    """q·kᵀ (B, H, n, c) in float32 (or float64) for q (B, H, n, D), k (B, H, c, D): fp16/bf16 on CUDA
    through a half-precision matmul that accumulates and returns float32, else a float32 matmul."""
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return torch.matmul(q.float(), k.float().transpose(-1, -2))
    scores = torch.bmm(q.flatten(0, 1), k.flatten(0, 1).transpose(-1, -2), out_dtype=torch.float32)
    return scores.view(*q.shape[:3], k.shape[2])


def _row_max_min(q, k, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row max and min of q·kᵀ·scale, (B, H, Nq, 1) float32 each, never holding more than a block of
    scores: cache-sized on the CPU, as large as the free memory allows on a GPU."""
    batch, heads, n_q, _ = q.shape
    cap = ROW_STAT_BLOCK_ELEMENTS if q.device.type == "cpu" else GPU_ROW_STAT_BLOCK_ELEMENTS
    block = block_elements(cap, q.device)
    q_block = max(1, block // (batch * heads * MIN_KEY_BLOCK))
    k_block = max(MIN_KEY_BLOCK, block // (batch * heads * min(n_q, q_block)))
    row_max = torch.full((batch, heads, n_q, 1), -torch.inf, device=q.device)
    row_min = torch.full_like(row_max, torch.inf)
    for q_start in range(0, n_q, q_block):
        rows = slice(q_start, q_start + q_block)
        for k_start in range(0, k.shape[2], k_block):
            s = _float32_scores(q[:, :, rows], k[:, :, k_start : k_start + k_block])
            # two reductions beat torch.aminmax here (measured on CPU)
            row_max[:, :, rows] = torch.maximum(row_max[:, :, rows], s.amax(-1, keepdim=True))
            row_min[:, :, rows] = torch.minimum(row_min[:, :, rows], s.amin(-1, keepdim=True))
    return row_max * scale, row_min * scale


def grouped_layout_attention(q, k, v, q_bits, k_bits, lam, scale) -> torch.Tensor:
    """O(N)-memory path built on fused attention kernels, one per key group.

    Keys sharing a bitmask value form a group g that is wholly positive or negative for a query, so
    s' = (1−λ)s + λ·c_g with c_g the row max or min: the modulated attention is a mixture of G plain
    attentions of the queries scaled by (1−λ) over each group's keys, weighted by
    exp(LSE_g + λ·c_g). A blocked pass finds the row max and min first. Arguments as
    ``layout_attention`` with q_bits and lam (B|1, Nq) and k_bits (Nk,). Returns float32.
    """
    order = torch.argsort(k_bits, stable=True)
    values, counts = torch.unique_consecutive(k_bits[order], return_counts=True)
    q, k, v = q.float(), k[:, :, order].float(), v[:, :, order].float()
    row_max, row_min = _row_max_min(q, k, scale)
    lam4 = lam[:, None, :, None]  # (B|1, 1, Nq, 1)
    scaled_q = q * (1 - lam4)
    acc = torch.zeros_like(q)
    total = torch.zeros_like(row_max)
    run_max = torch.full_like(row_max, -torch.inf)
    start = 0
    for value, count in zip(values.tolist(), counts.tolist()):
        keys = slice(start, start + count)
        out, lse = _attention_with_lse(scaled_q, k[:, :, keys], v[:, :, keys], scale)
        positive = ((q_bits & value) != 0)[:, None, :, None]
        log_weight = lse.unsqueeze(-1) + lam4 * torch.where(positive, row_max, row_min)
        new_max = torch.maximum(run_max, log_weight)
        rescale, weight = torch.exp(run_max - new_max), torch.exp(log_weight - new_max)
        acc.mul_(rescale).addcmul_(weight, out)
        total.mul_(rescale).add_(weight)
        run_max = new_max
        start += count
    return acc.div_(total)


@cache
def _compiled_flex_attention():
    # dynamic shapes: a UNet calls it with several sequence lengths, batch sizes and head dims, more
    # than dynamo's recompile limit allows static kernels for (past it flex would run eagerly, with
    # every score materialised)
    return torch.compile(flex_attention, dynamic=True)


def flex_layout_attention(q, k, v, q_bits, k_bits, lam, scale) -> torch.Tensor:
    """One fused pass: FlexAttention with the modulation as its ``score_mod``, s' = (1−λ)s + λ·c with c
    the row max or min of a blocked pass. Compiled to a Triton kernel on CUDA (the GPU default); eager
    elsewhere, where PyTorch materialises the scores (correct but slow: the CPU default is grouped).
    q, k, v stay in their dtype (fp16/bf16 on a GPU); the row statistics are float32 and the kernel
    keeps its softmax statistics in float32. Arguments as ``layout_attention`` with q_bits and lam
    (B|1, Nq). Returns q's dtype."""
    batch, heads, n_q, _ = q.shape
    row_max, row_min = (x.squeeze(-1) for x in _row_max_min(q, k, scale))
    q_bits, lam = q_bits.expand(batch, n_q).contiguous(), lam.expand(batch, n_q).contiguous()
    k_bits = (k_bits if k_bits.ndim == 2 else k_bits.unsqueeze(0)).expand(batch, -1).contiguous()

    def modulate(score, b, h, q_idx, kv_idx):
        strength = lam[b, q_idx]
        positive = (q_bits[b, q_idx] & k_bits[b, kv_idx]) != 0
        target = torch.where(positive, row_max[b, h, q_idx], row_min[b, h, q_idx])
        return (1 - strength) * score + strength * target

    if q.device.type != "cuda":
        return flex_attention(q, k, v, score_mod=modulate, scale=scale)
    # head dims above 128 (SD 1.5's 160) round up to 256: smaller key blocks keep the kernel within
    # shared memory
    options = {"BLOCK_N": 32, "num_stages": 2} if q.shape[-1] > 128 else None
    return _compiled_flex_attention()(q, k, v, score_mod=modulate, scale=scale, kernel_options=options)


def _triton_layout_attention(q, k, v, q_bits, k_bits, lam, scale) -> torch.Tensor:
    from .triton_layout import triton_layout_attention  # Triton is imported only where it runs

    return triton_layout_attention(q, k, v, q_bits, k_bits, lam, scale)


#: Every path by name, each with the arguments of ``layout_attention`` (q_bits and lam (B|1, Nq)).
KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "dense": dense_layout_attention,
    "grouped": grouped_layout_attention,
    "flex": flex_layout_attention,
    "triton": _triton_layout_attention,
}
#: The fused GPU paths, fastest first (on an H100, flex ran at 11x SDPA, grouped, whose log-sum-exps
#: are not fused there, at 50x: benchmarks/README.md).
GPU_METHODS = ("triton", "flex")


@dataclass
class KernelChoice:
    """Which fused GPU paths failed so far (method -> one-line reason): ``auto`` skips those. The
    pipeline keeps one per edit and hands it to every attention call, so a kernel that fails to
    compile is tried once per edit, not once per layer; nothing is kept between edits."""

    failed: dict[str, str] = field(default_factory=dict)

    def fastest_gpu_method(self) -> str:
        return next((method for method in GPU_METHODS if method not in self.failed), "grouped")


def auto_method(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernels: KernelChoice | None = None) -> str:
    """The path ``layout_attention(method="auto")`` takes for these inputs (see there)."""
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if needs_grad or q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= AUTO_DENSE_ELEMENTS:
        return "dense"
    return (kernels or KernelChoice()).fastest_gpu_method() if q.device.type == "cuda" else "grouped"


def layout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_bits: torch.Tensor,
    k_bits: torch.Tensor,
    strength: torch.Tensor | float,
    scale: float | None = None,
    method: str = "auto",
    kernels: KernelChoice | None = None,
) -> torch.Tensor:
    """softmax(s + λ·M)·v with VideoGrain's layout modulation M (see module docstring).

    q: (B, H, Nq, D); k, v: (B, H, Nk, D); q_bits: (Nq,) or (B, Nq) int64; k_bits: (Nk,) or (B, Nk)
    int64; strength: λ as a float, (Nq,) or (B, Nq); scale defaults to D**-0.5. Row max and min are
    taken over the unmodulated scaled scores. Returns (B, H, Nq, D) in q's dtype; statistics and
    softmax run in float32. ``method``: "dense" materialises the scores (the reference); "grouped"
    (attention per key group, fused on the CPU), "flex" (FlexAttention, compiled on CUDA; slower than
    triton there) and "triton" (one fused Triton kernel, CUDA only, see triton_layout.py) never hold
    more than a block of them. "auto" (``auto_method``): dense when all scores fit in one block or
    gradients are needed (the O(N) kernels are not differentiable: ReAtCo's guidance runs them under
    autograd; windows keep N small there), triton on CUDA, grouped elsewhere. If a GPU kernel fails
    under auto (say, on a GPU Triton does not support), auto logs why, notes it in ``kernels`` and
    takes the next of ``GPU_METHODS``, then grouped.
    """
    if method != "auto" and method not in KERNELS:
        raise ValueError(f"method must be 'auto' or one of {', '.join(KERNELS)}, got {method!r}")
    kernels = kernels if kernels is not None else KernelChoice()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q_bits = q_bits if q_bits.ndim == 2 else q_bits.unsqueeze(0)
    lam = torch.as_tensor(strength, dtype=torch.float32, device=q.device)
    lam = lam.expand(q_bits.shape[0], q.shape[2]) if lam.ndim < 2 else lam
    chosen = auto_method(q, k, v, kernels) if method == "auto" else method
    if chosen == "dense":
        return dense_layout_attention(q, k, v, q_bits, k_bits, lam, scale).to(q.dtype)
    while chosen in GPU_METHODS:
        try:
            return KERNELS[chosen](q, k, v, q_bits, k_bits, lam, scale)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            if method != "auto":
                raise
            kernels.failed[chosen] = f"{type(error).__name__}: {error}".splitlines()[0]
            failed, chosen = chosen, kernels.fastest_gpu_method()
            logger.warning("the %s kernel failed (%s); ST-Layout attention uses the %s path for the rest of "
                           "this edit", failed, kernels.failed[failed], chosen)
    return _blocked(KERNELS[chosen], q, k, v, q_bits, k_bits, lam, scale)  # grouped, the CPU path


def _blocked(kernel, q, k, v, q_bits, k_bits, lam, scale) -> torch.Tensor:
    """``kernel`` over blocks of (batch, heads) small enough that its O(N·D) temporaries stay small;
    keys that differ per batch element are sorted per element, so those go one element at a time."""
    batch, heads, n_q, dim = q.shape
    batch_step = batch if k_bits.ndim == 1 else 1
    head_step = max(1, HEAD_BLOCK_ELEMENTS // (batch_step * n_q * dim))
    out = torch.empty_like(q)
    for b in range(0, batch, batch_step):
        rows = slice(b, b + batch_step)
        qb = q_bits[rows] if q_bits.shape[0] > 1 else q_bits
        lb = lam[rows] if lam.shape[0] > 1 else lam
        kb = k_bits if k_bits.ndim == 1 else k_bits[b]
        for h in range(0, heads, head_step):
            cols = slice(h, h + head_step)
            out[rows, cols] = kernel(q[rows, cols], k[rows, cols], v[rows, cols], qb, kb, lb, scale)
    return out
