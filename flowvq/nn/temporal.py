"""Temporal convolution encoder for coefficient sequences, with attention pooling.

Used by the coefficient emotion classifier (the evaluation network that scores generated
expression sequences); length-agnostic, so it scores a training window or a whole clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["AttentionPool", "TemporalConvEncoder"]


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each time step of ``(B, D, T)``: no statistics across time,
    so padded frames cannot change the valid frames' features (unlike GroupNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(super().forward(rearrange(x, "b d t -> b t d")), "b t d -> b d t")


class ResidualTemporalBlock(nn.Module):
    """Pre-norm residual block: norm -> GELU -> dilated Conv1d, twice, masked in between."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.norm1 = ChannelNorm(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=padding, dilation=dilation)
        self.norm2 = ChannelNorm(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=padding, dilation=dilation)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` (B, D, T), ``mask`` (B, 1, T); padded frames are zeroed before every conv."""
        h = self.conv1(F.gelu(self.norm1(x)) * mask)
        h = self.conv2(self.dropout(F.gelu(self.norm2(h))) * mask)
        return (x + h) * mask


class AttentionPool(nn.Module):
    """Softmax-weighted mean over valid time steps (a learned query per output)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv1d(channels, 1, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` (B, D, T), ``mask`` (B, 1, T) -> (B, D)."""
        logits = self.score(x).masked_fill(mask == 0, float("-inf"))  # (B, 1, T)
        weights = torch.softmax(logits, dim=-1)
        return (x * weights).sum(-1)


class TemporalConvEncoder(nn.Module):
    """Encode a sequence ``(B, T, D_in)`` into one vector ``(B, hidden)``.

    Arguments:
        in_dim: per-frame input size (E, or E + P).
        hidden: channels.
        layers: residual blocks; dilation doubles per block (receptive field grows
            geometrically, so 4 blocks with kernel 5 see about 2 s at 25 fps).
        kernel_size: odd temporal kernel.
        dropout: inside the blocks.

    Example:
        >>> encoder = TemporalConvEncoder(16, hidden=32, layers=2)
        >>> encoder(torch.randn(3, 40, 16)).shape
        torch.Size([3, 32])
    """

    def __init__(self, in_dim: int, hidden: int = 128, layers: int = 4, kernel_size: int = 5, dropout: float = 0.1):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.inp = nn.Conv1d(in_dim, hidden, 1)
        self.blocks = nn.ModuleList(
            ResidualTemporalBlock(hidden, kernel_size, dilation=2**i, dropout=dropout) for i in range(layers)
        )
        self.pool = AttentionPool(hidden)
        self.out_norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, D_in), ``mask`` (B, T) bool of valid frames -> (B, hidden).

        Legend: b batch, t time, d feature.
        """
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        m = rearrange(mask.to(x.dtype), "b t -> b 1 t")
        h = self.inp(rearrange(x, "b t d -> b d t")) * m  # (B, H, T)
        for block in self.blocks:
            h = block(h, m)
        return self.out_norm(self.pool(h, m))  # (B, H)
