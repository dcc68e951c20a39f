"""Emotion transfer from a video: the expression of a reference clip, measured as preprocessing measures it.

Only for ``mediapipe-pca`` datasets, whose expression coefficients are a PCA of FaceMesh
landmarks (the basis, ``mediapipe_pca.npz``, sits next to the shards). The steps are those of
preprocessing (:mod:`flowvq.data.preprocess`): FaceMesh track, FFHQ crop track, landmarks in
the clip's fixed frame, Procrustes onto the mean shape, PCA. One difference: the reference's
speaker is not in the basis, so its neutral shape is the mean of the train speakers' neutral
shapes (the speaker's own face shape then leaks a little into the code).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowvq.data.card import DatasetCard

__all__ = ["expression_of_video"]


def expression_of_video(path: str | Path, card_source: str | Path, card: DatasetCard) -> np.ndarray:
    """Expression coefficients float32 ``[T, E]`` of the face in a video, in the dataset's units."""
    from flowvq.data.face import ExpressionBasis, FaceTracker, crop_transforms, fill_gaps, pose_from_landmarks
    from flowvq.data.face.crop import to_clip_frame, transform_points
    from flowvq.data.preprocess.merge import BASIS_NAME
    from flowvq.data.video import read_video

    root = Path(card_source)
    root = root.parent if root.is_file() else root
    basis_path = root / BASIS_NAME
    if not basis_path.is_file():
        raise FileNotFoundError(
            f"{str(basis_path)!r} is missing: measuring a reference video's expression needs the dataset's "
            "landmark PCA basis, written next to the shards by `flowvq preprocess`"
        )
    basis = ExpressionBasis.load(basis_path)
    frames = read_video(path, card.fps)
    with FaceTracker(refine_landmarks=basis.reference.shape[0] == 478) as tracker:
        raw = tracker.track(frames)
    landmarks = fill_gaps(raw)
    size = card.frame_size or 256
    crop = crop_transforms(landmarks, size)
    in_crop = transform_points(crop, landmarks)
    _, normalised = pose_from_landmarks(to_clip_frame(in_crop, crop, size), basis.reference)
    neutral = np.mean(np.stack(list(basis.neutral.values())), axis=0)
    offsets = (normalised - neutral).reshape(len(normalised), -1) - basis.offset_mean
    return (offsets @ basis.components.T).astype(np.float32)
