"""The evaluation metrics against hand-computed cases: PSNR, SSIM, M-/F-LMD, CPBD, LSE, Acc_emo, LPIPS/FID weights."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from flowvq.metrics.emotion import VideoEmotionAccuracy
from flowvq.metrics.image import FramePSNR, FrameSSIM, to_unit
from flowvq.metrics.landmarks import LandmarkDistance, detect_landmarks
from flowvq.metrics.perceptual import FID_WEIGHTS, LPIPS_WEIGHTS, perceptual_metrics
from flowvq.metrics.sharpness import CPBD, canny_edges, cpbd, marziliano_widths
from flowvq.metrics.sync import LipSyncScores, sync_scores


def test_psnr_is_per_frame_then_averaged():
    target = torch.zeros(2, 3, 8, 8)
    generated = target.clone()
    generated[0] += 0.1  # MSE 1e-2: 20 dB
    generated[1] += 0.01  # MSE 1e-4: 40 dB
    metric = FramePSNR()
    metric.update(generated, target)
    # the mean of the frames' PSNR, not the PSNR of the mean MSE (22.97 dB)
    assert metric.compute().item() == pytest.approx(30.0, abs=1e-4)


def test_ssim_of_constant_images_is_the_luminance_term():
    x = torch.full((1, 3, 16, 16), 0.5)
    y = torch.full((1, 3, 16, 16), 0.25)
    metric = FrameSSIM()
    metric.update(y, x)
    c1 = 0.01**2  # (K1 x data range)^2; contrast and structure terms are C2 / C2 = 1
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-5)
    identical = FrameSSIM()
    identical.update(x, x)
    assert identical.compute().item() == pytest.approx(1.0, abs=1e-6)


def test_to_unit_refuses_float_frames():
    assert to_unit(np.full((1, 2, 2, 3), 255, np.uint8)).shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match="uint8"):
        to_unit(np.zeros((1, 2, 2, 3), np.float32))


def test_landmark_distances_hand_computed():
    target = torch.rand(3, 68, 2) * 64
    moved = target + torch.tensor([5.0, -3.0])  # the whole face displaced: centring removes it
    metric = LandmarkDistance("face")
    metric.update(moved, target)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-5)

    one = torch.zeros(1, 68, 2)
    off = one.clone()
    off[0, 48, 0] = 20.0  # one mouth point 20 px to the right
    mouth, face = LandmarkDistance("mouth"), LandmarkDistance("face")
    mouth.update(off, one)
    face.update(off, one)
    # mouth: centroid moves 1 px; the point is 19 px off, the other 19 points 1 px: 38 / 20
    assert mouth.compute().item() == pytest.approx(1.9, abs=1e-6)
    # face: centroid moves 20/68; 2 x (20 - 20/68) / 68 over 68 points
    assert face.compute().item() == pytest.approx(2 * (20 - 20 / 68) / 68, abs=1e-6)


def test_frames_without_landmarks_are_left_out_and_counted():
    target = torch.zeros(2, 68, 2)
    predicted = target.clone()
    predicted[1] = float("nan")
    predicted[0, 50, 1] = 10.0
    metric = LandmarkDistance("mouth")
    metric.update(predicted, target)
    assert metric.missing.item() == 1 and metric.frames.item() == 1
    assert metric.compute().item() == pytest.approx(2 * (10 - 10 / 20) / 20, abs=1e-6)


def ramp(width: int, contrast: float = 255.0, size: int = 64) -> np.ndarray:
    """A vertical edge: 0 left of column 30, rising linearly over ``width`` pixels to ``contrast``."""
    columns = np.clip((np.arange(size) - 30) / width, 0, 1) * contrast
    return np.tile(columns, (size, 1))


def test_marziliano_width_of_a_ramp_is_its_length():
    for width in (1, 3, 5):
        image = ramp(width)
        edges, gx, _ = canny_edges(image)
        assert edges.any()
        _, widths = marziliano_widths(image, edges, gx)
        assert set(widths.tolist()) == {width}


def test_cpbd_against_the_just_noticeable_blur_widths():
    # contrast > 50: w_JNB = 3; P(blur) = 1 - exp(-(w / 3) ^ 3.6) <= 0.63 only for w < 3
    assert cpbd(ramp(2)) == 1.0  # P = 0.23
    assert cpbd(ramp(3)) == 0.0  # P = 1 - 1/e = 0.632 > 0.63
    # contrast <= 50: w_JNB = 5, so the same 4-px edge is sharp at low contrast, blurred at high
    assert cpbd(ramp(4, contrast=40)) == 1.0
    assert cpbd(ramp(4, contrast=255)) == 0.0
    assert np.isnan(cpbd(np.full((64, 64), 100.0)))  # no edge block


def test_cpbd_metric_averages_frames_and_skips_flat_ones():
    frames = np.stack([ramp(2), ramp(6), np.full((64, 64), 10.0)]).astype(np.uint8)
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    metric = CPBD()
    metric.update(torch.as_tensor(rgb))
    assert metric.compute().item() == pytest.approx(0.5)
    assert metric.skipped.item() == 1


def test_sync_scores_average_windows_before_the_minimum():
    distances = torch.tensor(
        [
            [4.0, 2.0, 1.0, 3.0, 5.0],
            [2.0, 4.0, 1.0, 5.0, 3.0],
        ]
    )
    # means per offset: 3, 3, 1, 4, 4 -> min 1 at offset 0, median 3
    lse_d, lse_c, offset = sync_scores(distances)
    assert (float(lse_d), float(lse_c), int(offset)) == (1.0, 2.0, 0)
    metric = LipSyncScores()
    metric.update(distances)
    metric.update(torch.tensor([[1.0, 2.0, 2.0, 2.0, 9.0]]))  # min 1 at offset -2, median 2
    scores = metric.compute()
    assert scores["lse_d"].item() == pytest.approx(1.0)
    assert scores["lse_c"].item() == pytest.approx(1.5)
    assert scores["in_sync"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="odd number of offsets"):
        sync_scores(torch.zeros(2, 4))


def test_video_emotion_accuracy():
    metric = VideoEmotionAccuracy()
    metric.update(torch.tensor([[0.1, 0.9], [0.7, 0.3], [0.4, 0.6]]), torch.tensor([1, 1, 1]))
    metric.update(torch.tensor([[0.5, 0.5]]), torch.tensor([-1]))  # unknown emotion: left out
    assert metric.compute().item() == pytest.approx(2 / 3)


def test_perceptual_metrics_need_local_weights(tmp_path):
    none = perceptual_metrics(None)
    assert none["lpips"].startswith("not computed: no weights given")
    empty = perceptual_metrics(tmp_path)
    assert empty["lpips"] == f"not computed: no weights at {tmp_path / 'hub' / 'checkpoints' / LPIPS_WEIGHTS}"
    assert empty["fid"] == f"not computed: no weights at {tmp_path / 'hub' / 'checkpoints' / FID_WEIGHTS}"
    assert "torchvision" not in sys.modules, "the core never imports torchvision"


def test_detected_landmarks_of_a_synthtalk_face_are_near_the_record(synth_tiny_root):
    from flowvq.data.shards import ClipShards
    from flowvq.datamodules.base import decode_frame

    record = ClipShards(synth_tiny_root, "test")[0]
    size = 64
    frames = np.stack([decode_frame(record, i, size, size) for i in range(8)])
    detected = detect_landmarks(frames)
    assert detected.shape == (8, 68, 2) and not np.isnan(detected).any()
    metric = LandmarkDistance("face")
    metric.update(torch.as_tensor(detected), torch.as_tensor(record["landmarks"][:8]))
    assert metric.compute().item() < 2.0, "mediapipe agrees with the rendered landmarks within 2 px at 64 px"
