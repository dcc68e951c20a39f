"""Smoothness of emotion interpolation: EPPL and EPDV (GMTalker's interpolation metrics).

An interpolation is a path of S generated sequences whose emotion weights move evenly from a
source to a target emotion (``GMEG.interpolate``; for ExpFlow, its latent moved between two
components). Each step is embedded by the emotion classifier
(:meth:`~flowvq.lightning_modules.emotion_classifier.EmotionClassifier.embed`), and with
``eps = 1 / (S - 1)`` the step size along the path:

- per step ``i``: ``s_i = ||e_{i+1} - e_i|| / eps``, the embedding distance between
  consecutive steps scaled by the step size (so it does not depend on S for a smooth path);
- **EPPL** (emotion perceptual path length): the mean of ``s_i^2`` over steps (and paths), as
  in a perceptual path length; low: the emotion does not wander on its way;
- **EPDV** (emotion perceptual distance variance): the variance of ``s_i`` within a path,
  averaged over paths; low: an even pace (a jump from one emotion to the other puts the whole
  distance into one step: a high EPDV). Per path, EPPL = mean(s)^2 + EPDV: the squared
  length's pace-independent part and the unevenness.

The GMTalker paper names both metrics but its text available to us does not give the exact
formulas; these are our reading (documented here, tested on paths with a known answer).

References:
    GMTalker, https://arxiv.org/abs/2312.07669.
    Karras et al., A Style-Based Generator Architecture for GANs (perceptual path length),
    https://arxiv.org/abs/1812.04948.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "EPDV",
    "EPPL",
    "EmotionPerceptualDistanceVariance",
    "EmotionPerceptualPathLength",
    "monotonic_fraction",
    "path_embeddings",
    "step_distances",
]


def _paths(embeddings: Tensor) -> Tensor:
    if embeddings.dim() == 2:
        embeddings = embeddings.unsqueeze(0)
    if embeddings.dim() != 3 or embeddings.shape[1] < 2:
        raise ValueError(
            f"embeddings must be [S, H] or [B, S, H] with S >= 2 steps along each path, got {tuple(embeddings.shape)}"
        )
    return embeddings.double()


def step_distances(embeddings: Tensor) -> Tensor:
    """``s_i = ||e_{i+1} - e_i|| / eps`` of paths ``[B, S, H]`` (or ``[S, H]``): ``[B, S - 1]``."""
    e = _paths(embeddings)
    eps = 1.0 / (e.shape[1] - 1)
    return (e[:, 1:] - e[:, :-1]).norm(dim=-1) / eps


def path_embeddings(classifier: Any, path: Tensor, mask: Tensor | None = None) -> Tensor:
    """Embed every step of paths ``[S, T, E]`` (or ``[B, S, T, E]``) with an emotion classifier:
    ``[B, S, H]``. ``mask [T]`` (or ``[B, T]``) marks valid frames."""
    single = path.dim() == 3
    path = path.unsqueeze(0) if single else path
    b, s = path.shape[:2]
    flat_mask = None
    if mask is not None:
        mask = mask.unsqueeze(0) if mask.dim() == 1 else mask
        flat_mask = mask.repeat_interleave(s, 0)
    flat = classifier.embed(path.flatten(0, 1).float(), mask=flat_mask)  # (B * S, H)
    return flat.reshape(b, s, -1)


def monotonic_fraction(probabilities: Tensor, tolerance: float = 0.0) -> float:
    """Fraction of steps along ``[S]`` (or ``[B, S]``) at which a probability does not fall by
    more than ``tolerance``: 1.0 means it rises (or stays) all the way."""
    p = probabilities.double()
    p = p.unsqueeze(0) if p.dim() == 1 else p
    return float((p[:, 1:] - p[:, :-1] >= -tolerance).double().mean())


class EmotionPerceptualPathLength(Metric):
    """EPPL: the mean of the squared scaled step distances ``s_i^2`` along interpolation paths
    (module docstring).

    Example:
        >>> metric = EmotionPerceptualPathLength()
        >>> metric.update(torch.linspace(0, 1, 5)[:, None].repeat(1, 2))  # 5 steps, straight path
        >>> round(metric.compute().item(), 4)
        2.0
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("steps", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, embeddings: Tensor) -> None:
        """Add paths ``[B, S, H]`` (or one ``[S, H]``): the classifier's embedding of each step."""
        d = step_distances(embeddings)
        self.total += d.pow(2).sum()
        self.steps += d.numel()

    def compute(self) -> Tensor:
        if self.steps == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.steps).float()


class EmotionPerceptualDistanceVariance(Metric):
    """EPDV: the variance of the scaled step distances ``s_i`` within each path, averaged over
    paths (module docstring). 0 for a path at an even pace.

    Example:
        >>> metric = EmotionPerceptualDistanceVariance()
        >>> metric.update(torch.linspace(0, 1, 5)[:, None])  # even pace
        >>> metric.compute().item()
        0.0
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("paths", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, embeddings: Tensor) -> None:
        """Add paths ``[B, S, H]`` (or one ``[S, H]``) with S >= 3 (two steps make a variance)."""
        d = step_distances(embeddings)
        if d.shape[1] < 2:
            raise ValueError("EPDV needs paths of at least 3 steps (2 step distances) to have a variance")
        self.total += d.var(dim=1, unbiased=False).sum()
        self.paths += d.shape[0]

    def compute(self) -> Tensor:
        if self.paths == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.paths).float()


#: Short names, as the paper calls them.
EPPL = EmotionPerceptualPathLength
EPDV = EmotionPerceptualDistanceVariance
