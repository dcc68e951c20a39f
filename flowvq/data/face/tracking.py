"""mediapipe FaceMesh over a clip, and interpolation of short gaps in the track.

:class:`FaceTracker` returns 478 (or 468 without iris refinement) 3-D landmarks per frame
in pixels, NaN where no face was found; :func:`fill_gaps` interpolates short gaps and
rejects clips with long ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["FaceTracker", "GapError", "fill_gaps"]


class GapError(ValueError):
    """A clip whose face track has a gap too long to interpolate (or no face at all)."""


class FaceTracker:
    """mediapipe FaceMesh over the frames of one clip.

    Arguments:
        refine_landmarks: add the 10 iris landmarks (478 instead of 468).
        static_image_mode: detect on every frame instead of tracking (slower; for photos).
        min_detection_confidence, min_tracking_confidence: FaceMesh thresholds.

    Tracking state carries over between frames: call :meth:`reset` before each new clip (a
    reset tracker gives exactly what a new one would, without the start-up cost). Use it as
    a context manager so mediapipe's graph is closed.
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

    def reset(self) -> None:
        """Forget the previous frames (start of a new clip)."""
        self._mesh.reset()

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
