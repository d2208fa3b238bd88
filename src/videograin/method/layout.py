"""Masks and token spans -> per-level region bitmasks and size terms (pure, built once per edit).

Bit ``r`` of a token's mask is set when the token lies in region ``r``; regions may overlap (a part
inside an instance). Two tokens attend "positively" when their bitmasks share a bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from .settings import AUTO_ANCHORED_ABOVE, MAX_REGIONS, TEMPORAL_MODES, Modulation



@dataclass(frozen=True)
class LevelLayout:
    """Layout at one UNet resolution with a per-frame token grid ``height × width``.

    bits:        (F, h·w) int64 region bitmask of each image token.
    self_share:  (F, h·w) float32, share of the token's self-attention keys (for the temporal mode)
                 that share a region with it: the size term S of self-attention.
    cross_share: (F, h·w) float32, share of the token's own frame that shares a region with it: the
                 size term S of cross-attention.
    """

    index: int
    height: int
    width: int
    bits: torch.Tensor
    self_share: torch.Tensor
    cross_share: torch.Tensor


@dataclass(frozen=True)
class Layout:
    """Everything the attention processors look up: one LevelLayout per token grid, keyed by the
    number of tokens per frame, and the text tokens' bitmask ``text_bits`` (L,) int64. ``one_grid``:
    every level (a transformer block) attends on the same single grid, else level i is the grid
    whose ``index`` is i (a UNet resolution)."""

    levels: dict[int, LevelLayout]
    text_bits: torch.Tensor
    num_frames: int
    temporal: TemporalKeys
    one_grid: bool = False

    def at(self, tokens_per_frame: int) -> LevelLayout:
        return self.levels[tokens_per_frame]

    def grid(self, level: int) -> LevelLayout:
        """The token grid a level attends on."""
        if self.one_grid:
            return next(iter(self.levels.values()))
        return next(g for g in self.levels.values() if g.index == level)

    def region_masks(self, level: int, regions: list[int]) -> torch.Tensor:
        """The given regions on ``level``'s grid as (len(regions), F, h, w) bool."""
        grid = self.grid(level)
        bits = grid.bits.view(-1, grid.height, grid.width)
        return torch.stack([(bits >> r) & 1 == 1 for r in regions]) if regions else torch.zeros(0, *bits.shape, dtype=torch.bool, device=bits.device)

    def frames(self, window: slice) -> Layout:
        """The layout of the (latent) frames in ``window`` alone (a temporal window): bits and the
        per-frame cross size terms cut, the self size terms recomputed over the window's keys."""
        levels = {}
        for n, grid in self.levels.items():
            bits = grid.bits[window]
            share = region_share(bits, self.temporal.groups(bits.shape[0]))
            levels[n] = dataclasses.replace(grid, bits=bits, self_share=share, cross_share=grid.cross_share[window])
        return dataclasses.replace(self, levels=levels, num_frames=len(range(self.num_frames)[window]))


def token_grid(latent_size: tuple[int, int], level: int) -> tuple[int, int]:
    """Per-frame token grid (h, w) at a level: the latent grid halved ``level`` times, rounding up as
    SD's stride-2 convolutions do. The one rule for every module that maps tokens to pixels."""
    h, w = latent_size
    for _ in range(level):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def region_share(bits: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Share of each token's keys that share a region with it (the size term S).

    bits: (F, n) int64 bitmasks; groups: ``TemporalKeys.groups``, (frames (G,), their key frames
    (G, K)) pairs covering every frame once. Returns (F, n) float32. Works on the few distinct bitmask
    values, never an N × N map.
    """
    values = torch.unique(bits)  # (V,)
    counts = (bits.unsqueeze(-1) == values).sum(1).float()  # (F, V) tokens per value and frame
    shares = ((values[:, None] & values[None, :]) != 0).float()  # (V, V)
    share_per_value = torch.empty_like(counts)
    for frames, keys in groups:
        key_counts = counts[keys.to(bits.device)].sum(1)  # (G, V)
        share_per_value[frames.to(bits.device)] = key_counts @ shares.T / (keys.shape[1] * bits.shape[1])
    return torch.gather(share_per_value, 1, torch.searchsorted(values, bits))


@dataclass(frozen=True)
class TemporalKeys:
    """Which frames each frame's self-attention queries see (``Modulation.temporal`` resolved for a
    clip, ``temporal_keys``).

    full: every frame; sparse_causal: the first and the previous frame (frame 0 sees itself twice,
    which leaves softmax unchanged); per_frame: the frame itself; anchored: ``anchors`` frames spread
    evenly over the clip (first and last included) plus the frame's group (frames split into runs of
    ``group``). Anchored frames see only anchors and their own groups, so the groups that hold an
    anchor form a closed set, and every other group needs the anchors' keys and itself: the model can
    run over ``chunks`` of whole groups, the anchors' chunk first, and give the result of one call.
    """

    mode: str = "full"
    anchors: int = 8
    group: int = 4
    chunk: int = 16

    def __post_init__(self) -> None:
        if self.mode not in TEMPORAL_MODES or self.mode == "auto":
            raise ValueError(f"temporal must be one of {TEMPORAL_MODES[1:]}, got {self.mode!r}")

    def anchor_frames(self, num_frames: int) -> torch.Tensor:
        """(A,) int64, ascending: the anchor frames of a clip (every frame when anchors >= frames)."""
        return torch.linspace(0, num_frames - 1, min(self.anchors, num_frames)).round().long().unique()

    def groups(self, num_frames: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Frames with the same number of key frames, with those: [(frames (G,), keys (G, K)), ...],
        every frame in exactly one entry, keys ascending without repeats (except sparse_causal's)."""
        return _groups(self, num_frames)

    def chunks(self, num_frames: int) -> list[torch.Tensor]:
        """The frames of each model call (int64 tensors): one call of every frame, except anchored clips
        longer than ``chunk``: the groups holding anchors first, then the other groups in order, whole
        groups of up to ``chunk`` frames (at least one group) per call."""
        if self.mode != "anchored" or num_frames <= self.chunk:
            return [torch.arange(num_frames)]
        group_of = torch.arange(num_frames) // self.group
        anchored = torch.isin(group_of, group_of[self.anchor_frames(num_frames)])
        chunks, current = [torch.arange(num_frames)[anchored]], []
        for g in group_of[~anchored].unique().tolist():
            frames = list(range(g * self.group, min((g + 1) * self.group, num_frames)))
            if current and len(current) + len(frames) > self.chunk:
                chunks.append(torch.tensor(current))
                current = []
            current += frames
        return chunks + ([torch.tensor(current)] if current else [])


@cache
def _groups(keys: TemporalKeys, num_frames: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    f = torch.arange(num_frames)
    if keys.mode == "full":
        return [(f, f.expand(num_frames, num_frames))]
    if keys.mode == "sparse_causal":
        return [(f, torch.stack([torch.zeros_like(f), (f - 1).clamp(min=0)], dim=1))]
    if keys.mode == "per_frame":
        return [(f, f[:, None])]
    anchors = keys.anchor_frames(num_frames)
    by_size: dict[int, tuple[list[int], list[torch.Tensor]]] = {}
    for frame in range(num_frames):
        start = frame // keys.group * keys.group
        seen = torch.cat([anchors, torch.arange(start, min(start + keys.group, num_frames))]).unique()
        frames, key_rows = by_size.setdefault(len(seen), ([], []))
        frames.append(frame)
        key_rows.append(seen)
    return [(torch.tensor(frames), torch.stack(rows)) for frames, rows in by_size.values()]


def temporal_keys(modulation: Modulation | None, num_frames: int, modes: tuple[str, ...]) -> TemporalKeys:
    """The key frames of an edit of ``num_frames`` (latent) frames on a backbone that takes ``modes``:
    ``modulation.temporal`` (no modulation: its default) with ``auto`` resolved, anchored above
    AUTO_ANCHORED_ABOVE frames where the backbone takes it, full otherwise."""
    modulation = modulation or Modulation()
    mode = modulation.temporal
    if mode == "auto":
        mode = "anchored" if num_frames > AUTO_ANCHORED_ABOVE and "anchored" in modes else "full"
    return TemporalKeys(mode, modulation.anchors, modulation.group, modulation.chunk)


def downsample_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(R, F, H, W) bool -> (R, F, height, width) bool: a token is in a region when at least half of
    its pixels are. A region present in a frame never vanishes: if no token reaches half, the token
    with the largest coverage is kept, so small parts stay controllable at coarse levels."""
    cover = F.interpolate(masks.float(), size=(height, width), mode="area")  # (R, F, h, w)
    down = cover >= 0.5
    flat_cover = cover.flatten(2)
    lost = ~down.flatten(2).any(-1) & (flat_cover.amax(-1) > 0)  # (R, F)
    if lost.any():
        best = flat_cover.argmax(-1)  # (R, F)
        rescue = torch.zeros_like(flat_cover, dtype=torch.bool)
        rescue.scatter_(-1, best.unsqueeze(-1), lost.unsqueeze(-1))
        down = down | rescue.view_as(down)
    return down


def latent_frame_masks(masks: torch.Tensor, temporal_factor: int) -> torch.Tensor:
    """(R, F, h, w) bool per source frame -> (R, T, h, w) per latent frame of a video VAE that
    compresses time by ``temporal_factor`` (Wan: 4, T = (F − 1)/4 + 1): latent frame 0 is source frame
    0 and latent frame j >= 1 covers source frames 4j − 3 .. 4j; a token is in a region when it is in
    any of them, so a moving object is never cut. The frame count is the backbone's to check
    (``backbones.base.check_settings``)."""
    groups = masks[:, 1:].unflatten(1, (-1, temporal_factor)).any(2)  # (R, T - 1, h, w)
    return torch.cat([masks[:, :1], groups], dim=1)


def token_bits(masks: torch.Tensor) -> torch.Tensor:
    """(R, F, h, w) bool -> (F, h·w) int64 bitmask."""
    weights = torch.tensor([1 << r for r in range(masks.shape[0])], dtype=torch.int64, device=masks.device)
    return (masks.flatten(2).long() * weights[:, None, None]).sum(0)


def text_token_bits(spans: list[tuple[int, int] | None], length: int) -> torch.Tensor:
    """(L,) int64: bit r set on the tokens of region r's prompt span; start, end, padding and words
    outside any region prompt stay 0."""
    bits = torch.zeros(length, dtype=torch.int64)
    for r, span in enumerate(spans):
        if span is not None:
            bits[span[0] : span[1]] |= 1 << r
    return bits


def build_layout(
    masks: torch.Tensor,
    spans: list[tuple[int, int] | None],
    latent_size: tuple[int, int],
    num_levels: int,
    temporal: TemporalKeys = TemporalKeys(),
    text_length: int = 77,
) -> Layout:
    """Precompute the ST-Layout lookup tables.

    masks: (R, F, H, W) bool at pixel resolution; spans: one text span per region (None: no words);
    latent_size: (h, w) of the latents, the grid of level 0; level l has ``token_grid(latent_size, l)``.
    """
    num_regions, num_frames = masks.shape[:2]
    if num_regions > MAX_REGIONS:
        raise ValueError(f"at most {MAX_REGIONS} regions are supported, got {num_regions}")
    self_keys, own_frame = temporal.groups(num_frames), TemporalKeys("per_frame").groups(num_frames)
    levels = {}
    for index in range(num_levels):
        h, w = token_grid(latent_size, index)
        bits = token_bits(downsample_masks(masks, h, w))  # (F, hw)
        levels[h * w] = LevelLayout(
            index=index,
            height=h,
            width=w,
            bits=bits,
            self_share=region_share(bits, self_keys),
            cross_share=region_share(bits, own_frame),
        )
    return Layout(levels, text_token_bits(spans, text_length), num_frames, temporal)


def blend_mask(masks: torch.Tensor, edited: list[bool], latent_size: tuple[int, int]) -> torch.Tensor:
    """Per-frame union of the edited regions at latent resolution: (F, 1, h, w) float in {0, 1}.

    A latent pixel counts as edited when any of its pixels is (max pooling), so the edit is never
    clipped; outside this mask the latents follow the inversion trajectory.
    """
    chosen = masks[torch.tensor(edited, dtype=torch.bool)]
    union = chosen.any(0) if len(chosen) else torch.zeros_like(masks[0])
    pooled = F.adaptive_max_pool2d(union[:, None].float(), latent_size)
    return pooled


def composite_applies(composite: bool, blend: bool, reatco) -> bool:
    """Whether an edit's decoded frames are composited over the source: asked for (``composite``), and the
    unedited latents were kept on the source (the latent blend, or ReAtCo's IRJS)."""
    return composite and (blend or (reatco is not None and reatco.irjs))


def composite_weights(masks: torch.Tensor, edited: list[bool], margin: int) -> torch.Tensor:
    """Pixel weights of the edit for compositing the decoded frames over the source: (F, 1, H, W)
    float in [0, 1]. masks: (R, F, H, W) bool; edited[r]: region r has a prompt. The union of the
    edited regions grown by ``margin`` pixels, then feathered over another ``margin``: 1 on and next
    to the edits, 0 from 2·margin away (there the source shows). Kept regions (empty prompt) are 0
    wherever no edited region covers them: what a user marks as kept is the source exactly."""
    chosen = torch.tensor(edited, dtype=torch.bool)
    none = torch.zeros_like(masks[0])
    union = masks[chosen].any(0) if chosen.any() else none
    kept = (masks[~chosen].any(0) if (~chosen).any() else none) & ~union
    size = 2 * margin + 1
    grown = F.max_pool2d(union[:, None].float(), size, stride=1, padding=margin)
    feathered = F.avg_pool2d(grown, size, stride=1, padding=margin, count_include_pad=False)
    return feathered * (~kept)[:, None]
