"""Diversity of sampled coefficient sequences, against the ground truth's own spread."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["SampleDiversity"]


class SampleDiversity(Metric):
    """How much N samples for the same audio and label differ, and how that compares with
    how much the ground truth moves.

    - ``diversity``: the std across the N samples, per frame and dimension, averaged over
      valid frames and dimensions (0 for a deterministic model);
    - ``gt_spread``: the std over time of each ground-truth clip, per dimension, averaged;
    - ``ratio``: diversity / gt_spread (near 1: samples vary as much as a real clip moves).

    Units are those of the inputs (the DataModule's normalised coefficients).

    Example:
        >>> metric = SampleDiversity()
        >>> metric.update(torch.zeros(2, 4, 10, 3), torch.randn(2, 10, 3))
        >>> metric.compute()["diversity"].item()
        0.0
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sample_std", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("gt_std", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, samples: Tensor, target: Tensor | None = None, mask: Tensor | None = None) -> None:
        """Add a batch.

        Arguments:
            samples: ``[B, N, T, D]``, N >= 2 samples per clip.
            target: ``[B, T, D]`` ground truth (optional).
            mask: ``[B, T]`` valid frames.
        """
        if samples.dim() != 4 or samples.shape[1] < 2:
            raise ValueError(f"samples must be [B, N >= 2, T, D], got {tuple(samples.shape)}")
        b, _, t, _ = samples.shape
        valid = torch.ones(b, t, dtype=torch.bool, device=samples.device) if mask is None else mask.bool()
        spread = samples.double().std(dim=1).mean(-1)  # (B, T)
        self.sample_std += spread[valid].sum()
        self.frames += valid.sum()
        if target is not None:
            for clip, keep in zip(target.double(), valid):
                if keep.sum() >= 2:
                    self.gt_std += clip[keep].std(0).mean()
                    self.clips += 1

    def compute(self) -> dict[str, Tensor]:
        diversity = self.sample_std / self.frames.clamp(min=1)
        gt = self.gt_std / self.clips.clamp(min=1) if self.clips > 0 else torch.full_like(diversity, float("nan"))
        return {"diversity": diversity.float(), "gt_spread": gt.float(), "ratio": (diversity / gt).float()}
