"""ControlNet condition images (VideoGrain (arXiv:2502.17258) App. F: depth or pose ControlNet in
inversion and editing).

Condition images come from a folder/video aligned with the source (read by
``inputs.read_condition_images``) or from an annotator run on the source frames: ``canny`` (OpenCV, no weights), ``depth`` (a DPT depth model
from transformers, when its weights are on disk) or ``pose`` (controlnet_aux's OpenPose, when
installed with its weights). The ControlNet itself is called by the backbone (backbones/sd.py).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .errors import WeightsUnavailable

#: Depth annotator (transformers DPT), loaded from the local cache only.
DEPTH_MODEL = "Intel/dpt-hybrid-midas"
#: OpenPose annotator weights for controlnet_aux, loaded from the local cache only.
POSE_MODEL = "lllyasviel/Annotators"
CANNY_THRESHOLDS = (100, 200)


def annotate(kind: str, frames: np.ndarray) -> np.ndarray:
    """Condition images from frames uint8 (F, H, W, 3) with annotator ``kind`` -> uint8 (F, H, W, 3).
    Raises WeightsUnavailable when the annotator's package or weights are missing, ValueError for an
    unknown annotator."""
    if kind == "canny":
        edges = [cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), *CANNY_THRESHOLDS) for frame in frames]
        return np.repeat(np.stack(edges)[..., None], 3, axis=-1)
    if kind == "depth":
        return _depth(frames)
    if kind == "pose":
        return _pose(frames)
    raise ValueError(f"unknown annotator {kind!r}: use canny, depth or pose")


def _depth(frames: np.ndarray) -> np.ndarray:
    from transformers import AutoImageProcessor, DPTForDepthEstimation

    try:
        processor = AutoImageProcessor.from_pretrained(DEPTH_MODEL, local_files_only=True)
        model = DPTForDepthEstimation.from_pretrained(DEPTH_MODEL, local_files_only=True).eval()
    except OSError as err:
        raise WeightsUnavailable(f"the depth annotator needs {DEPTH_MODEL} weights, not found locally; download "
                                 "them once (hf download Intel/dpt-hybrid-midas), or give a folder "
                                 "of depth images") from err
    out = []
    with torch.no_grad():
        for frame in frames:
            depth = model(**processor(images=frame, return_tensors="pt")).predicted_depth[None]
            depth = torch.nn.functional.interpolate(depth, size=frame.shape[:2], mode="bicubic")[0, 0]
            depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-6)
            out.append((depth * 255).round().byte().numpy())
    return np.repeat(np.stack(out)[..., None], 3, axis=-1)


def _pose(frames: np.ndarray) -> np.ndarray:
    try:
        from controlnet_aux import OpenposeDetector
    except ImportError as err:
        raise WeightsUnavailable("the pose annotator needs the controlnet_aux package: pip install controlnet_aux "
                                 "(and its weights), or give a folder of pose images") from err
    try:
        detector = OpenposeDetector.from_pretrained(POSE_MODEL, local_files_only=True)
    except (OSError, TypeError) as err:
        raise WeightsUnavailable(f"the pose annotator needs {POSE_MODEL} weights, not found locally; download "
                                 "them once, or give a folder of pose images") from err
    height, width = frames.shape[1:3]
    poses = [np.asarray(detector(frame, output_type="np")) for frame in frames]
    return np.stack([cv2.resize(pose, (width, height), interpolation=cv2.INTER_NEAREST) for pose in poses])
