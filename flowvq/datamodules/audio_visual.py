"""Windows of mouth crops with the audio around them: the input of SyncNet.

Each sample is ``frames`` consecutive video frames, cropped around the mouth with the
record's landmarks (:func:`~flowvq.data.mouth.mouth_crops`), and the log-mel of the same
frames plus ``max_shift`` frames either side, so that the model can cut the aligned audio
window and time-shifted ones (its negatives) from one array. Audio outside the clip is silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange

from flowvq.data.mouth import mouth_crops
from flowvq.data.schema import num_frames
from flowvq.datamodules.base import SILENCE_LOG_MEL, ClipDataModule, decode_frame, sample_rng
from flowvq.datamodules.coefficients import window_starts

__all__ = ["AudioVisualDataModule", "AudioVisualSampler", "padded_mel"]


def padded_mel(mel: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Mel frames ``start..stop`` of ``mel [T, K, M]`` as ``[(stop - start) * K, M]`` columns,
    silence (:data:`SILENCE_LOG_MEL`) outside the clip."""
    frames, per_frame, bins = mel.shape
    out = np.full((stop - start, per_frame, bins), SILENCE_LOG_MEL, dtype=np.float32)
    lo, hi = max(start, 0), min(stop, frames)
    if hi > lo:
        out[lo - start : hi - start] = mel[lo:hi]
    return rearrange(out, "t k m -> (t k) m")


@dataclass
class AudioVisualSampler:
    """``count`` windows of a clip (picklable for workers).

    Arguments:
        frames: video frames per window.
        max_shift: frames of audio either side of the window.
        count: windows per clip (random starts for training, evenly spaced otherwise).
        frame_size: the card's frame side; crop_size, mouth_scale: of the mouth crops.
        seed: run seed; random: training sampling.
    """

    frames: int
    max_shift: int
    count: int
    frame_size: int
    crop_size: int
    mouth_scale: float
    seed: int
    random: bool

    def __call__(self, record: dict, epoch: int) -> list[dict[str, Any]]:
        total = num_frames(record)
        rng = sample_rng(self.seed, record["clip_id"], epoch) if self.random else None
        samples = []
        for start in window_starts(total, self.frames, self.count, rng):
            # a clip shorter than the window repeats its last frame
            indices = [min(start + i, total - 1) for i in range(self.frames)]
            images = np.stack([decode_frame(record, i, self.frame_size, self.frame_size) for i in indices])
            crops = mouth_crops(images, record["landmarks"][indices], self.crop_size, self.mouth_scale)
            mouth = rearrange(crops, "f h w c -> f c h w").astype(np.float32) / 127.5 - 1.0
            samples.append(
                {
                    "mouth": mouth,  # (F, 3, h, w) in [-1, 1]
                    "mel": padded_mel(record["mel"], start - self.max_shift, start + self.frames + self.max_shift),
                    "start": int(start),
                    "emotion": int(record["emotion"]),
                    "clip_id": record["clip_id"],
                    "speaker": record["speaker"],
                }
            )
        return samples


class AudioVisualDataModule(ClipDataModule):
    """Mouth-crop windows and their audio, for SyncNet.

    Batch::

        mouth [B, F, 3, h, w] float in [-1, 1]      (F = frames, h = w = crop_size)
        mel [B, (F + 2 S) * K, M] raw log-mel        (S = max_shift; the window's own audio is
                                                      columns S*K .. (S+F)*K)
        start, emotion [B] long; clip_id, speaker list[str]

    Arguments:
        root: dataset root (with frames).
        batch_size: windows per batch; a multiple of ``windows_per_clip``.
        num_workers: dataloader worker processes.
        frames: video frames per window (5 in SyncNet: 0.2 s at 25 fps).
        max_shift: audio frames either side of the window (the largest time shift of a negative).
        windows_per_clip: windows drawn from each clip per epoch.
        crop_size: side of the mouth crops in pixels.
        mouth_scale: crop side over mouth width.
        seed, shuffle, eval_drop_last, pin_memory: see :class:`~flowvq.datamodules.base.ClipDataModule`.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 32,
        num_workers: int = 0,
        frames: int = 5,
        max_shift: int = 15,
        windows_per_clip: int = 4,
        crop_size: int = 48,
        mouth_scale: float = 1.8,
        seed: int = 0,
        shuffle: bool = True,
        eval_drop_last: bool | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(root, batch_size, num_workers, seed, shuffle, eval_drop_last, pin_memory)
        for name, value, least in (("frames", frames, 1), ("max_shift", max_shift, 1), ("crop_size", crop_size, 8)):
            if value < least:
                raise ValueError(f"AudioVisualDataModule: {name}={value} must be >= {least}")
        if windows_per_clip < 1:
            raise ValueError(f"AudioVisualDataModule: windows_per_clip={windows_per_clip} must be >= 1")
        if mouth_scale <= 0:
            raise ValueError(f"AudioVisualDataModule: mouth_scale={mouth_scale} must be positive")
        self.frames = int(frames)
        self.max_shift = int(max_shift)
        self.crop_size = int(crop_size)
        self.mouth_scale = float(mouth_scale)
        self.items_per_clip = int(windows_per_clip)
        self.save_hyperparameters()

    def check(self) -> None:
        super().check()
        if not self.card.has_frames:
            raise ValueError(
                f"AudioVisualDataModule needs face frames, but the dataset at {str(self.root)!r} "
                f"({self.card.name!r}) was written without them (frame_size = 0 in its dataset.json); "
                f"re-create it with frames: `flowvq synth --out {self.root} --overwrite` (frames are on by default)"
            )

    def make_sampler(self, split: str) -> AudioVisualSampler:
        return AudioVisualSampler(
            frames=self.frames,
            max_shift=self.max_shift,
            count=self.items_per_clip,
            frame_size=self.card.frame_size,
            crop_size=self.crop_size,
            mouth_scale=self.mouth_scale,
            seed=self.seed,
            random=split == "train",
        )
