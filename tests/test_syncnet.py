"""SyncNet, its DataModule and the mouth crops: shapes, window arithmetic, learning, one-batch fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from flowvq.data.mouth import mouth_boxes, mouth_crops
from flowvq.datamodules.audio_visual import AudioVisualDataModule, padded_mel
from flowvq.datamodules.base import SILENCE_LOG_MEL
from flowvq.lightning_modules.syncnet import SyncNet

TINY = {"mel_bins": 8, "mel_per_frame": 2, "crop_size": 16, "channels": (8, 16), "embed_dim": 16}


def test_mouth_box_is_scaled_mouth_width_around_the_mouth_centre():
    points = np.zeros((1, 68, 2), dtype=np.float32)
    points[0, 48:68] = [30.0, 40.0]
    points[0, 48] = [20.0, 40.0]  # left corner
    points[0, 54] = [40.0, 40.0]  # right corner: width 20
    box = mouth_boxes(points, scale=2.0, smoothing=0)
    # centre: the 20 mouth points' mean is (30, 40); side 2 x 20
    np.testing.assert_allclose(box, [[10.0, 20.0, 50.0, 60.0]])


def test_mouth_crop_takes_the_pixels_of_the_box():
    frame = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    frame[0, 20:40, 10:30] = 255  # a white square exactly where the box is
    points = np.zeros((1, 68, 2), dtype=np.float32)
    points[0, 48:68] = [20.0, 30.0]
    points[0, 48], points[0, 54] = [15.0, 30.0], [25.0, 30.0]
    crop = mouth_crops(frame, points, size=10, scale=2.0, smoothing=0)
    assert crop.shape == (1, 10, 10, 3)
    assert crop[0, 1:-1, 1:-1].min() > 200  # inside the white square
    with pytest.raises(ValueError, match="one row per frame"):
        mouth_crops(frame, np.zeros((2, 68, 2)), size=10)


def test_padded_mel_is_silence_outside_the_clip():
    mel = np.arange(3 * 2 * 1, dtype=np.float32).reshape(3, 2, 1)
    out = padded_mel(mel, -1, 4)
    assert out.shape == (10, 1)
    np.testing.assert_array_equal(out[:2, 0], np.float32([SILENCE_LOG_MEL] * 2))
    np.testing.assert_array_equal(out[2:8, 0], np.arange(6))
    np.testing.assert_array_equal(out[8:, 0], np.float32([SILENCE_LOG_MEL] * 2))


def test_offset_distances_compare_each_window_with_the_shifted_audio():
    torch.manual_seed(0)
    model = SyncNet(**TINY, frames=3, eval_offsets=2).eval()
    frames, k = 7, 2
    crops = torch.rand(frames, 3, 16, 16) * 2 - 1
    mel = np.random.default_rng(0).standard_normal((frames, k, 8)).astype(np.float32)
    table = model.offset_distances(crops, mel)
    assert table.shape == (frames - 3 + 1, 5)
    columns = torch.as_tensor(padded_mel(mel, -2, frames + 2))
    for t, offset in [(0, 0), (2, -2), (4, 1), (1, 2)]:
        with torch.no_grad():
            video = model.embed_video(crops[t : t + 3][None])
            start = (t + offset + 2) * k  # audio of frames t+offset .. t+offset+2
            audio = model.embed_audio(columns[start : start + 3 * k][None])
        assert table[t, offset + 2] == pytest.approx(float((video - audio).norm()), abs=1e-5)


def aligned_batch(size: int, frames: int = 3, shift: int = 3, k: int = 2, seed: int = 0) -> dict:
    """Mouth brightness follows the audio energy of the same frame: a sync task to learn."""
    generator = torch.Generator().manual_seed(seed)
    total = frames + 2 * shift
    energy = torch.rand(size, total, generator=generator)  # (B, frames + 2S)
    mel = energy.repeat_interleave(k, 1)[:, :, None].expand(-1, -1, 8) * 4 - 2  # (B, (F + 2S) K, M)
    brightness = energy[:, shift : shift + frames]  # the window's own frames
    mouth = brightness[:, :, None, None, None].expand(-1, -1, 3, 16, 16) * 2 - 1
    mouth = mouth + 0.05 * torch.randn(mouth.shape, generator=generator)
    return {"mouth": mouth, "mel": mel.contiguous(), "clip_id": [f"c{i}" for i in range(size)]}


def test_learns_to_tell_aligned_from_shifted_audio():
    torch.manual_seed(0)
    model = SyncNet(**TINY, frames=3, max_offset=3, min_negative_shift=1, lr=3e-3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        loss, _, _ = model.loss(aligned_batch(32, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        _, distances, offsets = model.loss(aligned_batch(64, seed=999))
    best = np.asarray(offsets)[distances.argmin(1).numpy()]
    assert (best == 0).mean() > 0.8, f"aligned audio is the closest for only {(best == 0).mean():.0%} of windows"


def test_one_batch_fit_on_a_dataset(random_dataset, tmp_path):
    data = AudioVisualDataModule(random_dataset, batch_size=4, windows_per_clip=2, max_shift=3, crop_size=16)
    model = SyncNet(**{**TINY, **{k: v for k, v in data.dims.items() if k in ("mel_bins", "mel_per_frame")}})
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(model, datamodule=data)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters())), "every parameter is trained"
    assert bool(model.has_mel_stats)
    np.testing.assert_allclose(model.mel_mean.numpy(), data.card.stats.mel_mean, rtol=1e-6)


def test_refuses_a_datamodule_with_other_window(random_dataset):
    data = AudioVisualDataModule(random_dataset, batch_size=4, windows_per_clip=2, frames=4, max_shift=3)
    model = SyncNet(**{**TINY, "mel_bins": 80, "mel_per_frame": 4}, frames=5)
    trainer = Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="frames=5 but the DataModule gives frames=4"):
        trainer.fit(model, datamodule=data)


def test_needs_dims_and_frames(make_random_dataset):
    with pytest.raises(ValueError, match="fills them from the dataset card"):
        SyncNet()
    no_frames = make_random_dataset("no_frames_av", frame_size=0, clip_frames={"train": [20, 20], "val": [20]})
    with pytest.raises(ValueError, match="without them"):
        AudioVisualDataModule(no_frames, batch_size=4).setup("fit")
