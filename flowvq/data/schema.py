"""The clip record: the one data contract between every data source and every model.

A record is a plain ``dict`` (what litdata serialises) with the fields of :data:`FIELDS`.
It is checked on write (:func:`validate_record`) and on read, so that a record whose arrays
disagree in length or dtype is refused with an error naming the clip and the field.

Frames are stored as one ``bytes`` blob of concatenated JPEGs plus ``frame_offsets``
(int64, ``[T + 1]``), so that every record has the same flat structure whether or not it has
frames (coefficient-only shards carry an empty blob and ``frame_offsets`` of length 0), and
a random frame costs one JPEG decode.

Two fields are optional (:data:`OPTIONAL_FIELDS`): ``blink [T]`` and ``gaze [T, 2]``. A dataset
either carries one in every record or in none, and its card lists those it carries
(``DatasetCard.fields``). SynthTalk writes both; ``flowvq preprocess`` derives both from
FaceMesh (``blink`` from the eyelid aperture; ``gaze`` from the iris landmarks, so only with
``refine_landmarks``); Deep3DFaceRecon imports have neither. Their units:

- ``blink``: eyelid closure, 0 open (the clip's usual aperture) to 1 closed.
- ``gaze``: the iris centre's offset from the midpoint of the eye's corners, in half eye
  widths (corner to corner), averaged over both eyes, in the head's frame: ``gaze[:, 0]``
  along the corner-to-corner line, positive towards the image's right (the subject's left),
  ``gaze[:, 1]`` across it, positive up. About +-0.4 at the extremes of a human gaze; it
  is the sine of the eye's rotation times eyeball radius / half eye width (about 0.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "EMOTIONS",
    "FIELDS",
    "GAZE_NAMES",
    "INTENSITY_LEVELS",
    "NUM_LANDMARKS",
    "OPTIONAL_FIELDS",
    "POSE_NAMES",
    "RecordError",
    "emotion_index",
    "emotion_name",
    "num_frames",
    "pack_frames",
    "unpack_frame",
    "validate_record",
]

#: The 8 MEAD emotions, in the order of the ``emotion`` index.
EMOTIONS: tuple[str, ...] = (
    "neutral",
    "angry",
    "contempt",
    "disgusted",
    "fear",
    "happy",
    "sad",
    "surprised",
)
#: MEAD level_1..level_3 map to intensity 0..2.
INTENSITY_LEVELS: int = 3
#: Head pose per frame: rotation in radians, translation and scale in crop units.
POSE_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll", "tx", "ty", "scale")
#: The two dims of the optional ``gaze`` field (see the module docstring for the units).
GAZE_NAMES: tuple[str, ...] = ("gaze_x", "gaze_y")
#: iBUG-68 landmarks; the mouth is points 48..67.
NUM_LANDMARKS: int = 68
MOUTH = slice(48, 68)


class RecordError(ValueError):
    """A clip record that does not follow the schema."""


def emotion_index(name: str | int) -> int:
    """Index of an emotion given by name (case-insensitive) or index.

    Example:
        >>> emotion_index("Happy")
        5
    """
    if isinstance(name, (int, np.integer)):
        if -1 <= int(name) < len(EMOTIONS):
            return int(name)
        raise ValueError(f"emotion index {name} is out of range: expected 0..{len(EMOTIONS) - 1} (or -1 for unknown)")
    key = str(name).strip().lower()
    aliases = {"disgust": "disgusted", "surprise": "surprised", "anger": "angry", "fearful": "fear"}
    key = aliases.get(key, key)
    if key not in EMOTIONS:
        raise ValueError(f"unknown emotion {name!r}: expected one of {', '.join(EMOTIONS)}")
    return EMOTIONS.index(key)


def emotion_name(index: int) -> str:
    """Name of an emotion index; ``-1`` is ``"unknown"``."""
    return "unknown" if index < 0 else EMOTIONS[index]


@dataclass(frozen=True)
class Field:
    """One field of the record: its dtype and its shape, symbolic dims as letters."""

    dtype: Any
    shape: tuple[str | int, ...]
    doc: str


#: Symbols: T frames, E expression dims, P pose dims, K mel columns per frame, M mel bins,
#: N audio samples, L = 68 landmarks, F = T + 1 frame offsets (or 0 without frames).
FIELDS: dict[str, Field] = {
    "clip_id": Field(str, (), "unique id of the clip"),
    "speaker": Field(str, (), "speaker id; splits are by speaker"),
    "split": Field(str, (), "train, val or test"),
    "emotion": Field(int, (), "index into EMOTIONS, -1 where unknown"),
    "intensity": Field(int, (), "0..2 for MEAD level_1..3, -1 where unknown"),
    "exp": Field(np.float32, ("T", "E"), "expression coefficients per frame"),
    "pose": Field(np.float32, ("T", "P"), "yaw, pitch, roll (rad), tx, ty, scale per frame"),
    "mel": Field(np.float32, ("T", "K", "M"), "log-mel, K columns per video frame"),
    "audio": Field(np.int16, ("N",), "16 kHz mono waveform"),
    "landmarks": Field(np.float32, ("T", NUM_LANDMARKS, 2), "iBUG-68 landmarks in crop pixels"),
    "frames": Field(bytes, (), "concatenated JPEG crops, one per frame; empty without frames"),
    "frame_offsets": Field(np.int64, ("F",), "byte offsets of each JPEG in frames, T + 1 of them"),
}

#: Fields a dataset may carry in every record (its card lists them in ``fields``).
OPTIONAL_FIELDS: dict[str, Field] = {
    "blink": Field(np.float32, ("T",), "eyelid closure per frame, 0 open .. 1 closed"),
    "gaze": Field(np.float32, ("T", 2), "iris offset from the eye centre in half eye widths (x right, y up)"),
}


def _fail(record: dict, field: str, message: str) -> RecordError:
    clip = record.get("clip_id", "<no clip_id>")
    return RecordError(f"clip {clip!r}, field {field!r}: {message}")


def num_frames(record: dict) -> int:
    """Number of video frames T of a record."""
    return int(np.asarray(record["exp"]).shape[0])


def validate_record(
    record: dict,
    exp_dim: int | None = None,
    pose_dim: int | None = None,
    mel_bins: int | None = None,
    mel_per_frame: int | None = None,
    sample_rate: int = 16000,
    fps: float = 25.0,
    min_audio_ratio: float = 0.9,
    fields: list[str] | tuple[str, ...] | None = None,
) -> dict:
    """Check a record against :data:`FIELDS` and return it.

    Arguments:
        record: the clip record.
        exp_dim, pose_dim, mel_bins, mel_per_frame: expected sizes (from the dataset card);
            ``None`` accepts any size but still checks consistency within the record.
        sample_rate, fps: to check that the audio covers the video.
        min_audio_ratio: audio shorter than this fraction of the video is refused.
        fields: the optional fields (:data:`OPTIONAL_FIELDS`) the record must carry, and no
            others (the card's ``fields``); ``None`` checks whichever it carries.

    Raises:
        RecordError: naming the clip and the field that disagree.
    """
    missing = [name for name in FIELDS if name not in record]
    if missing:
        raise _fail(record, missing[0], f"missing (record has {sorted(record)}; expected all of {list(FIELDS)})")
    for name in ("clip_id", "speaker", "split"):
        if not isinstance(record[name], str) or not record[name]:
            raise _fail(record, name, f"expected a non-empty str, got {record[name]!r}")
    for name in ("emotion", "intensity"):
        if not isinstance(record[name], (int, np.integer)):
            raise _fail(record, name, f"expected an int, got {type(record[name]).__name__}")
    if not -1 <= record["emotion"] < len(EMOTIONS):
        raise _fail(record, "emotion", f"{record['emotion']} is not in -1..{len(EMOTIONS) - 1}")
    if not -1 <= record["intensity"] < INTENSITY_LEVELS:
        raise _fail(record, "intensity", f"{record['intensity']} is not in -1..{INTENSITY_LEVELS - 1}")
    if isinstance(record["frames"], memoryview):  # litdata hands bytes back as a memoryview
        record["frames"] = record["frames"].tobytes()
    if not isinstance(record["frames"], (bytes, bytearray)):
        raise _fail(record, "frames", f"expected bytes, got {type(record['frames']).__name__}")

    sizes: dict[str, int] = {
        key: value
        for key, value in {"E": exp_dim, "P": pose_dim, "M": mel_bins, "K": mel_per_frame}.items()
        if value is not None
    }
    optional = [name for name in OPTIONAL_FIELDS if name in record]
    if fields is not None:
        unknown = [name for name in fields if name not in OPTIONAL_FIELDS]
        if unknown:
            raise _fail(record, unknown[0], f"is not an optional field: expected some of {list(OPTIONAL_FIELDS)}")
        for name in fields:
            if name not in record:
                raise _fail(record, name, "missing: the dataset card lists it, so every record must carry it")
        for name in optional:
            if name not in fields:
                raise _fail(
                    record, name, f"present but the dataset card lists only {list(fields)}: add it to the card's fields"
                )
    checked = {**FIELDS, **{name: OPTIONAL_FIELDS[name] for name in optional}}
    for name, spec in checked.items():
        if spec.shape == ():
            continue
        value = record[name]
        if not isinstance(value, np.ndarray):
            raise _fail(record, name, f"expected a numpy array, got {type(value).__name__}")
        if value.dtype != spec.dtype:
            raise _fail(record, name, f"expected dtype {np.dtype(spec.dtype)}, got {value.dtype}")
        if value.ndim != len(spec.shape):
            raise _fail(record, name, f"expected {len(spec.shape)} dims {spec.shape}, got shape {value.shape}")
        for symbol, size in zip(spec.shape, value.shape):
            if isinstance(symbol, int):
                if size != symbol:
                    raise _fail(record, name, f"expected shape {spec.shape}, got {value.shape}")
                continue
            if symbol in ("N", "F"):
                continue
            if symbol not in sizes:
                sizes[symbol] = size
            elif sizes[symbol] != size:
                raise _fail(
                    record, name, f"dimension {symbol} is {size} but other fields (or the card) give {sizes[symbol]}"
                )
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise _fail(record, name, "contains NaN or inf")

    if (
        "blink" in optional
        and record["blink"].size
        and not (-1e-3 <= record["blink"].min() <= record["blink"].max() <= 1 + 1e-3)
    ):
        raise _fail(record, "blink", "eyelid closure must lie in [0, 1] (0 open, 1 closed)")
    frames = sizes["T"]
    if frames < 1:
        raise _fail(record, "exp", "the clip has no frames")
    offsets = record["frame_offsets"]
    if len(record["frames"]) == 0:
        if len(offsets) != 0:
            raise _fail(record, "frame_offsets", "must be empty when frames is empty")
    else:
        if len(offsets) != frames + 1:
            raise _fail(record, "frame_offsets", f"expected T + 1 = {frames + 1} offsets, got {len(offsets)}")
        if offsets[0] != 0 or offsets[-1] != len(record["frames"]) or np.any(np.diff(offsets) <= 0):
            raise _fail(record, "frame_offsets", "offsets must start at 0, increase, and end at len(frames)")
    needed = frames / fps * sample_rate
    if len(record["audio"]) < min_audio_ratio * needed:
        raise _fail(
            record,
            "audio",
            f"{len(record['audio']) / sample_rate:.2f} s of audio for {frames / fps:.2f} s of video; "
            "the audio must cover the video (trim the video or fix the audio source)",
        )
    return record


def pack_frames(jpegs: list[bytes]) -> tuple[bytes, np.ndarray]:
    """Concatenate JPEG-encoded frames into ``(frames, frame_offsets)``."""
    offsets = np.zeros(len(jpegs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(j) for j in jpegs]) if jpegs else 0
    if not jpegs:
        return b"", np.zeros(0, dtype=np.int64)
    return b"".join(jpegs), offsets


def unpack_frame(record: dict, index: int) -> bytes:
    """The JPEG bytes of frame ``index`` of a record."""
    offsets = record["frame_offsets"]
    if len(offsets) == 0:
        raise RecordError(
            f"clip {record.get('clip_id')!r}, field 'frames': this dataset has no frames "
            "(it was written with --no-frames); image models need a dataset with frames"
        )
    return bytes(record["frames"][int(offsets[index]) : int(offsets[index + 1])])
