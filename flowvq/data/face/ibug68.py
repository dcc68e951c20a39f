"""The 478 -> iBUG-68 mapping of FaceMesh landmarks.

:data:`IBUG68_FROM_FACEMESH` is derived from FaceMesh's own contour lists
(``mp.solutions.face_mesh_connections``) on a near-frontal reference face by
:func:`derive_ibug68_indices`, rule by rule (see there); the test suite re-derives it from
a detection on scikit-image's astronaut photograph and compares it with the table.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["IBUG68_FROM_FACEMESH", "derive_ibug68_indices", "to_ibug68"]

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
