"""Wan 2.x's attention processors with VideoGrain's ST-Layout modulation (the Wan backbone's core).

Wan's transformer runs every block's ``attn1`` over all latent tokens of the clip (one sequence: it is
spatio-temporal already, VideoGrain's full-frame attention) and ``attn2`` from those tokens to the
umT5 text tokens. Its blocks call the processors with the layer's inputs only (no attention
arguments), so the step's ``ModulationContext`` (``method.modulation``) is bound explicitly:
``layout_processors(transformer, context)`` installs processors holding it for one transformer call
and restores the previous ones after. A level here is a transformer block. The caller binds a context
for the conditional pass only (Wan runs the guidance passes as separate calls), never by counting calls.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..method.attention import layout_attention, modulated_scores
from ..method.modulation import ModulationContext

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
    """``attn1`` (self) or ``attn2`` (cross) of block ``block`` under a ``ModulationContext``. A layer the
    context neither modulates nor records runs ``fallback``, the processor it replaced (stock, or a
    user's attention backend); a query token of strength 0 gets plain softmax attention. Recorded
    cross-attention maps are (T, h, w, L), heads averaged, into ``context.recorder`` at level ``block``
    (and the unmodulated maps into its ``unmodulated`` recorder)."""

    def __init__(self, block: int, context: ModulationContext, fallback):
        self.block, self.context, self.fallback = block, context, fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        ctx, cross = self.context, encoder_hidden_states is not None
        modulated, recorded = ctx.modulates(self.block, cross), cross and ctx.records(self.block)
        if not modulated and not recorded:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if attention_mask is not None:
            raise ValueError("Wan's layers get no attention mask; this processor takes none")
        q, k, v = wan_qkv(attn, hidden_states, encoder_hidden_states, rotary_emb)
        grid = ctx.layout.grid(self.block)
        bits = grid.bits.flatten().to(q.device)
        k_bits = ctx.layout.text_bits.to(q.device) if cross else bits
        lam = ctx.strength(grid, cross, q.device).flatten() if modulated else 0.0
        if recorded:
            probs = modulated_scores(q, k, bits, k_bits, lam).softmax(-1)  # (1, H, N, L) float32
            out = torch.matmul(probs, v.float())
            as_maps = lambda p: p[0].mean(0).unflatten(0, (-1, grid.height, grid.width))  # noqa: E731  (T, h, w, L)
            ctx.recorder.add(ctx.step, self.block, as_maps(probs))
            if ctx.recorder.unmodulated is not None:
                plain = modulated_scores(q, k, bits, k_bits, 0.0).softmax(-1) if modulated else probs
                ctx.recorder.unmodulated.add(ctx.step, self.block, as_maps(plain))
        else:
            out = layout_attention(q, k, v, bits, k_bits, lam, kernels=ctx.kernels)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


@contextmanager
def layout_processors(transformer, context: ModulationContext):
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
