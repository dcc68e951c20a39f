"""Encoder of the log-mel window around each video frame (the flows' audio condition)."""

from __future__ import annotations

import torch.nn.functional as F
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
        blocks: list[nn.Module] = []
        channels = mel_bins
        for _ in range(layers):
            blocks += [nn.Conv1d(channels, hidden, kernel_size=3, padding=1), nn.GELU()]
            channels = hidden
        self.convs = nn.Sequential(*blocks)
        self.segments = segments
        self.out = nn.Sequential(
            nn.Linear(segments * hidden, out_features), nn.GELU(), nn.Linear(out_features, out_features)
        )

    def forward(self, mel: Tensor) -> Tensor:
        """Encode mel windows.

        Einstein notation: ``b`` batch, ``t`` frames, ``c`` mel columns in a frame's window,
        ``m`` mel bins, ``d`` code size.

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
        b = mel.shape[0]
        h = self.convs(rearrange(mel, "b t c m -> (b t) m c"))  # (BT, H, C)
        pooled = rearrange(F.adaptive_avg_pool1d(h, self.segments), "n h s -> n (h s)")  # (BT, H * S)
        code = rearrange(self.out(pooled), "(b t) d -> b t d", b=b)
        return code[:, 0] if single else code
