"""Condition maps from coefficients: a coefficient -> landmark decoder and a contour rasteriser.

GMTalker's head generator is driven by renderings of 3DMM coefficients. This suite's
coefficients have no renderer, so the condition is built from what every shard carries:

- a **landmark decoder** maps a frame's expression and pose coefficients (dataset units) to
  its 68 iBUG landmarks in crop pixels:

  - :class:`PCALandmarkDecoder` for ``mediapipe-pca`` shards: the card's PCA basis and the
    speaker's neutral shape give the pose-normalised 3-D shape exactly; the pose (yaw,
    pitch, roll, tx, ty, scale) puts it in the clip's reference frame, and a 2-D affine
    (crop units -> crop pixels by default, or fitted on train frames) gives pixels;
  - :class:`QuadraticLandmarkDecoder` for sources without a shape basis (SynthTalk, Deep3D
    imports): ridge regression on the quadratic features of the standardised coefficients,
    fitted on the train frames' ``landmarks``;

- :func:`rasterize_contours` draws the landmarks' contours as separate anti-aliased channels
  (:data:`CONTOUR_GROUPS`: jaw, brows, eyes, nose, lips, inner mouth).

Plain ``nn.Module`` parts (buffers only, nothing trained by gradient), so a head generator's
checkpoint carries its decoder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CONTOUR_GROUPS",
    "contour_colours",
    "LandmarkDecoder",
    "PCALandmarkDecoder",
    "QuadraticLandmarkDecoder",
    "landmark_error",
    "rasterize_contours",
    "rotation_from_euler",
]

#: Channels of the condition maps: polylines of iBUG-68 indices (loops repeat their first point).
CONTOUR_GROUPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "jaw": (tuple(range(0, 17)),),
    "brows": (tuple(range(17, 22)), tuple(range(22, 27))),
    "eyes": (tuple(range(36, 42)) + (36,), tuple(range(42, 48)) + (42,)),
    "nose": (tuple(range(27, 31)), tuple(range(31, 36))),
    "lips": (tuple(range(48, 60)) + (48,),),
    "inner_mouth": (tuple(range(60, 68)) + (60,),),
}


def _segments() -> tuple[Tensor, Tensor, Tensor]:
    starts, ends, channel = [], [], []
    for index, lines in enumerate(CONTOUR_GROUPS.values()):
        for line in lines:
            starts += list(line[:-1])
            ends += list(line[1:])
            channel += [index] * (len(line) - 1)
    return torch.tensor(starts), torch.tensor(ends), torch.tensor(channel)


_STARTS, _ENDS, _CHANNEL = _segments()


def rasterize_contours(landmarks: Tensor, size: int, width: float | None = None, step: float = 0.5) -> Tensor:
    """Anti-aliased contour channels of landmark sets.

    Points are laid along every segment of a channel's polylines every ``step`` pixels or
    closer, each carrying its share of the segment's length (trapezoid rule), and splatted bilinearly: a pixel
    then holds the line's coverage under a one-pixel tent filter (1 on the line, falling to 0
    one pixel away). A line ``width`` pixels wide is drawn so at ``size / round(width)`` and
    upsampled bilinearly (the same tent, ``width`` pixels wide; far cheaper than filtering at
    full size). Values are clamped to [0, 1].

    Arguments:
        landmarks: ``(B, 68, 2)`` x, y in pixels of a ``size`` x ``size`` image spanning ``[0, size]``.
        size: side of the maps.
        width: line width in pixels; default ``max(1, size / 64)``.
        step: largest spacing of the splatted points, in pixels.

    Returns:
        ``(B, C, size, size)`` float in [0, 1], C = ``len(CONTOUR_GROUPS)``.

    Example:
        >>> maps = rasterize_contours(torch.rand(2, 68, 2) * 64, 64)
        >>> tuple(maps.shape)
        (2, 6, 64, 64)
    """
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (B, 68, 2), got {tuple(landmarks.shape)}")
    width = max(1.0, size / 64) if width is None else float(width)
    factor = max(1, int(round(width)))
    if factor > 1 and size % factor == 0:
        small = rasterize_contours(landmarks / factor, size // factor, width=1.0, step=step)
        return torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    points = landmarks.detach().float()
    device = points.device
    batch, count = points.shape[0], len(CONTOUR_GROUPS)
    a = points[:, _STARTS.to(device)]  # (B, S, 2)
    b = points[:, _ENDS.to(device)]
    length = (b - a).norm(dim=-1).nan_to_num(0.0).clamp(max=4.0 * size)  # (B, S)
    samples = int(math.ceil(float(length.max()) / step)) + 1 if length.numel() else 1
    t = torch.linspace(0, 1, samples, device=device)  # (K,)
    along = a[:, :, None] + t[:, None] * (b - a)[:, :, None] - 0.5  # (B, S, K, 2) pixel-centre coordinates
    # trapezoid rule: points `spacing` apart, half weight at the ends (a vertex shared by two
    # segments gets one full weight), so a line's density is one per pixel of length everywhere
    ends = torch.ones(samples, device=device)
    ends[0] = ends[-1] = 0.5
    weight = (length / max(samples - 1, 1))[:, :, None] * ends  # (B, S, K)
    corner = along.floor()
    frac = along - corner
    channel = _CHANNEL.to(device)[None, :, None].expand_as(weight)
    image = torch.arange(batch, device=device)[:, None, None].expand_as(weight)
    maps = torch.zeros(batch * count * size * size, device=device)
    for dx in (0, 1):
        for dy in (0, 1):
            x = corner[..., 0] + dx
            y = corner[..., 1] + dy
            share = (frac[..., 0] if dx else 1 - frac[..., 0]) * (frac[..., 1] if dy else 1 - frac[..., 1])
            inside = (x >= 0) & (x < size) & (y >= 0) & (y < size) & torch.isfinite(share)
            flat = ((image * count + channel) * size + y.clamp(0, size - 1).long()) * size + x.clamp(0, size - 1).long()
            maps.index_add_(0, flat[inside], (weight * share)[inside])
    maps = maps.view(batch, count, size, size)
    return maps.clamp(0, 1)


def rotation_from_euler(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """``R = Rz(roll) Ry(yaw) Rx(pitch)``, ``(..., 3, 3)``: torch twin of :func:`flowvq.data.face.rotation_from_euler`."""
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx


def landmark_error(predicted: Tensor, truth: Tensor) -> dict[str, float]:
    """Mean Euclidean distance (pixels) over all 68 points and over the mouth (48..67)."""
    distance = (predicted.float() - truth.float()).norm(dim=-1)  # (B, 68)
    return {"all": float(distance.mean()), "mouth": float(distance[:, 48:68].mean())}


class LandmarkDecoder(nn.Module):
    """Coefficients ``exp (B, E)``, ``pose (B, P)`` in dataset units -> landmarks ``(B, 68, 2)`` in
    pixels of an ``output_size`` crop."""

    def __init__(self, exp_dim: int, pose_dim: int, output_size: int) -> None:
        super().__init__()
        self.exp_dim, self.pose_dim = int(exp_dim), int(pose_dim)
        self.register_buffer("output_size", torch.tensor(float(output_size)))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def check(self, exp: Tensor, pose: Tensor) -> None:
        if exp.shape[-1] != self.exp_dim or pose.shape[-1] != self.pose_dim:
            raise ValueError(
                f"the landmark decoder takes exp of width {self.exp_dim} and pose of width {self.pose_dim}, "
                f"got {exp.shape[-1]} and {pose.shape[-1]}: pass coefficients of the dataset it was fitted on"
            )


class QuadraticLandmarkDecoder(LandmarkDecoder):
    """Ridge regression of the 136 landmark coordinates on quadratic features of the coefficients.

    Features of ``x = (exp, pose)`` standardised with the fit frames' mean and std: 1, x, and
    ``x_i x_j`` (i <= j). Quadratic terms carry what a rigid pose does to a deformed shape
    (rotation times expression offset, scale times shape); what is left is reported as the
    held-out error (see ``benchmarks/results/styleunet.md``).

    Arguments:
        exp_dim, pose_dim: coefficient widths.
        output_size: crop side in pixels of the landmarks it is fitted on.
    """

    def __init__(self, exp_dim: int, pose_dim: int, output_size: int) -> None:
        super().__init__(exp_dim, pose_dim, output_size)
        width = exp_dim + pose_dim
        rows, cols = torch.triu_indices(width, width)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        features = 1 + width + rows.numel()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.register_buffer("weight", torch.zeros(features, 136))

    def features(self, exp: Tensor, pose: Tensor) -> Tensor:
        x = (torch.cat([exp, pose], -1).float() - self.mean) / self.std  # (B, E + P)
        pairs = x[:, self.pair_rows] * x[:, self.pair_cols]
        return torch.cat([torch.ones_like(x[:, :1]), x, pairs], -1)  # (B, F)

    @torch.no_grad()
    def fit(self, exp: Tensor, pose: Tensor, landmarks: Tensor, ridge: float = 1e-3) -> QuadraticLandmarkDecoder:
        """Least squares (with a ridge of ``ridge`` x the mean feature energy) on fit frames."""
        self.check(exp, pose)
        x = torch.cat([exp, pose], -1).double()
        self.mean.copy_(x.mean(0).float())
        self.std.copy_(x.std(0).clamp_min(1e-6).float())
        phi = self.features(exp, pose).double()  # (N, F)
        target = landmarks.reshape(len(landmarks), -1).double()  # (N, 136)
        gram = phi.T @ phi
        penalty = ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
        penalty[0, 0] = 0  # the intercept is not shrunk
        self.weight.copy_(torch.linalg.solve(gram + penalty, phi.T @ target).float())
        self.fitted.fill_(True)
        return self

    def forward(self, exp: Tensor, pose: Tensor) -> Tensor:
        self.check(exp, pose)
        return (self.features(exp, pose) @ self.weight).unflatten(-1, (68, 2))


class PCALandmarkDecoder(LandmarkDecoder):
    """The ``mediapipe-pca`` coefficient source inverted: basis + neutral shape + pose -> landmarks.

    ``shape = (exp @ components + offset_mean) + neutral`` (pose-normalised, the iBUG-68 rows of
    the basis), then ``X = scale R(yaw, pitch, roll) shape + (tx, ty)`` in the clip's reference
    frame (crop units) as :func:`flowvq.data.face.pose_from_landmarks` defines the pose, then
    ``pixels = A X_xy + b``. The default affine maps crop units to pixels of an
    ``output_size`` crop (``(x + 1) size / 2``), exact where the crop is the clip's frame;
    :meth:`fit_affine` fits it to the train frames' landmarks instead (the preprocessing crop
    follows the head slowly, so the two frames differ by the crop's own motion).

    Arguments:
        components: ``(E, 68 * 3)`` the basis rows restricted to the iBUG-68 points.
        offset_mean: ``(68 * 3,)``.
        neutral: ``(68, 3)`` the speaker's neutral shape.
        output_size: crop side in pixels.
        pose_dim: 6 (yaw, pitch, roll, tx, ty, scale).
    """

    def __init__(
        self,
        components: Tensor | np.ndarray,
        offset_mean: Tensor | np.ndarray,
        neutral: Tensor | np.ndarray,
        output_size: int,
        pose_dim: int = 6,
    ) -> None:
        components = torch.as_tensor(np.asarray(components), dtype=torch.float32)
        super().__init__(components.shape[0], pose_dim, output_size)
        if pose_dim != 6:
            raise ValueError(f"PCALandmarkDecoder needs the 6 pose values of mediapipe-pca, got pose_dim={pose_dim}")
        self.register_buffer("components", components)
        self.register_buffer("offset_mean", torch.as_tensor(np.asarray(offset_mean), dtype=torch.float32))
        self.register_buffer("neutral", torch.as_tensor(np.asarray(neutral), dtype=torch.float32))
        half = output_size / 2
        self.register_buffer("affine", torch.tensor([[half, 0.0, half], [0.0, half, half]]))
        self.fitted.fill_(True)

    @classmethod
    def empty(cls, exp_dim: int, output_size: int) -> PCALandmarkDecoder:
        """A decoder of the right shapes whose buffers a checkpoint (or a fit) fills."""
        decoder = cls(torch.zeros(exp_dim, 204), torch.zeros(204), torch.zeros(68, 3), output_size)
        decoder.fitted.fill_(False)
        return decoder

    def clip_frame(self, exp: Tensor, pose: Tensor) -> Tensor:
        """``(B, 68, 3)`` landmarks in the clip's reference frame (crop units)."""
        self.check(exp, pose)
        shape = (exp.float() @ self.components + self.offset_mean).unflatten(-1, (68, 3)) + self.neutral
        pose = pose.float()
        rotation = rotation_from_euler(pose[:, 0], pose[:, 1], pose[:, 2])  # (B, 3, 3)
        placed = pose[:, 5, None, None] * torch.einsum("bij,bnj->bni", rotation, shape)
        offset = torch.cat([pose[:, 3:5], torch.zeros_like(pose[:, :1])], -1)
        return placed + offset[:, None]

    @torch.no_grad()
    def fit_affine(self, exp: Tensor, pose: Tensor, landmarks: Tensor) -> PCALandmarkDecoder:
        """Least-squares 2-D affine from the clip frame to the fit frames' crop pixels."""
        xy = self.clip_frame(exp, pose)[..., :2].reshape(-1, 2).double()
        design = torch.cat([xy, torch.ones_like(xy[:, :1])], -1)  # (N, 3)
        solution = torch.linalg.lstsq(design, landmarks.reshape(-1, 2).double()).solution  # (3, 2)
        self.affine.copy_(solution.T.float())
        return self

    def forward(self, exp: Tensor, pose: Tensor) -> Tensor:
        xy = self.clip_frame(exp, pose)[..., :2]
        return xy @ self.affine[:, :2].T + self.affine[:, 2]


def contour_colours(maps: Tensor) -> Tensor:
    """Condition maps ``(B, C, H, W)`` as an RGB picture in [-1, 1] (one hue per channel), for logging."""
    hues = torch.arange(maps.shape[1], dtype=torch.float32, device=maps.device) / maps.shape[1]
    palette = torch.stack(
        [0.5 + 0.5 * torch.cos(2 * math.pi * (hues + shift)) for shift in (0.0, 1 / 3, 2 / 3)], -1
    )  # (C, 3)
    picture = torch.einsum("bchw,ck->bkhw", maps.float(), palette).clamp(0, 1)
    return picture * 2 - 1
