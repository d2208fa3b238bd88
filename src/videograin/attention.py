"""ST-Layout attention (papers/000 §3.4): the modulation math and the diffusers attention processor.

For scaled scores s = (q·kᵀ)·scale, a query x with strength λ_x and a key y:

    s'[x, y] = (1 − λ_x)·s[x, y] + λ_x·(rowmax_y s[x, ·]  if R[x, y] else  rowmin_y s[x, ·])
    out      = softmax(s')·v,    R[x, y] = (q_bits[x] & k_bits[y]) ≠ 0

which is DESIGN.md's "raise positive pairs towards the row max, push negative pairs towards the row
min" written with the row statistics only.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import psutil
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from .flow import Trajectories, combine
from .layout import Layout, key_frames

logger = logging.getLogger(__name__)

#: Largest number of float32 scores a dense chunk may hold (256 MiB).
DENSE_CHUNK_ELEMENTS = 64 * 2**20
#: Scores the online kernel holds per block (16 MiB each; a few such temporaries live at once).
ONLINE_BLOCK_ELEMENTS = 4 * 2**20
#: Elements of q a fast kernel sees at once (batch × heads × Nq × D), bounding its O(N) temporaries.
HEAD_BLOCK_ELEMENTS = 2**20
#: Keys per block, at least (queries are blocked to keep this many; measured fastest on CPU).
ONLINE_MIN_KEYS = 1024
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


def online_layout_attention(q, k, v, q_bits, k_bits, lam, scale) -> torch.Tensor:
    """O(N)-memory path: one pass over key blocks with an online softmax (FlashAttention style).

    Keys are sorted by bitmask value so every key block lies in one group, positive or negative for
    a whole query. Because s' = (1−λ)s + λ·c with c = rowmax (positive) or rowmin (negative), the
    softmax splits into two sums accumulated separately, A± = Σ exp((1−λ)s)·v and Z± = Σ exp((1−λ)s),
    combined at the end once the row max and min are known:

        out = (e^{λ·max}·A₊ + e^{λ·min}·A₋) / (e^{λ·max}·Z₊ + e^{λ·min}·Z₋)

    Arguments as ``layout_attention`` with q_bits and lam (B|1, Nq) and k_bits (Nk,). Holds at most
    ONLINE_BLOCK_ELEMENTS scores at a time. Returns float32.
    """
    batch, heads, n_q, dim = q.shape
    order = torch.argsort(k_bits, stable=True)
    values, counts = torch.unique_consecutive(k_bits[order], return_counts=True)
    k, v = k[:, :, order].float(), v[:, :, order].float()
    block = block_elements(ONLINE_BLOCK_ELEMENTS, q.device)
    q_block = max(1, block // (batch * heads * ONLINE_MIN_KEYS))
    k_block = max(ONLINE_MIN_KEYS, block // (batch * heads * min(n_q, q_block)))
    out = torch.empty(batch, heads, n_q, dim, dtype=torch.float32, device=q.device)
    for q_start in range(0, n_q, q_block):
        rows = slice(q_start, q_start + q_block)
        qs = q[:, :, rows].float() * scale
        keep = (1 - lam[:, rows])[:, None, :, None]  # (B|1, 1, n, 1)
        n = qs.shape[2]
        row_max = torch.full((batch, heads, n, 1), -torch.inf, device=q.device)
        row_min = torch.full_like(row_max, torch.inf)
        # per side (0: positive keys, 1: negative keys): running max of (1−λ)s, Z and A
        run_max = torch.full((2, batch, heads, n, 1), -torch.inf, device=q.device)
        total = torch.zeros_like(run_max)
        acc = torch.zeros(2, batch, heads, n, dim, device=q.device)
        k_start = 0
        for value, count in zip(values.tolist(), counts.tolist()):
            side = ((q_bits[:, rows] & value) == 0).long()[:, None, :, None].expand(batch, heads, n, 1)
            for start in range(k_start, k_start + count, k_block):
                stop = min(start + k_block, k_start + count)
                s = torch.matmul(qs, k[:, :, start:stop].transpose(-1, -2))  # (B, H, n, c)
                block_max, block_min = s.amax(-1, keepdim=True), s.amin(-1, keepdim=True)
                row_max, row_min = torch.maximum(row_max, block_max), torch.minimum(row_min, block_min)
                t = keep * s
                old_max = run_max.gather(0, side[None]).squeeze(0)
                new_max = torch.maximum(old_max, torch.where(keep >= 0, keep * block_max, keep * block_min))
                p = torch.exp(t - new_max)
                rescale = torch.exp(old_max - new_max)
                new_total = total.gather(0, side[None]).squeeze(0) * rescale + p.sum(-1, keepdim=True)
                new_acc = acc.gather(0, side[None].expand(1, -1, -1, -1, dim)).squeeze(0) * rescale
                new_acc = new_acc + torch.matmul(p, v[:, :, start:stop])
                run_max.scatter_(0, side[None], new_max[None])
                total.scatter_(0, side[None], new_total[None])
                acc.scatter_(0, side[None].expand(1, -1, -1, -1, dim), new_acc[None])
            k_start += count
        lam_rows = lam[:, rows][:, None, :, None]
        log_weight = torch.stack([lam_rows * row_max, lam_rows * row_min]).expand_as(run_max) + run_max
        weight = torch.exp(log_weight - log_weight.amax(0, keepdim=True)).nan_to_num(0.0)  # empty side: 0
        out[:, :, rows] = (weight * acc).sum(0) / (weight * total).sum(0)
    return out


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
    q_block = max(1, block // (batch * heads * ONLINE_MIN_KEYS))
    k_block = max(ONLINE_MIN_KEYS, block // (batch * heads * min(n_q, q_block)))
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
    ``online_layout_attention``. Returns float32.
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
    # shared memory (not yet run on a GPU here)
    options = {"BLOCK_N": 32, "num_stages": 2} if q.shape[-1] > 128 else None
    return _compiled_flex_attention()(q, k, v, score_mod=modulate, scale=scale, kernel_options=options)


#: The fused GPU paths, fastest first; ``auto`` takes the first that has not failed in this process
#: (on an H100, flex ran at 11x SDPA, grouped, whose log-sum-exps are not fused there, at 50x:
#: benchmarks/README.md).
GPU_METHODS = ("triton", "flex")
#: Why a GPU path failed in this process, by method (one line each).
_gpu_failures: dict[str, str] = {}


def _fastest_gpu_method() -> str:
    return next((method for method in GPU_METHODS if method not in _gpu_failures), "grouped")


def auto_method(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """The path ``layout_attention(method="auto")`` takes for these inputs (see there)."""
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if needs_grad or q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= ONLINE_BLOCK_ELEMENTS:
        return "dense"
    return _fastest_gpu_method() if q.device.type == "cuda" else "grouped"


def layout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_bits: torch.Tensor,
    k_bits: torch.Tensor,
    strength: torch.Tensor | float,
    scale: float | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """softmax(s + λ·M)·v with VideoGrain's layout modulation M (see module docstring).

    q: (B, H, Nq, D); k, v: (B, H, Nk, D); q_bits: (Nq,) or (B, Nq) int64; k_bits: (Nk,) or (B, Nk)
    int64; strength: λ as a float, (Nq,) or (B, Nq); scale defaults to D**-0.5. Row max and min are
    taken over the unmodulated scaled scores. Returns (B, H, Nq, D) in q's dtype; statistics and
    softmax run in float32. ``method``: "dense" materialises the scores (the reference); "online"
    (one pass, pure PyTorch), "grouped" (attention per key group, fused on the CPU), "flex"
    (FlexAttention, compiled on CUDA; slower than triton there) and "triton" (one fused Triton
    kernel, CUDA only, see triton_layout.py) never hold more than a block of them. "auto"
    (``auto_method``): dense when all scores fit in one block or gradients are needed (the O(N)
    kernels are not differentiable: ReAtCo's guidance runs them under autograd; windows keep N small
    there), triton on CUDA, grouped elsewhere. If a GPU kernel fails under auto (say, on a GPU
    Triton does not support), auto logs why and takes the next of ``GPU_METHODS``, then grouped.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q_bits = q_bits if q_bits.ndim == 2 else q_bits.unsqueeze(0)
    lam = torch.as_tensor(strength, dtype=torch.float32, device=q.device)
    lam = lam.expand(q_bits.shape[0], q.shape[2]) if lam.ndim < 2 else lam
    chosen = auto_method(q, k, v) if method == "auto" else method
    if chosen == "dense":
        return dense_layout_attention(q, k, v, q_bits, k_bits, lam, scale).to(q.dtype)
    while chosen in GPU_METHODS:
        try:
            if chosen == "flex":
                return flex_layout_attention(q, k, v, q_bits, k_bits, lam, scale)
            from .triton_layout import triton_layout_attention

            return triton_layout_attention(q, k, v, q_bits, k_bits, lam, scale)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            if method != "auto":
                raise
            _gpu_failures[chosen] = f"{type(error).__name__}: {error}".splitlines()[0]
            failed, chosen = chosen, _fastest_gpu_method()
            logger.warning("the %s kernel failed (%s); ST-Layout attention uses the %s path from now on",
                           failed, _gpu_failures[failed], chosen)
    method = chosen
    kernels = {"online": online_layout_attention, "grouped": grouped_layout_attention}
    if method not in kernels:
        raise ValueError(f"method must be 'auto', 'dense', 'online', 'grouped', 'flex' or 'triton', got {method!r}")
    # Blocks of (batch, heads) small enough that the kernels' O(N·D) temporaries stay small; keys
    # that differ per batch element are sorted per element, so those go one element at a time.
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
            out[rows, cols] = kernels[method](q[rows, cols], k[rows, cols], v[rows, cols], qb, kb, lb, scale)
    return out


@dataclass
class AttentionRecorder:
    """Collects cross-attention probabilities of the conditional branch, averaged over heads and
    over the layers of a level: ``maps[(step, level)]`` is (F, h, w, L) float32.

    ``level`` set: only that UNet level is recorded. ``keep_graph``: maps stay on their device inside
    the autograd graph (ReAtCo's loss differentiates them); otherwise they are detached to the CPU.
    ``unmodulated``: a second recorder that gets the same maps computed without the layout modulation.
    """

    level: int | None = None
    keep_graph: bool = False
    unmodulated: AttentionRecorder | None = None
    maps: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple[int, int], int] = field(default_factory=dict)

    def wants(self, level: int) -> bool:
        return self.level is None or self.level == level

    def add(self, step: int, level: int, probs: torch.Tensor) -> None:
        if not self.wants(level):
            return
        key = (step, level)
        probs = probs.float() if self.keep_graph else probs.detach().float().cpu()
        self.maps[key] = self.maps[key] + probs if key in self.maps else probs
        self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, step: int, level: int) -> torch.Tensor:
        return self.maps[(step, level)] / self.counts[(step, level)]

    @classmethod
    def merge(cls, parts: list[tuple[slice, AttentionRecorder]], num_frames: int) -> AttentionRecorder:
        """One recorder for the whole video from per-window recorders ((frames, recorder) pairs):
        each map averaged over the windows covering a frame."""
        merged = cls()
        if parts[0][1].unmodulated is not None:
            merged.unmodulated = cls.merge([(frames, r.unmodulated) for frames, r in parts], num_frames)
        for key in parts[0][1].maps:
            total, count = None, torch.zeros(num_frames)
            for frames, recorder in parts:
                part = recorder.mean(*key)
                if total is None:
                    total = part.new_zeros((num_frames, *part.shape[1:]))
                total[frames] += part
                count[frames] += 1
            merged.maps[key], merged.counts[key] = total / count.view(-1, 1, 1, 1), 1
        return merged


#: Decoder ResNet blocks whose outputs PnP injects: the official VideoGrain choice for SD 1.5 (a
#: smaller UNet's missing blocks are skipped).
PNP_RESNETS = ("up_blocks.1.resnets.0", "up_blocks.1.resnets.1", "up_blocks.2.resnets.0")


@dataclass
class FeatureStore:
    """Plug-and-play features, recorded during inversion and injected into the edit at the same step:
    ``qk[(layer, step)] = (q, k)``, each (F, heads, n, D), the self-attention queries and keys of the
    decoder layers; ``residuals[(block, step)]`` (F, C, h, w), the outputs of the PNP_RESNETS blocks
    (None: not recorded)."""

    qk: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    residuals: dict[tuple[str, int], torch.Tensor] | None = field(default_factory=dict)

    @staticmethod
    def takes(layer: str) -> bool:
        """PnP injects the decoder's self-attention (papers/000 §4.1 uses PnP's choice of layers)."""
        return layer.startswith("up_blocks") and ".attn1" in layer


@dataclass(frozen=True)
class StepContext:
    """What the processors need for one UNet call, passed as ``cross_attention_kwargs={"videograin": ctx}``.

    The UNet batch is ``branches × num_frames`` (classifier-free guidance stacks [uncond, cond]).
    ``cond_branch`` is the branch modulated and recorded. ``self_strength``/``cross_strength`` are
    c·ξ(t) for this step (0 disables modulation); ``levels`` the modulated UNet level indices
    (None: all). Self-attention is spatio-temporal over the ``temporal`` key frames in every case.
    ``trajectories``: FLATTEN trajectories by tokens per frame for the levels where flow-guided
    attention runs at this step. ``features`` with ``features_mode`` "record" or "inject": PnP.
    """

    num_frames: int
    temporal: str = "full"
    layout: Layout | None = None
    cond_branch: int = 0
    self_strength: float = 0.0
    cross_strength: float = 0.0
    levels: frozenset[int] | None = None
    step: int = 0
    recorder: AttentionRecorder | None = None
    trajectories: dict[int, Trajectories] | None = None
    features: FeatureStore | None = None
    features_mode: str = ""


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H·D) -> (B, H, N, D)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class LayoutAttnProcessor:
    """Attention processor for ``unet.set_attn_processor``: spatio-temporal self-attention with
    ST-Layout modulation of self- and cross-attention on the conditional branch.

    Stateless: everything per call arrives in ``videograin`` (a StepContext); ``layer`` is the name
    of the attention layer it serves (for PnP's features). Without a context the processor computes
    exactly what diffusers' stock AttnProcessor2_0 does (per-frame attention).
    """

    def __init__(self, layer: str = ""):
        self.layer = layer

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        videograin: StepContext | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None or attn.spatial_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError("LayoutAttnProcessor supports the SD 1.x/2.x transformer blocks only")
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        context = hidden_states if not is_cross else encoder_hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q = _heads(attn.to_q(hidden_states), attn.heads)
        k = _heads(attn.to_k(context), attn.heads)
        v = _heads(attn.to_v(context), attn.heads)
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)

        if videograin is not None and not is_cross and videograin.features is not None:
            q, k = self._plug_and_play(q, k, videograin)
        if videograin is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        elif is_cross:
            out = self._cross(q, k, v, attn.scale, videograin)
        else:
            out = self._self(q, k, v, attn.scale, videograin)

        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2).to(q.dtype)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    @staticmethod
    def _level(ctx: StepContext, tokens_per_frame: int, strength: float):
        """The LevelLayout if this level is modulated at this step, else None."""
        if ctx.layout is None or strength == 0:
            return None
        level = ctx.layout.at(tokens_per_frame)
        return level if ctx.levels is None or level.index in ctx.levels else None

    def _plug_and_play(self, q, k, ctx: StepContext):
        """Record this layer's self-attention q, k (inversion) or replace them by the recorded ones,
        for every branch (edit). q, k: (branches·F, H, n, D)."""
        key = (self.layer, ctx.step)
        if not FeatureStore.takes(self.layer):
            return q, k
        if ctx.features_mode == "record":
            ctx.features.qk[key] = (q.detach().clone(), k.detach().clone())
        elif ctx.features_mode == "inject" and key in ctx.features.qk:
            branches = q.shape[0] // ctx.num_frames
            q, k = (x.to(q).repeat(branches, 1, 1, 1) for x in ctx.features.qk[key])
        return q, k

    def _self(self, q, k, v, scale, ctx: StepContext) -> torch.Tensor:
        """Spatio-temporal self-attention (then FLATTEN's trajectory attention where it runs).
        q, k, v: (branches·F, H, n, D) -> same shape."""
        frames, n = ctx.num_frames, q.shape[2]
        frames_of_keys = key_frames(frames, ctx.temporal).to(q.device)  # (F, K)
        fold = lambda x: x.unflatten(0, (-1, frames)).permute(0, 2, 1, 3, 4).flatten(2, 3)  # -> (branches, H, F·n, D)
        unfold = lambda x: x.unflatten(2, (frames, n)).permute(0, 2, 1, 3, 4).flatten(0, 1)
        out = self._spatio_temporal(q, k, v, scale, ctx, frames_of_keys, fold, unfold)
        trajectories = ctx.trajectories.get(n) if ctx.trajectories else None
        if trajectories is None:
            return out
        return unfold(combine(fold(out), trajectories))

    def _spatio_temporal(self, q, k, v, scale, ctx: StepContext, frames_of_keys, fold, unfold) -> torch.Tensor:
        frames, n = ctx.num_frames, q.shape[2]

        def gather_keys(x):  # (branches·F, H, n, D) -> (branches·F, H, K·n, D)
            x = x.unflatten(0, (-1, frames))[:, frames_of_keys]  # (branches, F, K, H, n, D)
            return x.permute(0, 1, 3, 2, 4, 5).flatten(3, 4).flatten(0, 1)

        if ctx.temporal == "full":  # one attention over all tokens of the video per branch
            qs, ks, vs = fold(q), fold(k), fold(v)  # (branches, H, F·n, D)
        else:
            unfold = lambda x: x
            qs, ks, vs = q, gather_keys(k), gather_keys(v)

        level = self._level(ctx, n, ctx.self_strength)
        if level is None:
            return unfold(F.scaled_dot_product_attention(qs, ks, vs, scale=scale))
        lam = ctx.self_strength * (1 - level.self_share.to(q.device))  # (F, n)
        if ctx.temporal == "full":
            rows = slice(ctx.cond_branch, ctx.cond_branch + 1)
            q_bits, k_bits, lam = level.bits.flatten(), level.bits.flatten(), lam.flatten()
        else:
            rows = slice(ctx.cond_branch * frames, (ctx.cond_branch + 1) * frames)
            q_bits, k_bits = level.bits, level.bits[frames_of_keys.to(level.bits.device)].flatten(1)
        out = torch.empty_like(qs)
        out[rows] = layout_attention(qs[rows], ks[rows], vs[rows], q_bits.to(q.device), k_bits.to(q.device), lam, scale)
        for plain in (slice(0, rows.start), slice(rows.stop, None)):  # the other branches: unmodulated
            if len(qs[plain]):
                out[plain] = F.scaled_dot_product_attention(qs[plain], ks[plain], vs[plain], scale=scale)
        return unfold(out)

    def _cross(self, q, k, v, scale, ctx: StepContext) -> torch.Tensor:
        """Cross-attention per frame. q: (branches·F, H, n, D); k, v: (branches·F, H, L, D)."""
        frames, n = ctx.num_frames, q.shape[2]
        level = self._level(ctx, n, ctx.cross_strength)
        rows = slice(ctx.cond_branch * frames, (ctx.cond_branch + 1) * frames)
        recorder = ctx.recorder if ctx.layout is not None else None
        if recorder is not None and not recorder.wants(ctx.layout.at(n).index):
            recorder = None
        if level is None and recorder is None:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        plain = lambda: (torch.matmul(q[rows].float(), k[rows].float().transpose(-1, -2)) * scale).softmax(-1)  # noqa: E731
        if level is None:  # recording only: plain probabilities of the conditional branch
            probs = plain()
        else:
            q_bits = level.bits.to(q.device)
            k_bits = ctx.layout.text_bits.to(q.device)
            lam = ctx.cross_strength * (1 - level.cross_share.to(q.device))  # (F, n)
            probs = modulated_scores(q[rows], k[rows], q_bits, k_bits, lam, scale).softmax(-1)
            modulated = torch.matmul(probs, v[rows].float()).to(out.dtype)
            out = torch.cat([out[: rows.start], modulated, out[rows.stop :]])  # not in place: autograd
        if recorder is not None:
            grid = ctx.layout.at(n)
            as_maps = lambda p: p.mean(1).unflatten(1, (grid.height, grid.width))  # noqa: E731  (F, h, w, L)
            recorder.add(ctx.step, grid.index, as_maps(probs))
            if recorder.unmodulated is not None:
                recorder.unmodulated.add(ctx.step, grid.index, as_maps(probs if level is None else plain()))
        return out


@contextmanager
def residual_injection(unet, ctx: StepContext):
    """For one UNet call: record (``ctx.features_mode`` "record") or replace ("inject", every branch)
    the outputs of the PNP_RESNETS blocks at ``ctx.step``. The forward hooks live only inside the
    ``with`` block; nothing stays on the modules."""
    store = ctx.features
    if store is None or store.residuals is None:
        yield
        return
    modules = dict(unet.named_modules())

    def hook_for(key):
        def hook(module, args, output):
            if ctx.features_mode == "record":
                store.residuals[key] = output.detach().clone()
            elif ctx.features_mode == "inject" and key in store.residuals:
                stored = store.residuals[key]
                return stored.to(output).repeat(output.shape[0] // stored.shape[0], 1, 1, 1)
            return None

        return hook

    handles = [modules[name].register_forward_hook(hook_for((name, ctx.step))) for name in PNP_RESNETS if name in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def layout_processors(unet):
    """Install LayoutAttnProcessor on every attention layer of ``unet``; restore the originals after."""
    original = unet.attn_processors
    unet.set_attn_processor({name: LayoutAttnProcessor(name.removesuffix(".processor")) for name in original})
    try:
        yield unet
    finally:
        unet.set_attn_processor(original)
