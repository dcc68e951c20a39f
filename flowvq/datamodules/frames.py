"""Face frames from clip shards: single frames (VQGAN codebook) and source/target pairs (VQIG, head generators).

One speaker's frames (``speaker``): the person-specific head generators (GMTalker's StyleUNet)
train on one person's video, so the split is by clip within that speaker rather than the
card's split by speaker. The speaker's clips are gathered from whichever card split lists the
speaker (``dataset.json`` ``speakers``); every ``holdout_every``-th take is held out
(:func:`held_out_clip`) and serves as both ``val`` and ``test``; the others are ``train``.
The rule is the one ``benchmarks/vq_ladder.py`` uses, so a VQIG and a StyleUNet trained on
the same speaker are scored on the same clips.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from flowvq.data.card import DatasetError
from flowvq.data.schema import num_frames
from flowvq.data.shards import ClipShards
from flowvq.datamodules.augment import color_jitter
from flowvq.datamodules.base import (
    ClipDataModule,
    Normalizer,
    collate_samples,
    decode_frame,
    flip_landmarks,
    sample_rng,
)

__all__ = [
    "FrameDataModule",
    "FramePairDataModule",
    "FramePairSampler",
    "FrameSampler",
    "SpeakerClips",
    "held_out_clip",
]


def held_out_clip(clip_id: str, position: int, every: int) -> bool:
    """Whether a clip of a single-speaker split is held out (val/test) rather than trained on.

    The take number is the clip id's trailing integer (SynthTalk's ``M001_happy_level2_015``,
    MEAD's ``..._001``): every ``every``-th take (take % every == 0) is held out. Clip ids
    without a trailing number use the clip's ``position`` among the speaker's clips sorted by id.
    """
    match = re.search(r"(\d+)$", clip_id)
    take = int(match.group(1)) if match else position
    return take % every == 0


class SpeakerClips(Dataset):
    """Map-style dataset of some clips of a dataset root, each item the samples of one clip.

    Items are read from the clip shards by (split, index). Index ``epoch * len(clips) + i`` is
    clip ``i`` sampled for loader epoch ``epoch + 1`` (see :class:`_EpochSampler`), so training
    samples change every epoch and are seeded by the clip and epoch only, as in
    :class:`~flowvq.datamodules.base.SampledShards`.
    """

    def __init__(self, root: Path, locations: list[tuple[str, int]], sampler: Any) -> None:
        self.root, self.locations, self.sampler = Path(root), list(locations), sampler
        self._shards: dict[str, ClipShards] = {}

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        epoch, item = divmod(int(index), len(self.locations))
        split, position = self.locations[item]
        if split not in self._shards:
            self._shards[split] = ClipShards(self.root, split)
        return self.sampler(self._shards[split][position], epoch + 1)

    def __getstate__(self) -> dict[str, Any]:  # workers open their own shard readers
        return {**self.__dict__, "_shards": {}}


class _EpochSampler(DistributedSampler):
    """A DistributedSampler whose indices carry the epoch (``index + epoch * len(dataset)``)."""

    def __iter__(self):
        offset = self.epoch * len(self.dataset)
        return (int(index) + offset for index in super().__iter__())


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
    """Shared by the frame DataModules: refuses coefficient-only datasets, sizes the images and
    restricts them to one speaker (``speaker``; see the module docstring)."""

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
        speaker: str | None = None,
        holdout_every: int = 5,
    ) -> None:
        super().__init__(root, batch_size, num_workers, seed, shuffle, eval_drop_last, pin_memory)
        if image_size is not None and image_size < 1:
            raise ValueError(f"{type(self).__name__}: image_size={image_size} must be positive (or None)")
        if holdout_every < 2:
            raise ValueError(
                f"{type(self).__name__}: holdout_every={holdout_every} must be >= 2 (1 holds out every clip)"
            )
        self._image_size = image_size
        self.speaker = speaker
        self.holdout_every = int(holdout_every)
        self._speaker_clips: dict[str, list[tuple[str, int]]] | None = None
        self._speaker_loaders: dict[str, DataLoader] = {}

    # ---------------------------------------------------------------- one speaker

    def speaker_clips(self) -> dict[str, list[tuple[str, int]]]:
        """``{"train": [...], "val": [...], "test": [...]}``: (card split, index) of the speaker's clips.

        Raises:
            ValueError: the speaker is not in the dataset (the message lists its speakers), or
                it has too few clips to hold one out.
        """
        if self._speaker_clips is not None:
            return self._speaker_clips
        card = self.card
        speakers = card.all_speakers
        if self.speaker not in speakers:
            raise ValueError(
                f"{type(self).__name__}: speaker={self.speaker!r} is not in the dataset at {str(self.root)!r}; "
                f"its speakers are {', '.join(speakers) or '(none listed in dataset.json)'}. "
                "Set data.init_args.speaker to one of them"
            )
        found: list[tuple[str, str, int]] = []
        for split in card.splits:
            if self.speaker not in card.speakers.get(split, []):
                continue
            shards = ClipShards(self.root, split, validate=False)
            for index in range(len(shards)):
                record = shards[index]
                if record["speaker"] == self.speaker:
                    found.append((record["clip_id"], split, index))
        found.sort()
        held = [held_out_clip(clip, position, self.holdout_every) for position, (clip, _, _) in enumerate(found)]
        train = [(split, index) for (_, split, index), h in zip(found, held) if not h]
        evaluation = [(split, index) for (_, split, index), h in zip(found, held) if h]
        if not train or not evaluation:
            raise DatasetError(
                f"{type(self).__name__}: speaker {self.speaker!r} has {len(found)} clips in {str(self.root)!r}: "
                f"holding out every {self.holdout_every}th take leaves {len(train)} to train on and "
                f"{len(evaluation)} to score; it needs at least one of each (lower holdout_every, or pick a "
                "speaker with more clips)"
            )
        self._speaker_clips = {"train": train, "val": evaluation, "test": evaluation}
        return self._speaker_clips

    def _distribution(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def loader(self, split: str) -> Any:
        if self.speaker is None:
            return super().loader(split)
        if split in self._speaker_loaders:
            return self._speaker_loaders[split]
        self.check()
        train = split == "train"
        world, rank = self._distribution()
        dataset = SpeakerClips(self.root, self.speaker_clips()[split], self.make_sampler(split))
        drop_last = True if train else (self.eval_drop_last if self.eval_drop_last is not None else world > 1)
        if train and len(dataset) // world < self.clips_per_batch:
            raise DatasetError(
                f"{type(self).__name__}: speaker {self.speaker!r} has {len(dataset)} training clips, fewer than "
                f"{self.clips_per_batch} clips per batch x {world} devices: lower batch_size"
            )
        sampler = _EpochSampler(
            dataset, num_replicas=world, rank=rank, shuffle=self.shuffle and train, seed=self.seed, drop_last=drop_last
        )
        loader = DataLoader(
            dataset,
            batch_size=self.clips_per_batch,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.seed),
        )
        self._speaker_loaders[split] = loader
        return loader

    def train_dataloader(self) -> Any:
        if self.speaker is None:
            return super().train_dataloader()
        return self.loader("train")  # the epoch comes from Lightning's sampler.set_epoch, also on resume

    def setup(self, stage: str | None = None) -> None:
        if self.speaker is None:
            return super().setup(stage)
        self.card  # noqa: B018
        self.normalizer  # noqa: B018
        self.check()
        self.speaker_clips()

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
        speaker: only this speaker's frames, split by clip within the speaker (every
            ``holdout_every``-th take held out for val and test; see the module docstring);
            ``None``: every speaker, the card's splits.
        holdout_every: with ``speaker``: hold out takes whose number is a multiple of this.
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
        speaker: str | None = None,
        holdout_every: int = 5,
    ) -> None:
        super().__init__(
            root, batch_size, num_workers, image_size, seed, shuffle, eval_drop_last, pin_memory, speaker, holdout_every
        )
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
        speaker: only this speaker's frames, split by clip within the speaker (every
            ``holdout_every``-th take held out for val and test; see the module docstring);
            ``None``: every speaker, the card's splits.
        holdout_every: with ``speaker``: hold out takes whose number is a multiple of this.
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
        speaker: str | None = None,
        holdout_every: int = 5,
    ) -> None:
        super().__init__(
            root, batch_size, num_workers, image_size, seed, shuffle, eval_drop_last, pin_memory, speaker, holdout_every
        )
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
