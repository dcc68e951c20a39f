"""GMTalker's head generator network: a U-Net over condition maps whose decoder is style-modulated.

The encoder is plain convolutions over the condition maps (contours of the decoded
landmarks, plus GMEG's latent z_gm broadcast as constant channels where given); the decoder
upsamples with :class:`ModulatedConv2d` layers (StyleGAN2's weight modulation and
demodulation by a style code: the Emotion Mapping Network's), concatenating the encoder's
features at each scale (the skip connections, which carry the spatial layout; the person's
appearance is in the weights, the network being trained on one person), and sums RGB
outputs across scales (StyleGAN2's skip generator).

References:
    Karras et al. Analyzing and Improving the Image Quality of StyleGAN (StyleGAN2).
    https://arxiv.org/abs/1912.04958
    GMTalker. https://arxiv.org/abs/2312.07669
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["ModulatedConv2d", "StyleUNet"]


class ModulatedConv2d(nn.Module):
    """StyleGAN2 convolution: per-sample weights scaled by the style, then demodulated.

    ``w'[b, o, i] = w[o, i] * s[b, i]`` with ``s = affine(style)`` (bias 1 at init), and with
    ``demodulate`` ``w''[b, o] = w'[b, o] / sqrt(sum_{i,k} w'[b, o, i, k]^2 + eps)``, so every
    output channel keeps unit expected variance whatever the style. Applied as one grouped
    convolution over the batch.

    Arguments:
        in_channels, out_channels, kernel_size: the convolution.
        style_dim: width of the style code.
        demodulate: divide by the modulated weights' norm (off for the RGB layers).
        upsample: upsample the input 2x (bilinear) first.
        activate: add a bias and a leaky ReLU (gain sqrt 2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        activate: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)  # equalised learning rate
        self.affine = nn.Linear(style_dim, in_channels)
        nn.init.ones_(self.affine.bias)  # StyleGAN2: scales start near 1
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.demodulate, self.upsample, self.activate = demodulate, upsample, activate
        self.padding = kernel_size // 2

    def modulated_weight(self, style: Tensor) -> Tensor:
        """Per-sample weights ``(B, O, I, k, k)`` for styles ``(B, S)``."""
        s = self.affine(style)  # (B, I)
        weight = self.scale * self.weight[None] * s[:, None, :, None, None]  # (B, O, I, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        return weight

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """``x (B, I, H, W)``, ``style (B, S)`` -> ``(B, O, H', W')`` (H' = 2H with ``upsample``)."""
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        batch = x.shape[0]
        weight = self.modulated_weight(style)
        out = F.conv2d(
            rearrange(x, "b i h w -> 1 (b i) h w"),
            rearrange(weight, "b o i k l -> (b o) i k l").to(x.dtype),
            padding=self.padding,
            groups=batch,
        )
        out = rearrange(out, "1 (b o) h w -> b o h w", b=batch) + self.bias[None, :, None, None].to(x.dtype)
        return F.leaky_relu(out, 0.2) * math.sqrt(2) if self.activate else out


class _DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class _UpBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, style_dim: int) -> None:
        super().__init__()
        self.up = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=True)
        self.conv = ModulatedConv2d(out_channels + skip_channels, out_channels, 3, style_dim)
        self.to_rgb = ModulatedConv2d(out_channels, 3, 1, style_dim, demodulate=False, activate=False)

    def forward(self, x: Tensor, skip: Tensor, style: Tensor) -> tuple[Tensor, Tensor]:
        x = self.up(x, style)
        x = self.conv(torch.cat([x, skip], 1), style)
        return x, self.to_rgb(x, style)


class StyleUNet(nn.Module):
    """U-Net from condition maps to an RGB frame, decoder modulated by a style code.

    Arguments:
        condition_channels: channels of the condition maps.
        style_dim: width of the style code.
        channels: width at full resolution.
        ch_mult: width multipliers per level; ``len(ch_mult) - 1`` halvings of the resolution.
        z_gm_dim: width of GMEG's per-frame latent, broadcast as constant input channels (0: none).
        max_channels: cap on any level's width.
    """

    def __init__(
        self,
        condition_channels: int,
        style_dim: int = 64,
        channels: int = 32,
        ch_mult: tuple[int, ...] = (1, 2, 4, 8),
        z_gm_dim: int = 0,
        max_channels: int = 512,
    ) -> None:
        super().__init__()
        if len(ch_mult) < 2:
            raise ValueError(f"StyleUNet needs at least two levels, got ch_mult={ch_mult}")
        widths = [min(channels * m, max_channels) for m in ch_mult]
        self.condition_channels, self.z_gm_dim, self.style_dim = condition_channels, z_gm_dim, style_dim
        self.levels = len(widths) - 1
        self.stem = nn.Sequential(nn.Conv2d(condition_channels + z_gm_dim, widths[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(_DownBlock(widths[i], widths[i + 1]) for i in range(self.levels))
        self.middle = ModulatedConv2d(widths[-1], widths[-1], 3, style_dim)
        self.middle_rgb = ModulatedConv2d(widths[-1], 3, 1, style_dim, demodulate=False, activate=False)
        self.up = nn.ModuleList(
            _UpBlock(widths[i + 1], widths[i], widths[i], style_dim) for i in reversed(range(self.levels))
        )

    def forward(self, condition: Tensor, style: Tensor, z_gm: Tensor | None = None) -> Tensor:
        """Frames from condition maps.

        Shapes: ``condition (B, C, H, W)``, ``style (B, S)``, ``z_gm (B, D)`` or None (zeros:
        the input GMEG's latent would give) -> ``(B, 3, H, W)`` (unbounded; [-1, 1] when trained).
        H and W must be divisible by ``2 ** levels``.
        """
        batch, _, height, width = condition.shape
        if height % (2**self.levels) or width % (2**self.levels):
            raise ValueError(
                f"StyleUNet with {self.levels} levels needs sides divisible by {2**self.levels}, got {height}x{width}"
            )
        if self.z_gm_dim:
            if z_gm is None:
                z_gm = condition.new_zeros(batch, self.z_gm_dim)
            if z_gm.shape != (batch, self.z_gm_dim):
                raise ValueError(
                    f"z_gm must be (B, {self.z_gm_dim}) = ({batch}, {self.z_gm_dim}), got {tuple(z_gm.shape)}"
                )
            planes = z_gm[:, :, None, None].expand(-1, -1, height, width).to(condition.dtype)
            condition = torch.cat([condition, planes], 1)  # (B, C + D, H, W)
        x = self.stem(condition)
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.middle(skips.pop(), style)  # (B, C_max, H / 2^L, W / 2^L)
        rgb = self.middle_rgb(x, style)
        for block in self.up:
            x, layer_rgb = block(x, skips.pop(), style)
            rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False) + layer_rgb
        return rgb  # (B, 3, H, W)
