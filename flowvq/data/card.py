"""The dataset card, ``dataset.json``: what a shard root holds and how to normalise it.

Models read E (``exp_dim``), P (``pose_dim``) and the audio feature layout from the card;
nothing in the suite hard-codes them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowvq.data.schema import EMOTIONS, OPTIONAL_FIELDS, POSE_NAMES

__all__ = [
    "CARD_NAME",
    "SPLITS",
    "AudioFeatures",
    "DatasetCard",
    "DatasetError",
    "Stats",
    "check_dims",
    "require_fields",
]

CARD_NAME = "dataset.json"
SPLITS = ("train", "val", "test")
SCHEMA_VERSION = 1


class DatasetError(FileNotFoundError):
    """A shard root that is missing, incomplete, or does not match what a model expects."""


@dataclass
class AudioFeatures:
    """Log-mel settings; ``mel_per_frame`` = K columns per video frame (hop 160 at 25 fps: 4)."""

    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 512
    hop_length: int = 160
    win_length: int = 400
    fmin: float = 55.0
    fmax: float = 7600.0
    mel_per_frame: int = 4


@dataclass
class Stats:
    """Train-split mean and std per dimension (std floored so normalisation never divides by 0).

    ``blink_*`` (one value) and ``gaze_*`` (two) are there when the dataset carries those
    optional fields, None otherwise.
    """

    exp_mean: list[float]
    exp_std: list[float]
    pose_mean: list[float]
    pose_std: list[float]
    mel_mean: list[float]
    mel_std: list[float]
    blink_mean: list[float] | None = None
    blink_std: list[float] | None = None
    gaze_mean: list[float] | None = None
    gaze_std: list[float] | None = None

    @classmethod
    def from_arrays(
        cls,
        exp: np.ndarray,
        pose: np.ndarray,
        mel: np.ndarray,
        floor: float = 1e-3,
        blink: np.ndarray | None = None,
        gaze: np.ndarray | None = None,
    ) -> Stats:
        """Statistics of stacked train frames: exp [N, E], pose [N, P], mel [N, M], and the
        optional blink [N] and gaze [N, 2]."""

        def moments(x: np.ndarray) -> tuple[list[float], list[float]]:
            x = np.asarray(x, dtype=np.float64)
            return x.mean(0).tolist(), np.maximum(x.std(0), floor).tolist()

        exp_mean, exp_std = moments(exp)
        pose_mean, pose_std = moments(pose)
        mel_mean, mel_std = moments(mel)
        stats = cls(exp_mean, exp_std, pose_mean, pose_std, mel_mean, mel_std)
        if blink is not None:
            stats.blink_mean, stats.blink_std = moments(np.reshape(blink, (-1, 1)))
        if gaze is not None:
            stats.gaze_mean, stats.gaze_std = moments(np.reshape(gaze, (-1, 2)))
        return stats


@dataclass
class DatasetCard:
    """Everything a model needs to know about a shard root; written last, as ``dataset.json``."""

    name: str
    exp_dim: int
    pose_dim: int
    coefficient_source: str  # synthetic | mediapipe-pca | deep3dfacerecon
    fps: float = 25.0
    audio: AudioFeatures = field(default_factory=AudioFeatures)
    frame_size: int = 0  # side of the square face crops; 0 where the shards have no frames
    emotion_names: list[str] = field(default_factory=lambda: list(EMOTIONS))
    exp_names: list[str] = field(default_factory=list)
    pose_names: list[str] = field(default_factory=lambda: list(POSE_NAMES))
    fields: list[str] = field(default_factory=list)  # optional record fields carried (blink, gaze)
    splits: dict[str, int] = field(default_factory=dict)  # clips per split
    speakers: dict[str, list[str]] = field(default_factory=dict)  # speakers per split
    stats: Stats | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def has_frames(self) -> bool:
        return self.frame_size > 0

    @property
    def all_speakers(self) -> list[str]:
        return sorted({s for names in self.speakers.values() for s in names})

    def dims(self) -> dict[str, int]:
        """The sizes a model is built for; compared against checkpoints by :func:`check_dims`."""
        return {
            "exp_dim": self.exp_dim,
            "pose_dim": self.pose_dim,
            "mel_bins": self.audio.n_mels,
            "mel_per_frame": self.audio.mel_per_frame,
            "num_emotions": len(self.emotion_names),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, root: str | Path) -> Path:
        """Write ``dataset.json`` atomically (temp file + rename)."""
        path = Path(root) / CARD_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetCard:
        data = dict(data)
        data["audio"] = AudioFeatures(**data.get("audio", {}))
        if data.get("stats") is not None:
            data["stats"] = Stats(**data["stats"])
        return cls(**data)

    @classmethod
    def load(cls, root: str | Path) -> DatasetCard:
        """Read ``<root>/dataset.json``, with an error that says what to run when it is missing."""
        root = Path(root)
        path = root / CARD_NAME
        if not root.is_dir():
            raise DatasetError(
                f"dataset root {str(root)!r} does not exist: write one with "
                f"`flowvq synth --out {root}` or `flowvq preprocess ... --out {root}`"
            )
        if not path.is_file():
            raise DatasetError(
                f"{str(path)!r} is missing: {str(root)!r} is not a finished flowvq dataset "
                "(the card is written last, so an interrupted run leaves none). Re-run "
                f"`flowvq synth --out {root} --overwrite` or the `flowvq preprocess` command that made it"
            )
        try:
            data = json.loads(path.read_text())
            card = cls.from_dict(data)
        except (json.JSONDecodeError, TypeError) as error:
            raise DatasetError(
                f"{str(path)!r} is not a valid dataset card ({error}); re-create the dataset with flowvq"
            ) from error
        if card.schema_version != SCHEMA_VERSION:
            raise DatasetError(
                f"{str(path)!r} has schema version {card.schema_version}, this flowvq reads "
                f"version {SCHEMA_VERSION}; re-create the dataset with this version of flowvq"
            )
        return card


def check_dims(expected: dict[str, int], card: DatasetCard, what: str, root: str | Path | None = None) -> None:
    """Refuse a model (or checkpoint) built for other sizes than the dataset's.

    Arguments:
        expected: the sizes the model was built with (e.g. its hparams), keys as in
            :meth:`DatasetCard.dims`; keys the card does not know are ignored.
        card: the dataset's card.
        what: the model or checkpoint, for the message.
        root: the dataset root, for the message.
    """
    have = card.dims()
    wrong = {k: (v, have[k]) for k, v in expected.items() if k in have and v is not None and int(v) != have[k]}
    if wrong:
        details = ", ".join(f"{k}={model} but the dataset has {data}" for k, (model, data) in wrong.items())
        where = f" at {str(root)!r}" if root is not None else ""
        raise DatasetError(
            f"{what} does not match the dataset {card.name!r}{where}: {details}. "
            "Train a new model on this dataset, or point the data path at the dataset the model was trained on."
        )


def require_fields(
    card: DatasetCard, names: list[str] | tuple[str, ...], what: str, root: str | Path | None = None
) -> None:
    """Refuse a dataset that lacks optional record fields a model needs, naming them.

    Arguments:
        card: the dataset's card (``fields`` lists what its records carry).
        names: the optional fields needed (``blink``, ``gaze``).
        what: the model, for the message.
        root: the dataset root, for the message.
    """
    unknown = [name for name in names if name not in OPTIONAL_FIELDS]
    if unknown:
        raise ValueError(f"{what}: {unknown} are not optional record fields; expected some of {list(OPTIONAL_FIELDS)}")
    missing = [name for name in names if name not in card.fields]
    if not missing:
        return
    where = f" at {str(root)!r}" if root is not None else ""
    if card.coefficient_source == "deep3dfacerecon":
        how = "Deep3DFaceRecon imports carry neither blink nor gaze: preprocess the videos with `flowvq preprocess`"
    elif card.coefficient_source == "synthetic":
        how = "it was written before SynthTalk recorded them: re-run `flowvq synth` (with --overwrite)"
    else:
        how = (
            "re-run `flowvq preprocess ... --merge true --overwrite true` with this flowvq (gaze needs the iris "
            "landmarks: --refine_landmarks true at extraction)"
        )
    raise DatasetError(
        f"{what} needs the record field(s) {missing}, which the dataset {card.name!r}{where} "
        f"({card.coefficient_source}) does not carry (its optional fields: {card.fields or 'none'}): {how}"
    )
