"""ST-Layout attention (papers/000 §3.4): the modulation math and the diffusers attention processor.

For scaled scores s = (q·kᵀ)·scale, a query x with strength λ_x and a key y:

    s'[x, y] = (1 − λ_x)·s[x, y] + λ_x·(rowmax_y s[x, ·]  if R[x, y] else  rowmin_y s[x, ·])
    out      = softmax(s')·v,    R[x, y] = (q_bits[x] & k_bits[y]) ≠ 0

which is DESIGN.md's "raise positive pairs towards the row max, push negative pairs towards the row
min" written with the row statistics only.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .layout import Layout, key_frames

#: Largest number of float32 scores a dense chunk may hold (256 MiB).
DENSE_CHUNK_ELEMENTS = 64 * 2**20


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


def layout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_bits: torch.Tensor,
    k_bits: torch.Tensor,
    strength: torch.Tensor | float,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(s + λ·M)·v with VideoGrain's layout modulation M (see module docstring).

    q: (B, H, Nq, D); k, v: (B, H, Nk, D); q_bits: (Nq,) or (B, Nq) int64; k_bits: (Nk,) or (B, Nk)
    int64; strength: λ as a float, (Nq,) or (B, Nq); scale defaults to D**-0.5. Row max and min are
    taken over the unmodulated scaled scores. Returns (B, H, Nq, D) in q's dtype; statistics and
    softmax run in float32. Queries are processed in chunks so at most DENSE_CHUNK_ELEMENTS scores
    exist at once.
    """
    batch, heads, n_q, _ = q.shape
    per_query = batch * heads * k.shape[-2]
    chunk = max(1, DENSE_CHUNK_ELEMENTS // per_query)
    q_bits = q_bits if q_bits.ndim == 2 else q_bits.unsqueeze(0)
    lam = torch.as_tensor(strength, dtype=torch.float32, device=q.device)
    lam = lam.expand(q_bits.shape[0], n_q) if lam.ndim < 2 else lam
    outputs = []
    for start in range(0, n_q, chunk):
        rows = slice(start, start + chunk)
        s = modulated_scores(q[:, :, rows], k, q_bits[:, rows], k_bits, lam[:, rows], scale)
        outputs.append(torch.matmul(s.softmax(-1), v.float()))
    return torch.cat(outputs, dim=2).to(q.dtype)


@dataclass
class AttentionRecorder:
    """Collects cross-attention probabilities of the conditional branch, averaged over heads and
    over the layers of a level: ``maps[(step, level)]`` is (F, h, w, L) float32."""

    maps: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, step: int, level: int, probs: torch.Tensor) -> None:
        key = (step, level)
        probs = probs.detach().float().cpu()
        self.maps[key] = self.maps[key] + probs if key in self.maps else probs
        self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, step: int, level: int) -> torch.Tensor:
        return self.maps[(step, level)] / self.counts[(step, level)]


@dataclass(frozen=True)
class StepContext:
    """What the processors need for one UNet call, passed as ``cross_attention_kwargs={"videograin": ctx}``.

    The UNet batch is ``branches × num_frames`` (classifier-free guidance stacks [uncond, cond]).
    ``cond_branch`` is the branch modulated and recorded. ``self_strength``/``cross_strength`` are
    c·ξ(t) for this step (0 disables modulation); ``levels`` the modulated UNet level indices
    (None: all). Self-attention is spatio-temporal over the ``temporal`` key frames in every case.
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


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H·D) -> (B, H, N, D)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class LayoutAttnProcessor:
    """Attention processor for ``unet.set_attn_processor``: spatio-temporal self-attention with
    ST-Layout modulation of self- and cross-attention on the conditional branch.

    Stateless: everything per call arrives in ``videograin`` (a StepContext). Without it the processor
    computes exactly what diffusers' stock AttnProcessor2_0 does (per-frame attention).
    """

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

    def _self(self, q, k, v, scale, ctx: StepContext) -> torch.Tensor:
        """Spatio-temporal self-attention. q, k, v: (branches·F, H, n, D) -> same shape."""
        frames, n = ctx.num_frames, q.shape[2]
        frames_of_keys = key_frames(frames, ctx.temporal).to(q.device)  # (F, K)

        def gather_keys(x):  # (branches·F, H, n, D) -> (branches·F, H, K·n, D)
            x = x.unflatten(0, (-1, frames))[:, frames_of_keys]  # (branches, F, K, H, n, D)
            return x.permute(0, 1, 3, 2, 4, 5).flatten(3, 4).flatten(0, 1)

        if ctx.temporal == "full":  # one attention over all tokens of the video per branch
            fold = lambda x: x.unflatten(0, (-1, frames)).permute(0, 2, 1, 3, 4).flatten(2, 3)
            unfold = lambda x: x.unflatten(2, (frames, n)).permute(0, 2, 1, 3, 4).flatten(0, 1)
            qs, ks, vs = fold(q), fold(k), fold(v)  # (branches, H, F·n, D)
        else:
            unfold = lambda x: x
            qs, ks, vs = q, gather_keys(k), gather_keys(v)

        out = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        level = self._level(ctx, n, ctx.self_strength)
        if level is not None:
            lam = ctx.self_strength * (1 - level.self_share.to(q.device))  # (F, n)
            if ctx.temporal == "full":
                rows = slice(ctx.cond_branch, ctx.cond_branch + 1)
                q_bits, k_bits, lam = level.bits.flatten(), level.bits.flatten(), lam.flatten()
            else:
                rows = slice(ctx.cond_branch * frames, (ctx.cond_branch + 1) * frames)
                q_bits, k_bits = level.bits, level.bits[frames_of_keys.cpu()].flatten(1)
            q_bits, k_bits = q_bits.to(q.device), k_bits.to(q.device)
            out[rows] = layout_attention(qs[rows], ks[rows], vs[rows], q_bits, k_bits, lam, scale)
        return unfold(out)

    def _cross(self, q, k, v, scale, ctx: StepContext) -> torch.Tensor:
        """Cross-attention per frame. q: (branches·F, H, n, D); k, v: (branches·F, H, L, D)."""
        frames, n = ctx.num_frames, q.shape[2]
        level = self._level(ctx, n, ctx.cross_strength)
        rows = slice(ctx.cond_branch * frames, (ctx.cond_branch + 1) * frames)
        if level is None and ctx.recorder is None:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        if level is None:  # recording only: plain probabilities of the conditional branch
            probs = (torch.matmul(q[rows].float(), k[rows].float().transpose(-1, -2)) * scale).softmax(-1)
        else:
            q_bits = level.bits.to(q.device)
            k_bits = ctx.layout.text_bits.to(q.device)
            lam = ctx.cross_strength * (1 - level.cross_share.to(q.device))  # (F, n)
            probs = modulated_scores(q[rows], k[rows], q_bits, k_bits, lam, scale).softmax(-1)
            out[rows] = torch.matmul(probs, v[rows].float()).to(out.dtype)
        if ctx.recorder is not None and ctx.layout is not None:
            grid = ctx.layout.at(n)
            maps = probs.mean(1).unflatten(1, (grid.height, grid.width))  # (F, h, w, L)
            ctx.recorder.add(ctx.step, grid.index, maps)
        return out


@contextmanager
def layout_processors(unet):
    """Install LayoutAttnProcessor on every attention layer of ``unet``; restore the originals after."""
    original = unet.attn_processors
    unet.set_attn_processor(LayoutAttnProcessor())
    try:
        yield unet
    finally:
        unet.set_attn_processor(original)
