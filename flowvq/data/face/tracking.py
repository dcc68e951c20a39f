"""mediapipe FaceMesh over a clip, and interpolation of short gaps in the track.

:class:`FaceTracker` returns 478 (or 468 without iris refinement) 3-D landmarks per frame
in pixels, NaN where no face was found. Where FaceMesh finds no face in the whole frame (a
face narrower than about a sixth of it), the full-range face detector looks for one (on the
frame, then on tiles) and FaceMesh runs on the region around it, following the face from
frame to frame. :func:`fill_gaps` interpolates short gaps and rejects clips with long ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from flowvq.data.face.detection import FaceDetector

__all__ = ["FaceTracker", "GapError", "fill_gaps"]


class GapError(ValueError):
    """A clip whose face track has a gap too long to interpolate (or no face at all)."""


class FaceTracker:
    """mediapipe FaceMesh over the frames of one clip.

    Arguments:
        refine_landmarks: add the 10 iris landmarks (478 instead of 468).
        static_image_mode: detect on every frame instead of tracking (slower; for photos).
        min_detection_confidence, min_tracking_confidence: FaceMesh thresholds.
        find_small_faces: where FaceMesh finds no face in the whole frame, look for one with
            the full-range face detector and run FaceMesh on the region around it.

    ``small_face_widths`` lists, since the last reset, the widths (fractions of the frame
    width) of the faces the detector found for the region search.

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
        find_small_faces: bool = True,
    ) -> None:
        import mediapipe as mp  # heavy import, only where landmarks are computed

        self.num_landmarks = 478 if refine_landmarks else 468

        def mesh():
            return mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static_image_mode,
                max_num_faces=1,
                refine_landmarks=refine_landmarks,
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence,
            )

        self._mesh = mesh()
        # a second graph for regions, so that neither tracking state sees the other's images
        self._region_mesh = mesh() if find_small_faces else None
        self._detector = FaceDetector() if find_small_faces else None
        self._region: tuple[int, int, int] | None = None  # (x0, y0, side) followed in frame pixels
        self._frame = 0
        self.small_face_widths: list[float] = []

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._mesh.close()
        if self._region_mesh is not None:
            self._region_mesh.close()
            self._detector.close()

    def reset(self) -> None:
        """Forget the previous frames (start of a new clip)."""
        self._mesh.reset()
        if self._region_mesh is not None:
            self._region_mesh.reset()
        self._region, self._frame = None, 0
        self.small_face_widths = []

    @staticmethod
    def _landmarks(mesh, image: np.ndarray, x0: int = 0, y0: int = 0) -> np.ndarray | None:
        """FaceMesh on an image (a region whose corner is at ``x0, y0`` in the frame), in frame pixels."""
        height, width = image.shape[:2]
        result = mesh.process(np.ascontiguousarray(image))
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        out = np.array([(p.x, p.y, p.z) for p in points], dtype=np.float32)  # (N, 3) normalised
        out *= np.array([width, height, width], dtype=np.float32)
        out[:, :2] += np.array([x0, y0], dtype=np.float32)
        return out

    @staticmethod
    def _square(x0: float, y0: float, x1: float, y1: float, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """A square twice the box's longer side around its centre, inside the frame."""
        height, width = shape[:2]
        side = int(min(2.0 * max(x1 - x0, y1 - y0), height, width))
        left = int(np.clip((x0 + x1 - side) / 2, 0, width - side))
        top = int(np.clip((y0 + y1 - side) / 2, 0, height - side))
        return left, top, side

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Landmarks of one RGB uint8 frame, float32 ``(N, 3)`` in pixels (z scaled like x); NaN if no face."""
        self._frame += 1
        missing = np.full((self.num_landmarks, 3), np.nan, dtype=np.float32)
        if self._region is None:
            out = self._landmarks(self._mesh, frame)
            if out is not None or self._detector is None:
                return missing if out is None else out
            # the whole-frame view each frame; tiles (ten or so detector runs) every fifth frame
            found = self._detector.search(frame, tiles=self._frame % 5 == 1)
            if found is None:
                return missing
            self.small_face_widths.append(float(found.box[2] - found.box[0]) / frame.shape[1])
            self._region = self._square(*found.box, frame.shape)
        x0, y0, side = self._region
        out = self._landmarks(self._region_mesh, frame[y0 : y0 + side, x0 : x0 + side], x0, y0)
        if out is None:
            self._region = None
            return missing
        self._region = self._square(*out[:, :2].min(0), *out[:, :2].max(0), frame.shape)
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
