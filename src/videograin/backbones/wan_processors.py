"""Wan 2.x's attention processors with VideoGrain's ST-Layout modulation (the Wan backbone's core).

Wan's transformer runs every block's ``attn1`` over all latent tokens of the clip (one sequence: it is
spatio-temporal already, VideoGrain's full-frame attention) and ``attn2`` from those tokens to the
umT5 text tokens. Its processors receive no per-call arguments beyond the layer's inputs, so the step
context is bound explicitly: ``layout_processors(transformer, context)`` installs processors holding
``context`` for one transformer call and restores the previous ones after it. The caller builds the
context for the conditional pass only (Wan runs the guidance passes as separate calls) with the
strengths of that step (λ·ξ(σ) folded in), never by counting calls.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..method.attention import KernelChoice, layout_attention


@dataclass
class WanLayoutContext:
    """One transformer call's modulation. N = T·h·w latent tokens in the transformer's order (latent
    frame, row, column), L text tokens.

    bits: (N,) int64 region bitmask per token; text_bits: (L,) int64 region bitmask per text token;
    self_strength, cross_strength: (N,) float λ per query token (0: unmodulated), already scaled by
    the step's ξ(σ) and the size terms; blocks: indices of the modulated blocks (None: all).
    """

    bits: torch.Tensor
    text_bits: torch.Tensor
    self_strength: torch.Tensor
    cross_strength: torch.Tensor
    blocks: frozenset[int] | None = None
    kernels: KernelChoice | None = None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, N, H, D) (pairs of channels rotated), as its stock processor."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def wan_qkv(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
            rotary_emb: tuple[torch.Tensor, torch.Tensor] | None):
    """The layer's q, k, v as (B, H, N, D) after its q/k norms and (self-attention) RoPE."""
    from diffusers.models.transformers.transformer_wan import _get_qkv_projections

    if attn.add_k_proj is not None:
        raise ValueError("Wan image-to-video layers (image keys) are not supported; use a text-to-video model")
    q, k, v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
    q, k = attn.norm_q(q), attn.norm_k(k)
    q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))
    if rotary_emb is not None:
        q, k = _rotate(q, *rotary_emb), _rotate(k, *rotary_emb)
    return (x.transpose(1, 2) for x in (q, k, v))


class WanLayoutAttnProcessor:
    """``attn1`` (self) or ``attn2`` (cross) of block ``block`` under a ``WanLayoutContext``. A layer of
    an unmodulated block runs ``fallback``, the processor it replaced (stock, or a user's attention
    backend); a query token of strength 0 gets plain softmax attention."""

    def __init__(self, block: int, context: WanLayoutContext, fallback):
        self.block, self.context, self.fallback = block, context, fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        ctx = self.context
        if ctx.blocks is not None and self.block not in ctx.blocks:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if attention_mask is not None:
            raise ValueError("Wan's layers get no attention mask; this processor takes none")
        q, k, v = wan_qkv(attn, hidden_states, encoder_hidden_states, rotary_emb)
        k_bits, lam = (ctx.bits, ctx.self_strength) if encoder_hidden_states is None else (ctx.text_bits,
                                                                                            ctx.cross_strength)
        out = layout_attention(q, k, v, ctx.bits.to(q.device), k_bits.to(q.device), lam.to(q.device),
                               kernels=ctx.kernels)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


@contextmanager
def layout_processors(transformer, context: WanLayoutContext):
    """Every block's attn1/attn2 under ``context`` inside the block (one transformer call); the
    previous processors (stock, or a user's) restored after it, also on an exception."""
    saved = {}
    for i, block in enumerate(transformer.blocks):
        for attn in (block.attn1, block.attn2):
            saved[attn] = attn.processor
            attn.set_processor(WanLayoutAttnProcessor(i, context, attn.processor))
    try:
        yield
    finally:
        for attn, processor in saved.items():
            attn.set_processor(processor)
