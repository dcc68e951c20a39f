"""M-LMD and F-LMD: landmark distances between generated frames and the ground truth.

Landmarks of the generated frames come from the same detector preprocessing uses (mediapipe
FaceMesh through :class:`~flowvq.data.face.FaceTracker`, mapped to iBUG-68 with
:func:`~flowvq.data.face.to_ibug68`); the ground truth is the record's ``landmarks``. As in
the papers: each frame's points are centred on their own mean (so a head that is displaced as
a whole is not counted; the mouth's points on the mouth's mean for M-LMD), and the distance is
the sum of the Euclidean distances over frames and points divided by frames x points, in
pixels of the dataset's frames (M-LMD: mouth points 48..67; F-LMD: all 68).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from flowvq.data.schema import MOUTH

__all__ = ["LandmarkDistance", "detect_landmarks", "landmark_distances"]


def landmark_distances(predicted: Tensor, target: Tensor, points: Literal["mouth", "face"] = "mouth") -> Tensor:
    """Per frame, the mean Euclidean distance ``[T]`` between mean-centred landmark sets ``[T, 68, 2]``."""
    if predicted.shape != target.shape or predicted.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must both be [..., 68, 2], got {tuple(predicted.shape)} and {tuple(target.shape)}")
    index = MOUTH if points == "mouth" else slice(0, 68)
    a = predicted[..., index, :].double()
    b = target[..., index, :].double()
    a = a - a.mean(-2, keepdim=True)
    b = b - b.mean(-2, keepdim=True)
    return (a - b).norm(dim=-1).mean(-1)


class LandmarkDistance(Metric):
    """M-LMD (``points="mouth"``) or F-LMD (``points="face"``) over all frames added.

    Frames whose predicted landmarks are missing (NaN: no face detected) are left out and
    counted in :attr:`missing`, so a table can say how many frames the figure rests on.

    Example:
        >>> target = torch.zeros(1, 68, 2)
        >>> predicted = target.clone()
        >>> predicted[0, 48, 0] = 20.0  # one mouth point 20 px off; centring spreads it
        >>> metric = LandmarkDistance("mouth")
        >>> metric.update(predicted, target)
        >>> round(metric.compute().item(), 4)  # (19 + 19 x 1) / 20 points
        1.9
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, points: Literal["mouth", "face"] = "mouth", **kwargs) -> None:
        super().__init__(**kwargs)
        if points not in ("mouth", "face"):
            raise ValueError(f"points must be 'mouth' (M-LMD) or 'face' (F-LMD), got {points!r}")
        self.points = points
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("missing", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, target: Tensor) -> None:
        """``predicted`` and ``target`` ``[T, 68, 2]`` (or ``[B, T, 68, 2]``) in the same pixels."""
        predicted, target = torch.as_tensor(predicted), torch.as_tensor(target)
        found = ~torch.isnan(predicted).flatten(-2).any(-1)
        distances = landmark_distances(torch.nan_to_num(predicted), target, self.points)
        self.total += distances[found].sum()
        self.frames += found.sum()
        self.missing += (~found).sum()

    def compute(self) -> Tensor:
        if self.frames == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.frames).float()


def detect_landmarks(frames: np.ndarray, tracker=None) -> np.ndarray:
    """iBUG-68 landmarks ``[T, 68, 2]`` in the frames' pixels of video frames ``[T, H, W, 3]`` uint8,
    NaN rows where FaceMesh finds no face.

    Arguments:
        tracker: a :class:`~flowvq.data.face.FaceTracker` to reuse (it is reset first); by
            default one is made and closed here (tracking mode, no small-face search: the
            frames are face crops).
    """
    from flowvq.data.face import FaceTracker, to_ibug68

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    own = tracker is None
    tracker = FaceTracker(find_small_faces=False) if own else tracker
    try:
        tracker.reset()
        mesh = tracker.track(frames)  # (T, N, 3), NaN rows where no face
    finally:
        if own:
            tracker.close()
    out = np.full((len(frames), 68, 2), np.nan, dtype=np.float32)
    found = ~np.isnan(mesh).reshape(len(frames), -1).any(1)
    if found.any():
        out[found] = to_ibug68(mesh[found][..., :2]).astype(np.float32)
    return out
