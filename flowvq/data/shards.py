"""Writing and reading clip shards (litdata) under a dataset root.

Layout of a dataset root::

    <root>/dataset.json          the card (written last)
    <root>/<split>/index.json    litdata index, one folder per split
    <root>/<split>/chunk-*.bin

Every record is checked against the schema on write and on read.
"""

from __future__ import annotations

import functools
import logging
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import litdata
import numpy as np
from litdata import StreamingDataset

from flowvq.data.card import SPLITS, DatasetCard, DatasetError, Stats
from flowvq.data.schema import OPTIONAL_FIELDS, RecordError, validate_record

__all__ = ["ClipShards", "compute_stats", "open_split", "write_split", "write_dataset"]

log = logging.getLogger(__name__)


def _checked(make_record: Callable[[Any], dict], split: str, dims: dict, item: Any) -> dict:
    record = make_record(item)
    if record.get("split") != split:
        raise RecordError(
            f"clip {record.get('clip_id')!r}, field 'split': is {record.get('split')!r}, written to {split!r}"
        )
    return validate_record(record, **dims)


def write_split(
    root: str | Path,
    split: str,
    items: Sequence[Any],
    make_record: Callable[[Any], dict],
    card: DatasetCard,
    seed: int = 0,
    num_workers: int = 1,
    chunk_bytes: str = "64MB",
) -> Path:
    """Pack one split with ``litdata.optimize``.

    Arguments:
        root: dataset root; the split goes to ``<root>/<split>``.
        items: one picklable item per clip (a spec, a cache path, ...); shuffled with
            ``seed`` before packing, because litdata shuffles only partly within chunks
            and sources such as MEAD are grouped by speaker.
        make_record: a picklable function turning an item into a clip record.
        card: for the expected sizes.
        num_workers: litdata worker processes.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    out = Path(root) / split
    if out.exists():
        shutil.rmtree(out)
    items = list(items)
    random.Random(seed).shuffle(items)
    dims = {
        "exp_dim": card.exp_dim,
        "pose_dim": card.pose_dim,
        "mel_bins": card.audio.n_mels,
        "mel_per_frame": card.audio.mel_per_frame,
        "sample_rate": card.audio.sample_rate,
        "fps": card.fps,
        "fields": list(card.fields),
    }
    litdata.optimize(
        fn=functools.partial(_checked, make_record, split, dims),
        inputs=items,
        output_dir=str(out),
        chunk_bytes=chunk_bytes,
        num_workers=max(1, num_workers),
        reorder_files=False,
        verbose=False,
        start_method="fork",
    )
    return out


def open_split(root: str | Path, split: str, **kwargs: Any) -> ClipShards:
    """The clips of one split as a litdata ``StreamingDataset`` (see :class:`ClipShards`)."""
    return ClipShards(root, split, **kwargs)


class ClipShards(StreamingDataset):
    """Clip records of one split; each read is checked against the card.

    Arguments:
        root: dataset root (with ``dataset.json``).
        split: train, val or test.
        shuffle, drop_last, seed: as in ``litdata.StreamingDataset``; under DDP each rank
            reads a disjoint part of the clips.
        transform: applied to each checked record (e.g. a random window crop).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        shuffle: bool = False,
        drop_last: bool | None = None,
        seed: int = 42,
        transform: Callable[[dict], Any] | None = None,
        validate: bool = True,
    ) -> None:
        self.card = DatasetCard.load(root)
        self.root = Path(root)
        self.split = split
        path = self.root / split
        if not (path / "index.json").is_file():
            raise DatasetError(
                f"{str(path)!r} has no litdata index.json: the {split!r} split of {str(root)!r} was not "
                f"written (card lists splits {sorted(self.card.splits)}). Re-create the dataset"
            )
        super().__init__(input_dir=str(path), shuffle=shuffle, drop_last=drop_last, seed=seed)
        self._record_transform = transform
        self._validate = validate

    def __getitem__(self, index: Any) -> Any:
        record = super().__getitem__(index)
        if self._validate:
            card = self.card
            try:
                validate_record(
                    record,
                    exp_dim=card.exp_dim,
                    pose_dim=card.pose_dim,
                    mel_bins=card.audio.n_mels,
                    mel_per_frame=card.audio.mel_per_frame,
                    sample_rate=card.audio.sample_rate,
                    fps=card.fps,
                    fields=card.fields,
                )
            except RecordError as error:
                raise RecordError(
                    f"{error} (in {str(self.root / self.split)!r}; the shards disagree with "
                    f"{str(self.root / 'dataset.json')!r}: re-create the dataset)"
                ) from error
        return self._record_transform(record) if self._record_transform else record


def compute_stats(root: str | Path, split: str = "train", max_frames: int = 200_000, seed: int = 0) -> Stats:
    """Normalisation statistics of exp, pose and mel (and of the optional blink and gaze, where
    the records carry them) over (a sample of) a split's frames."""
    # the card is not written yet while a dataset is being built: read the raw split
    shards = StreamingDataset(input_dir=str(Path(root) / split))
    rng = np.random.default_rng(seed)
    exp, pose, mel = [], [], []
    optional: dict[str, list[np.ndarray]] = {name: [] for name in OPTIONAL_FIELDS}
    total = 0
    order = rng.permutation(len(shards))
    for index in order:
        record = shards[int(index)]
        exp.append(record["exp"])
        pose.append(record["pose"])
        mel.append(record["mel"].reshape(-1, record["mel"].shape[-1]))
        for name, values in optional.items():
            if name in record:
                values.append(record[name])
        total += len(record["exp"])
        if total >= max_frames:
            break
    if not exp:
        raise DatasetError(f"split {split!r} of {str(root)!r} is empty: no statistics can be computed")
    extra = {name: np.concatenate(values) for name, values in optional.items() if values}
    return Stats.from_arrays(np.concatenate(exp), np.concatenate(pose), np.concatenate(mel), **extra)


def write_dataset(
    root: str | Path,
    items_by_split: dict[str, Sequence[Any]],
    make_record: Callable[[Any], dict],
    card: DatasetCard,
    seed: int = 0,
    num_workers: int = 1,
) -> DatasetCard:
    """Pack every split, compute train statistics, then write the card (last).

    ``card.splits`` and ``card.stats`` are filled here; speakers per split are taken
    from ``card.speakers`` as the caller set them.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, items in items_by_split.items():
        write_split(root, split, items, make_record, card, seed=seed, num_workers=num_workers)
        card.splits[split] = len(items)
    if "train" not in items_by_split:
        raise DatasetError("a dataset needs a train split (normalisation statistics come from it)")
    card.stats = compute_stats(root, "train")
    card.save(root)
    return card
