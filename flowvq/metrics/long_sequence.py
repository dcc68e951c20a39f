"""Figures of long generated coefficient sequences against the ground truth, over time.

A coefficient generator is used on whole clips and on minutes of audio, not on the 32-frame
windows it is trained on; these figures say whether its samples stay where real motion lives
as the sequence grows. Every function takes normalised coefficients (train-set mean 0, std 1
per dim), samples ``[N, T, D]`` and the ground truth ``[T, D]`` (or its statistics), as numpy
arrays or tensors.

- :func:`drift_profile`: per window of frames, the RMS distance of samples from the ground
  truth's mean (the clip's mean expression): a runaway shows as growth;
- :func:`tail_fraction`: the fraction of values beyond ``k`` std (5 by default);
- :func:`clamp_fraction`: how often the generator's output clamp engaged;
- :func:`frame_variation`: mean absolute frame-to-frame change;
- :func:`autocorrelation`, :func:`event_rate`: PoseFlow's motion statistics (lag-k
  autocorrelation per dim, blink rate).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "autocorrelation",
    "clamp_fraction",
    "drift_profile",
    "event_rate",
    "frame_variation",
    "sequence_report",
    "tail_fraction",
]


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def drift_profile(samples: Any, mean: Any, window: int = 32) -> np.ndarray:
    """RMS distance from ``mean [D]`` per window of ``window`` frames: ``[ceil(T / window)]``.

    ``samples`` is ``[N, T, D]`` (or ``[T, D]``); the distance is the root mean square over
    dims, averaged over samples and the window's frames.
    """
    x = _array(samples)
    x = x[None] if x.ndim == 2 else x
    distance = np.sqrt(((x - _array(mean)) ** 2).mean(-1))  # (N, T)
    t = distance.shape[1]
    return np.array([distance[:, s : s + window].mean() for s in range(0, t, window)])


def tail_fraction(samples: Any, k: float = 5.0) -> float:
    """Fraction of values further than ``k`` std from the train mean (normalised units)."""
    return float((np.abs(_array(samples)) > k).mean())


def clamp_fraction(samples: Any, clip: float | None) -> float:
    """Fraction of values at the output clamp (0 when there is none)."""
    if clip is None:
        return 0.0
    return float((np.abs(_array(samples)) >= clip * (1 - 1e-6)).mean())


def frame_variation(sequence: Any) -> float:
    """Mean absolute change between consecutive frames of ``[..., T, D]``."""
    x = _array(sequence)
    return float(np.abs(np.diff(x, axis=-2)).mean())


def autocorrelation(sequence: Any, lag: int) -> np.ndarray:
    """Lag-``lag`` autocorrelation per dim of ``[T, D]`` (or the mean over ``[N, T, D]``): ``[D]``."""
    x = _array(sequence)
    x = x[None] if x.ndim == 2 else x
    if x.shape[1] <= lag:
        return np.full(x.shape[-1], np.nan)
    x = x - x.mean(1, keepdims=True)
    numerator = (x[:, lag:] * x[:, :-lag]).mean(1)
    denominator = (x**2).mean(1)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 1e-12).mean(0)


def event_rate(signal: Any, threshold: float, fps: float = 25.0) -> float:
    """Upward crossings of ``threshold`` per second of ``[T]`` (or the mean over ``[N, T]``): blinks."""
    x = _array(signal)
    x = x[None] if x.ndim == 1 else x
    above = x > threshold
    crossings = (above[:, 1:] & ~above[:, :-1]).sum(1)
    return float(crossings.mean() * fps / max(x.shape[1], 1))


def sequence_report(
    samples: Any, truth: Any, clip: float | None = None, window: int = 32, k: float = 5.0
) -> dict[str, Any]:
    """The long-sequence figures of samples ``[N, T, D]`` next to the ground truth ``[T, D]``.

    ``truth`` gives the reference mean and the ground truth's own figures (``truth_*``), which
    are what the samples' are judged against.
    """
    x, y = _array(samples), _array(truth)
    mean = y.mean(0)
    profile = drift_profile(x, mean, window)
    truth_profile = drift_profile(y, mean, window)
    return {
        "frames": int(x.shape[1]),
        "drift_first": float(profile[0]),
        "drift_last": float(profile[-1]),
        "drift_max": float(profile.max()),
        "truth_drift": float(truth_profile.mean()),
        "drift_growth": float(profile[-1] / max(profile[0], 1e-9)),
        "tail_fraction": tail_fraction(x, k),
        "truth_tail_fraction": tail_fraction(y, k),
        "clamp_fraction": clamp_fraction(x, clip),
        "frame_variation": frame_variation(x),
        "truth_frame_variation": frame_variation(y),
        "std": _array(x).std(1).mean(0).tolist(),
        "truth_std": y.std(0).tolist(),
        "profile": profile.tolist(),
        "truth_profile": truth_profile.tolist(),
    }
