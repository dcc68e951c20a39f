"""The SynthTalk face: a 68-point 3-D template (iBUG order), its expression deformations,
per-speaker geometry and the projection under a head pose.

Face coordinates: ``x`` to the image right, ``y`` down, ``z`` towards the camera; the face is
about one unit wide (jaw corners at ``x = +-0.47``), the mouth centre at ``y = 0.33``.
"""

from __future__ import annotations

import functools

import numpy as np

from flowvq.data.synth.motion import EXP_INDEX, EXP_NAMES

__all__ = [
    "BLINK_PAIRS",
    "TEMPLATE",
    "camera",
    "deform",
    "eye_closure",
    "face_depth",
    "gaze_field",
    "iris_offset",
    "keep_in_frame",
    "project",
    "rotation",
    "speaker_shape",
]

# iBUG-68 groups (image-left first, as in the iBUG annotation of a frontal face)
JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
NOSE = np.arange(27, 36)
EYE_LEFT = np.arange(36, 42)  # image left
EYE_RIGHT = np.arange(42, 48)
OUTER_LIP = np.arange(48, 60)
INNER_LIP = np.arange(60, 68)
UPPER_LIDS = np.array([37, 38, 43, 44])
LOWER_LIDS = np.array([41, 40, 47, 46])  # below 37, 38, 43, 44
#: Upper-lid point -> the lower-lid point it meets when the eye closes.
BLINK_PAIRS = tuple(zip(UPPER_LIDS.tolist(), LOWER_LIDS.tolist()))


def face_depth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth of the face surface (an ellipsoid cap): 0 at the centre, negative towards the edges."""
    inside = 1.0 - (np.asarray(x) / 0.54) ** 2 - ((np.asarray(y) + 0.05) / 0.95) ** 2
    return 0.42 * np.sqrt(np.clip(inside, 0.0, 1.0)) - 0.42


def _template() -> np.ndarray:
    points = np.zeros((68, 3))
    theta = np.linspace(np.pi, 0.0, 17)
    cos, sin = np.cos(theta), np.sin(theta)
    points[JAW, 0] = 0.47 * np.sign(cos) * np.abs(cos) ** 0.85
    points[JAW, 1] = -0.12 + 0.78 * np.abs(sin) ** 0.95
    brow_x = np.array([-0.38, -0.31, -0.23, -0.15, -0.07])
    brow_y = np.array([-0.295, -0.335, -0.35, -0.345, -0.325])
    points[17:22, :2] = np.stack([brow_x, brow_y], 1)
    points[22:27, :2] = np.stack([-brow_x[::-1], brow_y[::-1]], 1)
    points[27:31, :2] = [[0, -0.22], [0, -0.14], [0, -0.06], [0, 0.03]]
    points[31:36, :2] = [[-0.085, 0.095], [-0.045, 0.11], [0, 0.12], [0.045, 0.11], [0.085, 0.095]]
    eye = np.array(
        [[-0.30, -0.185], [-0.24, -0.228], [-0.16, -0.228], [-0.10, -0.18], [-0.16, -0.146], [-0.24, -0.146]]
    )
    points[36:42, :2] = eye
    # the right eye mirrors the left, starting at its inner corner (iBUG order runs clockwise)
    points[42:48, :2] = eye[[3, 2, 1, 0, 5, 4]] * [-1, 1]
    points[48:60, :2] = [
        [-0.19, 0.33], [-0.12, 0.297], [-0.05, 0.282], [0, 0.288], [0.05, 0.282], [0.12, 0.297],
        [0.19, 0.33], [0.12, 0.375], [0.06, 0.397], [0, 0.402], [-0.06, 0.397], [-0.12, 0.375],
    ]  # fmt: skip
    points[60:68, :2] = [
        [-0.165, 0.33], [-0.06, 0.327], [0, 0.328], [0.06, 0.327],
        [0.165, 0.33], [0.06, 0.333], [0, 0.334], [-0.06, 0.333],
    ]  # fmt: skip
    points[:, 2] = face_depth(points[:, 0], points[:, 1])
    points[27:31, 2] += [0.05, 0.09, 0.14, 0.2]  # nose bridge to tip
    points[31:36, 2] += [0.05, 0.08, 0.11, 0.08, 0.05]
    points[48:68, 2] += 0.03
    points[36:48, 2] -= 0.02  # eye sockets
    return points


#: The mean face, [68, 3].
TEMPLATE: np.ndarray = _template()


def _basis() -> np.ndarray:
    """Displacement of each landmark per unit of each linear expression dim, [E, 68, 3]."""
    d = np.zeros((len(EXP_NAMES), 68, 3))
    t = TEMPLATE
    side = np.sign(t[:, 0])  # -1 image left, +1 image right
    chin_weight = np.sin(np.linspace(0, np.pi, 17)) ** 2

    e = d[EXP_INDEX["jaw_open"]]
    e[JAW, 1] = 0.14 * chin_weight
    e[[65, 66, 67], 1] = [0.13, 0.14, 0.13]
    e[[55, 56, 57, 58, 59], 1] = [0.1, 0.135, 0.145, 0.135, 0.1]
    e[[60, 64], 1] = 0.035
    e[[60, 64], 0] = -0.015 * side[[60, 64]]
    e[[49, 50, 51, 52, 53, 61, 62, 63], 1] = -0.012
    e[[48, 54], 1] = 0.03

    e = d[EXP_INDEX["lip_stretch"]]
    e[OUTER_LIP, 0] = 0.3 * t[OUTER_LIP, 0]
    e[INNER_LIP, 0] = 0.3 * t[INNER_LIP, 0]
    e[[49, 50, 51, 52, 53], 1] = 0.01
    e[[55, 56, 57, 58, 59], 1] = -0.012

    e = d[EXP_INDEX["lip_pucker"]]
    e[OUTER_LIP, 0] = -0.35 * t[OUTER_LIP, 0]
    e[INNER_LIP, 0] = -0.4 * t[INNER_LIP, 0]
    e[48:68, 2] = 0.06
    e[[49, 50, 51, 52, 53], 1] = -0.012
    e[[55, 56, 57, 58, 59], 1] = 0.015

    e = d[EXP_INDEX["smile"]]
    for corner in (48, 54, 60, 64):
        e[corner] = [0.04 * side[corner], -0.055, 0.0]
    e[[49, 53, 59, 55], 1] = [-0.03, -0.03, -0.02, -0.02]
    e[[49, 53, 59, 55], 0] = 0.02 * side[[49, 53, 59, 55]]
    e[[41, 40, 47, 46], 1] = -0.01
    e[[2, 3, 4, 12, 13, 14], 0] = 0.012 * side[[2, 3, 4, 12, 13, 14]]

    e = d[EXP_INDEX["frown"]]
    e[[48, 54, 60, 64], 1] = 0.045
    e[[48, 54, 60, 64], 0] = -0.01 * side[[48, 54, 60, 64]]
    e[[49, 53, 55, 59], 1] = 0.018
    e[[56, 57, 58], 1] = -0.008
    e[[19, 20, 23, 24], 1] = -0.02  # inner brows rise a little (the sad brow)

    e = d[EXP_INDEX["brow_raise"]]
    e[BROWS, 1] = -0.075
    e[[37, 38, 43, 44], 1] = -0.012

    e = d[EXP_INDEX["brow_lower"]]
    e[BROWS, 1] = 0.045
    e[[20, 21, 22, 23], 1] += 0.025
    e[[20, 21, 22, 23], 0] = -0.03 * side[[20, 21, 22, 23]]
    e[[37, 38, 43, 44], 1] = 0.01

    e = d[EXP_INDEX["eye_wide"]]
    e[[37, 38, 43, 44], 1] = -0.028
    e[[40, 41, 46, 47], 1] = 0.012

    e = d[EXP_INDEX["squint"]]
    e[[37, 38, 43, 44], 1] = 0.014
    e[[40, 41, 46, 47], 1] = -0.02

    e = d[EXP_INDEX["nose_wrinkle"]]
    e[31:36, 1] = -0.022
    e[30, 1] = -0.01
    e[[49, 50, 51, 52, 53], 1] = -0.022
    e[[20, 21, 22, 23], 1] = 0.02

    e = d[EXP_INDEX["lip_asym"]]  # a one-sided smirk (the subject's left, image right)
    e[[54, 64], 0] = 0.025
    e[[54, 64], 1] = -0.045
    e[[53, 55, 63, 65], 1] = -0.018

    e = d[EXP_INDEX["cheek_raise"]]
    e[[40, 41, 46, 47], 1] = -0.014
    e[[48, 54, 60, 64], 1] = -0.015
    e[[1, 2, 3, 13, 14, 15], 1] = -0.012

    e = d[EXP_INDEX["jaw_side"]]
    e[JAW, 0] = 0.045 * chin_weight
    e[[55, 56, 57, 58, 59, 65, 66, 67], 0] = 0.04
    return d


BASIS: np.ndarray = _basis()
_NONLINEAR = [EXP_INDEX[name] for name in ("blink", "gaze_x", "gaze_y")]


def deform(shape: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """Landmarks of ``shape`` [68, 3] under expressions ``exp`` [..., E] -> [..., 68, 3].

    Linear dims add their displacement; a blink moves each upper lid towards its lower lid;
    gaze moves only the iris (drawn by the renderer), never a landmark.
    """
    exp = np.asarray(exp, dtype=np.float64)
    linear = exp.copy()
    linear[..., _NONLINEAR] = 0.0
    points = shape + np.einsum("...e,ekc->...kc", linear, BASIS)
    closed = np.clip(exp[..., EXP_INDEX["blink"]], 0.0, 1.0)[..., None] * 0.97
    upper, lower = list(UPPER_LIDS), list(LOWER_LIDS)
    points[..., upper, :] += closed[..., None] * (points[..., lower, :] - points[..., upper, :])
    return points


#: Face units the iris moves per unit of the ``gaze_x`` / ``gaze_y`` expression dims (x right,
#: y down), and where it rests below the midpoint of the eye corners.
GAZE_SCALE = np.array([0.018, 0.01])
IRIS_REST = np.array([0.0, 0.004])


def iris_offset(exp: np.ndarray) -> np.ndarray:
    """Iris centre ``[..., 2]`` from the midpoint of the eye corners, in face units (x right, y down)."""
    exp = np.asarray(exp, dtype=np.float64)
    return exp[..., [EXP_INDEX["gaze_x"], EXP_INDEX["gaze_y"]]] * GAZE_SCALE + IRIS_REST


def gaze_field(shape: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """The record's ``gaze`` ``[T, 2]`` (see :mod:`flowvq.data.schema`: the iris offset in half eye
    widths, x right, y up) of a speaker's ``shape`` [68, 3] under ``exp`` [T, E].

    The renderer draws the iris at :func:`iris_offset` from the midpoint of each eye's corners
    (iBUG 36/39 and 42/45), so this is what a tracker measures on a frontal frame.
    """
    half_width = 0.25 * (np.linalg.norm(shape[39, :2] - shape[36, :2]) + np.linalg.norm(shape[45, :2] - shape[42, :2]))
    return (iris_offset(exp) * [1.0, -1.0] / half_width).astype(np.float32)


def eye_closure(exp: np.ndarray) -> np.ndarray:
    """The record's ``blink`` ``[T]``: eyelid closure 0 (open) .. 1 (closed), from the blink dim."""
    return np.clip(np.asarray(exp)[..., EXP_INDEX["blink"]], 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=256)
def speaker_shape(seed: int) -> np.ndarray:
    """A speaker's own face geometry: the template with seeded proportions and detail, [68, 3]."""
    rng = np.random.default_rng(seed)
    p = TEMPLATE.copy()
    p[:, 0] *= rng.uniform(0.92, 1.08)  # face width
    p[:, 1] *= rng.uniform(0.95, 1.06)  # face length
    p[JAW[3:14], 0] *= rng.uniform(0.88, 1.06)  # jaw width
    p[JAW[5:12], 1] += rng.uniform(-0.03, 0.03)  # chin length
    spacing = rng.uniform(-0.02, 0.02)
    eye_size = rng.uniform(0.85, 1.15)
    for eye, sign in ((EYE_LEFT, -1), (EYE_RIGHT, 1)):
        centre = p[eye].mean(0)
        p[eye] = centre + (p[eye] - centre) * eye_size
        p[eye, 0] += sign * spacing
    p[BROWS, 1] += rng.uniform(-0.025, 0.02)
    p[NOSE[3:], 1] += rng.uniform(-0.02, 0.03)  # nose length
    p[NOSE[4:], 0] *= rng.uniform(0.85, 1.2)  # nose width
    mouth = np.arange(48, 68)
    centre = p[mouth].mean(0)
    p[mouth, 0] = centre[0] + (p[mouth, 0] - centre[0]) * rng.uniform(0.88, 1.12)
    thickness = rng.uniform(0.8, 1.3)
    p[49:54, 1] = p[62, 1] + (p[49:54, 1] - p[62, 1]) * thickness
    p[55:60, 1] = p[66, 1] + (p[55:60, 1] - p[66, 1]) * thickness
    p[:, :2] += rng.normal(0.0, 0.004, size=(68, 2))
    return p


def rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] = roll (about z) @ pitch (about x) @ yaw (about y)."""
    yaw, pitch, roll = (np.asarray(a, dtype=np.float64) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    zero, one = np.zeros_like(yaw), np.ones_like(yaw)
    ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return rz @ rx @ ry


#: Face units to crop fractions at pose scale 1, and the crop position of the face origin.
FACE_SCALE = 0.5
FACE_CENTRE = (0.5, 0.5)
#: Camera distance in face units (a mild perspective).
CAMERA_DISTANCE = 6.0


def project(points: np.ndarray, pose: np.ndarray, size: float) -> np.ndarray:
    """Crop-pixel coordinates [..., N, 2] of face points [..., N, 3] under pose [..., 6].

    Pose: yaw, pitch, roll (radians), tx, ty (fractions of the crop), scale (1 = nominal);
    pitch > 0 lifts the chin, yaw > 0 turns the nose towards the image right.
    """
    pose = np.asarray(pose, dtype=np.float64)
    rot = rotation(pose[..., 0], pose[..., 1], pose[..., 2])  # (..., 3, 3)
    cam = np.einsum("...ij,...nj->...ni", rot, points)  # (..., N, 3)
    perspective = CAMERA_DISTANCE / (CAMERA_DISTANCE - cam[..., 2:3])
    scale = FACE_SCALE * pose[..., 5, None, None] * perspective
    offset = np.stack([FACE_CENTRE[0] + pose[..., 3], FACE_CENTRE[1] + pose[..., 4]], -1)[..., None, :]
    return size * (offset + scale * cam[..., :2])


def camera(pose: np.ndarray, size: float):
    """A fast projector for one pose: ``points [N, 3] -> [N, 2]`` crop pixels (as :func:`project`)."""
    pose = np.asarray(pose, dtype=np.float64)
    rot = rotation(pose[0], pose[1], pose[2]).T  # (3, 3), applied on the right
    offset = size * np.array([FACE_CENTRE[0] + pose[3], FACE_CENTRE[1] + pose[4]])
    scale = size * FACE_SCALE * pose[5]

    def apply(points: np.ndarray) -> np.ndarray:
        cam = np.asarray(points, dtype=np.float64) @ rot  # (N, 3)
        return offset + (scale * CAMERA_DISTANCE / (CAMERA_DISTANCE - cam[:, 2:3])) * cam[:, :2]

    return apply


def keep_in_frame(shape: np.ndarray, exp: np.ndarray, pose: np.ndarray, margin: float = 0.02) -> np.ndarray:
    """The pose [T, 6] with its scale reduced where the 68 landmarks would leave the crop.

    Like a face tracker's crop, the framing keeps the whole face inside, with ``margin``
    (a fraction of the crop) to spare; frames already inside are unchanged.
    """
    pose = np.asarray(pose, dtype=np.float64).copy()
    pose[:, 3:5] = np.clip(pose[:, 3:5], -0.25, 0.25)
    offset = np.stack([FACE_CENTRE[0] + pose[:, 3], FACE_CENTRE[1] + pose[:, 4]], -1)[:, None, :]  # (T, 1, 2)
    spread = project(deform(shape, exp), pose, 1.0) - offset  # (T, 68, 2): scale x camera coordinates
    room = np.where(spread > 0, 1.0 - margin - offset, margin - offset)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.abs(spread) > 1e-9, room / spread, np.inf)
    pose[:, 5] *= np.clip(ratio.min(axis=(1, 2)), 0.0, 1.0)
    return pose.astype(np.float32)
