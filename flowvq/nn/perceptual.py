"""Perceptual distances: an LPIPS-style VGG16 distance from local weights, and multi-scale SSIM.

Nothing here downloads. :class:`VGGPerceptual` reads a state dict from a local file whose keys
follow torchvision's ``vgg16().features`` (``features.0.weight`` ...) and, optionally, LPIPS's
linear heads (``lin0.model.1.weight`` ... ``lin4.model.1.weight``). Make one on a machine with
torchvision and the lpips package::

    sd = {k: v for k, v in torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict().items()
          if k.startswith("features.")}
    sd.update(torch.load("lpips/weights/v0.1/vgg.pth"))   # the linear heads, optional
    torch.save(sd, "vgg_lpips.pth")

Without linear heads every channel weighs the same (a plain normalised VGG feature distance).
:func:`ms_ssim` is the fallback when no weights are given (see :class:`flowvq.nn.vq_losses.VQLoss`).

References:
    Zhang et al. The Unreasonable Effectiveness of Deep Features as a Perceptual Metric (LPIPS).
    https://arxiv.org/abs/1801.03924
    Wang, Simoncelli, Bovik. Multiscale structural similarity for image quality assessment (2003).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VGGPerceptual", "ms_ssim", "ssim"]

# torchvision's vgg16 "D" configuration; "M" is a 2x2 max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices (in the features Sequential) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: LPIPS's taps.
_TAPS = (3, 8, 15, 22, 29)


class VGGPerceptual(nn.Module):
    """LPIPS-style distance: unit-normalised VGG16 activations at five depths, squared difference,
    a per-channel weight (LPIPS's linear heads when the file has them), spatial mean, sum.

    Arguments:
        weights_path: local file with the VGG16 ``features.*`` weights (and optional ``lin*`` heads).

    The network is frozen; gradients flow only to the images.
    """

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                width = int(item)
        self.features = nn.Sequential(*layers)
        widths = [64, 128, 256, 512, 512]
        self.lins = nn.ParameterList([nn.Parameter(torch.full((1, c, 1, 1), 1.0 / c)) for c in widths])
        # LPIPS's input scaling for images in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.weights_path = str(weights_path)
        self._load(Path(weights_path))
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual weights {str(path)!r} do not exist: give a local VGG16 state dict (see "
                "flowvq.nn.perceptual's docstring for how to make one), or set perceptual_weights_path "
                "to null to use the fallback (discriminator feature matching + MS-SSIM)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        missing = set(self.features.state_dict()) - set(features)
        if missing:
            raise ValueError(
                f"perceptual weights {str(path)!r} lack VGG16 features {sorted(missing)[:4]}...: expected "
                "torchvision-style keys 'features.0.weight' ... 'features.28.bias'"
            )
        self.features.load_state_dict({k: features[k] for k in self.features.state_dict()})
        for i, lin in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key in state:
                lin.data.copy_(state[key].reshape(lin.shape))

    def train(self, mode: bool = True) -> VGGPerceptual:
        return super().train(False)  # always frozen

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean distance between image batches (B, 3, H, W) in [-1, 1]; a scalar."""
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)
        total = x.new_zeros(())
        tap = 0
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index == _TAPS[tap]:
                fx, fy = F.normalize(h, dim=1, eps=1e-10).chunk(2)
                total = total + ((fx - fy).pow(2) * self.lins[tap]).sum(1).mean()
                tap += 1
                if tap == len(_TAPS):
                    break
        return total


def _gaussian_taps(size: int, sigma: float, like: Tensor) -> Tensor:
    """A normalised 1-D Gaussian (size,)."""
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _unit_range(x: Tensor, y: Tensor, value_range: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Both batches in float32, mapped from ``value_range`` to [0, 1].

    SSIM's luminance term 2 mu_x mu_y / (mu_x^2 + mu_y^2) assumes non-negative intensities: on
    images in [-1, 1], whose means sit near 0, it swings to 0 or below for a small shift of a
    mid-grey region, so it must see the images in [0, 1] (where the same shift costs ~1%).
    """
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range={value_range}: expected (low, high) with high > low, e.g. (-1.0, 1.0)")
    return (x.float() - low) / (high - low), (y.float() - low) / (high - low)


def _ssim_terms(x: Tensor, y: Tensor, taps: Tensor, data_range: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-image mean SSIM and contrast-structure terms, each (B,), of float32 (B, C, H, W) batches in [0, 1].

    The five local moments (x, y, x^2, y^2, xy) are filtered together: one depthwise pass of the
    separable Gaussian along each axis over their channel stack, instead of five 2-D convolutions.
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    channels = x.shape[1]
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5C, H, W)
    groups = stack.shape[1]
    size = taps.shape[0]
    stack = F.conv2d(stack, taps.view(1, 1, 1, size).expand(groups, 1, 1, size), groups=groups)
    stack = F.conv2d(stack, taps.view(1, 1, size, 1).expand(groups, 1, size, 1), groups=groups)
    mu_x, mu_y, xx, yy, xy = stack.split(channels, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim(
    x: Tensor,
    y: Tensor,
    value_range: tuple[float, float] = (-1.0, 1.0),
    window_size: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Structural similarity per image (B,) of (B, C, H, W) batches (Gaussian window, valid region).

    ``value_range`` is the images' (black, white); they are scored in [0, 1], the range SSIM's
    constants assume. Computed in float32 whatever the autocast state: the variances are
    differences of moments, which bfloat16 cancels to noise.
    """
    with torch.autocast(x.device.type, enabled=False):
        x, y = _unit_range(x, y, value_range)
        taps = _gaussian_taps(min(window_size, x.shape[-1], x.shape[-2]), sigma, x)
        return _ssim_terms(x, y, taps)[0]


_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(
    x: Tensor, y: Tensor, value_range: tuple[float, float] = (-1.0, 1.0), scales: int = 5, window_size: int = 7
) -> Tensor:
    """Multi-scale SSIM per image (B,): contrast-structure at each scale, luminance at the coarsest.

    The number of scales shrinks so that the coarsest scale is still as large as the window (a
    64 px face gets 4 scales with the default 7 px window); the standard weights are renormalised.
    Images are scored in [0, 1] and in float32 whatever the autocast state (see :func:`ssim`).

    Note that SSIM compares means only through its luminance term, here at the coarsest scale
    alone, and per channel: a loss built on it lets the mean colour drift (see
    :class:`flowvq.nn.vq_losses.VQLoss`'s colour term).
    """
    with torch.autocast(x.device.type, enabled=False):
        x, y = _unit_range(x, y, value_range)
        size = min(x.shape[-2:])
        scales = max(1, min(scales, 1 + int(math.floor(math.log2(size / window_size)))))
        weights = torch.tensor(_MS_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
        weights = weights / weights.sum()
        taps = _gaussian_taps(window_size, 1.5, x)
        values = []
        for scale in range(scales):
            full, cs = _ssim_terms(x, y, taps)
            values.append(full if scale == scales - 1 else cs)
            if scale < scales - 1:
                x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        # relu keeps the product defined when a term is negative early in training.
        stacked = torch.stack(values, dim=1).relu()  # (B, S)
        return (stacked.clamp_min(1e-6) ** weights).prod(1)
