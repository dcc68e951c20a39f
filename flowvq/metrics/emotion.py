"""Acc_emo: the emotion accuracy of videos, one vote per video.

A video's emotion is the argmax of its frames' mean probabilities under the frame emotion
classifier (:meth:`~flowvq.lightning_modules.FrameEmotionClassifier.video_probabilities`),
as the papers score a generated video with a classifier fine-tuned on MEAD faces.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["VideoEmotionAccuracy"]


class VideoEmotionAccuracy(Metric):
    """Fraction of videos whose predicted emotion is their label; labels of -1 are left out.

    Example:
        >>> metric = VideoEmotionAccuracy()
        >>> metric.update(torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]), torch.tensor([1, 1, -1]))
        >>> metric.compute().item()
        0.5
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("videos", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probabilities: Tensor, labels: Tensor) -> None:
        """``probabilities [B, C]`` (one row per video), ``labels [B]``."""
        if probabilities.dim() != 2 or labels.shape != probabilities.shape[:1]:
            raise ValueError(
                f"expected probabilities [B, C] and labels [B], got {tuple(probabilities.shape)} and {tuple(labels.shape)}"
            )
        known = labels >= 0
        self.correct += (probabilities.argmax(-1)[known] == labels[known]).sum()
        self.videos += known.sum()

    def compute(self) -> Tensor:
        if self.videos == 0:
            return torch.tensor(float("nan"))
        return (self.correct / self.videos).float()
