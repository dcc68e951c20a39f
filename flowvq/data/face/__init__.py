"""Face landmarks (mediapipe FaceMesh), the iBUG-68 subset, FFHQ-style crops, Procrustes pose, PCA expression.

The ``mediapipe-pca`` coefficient source of the data contract, one idea per module:

- :mod:`.tracking`: :class:`FaceTracker` (FaceMesh over a clip) and :func:`fill_gaps`.
- :mod:`.ibug68`: the 478 -> iBUG-68 map, derived from FaceMesh's own contours.
- :mod:`.crop`: the FFHQ-style crop track and the warp.
- :mod:`.pose`: Euler angles, similarity Procrustes, the mean shape.
- :mod:`.expression`: the PCA expression basis.
"""

from __future__ import annotations

from flowvq.data.face.crop import crop_transforms, ffhq_quads, normalise_to_crop, transform_points, warp_crop
from flowvq.data.face.expression import ExpressionBasis
from flowvq.data.face.ibug68 import IBUG68_FROM_FACEMESH, derive_ibug68_indices, to_ibug68
from flowvq.data.face.pose import (
    euler_from_rotation,
    mean_shape,
    pose_from_landmarks,
    procrustes,
    rotation_from_euler,
)
from flowvq.data.face.tracking import FaceTracker, GapError, fill_gaps

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
