"""GMTalker's Emotion Mapping Network and the style encoder it is paired with (StarGAN v2 pattern).

- :class:`MappingNetwork`: noise ``z`` through a shared MLP trunk, then one output branch per
  emotion (StarGAN v2's unshared heads); an emotion-weights vector mixes the branches'
  outputs, so a blend of emotions is a blend of style codes and a one-hot vector is
  StarGAN v2's per-domain code.
- :class:`StyleEncoder`: a frame to a style code (strided convolutions, then a linear map
  of the whole last feature map, which keeps where each feature is). One shared output
  head, unlike StarGAN v2's per-domain heads: the encoder must read the emotion from the
  pixels, so that a classifier on its codes measures something.
- :func:`conditional_mmd`: the objective pairing them (see
  :mod:`flowvq.lightning_modules.emotion_mapping`).

References:
    Choi et al. StarGAN v2: Diverse Image Synthesis for Multiple Domains. https://arxiv.org/abs/1912.01865
    GMTalker. https://arxiv.org/abs/2312.07669
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvq.nn.conv_encoder import ConvEncoder

__all__ = ["MappingNetwork", "StyleEncoder", "check_emotion_weights", "conditional_mmd"]


def check_emotion_weights(weights: Tensor, num_emotions: int, what: str = "emotion_weights") -> Tensor:
    """``(B, K)`` non-negative weights summing to 1 per row; refuses anything else, naming it."""
    if weights.ndim != 2 or weights.shape[1] != num_emotions:
        raise ValueError(f"{what} must be (B, {num_emotions}), one weight per emotion; got {tuple(weights.shape)}")
    if (weights < 0).any() or not torch.allclose(weights.sum(1), torch.ones_like(weights[:, 0]), atol=1e-4):
        raise ValueError(f"{what}: each row must be non-negative and sum to 1 (a point of the simplex)")
    return weights


class MappingNetwork(nn.Module):
    """Noise and emotion weights -> style code.

    Arguments:
        latent_dim: width of the noise ``z``.
        style_dim: width of the style code.
        hidden_dim: width of the MLP layers.
        num_emotions: output branches (8 MEAD emotions).
        shared_layers: layers of the shared trunk.
        branch_layers: layers of each branch (the last maps to ``style_dim``).
    """

    def __init__(
        self,
        latent_dim: int = 16,
        style_dim: int = 64,
        hidden_dim: int = 512,
        num_emotions: int = 8,
        shared_layers: int = 4,
        branch_layers: int = 4,
    ) -> None:
        super().__init__()
        self.latent_dim, self.style_dim, self.num_emotions = latent_dim, style_dim, num_emotions
        layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(shared_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            width = hidden_dim
        self.trunk = nn.Sequential(*layers)
        sizes = [width] + [hidden_dim] * (branch_layers - 1) + [style_dim]
        # every branch's layer k as one (K, in, out) tensor: all branches in one einsum
        self.branch_weights = nn.ParameterList(
            nn.Parameter(torch.randn(num_emotions, a, b) / math.sqrt(a)) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.branch_biases = nn.ParameterList(nn.Parameter(torch.zeros(num_emotions, b)) for b in sizes[1:])

    def branches(self, z: Tensor) -> Tensor:
        """Every branch's code ``(B, K, S)`` for noise ``(B, L)``."""
        h = self.trunk(z)  # (B, H)
        h = h[:, None].expand(-1, self.num_emotions, -1)  # (B, K, H)
        last = len(self.branch_weights) - 1
        for index, (weight, bias) in enumerate(zip(self.branch_weights, self.branch_biases)):
            h = torch.einsum("bki,kio->bko", h, weight) + bias
            if index < last:
                h = F.relu(h)
        return h

    def forward(self, z: Tensor, weights: Tensor) -> Tensor:
        """``z (B, L)``, emotion ``weights (B, K)`` on the simplex -> style ``(B, S)``."""
        check_emotion_weights(weights, self.num_emotions)
        return torch.einsum("bk,bks->bs", weights.to(z.dtype), self.branches(z))


class StyleEncoder(nn.Module):
    """A frame ``(B, 3, H, W)`` in [-1, 1] -> style code ``(B, S)``.

    The trunk is the suite's :class:`~flowvq.nn.conv_encoder.ConvEncoder` (strided
    convolutions with GroupNorm); frames of another size are refused. The head reads the last
    feature map in one of two ways:

    - ``"spatial"``: one linear layer over the whole flattened map, so each position has its
      own weights (StarGAN v2 ends its style encoder the same way: a convolution whose kernel
      covers the final 4 x 4 map). Emotion lives in where things are (brows raised or
      lowered, mouth corners up or down, lines on the forehead), and this head keeps it.
    - ``"mean"``: global average pooling then a linear layer (``ConvEncoder``'s own head). It
      discards position; on SynthTalk at 64 px it leaves the codes near chance on held-out
      speakers (``benchmarks/results/styleunet.md``).

    Arguments:
        image_size: side of the frames.
        style_dim: width of the code.
        channels: widths of the stages (each halves the resolution).
        head: ``"spatial"`` or ``"mean"``.
    """

    HEADS = ("spatial", "mean")

    def __init__(
        self,
        image_size: int,
        style_dim: int = 64,
        channels: Sequence[int] = (32, 64, 128, 256),
        head: str = "spatial",
    ) -> None:
        super().__init__()
        if head not in self.HEADS:
            raise ValueError(f"StyleEncoder: head={head!r} is not one of {self.HEADS}")
        self.image_size, self.head = int(image_size), head
        self.body = ConvEncoder(3, tuple(channels), style_dim)
        if head == "spatial":
            side = self.image_size
            for _ in channels:
                side = (side + 1) // 2  # a stride-2, padding-1, 3x3 convolution
            # replaces ConvEncoder's pooled head: a linear map of the whole (C, side, side) map
            self.body.head = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side * side, style_dim))

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"StyleEncoder is built for {self.image_size} px frames, got {tuple(images.shape[-2:])}: "
                "set the DataModule's image_size to match"
            )
        if self.head == "mean":
            return self.body(images)
        h = self.body.stem(images)  # (B, c0, H, W)
        for stage in self.body.stages:
            h = stage["down"](h)
            h = h + stage["residual"](h)
        return self.body.head(h)  # (B, S) from (B, C, side, side)


def conditional_mmd(
    real: Tensor, fake: Tensor, labels: Tensor, bandwidths: tuple[float, ...] = (0.5, 1, 2, 4)
) -> Tensor:
    """Squared MMD between the joint samples (code, label) of real and mapped codes.

    ``real (N, S)`` and ``fake (N, S)`` carry the same ``labels (N,)``; the kernel is an RBF
    mixture on the codes times ``[label == label']``, so the statistic is the sum over
    emotions of each emotion's MMD between its real and mapped codes (weighted by its share
    of the batch): zero iff every emotion's mapped codes have the real codes' distribution.
    Bandwidths are relative to the codes' mean squared distance (detached).
    """
    same = (labels[:, None] == labels[None, :]).to(real.dtype)
    both = torch.cat([real, fake])
    distances = torch.cdist(both, both).pow(2)
    scale = distances.detach().mean().clamp_min(1e-6)
    kernel = sum(torch.exp(-distances / (scale * b)) for b in bandwidths) / len(bandwidths)
    n = real.shape[0]
    k_rr, k_ff, k_rf = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return ((k_rr + k_ff - 2 * k_rf) * same).sum() / (n * n)
