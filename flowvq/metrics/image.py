"""PSNR and SSIM per frame, averaged over frames: torchmetrics' own, set up as the papers use them.

Frames are compared on the aligned crops at the dataset's resolution, as float in [0, 1]
(:func:`to_unit` converts uint8 video frames). PSNR is computed per frame and then averaged
(``dim=(1, 2, 3)``), not from the mean squared error of the whole set; SSIM is torchmetrics'
Gaussian-window SSIM (sigma 1.5, 11 x 11), averaged over frames.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

__all__ = ["FramePSNR", "FrameSSIM", "to_unit"]


def to_unit(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> float ``[T, 3, H, W]`` in [0, 1]."""
    frames = torch.as_tensor(np.asarray(frames) if isinstance(frames, np.ndarray) else frames)
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return rearrange(frames.float() / 255.0, "t h w c -> t c h w")


class FramePSNR(PeakSignalNoiseRatio):
    """PSNR in dB of each frame ``[N, 3, H, W]`` in [0, 1], averaged over frames.

    Example:
        >>> target = torch.zeros(2, 3, 4, 4)
        >>> metric = FramePSNR()
        >>> metric.update(target + 0.1, target)  # MSE 0.01 -> 20 dB
        >>> round(metric.compute().item(), 4)
        20.0
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("data_range", 1.0)
        kwargs.setdefault("dim", (1, 2, 3))
        kwargs.setdefault("reduction", "elementwise_mean")
        super().__init__(**kwargs)


class FrameSSIM(StructuralSimilarityIndexMeasure):
    """SSIM of each frame ``[N, 3, H, W]`` in [0, 1], averaged over frames (torchmetrics' defaults otherwise)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("data_range", 1.0)
        super().__init__(**kwargs)
