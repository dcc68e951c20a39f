"""mediapipe's full-range face detector, on the whole frame and on tiles of it.

FaceMesh finds a face with its own short-range detector, which misses faces narrower than
about a sixth of the frame (HDTF and in-the-wild videos have such faces). The full-range
detector (BlazeFace, 192 px input) finds them down to about 5% of the frame width; tiles of
the frame (:meth:`FaceDetector.search`) reach smaller ones. The tracker then runs FaceMesh on
the region around the face (:class:`~flowvq.data.face.tracking.FaceTracker`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Detection", "FaceDetector"]


@dataclass(frozen=True)
class Detection:
    """A face found by :class:`FaceDetector`: score, box ``(x0, y0, x1, y1)`` and six keypoints
    ``(6, 2)`` in pixels (image-left eye, image-right eye, nose tip, mouth centre, two ears)."""

    score: float
    box: np.ndarray
    keypoints: np.ndarray


class FaceDetector:
    """mediapipe's full-range face detector (finds faces down to a few percent of the image width).

    Arguments:
        min_confidence: detection score threshold.

    Use as a context manager so that mediapipe's graph is closed.
    """

    def __init__(self, min_confidence: float = 0.5) -> None:
        import mediapipe as mp  # heavy import, only where faces are detected

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        )

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._detector.close()

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """Faces in one RGB uint8 image, best first."""
        height, width = image.shape[:2]
        result = self._detector.process(np.ascontiguousarray(image))
        found = []
        for detection in result.detections or []:
            box = detection.location_data.relative_bounding_box
            corners = np.array([box.xmin, box.ymin, box.xmin + box.width, box.ymin + box.height])
            keypoints = np.array([(k.x, k.y) for k in detection.location_data.relative_keypoints])
            found.append(
                Detection(
                    float(detection.score[0]),
                    corners * [width, height, width, height],
                    keypoints * [width, height],
                )
            )
        return sorted(found, key=lambda d: -d.score)

    def search(self, image: np.ndarray, tiles: bool = True) -> Detection | None:
        """The best face in the whole image or, failing that (and with ``tiles``), in overlapping
        square tiles of half the image's shorter side (faces too small for the whole view)."""
        found = self(image)
        if found or not tiles:
            return found[0] if found else None
        height, width = image.shape[:2]
        side = min(height, width) // 2
        if side < 160:
            return None
        best: Detection | None = None
        for y in _starts(height, side):
            for x in _starts(width, side):
                for detection in self(image[y : y + side, x : x + side]):
                    if best is None or detection.score > best.score:
                        offset = np.array([x, y])
                        best = Detection(
                            detection.score, detection.box + np.tile(offset, 2), detection.keypoints + offset
                        )
        return best


def _starts(length: int, side: int) -> list[int]:
    """Tile origins along one axis: overlapping by a quarter, the last flush with the end."""
    count = max(1, int(np.ceil((length - side) / (0.75 * side))) + 1)
    return sorted({int(round(v)) for v in np.linspace(0, length - side, count)})
