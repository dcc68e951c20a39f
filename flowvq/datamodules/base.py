"""What the flowvq DataModules share: card loading, normalisation, sampling from clip shards, loaders.

Every DataModule reads the litdata clip shards of a dataset root through :class:`SampledShards`,
a :class:`~flowvq.data.shards.ClipShards` that turns each clip record into a fixed number of
training samples (windows, frame pairs, frames). Batches are formed of whole clips
(``batch_size // items_per_clip`` clips per batch), which keeps three properties that matter
under DDP:

- each rank reads a disjoint part of the clips (litdata splits the clips across ranks and
  dataloader workers);
- with ``drop_last`` every rank and worker gets the same whole number of batches, so no rank
  waits forever in a collective at the end of an epoch;
- a sample's randomness is seeded by ``(seed, epoch, clip_id)``, never by the rank or worker
  that reads it, so a run is reproducible whatever the number of devices and workers.

litdata reshuffles which chunk goes to which rank every epoch, but splits a chunk between
ranks by position: a split that fits in one chunk (64 MB, a few hundred coefficient clips)
gives each rank the same clips every epoch, in a new order. The gradient is averaged over
ranks, so every epoch still sees every clip once.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from lightning.pytorch import LightningDataModule
from litdata import StreamingDataLoader
from litdata.streaming.shuffle import FullShuffle, WindowShuffle
from PIL import Image

from flowvq.data.card import DatasetCard, DatasetError, Stats
from flowvq.data.schema import RecordError, unpack_frame
from flowvq.data.shards import ClipShards

__all__ = [
    "IBUG_MIRROR",
    "SILENCE_LOG_MEL",
    "ClipDataModule",
    "Normalizer",
    "SampledShards",
    "collate_samples",
    "decode_frame",
    "flip_landmarks",
    "sample_rng",
]

#: ``log_mel`` floors the mel power at 1e-5: the value of silence, used for audio outside a clip.
SILENCE_LOG_MEL: float = float(np.log(1e-5))


def _ibug_mirror() -> tuple[int, ...]:
    """Index permutation of the iBUG-68 landmarks under a horizontal flip (left <-> right)."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw line 0..16, chin 8 on the axis
    pairs += [(17 + i, 26 - i) for i in range(5)]  # eyebrows 17..21 <-> 26..22
    pairs += [(31, 35), (32, 34)]  # nostrils; bridge 27..30 and tip 33 on the axis
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lips; 51, 57 on the axis
    pairs += [(60, 64), (61, 63), (67, 65)]  # inner lips; 62, 66 on the axis
    mirror = list(range(68))
    for a, b in pairs:
        mirror[a], mirror[b] = b, a
    return tuple(mirror)


#: ``IBUG_MIRROR[i]``: the landmark that point ``i`` becomes in a horizontally flipped image.
IBUG_MIRROR: tuple[int, ...] = _ibug_mirror()


def flip_landmarks(landmarks: np.ndarray, width: float) -> np.ndarray:
    """Landmarks ``(..., 68, 2)`` of the horizontally flipped image of ``width`` pixels.

    Coordinates are continuous pixel positions with the image spanning ``[0, width]`` (the
    convention of landmarks scaled from normalised ``[0, 1]`` detector output), so ``x -> width - x``;
    the points are re-indexed so that, e.g., the left mouth corner stays point 48.
    """
    flipped = landmarks[..., IBUG_MIRROR, :].copy()
    flipped[..., 0] = width - flipped[..., 0]
    return flipped


def sample_rng(seed: int, clip_id: str, epoch: int | None = None) -> np.random.Generator:
    """A generator seeded by the run seed, the clip and (for training) the epoch; not by rank or worker."""
    key = [int(seed) & 0xFFFFFFFF, zlib.crc32(clip_id.encode())]
    if epoch is not None:
        key.append(int(epoch))
    return np.random.default_rng(key)


class Normalizer:
    """Standardises exp, pose and mel (and blink and gaze, where the card has their statistics)
    per dimension with a dataset card's train statistics.

    Works on numpy arrays and torch tensors alike; the statistics broadcast over the last
    dimension (E, P, M; blink's one value and gaze's two likewise).

    Arguments:
        stats: the card's train-split statistics.
    """

    NAMES = ("exp", "pose", "mel", "blink", "gaze")

    def __init__(self, stats: Stats) -> None:
        have = [name for name in self.NAMES if getattr(stats, f"{name}_mean", None) is not None]
        self.mean = {name: np.asarray(getattr(stats, f"{name}_mean"), dtype=np.float32) for name in have}
        self.std = {name: np.asarray(getattr(stats, f"{name}_std"), dtype=np.float32) for name in have}

    @classmethod
    def from_card(cls, card: DatasetCard, root: str | Path | None = None) -> Normalizer:
        if card.stats is None:
            where = f" at {str(root)!r}" if root is not None else ""
            raise DatasetError(
                f"the dataset card of {card.name!r}{where} has no train statistics: it was not written by "
                "`flowvq.data.shards.write_dataset`; re-create the dataset with `flowvq synth` or `flowvq preprocess`"
            )
        return cls(card.stats)

    def _moments(self, name: str, like: Any) -> tuple[Any, Any]:
        if name not in self.mean:
            raise KeyError(f"unknown normalised quantity {name!r}: expected one of {tuple(self.mean)}")
        mean, std = self.mean[name], self.std[name]
        if isinstance(like, torch.Tensor):
            return torch.as_tensor(mean, device=like.device, dtype=like.dtype), torch.as_tensor(
                std, device=like.device, dtype=like.dtype
            )
        return mean, std

    def normalize(self, name: str, value: Any) -> Any:
        """``(value - mean) / std`` of quantity ``name`` (exp, pose or mel)."""
        mean, std = self._moments(name, value)
        return (value - mean) / std

    def denormalize(self, name: str, value: Any) -> Any:
        """Inverse of :meth:`normalize`: back to the dataset's units."""
        mean, std = self._moments(name, value)
        return value * std + mean


def decode_frame(record: dict, index: int, frame_size: int, image_size: int) -> np.ndarray:
    """Decode frame ``index`` of a record to uint8 ``(image_size, image_size, 3)``.

    Only this one JPEG is decoded; when shrinking by 2x or more, libjpeg's DCT-domain scaling
    (``Image.draft``) does most of the work before the resize.

    Raises:
        RecordError: when the JPEG is not the card's ``frame_size`` square.
    """
    image = Image.open(io.BytesIO(unpack_frame(record, index)))
    if image.size != (frame_size, frame_size):
        raise RecordError(
            f"clip {record.get('clip_id')!r}, field 'frames': frame {index} is {image.size[0]}x{image.size[1]} "
            f"but the dataset card says frame_size={frame_size}; re-create the dataset"
        )
    if image_size * 2 <= frame_size:
        image.draft("RGB", (image_size, image_size))
    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BICUBIC)
    return np.asarray(image)


def _stack(key: str, values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, str):
        return list(values)
    if isinstance(first, np.ndarray):
        stacked = np.stack(values)
        if stacked.dtype == np.uint8 and stacked.ndim == 4:  # images: (B, H, W, 3) uint8
            images = torch.from_numpy(stacked).float().div_(127.5).sub_(1.0)
            return rearrange(images, "b h w c -> b c h w").contiguous()
        return torch.from_numpy(stacked)
    if isinstance(first, (bool, np.bool_)):
        return torch.tensor(values, dtype=torch.bool)
    if isinstance(first, (int, np.integer)):
        return torch.tensor(values, dtype=torch.long)
    if isinstance(first, (float, np.floating)):
        return torch.tensor(values, dtype=torch.float32)
    raise TypeError(f"cannot batch field {key!r} of type {type(first).__name__}")


def collate_samples(groups: Sequence[list[dict[str, Any]]]) -> dict[str, Any]:
    """Batch the samples of a few clips (a list of per-clip sample lists) into one dict.

    Numpy arrays become stacked tensors, uint8 ``(H, W, 3)`` images become float ``[-1, 1]``
    ``(B, 3, H, W)``, ints long tensors, bools bool tensors, strings lists. Samples carrying
    ``_keep=False`` (clips skipped by an option) are left out, so a batch may be smaller
    than the batch size; it keeps its keys and trailing shapes even when empty.
    """
    samples = [sample for group in groups for sample in group]
    if not samples:
        raise ValueError("cannot collate an empty batch")
    keep = [bool(sample.get("_keep", True)) for sample in samples]
    batch = {key: _stack(key, [s[key] for s in samples]) for key in samples[0] if key != "_keep"}
    if not all(keep):
        index = [i for i, k in enumerate(keep) if k]
        rows = torch.tensor(index, dtype=torch.long)
        batch = {
            key: value.index_select(0, rows) if isinstance(value, torch.Tensor) else [value[i] for i in index]
            for key, value in batch.items()
        }
    return batch


class SampledShards(ClipShards):
    """Clip shards of one split whose items are the samples drawn from each clip.

    Arguments:
        root, split, shuffle, drop_last, seed: as in :class:`~flowvq.data.shards.ClipShards`.
        sampler: ``sampler(record, epoch) -> list[dict]``, the samples of one clip; ``epoch``
            is the loader's epoch (1, 2, ...) so training samples change every epoch.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        sampler: Callable[[dict, int], list[dict[str, Any]]],
        shuffle: bool = False,
        drop_last: bool | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__(root, split, shuffle=shuffle, drop_last=drop_last, seed=seed)
        self.sampler = sampler

    def __getitem__(self, index: Any) -> list[dict[str, Any]]:
        return self.sampler(super().__getitem__(index), self.current_epoch)

    def _create_shuffler(self, cache: Any) -> Any:
        shuffler = super()._create_shuffler(cache)
        # On parallel file systems litdata assigns whole chunks to workers; a dataset with fewer
        # chunks than ranks x workers then leaves some ranks without data and DDP hangs at the
        # first collective. Splitting chunks across workers keeps every rank's share equal.
        if isinstance(shuffler, WindowShuffle):
            return FullShuffle(cache, shuffler.seed, shuffler.drop_last, item_window=self._item_shuffle_window)
        return shuffler


class ClipDataModule(LightningDataModule):
    """Base of the flowvq DataModules: a dataset root, its card, normalisation and loaders.

    Subclasses give :meth:`make_sampler` (the samples of one clip for a split) and
    :attr:`items_per_clip`.

    Arguments:
        root: dataset root with ``dataset.json`` and litdata ``train``/``val``/``test`` shards.
        batch_size: samples per batch; a multiple of ``items_per_clip``.
        num_workers: dataloader worker processes (0: load in the main process).
        seed: seeds the clip order and every random choice of a sample.
        shuffle: shuffle the train clips every epoch.
        eval_drop_last: drop the last val/test clips so that every rank gets as many. ``None``
            (default) is litdata's choice: ``True`` under DDP (a rank without a batch would hang
            in the epoch-end metric sync), ``False`` on one device, where nothing is dropped.
        pin_memory: passed to the loaders.
    """

    #: samples drawn from each clip; batches hold ``batch_size // items_per_clip`` clips
    items_per_clip: int = 1

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        eval_drop_last: bool | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.eval_drop_last = eval_drop_last
        self.pin_memory = bool(pin_memory)
        self.datasets: dict[str, SampledShards] = {}
        self._train_loader: StreamingDataLoader | None = None
        self._resumed_epoch: int | None = None

    @cached_property
    def card(self) -> DatasetCard:
        """The dataset card (read on first use, so that configs instantiate without data)."""
        return DatasetCard.load(self.root)

    @property
    def dims(self) -> dict[str, int]:
        """The sizes a model is built for: :meth:`DatasetCard.dims`."""
        return self.card.dims()

    @cached_property
    def normalizer(self) -> Normalizer:
        return Normalizer.from_card(self.card, self.root)

    def normalize_exp(self, exp: Any) -> Any:
        return self.normalizer.normalize("exp", exp)

    def normalize_pose(self, pose: Any) -> Any:
        return self.normalizer.normalize("pose", pose)

    def denormalize_exp(self, exp: Any) -> Any:
        """Normalised expression coefficients ``(..., E)`` back to the dataset's units."""
        return self.normalizer.denormalize("exp", exp)

    def denormalize_pose(self, pose: Any) -> Any:
        """Normalised head pose ``(..., P)`` back to radians / crop units."""
        return self.normalizer.denormalize("pose", pose)

    def make_sampler(self, split: str) -> Callable[[dict, int], list[dict[str, Any]]]:
        """The picklable ``sampler(record, epoch) -> list[dict]`` of a split."""
        raise NotImplementedError

    def check(self) -> None:
        """Refuse settings that cannot work with this dataset (called by :meth:`setup`)."""
        if self.batch_size < 1 or self.batch_size % self.items_per_clip:
            raise ValueError(
                f"{type(self).__name__}: batch_size={self.batch_size} must be a positive multiple of the "
                f"{self.items_per_clip} samples drawn per clip (batches are made of whole clips)"
            )

    @property
    def clips_per_batch(self) -> int:
        return self.batch_size // self.items_per_clip

    def dataset(self, split: str) -> SampledShards:
        """The sampled shards of a split (built on first use; each rank builds its own)."""
        if split not in self.datasets:
            self.check()
            train = split == "train"
            self.datasets[split] = SampledShards(
                self.root,
                split,
                self.make_sampler(split),
                shuffle=self.shuffle and train,
                # train batches are always whole: litdata then gives every rank and worker the
                # same number of full batches
                drop_last=True if train else self.eval_drop_last,
                seed=self.seed,
            )
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        self.card  # noqa: B018 - fail early, with the card's message, when the root is not a dataset
        self.normalizer  # noqa: B018
        self.check()
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            if split in self.card.splits:
                self.dataset(split)

    def loader(self, split: str) -> StreamingDataLoader | list:
        """A loader over a split; an empty list when the dataset has no such split."""
        if split not in self.card.splits:
            if split == "train":
                raise DatasetError(f"{str(self.root)!r} has no train split (card splits: {sorted(self.card.splits)})")
            return []
        # workers are not persistent: each epoch's workers start from the dataset with the
        # loader's new epoch number, which seeds the samples
        return StreamingDataLoader(
            self.dataset(split),
            batch_size=self.clips_per_batch,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> StreamingDataLoader:
        loader = self.loader("train")
        if self._resumed_epoch is not None:
            # the loader counts epochs from 0 again in a new process; its epoch seeds the
            # training samples, so a resumed fit continues with the epochs it would have seen
            loader.current_epoch = self._resumed_epoch
            self._resumed_epoch = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the train loader's epoch counter (see :meth:`train_dataloader`)."""
        epoch = None if self._train_loader is None else int(self._train_loader.current_epoch)
        return {"train_loader_epoch": epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resumed_epoch = state.get("train_loader_epoch")

    def val_dataloader(self) -> StreamingDataLoader | list:
        return self.loader("val")

    def test_dataloader(self) -> StreamingDataLoader | list:
        return self.loader("test")

    def predict_dataloader(self) -> StreamingDataLoader | list:
        return self.loader("test")
