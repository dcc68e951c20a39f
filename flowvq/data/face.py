"""Face landmarks (mediapipe FaceMesh), the iBUG-68 subset, FFHQ-style crops, Procrustes pose, PCA expression.

The ``mediapipe-pca`` coefficient source of the data contract:

- :class:`FaceTracker` runs FaceMesh on a clip (tracking mode: each frame starts from the
  previous frame's face) and returns 478 (or 468 without iris refinement) 3-D landmarks per
  frame in pixels, NaN where no face was found; :func:`fill_gaps` interpolates short gaps and
  rejects clips with long ones.
- :func:`crop_transforms` computes an FFHQ-style quad from the eyes and the mouth corners
  (centre a little below the eyes, side from the eye distance and the eye-to-mouth
  distance, rotated with the eye line), smooths it over time, and gives the similarity
  that maps frame pixels to crop pixels.
- :func:`procrustes` fits each frame's landmarks to a mean shape by a similarity
  (Umeyama), giving yaw, pitch, roll (radians), tx, ty, scale (:func:`pose_from_landmarks`),
  and the pose-normalised shape whose deviation from the speaker's neutral mean shape is the
  input of the PCA expression basis (:class:`ExpressionBasis`).

Coordinates are x right, y down, z away from the camera (mediapipe's; right-handed), and
``R = Rz(roll) Ry(yaw) Rx(pitch)``: positive roll turns the face clockwise in the image,
positive yaw turns the nose towards image left, positive pitch turns it down.

The 478 -> iBUG-68 mapping (:data:`IBUG68_FROM_FACEMESH`) is derived from FaceMesh's own
contour lists (``mp.solutions.face_mesh_connections``) on a near-frontal reference face by
:func:`derive_ibug68_indices`, rule by rule (see there); the test suite re-derives it from
a detection on scikit-image's astronaut photograph and compares it with the table.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import linear_sum_assignment

__all__ = [
    "IBUG68_FROM_FACEMESH",
    "ExpressionBasis",
    "FaceTracker",
    "GapError",
    "crop_transforms",
    "derive_ibug68_indices",
    "euler_from_rotation",
    "ffhq_quads",
    "fill_gaps",
    "mean_shape",
    "normalise_to_crop",
    "pose_from_landmarks",
    "procrustes",
    "rotation_from_euler",
    "to_ibug68",
    "transform_points",
    "warp_crop",
]

#: FaceMesh vertex index of each iBUG-68 landmark (jaw 0-16, brows 17-26, nose 27-35,
#: eyes 36-47, outer lips 48-59, inner lips 60-67), as derived by :func:`derive_ibug68_indices`.
IBUG68_FROM_FACEMESH: tuple[int, ...] = (
    # jaw, image left (subject's right) to image right
    127, 234, 132, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 361, 454, 356,
    # brows, each from its left end to its right end
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge (top to tip), nostril base (left to right)
    168, 197, 195, 4, 98, 97, 2, 326, 327,
    # eyes: left corner, upper lid, right corner, lower lid
    33, 159, 157, 133, 153, 144, 362, 384, 386, 263, 373, 380,
    # outer lips: left corner, upper lip, right corner, lower lip
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,
    # inner lips
    78, 81, 13, 311, 308, 402, 14, 178,
)  # fmt: skip


class GapError(ValueError):
    """A clip whose face track has a gap too long to interpolate (or no face at all)."""


# ----------------------------------------------------------------------------- tracking


class FaceTracker:
    """mediapipe FaceMesh over the frames of one clip.

    Arguments:
        refine_landmarks: add the 10 iris landmarks (478 instead of 468).
        static_image_mode: detect on every frame instead of tracking (slower; for photos).
        min_detection_confidence, min_tracking_confidence: FaceMesh thresholds.

    Use one tracker per clip (tracking state carries over between frames), as a context
    manager so mediapipe's graph is closed.
    """

    def __init__(
        self,
        refine_landmarks: bool = True,
        static_image_mode: bool = False,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        import mediapipe as mp  # heavy import, only where landmarks are computed

        self.num_landmarks = 478 if refine_landmarks else 468
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static_image_mode,
            max_num_faces=1,
            refine_landmarks=refine_landmarks,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._mesh.close()

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Landmarks of one RGB uint8 frame, float32 ``(N, 3)`` in pixels (z scaled like x); NaN if no face."""
        height, width = frame.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(frame))
        if not result.multi_face_landmarks:
            return np.full((self.num_landmarks, 3), np.nan, dtype=np.float32)
        points = result.multi_face_landmarks[0].landmark
        out = np.array([(p.x, p.y, p.z) for p in points], dtype=np.float32)  # (N, 3) normalised
        out *= np.array([width, height, width], dtype=np.float32)
        return out

    def track(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """Landmarks of every frame, float32 ``(T, N, 3)``, NaN rows where no face was found."""
        return np.stack([self(frame) for frame in frames])


def fill_gaps(landmarks: np.ndarray, max_gap: int = 5) -> np.ndarray:
    """Interpolate runs of missing frames (NaN) of at most ``max_gap`` frames.

    Interior gaps are interpolated linearly, gaps at the start or end take the nearest
    detected frame.

    Raises:
        GapError: if no frame has a face or a gap is longer than ``max_gap`` (naming it).
    """
    landmarks = np.array(landmarks, dtype=np.float32, copy=True)
    missing = np.isnan(landmarks).reshape(len(landmarks), -1).any(1)  # (T,)
    if missing.all():
        raise GapError(f"no face detected in any of the {len(landmarks)} frames")
    if not missing.any():
        return landmarks
    # runs of missing frames
    edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int(np.argmax(ends - starts))
    if ends[longest] - starts[longest] > max_gap:
        raise GapError(
            f"no face in frames {starts[longest]}..{ends[longest] - 1} ({ends[longest] - starts[longest]} frames, "
            f"more than max_gap={max_gap}); the face leaves the picture or is occluded"
        )
    valid = np.flatnonzero(~missing)
    flat = landmarks.reshape(len(landmarks), -1)
    gaps = np.flatnonzero(missing)
    for column in range(flat.shape[1]):
        flat[gaps, column] = np.interp(gaps, valid, flat[valid, column])  # edges: nearest value
    return landmarks


# ----------------------------------------------------------------------------- iBUG-68


def _order_chains(edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Vertex sequences of a contour given as undirected edges (chains and loops; loops closed)."""
    neighbours: dict[int, list[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    seen: set[int] = set()
    chains = []
    # start chains at their ends (degree 1) first, loops anywhere
    for start in sorted(neighbours, key=lambda v: (len(neighbours[v]) != 1, v)):
        if start in seen:
            continue
        chain = [start]
        seen.add(start)
        while True:
            nxt = [v for v in neighbours[chain[-1]] if v not in seen]
            if not nxt:
                break
            chain.append(nxt[0])
            seen.add(nxt[0])
        if len(chain) > 2 and chain[0] in neighbours[chain[-1]]:
            chain.append(chain[0])  # a loop
        chains.append(chain)
    return chains


def _path(edges: Iterable[tuple[int, int]], start: int, goal: int, cost) -> list[int]:
    """Cheapest vertex path from ``start`` to ``goal`` (Dijkstra), ``cost(v)`` paid on entering ``v``."""
    neighbours: dict[int, list[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    best = {start: 0.0}
    previous: dict[int, int] = {}
    queue = [(0.0, start)]
    while queue:
        d, v = heapq.heappop(queue)
        if v == goal:
            break
        if d > best[v]:
            continue
        for w in neighbours[v]:
            nd = d + cost(w)
            if nd < best.get(w, np.inf):
                best[w], previous[w] = nd, v
                heapq.heappush(queue, (nd, w))
    path = [goal]
    while path[-1] != start:
        path.append(previous[path[-1]])
    return path[::-1]


def _arc_between(loop: list[int], a: int, b: int) -> tuple[list[int], list[int]]:
    """The two arcs of a closed loop from vertex ``a`` to vertex ``b``."""
    ring = loop[:-1]
    i, j = ring.index(a), ring.index(b)
    forward = [ring[(i + k) % len(ring)] for k in range((j - i) % len(ring) + 1)]
    backward = [ring[(i - k) % len(ring)] for k in range((i - j) % len(ring) + 1)]
    return forward, backward


def _pick_on_arc(points: np.ndarray, arc: Sequence[int], fractions: Sequence[float]) -> list[int]:
    """Distinct arc vertices nearest (by arc length) to the given fractions of the arc's length."""
    xy = points[list(arc), :2]
    length = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    target = np.asarray(fractions) * length[-1]
    cost = np.abs(length[None, :] - target[:, None])  # (targets, vertices)
    rows, cols = linear_sum_assignment(cost)
    chosen = dict(zip(rows, cols))
    return [int(arc[chosen[r]]) for r in range(len(fractions))]


def _frontalise(points: np.ndarray, midline: list[int]) -> np.ndarray:
    """Rotate a 3-D face so that the plane of its nose midline is the y-z plane (x = 0)."""
    symmetric = points[midline]
    centre = symmetric.mean(0)
    _, _, vt = np.linalg.svd(symmetric - centre)
    normal = vt[2] * np.sign(vt[2][0])  # (3,) towards +x
    axis = np.cross(normal, [1.0, 0.0, 0.0])
    sin, cos = np.linalg.norm(axis), normal[0]
    if sin < 1e-9:
        return points - centre
    k = axis / sin
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rotation = np.eye(3) + sin * skew + (1 - cos) * skew @ skew  # Rodrigues: normal -> x
    return (points - centre) @ rotation.T


def derive_ibug68_indices(reference: np.ndarray) -> tuple[int, ...]:
    """Derive the FaceMesh vertex for each iBUG-68 landmark from FaceMesh's contour lists.

    The reference is any near-frontal FaceMesh detection ``(N >= 468, 3)`` in pixels. It is
    levelled (eye centres on a horizontal line), turned to face the camera (the plane of the
    nose midline becomes the y-z plane) and its contours are made exactly left-right
    symmetric: the contour lists pair up by topology (the k-th vertex from the top of the
    oval going left with the k-th going right, the k-th vertex of one eye's upper lid from
    its outer corner with the other eye's, and so on), and each vertex is averaged with its
    partner's mirror image. Landmarks are then picked on the image-left half and mirrored,
    so the mapping is symmetric by construction. Rules, in iBUG order:

    - jaw 0-16: the face-oval arc from the vertex at the height of the outer eye corner,
      down through the chin (lowest oval vertex) and up again; 17 vertices evenly spaced by
      arc length.
    - brows 17-26: the upper chain of each eyebrow contour, five vertices evenly spaced.
    - nose bridge 27-30: the nose midline from the vertex at the height of the upper eyelids
      to the tip (the most protruding vertex, smallest z); four vertices evenly spaced.
    - nostril base 31-35: five consecutive vertices of the nose outline loop centred on its
      lowest vertex, left to right.
    - eyes 36-47: each eye loop's corners and the vertices at 1/3 and 2/3 of the upper and
      lower lids (clockwise in the image from the left corner).
    - lips 48-67: outer loop corners and the vertices at 1/6..5/6 of the upper and lower
      arcs; inner loop corners and the vertices at 1/4, 1/2, 3/4.

    "Evenly spaced" picks distinct vertices nearest to the target arc lengths.
    """
    from mediapipe.python.solutions import face_mesh_connections as contours

    points = np.asarray(reference, dtype=np.float64)[:, :3].copy()
    # level the eyes first, so that "top" and "lowest" below mean what they say
    eye_loops = [_order_chains(contours.FACEMESH_LEFT_EYE)[0][:-1], _order_chains(contours.FACEMESH_RIGHT_EYE)[0][:-1]]
    centres = sorted((points[loop, :2].mean(0) for loop in eye_loops), key=lambda c: c[0])
    angle = np.arctan2(*(centres[1] - centres[0])[::-1])
    c, s = np.cos(angle), np.sin(angle)
    points[:, :2] = points[:, :2] @ np.array([[c, -s], [s, c]])

    def rotate_to(ring: list[int], start: int) -> list[int]:
        i = ring.index(start)
        return ring[i:] + ring[:i]

    # --- contours as ordered vertex lists
    nose_edges = {tuple(sorted(e)) for e in contours.FACEMESH_NOSE}
    nose_vertices = sorted({v for e in nose_edges for v in e})
    top = min(nose_vertices, key=lambda v: points[v, 1])
    bottom = max(nose_vertices, key=lambda v: points[v, 1])
    # the nose contour is a midline plus an outline loop sharing two vertices with it: the
    # midline is the path from its top to its lowest vertex that stays nearest the middle
    midline = _path(nose_edges, top, bottom, lambda v: abs(points[v, 0] - points[top, 0]) + 1e-3)
    on_midline = {tuple(sorted(pair)) for pair in zip(midline[:-1], midline[1:])}
    nose_loop = next(chain for chain in _order_chains(nose_edges - on_midline) if chain[0] == chain[-1])[:-1]
    points = _frontalise(points, midline)
    oval = _order_chains(contours.FACEMESH_FACE_OVAL)[0][:-1]
    # the top of the oval: the vertex above the nose nearest the midline plane
    oval = rotate_to(oval, min((v for v in oval if points[v, 1] < points[top, 1]), key=lambda v: abs(points[v, 0])))

    def left_first(pair: list) -> list:
        return sorted(pair, key=lambda item: points[np.ravel(item)[0] if np.ndim(item) else item, 0].mean())

    eyes = left_first(
        [_order_chains(contours.FACEMESH_LEFT_EYE)[0][:-1], _order_chains(contours.FACEMESH_RIGHT_EYE)[0][:-1]]
    )
    brows = left_first([_order_chains(contours.FACEMESH_LEFT_EYEBROW), _order_chains(contours.FACEMESH_RIGHT_EYEBROW)])
    lips = sorted((chain[:-1] for chain in _order_chains(contours.FACEMESH_LIPS)), key=lambda r: -np.ptp(points[r, 0]))

    def lids(ring: list[int], first: int) -> tuple[list[int], list[int]]:
        """Upper and lower arcs of a loop, both from corner ``first`` to the other corner."""
        xs = points[ring, 0]
        other = ring[int(np.argmax(xs))] if first == ring[int(np.argmin(xs))] else ring[int(np.argmin(xs))]
        forward, backward = _arc_between(ring + [ring[0]], first, other)
        return tuple(sorted((forward, backward), key=lambda arc: points[arc[1:-1], 1].mean()))  # type: ignore[return-value]

    def outer_corner(ring: list[int], side: int) -> int:
        xs = points[ring, 0]
        return ring[int(np.argmin(xs))] if side == 0 else ring[int(np.argmax(xs))]

    # --- mirror pairs by topology
    mirror: dict[int, int] = {v: v for v in midline}

    def pair_sequences(a: Sequence[int], b: Sequence[int]) -> None:
        if len(a) != len(b):
            raise ValueError("FaceMesh contours are not left-right symmetric in this mediapipe version")
        for u, w in zip(a, b):
            mirror[u], mirror[w] = w, u

    def pair_loop_about(ring: list[int], centre: int) -> None:
        ring = rotate_to(ring, centre)
        pair_sequences(ring[1 : len(ring) // 2 + 1], ring[::-1][: len(ring) // 2])

    pair_loop_about(oval, oval[0])
    chin = oval[len(oval) // 2]  # the bottom vertex of the oval, its own mirror image
    pair_loop_about(nose_loop, max(nose_loop, key=lambda v: points[v, 1]))
    eye_arcs = [lids(eye, outer_corner(eye, side)) for side, eye in enumerate(eyes)]
    for k in range(2):
        pair_sequences(eye_arcs[0][k], eye_arcs[1][k])
    brow_chains = []
    for side, chains in enumerate(brows):
        ordered = []
        for chain in sorted(chains, key=lambda c: points[c, 1].mean()):  # upper chain first
            lateral = (
                points[chain[0], 0] > points[chain[-1], 0] if side == 1 else points[chain[0], 0] < points[chain[-1], 0]
            )
            ordered.append(chain if lateral else chain[::-1])  # from the outer end
        brow_chains.append(ordered)
    for k in range(2):
        pair_sequences(brow_chains[0][k], brow_chains[1][k])
    lip_arcs = []
    for ring in lips:
        upper, lower = lids(ring, outer_corner(ring, 0))
        pair_sequences(upper, upper[::-1])
        pair_sequences(lower, lower[::-1])
        lip_arcs.append((upper, lower))

    # --- symmetrise the contour vertices: average with the partner's mirror image
    flip = np.array([-1.0, 1.0, 1.0])
    symmetric = points.copy()
    for v, w in mirror.items():
        symmetric[v] = (points[v] + points[w] * flip) / 2
    points = symmetric

    def picks(arc: Sequence[int], fractions: Sequence[float]) -> list[int]:
        return _pick_on_arc(points, arc, fractions)

    def mirrored(vertices: Sequence[int]) -> list[int]:
        return [mirror[v] for v in vertices]

    # --- picks on the image-left half, mirrored to the right
    left_eye, right_eye = eyes
    eye_top = picks(eye_arcs[0][0], [1 / 3, 2 / 3]) + picks(eye_arcs[1][0], [1 / 3, 2 / 3])
    lid_height = points[eye_top, 1].mean()
    corner = outer_corner(left_eye, 0)
    left_side = [v for v in oval if points[v, 0] < 0]
    start = min(left_side, key=lambda v: abs(points[v, 1] - points[corner, 1]))
    jaw_half = next(
        arc for arc in _arc_between(oval + [oval[0]], start, chin) if all(points[v, 0] <= 1e-9 for v in arc)
    )
    jaw_left = picks(jaw_half, np.linspace(0, 1, 9))  # ends at the chin
    jaw = jaw_left + mirrored(jaw_left[:-1])[::-1]

    brow_left = picks(brow_chains[0][0], np.linspace(0, 1, 5))  # outer -> inner
    brow = brow_left + mirrored(brow_left)[::-1]

    tip_at = int(np.argmin(points[midline, 2]))
    top_at = int(np.argmin(np.abs(points[midline[: tip_at + 1], 1] - lid_height)))
    bridge = picks(midline[top_at : tip_at + 1], np.linspace(0, 1, 4))
    ring = rotate_to(nose_loop, max(nose_loop, key=lambda v: points[v, 1]))
    base = sorted([ring[-2], ring[-1], ring[0], ring[1], ring[2]], key=lambda v: points[v, 0])

    upper, lower = eye_arcs[0]  # outer (left) corner -> inner corner
    eye_left = [upper[0], *picks(upper, [1 / 3, 2 / 3]), upper[-1], *picks(lower, [2 / 3, 1 / 3])]
    # the right eye in iBUG order (left corner = inner) is the mirror image read the same way round
    a, u1, u2, b, l2, l1 = mirrored(eye_left)
    eye_right = [b, u2, u1, a, l1, l2]

    def lip_ring(arcs: tuple[list[int], list[int]], inner: int) -> list[int]:
        upper, lower = arcs  # left corner -> right corner
        half = np.linspace(0, 1, inner + 2)[1:-1]  # fractions of the left half, centre excluded
        centre_up, centre_low = upper[len(upper) // 2], lower[len(lower) // 2]
        up = picks(upper[: len(upper) // 2 + 1], half)
        low = picks(lower[: len(lower) // 2 + 1], half)
        return [upper[0], *up, centre_up, *mirrored(up)[::-1], upper[-1], *mirrored(low), centre_low, *low[::-1]]

    mouth_outer = lip_ring(lip_arcs[0], 2)
    mouth_inner = lip_ring(lip_arcs[1], 1)
    index = jaw + brow + bridge + base + eye_left + eye_right + mouth_outer + mouth_inner
    return tuple(int(v) for v in index)


def to_ibug68(landmarks: np.ndarray) -> np.ndarray:
    """The iBUG-68 subset of FaceMesh landmarks ``(..., N, D)`` -> ``(..., 68, D)``."""
    return landmarks[..., list(IBUG68_FROM_FACEMESH), :]


# ----------------------------------------------------------------------------- crops


def ffhq_quads(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FFHQ-style crop square per frame from the eyes and mouth corners.

    Arguments:
        landmarks: FaceMesh landmarks ``(T, N, >=2)`` in pixels.

    Returns:
        centre ``(T, 2)`` and half-side vector ``x`` ``(T, 2)`` (along the crop's x axis);
        the crop's y axis is ``x`` turned by +90 degrees (downwards in the image).
    """
    ibug = to_ibug68(landmarks[..., :2].astype(np.float64))  # (T, 68, 2)
    eye_left, eye_right = ibug[:, 36:42].mean(1), ibug[:, 42:48].mean(1)
    mouth = (ibug[:, 48] + ibug[:, 54]) / 2
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth - eye_avg
    # the x axis: the eye line averaged with the eye-to-mouth direction turned by -90 degrees
    # (which points along the eye line of an upright face), so that both set the face's roll
    x = eye_to_eye + np.stack([eye_to_mouth[:, 1], -eye_to_mouth[:, 0]], axis=1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    half = np.maximum(np.linalg.norm(eye_to_eye, axis=1) * 2.0, np.linalg.norm(eye_to_mouth, axis=1) * 1.8)
    centre = eye_avg + eye_to_mouth * 0.1
    return centre, x * half[:, None]


def crop_transforms(landmarks: np.ndarray, size: int = 256, smoothing: float | None = 12.5) -> np.ndarray:
    """Similarities mapping frame pixels to crop pixels, one ``(2, 3)`` matrix per frame.

    Arguments:
        landmarks: FaceMesh landmarks ``(T, N, >=2)`` in pixels, gaps filled.
        size: crop side in pixels.
        smoothing: Gaussian sigma in frames applied to the quad's centre and axis over time
            (so the crop does not shake with landmark noise); ``None`` uses one crop for the
            whole clip (the mean quad): head motion then stays entirely in the pose.
    """
    centre, x = ffhq_quads(landmarks)
    if smoothing is None:
        centre = np.repeat(centre.mean(0, keepdims=True), len(centre), 0)
        x = np.repeat(x.mean(0, keepdims=True), len(x), 0)
    elif smoothing > 0:
        centre = gaussian_filter1d(centre, smoothing, axis=0, mode="nearest")
        x = gaussian_filter1d(x, smoothing, axis=0, mode="nearest")
    y = np.stack([-x[:, 1], x[:, 0]], axis=1)  # (T, 2)
    half = np.linalg.norm(x, axis=1)  # (T,)
    linear = np.stack([x, y], axis=1) * (size / 2 / half**2)[:, None, None]  # (T, 2, 2): rows project on x, y
    offset = size / 2 - np.einsum("tij,tj->ti", linear, centre)
    return np.concatenate([linear, offset[:, :, None]], axis=2).astype(np.float64)  # (T, 2, 3)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply ``(T, 2, 3)`` similarities to points ``(T, N, 2 or 3)``; z is scaled like x and y."""
    out = np.array(points, dtype=np.float64, copy=True)
    out[..., :2] = np.einsum("tij,tnj->tni", matrix[:, :, :2], points[..., :2]) + matrix[:, None, :, 2]
    if out.shape[-1] == 3:
        scale = np.sqrt(np.abs(np.linalg.det(matrix[:, :, :2])))  # (T,)
        out[..., 2] = points[..., 2] * scale[:, None]
    return out


def warp_crop(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop of an RGB frame under one ``(2, 3)`` similarity (reflect padding).

    Large reductions are done in two steps (area resize, then the warp) so that the crop is
    not aliased.
    """
    import cv2

    matrix = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        factor = int(np.floor(1 / scale / 1.5)) or 1  # keep the warp itself a mild reduction
        if factor > 1:
            height, width = frame.shape[:2]
            frame = cv2.resize(frame, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
            matrix = matrix.copy()
            matrix[:, :2] *= factor
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def normalise_to_crop(points: np.ndarray, size: int) -> np.ndarray:
    """Crop pixels -> crop units: the crop centre is 0, its edges are -1 and +1 (z alike)."""
    out = np.asarray(points, dtype=np.float64) / (size / 2)
    out[..., :2] -= 1.0
    return out


# ----------------------------------------------------------------------------- pose


def rotation_from_euler(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``, shape ``(..., 3, 3)``."""
    yaw, pitch, roll = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (yaw, pitch, roll)))
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*yaw.shape, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*yaw.shape, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*yaw.shape, 3, 3)
    return rz @ ry @ rx


def euler_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_from_euler`: ``(..., 3, 3)`` -> yaw, pitch, roll ``(..., 3)``."""
    r = np.asarray(rotation, dtype=np.float64)
    yaw = np.arcsin(np.clip(-r[..., 2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    roll = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return np.stack([yaw, pitch, roll], -1)


def procrustes(shapes: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity (Umeyama) of a reference onto each shape: ``shapes ~ s R reference + t``.

    Arguments:
        shapes: ``(T, N, 3)``.
        reference: ``(N, 3)``, centred at the origin.

    Returns:
        scale ``(T,)``, rotation ``(T, 3, 3)`` (proper, det +1), translation ``(T, 3)``.

    References:
        Umeyama, "Least-squares estimation of transformation parameters between two point
        patterns", TPAMI 1991.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    translation = shapes.mean(1)  # (T, 3)
    centred = shapes - translation[:, None]
    cross = np.einsum("ni,tnj->tij", reference, centred)  # (T, 3, 3) = ref^T X
    u, sv, vt = np.linalg.svd(cross)
    d = np.sign(np.linalg.det(np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2)))  # (T,)
    fix = np.ones((len(shapes), 3))
    fix[:, 2] = d
    rotation = np.swapaxes(vt, 1, 2) @ (fix[:, :, None] * np.swapaxes(u, 1, 2))  # V D U^T
    scale = (sv * fix).sum(1) / (reference**2).sum()
    return scale, rotation, translation


def pose_from_landmarks(shapes: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose and pose-normalised shape of each frame.

    Arguments:
        shapes: landmarks ``(T, N, 3)`` in crop units (:func:`normalise_to_crop`).
        reference: the mean shape ``(N, 3)``, centred.

    Returns:
        pose float32 ``(T, 6)``: yaw, pitch, roll (radians), tx, ty (face centre in crop
        units), scale (relative to the mean shape); and the shapes brought into the mean
        shape's frame, ``R^T (X - t) / s``, float64 ``(T, N, 3)``.
    """
    scale, rotation, translation = procrustes(shapes, reference)
    angles = euler_from_rotation(rotation)
    pose = np.concatenate([angles, translation[:, :2], scale[:, None]], axis=1).astype(np.float32)
    normalised = np.einsum("tji,tnj->tni", rotation, shapes - translation[:, None]) / scale[:, None, None]
    return pose, normalised


def mean_shape(shapes: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Generalised Procrustes mean of ``(F, N, 3)`` shapes, centred.

    The mean's own orientation and size are pinned to those of the plain average of the
    centred shapes, so zero pose angles mean "as the data looks on average" (frontal for a
    frontal dataset) and scale 1 the average face size.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    centred = shapes - shapes.mean(1, keepdims=True)
    anchor = centred.mean(0)  # (N, 3)
    mean = anchor
    for _ in range(iterations):
        _, aligned = pose_from_landmarks(centred, mean)
        mean = aligned.mean(0)
        scale, rotation, translation = procrustes(anchor[None], mean - mean.mean(0))
        mean = scale[0] * (mean - mean.mean(0)) @ rotation[0].T  # gauge: match the plain average
    return mean - mean.mean(0)


# ----------------------------------------------------------------------------- expression


@dataclass
class ExpressionBasis:
    """PCA basis of pose-normalised landmark offsets from each speaker's neutral shape.

    ``exp = (shape - neutral[speaker] - offset_mean).ravel() @ components.T``.
    """

    reference: np.ndarray  # (N, 3) mean shape, crop units
    offset_mean: np.ndarray  # (N * 3,)
    components: np.ndarray  # (E, N * 3), orthonormal rows
    explained_variance: np.ndarray  # (E,)
    neutral: dict[str, np.ndarray]  # speaker -> (N, 3)

    @property
    def exp_dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, offsets: np.ndarray, reference: np.ndarray, neutral: dict[str, np.ndarray], exp_dim: int = 64):
        """Fit on train offsets ``(F, N, 3)`` (shape minus the speaker's neutral shape)."""
        flat = np.asarray(offsets, dtype=np.float64).reshape(len(offsets), -1)
        if exp_dim > min(flat.shape):
            raise ValueError(
                f"exp_dim={exp_dim} needs at least {exp_dim} train frames and {exp_dim} coordinates; "
                f"the train split has {flat.shape[0]} frames of {flat.shape[1]} coordinates. "
                "Lower --exp-dim or add train clips"
            )
        centre = flat.mean(0)
        _, sv, vt = np.linalg.svd(flat - centre, full_matrices=False)
        variance = sv**2 / max(1, len(flat) - 1)
        return cls(
            reference=np.asarray(reference, dtype=np.float64),
            offset_mean=centre,
            components=vt[:exp_dim],
            explained_variance=variance[:exp_dim],
            neutral={k: np.asarray(v, dtype=np.float64) for k, v in neutral.items()},
        )

    def encode(self, normalised: np.ndarray, speaker: str) -> np.ndarray:
        """Expression coefficients float32 ``(T, E)`` of pose-normalised shapes ``(T, N, 3)``."""
        if speaker not in self.neutral:
            raise KeyError(f"speaker {speaker!r} has no neutral shape in the basis (known: {len(self.neutral)})")
        offsets = (normalised - self.neutral[speaker]).reshape(len(normalised), -1) - self.offset_mean
        return (offsets @ self.components.T).astype(np.float32)

    def decode(self, exp: np.ndarray, speaker: str) -> np.ndarray:
        """Pose-normalised shapes ``(T, N, 3)`` from coefficients (inverse up to the dropped components)."""
        flat = np.asarray(exp, dtype=np.float64) @ self.components + self.offset_mean
        return flat.reshape(len(exp), -1, 3) + self.neutral[speaker]

    def save(self, path) -> None:
        speakers = sorted(self.neutral)
        np.savez(
            path,
            reference=self.reference,
            offset_mean=self.offset_mean,
            components=self.components,
            explained_variance=self.explained_variance,
            speakers=np.array(speakers),
            neutral=np.stack([self.neutral[s] for s in speakers]) if speakers else np.zeros((0, 0, 3)),
        )

    @classmethod
    def load(cls, path) -> ExpressionBasis:
        data = np.load(path)
        neutral = {str(s): data["neutral"][i] for i, s in enumerate(data["speakers"])}
        return cls(data["reference"], data["offset_mean"], data["components"], data["explained_variance"], neutral)
