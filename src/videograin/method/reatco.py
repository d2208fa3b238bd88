"""ReAtCo (arXiv:2412.11710): attention refocusing by latent guidance (RAD) and invariant-region joint
sampling (IRJS), as a guide and a callback for ``sampling.sample_latents``.

RAD (Eq. 3-7): before a denoising step, the noisy latents x_t move against the gradient of

    L = Σ_j [1 − mean_i topK(A_i^j ⊙ M_i^j)]  +  Σ_j mean_i topK(A_i^j ⊙ (1 − M_i^j))
          (L_IR, inner region)                     (L_OR, outer region)

where A_i^j is the cross-attention map of word of interest j in frame i (heads and layers of one
UNet level averaged, conditional branch only), M_i^j its region at that level and K 20% of the
region's area: x_t ← x_t − α_t·∇L, α_t falling linearly from 1 to 0.5 (times ``step_size``).
IRJS (Eq. 8): after a step, the invariant region takes the source latents diffused to the new level
with seeded noise, the edited region keeps the sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from diffusers.utils.torch_utils import randn_tensor

from .recorder import AttentionRecorder
from .sampling import Denoiser, Schedule
from .settings import ReAtCoSettings

logger = logging.getLogger(__name__)

#: Scale of the attention logits when the maps are renormalised over the words (official code).
WORD_SOFTMAX_SCALE = 100.0

AttendFn = Denoiser  # run for the maps its recorder keeps


#: The text positions RAD renormalises over on CLIP: all but the start token and the last position.
CLIP_WORDS = slice(1, -1)


def word_attention(maps: torch.Tensor, words: slice = CLIP_WORDS) -> torch.Tensor:
    """Cross-attention maps (F, h, w, L) over all L text tokens -> the same maps renormalised over
    the ``words`` positions (``Backbone.word_positions``), as the official code and Attend-and-Excite
    do: the start token (or the padding) takes most of the raw attention, so raw maps of a word never
    approach 1, the value L_IR's "1 − ..." presumes. Output (F, h, w, len(words)); token index i moves
    to i − words.start."""
    return (maps[..., words] * WORD_SOFTMAX_SCALE).softmax(-1)


def rad_losses(
    maps: torch.Tensor, token_indices: list[int], masks: torch.Tensor, top_k: float, words: slice = CLIP_WORDS
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_IR and L_OR (ReAtCo, arXiv:2412.11710, Eq. 3-6) of one set of maps.

    maps: (F, h, w, L) cross-attention probabilities; token_indices: J token positions (in L);
    masks: (J, F, h, w) bool, each word's region; top_k: K as a share of the region's area in each
    frame (frames where a region is absent are skipped); words: the positions ``word_attention``
    renormalises over. The paper takes K from the region's area for
    both terms; the official code takes the outer term's K from the outside's area. Returns two scalars.
    """
    attention_of_words = word_attention(maps, words)
    l_ir = maps.new_zeros(())
    l_or = maps.new_zeros(())
    for j, index in enumerate(token_indices):
        attention = attention_of_words[..., index - words.start].flatten(1)  # (F, h·w)
        inside = masks[j].flatten(1).to(attention.dtype)
        inner, outer = [], []
        for i in range(attention.shape[0]):
            area = int(inside[i].sum())
            if area == 0:
                continue
            k = max(1, int(top_k * area))
            inner.append((attention[i] * inside[i]).topk(k).values.mean())
            outer.append((attention[i] * (1 - inside[i])).topk(min(k, attention.shape[1])).values.mean())
        if inner:
            l_ir = l_ir + 1 - torch.stack(inner).mean()
            l_or = l_or + torch.stack(outer).mean()
    return l_ir, l_or


def step_sizes(num_steps: int, scale: float) -> list[float]:
    """α_t for every sampling step: ``scale`` times a factor falling linearly from 1 to 0.5 over the
    whole schedule (ReAtCo (arXiv:2412.11710), implementation details; the official code uses its
    square root)."""
    if num_steps == 1:
        return [scale]
    return [scale * (1 - 0.5 * i / (num_steps - 1)) for i in range(num_steps)]


@dataclass
class RadWindow:
    """RAD for the (latent) frames of one temporal window.

    attend: runs the conditional model on latents (f, C, h, w) of these frames at (t, step) with
    ``recorder`` installed (its levels share one token grid); masks: (J, f, h', w') bool regions on
    that grid; words: the text positions the maps are renormalised over.
    """

    frames: slice
    attend: AttendFn
    recorder: AttentionRecorder
    masks: torch.Tensor
    words: slice = field(default_factory=lambda: CLIP_WORDS)

    def losses(self, latents: torch.Tensor, t: int, step: int, token_indices: list[int], top_k: float):
        self.recorder.clear()
        self.attend(latents, t, step)
        return rad_losses(self.recorder.step_mean(step), token_indices, self.masks, top_k, self.words)


def rad_guide(windows: list[RadWindow], token_indices: list[int], alphas: list[float], spec: ReAtCoSettings, log: list[dict]):
    """A ``guide(step, t, latents) -> latents`` for ``sample_latents``: on the first ``spec.steps``
    steps, ``spec.iterations`` gradient steps of size ``alphas[step]`` on L_IR + L_OR (top-K share
    ``spec.top_k``) per window; windows that overlap average their updated latents. Gradients flow
    through the model for one window at a time. Appends {"step", "t", "L_IR", "L_OR"} (before the
    update, mean over windows) and, with several iterations, "iterations": [[L_IR, L_OR] at the start
    of each one] to ``log``."""
    steps, iterations, top_k = spec.steps, spec.iterations, spec.top_k

    def guide(step: int, t: int, latents: torch.Tensor) -> torch.Tensor:
        if step >= steps or not token_indices:
            return latents
        total = torch.zeros_like(latents)
        count = torch.zeros(latents.shape[0], 1, 1, 1, dtype=latents.dtype, device=latents.device)
        losses = torch.zeros(iterations, 2, dtype=torch.float64)  # (L_IR, L_OR) per iteration, summed over windows
        for window in windows:
            x = latents[window.frames].detach()
            for iteration in range(iterations):
                x.requires_grad_(True)
                with torch.enable_grad():
                    l_ir, l_or = window.losses(x, t, step, token_indices, top_k)
                    (grad,) = torch.autograd.grad(l_ir + l_or, x)
                losses[iteration] += torch.tensor([float(l_ir), float(l_or)], dtype=torch.float64)
                x = (x - alphas[step] * grad).detach()
            total[window.frames] += x
            count[window.frames] += 1
        means = [[round(float(v) / len(windows), 6) for v in row] for row in losses]
        log.append({"step": step, "t": int(t), "L_IR": means[0][0], "L_OR": means[0][1]}
                   | ({"iterations": means} if iterations > 1 else {}))
        logger.debug("RAD step %d: L_IR %.4f, L_OR %.4f", step, *means[0])
        return total / count

    return guide


def invariant_region_sampling(
    source: torch.Tensor, mask: torch.Tensor, schedule: Schedule,
    generator: torch.Generator | list[torch.Generator] | None = None,
):
    """IRJS (ReAtCo, arXiv:2412.11710, Eq. 8) as a ``callback(step, t, latents)`` for
    ``sampling.sample_latents``, on any ``Schedule`` (DDIM's ᾱ or flow matching's σ).

    source: clean source latents (T, C, h, w); mask: (T, 1, h, w) in {0, 1}, 1 where the edit may
    change the video. After step i the latents sit at level i + 1; outside the mask they become the
    source re-noised there (``schedule.noised``) with fresh seeded noise, and after the last step the
    clean source itself (V(0) = V in the paper). ``generator``: one, or a list of one per frame
    (diffusers' randn_tensor).
    """

    def callback(step: int, t: int, latents: torch.Tensor) -> torch.Tensor:
        keep, clean = mask.to(latents), source.to(latents)
        if step + 1 == len(schedule):
            target = clean
        else:
            noise = randn_tensor(source.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
            target = schedule.noised(clean, noise.to(latents), step + 1)
        return keep * latents + (1 - keep) * target

    return callback


def rad_level(vae_factor: int, num_levels: int) -> int:
    """The UNet level whose grid is H/32 × W/32 (the paper's choice, where maps carry enough
    semantics), or the coarsest level when the model has none that coarse."""
    index = max(0, (32 // vae_factor).bit_length() - 1)
    return min(index, num_levels - 1)
