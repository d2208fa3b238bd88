"""CLIP-based scores: CLIP-T (frames against the prompt), CLIP-F (frame against frame) and PickScore, with
the image-text scorers they use (transformers' CLIP, loaded offline-safe: ``WeightsUnavailable`` when
the weights are not here)."""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WeightsUnavailable, first_line
from ..hub import obtainable
from ..media import as_uint8_frames

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_PICKSCORE = "yuvalkirstain/PickScore_v1"
#: PickScore_v1 ships the model only; its tokenizer is the one of the CLIP it was fine-tuned from.
DEFAULT_PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_VOCAB = 256  # a byte-level BPE has at least its 256 byte symbols; fewer means no vocabulary was read


class ImageTextScorer(Protocol):
    """What the CLIP-based metrics need; :class:`ClipScorer` is the real one, tests may pass stubs.

    ``embed_images`` takes uint8 ``(H, W, 3)`` images (sizes may differ) and returns unit-norm
    embeddings ``(N, D)``; ``embed_texts`` returns unit-norm ``(T, D)``; ``logit_scale`` turns cosine
    similarities into softmax logits (CLIP: 100).
    """

    logit_scale: float

    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor: ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


class ClipScorer:
    """A ``transformers`` CLIPModel with its tokenizer and a torch image preprocessing.

    Images are resized (bicubic, antialiased) so the short side is the model's ``image_size``,
    centre-cropped and normalised with CLIP's mean and std, as CLIPImageProcessor does, without
    torchvision. ``model`` may be any CLIPModel (a random-weight one built from a small CLIPConfig in
    tests); :meth:`from_pretrained` loads one.
    """

    def __init__(
        self,
        model,
        tokenizer,
        image_size: int | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        batch_size: int = 16,
        name: str | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(image_size or model.config.vision_config.image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.batch_size = batch_size
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.logit_scale = float(model.logit_scale.detach().exp())

    @classmethod
    def from_pretrained(
        cls, model_id: str, tokenizer_id: str | None = None, device: str | torch.device | None = None,
        dtype: torch.dtype | None = None, **kwargs,
    ) -> "ClipScorer":
        """Load ``CLIPModel.from_pretrained(model_id)`` (safetensors) and the CLIP tokenizer of
        ``tokenizer_id`` (else, or when that fails, of ``model_id``). Raises WeightsUnavailable when the
        model or every tokenizer source cannot be read."""
        if not obtainable(model_id, "config.json"):
            raise WeightsUnavailable(f"cannot load CLIP model {model_id!r}: not on disk and the hub cannot be reached")
        from transformers import CLIPModel, CLIPTokenizer

        try:
            model = CLIPModel.from_pretrained(model_id, use_safetensors=True)
        except OSError as err:
            raise WeightsUnavailable(f"cannot load CLIP model {model_id!r}: {first_line(err)}") from err
        tokenizer, errors = None, []
        for source in dict.fromkeys([tokenizer_id or model_id, model_id]):  # then the model's own, if any
            try:
                candidate = CLIPTokenizer.from_pretrained(source)
            except OSError as err:
                errors.append(f"{source!r}: {first_line(err)}")
                continue
            # transformers 5 returns an empty tokenizer (special tokens only) when it finds no files
            if len(candidate) >= MIN_VOCAB:
                tokenizer = candidate
                break
            errors.append(f"{source!r}: no tokenizer files found ({len(candidate)} tokens)")
        if tokenizer is None:
            raise WeightsUnavailable(f"cannot load a CLIP tokenizer ({'; '.join(errors)})")
        model = model.to(device or "cpu", dtype or torch.float32)
        return cls(model, tokenizer, name=model_id, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 ``(H, W, 3)`` images -> normalised ``(N, 3, S, S)`` float32 (S = image_size)."""
        size, out = self.image_size, []
        for image in images:
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)[None]
            h, w = x.shape[-2:]
            # short side to `size`, long side truncated, as transformers' get_resize_output_image_size
            new_h, new_w = (size, max(size, int(size * w / h))) if h <= w else (max(size, int(size * h / w)), size)
            if (new_h, new_w) != (h, w):
                x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
            top, left = (new_h - size) // 2, (new_w - size) // 2
            x = x[0, :, top : top + size, left : left + size].clamp(0, 1)
            out.append((x - self.mean) / self.std)
        return torch.stack(out)

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Unit-norm image embeddings ``(N, D)`` float32 on the CPU."""
        chunks = []
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(images), self.batch_size):
            pixels = self.preprocess(images[start : start + self.batch_size]).to(self.device, dtype)
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels)))
        return F.normalize(torch.cat(chunks).float().cpu(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(T, D)`` float32 on the CPU (prompts truncated to 77 tokens)."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return F.normalize(_features(self.model.get_text_features(**tokens)).float().cpu(), dim=-1)


def _features(output) -> torch.Tensor:
    """CLIPModel.get_*_features returns a tensor (transformers 4) or an output whose pooler_output is
    the projected embedding (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_text_score(scorer: ImageTextScorer, frames: Any, prompt: str) -> float:
    """CLIP-T: mean over frames of cos(frame, prompt) × 100."""
    images = list(as_uint8_frames(frames))
    return float((scorer.embed_images(images) @ scorer.embed_texts([prompt]).T).mean() * 100)


def clip_frame_consistency(scorer: ImageTextScorer, frames: Any) -> dict[str, float]:
    """CLIP-F: mean cos of consecutive frames × 100 (``clip_f``) and of all frame pairs i < j
    (``clip_f_all_pairs``). Needs at least 2 frames."""
    frames = as_uint8_frames(frames)
    if len(frames) < 2:
        raise ValueError("frame consistency needs at least 2 frames")
    emb = scorer.embed_images(list(frames))
    sims = emb @ emb.T
    consecutive = sims.diagonal(offset=1)
    i, j = torch.triu_indices(len(frames), len(frames), offset=1)
    return {"clip_f": float(consecutive.mean() * 100), "clip_f_all_pairs": float(sims[i, j].mean() * 100)}


def pick_score(scorer: ImageTextScorer, frames: Any, prompt: str) -> float:
    """PickScore: mean over frames of logit_scale · cos(frame, prompt) with the PickScore model."""
    images = list(as_uint8_frames(frames))
    return float((scorer.embed_images(images) @ scorer.embed_texts([prompt]).T).mean() * scorer.logit_scale)
