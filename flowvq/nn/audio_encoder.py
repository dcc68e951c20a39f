"""Encoder of the log-mel window around each video frame (the flows' audio condition)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = ["AudioWindowEncoder"]


class AudioWindowEncoder(nn.Module):
    """Per-frame audio code from the mel window centred on the frame.

    1-D convolutions over the window's mel columns (mel bins as channels), then adaptive
    average pooling to a fixed number of segments, so the encoder accepts any window length
    C (any ``audio_context``) while the code still knows which part of the window (before,
    at or after the frame) a sound lies in.

    Arguments:
        mel_bins: M, mel bins per column.
        out_features: size of the code per frame.
        hidden: channels of the convolutions.
        layers: number of convolutions.
        segments: pooled segments of the window (each at least one column).
    """

    def __init__(self, mel_bins: int, out_features: int, hidden: int = 64, layers: int = 2, segments: int = 5) -> None:
        super().__init__()
        if mel_bins < 1 or out_features < 1:
            raise ValueError(f"mel_bins and out_features must be >= 1, got {mel_bins} and {out_features}")
        self.mel_bins = mel_bins
        self.segments = segments
        # a per-column projection of the mel bins, then convolutions along the columns
        self.project = nn.Sequential(nn.Linear(mel_bins, hidden), nn.GELU())
        self.convs = nn.Sequential(
            *[m for _ in range(max(layers - 1, 0)) for m in (nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU())]
        )
        self.out = nn.Sequential(
            nn.Linear(segments * hidden, out_features), nn.GELU(), nn.Linear(out_features, out_features)
        )
        self._pooling: dict[int, Tensor] = {}

    def pooling(self, columns: int, like: Tensor) -> Tensor:
        """``[C, S]`` averaging matrix over the same segments as adaptive average pooling
        (a matrix product is much faster than adaptive pooling on CPU)."""
        if columns not in self._pooling:
            weights = torch.zeros(columns, self.segments)
            for s in range(self.segments):
                start = (s * columns) // self.segments
                end = -((-(s + 1) * columns) // self.segments)  # ceil
                weights[start:end, s] = 1.0 / (end - start)
            self._pooling[columns] = weights
        return self._pooling[columns].to(like.device, like.dtype)

    def forward(self, mel: Tensor) -> Tensor:
        """Encode mel windows.

        Einstein notation: ``b`` batch, ``t`` frames, ``c`` mel columns in a frame's window,
        ``m`` mel bins, ``h`` hidden channels, ``s`` segments, ``d`` code size.

        Arguments:
            mel: ``[b, t, c, m]`` (or ``[b, c, m]`` for one frame per row).

        Returns:
            ``[b, t, d]`` (or ``[b, d]``).
        """
        if mel.shape[-1] != self.mel_bins:
            raise ValueError(
                f"mel has {mel.shape[-1]} bins in its last dim, the audio encoder was built for {self.mel_bins}; "
                "use a dataset with the same audio features as the model's"
            )
        single = mel.dim() == 3
        if single:
            mel = mel.unsqueeze(1)
        b, _, c, _ = mel.shape
        h = self.project(rearrange(mel, "b t c m -> (b t) c m"))  # (BT, C, H)
        h = self.convs(rearrange(h, "n c h -> n h c"))  # (BT, H, C)
        pooled = rearrange(h @ self.pooling(c, h), "n h s -> n (h s)")  # (BT, H * S)
        code = rearrange(self.out(pooled), "(b t) d -> b t d", b=b)
        return code[:, 0] if single else code
