"""PatchGAN discriminator: one real/fake logit per overlapping image patch.

References:
    Isola et al. Image-to-Image Translation with Conditional Adversarial Networks (PatchGAN).
    https://arxiv.org/abs/1611.07004
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from flowvq.nn.vq_autoencoder import GroupNorm

__all__ = ["PatchDiscriminator"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return GroupNorm(math.gcd(32, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"discriminator norm {kind!r} is unknown: expected 'group', 'batch' or 'none'")


class PatchDiscriminator(nn.Module):
    """Strided 4x4 convolutions down to a grid of logits (B, 1, h, w).

    Arguments:
        channels: width of the first layer, doubled per layer up to 8x.
        num_layers: strided layers; each adds receptive field (3 layers: 70x70 patches).
        norm: ``"group"`` (default: no running statistics, so a generator step that runs the
            discriminator on fakes changes nothing in it), ``"batch"`` (taming's choice) or ``"none"``.
        in_channels: image channels.

    Example:
        >>> import torch
        >>> PatchDiscriminator(channels=8, num_layers=2)(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 1, 6, 6])
    """

    def __init__(self, channels: int = 64, num_layers: int = 3, norm: str = "group", in_channels: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2))]
        width = channels
        for layer in range(1, num_layers + 1):
            out = channels * min(2**layer, 8)
            stride = 2 if layer < num_layers else 1
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(width, out, 4, stride, 1, bias=norm == "none"), _norm(norm, out), nn.LeakyReLU(0.2)
                )
            )
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(width, 1, 4, 1, 1)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        # DCGAN initialisation, as PatchGAN implementations use.
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    def forward(self, images: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Images (B, 3, H, W) -> logits (B, 1, h, w) [, features of every block for feature matching]."""
        features = []
        x = images
        for block in self.blocks:
            x = block(x)
            features.append(x)
        logits = self.head(x)
        return (logits, features) if return_features else logits
