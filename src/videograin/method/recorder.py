"""Cross-attention maps recorded during denoising (for the attention pictures, the attention-mass
metric and ReAtCo's guidance loss), by step and level (a backbone's level: a UNet resolution on SD, a
transformer block on Wan)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttentionRecorder:
    """Collects cross-attention probabilities of the conditional branch, averaged over heads and
    over the layers of a level: ``maps[(step, level)]`` is (T, h, w, L) float32, T the latent frames.

    ``levels`` set: only those levels are recorded (None: all). ``keep_graph``: maps stay on their device inside
    the autograd graph (ReAtCo's loss differentiates them); otherwise they are detached to the CPU.
    ``unmodulated``: a second recorder that gets the same maps computed without the layout modulation.
    """

    levels: frozenset[int] | None = None
    keep_graph: bool = False
    unmodulated: AttentionRecorder | None = None
    maps: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple[int, int], int] = field(default_factory=dict)

    def wants(self, level: int) -> bool:
        return self.levels is None or level in self.levels

    def add(self, step: int, level: int, probs: torch.Tensor) -> None:
        if not self.wants(level):
            return
        key = (step, level)
        probs = probs.float() if self.keep_graph else probs.detach().float().cpu()
        self.maps[key] = self.maps[key] + probs if key in self.maps else probs
        self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, step: int, level: int) -> torch.Tensor:
        return self.maps[(step, level)] / self.counts[(step, level)]

    def step_mean(self, step: int) -> torch.Tensor:
        """The maps of ``step`` averaged over its recorded levels (which must share one token grid)."""
        means = [self.mean(*key) for key in self.maps if key[0] == step]
        return means[0] if len(means) == 1 else torch.stack(means).mean(0)

    def clear(self) -> None:
        self.maps.clear()
        self.counts.clear()

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
