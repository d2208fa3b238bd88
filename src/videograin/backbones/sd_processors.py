"""The SD UNet's attention processors: spatio-temporal self-attention with ST-Layout modulation of
self- and cross-attention, FLATTEN's flow-guided attention, and PnP's recorded features.

Frames travel as the UNet batch; a processor reshapes them into one token sequence per video. Step
data reaches the processors explicitly, as ``cross_attention_kwargs={"videograin": StepContext}``.
"""

from __future__ import annotations

import enum
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..method.attention import layout_attention, modulated_scores
from ..method.layout import TemporalKeys
from ..method.modulation import ModulationContext
from ..method.trajectories import Trajectories, combine


class PnPMode(enum.Enum):
    """What the PnP feature store does in a pass: fill it (inversion) or read from it (edit)."""

    RECORD = "record"
    INJECT = "inject"


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
        """PnP injects the decoder's self-attention (VideoGrain (arXiv:2502.17258) §4.1 uses PnP's
        choice of layers)."""
        return layer.startswith("up_blocks") and ".attn1" in layer


@dataclass(frozen=True)
class StepContext:
    """What the processors need for one UNet call, passed as ``cross_attention_kwargs={"videograin": ctx}``.

    The UNet batch is ``branches × num_frames`` (classifier-free guidance stacks [uncond, cond]).
    ``modulation``: the step's ModulationContext (layout, step, c·ξ(t), modulated levels, recorder,
    kernels), built by ``method.modulation.step_context``; ``cond_branch`` is the branch it modulates
    and records. Self-attention is spatio-temporal over the ``temporal`` key frames in every case.
    ``frames``: which frames of the clip (of ``clip_length`` frames) the batch holds, for a call over
    a chunk of an anchored clip (``TemporalKeys.chunks``; None: all of them); ``anchor_keys``: the
    anchors' self-attention keys and values by layer, (branches, A, H, n, D) each, recorded by the
    chunk that holds the anchors and read by the others of the same model call.
    ``trajectories``: FLATTEN trajectories by tokens per frame for the levels where flow-guided
    attention runs at this step. ``features`` with ``features_mode``: PnP's store, filled or read
    (a sink: a frozen context still carries mutable stores).
    """

    num_frames: int
    modulation: ModulationContext
    temporal: TemporalKeys = TemporalKeys()
    frames: torch.Tensor | None = None
    clip_length: int | None = None
    anchor_keys: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    cond_branch: int = 0
    trajectories: dict[int, Trajectories] | None = None
    features: FeatureStore | None = None
    features_mode: PnPMode | None = None

    @property
    def step(self) -> int:
        return self.modulation.step


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H·D) -> (B, H, N, D)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class LayoutAttnProcessor:
    """Attention processor for ``unet.set_attn_processor``: spatio-temporal self-attention with
    ST-Layout modulation of self- and cross-attention on the conditional branch.

    Holds no state of its own: everything per call arrives in ``videograin`` (a StepContext), including
    the recorder and PnP store it writes into; ``layer`` is the name of the attention layer it serves
    (for PnP's features). ``fallback``: the processor it replaced (the user's attention backend:
    SDPA, sliced, xformers, ...), which computes every call the method leaves unchanged: per-frame
    attention without a context, cross-attention that is neither modulated nor recorded, and full
    spatio-temporal self-attention without modulation, flow or PnP (all frames as one sequence).
    Without a fallback those calls run diffusers' stock AttnProcessor2_0 math.
    """

    def __init__(self, layer: str = "", fallback=None):
        self.layer = layer
        self.fallback = fallback

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
        if self.fallback is not None and attn.group_norm is None:
            plain = self._plain_call(attn, hidden_states, encoder_hidden_states, videograin)
            if plain is not None:
                return plain
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

    def _plain_call(self, attn, hidden_states, encoder_hidden_states, ctx: StepContext | None):
        """The fallback's output when this call needs nothing of the method's, else None.
        hidden_states: (branches·F, n, C)."""
        if ctx is None:
            return self.fallback(attn, hidden_states, encoder_hidden_states)
        n = hidden_states.shape[1]
        if encoder_hidden_states is not None:
            if self._level(ctx, n, cross=True) is None and self._recorded(ctx, n) is None:
                return self.fallback(attn, hidden_states, encoder_hidden_states)
            return None
        pnp = ctx.features is not None and FeatureStore.takes(self.layer)
        flow = bool(ctx.trajectories) and n in ctx.trajectories
        if ctx.temporal.mode != "full" or pnp or flow or self._level(ctx, n, cross=False) is not None:
            return None
        video = hidden_states.unflatten(0, (-1, ctx.num_frames)).flatten(1, 2)  # (branches, F·n, C)
        return self.fallback(attn, video).unflatten(1, (ctx.num_frames, n)).flatten(0, 1)

    @staticmethod
    def _level(ctx: StepContext, tokens_per_frame: int, cross: bool):
        """The LevelLayout if this level's self- (cross-) attention is modulated at this step, else None."""
        modulation = ctx.modulation
        if modulation.layout is None:
            return None
        level = modulation.layout.at(tokens_per_frame)
        return level if modulation.modulates(level.index, cross) else None

    @staticmethod
    def _recorded(ctx: StepContext, tokens_per_frame: int):
        """The LevelLayout if this level's cross-attention maps are recorded at this step, else None."""
        modulation = ctx.modulation
        if modulation.layout is None:
            return None
        level = modulation.layout.at(tokens_per_frame)
        return level if modulation.records(level.index) else None

    def _plug_and_play(self, q, k, ctx: StepContext):
        """Record this layer's self-attention q, k (inversion) or replace them by the recorded ones,
        for every branch (edit). q, k: (branches·F, H, n, D)."""
        key = (self.layer, ctx.step)
        if not FeatureStore.takes(self.layer):
            return q, k
        if ctx.features_mode is PnPMode.RECORD:
            ctx.features.qk[key] = (q.detach().clone(), k.detach().clone())
        elif ctx.features_mode is PnPMode.INJECT and key in ctx.features.qk:
            branches = q.shape[0] // ctx.num_frames
            q, k = (x.to(q).repeat(branches, 1, 1, 1) for x in ctx.features.qk[key])
        return q, k

    def _self(self, q, k, v, scale, ctx: StepContext) -> torch.Tensor:
        """Spatio-temporal self-attention (then FLATTEN's trajectory attention where it runs).
        q, k, v: (branches·F, H, n, D) -> same shape."""
        frames, n = ctx.num_frames, q.shape[2]
        fold = lambda x: x.unflatten(0, (-1, frames)).permute(0, 2, 1, 3, 4).flatten(2, 3)  # -> (branches, H, F·n, D)
        unfold = lambda x: x.unflatten(2, (frames, n)).permute(0, 2, 1, 3, 4).flatten(0, 1)
        if ctx.temporal.mode == "full":
            cond = slice(ctx.cond_branch, ctx.cond_branch + 1)
            out = unfold(self._attend(fold(q), fold(k), fold(v), scale, ctx, n, cond))
        else:
            out = self._key_frames(q, k, v, scale, ctx)
        trajectories = ctx.trajectories.get(n) if ctx.trajectories else None
        if trajectories is None:
            return out
        return unfold(combine(fold(out), trajectories))

    def _attend(self, qs, ks, vs, scale, ctx: StepContext, n: int, rows: slice, q_frames=None, k_frames=None):
        """Attention of queries qs (B, H, Nq, D) to keys ks, vs (B, H, Nk, D), laid out as the rows
        ``rows`` of B of the conditional branch and the same for the others, with
        ST-Layout modulation on the conditional rows where this level is modulated. ``q_frames``
        (G,): the clip frame of each row's queries, ``k_frames`` (G, K): each row's key frames (both
        None: one row per branch holding every frame, full attention)."""
        level = self._level(ctx, n, cross=False)
        if level is None:
            return F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        lam = ctx.modulation.strength(level, cross=False, device=qs.device)  # (F, n)
        bits = level.bits.to(qs.device)
        if q_frames is None:
            q_bits, k_bits, lam = bits.flatten(), bits.flatten(), lam.flatten()
        else:
            q_bits, k_bits, lam = bits[q_frames], bits[k_frames].flatten(1), lam[q_frames]
        out = torch.empty_like(qs)
        out[rows] = layout_attention(qs[rows], ks[rows], vs[rows], q_bits, k_bits, lam, scale,
                                     kernels=ctx.modulation.kernels)
        for plain in (slice(0, rows.start), slice(rows.stop, None)):  # the other branches: unmodulated
            if len(qs[plain]):
                out[plain] = F.scaled_dot_product_attention(qs[plain], ks[plain], vs[plain], scale=scale)
        return out

    def _key_frames(self, q, k, v, scale, ctx: StepContext) -> torch.Tensor:
        """Self-attention of each frame to its key frames (``TemporalKeys.groups``), one attention
        per group of frames with as many key frames; in a chunk of an anchored clip the anchors' keys
        and values come from (or go to) ``ctx.anchor_keys``. q, k, v: (branches·F, H, n, D)."""
        frames, device = ctx.num_frames, q.device
        clip = ctx.clip_length or frames
        here = ctx.frames.to(device) if ctx.frames is not None else torch.arange(frames, device=device)
        q5, k5, v5 = (x.unflatten(0, (-1, frames)) for x in (q, k, v))  # (branches, F, H, n, D)
        row_of = torch.full((clip,), -1, dtype=torch.long, device=device)  # clip frame -> row of the key source
        if ctx.anchor_keys is not None:
            anchors = ctx.temporal.anchor_frames(clip).to(device)
            if self.layer in ctx.anchor_keys:  # a later chunk: the anchors' keys of this step
                k_anchor, v_anchor = ctx.anchor_keys[self.layer]
                k5, v5 = torch.cat([k5, k_anchor], 1), torch.cat([v5, v_anchor], 1)
                row_of[anchors] = torch.arange(frames, frames + len(anchors), device=device)
            else:  # the anchors' chunk comes first
                local = torch.searchsorted(here, anchors)
                ctx.anchor_keys[self.layer] = (k5[:, local], v5[:, local])
        row_of[here] = torch.arange(frames, device=device)
        out = torch.empty_like(q5)
        for clip_frames, keys in ctx.temporal.groups(clip):
            clip_frames, keys = clip_frames.to(device), keys.to(device)
            mine = torch.isin(clip_frames, here)
            if not mine.any():
                continue
            clip_frames, keys = clip_frames[mine], keys[mine]
            count = len(clip_frames)
            gather = lambda x: x[:, row_of[keys]].permute(0, 1, 3, 2, 4, 5).flatten(3, 4).flatten(0, 1)  # noqa: E731
            qs = q5[:, row_of[clip_frames]].flatten(0, 1)  # (branches·G, H, n, D)
            cond = slice(ctx.cond_branch * count, (ctx.cond_branch + 1) * count)
            attended = self._attend(qs, gather(k5), gather(v5), scale, ctx, q.shape[2], cond, clip_frames, keys)
            out[:, row_of[clip_frames]] = attended.unflatten(0, (-1, count))
        return out.flatten(0, 1)

    def _cross(self, q, k, v, scale, ctx: StepContext) -> torch.Tensor:
        """Cross-attention per frame. q: (branches·F, H, n, D); k, v: (branches·F, H, L, D)."""
        frames, n = ctx.num_frames, q.shape[2]
        level = self._level(ctx, n, cross=True)
        rows = slice(ctx.cond_branch * frames, (ctx.cond_branch + 1) * frames)
        recorder = ctx.modulation.recorder if self._recorded(ctx, n) is not None else None
        if level is None and recorder is None:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        plain = lambda: (torch.matmul(q[rows].float(), k[rows].float().transpose(-1, -2)) * scale).softmax(-1)  # noqa: E731
        if level is None:  # recording only: plain probabilities of the conditional branch
            probs = plain()
        else:
            here = slice(None) if ctx.frames is None else ctx.frames.to(q.device)
            q_bits = level.bits.to(q.device)[here]
            k_bits = ctx.modulation.layout.text_bits.to(q.device)
            lam = ctx.modulation.strength(level, cross=True, device=q.device)[here]  # (F, n)
            probs = modulated_scores(q[rows], k[rows], q_bits, k_bits, lam, scale).softmax(-1)
            modulated = torch.matmul(probs, v[rows].float()).to(out.dtype)
            out = torch.cat([out[: rows.start], modulated, out[rows.stop :]])  # not in place: autograd
        if recorder is not None:
            grid = ctx.modulation.layout.at(n)
            as_maps = lambda p: p.mean(1).unflatten(1, (grid.height, grid.width))  # noqa: E731  (F, h, w, L)
            recorder.add(ctx.step, grid.index, as_maps(probs))
            if recorder.unmodulated is not None:
                recorder.unmodulated.add(ctx.step, grid.index, as_maps(probs if level is None else plain()))
        return out


@contextmanager
def residual_injection(unet, ctx: StepContext):
    """For one UNet call: record (``ctx.features_mode`` RECORD) or replace (INJECT, every branch)
    the outputs of the PNP_RESNETS blocks at ``ctx.step``. The forward hooks live only inside the
    ``with`` block; nothing stays on the modules."""
    store = ctx.features
    if store is None or store.residuals is None:
        yield
        return
    modules = dict(unet.named_modules())

    def hook_for(key):
        def hook(module, args, output):
            if ctx.features_mode is PnPMode.RECORD:
                store.residuals[key] = output.detach().clone()
            elif ctx.features_mode is PnPMode.INJECT and key in store.residuals:
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
    """Install LayoutAttnProcessor on every attention layer of ``unet``, each falling back to the processor
    it replaces; restore the originals after."""
    original = unet.attn_processors
    unet.set_attn_processor({name: LayoutAttnProcessor(name.removesuffix(".processor"), processor)
                             for name, processor in original.items()})
    try:
        yield unet
    finally:
        unet.set_attn_processor(original)
