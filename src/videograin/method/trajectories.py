"""FLATTEN patch trajectories and flow-guided attention (Cong et al. 2023, "FLATTEN";
used by VideoGrain, arXiv:2502.17258 §4.1, for temporal consistency).

Flow. The trajectories are built from the forward flow of the source, ``(F-1, 2, H, W)`` float32,
channels (x, y) in pixels: ``frame[t](p) ≈ frame[t+1](p + flow[t](p))`` (``optical_flow.video_flow``
computes it; this module is pure torch).

Trajectories. For each UNet level the per-frame token grid is ``h×w`` (the latent grid halved
``level`` times). The flow is averaged over each token's patch, scaled to token units and rounded; each
token of frame t then points at one token of frame t+1 (or outside the frame). Following FLATTEN's
``sample_trajectories``, trajectories are chains through consecutive frames: every frame-0 token starts
one, a chain continues to the token its last token points at, a token of frame t+1 that no chain reaches
starts a new trajectory (content appearing later), and when several tokens point at the same token only
one chain continues there, the others end. Each token is on exactly one trajectory and a trajectory has at
most one token per frame. :class:`Trajectories` stores this as ``traj_id`` ``(F, h*w)`` int64.
Deliberate differences from the official code, both deterministic where it is not: the flow of a patch is
its area mean (FLATTEN samples one pixel, ``mode="nearest"`` here), and a conflict goes to the
source whose unrounded destination lies nearest the target token's centre (FLATTEN: a random one).
Shifts smaller than a token are rounded away: half a token or less per frame keeps tokens in place
(``torch.round`` rounds halves to even), so a trajectory follows motion only at the token resolution.

Flow attention. :func:`flow_attention` lets every token attend to the tokens of its own trajectory
(across frames, itself included), with the usual softmax(q·kᵀ·scale)·v. Tokens are grouped into
trajectories of equal length and attended with a dense (l × l) attention per trajectory, so the cost is
Σ over tokens of its trajectory length (≤ F per token), never an N×N matrix; singletons return v.

How FLATTEN combines it with the regular self-attention (models/attention.py, FullyFrameAttention;
VideoGrain's fully_frame_forward does the same after its ST-Layout-modulated dense attention):
*sequentially, not as a sum*. In a self-attention layer whose token grid is a FLATTEN level,

    dense = softmax(Q·Kᵀ/√d)·V           # the full spatio-temporal (for VideoGrain: layout-modulated)
                                           # attention over all F·h·w tokens, per head, before to_out
    out   = flow_attention(dense, dense, dense, traj)       # default (old_qk=0)
          | flow_attention(Q, K, dense, traj)              # option old_qk=1: q, k of the layer
    hidden = to_out(merge_heads(out))

that is, the dense output *replaces* q, k and v of the trajectory attention and the trajectory output
replaces the dense output; nothing is added back (the transformer block's residual is the only skip).
:func:`combine` is this step. Scale 1/√(head dim). Where: every self-attention (attn1) layer whose
per-frame grid is a chosen level, down and up blocks alike; FLATTEN uses only the finest level (64×64
latent tokens for 512² frames, level 0); VideoGrain's ``flatten_res`` picks levels by factor
(1 → level 0, default; configs also use [1, 2, 4] = levels 0, 1, 2). When: at every step, in both DDIM
inversion and denoising, on every batch entry (both classifier-free-guidance branches share the
trajectories). Trajectories come from the source video's flow, computed once before inversion.
(The official code also builds spatial-neighbour windows around each token, but its attention drops them:
the keys are the token itself plus its trajectory, as here.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .layout import token_grid

POOL_MODES = ("area", "nearest")


# ----------------------------------------------------------------------------------------------- trajectories


def _token_flow(flows: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """Pixel flow (F-1, 2, H, W) -> unrounded token flow (F-1, 2, h, w) float32."""
    if flows.ndim != 4 or flows.shape[1] != 2:
        raise ValueError(f"flows must be (F-1, 2, H, W), got {tuple(flows.shape)}")
    if mode not in POOL_MODES:
        raise ValueError(f"flow pooling must be one of {POOL_MODES}, got {mode!r}")
    h, w = hw
    H, W = flows.shape[-2:]
    flows = flows.float()
    pooled = F.adaptive_avg_pool2d(flows, (h, w)) if mode == "area" else F.interpolate(flows, size=(h, w), mode="nearest")
    return pooled * torch.tensor([w / W, h / H], dtype=pooled.dtype, device=pooled.device).view(1, 2, 1, 1)


def flow_to_tokens(flows: torch.Tensor, hw: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """Pixel flow ``(F-1, 2, H, W)`` -> integer token displacement ``(F-1, 2, h, w)`` int64 (x, y).

    mode ``"area"``: mean flow over each token's patch; ``"nearest"``: one pixel per patch (FLATTEN).
    Then scaled by w/W (x) and h/H (y) and rounded (halves to even).
    """
    return torch.round(_token_flow(flows, hw, mode)).long()


def _groups(traj_id: torch.Tensor, count: int) -> list[torch.Tensor]:
    """Flat token indices of the trajectories, one ``(n_l, l)`` int64 tensor per length l ≥ 2 (rows:
    trajectories, in id order; columns: their tokens in frame order)."""
    flat = traj_id.reshape(-1)
    lengths = torch.bincount(flat, minlength=count)
    token_length = lengths[flat]
    order = torch.argsort(token_length * count + flat, stable=True)  # by length, then id, then frame
    sorted_length = token_length[order]
    groups = []
    for length in torch.unique(sorted_length).tolist():
        if length > 1:
            groups.append(order[sorted_length == length].view(-1, length))
    return groups


@dataclass
class Trajectories:
    """Patch trajectories of one video at one token grid.

    traj_id: int64 ``(F, h*w)``, the trajectory of each token (tokens row-major within a frame), ids
    ``0 … count-1``, each used; frame-0 tokens have ids ``0 … h*w-1`` in raster order. Flattened it
    indexes the frame-major token sequence ``f*h*w + y*w + x`` that :func:`flow_attention` expects.
    """

    traj_id: torch.Tensor
    count: int
    height: int
    width: int
    _groups: list[torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def num_frames(self) -> int:
        return self.traj_id.shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    def lengths(self) -> torch.Tensor:
        """Tokens per trajectory, int64 ``(count,)``."""
        return torch.bincount(self.traj_id.reshape(-1), minlength=self.count)

    def groups(self) -> list[torch.Tensor]:
        """Flat token indices grouped by trajectory length: ``[(n_l, l) int64 for each length l ≥ 2]``."""
        if self._groups is None:
            self._groups = _groups(self.traj_id, self.count)
        return self._groups

    def to(self, device) -> Trajectories:
        groups = None if self._groups is None else [g.to(device) for g in self._groups]
        return Trajectories(self.traj_id.to(device), self.count, self.height, self.width, groups)


def build_trajectories(flows: torch.Tensor, hw: tuple[int, int], mode: str = "area") -> Trajectories:
    """FLATTEN trajectories on an ``h×w`` token grid from pixel flow ``(F-1, 2, H, W)`` (x, y).

    Returns :class:`Trajectories` with ``traj_id`` ``(F, h*w)``, F = len(flows) + 1. See the module
    docstring for the rules (chains through consecutive frames, new ids for unreached tokens, nearest
    unrounded destination wins a conflict).
    """
    h, w = hw
    n = h * w
    exact = _token_flow(flows, hw, mode).cpu()  # (F-1, 2, h, w)
    disp = torch.round(exact).long()
    error = (exact - disp).pow(2).sum(1).flatten(1)  # (F-1, n): unrounded target to token centre, for conflicts
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    source = torch.arange(n)
    ids = [torch.arange(n)]
    count = n
    for t in range(disp.shape[0]):
        ty, tx = ys + disp[t, 1].flatten(), xs + disp[t, 0].flatten()
        inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        src, target = source[inside], (ty * w + tx)[inside]
        # rank sources by error (ties: raster order); the best-ranked source of each target wins
        rank = torch.empty(len(src), dtype=torch.long)
        rank[torch.argsort(error[t, src], stable=True)] = torch.arange(len(src))
        best = torch.full((n,), len(src), dtype=torch.long).scatter_reduce(0, target, rank, "amin")
        won = rank == best[target]
        nxt = torch.full((n,), -1, dtype=torch.long)
        nxt[target[won]] = ids[-1][src[won]]
        fresh = nxt < 0
        nxt[fresh] = torch.arange(count, count + int(fresh.sum()))
        count += int(fresh.sum())
        ids.append(nxt)
    return Trajectories(torch.stack(ids).to(flows.device), count, h, w)


def trajectories_for_levels(
    flows: torch.Tensor, latent_hw: tuple[int, int], num_levels: int, mode: str = "area"
) -> dict[int, Trajectories]:
    """Trajectories for UNet levels ``0 … num_levels-1``, keyed by tokens per frame (h*w), the
    number an attention processor sees. flows: pixel flow ``(F-1, 2, H, W)``; latent_hw: (H/8, W/8)."""
    result: dict[int, Trajectories] = {}
    for level in range(num_levels):
        hw = token_grid(latent_hw, level)
        result.setdefault(hw[0] * hw[1], build_trajectories(flows, hw, mode))
    return result


# ----------------------------------------------------------------------------------------------- attention


def flow_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, traj: Trajectories | torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Attention among the tokens of each trajectory.

    q, k: ``(B, heads, N, D)``, v: ``(B, heads, N, Dv)``, N = F·h·w tokens of one video in frame-major
    order (B may hold several videos sharing the trajectories, e.g. the guidance branches). traj:
    :class:`Trajectories` or its ``traj_id`` ``(F, h*w)`` / ``(N,)``. scale defaults to D^-0.5.
    Returns ``(B, heads, N, Dv)``: token i gets softmax_j(q_i·k_j·scale)·v_j over j on i's trajectory.
    """
    if isinstance(traj, Trajectories):
        groups, n_tokens = traj.groups(), traj.traj_id.numel()
    else:
        flat = traj.reshape(-1).long()
        groups, n_tokens = _groups(flat, int(flat.max()) + 1 if len(flat) else 0), flat.numel()
    if q.shape[-2] != n_tokens or k.shape[-2] != n_tokens or v.shape[-2] != n_tokens:
        raise ValueError(f"q, k, v must have {n_tokens} tokens (the trajectories'), got {q.shape[-2]}, {k.shape[-2]}, {v.shape[-2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    B, H = q.shape[:2]
    out = v.clone()  # a token alone on its trajectory attends only to itself
    for index in groups:
        index = index.to(q.device)
        rows, length = index.shape
        flat = index.reshape(-1)
        qs, ks, vs = (x[:, :, flat].reshape(B, H * rows, length, x.shape[-1]) for x in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        out[:, :, flat] = o.reshape(B, H, rows * length, -1).to(out.dtype)
    return out


def combine(
    dense_out: torch.Tensor,
    traj: Trajectories | torch.Tensor,
    q: torch.Tensor | None = None,
    k: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """FLATTEN's use of the trajectory attention after the dense self-attention (see module docstring).

    dense_out: the per-head output of the regular spatio-temporal self-attention ``(B, heads, N, D)``,
    before heads are merged and ``to_out`` is applied. Default (FLATTEN ``old_qk=0``): q = k = v =
    dense_out; with q and k given (``old_qk=1``, the layer's own projections) only v = dense_out.
    Returns ``(B, heads, N, D)``, which *replaces* dense_out (then merge heads, to_out as usual).
    """
    q = dense_out if q is None else q
    k = dense_out if k is None else k
    return flow_attention(q, k, dense_out, traj, scale)
