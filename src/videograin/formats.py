"""The pipeline's video, mask and output formats, as diffusers users pass and get them.

In: a video is a list of PIL images, a uint8 array, or a float array in [0, 1] (the range is read from
the dtype); numpy arrays are channels-last ``(F, H, W, 3)``, torch tensors channels-first
``(F, 3, H, W)``. Masks are one sequence per region at any size: an array ``(R, F, h, w)`` or a list of R
``(F, h, w)`` arrays or of R lists of F PIL images; bool, uint8 (0..255, >= 128 inside) or float in [0, 1]
(>= 0.5 inside). Out: ``output_type`` "pil" | "np" | "pt" | "latent", batched as diffusers' video
pipelines return them (a batch of one video: ``output.frames[0]`` is the video).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .mask_files import MASK_THRESHOLD, resize_masks

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _stack_frames(video: Any, name: str) -> torch.Tensor:
    """Any video format -> a (F, 3, H, W) tensor of its own dtype."""
    if isinstance(video, PIL.Image.Image):
        raise ValueError(f"{name} is one image: pass a list of the video's frames")
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError(f"{name} is an empty list: pass the video's frames")
        sizes = sorted({getattr(f, "size", None) if isinstance(f, PIL.Image.Image) else tuple(np.shape(f)) for f in video},
                       key=str)
        if len(sizes) > 1:
            raise ValueError(f"{name}: its frames differ in size ({', '.join(map(str, sizes[:3]))}); give frames of "
                             "one size")
        if all(isinstance(f, PIL.Image.Image) for f in video):
            return torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in video])).permute(0, 3, 1, 2)
        if all(isinstance(f, np.ndarray) for f in video):
            video = np.stack(video)
        elif all(isinstance(f, torch.Tensor) for f in video):
            video = torch.stack(list(video))
        else:
            raise ValueError(f"{name} must be a list of PIL images, numpy arrays or tensors, got a mixed list")
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"{name} as a numpy array must be (F, H, W, 3), got {video.shape}")
        return torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)
    if isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"{name} as a tensor must be (F, 3, H, W), got {tuple(video.shape)}")
        return video.detach().cpu()
    raise ValueError(f"{name} must be a list of PIL images, a numpy array or a tensor, got {type(video).__name__}")


def video_01(video: Any, name: str = "video") -> torch.Tensor:
    """Any supported video -> float32 (F, 3, H, W) in [0, 1] at its own size. uint8 is read as 0..255;
    a float video outside [0, 1] is a ValueError (frames in [-1, 1] need ``(video + 1) / 2``)."""
    frames = _stack_frames(video, name)
    if frames.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    if frames.dtype == torch.uint8:
        return frames.float().div(255).contiguous()
    if not frames.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0..255) or float (0..1), got {frames.dtype}")
    frames = frames.float().contiguous()
    if not torch.isfinite(frames).all():
        raise ValueError(f"{name} holds NaN or infinite values; give frames in [0, 1]")
    low, high = float(frames.min()), float(frames.max())
    if low < 0 or high > 1:
        hint = "; frames in [-1, 1] need (video + 1) / 2" if low >= -1 and high <= 1 else ""
        raise ValueError(f"{name} is float with values in [{low:.3g}, {high:.3g}], expected [0, 1]{hint}")
    return frames


def resize_01(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float (F, 3, H, W) in [0, 1] -> (F, 3, h, w) for ``size`` = (w, h), bicubic with antialiasing."""
    w, h = size
    if tuple(frames.shape[-2:]) == (h, w):
        return frames
    return F.interpolate(frames, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def _mask_array(mask: Any, name: str) -> np.ndarray:
    """One region's masks (F, h, w) as bool, from bool / uint8 / float arrays or a list of PIL images."""
    if isinstance(mask, (list, tuple)):
        if not mask:
            raise ValueError(f"{name} is an empty list")
        if all(isinstance(m, PIL.Image.Image) for m in mask):
            mask = np.stack([np.asarray(m.convert("L")) for m in mask])
        else:
            mask = np.stack([np.asarray(m.cpu() if isinstance(m, torch.Tensor) else m) for m in mask])
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"{name} must be (frames, height, width), got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    if mask.dtype == np.uint8:
        if mask.max() == 1:
            raise ValueError(f"{name} is uint8 with values 0/1, but uint8 masks are read 0..255 (>= 128 inside): "
                             "pass masks.astype(bool) or masks * 255")
        return mask >= MASK_THRESHOLD
    if np.issubdtype(mask.dtype, np.floating):
        if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError(f"{name} is float outside [0, 1]: pass bool masks or floats in [0, 1] (>= 0.5 inside)")
        return mask >= 0.5
    raise ValueError(f"{name} must be bool, uint8 (0..255) or float (0..1), got {mask.dtype}")


def region_masks(masks: Any, num_regions: int, num_frames: int, size: tuple[int, int]) -> torch.Tensor:
    """Masks in any supported format -> bool (R, F, H, W) at ``size`` = (W, H) (nearest neighbour,
    pixel-centre aligned as the frames are resized)."""
    if isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 4:
        regions = list(masks)
    elif isinstance(masks, Sequence) and not isinstance(masks, str):
        regions = list(masks)
    else:
        raise ValueError(f"masks must be (regions, frames, height, width) or a list with one mask sequence per "
                         f"region, got {type(masks).__name__}")
    if len(regions) != num_regions:
        raise ValueError(f"{len(regions)} mask sequences but {num_regions} region prompts: give one per region")
    out = []
    for r, mask in enumerate(regions):
        mask = _mask_array(mask, f"masks[{r}]")
        if mask.shape[0] != num_frames:
            raise ValueError(f"masks[{r}] has {mask.shape[0]} frames but the video has {num_frames}")
        out.append(resize_masks(mask, size))
    return torch.from_numpy(np.stack(out))


#: Frames converted at a time where a whole clip would take several float copies (outputs, composite).
CHUNK_FRAMES = 16


def frame_chunks(num_frames: int) -> list[slice]:
    """Consecutive runs of CHUNK_FRAMES frames covering ``num_frames``."""
    return [slice(start, start + CHUNK_FRAMES) for start in range(0, num_frames, CHUNK_FRAMES)]


def postprocess(frames: torch.Tensor, output_type: str, in_place: bool = False):
    """Decoded frames (F, 3, H, W) in [-1, 1] -> a batch of one video: "pt" (1, F, 3, H, W) and "np"
    (1, F, H, W, 3) float32 in [0, 1], "pil" [[PIL.Image] * F]. ``in_place`` (a float32 CPU tensor the
    caller gives up): "pt" and "np" are views of ``frames`` itself, so a long clip is not copied;
    otherwise new memory. PIL images are made CHUNK_FRAMES at a time."""
    if output_type not in OUTPUT_TYPES or output_type == "latent":
        raise ValueError(f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
    if output_type == "pil":
        images = []
        for chunk in frame_chunks(len(frames)):
            array = postprocess(frames[chunk], "np")[0]
            images += [PIL.Image.fromarray(f) for f in (array * 255).round().astype(np.uint8)]
        return [images]
    in_place = in_place and frames.dtype == torch.float32 and frames.device.type == "cpu"
    video = frames.clamp_(-1, 1).add_(1).mul_(0.5) if in_place else (frames.float().clamp(-1, 1) + 1) * 0.5
    if output_type == "pt":
        return video.unsqueeze(0)
    return video.cpu().numpy().transpose(0, 2, 3, 1)[None]  # a view: (F, 3, H, W) memory, (F, H, W, 3) axes


def output_to_uint8(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """One video of an "np" or "pt" output (float in [0, 1]) -> uint8 (F, H, W, 3), rounded; the
    same bytes as ``media.to_uint8`` of the [-1, 1] frames it came from."""
    if isinstance(video, torch.Tensor):
        video = video.permute(0, 2, 3, 1).cpu().numpy()
    return (np.asarray(video, dtype=np.float32) * 255).round().astype(np.uint8)
