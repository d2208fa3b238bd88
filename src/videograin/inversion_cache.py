"""Inversion trajectories kept on disk and reused by edits of the same clip.

An edit inverts its source before it edits; a sweep over strengths or prompts of one clip (a batch, the
app's re-edits) inverts the same source every time. ``InversionCache`` keeps each trajectory as one
safetensors file named by a key over everything the inversion depends on (``inversion_key``): the
denoiser's weights (a fingerprint of every parameter, LoRA adapters included), the source latents (so
the VAE, frames and size), the source prompt's embeddings (so the text encoder), the schedule, the
solver, the temporal mode and the control conditions. The key is stored inside the file and checked on
reading, with a checksum of its tensors and their shapes: a stale or corrupt entry is deleted and the
inversion recomputed, never trusted. Entries are written atomically, in the latents' dtype; the oldest
are deleted once the folder holds more than ``max_bytes`` (4 GB by default). The folder lives inside
an output folder (a batch's or the app's ``.inversions/``), so deleting that output clears it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 4 << 30
#: The cache's folder inside an output folder (a batch's, the app's).
INVERSIONS = ".inversions"


def _digest(update, value) -> None:
    """Feed ``value`` (tensors, numbers, strings, None, and lists/tuples/dicts of them) to ``update``."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous()
        update(f"T{tuple(tensor.shape)}{tensor.dtype}".encode())
        update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        for key in sorted(value):
            update(f"K{key}".encode())
            _digest(update, value[key])
    elif isinstance(value, (list, tuple)):
        update(f"L{len(value)}".encode())
        for item in value:
            _digest(update, item)
    else:
        update(f"V{value!r}".encode())


def weights_fingerprint(module: torch.nn.Module, values_per_tensor: int = 64) -> str:
    """A fingerprint of a module's weights: every parameter's name, shape, dtype and first values (cheap,
    and different for other weights or an added LoRA adapter)."""
    hasher = hashlib.sha256()
    for name, parameter in module.named_parameters():
        hasher.update(name.encode())
        _digest(hasher.update, parameter.detach().flatten()[:values_per_tensor])
        hasher.update(f"{tuple(parameter.shape)}".encode())
    return hasher.hexdigest()


def _checksum(tensors: list[torch.Tensor]) -> str:
    hasher = hashlib.sha256()
    _digest(hasher.update, tensors)
    return hasher.hexdigest()


def inversion_key(**parts) -> str:
    """The key of an inversion: a SHA-256 over ``parts`` (tensors by their bytes)."""
    hasher = hashlib.sha256()
    _digest(hasher.update, parts)
    return hasher.hexdigest()


class InversionCache:
    """Trajectories (lists of latents (T, C, h, w), noisiest first, see ``invert_latents``) by key, in
    ``folder``."""

    def __init__(self, folder: str | Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.folder = Path(folder)
        self.max_bytes = max_bytes

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def load(self, key: str, shape: tuple[int, ...], length: int) -> list[torch.Tensor] | None:
        """The trajectory stored under ``key`` (``length`` entries of ``shape``), or None when there is
        none or it cannot be trusted (then it is deleted)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as stored:
                metadata = stored.metadata() or {}
                trajectory = [stored.get_tensor(f"level_{i}") for i in range(length)]
            problem = ("it holds another inversion" if metadata.get("key") != key
                       else "its checksum does not match" if metadata.get("sha256") != _checksum(trajectory)
                       else "its shapes differ" if any(tuple(t.shape) != tuple(shape) for t in trajectory)
                       else None)
        except (OSError, SafetensorError, ValueError) as err:
            problem = f"it is unreadable ({err})"
        if problem is not None:
            logger.warning("inversion cache: %s not used, %s; inverting again", path.name, problem)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: evicted last
        return trajectory

    def store(self, key: str, trajectory: list[torch.Tensor]) -> None:
        """Write ``trajectory`` under ``key`` (atomically, with a checksum), then evict the oldest entries
        beyond ``max_bytes``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        trajectory = [t.detach().to("cpu").contiguous() for t in trajectory]
        tensors = {f"level_{i}": t for i, t in enumerate(trajectory)}
        path = self._path(key)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            save_file(tensors, temporary, metadata={"key": key, "sha256": _checksum(trajectory)})
            os.replace(temporary, path)
        except OSError as err:  # a cache that cannot be written costs time, not the edit
            logger.warning("inversion cache: could not write %s (%s)", path, err)
        finally:
            temporary.unlink(missing_ok=True)
        self._evict()

    def _evict(self) -> None:
        entries = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for entry in entries:
            total += entry.stat().st_size
            if total > self.max_bytes:
                entry.unlink(missing_ok=True)
