"""Appearance augmentation for face frames: a random colour transform shared by the frames of a sample.

A codebook trained on a handful of identities learns only their hair, skin and background
colours, and maps the colours of an unseen speaker to the nearest ones it knows (red hair comes
back green, a yellow background grey). :func:`color_jitter` rotates the hue, scales the
saturation and shifts the brightness of training frames, so the codebook and the image
generators see the whole colour wheel while geometry, landmarks and coefficients are
untouched. In a (source, target) pair both frames get the same transform: the generator must
carry the source's colours to the target rather than learn a fixed palette.

The hue rotation turns the chroma plane of YIQ (the NTSC luma / chroma space) about the luma
axis, which keeps luma (and so shading, wrinkles and the mouth's interior) as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["color_jitter", "color_matrix"]

# RGB -> YIQ (FCC NTSC); its inverse maps back.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def color_matrix(hue: float, saturation: float) -> np.ndarray:
    """3 x 3 matrix acting on RGB column vectors: rotate the hue by ``hue`` radians and scale the
    chroma by ``saturation``, luma unchanged (``color_matrix(0, 1)`` is the identity)."""
    c, s = np.cos(hue) * saturation, np.sin(hue) * saturation
    chroma = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return _YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ


def color_jitter(images: Sequence[np.ndarray], rng: np.random.Generator, strength: float) -> list[np.ndarray]:
    """Apply one random colour transform to every image of ``images`` (uint8, (H, W, 3) each).

    Arguments:
        images: the frames of one sample (one frame, or a source and its target).
        rng: the sample's generator (seeded by run, clip and epoch).
        strength: in [0, 1]. The hue turns by up to ``strength * pi`` either way, the saturation
            is scaled by a factor in ``[1 - 0.5 strength, 1 + 0.5 strength]`` and the brightness
            shifts by up to ``0.1 * strength`` of the range. 0 returns the images unchanged.

    Returns:
        New uint8 images, in the order given.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"color_jitter strength={strength} must be in [0, 1] (0 = off, 1 = any hue)")
    if strength == 0.0:
        return [np.asarray(image) for image in images]
    hue = rng.uniform(-np.pi, np.pi) * strength
    saturation = 1.0 + rng.uniform(-0.5, 0.5) * strength
    brightness = rng.uniform(-0.1, 0.1) * strength * 255.0
    matrix = color_matrix(hue, saturation).astype(np.float32)
    out = []
    for image in images:
        pixels = np.asarray(image, dtype=np.float32) @ matrix.T + brightness
        out.append(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    return out
