"""Lip-sync correlation of coefficient sequences: mouth opening against the audio envelope."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["LipSyncCorrelation", "lagged_correlation"]


def lagged_correlation(signal: Tensor, energy: Tensor, mask: Tensor | None = None, max_lag: int = 2) -> Tensor:
    """Per-clip Pearson correlation of ``signal`` and ``energy`` ``[B, T]``, best over lags.

    The mouth leads the sound by about a frame in real speech (and in SynthTalk), so the
    correlation is taken at every lag ``-max_lag..max_lag`` (``signal[t]`` against
    ``energy[t + lag]``) and the largest is kept. Clips with fewer than 4 valid frames, or a
    constant signal, give NaN.
    """
    b, t = signal.shape
    valid = torch.ones(b, t, dtype=torch.bool, device=signal.device) if mask is None else mask.bool()
    best = torch.full((b,), float("nan"), dtype=torch.float64, device=signal.device)
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            s, e, v = signal[:, : t - lag], energy[:, lag:], valid[:, : t - lag] & valid[:, lag:]
        else:
            s, e, v = signal[:, -lag:], energy[:, : t + lag], valid[:, -lag:] & valid[:, : t + lag]
        s, e, v = s.double(), e.double(), v.double()
        n = v.sum(-1)
        ms = (s * v).sum(-1) / n.clamp(min=1)
        me = (e * v).sum(-1) / n.clamp(min=1)
        ds, de = (s - ms[:, None]) * v, (e - me[:, None]) * v
        corr = (ds * de).sum(-1) / ((ds.pow(2).sum(-1) * de.pow(2).sum(-1)).sqrt() + 1e-12)
        corr = torch.where((n >= 4) & (ds.abs().sum(-1) > 0) & (de.abs().sum(-1) > 0), corr, float("nan"))
        best = torch.where(torch.isnan(best) | (corr > best), corr, best)
    return best


class LipSyncCorrelation(Metric):
    """Mean over clips of :func:`lagged_correlation` (mouth signal vs audio RMS per frame).

    Arguments:
        max_lag: lags searched either way, in frames.

    Example:
        >>> energy = torch.rand(3, 40)
        >>> metric = LipSyncCorrelation()
        >>> metric.update(2 * energy + 1, energy)
        >>> round(metric.compute().item(), 4)
        1.0
    """

    full_state_update = False

    def __init__(self, max_lag: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_lag = max_lag
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, signal: Tensor, energy: Tensor, mask: Tensor | None = None) -> None:
        """Add clips: ``signal`` ``[B, T]`` (e.g. jaw_open) or ``[B, N, T]`` (N samples each),
        ``energy`` and ``mask`` ``[B, T]``."""
        if signal.dim() == 3:  # every sample scored against its clip's audio
            n = signal.shape[1]
            energy = energy.repeat_interleave(n, 0)
            mask = None if mask is None else mask.repeat_interleave(n, 0)
            signal = signal.flatten(0, 1)
        corr = lagged_correlation(signal, energy, mask, self.max_lag)
        known = ~torch.isnan(corr)
        self.total += corr[known].sum()
        self.count += known.sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()
