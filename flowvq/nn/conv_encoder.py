"""A small strided convolution encoder from an image (or a mel spectrogram seen as one) to a vector.

The towers of SyncNet (mouth crops; mel windows) and the frame emotion classifier are built
from it. GroupNorm rather than BatchNorm, so that training under DDP needs no synchronised
statistics and a model scores one clip the same way whatever else is in its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["ConvEncoder"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ConvEncoder(nn.Module):
    """``(B, C, H, W) -> (B, D)``: a stem, then per entry of ``channels`` a stride-2 conv and a
    residual 3x3 conv, then global average pooling and a linear projection.

    Arguments:
        in_channels: C of the input.
        channels: widths of the stages; each halves the resolution (a side of 1 stays 1).
        out_dim: D.
        dropout: before the projection.

    Example:
        >>> import torch
        >>> ConvEncoder(3, (8, 16), 4)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_channels: int, channels: Sequence[int], out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if not channels:
            raise ValueError("ConvEncoder needs at least one stage in channels")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1), _norm(channels[0]), nn.SiLU())
        stages = []
        previous = channels[0]
        for width in channels:
            stages.append(
                nn.ModuleDict(
                    {
                        "down": nn.Sequential(
                            nn.Conv2d(previous, width, 3, stride=2, padding=1), _norm(width), nn.SiLU()
                        ),
                        "residual": nn.Sequential(nn.Conv2d(width, width, 3, padding=1), _norm(width), nn.SiLU()),
                    }
                )
            )
            previous = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)  # (B, c0, H, W)
        for stage in self.stages:
            h = stage["down"](h)
            h = h + stage["residual"](h)
        return self.head(h.mean(dim=(2, 3)))  # (B, D)
