"""Is the tracked face a face, the right way up? Per-clip figures and the gate applied at merge.

FaceMesh always returns a face-shaped mesh once it fires, so its own output cannot say
whether the face under it is real or upright: on an upside-down portrait it lays an
upright mesh over the inverted face (the mouth landmarks on the forehead), and on a cat it
fires on some frames. Three figures, each independent of the mesh's own confidence:

- ``detected``: the fraction of frames where FaceMesh found a face (before gaps are filled).
- ``confirmed``: on a sample of frames, the crop aligned by the mesh (eyes level, as the
  records' crops are) is given to mediapipe's full-range face detector (a separate network,
  BlazeFace); the frame is confirmed when it finds a face there whose eye and mouth
  keypoints lie on the mesh's eyes and mouth. An inverted face in an upright crop is not
  detected, or its keypoints fall elsewhere.
- ``ordered``: the fraction of frames whose iBUG-68 points, in the aligned crop, are in a
  face's order: brows above eyes above the nose tip above the mouth above the chin, the
  image-left eye left of the other.

and, at merge, ``shape_error``: the median over frames of the RMS distance of the 68 points
from the train split's mean face after a 3-D similarity fit, in units of the mean face's
size (its RMS radius).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from flowvq.data.face.detection import Detection
from flowvq.data.face.ibug68 import IBUG68_FROM_FACEMESH

__all__ = ["QualityGate", "detector_agrees", "landmark_order", "shape_error"]


def detector_agrees(detections: list[Detection], ibug68: np.ndarray, tolerance: float = 0.35) -> bool:
    """Whether a detection's eyes and mouth lie on the mesh's (iBUG-68 points ``(68, 2)``, same pixels).

    Each of the three keypoints must be within ``tolerance`` eye distances of the mesh's
    eye centre or mouth centre.
    """
    eyes = np.stack([ibug68[36:42].mean(0), ibug68[42:48].mean(0)])  # image-left, image-right
    mouth = ibug68[48:68].mean(0)
    reach = tolerance * float(np.linalg.norm(eyes[1] - eyes[0]))
    for detection in detections:
        points = np.stack([detection.keypoints[0], detection.keypoints[1], detection.keypoints[3]])
        if (np.linalg.norm(points - np.stack([*eyes, mouth]), axis=1) < reach).all():
            return True
    return False


def landmark_order(ibug68: np.ndarray) -> np.ndarray:
    """Per frame, whether iBUG-68 points ``(T, 68, 2)`` in an upright frame (y down) are in a face's order."""
    y = ibug68[..., 1]
    heights = [y[:, 17:27].mean(1), y[:, 36:48].mean(1), y[:, 30], y[:, 48:68].mean(1), y[:, 8]]
    ordered = np.all([upper < lower for upper, lower in zip(heights[:-1], heights[1:])], axis=0)
    left, right = ibug68[:, 36:42, 0].mean(1), ibug68[:, 42:48, 0].mean(1)
    return ordered & (left < right)


def shape_error(normalised: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per frame, the RMS distance of pose-normalised landmarks ``(T, N, 3)`` from the mean shape
    ``(N, 3)`` over the iBUG-68 points, in units of the mean shape's RMS radius."""
    index = list(IBUG68_FROM_FACEMESH)
    mean = reference[index]
    radius = np.sqrt(((mean - mean.mean(0)) ** 2).sum(1).mean())
    return np.sqrt(((normalised[:, index] - mean) ** 2).sum(-1).mean(1)) / radius


@dataclass
class QualityGate:
    """Thresholds on the per-clip figures (see the module docstring); a clip below any is not packed.

    Arguments:
        min_detected: least fraction of frames with a FaceMesh face.
        min_confirmed: least fraction of sampled frames where the face detector confirms an
            upright face on the mesh.
        min_ordered: least fraction of frames whose landmarks are in a face's order.
        max_shape_error: largest median distance from the mean face (mean-face radii).
    """

    min_detected: float = 0.8
    min_confirmed: float = 0.5
    min_ordered: float = 0.95
    max_shape_error: float = 0.25

    def failures(self, figures: dict[str, Any]) -> list[str]:
        """What is wrong with a clip's figures (empty when it passes); missing figures are skipped."""
        out = []
        for name, threshold, low in (
            ("detected", self.min_detected, True),
            ("confirmed", self.min_confirmed, True),
            ("ordered", self.min_ordered, True),
            ("shape_error", self.max_shape_error, False),
        ):
            value = figures.get(name)
            if value is None:
                continue
            if (value < threshold) if low else (value > threshold):
                flag = f"--{'min' if low else 'max'}_{name}"
                out.append(f"{name} {value:.3f} {'<' if low else '>'} {threshold} ({flag})")
        return out

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
