"""Gaze and blink from FaceMesh's eye and iris landmarks: the record's optional ``gaze`` and ``blink``.

Both are ratios of distances within one eye, so they do not change with the face's position,
size or roll in the image (any similarity transform of the landmarks), and are measured in
the crop's pixels as well as the frame's:

- :func:`gaze_from_landmarks`: the iris centre (FaceMesh's refined landmarks 468 and 473)
  from the midpoint of the eye's corners, in half eye widths, along the corner-to-corner
  line (x, positive towards the image's right) and across it (y, positive up); the mean of
  both eyes. The units are those of :mod:`flowvq.data.schema`'s ``gaze`` field.
- :func:`eyelid_aperture`: the distance between the upper and lower lid across the
  corner-to-corner line, in eye widths, averaged over three lid pairs per eye and both eyes;
  :func:`blink_from_aperture` turns it into closure, 0 at the clip's usual open aperture
  and 1 shut.

Example:
    >>> import numpy as np
    >>> points = np.zeros((478, 2))
    >>> points[[33, 133]] = [[0, 0], [10, 0]]; points[[362, 263]] = [[20, 0], [30, 0]]
    >>> points[468] = [7, 0]; points[473] = [27, -1]  # both irises right, the second also up
    >>> [round(float(v), 2) for v in gaze_from_landmarks(points)]
    [0.4, 0.1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EYES", "Eye", "blink_from_aperture", "eyelid_aperture", "gaze_from_landmarks"]


@dataclass(frozen=True)
class Eye:
    """FaceMesh indices of one eye: its corners (image-left, image-right), lid pairs (upper,
    lower) and the refined iris centre."""

    corners: tuple[int, int]
    lids: tuple[tuple[int, int], ...]
    iris: int


#: The subject's right eye (image left) and left eye (image right).
EYES: tuple[Eye, ...] = (
    Eye(corners=(33, 133), lids=((160, 144), (159, 145), (158, 153)), iris=468),
    Eye(corners=(362, 263), lids=((385, 380), (386, 374), (387, 373)), iris=473),
)
#: Landmarks per face with iris refinement (FaceMesh's ``refine_landmarks=True``).
REFINED_LANDMARKS = 478


def _frame(points: np.ndarray, eye: Eye) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre ``[..., 2]``, unit axes along and across (up) ``[..., 2]``, half width ``[...]``."""
    left, right = points[..., eye.corners[0], :], points[..., eye.corners[1], :]
    along = right - left
    half = 0.5 * np.linalg.norm(along, axis=-1)
    along = along / np.maximum(2 * half, 1e-9)[..., None]
    up = np.stack([along[..., 1], -along[..., 0]], -1)  # along rotated by -90 degrees: up in y-down pixels
    return 0.5 * (left + right), along, up, half


def gaze_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Gaze ``[..., 2]`` (half eye widths; x right, y up) of FaceMesh landmarks ``[..., 478, 2 or 3]``.

    Raises:
        ValueError: for landmarks without the iris (468 of them: FaceMesh without ``refine_landmarks``).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape[-2] < REFINED_LANDMARKS:
        raise ValueError(
            f"gaze needs FaceMesh's iris landmarks ({REFINED_LANDMARKS} points), got {points.shape[-2]}: "
            "extract with refine_landmarks=True"
        )
    points = points[..., :2]
    gaze = []
    for eye in EYES:
        centre, along, up, half = _frame(points, eye)
        offset = points[..., eye.iris, :] - centre
        scale = np.maximum(half, 1e-9)
        gaze.append(np.stack([(offset * along).sum(-1) / scale, (offset * up).sum(-1) / scale], -1))
    return np.mean(gaze, axis=0).astype(np.float32)


def eyelid_aperture(landmarks: np.ndarray) -> np.ndarray:
    """Lid opening ``[...]`` in eye widths of FaceMesh landmarks ``[..., 468 or 478, 2 or 3]``."""
    points = np.asarray(landmarks, dtype=np.float64)[..., :2]
    apertures = []
    for eye in EYES:
        _, _, up, half = _frame(points, eye)
        for upper, lower in eye.lids:
            gap = ((points[..., upper, :] - points[..., lower, :]) * up).sum(-1)
            apertures.append(np.maximum(gap, 0.0) / np.maximum(2 * half, 1e-9))
    return np.mean(apertures, axis=0)


def blink_from_aperture(aperture: np.ndarray, open_quantile: float = 0.9) -> np.ndarray:
    """Eyelid closure ``[T]`` in [0, 1] of a clip's apertures ``[T]``: ``1 - aperture / open``.

    ``open`` is the clip's ``open_quantile`` aperture (the eyes are open most of the time, so
    this is the speaker's open eye, whatever its shape); closure is clipped to [0, 1].
    """
    aperture = np.asarray(aperture, dtype=np.float64)
    if aperture.size == 0:
        return aperture.astype(np.float32)
    reference = np.quantile(aperture, open_quantile)
    if reference <= 1e-6:  # no open frame at all: call every frame closed
        return np.ones_like(aperture, dtype=np.float32)
    return np.clip(1.0 - aperture / reference, 0.0, 1.0).astype(np.float32)
