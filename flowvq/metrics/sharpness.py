"""CPBD: the cumulative probability of blur detection, a no-reference sharpness measure.

Implemented from the published description (Narvekar & Karam 2011), as the talking-face
papers report it (higher is sharper):

1. the image in grey levels 0..255 (ITU-R 601 luma);
2. edges by Canny (Gaussian sigma 1, non-maximum suppression, hysteresis with the high
   threshold at the 70th percentile of the gradient magnitude and the low one at 0.4 of it);
3. the width of each edge by Marziliano's method along the row (from the local extremum on
   one side to the one on the other); like the published method, only edges whose gradient is
   mostly horizontal are measured;
4. the image in 64 x 64 blocks; a block with more than 0.2 % edge pixels is an edge block, and
   its contrast (max - min) sets the just-noticeable-blur width: 5 for contrast <= 50, else 3;
5. per edge, the probability of detecting blur ``1 - exp(-|w / w_JNB| ^ 3.6)``;
6. CPBD is the fraction of edges whose probability is at most 63 % (the just-noticeable blur).

Edges whose width cannot be measured (none in the row) are left out. An image with no edge
block gives NaN.

References:
    Narvekar, Karam. A no-reference image blur metric based on the cumulative probability of
    blur detection (CPBD). IEEE Transactions on Image Processing 20(9), 2011.
    Marziliano et al. A no-reference perceptual blur metric. ICIP 2002.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric

__all__ = ["CPBD", "canny_edges", "cpbd", "marziliano_widths"]

BETA = 3.6
P_JNB = 0.63
BLOCK = 64
EDGE_FRACTION = 0.002


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
    if image.ndim != 2:
        raise ValueError(f"expected a grey (H, W) or RGB (H, W, 3) image in 0..255, got shape {image.shape}")
    return image


def canny_edges(grey: np.ndarray, sigma: float = 1.0, high_quantile: float = 0.7, low_ratio: float = 0.4):
    """Canny edge map ``(H, W) bool`` and the Sobel gradients ``gx, gy`` of the smoothed image."""
    smooth = ndimage.gaussian_filter(grey, sigma, mode="nearest")
    gx = ndimage.sobel(smooth, axis=1, mode="nearest")
    gy = ndimage.sobel(smooth, axis=0, mode="nearest")
    magnitude = np.hypot(gx, gy)
    if magnitude.max() <= 1e-9:
        return np.zeros_like(grey, dtype=bool), gx, gy
    # non-maximum suppression along the gradient direction quantised to 0, 45, 90, 135 degrees
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    padded = np.pad(magnitude, 1, mode="constant")
    h, w = grey.shape
    centre = padded[1:-1, 1:-1]

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    keep = np.zeros_like(grey, dtype=bool)
    for low, high, (dy, dx) in (
        (-22.5, 22.5, (0, 1)),
        (22.5, 67.5, (1, 1)),
        (67.5, 112.5, (1, 0)),
        (112.5, 157.5, (1, -1)),
    ):
        sector = (angle >= low) & (angle < high)
        if low < 0:
            sector = (angle < high) | (angle >= 180 + low)
        keep |= sector & (centre >= shifted(dy, dx)) & (centre >= shifted(-dy, -dx))
    thin = np.where(keep, magnitude, 0.0)
    high = np.quantile(magnitude, high_quantile)
    high = max(high, 1e-9)
    strong, weak = thin >= high, thin >= low_ratio * high
    labels, count = ndimage.label(weak, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros_like(grey, dtype=bool), gx, gy
    connected = np.zeros(count + 1, dtype=bool)
    connected[np.unique(labels[strong])] = True
    connected[0] = False
    return connected[labels], gx, gy


def marziliano_widths(grey: np.ndarray, edges: np.ndarray, gx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Marziliano widths of the edge pixels along their row: ``(positions [N, 2], widths [N])``
    of the pixels whose width could be measured (row, column; width in pixels)."""
    positions, widths = [], []
    h, w = grey.shape
    for r, c in zip(*np.nonzero(edges)):
        row = grey[r]
        rising = gx[r, c] > 0
        # towards the dark side: walk while the value keeps falling; towards the bright side: rising
        left = c
        while left > 0 and ((row[left - 1] < row[left]) if rising else (row[left - 1] > row[left])):
            left -= 1
        right = c
        while right < w - 1 and ((row[right + 1] > row[right]) if rising else (row[right + 1] < row[right])):
            right += 1
        width = right - left
        if width > 0:
            positions.append((r, c))
            widths.append(width)
    return np.asarray(positions, dtype=np.int64).reshape(-1, 2), np.asarray(widths, dtype=np.float64)


def cpbd(image: np.ndarray) -> float:
    """CPBD of one image (grey ``(H, W)`` or RGB ``(H, W, 3)``, values 0..255): in [0, 1], higher is sharper."""
    grey = _grey(image)
    edges, gx, gy = canny_edges(grey)
    edges &= np.abs(gx) >= np.abs(gy)  # measurable along the row
    positions, widths = marziliano_widths(grey, edges, gx)
    if len(widths) == 0:
        return float("nan")
    h, w = grey.shape
    probabilities = []
    for top in range(0, h, BLOCK):
        for left in range(0, w, BLOCK):
            block = grey[top : top + BLOCK, left : left + BLOCK]
            block_edges = edges[top : top + BLOCK, left : left + BLOCK]
            if block_edges.sum() <= EDGE_FRACTION * block.size:
                continue
            w_jnb = 5.0 if block.max() - block.min() <= 50 else 3.0
            inside = (
                (positions[:, 0] >= top)
                & (positions[:, 0] < top + BLOCK)
                & (positions[:, 1] >= left)
                & (positions[:, 1] < left + BLOCK)
            )
            probabilities.append(1.0 - np.exp(-(np.abs(widths[inside] / w_jnb) ** BETA)))
    if not probabilities:
        return float("nan")
    blur = np.concatenate(probabilities)
    return float((blur <= P_JNB).mean()) if len(blur) else float("nan")


class CPBD(Metric):
    """Mean :func:`cpbd` over frames.

    ``update`` takes frames ``[N, 3, H, W]`` (float in [0, 1] or uint8) or ``[N, H, W, 3]`` uint8;
    frames without an edge block (NaN) are left out and counted in ``skipped``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, frames: Tensor) -> None:
        array = frames.detach().cpu()
        if array.dim() != 4:
            raise ValueError(f"frames must be [N, 3, H, W] or [N, H, W, 3], got {tuple(array.shape)}")
        if array.shape[1] == 3 and array.shape[-1] != 3:
            array = array.permute(0, 2, 3, 1)
        values = array.numpy().astype(np.float64)
        if array.dtype != torch.uint8:
            values = values * 255.0
        for frame in values:
            score = cpbd(frame)
            if np.isnan(score):
                self.skipped += 1
            else:
                self.total += score
                self.count += 1

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()
