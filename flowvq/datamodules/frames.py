"""Face frames from clip shards: single frames (VQGAN codebook) and source/target pairs (VQIG, head generators)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowvq.data.schema import num_frames
from flowvq.datamodules.augment import color_jitter
from flowvq.datamodules.base import ClipDataModule, Normalizer, decode_frame, flip_landmarks, sample_rng

__all__ = ["FrameDataModule", "FramePairDataModule", "FramePairSampler", "FrameSampler"]


@dataclass
class _FrameReader:
    """Decodes one frame with its coefficients and landmarks (picklable for workers)."""

    normalizer: Normalizer
    frame_size: int
    image_size: int
    seed: int
    random: bool

    def frame(self, record: dict, index: int) -> dict[str, Any]:
        scale = self.image_size / self.frame_size
        return {
            "image": decode_frame(record, index, self.frame_size, self.image_size),  # (H, W, 3) uint8
            "exp": self.normalizer.normalize("exp", record["exp"][index]).astype(np.float32),
            "pose": self.normalizer.normalize("pose", record["pose"][index]).astype(np.float32),
            "landmarks": (record["landmarks"][index] * scale).astype(np.float32),
            "frame": int(index),
        }

    @staticmethod
    def labels(record: dict) -> dict[str, Any]:
        return {
            "emotion": int(record["emotion"]),
            "intensity": int(record["intensity"]),
            "clip_id": record["clip_id"],
            "speaker": record["speaker"],
        }


@dataclass
class FrameSampler(_FrameReader):
    """``count`` frames of a clip: random ones for training, evenly spaced ones otherwise.

    Arguments:
        count: frames per clip.
        flip: flip each training frame horizontally with probability 1/2.
        jitter: strength of the random colour transform of each training frame
            (see :func:`~flowvq.datamodules.augment.color_jitter`; 0 = off).
    """

    count: int = 1
    flip: bool = False
    jitter: float = 0.0

    def __call__(self, record: dict, epoch: int) -> list[dict[str, Any]]:
        frames = num_frames(record)
        if self.random:
            rng = sample_rng(self.seed, record["clip_id"], epoch)
            indices = rng.choice(frames, size=self.count, replace=frames < self.count)
        else:
            rng = None
            indices = np.linspace(0, frames - 1, self.count).round().astype(int)
        samples = []
        for index in indices:
            sample = {**self.frame(record, int(index)), **self.labels(record)}
            flipped = bool(self.flip and rng is not None and rng.random() < 0.5)
            if flipped:
                sample["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
                sample["landmarks"] = flip_landmarks(sample["landmarks"], self.image_size)
            if self.jitter and rng is not None:
                (sample["image"],) = color_jitter([sample["image"]], rng, self.jitter)
            sample["flipped"] = flipped
            samples.append(sample)
        return samples


@dataclass
class FramePairSampler(_FrameReader):
    """``count`` (source, target) frame pairs of a clip, two different frames where the clip has them.

    Arguments:
        count: pairs per clip.
        jitter: strength of a random colour transform shared by the two frames of a training
            pair (see :func:`~flowvq.datamodules.augment.color_jitter`; 0 = off).
    """

    count: int = 1
    jitter: float = 0.0

    def __call__(self, record: dict, epoch: int) -> list[dict[str, Any]]:
        frames = num_frames(record)
        # val/test pairs are drawn once per clip (no epoch in the seed), so they stay fixed
        rng = sample_rng(self.seed, record["clip_id"], epoch if self.random else None)
        samples = []
        for _ in range(self.count):
            source = int(rng.integers(frames))
            target = int((source + rng.integers(1, frames)) % frames) if frames > 1 else source
            pair: dict[str, Any] = {}
            for role, index in (("source", source), ("target", target)):
                frame = self.frame(record, index)
                pair[role] = frame.pop("image")
                pair.update({f"{role}_{key}": value for key, value in frame.items()})
            if self.jitter and self.random:
                pair["source"], pair["target"] = color_jitter([pair["source"], pair["target"]], rng, self.jitter)
            samples.append({**pair, **self.labels(record)})
        return samples


def _check_jitter(who: str, strength: float) -> float:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"{who}: color_jitter={strength} must be in [0, 1] (0 = off, 1 = any hue)")
    return float(strength)


class _FrameModule(ClipDataModule):
    """Shared by the frame DataModules: refuses coefficient-only datasets and sizes the images."""

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        num_workers: int,
        image_size: int | None,
        seed: int,
        shuffle: bool,
        eval_drop_last: bool | None,
        pin_memory: bool,
    ) -> None:
        super().__init__(root, batch_size, num_workers, seed, shuffle, eval_drop_last, pin_memory)
        if image_size is not None and image_size < 1:
            raise ValueError(f"{type(self).__name__}: image_size={image_size} must be positive (or None)")
        self._image_size = image_size

    @property
    def image_size(self) -> int:
        """Side of the square images of a batch: ``image_size`` or the card's ``frame_size``."""
        return self._image_size or self.card.frame_size

    def check(self) -> None:
        super().check()
        if not self.card.has_frames:
            raise ValueError(
                f"{type(self).__name__} needs face frames, but the dataset at {str(self.root)!r} "
                f"({self.card.name!r}) was written without them (frame_size = 0 in its dataset.json). "
                f"Re-create it with frames: `flowvq synth --out {self.root} --overwrite` or the "
                "`flowvq preprocess ...` command that made it, without `--frames false` (frames are on by "
                "default); or use CoefficientDataModule for coefficient-only models"
            )

    def _reader_args(self, split: str) -> dict[str, Any]:
        return {
            "normalizer": self.normalizer,
            "frame_size": self.card.frame_size,
            "image_size": self.image_size,
            "seed": self.seed,
            "random": split == "train",
        }


class FramePairDataModule(_FrameModule):
    """Source and target frames of one speaker with their coefficients and landmarks.

    Both frames of a pair come from the same clip (so the same speaker, emotion and intensity,
    as in VQIG's and the head generators' training on MEAD, where the source gives identity
    and the target's coefficients drive the motion). Only the two JPEGs of a pair are decoded.

    Batch::

        source, target [B, 3, H, W] float in [-1, 1]
        source_exp, target_exp [B, E]; source_pose, target_pose [B, P]   (normalised)
        source_landmarks, target_landmarks [B, 68, 2]                    (pixels of the H x W image)
        source_frame, target_frame [B] long; emotion, intensity [B] long; clip_id, speaker list[str]

    Arguments:
        root: dataset root (with frames).
        batch_size: pairs per batch; a multiple of ``pairs_per_clip``.
        num_workers: dataloader worker processes.
        image_size: resize the frames to this side (landmarks scaled to match); default the
            card's ``frame_size``.
        pairs_per_clip: pairs drawn from each clip per epoch (random for train, fixed for val/test).
        color_jitter: strength in [0, 1] of a random colour transform (hue, saturation,
            brightness) shared by both frames of a training pair; 0 = off. See
            :mod:`flowvq.datamodules.augment`.
        seed, shuffle, eval_drop_last, pin_memory: see :class:`~flowvq.datamodules.base.ClipDataModule`.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 16,
        num_workers: int = 0,
        image_size: int | None = None,
        pairs_per_clip: int = 1,
        color_jitter: float = 0.0,
        seed: int = 0,
        shuffle: bool = True,
        eval_drop_last: bool | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(root, batch_size, num_workers, image_size, seed, shuffle, eval_drop_last, pin_memory)
        if pairs_per_clip < 1:
            raise ValueError(f"FramePairDataModule: pairs_per_clip={pairs_per_clip} must be >= 1")
        self.pairs_per_clip = pairs_per_clip
        self.items_per_clip = pairs_per_clip
        self.color_jitter = _check_jitter(type(self).__name__, color_jitter)
        self.save_hyperparameters()

    def make_sampler(self, split: str) -> FramePairSampler:
        return FramePairSampler(**self._reader_args(split), count=self.pairs_per_clip, jitter=self.color_jitter)


class FrameDataModule(_FrameModule):
    """Single face frames with their coefficients and landmarks, for codebook (VQGAN) training.

    Batch::

        image [B, 3, H, W] float in [-1, 1]
        exp [B, E], pose [B, P] (normalised); landmarks [B, 68, 2] (pixels of the H x W image)
        flipped [B] bool; frame, emotion, intensity [B] long; clip_id, speaker list[str]

    With ``flip``, each training frame is mirrored with probability 1/2: the image and the
    landmarks (re-indexed with the iBUG mirror permutation, so point 48 stays the left mouth
    corner). ``exp`` and ``pose`` stay those of the unflipped frame (a mirrored face has no
    defined coefficients in every coefficient source); ``flipped`` says which frames were mirrored.

    Arguments:
        root: dataset root (with frames).
        batch_size: frames per batch; a multiple of ``frames_per_clip``.
        num_workers: dataloader worker processes.
        image_size: resize to this side (landmarks scaled to match); default the card's ``frame_size``.
        frames_per_clip: frames drawn from each clip per epoch (random for train, evenly spaced for val/test).
        flip: random horizontal flips of training frames.
        color_jitter: strength in [0, 1] of a random colour transform (hue, saturation,
            brightness) of each training frame; 0 = off. A codebook trained on few identities
            needs it to reproduce the colours of unseen ones (see :mod:`flowvq.datamodules.augment`).
        seed, shuffle, eval_drop_last, pin_memory: see :class:`~flowvq.datamodules.base.ClipDataModule`.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int | None = None,
        frames_per_clip: int = 4,
        flip: bool = False,
        color_jitter: float = 0.0,
        seed: int = 0,
        shuffle: bool = True,
        eval_drop_last: bool | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(root, batch_size, num_workers, image_size, seed, shuffle, eval_drop_last, pin_memory)
        if frames_per_clip < 1:
            raise ValueError(f"FrameDataModule: frames_per_clip={frames_per_clip} must be >= 1")
        self.frames_per_clip = frames_per_clip
        self.items_per_clip = frames_per_clip
        self.flip = flip
        self.color_jitter = _check_jitter(type(self).__name__, color_jitter)
        self.save_hyperparameters()

    def make_sampler(self, split: str) -> FrameSampler:
        return FrameSampler(
            **self._reader_args(split),
            count=self.frames_per_clip,
            flip=self.flip and split == "train",
            jitter=self.color_jitter if split == "train" else 0.0,
        )
