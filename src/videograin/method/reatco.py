"""ReAtCo (papers/003): attention refocusing by latent guidance (RAD) and invariant-region joint
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
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from .recorder import AttentionRecorder
from .settings import ReAtCoSettings

logger = logging.getLogger(__name__)

#: Scale of the attention logits when the maps are renormalised over the words (official code).
WORD_SOFTMAX_SCALE = 100.0

AttendFn = Callable[[torch.Tensor, int, int], torch.Tensor]  # a denoise_fn, run for the maps its recorder keeps


def word_attention(maps: torch.Tensor) -> torch.Tensor:
    """Cross-attention maps (F, h, w, L) over all L text tokens -> the same maps renormalised over
    the words (start token and the last position dropped), as the official code and Attend-and-Excite
    do: the start token takes most of the raw attention, so raw maps of a word never approach 1,
    the value L_IR's "1 − ..." presumes. Output (F, h, w, L − 2); token index i moves to i − 1."""
    return (maps[..., 1:-1] * WORD_SOFTMAX_SCALE).softmax(-1)


def rad_losses(
    maps: torch.Tensor, token_indices: list[int], masks: torch.Tensor, top_k: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_IR and L_OR (papers/003 Eq. 3-6) of one set of maps.

    maps: (F, h, w, L) cross-attention probabilities; token_indices: J token positions (in L);
    masks: (J, F, h, w) bool, each word's region; top_k: K as a share of the region's area in each
    frame (frames where a region is absent are skipped). The paper takes K from the region's area for
    both terms; the official code takes the outer term's K from the outside's area. Returns two scalars.
    """
    words = word_attention(maps)
    l_ir = maps.new_zeros(())
    l_or = maps.new_zeros(())
    for j, index in enumerate(token_indices):
        attention = words[..., index - 1].flatten(1)  # (F, h·w)
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
    whole schedule (papers/003, implementation details; the official code uses its square root)."""
    if num_steps == 1:
        return [scale]
    return [scale * (1 - 0.5 * i / (num_steps - 1)) for i in range(num_steps)]


@dataclass
class RadWindow:
    """RAD for the frames of one temporal window.

    attend: runs the conditional UNet on latents (f, 4, h, w) of these frames at (t, step) with
    ``recorder`` installed; masks: (J, f, h', w') bool regions at the recorder's level.
    """

    frames: slice
    attend: AttendFn
    recorder: AttentionRecorder
    masks: torch.Tensor

    def losses(self, latents: torch.Tensor, t: int, step: int, token_indices: list[int], top_k: float):
        self.recorder.maps.clear()
        self.recorder.counts.clear()
        self.attend(latents, t, step)
        maps = self.recorder.mean(step, self.recorder.level)
        return rad_losses(maps, token_indices, self.masks, top_k)


def rad_guide(windows: list[RadWindow], token_indices: list[int], alphas: list[float], spec: ReAtCoSettings, log: list[dict]):
    """A ``guide(step, t, latents) -> latents`` for ``sample_latents``: on the first ``spec.steps``
    steps, ``spec.iterations`` gradient steps of size ``alphas[step]`` on L_IR + L_OR (top-K share
    ``spec.top_k``) per window; windows that overlap average their updated latents. Gradients flow
    through the UNet for one window at a time. Appends {"step", "t", "L_IR", "L_OR"} (before the
    update, mean over windows) to ``log``."""
    steps, iterations, top_k = spec.steps, spec.iterations, spec.top_k

    def guide(step: int, t: int, latents: torch.Tensor) -> torch.Tensor:
        if step >= steps or not token_indices:
            return latents
        total = torch.zeros_like(latents)
        count = torch.zeros(latents.shape[0], 1, 1, 1, dtype=latents.dtype, device=latents.device)
        first = {"L_IR": 0.0, "L_OR": 0.0}
        for window in windows:
            x = latents[window.frames].detach()
            for iteration in range(iterations):
                x.requires_grad_(True)
                with torch.enable_grad():
                    l_ir, l_or = window.losses(x, t, step, token_indices, top_k)
                    (grad,) = torch.autograd.grad(l_ir + l_or, x)
                if iteration == 0:
                    first["L_IR"] += float(l_ir)
                    first["L_OR"] += float(l_or)
                x = (x - alphas[step] * grad).detach()
            total[window.frames] += x
            count[window.frames] += 1
        log.append({"step": step, "t": int(t), **{k: round(v / len(windows), 6) for k, v in first.items()}})
        logger.debug("RAD step %d: L_IR %.4f, L_OR %.4f", step, first["L_IR"], first["L_OR"])
        return total / count

    return guide


def invariant_region_sampling(
    source: torch.Tensor, mask: torch.Tensor, alphas: list[float],
    generator: torch.Generator | list[torch.Generator] | None = None,
):
    """IRJS (papers/003 Eq. 8) as a ``callback(step, t, latents)`` for ``sample_latents``.

    source: clean source latents (F, 4, h, w); mask: (F, 1, h, w) in {0, 1}, 1 where the edit may
    change the video; alphas: ᾱ of every level the sampler visits (``DDIMSchedule.alphas``). After
    step i the latents sit at alphas[i + 1]; outside the mask they become the source diffused there,
    √ᾱ·z₀ + √(1 − ᾱ)·ε with fresh seeded noise, and after the last step the clean source itself
    (V(0) = V in the paper). ``generator``: one, or a list of one per frame (diffusers' randn_tensor).
    """

    def callback(step: int, t: int, latents: torch.Tensor) -> torch.Tensor:
        keep = mask.to(latents)
        if step + 2 == len(alphas):
            target = source.to(latents)
        else:
            alpha = alphas[step + 1]
            noise = randn_tensor(source.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
            noise = noise.to(latents)
            target = alpha**0.5 * source.to(latents) + (1 - alpha) ** 0.5 * noise
        return keep * latents + (1 - keep) * target

    return callback


def rad_level(vae_factor: int, num_levels: int) -> int:
    """The UNet level whose grid is H/32 × W/32 (the paper's choice, where maps carry enough
    semantics), or the coarsest level when the model has none that coarse."""
    index = max(0, (32 // vae_factor).bit_length() - 1)
    return min(index, num_levels - 1)
