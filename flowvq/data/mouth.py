"""Mouth crops from iBUG-68 landmarks: the visual input of SyncNet.

The crop is a square centred on the mean of the mouth points (48..67) whose side is
``scale`` times the mouth width (corner 48 to corner 54), smoothed over time so that a crop
sequence does not shake with landmark noise. Used for training (the record's landmarks) and
for scoring generated videos (landmarks detected on them, or the record's).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter1d

from flowvq.data.schema import MOUTH

__all__ = ["mouth_boxes", "mouth_crops"]


def mouth_boxes(landmarks: np.ndarray, scale: float = 1.8, smoothing: float = 1.0, min_side: float = 8.0) -> np.ndarray:
    """Square mouth boxes ``(T, 4)`` as ``(x0, y0, x1, y1)`` in the landmarks' pixels.

    Arguments:
        landmarks: ``(T, 68, 2)`` iBUG-68 points.
        scale: box side over mouth width.
        smoothing: Gaussian sigma in frames of the centre and side over time (0: none).
        min_side: smallest side in pixels (a closed or degenerate mouth still gets a crop).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (T, 68, 2) iBUG-68 points, got shape {points.shape}")
    centre = points[:, MOUTH].mean(1)  # (T, 2)
    side = np.maximum(np.linalg.norm(points[:, 54] - points[:, 48], axis=-1) * scale, min_side)  # (T,)
    if smoothing > 0 and len(points) > 1:
        centre = gaussian_filter1d(centre, smoothing, axis=0, mode="nearest")
        side = gaussian_filter1d(side, smoothing, mode="nearest")
    half = side[:, None] / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def mouth_crops(
    frames: np.ndarray, landmarks: np.ndarray, size: int, scale: float = 1.8, smoothing: float = 1.0
) -> np.ndarray:
    """Mouth crops ``(T, size, size, 3)`` uint8 of frames ``(T, H, W, 3)`` uint8.

    ``landmarks`` are in the frames' pixels; parts of a box outside the frame are black.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(frames) != len(landmarks):
        raise ValueError(f"{len(frames)} frames but {len(landmarks)} landmark rows: one row per frame is needed")
    boxes = mouth_boxes(landmarks, scale, smoothing)
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for index, (frame, box) in enumerate(zip(frames, boxes)):
        crop = Image.fromarray(frame).transform(
            (size, size), Image.EXTENT, tuple(float(v) for v in box), Image.BILINEAR
        )
        out[index] = np.asarray(crop)
    return out
