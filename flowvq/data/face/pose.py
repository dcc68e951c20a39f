"""Head pose: Euler angles, similarity Procrustes onto a mean shape, the generalised Procrustes mean.

:func:`procrustes` fits each frame's landmarks to a mean shape by a similarity (Umeyama),
giving yaw, pitch, roll (radians), tx, ty, scale (:func:`pose_from_landmarks`), and the
pose-normalised shape that the expression basis encodes.

Coordinates are x right, y down, z away from the camera (mediapipe's; right-handed), and
``R = Rz(roll) Ry(yaw) Rx(pitch)``: positive roll turns the face clockwise in the image,
positive yaw turns the nose towards image left, positive pitch turns it down.
"""

from __future__ import annotations

import numpy as np

__all__ = ["euler_from_rotation", "mean_shape", "pose_from_landmarks", "procrustes", "rotation_from_euler"]


def rotation_from_euler(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``, shape ``(..., 3, 3)``."""
    yaw, pitch, roll = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (yaw, pitch, roll)))
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*yaw.shape, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*yaw.shape, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*yaw.shape, 3, 3)
    return rz @ ry @ rx


def euler_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_from_euler`: ``(..., 3, 3)`` -> yaw, pitch, roll ``(..., 3)``."""
    r = np.asarray(rotation, dtype=np.float64)
    yaw = np.arcsin(np.clip(-r[..., 2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    roll = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return np.stack([yaw, pitch, roll], -1)


def procrustes(shapes: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity (Umeyama) of a reference onto each shape: ``shapes ~ s R reference + t``.

    Arguments:
        shapes: ``(T, N, 3)``.
        reference: ``(N, 3)``, centred at the origin.

    Returns:
        scale ``(T,)``, rotation ``(T, 3, 3)`` (proper, det +1), translation ``(T, 3)``.

    References:
        Umeyama, "Least-squares estimation of transformation parameters between two point
        patterns", TPAMI 1991.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    translation = shapes.mean(1)  # (T, 3)
    centred = shapes - translation[:, None]
    cross = np.einsum("ni,tnj->tij", reference, centred)  # (T, 3, 3) = ref^T X
    u, sv, vt = np.linalg.svd(cross)
    d = np.sign(np.linalg.det(np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2)))  # (T,)
    fix = np.ones((len(shapes), 3))
    fix[:, 2] = d
    rotation = np.swapaxes(vt, 1, 2) @ (fix[:, :, None] * np.swapaxes(u, 1, 2))  # V D U^T
    scale = (sv * fix).sum(1) / (reference**2).sum()
    return scale, rotation, translation


def pose_from_landmarks(shapes: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose and pose-normalised shape of each frame.

    Arguments:
        shapes: landmarks ``(T, N, 3)`` in crop units (:func:`normalise_to_crop`).
        reference: the mean shape ``(N, 3)``, centred.

    Returns:
        pose float32 ``(T, 6)``: yaw, pitch, roll (radians), tx, ty (face centre in crop
        units), scale (relative to the mean shape); and the shapes brought into the mean
        shape's frame, ``R^T (X - t) / s``, float64 ``(T, N, 3)``.
    """
    scale, rotation, translation = procrustes(shapes, reference)
    angles = euler_from_rotation(rotation)
    pose = np.concatenate([angles, translation[:, :2], scale[:, None]], axis=1).astype(np.float32)
    normalised = np.einsum("tji,tnj->tni", rotation, shapes - translation[:, None]) / scale[:, None, None]
    return pose, normalised


def mean_shape(shapes: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Generalised Procrustes mean of ``(F, N, 3)`` shapes, centred.

    The mean's own orientation and size are pinned to those of the plain average of the
    centred shapes, so zero pose angles mean "as the data looks on average" (frontal for a
    frontal dataset) and scale 1 the average face size.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    centred = shapes - shapes.mean(1, keepdims=True)
    anchor = centred.mean(0)  # (N, 3)
    mean = anchor
    for _ in range(iterations):
        _, aligned = pose_from_landmarks(centred, mean)
        mean = aligned.mean(0)
        scale, rotation, translation = procrustes(anchor[None], mean - mean.mean(0))
        mean = scale[0] * (mean - mean.mean(0)) @ rotation[0].T  # gauge: match the plain average
    return mean - mean.mean(0)
