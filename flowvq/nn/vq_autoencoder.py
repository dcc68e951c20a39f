"""Convolutional encoder / decoder and the VQ autoencoder that carries the face codebook.

The layout follows the VQGAN of taming-transformers (ResNet blocks, a factor-2 resampling
between levels, self-attention at the lowest resolution), written for this project. With
``ch_mult`` of length L the latent grid is ``resolution / 2 ** (L - 1)`` on a side: the paper
scale (256 px, ``ch_mult=(1, 1, 2, 2, 4)``) gives 16 x 16 codes of 256 dims.

References:
    Esser, Rombach, Ommer. Taming Transformers for High-Resolution Image Synthesis.
    https://arxiv.org/abs/2012.09841
    Tan, Ji, Pan. FlowVQTalker. https://arxiv.org/abs/2403.06375
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from flowvq.nn.quantizer import Quantizer

__all__ = [
    "AttentionBlock",
    "Decoder",
    "Encoder",
    "GroupNorm",
    "ResnetBlock",
    "VQAutoencoder",
    "channels_last",
    "group_norm",
]


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that is fast on CPU whatever the input's memory layout; the output keeps it.

    PyTorch's CPU GroupNorm with more than one group is 2x (float32) to 7x (bfloat16, forward +
    backward) slower on a channels-last tensor than on the same tensor in NCHW; with one group it
    is as fast in either layout (one mean and variance per sample over every element). So a
    channels-last input with several groups is normalised in NCHW and handed back channels-last
    (two copies, cheaper than the slow kernel), one group runs in place, and an NCHW input (or
    any other) is made contiguous first, as before: channels-last views arrive unasked (a
    rearranged codebook lookup) and one copy is cheaper than the slow kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            if self.num_groups == 1:
                return super().forward(x)
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x.contiguous())


def channels_last(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Put ``module``'s 4-D weights in channels-last (NHWC) memory (``enabled``), or back in NCHW.

    A convolution with channels-last weights computes channels-last whatever its input's layout,
    so the whole network then runs NHWC, where oneDNN's CPU convolutions are 1.5-2x faster than
    in NCHW (bfloat16 and float32; ``benchmarks/results/vq_speed.md``). Values are unchanged.
    """
    return module.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)


def group_norm(channels: int, groups: int | None = None) -> GroupNorm:
    """GroupNorm with ``gcd(groups, channels)`` groups (``groups`` default 32, as in taming).

    At 16 or 32 channels the default gives one channel per group: an instance norm, which takes
    every channel's mean over the image away, and with it the absolute colour and brightness of
    flat regions (``benchmarks/results/vq_codebook.md``); fewer groups keep them.
    """
    return GroupNorm(math.gcd(32 if groups is None else groups, channels), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (norm, SiLU, 3x3 conv) twice, 1x1 skip when widths differ."""

    def __init__(
        self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0, groups: int | None = None
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.block = nn.Sequential(
            group_norm(in_channels, groups),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            group_norm(out_channels, groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection (lowest resolution only)."""

    def __init__(self, channels: int, groups: int | None = None) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W)."""
        _, _, h, w = x.shape
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        y = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        return x + self.out(rearrange(y, "b 1 (h w) c -> b c h w", h=h, w=w))


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> feature grid (B, out_channels, H / 2^(L-1), W / 2^(L-1)).

    Arguments:
        channels: width of the first level; level i has ``channels * ch_mult[i]``.
        ch_mult: width multipliers; one factor-2 downsampling between consecutive levels.
        num_res_blocks: ResNet blocks per level.
        out_channels: channels of the output grid (the codebook dim for the VQGAN).
        attention: self-attention in the middle block (at the lowest resolution).
        in_channels: image channels.
        norm_groups: GroupNorm groups (see :func:`group_norm`; ``None``: up to 32).
    """

    def __init__(
        self,
        channels: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        out_channels: int = 256,
        attention: bool = True,
        in_channels: int = 3,
        norm_groups: int | None = None,
    ) -> None:
        super().__init__()
        g = norm_groups
        widths = [channels * m for m in ch_mult]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        width = widths[0]
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResnetBlock(width, level_width, groups=g))
                width = level_width
            if level < len(widths) - 1:
                # Strided conv halves the grid; asymmetric padding keeps even sizes exact.
                layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(width, width, 3, stride=2)]
        layers.append(ResnetBlock(width, groups=g))
        if attention:
            layers.append(AttentionBlock(width, g))
        layers += [ResnetBlock(width, groups=g), group_norm(width, g), nn.SiLU()]
        layers.append(nn.Conv2d(width, out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)
        self.downsampling = 2 ** (len(ch_mult) - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """Feature grid (B, in_channels, h, w) -> image (B, 3, h * 2^(L-1), w * 2^(L-1)), unbounded.

    Mirrors :class:`Encoder` (same ``channels``, ``ch_mult``, ``num_res_blocks``, ``norm_groups``),
    with one more ResNet block per level as in taming.
    """

    def __init__(
        self,
        channels: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        in_channels: int = 256,
        attention: bool = True,
        out_channels: int = 3,
        norm_groups: int | None = None,
    ) -> None:
        super().__init__()
        g = norm_groups
        widths = [channels * m for m in reversed(ch_mult)]
        width = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), ResnetBlock(width, groups=g)]
        if attention:
            layers.append(AttentionBlock(width, g))
        layers.append(ResnetBlock(width, groups=g))
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks + 1):
                layers.append(ResnetBlock(width, level_width, groups=g))
                width = level_width
            if level < len(widths) - 1:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        layers += [group_norm(width, g), nn.SiLU()]
        self.layers = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> Tensor:
        """Weight of the final conv: where the adaptive GAN weight compares gradient norms."""
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_out(self.layers(z))


class VQAutoencoder(nn.Module):
    """Encoder -> vector quantizer (the codebook) -> decoder.

    Arguments:
        resolution: side of the square input images.
        channels, ch_mult, num_res_blocks, attention: see :class:`Encoder`.
        codebook_size: number of codebook entries (1024 in the paper).
        codebook_dim: dimension of each entry and of the latent grid (256 in the paper).
        norm_groups: GroupNorm groups of encoder and decoder (``None``: up to 32, see :func:`group_norm`).
        quantizer_kwargs: passed to :class:`~flowvq.nn.quantizer.Quantizer` (EMA decay,
            dead-code threshold, k-means init, commitment weight).

    Example:
        >>> ae = VQAutoencoder(32, channels=8, ch_mult=(1, 2), num_res_blocks=1, codebook_size=16, codebook_dim=4)
        >>> recon, commit, indices = ae(torch.zeros(2, 3, 32, 32))
        >>> recon.shape, indices.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 16, 16]))
    """

    def __init__(
        self,
        resolution: int = 256,
        channels: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attention: bool = True,
        codebook_size: int = 1024,
        codebook_dim: int = 256,
        norm_groups: int | None = None,
        **quantizer_kwargs,
    ) -> None:
        super().__init__()
        factor = 2 ** (len(ch_mult) - 1)
        if resolution % factor:
            raise ValueError(
                f"resolution={resolution} is not divisible by the downsampling factor {factor} of "
                f"ch_mult={list(ch_mult)}: pick a resolution that is a multiple of {factor} or a shorter ch_mult"
            )
        self.resolution = resolution
        self.latent_size = resolution // factor
        if norm_groups is not None and norm_groups < 1:
            raise ValueError(f"norm_groups={norm_groups}: expected a positive number of GroupNorm groups, or None")
        self.encoder = Encoder(channels, ch_mult, num_res_blocks, codebook_dim, attention, norm_groups=norm_groups)
        self.quantizer = Quantizer(codebook_dim, codebook_size, **quantizer_kwargs)
        self.decoder_config = {
            "channels": channels,
            "ch_mult": tuple(ch_mult),
            "num_res_blocks": num_res_blocks,
            "in_channels": codebook_dim,
            "attention": attention,
            "norm_groups": norm_groups,
        }
        self.decoder = Decoder(**self.decoder_config)

    @property
    def last_layer(self) -> Tensor:
        return self.decoder.last_layer

    def check_images(self, images: Tensor, name: str = "images") -> None:
        """Refuse images that are not (B, 3, resolution, resolution)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(
                f"{name} has shape {tuple(images.shape)}, expected (B, 3, {self.resolution}, {self.resolution}): "
                f"this codebook was built for {self.resolution} px frames; make the dataset at that frame size "
                "or configure the model's resolution to match the data"
            )

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Images (B, 3, H, W) -> quantized grid (B, D, h, w), commitment loss (), indices (B, h, w)."""
        return self.quantizer(self.encoder(images))

    @torch.no_grad()
    def encode_indices(self, images: Tensor) -> Tensor:
        """Code indices (B, h, w) of images, without touching the codebook."""
        return self.quantizer.nearest(self.encoder(images))

    def decode(self, quantized: Tensor) -> Tensor:
        """Quantized grid (B, D, h, w) -> images (B, 3, H, W)."""
        return self.decoder(quantized)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code indices (B, h, w) -> images (B, 3, H, W)."""
        return self.decoder(self.quantizer.indices_to_codes(indices))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Images (B, 3, H, W) -> reconstruction (B, 3, H, W), commitment loss (), indices (B, h, w)."""
        quantized, commit_loss, indices = self.encode(images)
        return self.decode(quantized), commit_loss, indices
