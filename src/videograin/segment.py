"""Layouts without masks (VideoGrain, arXiv:2502.17258, §3.1, Fig. 3b, App. B): K-means over the self-attention features
of DDIM inversion gives coarse segments, one cluster id meaning the same thing in every frame.

The features are the self-attention queries of the decoder (up-block) layers at one UNet level, recorded
while the video is inverted (the same recording PnP uses, ``FeatureStore``), averaged over all inversion
steps, heads concatenated, each layer L2-normalised, the layers of the level concatenated and normalised
again. The points of all frames are clustered jointly (k-means++ initialisation, seeded, several
restarts, float64 on the CPU: deterministic), and each token's label is spread to its pixels (nearest).

As the paper notes, such clusters follow semantics, not instances: two objects of one class usually
share a cluster (SAM-Track separates them in the paper). ``segment_job`` is `videograin segment`: it
writes the segments as mask folders.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import loading, media, outputs, viz
from .backbones.base import check_settings
from .backbones.sd import TemporalAids
from .backbones.sd_processors import FeatureStore, PnPMode
from .config.parse import load_source_spec, resolve_model
from .config.preflight import ModelFacts, read_model
from .errors import SettingError, SpecError
from .inputs import VideoInputs, inputs_of, load_inputs
from .loading import resolve_device
from .mask_files import resize_masks
from .method.layout import token_grid
from .run_record import peak_memory, run_record

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"up_blocks\.(\d+)\.")


# ---------------------------------------------------------------------------------------------- features


class QueryAverage:
    """Stands in for ``FeatureStore.qk`` while recording (the processors only assign to it): instead
    of keeping every (layer, step)'s queries and keys (tens of GB for SD over 50 steps), it adds each
    layer's queries into a running sum. ``mean(layer)``: (F, heads, n, D) float32 on the CPU."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def __setitem__(self, key: tuple[str, int], value: tuple[torch.Tensor, torch.Tensor]) -> None:
        layer, q = key[0], value[0].detach().float().cpu()
        self.sums[layer] = self.sums[layer] + q if layer in self.sums else q
        self.counts[layer] = self.counts.get(layer, 0) + 1

    def mean(self, layer: str) -> torch.Tensor:
        return self.sums[layer] / self.counts[layer]


def attention_features(queries: dict[str, torch.Tensor], latent_size: tuple[int, int], level: int | None = None
                       ) -> tuple[torch.Tensor, int, list[str]]:
    """Per-token features of one UNet level from averaged self-attention queries.

    ``queries``: layer name -> (F, heads, n, D); ``latent_size`` (h, w) of the latents; ``level`` 0 is the
    highest resolution (h·w tokens), level l has (h/2^l)·(w/2^l); None: the coarsest level that has
    decoder self-attention (H/32 for SD at 512: 16x16; the toy model's 2x VAE gives H/4).
    Returns (features (F, C, h_l, w_l) float64, unit norm along C; the level; the layer names used).
    """
    h, w = latent_size
    grids = {}
    for name, q in queries.items():
        n = q.shape[2]
        for lv in range(12):
            gh, gw = token_grid((h, w), lv)
            if gh * gw == n:
                grids.setdefault(lv, []).append(name)
                break
    if not grids:
        raise ValueError("no decoder self-attention queries were recorded")
    if level is None:
        level = max(grids)
    if level not in grids:
        raise ValueError(f"no decoder self-attention at level {level}; recorded levels: {sorted(grids)}")
    gh, gw = token_grid((h, w), level)
    layers = sorted(grids[level], key=_layer_order)
    parts = []
    for name in layers:
        q = queries[name].double()  # (F, heads, n, D)
        frames, heads, n, dim = q.shape
        x = q.permute(0, 1, 3, 2).reshape(frames, heads * dim, gh, gw)  # heads concatenated along C
        parts.append(F.normalize(x, dim=1))
    return F.normalize(torch.cat(parts, 1), dim=1), level, layers


def _layer_order(name: str) -> tuple[int, str]:
    match = _LAYER.search(name)
    return (int(match.group(1)) if match else -1, name)


# ----------------------------------------------------------------------------------------------- k-means


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iters: int = 100, restarts: int = 4
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means (Lloyd) with k-means++ initialisation; the best of ``restarts`` runs by inertia.

    points (N, C) -> (labels (N,) int64, centroids (k, C) float64). Deterministic given ``seed``
    (float64 on the CPU, a seeded generator). An emptied cluster is re-seeded at the point farthest
    from its centroid. Raises ValueError when k < 1 or k > N.
    """
    x = points.detach().double().cpu()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points {n}, got {k}")
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    sq = (x * x).sum(1)
    for _ in range(restarts):
        centroids = _kmeans_pp(x, sq, k, generator)
        for _ in range(iters):
            dist = sq[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]
            labels = dist.argmin(1)
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(centroids).index_add_(0, labels, x)
            new = sums / counts.clamp_min(1)[:, None].double()
            for j in torch.nonzero(counts == 0).flatten().tolist():  # re-seed at the worst-served point
                far = int(dist.gather(1, labels[:, None]).squeeze(1).argmax())
                new[j] = x[far]
                labels[far] = j
            if torch.equal(new, centroids):
                break
            centroids = new
        dist = sq[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]
        labels = dist.argmin(1)
        inertia = float(dist.gather(1, labels[:, None]).clamp_min(0).sum())
        if best is None or inertia < best[0] - 1e-9:
            best = (inertia, labels, centroids)
    return best[1], best[2]


def _kmeans_pp(x: torch.Tensor, sq: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    chosen = [first]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:  # all remaining points coincide with a centre: take any unused one
            rest = [i for i in range(x.shape[0]) if i not in set(chosen)]
            nxt = rest[int(torch.randint(len(rest), (1,), generator=generator))]
        else:
            nxt = int(torch.multinomial(d2 / total, 1, generator=generator))
        chosen.append(nxt)
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    return x[chosen].clone()


def order_by_size(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Renumber cluster ids by size, largest first (ties: lower old id first): segment 0 is usually
    the background, and the numbering does not depend on k-means' internal order."""
    counts = torch.bincount(labels.flatten(), minlength=k)
    order = sorted(range(k), key=lambda j: (-int(counts[j]), j))
    mapping = torch.empty(k, dtype=torch.int64)
    mapping[torch.tensor(order)] = torch.arange(k)
    return mapping[labels]


def upsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of token labels (F, h, w) int64 to pixels (F, H, W) int64,
    pixel-centre aligned (pixel i of H takes token floor((i + 0.5) · h / H))."""
    height, width = size
    h, w = labels.shape[-2:]
    ys = torch.clamp(((torch.arange(height) + 0.5) * (h / height)).floor().long(), 0, h - 1)
    xs = torch.clamp(((torch.arange(width) + 0.5) * (w / width)).floor().long(), 0, w - 1)
    return labels[:, ys[:, None], xs[None, :]]


# ---------------------------------------------------------------------------------------------- pipeline


@torch.no_grad()
def segment_video(pipe, frames: torch.Tensor, source_prompt: str, k: int, steps: int = 50, seed: int = 0,
                  level: int | None = None, details: dict[str, Any] | None = None) -> torch.Tensor:
    """Segment a video into ``k`` clusters of its DDIM-inversion self-attention features.

    ``pipe``: a VideoGrainPipeline; ``frames`` (F, 3, H, W) in [-1, 1]; inversion under
    ``source_prompt`` with ``steps`` DDIM steps (the edit's spatio-temporal attention), queries of the
    decoder self-attention layers at UNet ``level`` (None: the coarsest with self-attention) averaged
    over all steps; K-means of all frames' tokens jointly with ``seed``. Cluster ids are ordered by
    size (0 = largest). Returns labels (F, H, W) int64 on the CPU. ``details``, when given, receives
    the level, the layer names and the token grid used.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    latents = pipe.encode_frames(frames)
    latent_size = tuple(latents.shape[-2:])
    average = QueryAverage()
    aids = TemporalAids(features=FeatureStore(average, residuals=None), features_mode=PnPMode.RECORD, pnp_steps=steps)
    pipe.invert(latents, source_prompt, steps, aids=aids)
    queries = {name: average.mean(name) for name in average.sums}
    features, level, layers = attention_features(queries, latent_size, level)
    num_frames, channels, gh, gw = features.shape
    if k > num_frames * gh * gw:
        raise ValueError(f"k={k} exceeds the {num_frames * gh * gw} feature tokens ({num_frames} frames of {gh}x{gw})")
    points = features.permute(0, 2, 3, 1).reshape(-1, channels)
    labels, _ = kmeans(points, k, seed)
    labels = order_by_size(labels, k).reshape(num_frames, gh, gw)
    if details is not None:
        details.update(level=level, layers=layers, grid=[gh, gw], feature_dim=channels)
    return upsample_labels(labels, tuple(frames.shape[-2:]))


def label_masks(labels: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """Labels (F, H, W) -> bool masks (k, F, H, W), one per cluster id."""
    labels = np.asarray(labels)
    return labels[None] == np.arange(k)[:, None, None, None]


# ---------------------------------------------------------------------------------- the `videograin segment` job


def segment_job(config: str | Path, out: str | Path | None = None, *, k: int, steps: int = 50, seed: int = 0,
                level: int | None = None, model: str | None = None, device: str | None = None,
                overwrite: bool = False) -> dict:
    """`videograin segment`: K-means segments of the inversion's self-attention features of the clip a
    config names, as mask folders ``segment_<i>/`` (source frame size, ready for a region's ``masks:``),
    segments_overlay.mp4, segments.png and run.json in ``out`` (default: segments/ beside the config),
    through the edit's output skeleton (checked, locked, a temporary folder renamed on success).
    Returns the run.json record; SpecError naming the flag for bad input."""
    started = time.perf_counter()
    if k < 2:
        raise SpecError("--k", f"must be at least 2, got {k}", "pass the number of segments, e.g. --k 3 "
                        "for two objects and the background")
    if steps < 1:
        raise SpecError("--steps", f"must be >= 1, got {steps}", "pass a positive number of steps")
    if level is not None and level < 0:
        raise SpecError("--level", f"must be >= 0, got {level}", "leave it out for the coarsest level")
    spec = load_source_spec(config)
    if model is not None:
        spec = dataclasses.replace(spec, model=resolve_model(model, Path.cwd()))
    out = Path(out).resolve() if out else spec.base_dir / "segments"
    device = resolve_device(device)
    with outputs.locked_output(out, overwrite, inputs_of(spec, config)):
        facts = read_model(spec.model)
        inputs = load_inputs(spec, facts.size_multiple)
        _check_segment_args(k, steps, level, facts, inputs)
        pipe = loading.load_pipeline(spec, device)
        timings = {"load": time.perf_counter() - started}
        with outputs.output_folder(out, overwrite) as folder:
            clock, details = time.perf_counter(), {}
            labels = segment_video(pipe, inputs.frames, spec.source_prompt, k, steps, seed, level, details)
            timings["segment"] = time.perf_counter() - clock
            masks = _write_segments(folder, label_masks(labels, k), inputs)
            config_data = spec.to_dict()
            timings["total"] = time.perf_counter() - started
            record = run_record({key: config_data[key] for key in ("model", "video", "source_prompt")}, "segment",
                                pipe, device, inputs)
            record.update(
                k=k, steps=steps, seed=seed,
                features={"kind": "decoder self-attention queries, averaged over the DDIM inversion steps", **details},
                segments=[{"masks": f"segment_{i}", "share": round(float(m.mean()), 4)} for i, m in enumerate(masks)],
                timings={key: round(v, 3) for key, v in timings.items()}, **peak_memory(device),
            )
            media.write_json(folder / "run.json", record)
    logger.info("name a folder %s/segment_<i> as a region's `masks:` (segments.png shows which)", out)
    return record


def _write_segments(folder: Path, masks: np.ndarray, inputs: VideoInputs) -> np.ndarray:
    """``segment_<i>/`` mask folders at the source size, segments_overlay.mp4 and segments.png of the
    segments' masks bool (k, F, H, W) at the working size; returns them."""
    k = len(masks)
    for i, mask in enumerate(resize_masks(masks, inputs.source_size)):  # mask folders: source size
        media.write_frames(folder / f"segment_{i}", np.repeat(mask[..., None] * np.uint8(255), 3, -1))
    overlay = viz.mask_overlay(inputs.frames_uint8, masks)
    media.write_video(folder / "segments_overlay.mp4", overlay, inputs.fps)
    alone = [viz.mask_overlay(inputs.frames_uint8, masks & (np.arange(k) == i)[:, None, None, None]) for i in range(k)]
    labels = ["source", "segments", *(f"segment_{i}" for i in range(k))]
    legend = [(f"segment_{i} ({m.mean():.0%} of the clip)", c) for i, (m, c) in enumerate(zip(masks, viz.region_colors(k)))]
    media.write_png(folder / "segments.png", viz.labelled_grid([inputs.frames_uint8, overlay, *alone], labels, legend))
    return masks


def _check_segment_args(k: int, steps: int, level: int | None, facts: ModelFacts, inputs: VideoInputs) -> None:
    """`segment`'s --steps, --level and --k against the model and the clip, before weights load."""
    try:
        check_settings(facts.capabilities, num_inference_steps=steps)
    except SettingError as err:
        raise SpecError("--steps", err.problem, err.fix) from None
    levels = facts.self_attention_levels
    if level is not None and level not in levels:
        raise SpecError("--level", f"level {level} has no decoder self-attention (levels with it: {list(levels)})",
                        "pick one of those, or leave --level out for the coarsest")
    level = level if level is not None else max(levels)
    width, height = inputs.size
    grid = token_grid((height // facts.vae_factor, width // facts.vae_factor), level)
    tokens = inputs.frames.shape[0] * grid[0] * grid[1]
    if k > tokens:
        raise SpecError("--k", f"{k} segments exceed the {tokens} feature tokens ({inputs.frames.shape[0]} "
                        f"frames of {grid[0]}x{grid[1]} at level {level})", "pick a smaller --k or a finer --level")
