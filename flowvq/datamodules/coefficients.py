"""Windows of coefficient sequences with their audio: the input of ExpFlow, PoseFlow, GMEG and the classifier."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from einops import rearrange

from flowvq.data.audio import frame_envelope
from flowvq.data.schema import OPTIONAL_FIELDS, num_frames
from flowvq.datamodules.base import SILENCE_LOG_MEL, ClipDataModule, Normalizer, sample_rng

__all__ = ["CoefficientDataModule", "WindowSampler", "window_starts"]


def window_starts(frames: int, window: int, count: int, rng: np.random.Generator | None = None) -> list[int]:
    """Start frames of ``count`` windows of ``window`` frames in a clip of ``frames`` frames.

    With ``rng``: uniform random starts (training). Without: fixed starts, the centred window
    for ``count == 1`` and evenly spaced windows from the first to the last frame otherwise.
    A clip shorter than the window always starts at 0 (the window is padded).
    """
    room = frames - window
    if room <= 0:
        return [0] * count
    if rng is not None:
        return [int(s) for s in rng.integers(0, room + 1, size=count)]
    if count == 1:
        return [room // 2]
    return [int(round(s)) for s in np.linspace(0, room, count)]


@dataclass
class WindowSampler:
    """Cuts ``count`` windows of ``window`` frames from a clip record (picklable for workers).

    Arguments:
        window: W frames per window.
        audio_context: frames of audio either side of each frame in its mel window.
        prev_frames: Kp frames of exp and pose before the window.
        count: windows per clip.
        normalizer: the card's train statistics.
        seed: run seed.
        random: random starts (train) or fixed starts (val/test).
        skip_short: mark windows of clips shorter than ``window`` to be left out of the batch.
        sample_rate, fps: of the dataset, for the audio envelope.
    """

    window: int
    audio_context: int
    prev_frames: int
    count: int
    normalizer: Normalizer
    seed: int
    random: bool
    skip_short: bool = False
    sample_rate: int = 16000
    fps: float = 25.0

    def __call__(self, record: dict, epoch: int) -> list[dict[str, Any]]:
        frames = num_frames(record)
        rng = sample_rng(self.seed, record["clip_id"], epoch) if self.random else None
        envelope = frame_envelope(record["audio"], frames, self.sample_rate, self.fps)  # (T,)
        exp = self.normalizer.normalize("exp", record["exp"])  # (T, E)
        pose = self.normalizer.normalize("pose", record["pose"])  # (T, P)
        # the optional fields the dataset carries: blink (T,) -> (T, 1), gaze (T, 2)
        extra = {
            name: self.normalizer.normalize(name, np.asarray(record[name], np.float32).reshape(frames, -1))
            for name in OPTIONAL_FIELDS
            if name in record
        }
        keep = not (self.skip_short and frames < self.window)
        return [
            self.cut(record, start, frames, exp, pose, envelope, keep, extra)
            for start in window_starts(frames, self.window, self.count, rng)
        ]

    def cut(
        self,
        record: dict,
        start: int,
        frames: int,
        exp: np.ndarray,
        pose: np.ndarray,
        envelope: np.ndarray,
        keep: bool,
        extra: dict[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        window, context, previous = self.window, self.audio_context, self.prev_frames
        index = start + np.arange(window)  # (W,) frame of each window position
        valid = index < frames  # (W,) False on the padding of a short clip
        taken = index[valid]

        def padded(values: np.ndarray, fill: float = 0.0) -> np.ndarray:
            out = np.full((window, *values.shape[1:]), fill, dtype=np.float32)
            out[valid] = values[taken]
            return out

        # audio window of every frame: frames t - context .. t + context, silence outside the clip
        around = index[:, None] + np.arange(-context, context + 1)[None, :]  # (W, 2c+1)
        inside = (around >= 0) & (around < frames)
        mel = np.full((window, 2 * context + 1, *record["mel"].shape[1:]), SILENCE_LOG_MEL, dtype=np.float32)
        mel[inside] = record["mel"][around[inside]]  # (W, 2c+1, K, M)
        mel = self.normalizer.normalize("mel", rearrange(mel, "w c k m -> w (c k) m"))  # (W, C, M)

        before = start - previous + np.arange(previous)  # (Kp,) frames before the window
        prev_mask = before >= 0
        prev_exp = np.zeros((previous, exp.shape[1]), dtype=np.float32)
        prev_pose = np.zeros((previous, pose.shape[1]), dtype=np.float32)
        prev_exp[prev_mask] = exp[before[prev_mask]]
        prev_pose[prev_mask] = pose[before[prev_mask]]
        fields: dict[str, np.ndarray] = {}
        for name, values in (extra or {}).items():  # values (T, d): blink d=1, gaze d=2
            previous_values = np.zeros((previous, values.shape[1]), dtype=np.float32)
            previous_values[prev_mask] = values[before[prev_mask]]
            window_values = padded(values)
            if name == "blink":  # a track, as in the record
                window_values, previous_values = window_values[:, 0], previous_values[:, 0]
            fields[name], fields[f"prev_{name}"] = window_values, previous_values
        return {
            **fields,
            "exp": padded(exp),
            "pose": padded(pose),
            "mel": mel.astype(np.float32),
            "energy": padded(envelope),
            "prev_exp": prev_exp,
            "prev_pose": prev_pose,
            "prev_mask": prev_mask,
            "mask": valid,
            "emotion": int(record["emotion"]),
            "intensity": int(record["intensity"]),
            "start": int(start),
            "clip_id": record["clip_id"],
            "speaker": record["speaker"],
            "_keep": keep,
        }


class CoefficientDataModule(ClipDataModule):
    """Windows of W frames of exp and pose with the aligned audio, from clip shards.

    Batch (normalised with the card's train statistics)::

        exp [B, W, E], pose [B, W, P]          the window; zeros past the end of a short clip
        blink [B, W], gaze [B, W, 2]           where the dataset carries them (card.fields)
        mel [B, W, C, M]                       log-mel around each frame, C = (2 * audio_context + 1) * K
        energy [B, W]                          audio RMS per frame (not normalised), for lip-sync metrics
        prev_exp [B, Kp, E], prev_pose [B, Kp, P], prev_mask [B, Kp] (and prev_blink, prev_gaze)
                                               the frames before the window (zeros, mask False, before the clip)
        mask [B, W] bool                       valid frames
        emotion, intensity, start [B] long; clip_id, speaker list[str]

    Training windows start at a random frame, drawn anew each epoch (seeded by seed, epoch and
    clip); val/test windows are fixed (the centred window, or ``windows_per_clip`` evenly spaced
    ones), so validation scores compare across epochs.

    Clips shorter than W are padded and masked by default (``short_clips="pad"``): every clip
    then yields the same number of windows, so every batch is full and every DDP rank takes as
    many steps. ``"skip"`` leaves their windows out of the batch instead (batches then vary in
    size and can even be empty when a batch holds only short clips; models must handle that).

    Arguments:
        root: dataset root.
        window: W frames per window.
        audio_context: frames of audio either side of each frame in its mel window.
        prev_frames: Kp frames of exp/pose before the window (the autoregressive context).
        batch_size: windows per batch; a multiple of ``windows_per_clip``.
        num_workers: dataloader worker processes.
        windows_per_clip: windows drawn from each clip per epoch (more for small datasets).
        short_clips: ``"pad"`` or ``"skip"``, see above.
        seed, shuffle, eval_drop_last, pin_memory: see :class:`~flowvq.datamodules.base.ClipDataModule`.
    """

    def __init__(
        self,
        root: str | Path,
        window: int = 32,
        audio_context: int = 2,
        prev_frames: int = 4,
        batch_size: int = 32,
        num_workers: int = 0,
        windows_per_clip: int = 1,
        short_clips: Literal["pad", "skip"] = "pad",
        seed: int = 0,
        shuffle: bool = True,
        eval_drop_last: bool | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(root, batch_size, num_workers, seed, shuffle, eval_drop_last, pin_memory)
        if window < 1 or audio_context < 0 or prev_frames < 0 or windows_per_clip < 1:
            raise ValueError(
                f"CoefficientDataModule: need window >= 1, audio_context >= 0, prev_frames >= 0 and "
                f"windows_per_clip >= 1; got {window}, {audio_context}, {prev_frames}, {windows_per_clip}"
            )
        if short_clips not in ("pad", "skip"):
            raise ValueError(f"CoefficientDataModule: short_clips={short_clips!r}, expected 'pad' or 'skip'")
        self.window = window
        self.audio_context = audio_context
        self.prev_frames = prev_frames
        self.windows_per_clip = windows_per_clip
        self.items_per_clip = windows_per_clip
        self.short_clips = short_clips
        self.save_hyperparameters()

    @property
    def mel_channels(self) -> int:
        """C, the mel columns per frame of a batch: (2 * audio_context + 1) * K."""
        return (2 * self.audio_context + 1) * self.card.audio.mel_per_frame

    def make_sampler(self, split: str) -> WindowSampler:
        return WindowSampler(
            window=self.window,
            audio_context=self.audio_context,
            prev_frames=self.prev_frames,
            count=self.windows_per_clip,
            normalizer=self.normalizer,
            seed=self.seed,
            random=split == "train",
            skip_short=self.short_clips == "skip",
            sample_rate=self.card.audio.sample_rate,
            fps=self.card.fps,
        )
