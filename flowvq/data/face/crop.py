"""FFHQ-style face crops: the quad from the eyes and mouth, its smoothed track, the warp.

:func:`crop_transforms` computes an FFHQ-style quad from the eyes and the mouth corners
(centre a little below the eyes, side from the eye distance and the eye-to-mouth
distance, rotated with the eye line), smooths it over time, and gives the similarity that
maps frame pixels to crop pixels.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from flowvq.data.face.ibug68 import to_ibug68

__all__ = [
    "crop_transforms",
    "ffhq_quads",
    "normalise_to_crop",
    "to_clip_frame",
    "transform_points",
    "warp_crop",
]


def ffhq_quads(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FFHQ-style crop square per frame from the eyes and mouth corners.

    Arguments:
        landmarks: FaceMesh landmarks ``(T, N, >=2)`` in pixels, or their iBUG-68 subset ``(T, 68, >=2)``.

    Returns:
        centre ``(T, 2)`` and half-side vector ``x`` ``(T, 2)`` (along the crop's x axis);
        the crop's y axis is ``x`` turned by +90 degrees (downwards in the image).
    """
    points = landmarks[..., :2].astype(np.float64)
    ibug = points if points.shape[-2] == 68 else to_ibug68(points)  # (T, 68, 2)
    eye_left, eye_right = ibug[:, 36:42].mean(1), ibug[:, 42:48].mean(1)
    mouth = (ibug[:, 48] + ibug[:, 54]) / 2
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth - eye_avg
    # the x axis: the eye line averaged with the eye-to-mouth direction turned by -90 degrees
    # (which points along the eye line of an upright face), so that both set the face's roll
    x = eye_to_eye + np.stack([eye_to_mouth[:, 1], -eye_to_mouth[:, 0]], axis=1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    half = np.maximum(np.linalg.norm(eye_to_eye, axis=1) * 2.0, np.linalg.norm(eye_to_mouth, axis=1) * 1.8)
    centre = eye_avg + eye_to_mouth * 0.1
    return centre, x * half[:, None]


def crop_transforms(landmarks: np.ndarray, size: int = 256, smoothing: float | None = 12.5) -> np.ndarray:
    """Similarities mapping frame pixels to crop pixels, one ``(2, 3)`` matrix per frame.

    Arguments:
        landmarks: FaceMesh landmarks ``(T, N, >=2)`` in pixels, gaps filled.
        size: crop side in pixels.
        smoothing: Gaussian sigma in frames applied to the quad's centre and axis over time
            (so the crop does not shake with landmark noise); ``None`` uses one crop for the
            whole clip (the mean quad): head motion then stays entirely in the pose.
    """
    centre, x = ffhq_quads(landmarks)
    if smoothing is None:
        centre = np.repeat(centre.mean(0, keepdims=True), len(centre), 0)
        x = np.repeat(x.mean(0, keepdims=True), len(x), 0)
    elif smoothing > 0:
        centre = gaussian_filter1d(centre, smoothing, axis=0, mode="nearest")
        x = gaussian_filter1d(x, smoothing, axis=0, mode="nearest")
    y = np.stack([-x[:, 1], x[:, 0]], axis=1)  # (T, 2)
    half = np.linalg.norm(x, axis=1)  # (T,)
    linear = np.stack([x, y], axis=1) * (size / 2 / half**2)[:, None, None]  # (T, 2, 2): rows project on x, y
    offset = size / 2 - np.einsum("tij,tj->ti", linear, centre)
    return np.concatenate([linear, offset[:, :, None]], axis=2).astype(np.float64)  # (T, 2, 3)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply ``(T, 2, 3)`` similarities to points ``(T, N, 2 or 3)``; z is scaled like x and y."""
    out = np.array(points, dtype=np.float64, copy=True)
    out[..., :2] = np.einsum("tij,tnj->tni", matrix[:, :, :2], points[..., :2]) + matrix[:, None, :, 2]
    if out.shape[-1] == 3:
        scale = np.sqrt(np.abs(np.linalg.det(matrix[:, :, :2])))  # (T,)
        out[..., 2] = points[..., 2] * scale[:, None]
    return out


def warp_crop(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop of an RGB frame under one ``(2, 3)`` similarity (reflect padding).

    Large reductions are done in two steps (area resize, then the warp) so that the crop is
    not aliased.
    """
    import cv2

    matrix = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        factor = int(np.floor(1 / scale / 1.5)) or 1  # keep the warp itself a mild reduction
        if factor > 1:
            height, width = frame.shape[:2]
            frame = cv2.resize(frame, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
            matrix = matrix.copy()
            matrix[:, :2] *= factor
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def normalise_to_crop(points: np.ndarray, size: int) -> np.ndarray:
    """Crop pixels -> crop units: the crop centre is 0, its edges are -1 and +1 (z alike)."""
    out = np.asarray(points, dtype=np.float64) / (size / 2)
    out[..., :2] -= 1.0
    return out


def to_clip_frame(landmarks: np.ndarray, crop: np.ndarray, size: int) -> np.ndarray:
    """Crop-pixel landmarks ``(T, N, 3)`` -> the clip's fixed, unrotated reference frame, in crop units.

    Each frame's crop similarity ``crop`` ``(T, 2, 3)`` is undone (back to video pixels), then
    one frame for the whole clip is applied: centred on the mean of the per-frame FFHQ quads,
    scaled by their mean half-side, axes along the image's. So a pose fitted to the result is
    the head's pose in the camera frame (roll from the image vertical, whatever the crop did),
    with translation and scale in units comparable across clips (the crop's: -1..1 across a
    face-sized square). Does not depend on the crop's smoothing.
    """
    crop = np.asarray(crop, dtype=np.float64)
    points = np.asarray(landmarks, dtype=np.float64)
    inverse = np.linalg.inv(crop[:, :, :2])  # (T, 2, 2)
    frame = np.empty_like(points)
    frame[..., :2] = np.einsum("tij,tnj->tni", inverse, points[..., :2] - crop[:, None, :, 2])
    scale = np.sqrt(np.abs(np.linalg.det(crop[:, :, :2])))  # (T,) crop pixels per video pixel
    frame[..., 2] = points[..., 2] / scale[:, None]
    centre, half = ffhq_quads(frame)
    centre, side = centre.mean(0), float(np.linalg.norm(half, axis=1).mean())
    frame[..., :2] -= centre
    return frame / side
