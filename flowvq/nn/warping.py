"""Dense flow warping of feature maps, and the network that predicts the flow from motion.

Flows are in normalised grid units (``grid_sample``'s [-1, 1] coordinates, ``align_corners=True``),
channel 0 horizontal, channel 1 vertical, so a zero flow samples every position at itself and
warping is exactly the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from flowvq.nn.vq_autoencoder import ResnetBlock, group_norm

__all__ = ["WarpingNetwork", "identity_grid", "warp"]


def identity_grid(height: int, width: int, like: Tensor) -> Tensor:
    """Sampling grid (1, H, W, 2) of every position's own (x, y) in [-1, 1]."""
    ys = torch.linspace(-1.0, 1.0, height, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1.0, 1.0, width, dtype=like.dtype, device=like.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0)


def warp(features: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp ``features`` (B, C, H, W) by ``flow`` (B, 2, H, W): out[p] = features[p + flow[p]].

    Bilinear, border padding (a face moved off the crop repeats its edge rather than turning black).
    """
    if flow.shape[0] != features.shape[0] or flow.shape[1] != 2 or flow.shape[-2:] != features.shape[-2:]:
        raise ValueError(
            f"flow has shape {tuple(flow.shape)}, expected (B, 2, H, W) matching features {tuple(features.shape)}"
        )
    grid = identity_grid(features.shape[-2], features.shape[-1], flow) + rearrange(flow, "b two h w -> b h w two")
    return F.grid_sample(features, grid.to(features.dtype), mode="bilinear", padding_mode="border", align_corners=True)


class WarpingNetwork(nn.Module):
    """Predicts a dense flow (and an occlusion map) from source features and a motion code, and warps.

    A small U-Net over [source features, motion code broadcast over the grid]; the flow head is
    zero-initialised so training starts from the identity warp.

    Arguments:
        channels: channels of the source features.
        motion_dim: size of the motion code.
        hidden: width of the U-Net.
        occlusion: also predict a sigmoid occlusion map that multiplies the warped features
            (regions the source cannot show, e.g. the inside of an opening mouth, are left to
            the later stages).
    """

    def __init__(self, channels: int, motion_dim: int, hidden: int = 64, occlusion: bool = True) -> None:
        super().__init__()
        self.inp = nn.Conv2d(channels + motion_dim, hidden, 3, padding=1)
        self.down = nn.Sequential(ResnetBlock(hidden), nn.Conv2d(hidden, 2 * hidden, 3, stride=2, padding=1))
        self.middle = ResnetBlock(2 * hidden)
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(2 * hidden, hidden, 3, padding=1)
        )
        self.fuse = ResnetBlock(2 * hidden, hidden)
        self.out = nn.Sequential(group_norm(hidden), nn.SiLU(), nn.Conv2d(hidden, 3 if occlusion else 2, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.occlusion = occlusion

    def forward(self, features: Tensor, motion: Tensor) -> tuple[Tensor, Tensor]:
        """Features (B, C, h, w), motion (B, M) -> warped features (B, C, h, w), flow (B, 2, h, w)."""
        _, _, h, w = features.shape
        if h % 2 or w % 2:
            raise ValueError(f"the warping network needs an even feature grid, got {h} x {w}")
        m = motion[:, :, None, None].expand(-1, -1, h, w)
        x = self.inp(torch.cat([features, m], dim=1))  # (B, hidden, h, w)
        skip = x
        x = self.up(self.middle(self.down(x)))  # (B, hidden, h, w)
        out = self.out(self.fuse(torch.cat([x, skip], dim=1)))
        flow = out[:, :2]
        warped = warp(features, flow)
        if self.occlusion:
            # sigmoid(0) * 2 = 1 at initialisation: no occlusion until the network learns one.
            warped = warped * (2.0 * torch.sigmoid(out[:, 2:3]))
        return warped, flow
