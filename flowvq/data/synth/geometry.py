"""Geometry of a rendered SynthTalk face: every polygon and line of a clip, in face coordinates.

:func:`clip_geometry` builds all shapes of all frames of a clip at once ([T, n, 3] each, one
concatenated array) so that a single projection serves the whole clip; :func:`skin_image` is a
speaker's shaded, textured skin in face coordinates (warped onto each frame by the renderer).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from flowvq.data.synth.face import deform, face_depth, iris_offset
from flowvq.data.synth.motion import EXP_INDEX
from flowvq.data.synth.presets import SpeakerSpec

__all__ = ["WRINKLE_GROUPS", "clip_geometry", "skin_image"]

WRINKLE_GROUPS: tuple[str, ...] = ("forehead", "glabella", "nasolabial_left", "nasolabial_right", "crows_feet", "nose")
FOREHEAD_HEIGHT = 0.72
_SKIN_BOX = (-0.62, -0.95, 0.62, 1.05)  # face-coordinate extent of the skin image
_ANGLES = np.linspace(0, 2 * np.pi, 16, endpoint=False)
_CIRCLE = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], 1)
_TEETH_X = np.linspace(-0.13, 0.13, 9)
_UPPER_LID = {"left": [36, 37, 38, 39], "right": [42, 43, 44, 45]}
_LOWER_LID = {"left": [39, 40, 41, 36], "right": [45, 46, 47, 42]}
_BROW_THICKNESS = np.array([0.012, 0.018, 0.02, 0.02, 0.018])


def _ellipse(centre: np.ndarray, rx: float, ry: float, n: int = 16) -> np.ndarray:
    """Ellipses [..., n, 3] around centres [..., 3] (in the x-y plane)."""
    circle = _CIRCLE if n == 16 else np.stack([np.cos(a := np.linspace(0, 2 * np.pi, n, endpoint=False)), np.sin(a)], 1)
    offset = np.concatenate([circle * [rx, ry], np.zeros((n, 1))], 1)
    return np.asarray(centre)[..., None, :] + offset


def _on_face(xy: np.ndarray, lift: float = 0.01) -> np.ndarray:
    """Face-coordinate points [..., 2] lifted onto the face surface -> [..., 3]."""
    return np.concatenate([xy, face_depth(xy[..., 0], xy[..., 1])[..., None] + lift], -1)


def _forehead(pts: np.ndarray, n: int) -> np.ndarray:
    """Forehead outline [T, n, 3] from the right jaw end (point 16) over the top to point 0."""
    centre_y = 0.5 * (pts[:, 0, 1] + pts[:, 16, 1])[:, None]
    half = 0.5 * (pts[:, 16, 0] - pts[:, 0, 0])[:, None]
    angle = np.linspace(0, np.pi, n)[None]
    xy = np.stack([half * np.cos(angle), centre_y - FOREHEAD_HEIGHT * np.sin(angle) ** 0.9], -1)
    return _on_face(xy, 0.0)


def _lines(start: np.ndarray, end: np.ndarray, n: int, bulge: np.ndarray | None = None) -> np.ndarray:
    """Polylines [T, n, 2] from start [T, 2] to end [T, 2], bowed by ``bulge`` (2,) at the middle."""
    t = np.linspace(0, 1, n)[None, :, None]
    out = start[:, None] + t * (end - start)[:, None]
    return out if bulge is None else out + np.sin(np.pi * t) * bulge


def _wrinkles(pts: np.ndarray) -> dict[str, np.ndarray]:
    """Wrinkle polylines [T, n, 3] per group, named ``wrinkle_<group>_<k>``."""
    out: dict[str, np.ndarray] = {}
    top = pts[:, 17:27, 1].min(1)[:, None]
    for k in range(3):
        x = np.linspace(-0.22 + 0.035 * k, 0.22 - 0.035 * k, 9)[None]
        y = top - 0.05 - 0.04 * k + 0.03 * (x / 0.25) ** 2 + 0.004 * np.sin(17 * x + k)
        out[f"wrinkle_forehead_{k}"] = _on_face(np.stack(np.broadcast_arrays(x, y), -1), 0.02)
    inner = 0.5 * (pts[:, 21, :2] + pts[:, 22, :2])
    for k, side in enumerate((-1, 1)):
        start, end = inner + [side * 0.028, 0.005], inner + [side * 0.036, -0.075]
        out[f"wrinkle_glabella_{k}"] = _on_face(_lines(start, end, 2), 0.02)
        wing, corner = pts[:, 31 if side < 0 else 35, :2], pts[:, 48 if side < 0 else 54, :2]
        fold = _lines(wing + [side * 0.035, -0.02], corner + [side * 0.035, 0.035], 9, np.array([side * 0.035, 0]))
        out[f"wrinkle_nasolabial_{'left' if side < 0 else 'right'}_0"] = _on_face(fold, 0.02)
        corner = pts[:, 36 if side < 0 else 45, :2] + [side * 0.012, 0.0]
        for j, angle in enumerate((-0.55, 0.0, 0.55)):  # a fan of separate lines
            direction = np.array([side * np.cos(angle), np.sin(angle)])
            line = _lines(corner + 0.025 * direction, corner + 0.065 * direction, 2)
            out[f"wrinkle_crows_feet_{3 * k + j}"] = _on_face(line, 0.02)
    bridge = 0.5 * (pts[:, 27, 1] + pts[:, 28, 1])[:, None]
    for k in range(3):  # short bowed lines across the bridge
        x = np.broadcast_to(np.linspace(-0.028 + 0.004 * k, 0.028 - 0.004 * k, 5)[None], bridge.shape[:1] + (5,))
        y = bridge - 0.03 + 0.022 * k - 2.0 * x**2
        out[f"wrinkle_nose_{k}"] = np.stack([x, y, np.broadcast_to(pts[:, 28, 2:3] + 0.01, x.shape)], -1)
    return out


def clip_geometry(
    shape: np.ndarray, speaker: SpeakerSpec, exp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[int, int]]]:
    """All shapes of a clip: head points [T, N, 3], body points [T, 12, 3], name -> point slice.

    The body (6 points of shoulders, then 6 of the neck) follows only the head's translation.
    """
    frames = len(exp)
    pts = deform(shape, exp)  # (T, 68, 3)
    static = lambda points: np.broadcast_to(points, (frames,) + np.shape(points))  # noqa: E731
    parts: dict[str, np.ndarray] = {}
    long_hair = speaker.long_hair
    back = _ellipse(np.array([0.0, -0.15 if long_hair else -0.2, -0.35]), 0.6 if long_hair else 0.56, 0.72, 24)
    if long_hair:
        back[back[:, 1] > -0.1, 1] = 0.95
    parts["hair_back"] = static(back)
    ear_x = 0.49 * shape[16, 0] / 0.47
    parts["ear_left"] = static(_ellipse(np.array([-ear_x, 0.02, -0.38]), 0.055, 0.12, 12))
    parts["ear_right"] = static(_ellipse(np.array([ear_x, 0.02, -0.38]), 0.055, 0.12, 12))
    parts["outline"] = np.concatenate([pts[:, :17], _forehead(pts, 15)[:, 1:-1]], 1)
    rigid = shape[[0, 4, 8, 12, 16, 27, 30, 36, 39, 42, 45]]
    parts["anchors"] = static(np.concatenate([rigid, _forehead(shape[None], 9)[0]]))
    parts.update(_wrinkles(pts))
    # the hair over the forehead: the top of the head down to a (speaker-specific) hairline
    top = _forehead(pts, 17)[:, 2:-2] * [1.08, 1.0, 1.0] - [0, 0.05, 0]
    half = 0.5 * (pts[:, 16, 0] - pts[:, 0, 0])[:, None]
    x = half * np.linspace(-1, 1, 15)[None]  # left to right: the top arc ran right to left
    centre = -FOREHEAD_HEIGHT + 0.12 * speaker.fringe
    y = centre + (pts[:, :1, 1] - 0.3 - centre) * np.abs(x / half) ** 2.5 + 0.012 * np.sin(x * 40)
    parts["hair_front"] = np.concatenate([top, _on_face(np.stack([x, y], -1), 0.02)], 1)
    gaze = np.concatenate([iris_offset(exp), np.zeros((frames, 1))], -1)  # (T, 3)
    for side, eye, brow in (("left", slice(36, 42), slice(17, 22)), ("right", slice(42, 48), slice(22, 27))):
        parts[f"eye_{side}"] = pts[:, eye]
        rest = shape[eye]
        centre = 0.5 * (rest[0] + rest[3]) + [0, 0, 0.01] + gaze  # (T, 3)
        radius = 0.3 * abs(rest[3, 0] - rest[0, 0])
        parts[f"iris_{side}"] = _ellipse(centre, radius, radius)
        parts[f"pupil_{side}"] = _ellipse(centre, 0.45 * radius, 0.45 * radius, 10)
        parts[f"glint_{side}"] = _ellipse(centre + [0.35 * radius, -0.35 * radius, 0], 0.18 * radius, 0.18 * radius, 8)
        parts[f"crease_{side}"] = pts[:, _UPPER_LID[side]] + [0, -0.022, 0]
        parts[f"lower_lid_{side}"] = pts[:, _LOWER_LID[side]]
        parts[f"upper_lid_{side}"] = pts[:, _UPPER_LID[side]]
        thick = (_BROW_THICKNESS if side == "left" else _BROW_THICKNESS[::-1])[None, :, None] * [0, 1, 0]
        lifted = pts[:, brow] + [0, 0, 0.01]
        parts[f"brow_{side}"] = np.concatenate([lifted - thick, (lifted + thick)[:, ::-1]], 1)
        sign = -1 if side == "left" else 1
        parts[f"nostril_{side}"] = _ellipse(pts[:, 33] + [sign * 0.04, -0.008, 0], 0.018, 0.009, 10)
        wing = pts[:, 31 if side == "left" else 35]
        parts[f"wing_{side}"] = wing[:, None] + np.array([[0, -0.04, -0.02], [0, 0, 0], [-sign * 0.03, 0.012, 0]])
    parts["lower_lip"] = pts[:, [54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64]]
    parts["upper_lip"] = pts[:, [48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60]]
    parts["inner_mouth"] = pts[:, 60:68]
    # upper teeth hang from the skull; the lower teeth and the tongue move with the jaw
    rest_top = 0.5 * (shape[61, 1] + shape[63, 1])
    curve = 0.6 * _TEETH_X**2
    z = pts[:, 62, 2:3] - 0.015  # (T, 1)
    row = lambda y: np.stack(np.broadcast_arrays(_TEETH_X[None], y, z), -1)  # noqa: E731
    upper = np.concatenate([row(rest_top - 0.01 + curve[None]), row(rest_top + 0.06 + curve[None])[:, ::-1]], 1)
    bottom = pts[:, 66, 1:2]
    lower = np.concatenate([row(bottom - 0.035 - curve), row(bottom + 0.01 - curve)[:, ::-1]], 1)
    lower[..., 0] += pts[:, 66:67, 0] - shape[66, 0]
    for name, teeth in (("upper_teeth", upper), ("lower_teeth", lower)):
        parts[name] = teeth
        parts[f"{name}_gaps"] = np.stack([teeth[:, 1:8], teeth[:, 16:9:-1]], 2).reshape(frames, 14, 3)
    jaw = np.maximum(exp[:, EXP_INDEX["jaw_open"]], 0)
    parts["tongue"] = _ellipse(pts[:, 66] + [0, -0.015, -0.025], 0.09, 0.03, 16) + np.einsum(
        "t,nc->tnc", 0.02 * jaw, np.concatenate([_CIRCLE * [0, 1], np.zeros((16, 1))], 1)
    )
    parts["lip_line"] = pts[:, 60:65]

    slices, start = {}, 0
    for name, points in parts.items():
        slices[name] = (start, start + points.shape[1])
        start += points.shape[1]
    head = np.concatenate([np.broadcast_to(p, (frames,) + p.shape[1:]) for p in parts.values()], 1)
    clothes = [[-1.3, 1.7, 0], [-1.05, 1.1, 0], [-0.35, 0.93, 0], [0.35, 0.93, 0], [1.05, 1.1, 0], [1.3, 1.7, 0]]
    neck = [
        [-0.24, 0.3, -0.3],
        [-0.25, 0.7, -0.3],
        [-0.26, 1.05, -0.3],
        [0.26, 1.05, -0.3],
        [0.25, 0.7, -0.3],
        [0.24, 0.3, -0.3],
    ]
    return head, static(np.array(clothes + neck, dtype=np.float64)), slices


@functools.lru_cache(maxsize=32)
def skin_image(speaker: SpeakerSpec, res: float) -> tuple[Image.Image, np.ndarray, float]:
    """A speaker's skin (colour x shading x seeded texture) at ``res`` pixels per face unit.

    Returns the image, the face coordinates of its top-left corner, and ``res``.
    """
    rng = np.random.default_rng(speaker.seed + 7)
    x0, y0, x1, y1 = _SKIN_BOX
    x, y = np.meshgrid(np.arange(x0, x1, 1 / res), np.arange(y0, y1, 1 / res))

    def bump(cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))

    radius = (x / 0.5) ** 2 + ((y + 0.1) / 0.85) ** 2
    shade = 1.0 - 0.2 * np.clip(radius, 0, 1.5) ** 2
    for side in (-1, 1):
        shade -= 0.1 * bump(side * 0.2, -0.2, 0.09, 0.05)  # eye sockets
        shade -= 0.06 * bump(side * 0.06, -0.05, 0.018, 0.09)  # sides of the nose
    shade += 0.07 * bump(0, -0.08, 0.022, 0.12) + 0.04 * bump(0, -0.55, 0.18, 0.1)  # bridge, forehead
    shade -= 0.06 * bump(0, 0.17, 0.06, 0.025) + 0.07 * bump(0, 0.5, 0.1, 0.04)  # under nose, under lip
    blotch = gaussian_filter(rng.standard_normal(x.shape), 0.04 * res)
    shade *= 1.0 + 0.018 * blotch / (blotch.std() + 1e-8) + 0.012 * rng.standard_normal(x.shape)
    for _ in range(int(rng.integers(0, 5))):  # moles and freckles
        shade -= 0.3 * bump(rng.uniform(-0.35, 0.35), rng.uniform(-0.5, 0.5), 0.008, 0.008)
    blush = sum(bump(side * 0.25, 0.12, 0.09, 0.07) for side in (-1, 1))
    rgb = np.asarray(speaker.skin, dtype=np.float64) * shade[..., None] + blush[..., None] * [10.0, -8.0, -6.0]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), np.array([x0, y0]), res
