"""Face landmarks: the derived iBUG-68 map, gap filling, crops, Procrustes pose and the PCA basis."""

from __future__ import annotations

import numpy as np
import pytest
from media import astronaut, known_motion, moving_face

from flowvq.data.face import (
    IBUG68_FROM_FACEMESH,
    ExpressionBasis,
    FaceTracker,
    GapError,
    crop_transforms,
    derive_ibug68_indices,
    euler_from_rotation,
    fill_gaps,
    mean_shape,
    pose_from_landmarks,
    procrustes,
    rotation_from_euler,
    to_ibug68,
    transform_points,
    warp_crop,
)


@pytest.fixture(scope="module")
def photo_landmarks() -> np.ndarray:
    with FaceTracker(static_image_mode=True) as tracker:
        return tracker(astronaut())


def test_facemesh_finds_the_astronaut(photo_landmarks):
    assert photo_landmarks.shape == (478, 3) and np.isfinite(photo_landmarks).all()
    ibug = to_ibug68(photo_landmarks[:, :2])
    # the face is at about x 180..270, y 60..180 of the 512 x 512 photograph
    assert 170 < ibug[:, 0].min() and ibug[:, 0].max() < 280 and 60 < ibug[:, 1].min() and ibug[:, 1].max() < 190


def test_ibug68_table_is_rederived_from_a_detection(photo_landmarks):
    assert derive_ibug68_indices(photo_landmarks) == IBUG68_FROM_FACEMESH
    # the rules do not depend on where the face is, its size or its roll
    c, s = np.cos(0.4), np.sin(0.4)
    moved = photo_landmarks @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T * 1.7 + [40, -25, 3]
    assert derive_ibug68_indices(moved) == IBUG68_FROM_FACEMESH
    assert len(set(IBUG68_FROM_FACEMESH)) == 68 and max(IBUG68_FROM_FACEMESH) < 468


def test_ibug68_layout_on_the_photograph(photo_landmarks):
    ibug = to_ibug68(photo_landmarks[:, :2])  # (68, 2)
    jaw, brows, nose, eyes, mouth = ibug[:17], ibug[17:27], ibug[27:36], ibug[36:48], ibug[48:]
    assert np.all(np.diff(jaw[::4, 0]) > 0)  # the jaw runs left to right
    assert jaw[8, 1] == jaw[:, 1].max()  # the chin is its lowest point
    assert brows[:, 1].mean() < eyes[:, 1].mean() < nose[4:, 1].mean() < mouth[:, 1].mean() < jaw[8, 1]
    assert np.all(np.diff(nose[:4, 1]) > 0)  # the bridge runs down
    assert eyes[:6, 0].mean() < nose[3, 0] < eyes[6:, 0].mean()
    for eye in (eyes[:6], eyes[6:]):  # corners at the ends, upper lid above lower lid
        assert eye[0, 0] == eye[:, 0].min() and eye[3, 0] == eye[:, 0].max()
        assert eye[1:3, 1].mean() < eye[4:6, 1].mean()
    assert mouth[0, 0] == mouth[:12, 0].min() and mouth[6, 0] == mouth[:12, 0].max()
    assert mouth[3, 1] < mouth[14, 1] <= mouth[18, 1] < mouth[9, 1]  # outer top, inner top, inner bottom, outer bottom


def test_no_face_gives_nan():
    with FaceTracker(static_image_mode=True, refine_landmarks=False) as tracker:
        out = tracker(astronaut()[300:460, 300:460])  # the suit
    assert out.shape == (468, 3) and np.isnan(out).all()


def test_fill_gaps():
    track = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 4, 3), dtype=np.float32)
    holes = track.copy()
    holes[[0, 4, 5, 9]] = np.nan
    filled = fill_gaps(holes, max_gap=2)
    np.testing.assert_allclose(filled[1:9], track[1:9])  # interior: linear
    assert filled[0, 0, 0] == 1 and filled[9, 0, 0] == 8  # ends: nearest
    holes[3:7] = np.nan
    with pytest.raises(GapError, match="frames 3..6 \\(4 frames, more than max_gap=2\\)"):
        fill_gaps(holes, max_gap=2)
    with pytest.raises(GapError, match="no face detected in any of the 10 frames"):
        fill_gaps(np.full_like(track, np.nan))


def test_euler_round_trip_and_convention():
    rng = np.random.default_rng(0)
    angles = rng.uniform(-1.2, 1.2, (100, 3))
    np.testing.assert_allclose(euler_from_rotation(rotation_from_euler(*angles.T)), angles, atol=1e-10)
    # positive roll turns x towards y: clockwise on screen, where y points down
    np.testing.assert_allclose(rotation_from_euler(0.0, 0.0, np.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    # the nose points at the camera (-z): positive yaw turns it to image left, positive pitch down
    assert (rotation_from_euler(0.3, 0.0, 0.0) @ [0, 0, -1])[0] < 0
    assert (rotation_from_euler(0.0, 0.3, 0.0) @ [0, 0, -1])[1] > 0


def test_procrustes_recovers_a_similarity():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(50, 3))
    reference -= reference.mean(0)
    angles = rng.uniform(-0.5, 0.5, (8, 3))
    rotation = rotation_from_euler(*angles.T)
    scale, shift = rng.uniform(0.5, 2.0, 8), rng.normal(size=(8, 3))
    shapes = scale[:, None, None] * np.einsum("tij,nj->tni", rotation, reference) + shift[:, None]
    s, r, t = procrustes(shapes, reference)
    np.testing.assert_allclose(s, scale)
    np.testing.assert_allclose(r, rotation, atol=1e-10)
    np.testing.assert_allclose(t, shift)
    pose, normalised = pose_from_landmarks(shapes, reference)
    np.testing.assert_allclose(pose[:, :3], angles, atol=1e-5)
    np.testing.assert_allclose(normalised, np.broadcast_to(reference, shapes.shape), atol=1e-10)
    # a mirror image is not a rotation: the fit stays proper
    assert np.linalg.det(procrustes(shapes * [-1, 1, 1], reference)[1]).min() > 0


def test_mean_shape_keeps_the_average_orientation():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(40, 3))
    angles = rng.normal(0, 0.2, (30, 3))
    angles -= angles.mean(0)
    shapes = np.einsum("tij,nj->tni", rotation_from_euler(*angles.T), base) + rng.normal(0, 0.01, (30, 40, 3))
    mean = mean_shape(shapes)
    np.testing.assert_allclose(mean.mean(0), 0, atol=1e-12)
    pose, _ = pose_from_landmarks(shapes, mean)
    # the average pose is (close to) zero and the recovered angles follow the applied ones
    assert np.abs(pose[:, :3].mean(0)).max() < 0.02
    np.testing.assert_allclose(pose[:, :3] - pose[:, :3].mean(0), angles, atol=0.03)


def test_crop_follows_the_face_and_levels_the_eyes():
    motion = known_motion(12, seed=4)
    frames = moving_face(motion, 160)
    with FaceTracker() as tracker:
        landmarks = fill_gaps(tracker.track(frames))
    per_frame = crop_transforms(landmarks, 128, smoothing=0)
    inside = transform_points(per_frame, landmarks)
    assert inside[..., :2].min() >= 0 and inside[..., :2].max() < 128
    eyes = to_ibug68(inside[..., :2])
    tilt = np.arctan2(*(eyes[:, 42:48].mean(1) - eyes[:, 36:42].mean(1)).T[::-1])
    assert np.degrees(np.abs(tilt)).max() < 3  # per-frame crops rotate with the head
    fixed = crop_transforms(landmarks, 128, smoothing=None)
    assert np.allclose(fixed, fixed[0])
    smooth = crop_transforms(landmarks, 128, smoothing=3.0)
    assert np.abs(np.diff(smooth, axis=0)).max() < np.abs(np.diff(per_frame, axis=0)).max()
    crop = warp_crop(frames[0], per_frame[0], 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    # a big frame is reduced before the warp: the crop of a 4x upscaled frame matches
    import cv2

    big = cv2.resize(frames[0], (640, 640), interpolation=cv2.INTER_CUBIC)
    scaled = per_frame[0].copy()
    scaled[:, :2] /= 4
    assert np.abs(warp_crop(big, scaled, 128).astype(float) - crop).mean() < 8


def test_expression_basis_round_trip():
    rng = np.random.default_rng(3)
    neutral = {"a": rng.normal(size=(20, 3)), "b": rng.normal(size=(20, 3))}
    codes = rng.normal(size=(200, 5))
    directions = np.linalg.qr(rng.normal(size=(60, 5)))[0].T  # (5, 60) orthonormal
    offsets = (codes @ directions).reshape(200, 20, 3)
    basis = ExpressionBasis.fit(offsets, neutral["a"], neutral, exp_dim=5)
    shapes = offsets[:10] + neutral["b"]
    np.testing.assert_allclose(basis.decode(basis.encode(shapes, "b"), "b"), shapes, atol=1e-5)
    assert basis.explained_variance[0] >= basis.explained_variance[-1]
    with pytest.raises(ValueError, match="exp_dim=300 needs at least 300 train frames"):
        ExpressionBasis.fit(offsets, neutral["a"], neutral, exp_dim=300)
    with pytest.raises(KeyError, match="speaker 'c' has no neutral shape"):
        basis.encode(shapes, "c")


def test_small_face_in_a_large_frame():
    """A face about 5% of a 1280 x 720 frame's width (HDTF-like): FaceMesh alone finds nothing;
    the full-range detector finds it and FaceMesh on the region around it gives the landmarks
    of the same face seen large, scaled and shifted."""
    import cv2

    near = moving_face(known_motion(6, seed=1), 320)
    side, corner = 120, np.array([640, 240])
    frames = np.full((len(near), 720, 1280, 3), 90, dtype=np.uint8)
    frames[:, corner[1] : corner[1] + side, corner[0] : corner[0] + side] = [
        cv2.resize(frame, (side, side), interpolation=cv2.INTER_AREA) for frame in near
    ]
    with FaceTracker(find_small_faces=False) as tracker:
        assert np.isnan(tracker.track(frames)).all()
    with FaceTracker() as tracker:
        expected = to_ibug68(tracker.track(near)[..., :2]) * side / 320 + corner
        tracker.reset()
        found = tracker.track(frames)
        widths = tracker.small_face_widths
    assert np.isfinite(found).all()
    error = np.abs(to_ibug68(found[..., :2]) - expected).mean()
    assert error < 1.0, f"{error:.2f} px from the large view's landmarks (eye distance about 35 px)"
    assert len(widths) == 1 and 0.03 < widths[0] < 0.08  # found once, then followed
