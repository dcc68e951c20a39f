"""Step 1 of preprocessing: one clip -> a cached file of everything that does not need the whole dataset.

Per clip: decode at 25 fps, audio at 16 kHz mono (from the separate audio file or the
video's sound), FaceMesh landmarks on every frame, short gaps interpolated and long ones
rejected, the smoothed FFHQ-style crop, landmarks in crop pixels, log-mel features and
JPEG crops. The PCA basis and the pose reference need the whole train split, so they are
fitted later (:mod:`flowvq.data.preprocess.merge`) from the cached landmarks.

A cache holds ``clips/<clip_id>.npz`` (done) and ``failed/<clip_id>.json`` (the reason),
both written atomically (temporary file, then rename), and ``settings.json`` (the
extraction settings: a cache is never mixed across settings).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowvq.data.audio import log_mel, samples_per_frame, to_int16
from flowvq.data.card import AudioFeatures
from flowvq.data.face import (
    FaceTracker,
    GapError,
    crop_transforms,
    fill_gaps,
    to_ibug68,
    transform_points,
    warp_crop,
)
from flowvq.data.preprocess.layouts import ClipSpec
from flowvq.data.schema import pack_frames
from flowvq.data.video import MediaError, iter_frames, read_audio

__all__ = [
    "ClipError",
    "ExtractConfig",
    "cache_paths",
    "check_settings",
    "extract_clip",
    "load_cached",
    "read_failure",
    "write_cached",
    "write_failure",
]


class ClipError(ValueError):
    """A clip that cannot become a record; ``kind`` names the reason for ``failures.jsonl``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class ExtractConfig:
    """Per-clip extraction settings (recorded in the cache and the dataset card).

    Arguments:
        fps: video frame rate of the records.
        size: side of the square face crops in pixels.
        frames: store JPEG crops (False: coefficient-only records).
        crop_smoothing: Gaussian sigma in frames for the crop track; None: one crop per clip.
        refine_landmarks: FaceMesh iris refinement (478 landmarks instead of 468).
        max_gap: longest run of frames without a face that is interpolated.
        min_frames: shorter clips are rejected.
        max_audio_shortfall: audio shorter than the video by more than this fraction is rejected.
        jpeg_quality: JPEG quality of the crops.
        audio: log-mel settings.
        frame_memory_mb: a clip's decoded frames are kept from the landmark pass for the
            crops when they fit in this many MiB; longer clips are decoded twice. It does
            not change the results, so it is not part of the recorded settings.
    """

    fps: float = 25.0
    size: int = 256
    frames: bool = True
    crop_smoothing: float | None = 12.5
    refine_landmarks: bool = True
    max_gap: int = 5
    min_frames: int = 8
    max_audio_shortfall: float = 0.1
    jpeg_quality: int = 90
    audio: AudioFeatures = field(default_factory=AudioFeatures)
    frame_memory_mb: float = 1024.0

    def to_dict(self) -> dict[str, Any]:
        """The settings that determine the results (recorded in the cache and the card)."""
        settings = asdict(self)
        del settings["frame_memory_mb"]
        return settings


def cache_paths(cache: str | Path, clip_id: str) -> tuple[Path, Path]:
    """The ``.npz`` of a done clip and the ``.json`` of a failed one."""
    cache = Path(cache)
    return cache / "clips" / f"{clip_id}.npz", cache / "failed" / f"{clip_id}.json"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_settings(cache: str | Path, settings: dict[str, Any]) -> None:
    """Write ``settings.json`` into a new cache, or refuse a cache made with other settings."""
    path = Path(cache) / "settings.json"
    text = json.dumps(settings, indent=2, sort_keys=True)
    if path.is_file():
        have = json.loads(path.read_text())
        if have != json.loads(text):
            diff = {k: (have.get(k), v) for k, v in settings.items() if have.get(k) != v}
            raise ValueError(
                f"the cache {str(cache)!r} was made with other settings ({diff}, as cached vs asked); "
                "use the same settings, another --cache folder, or delete that cache"
            )
        return
    _atomic_write(path, lambda h: h.write(text.encode()))


def write_cached(cache: str | Path, clip_id: str, result: dict[str, Any]) -> Path:
    """Store one clip's extraction atomically."""
    path, _ = cache_paths(cache, clip_id)
    _atomic_write(path, lambda h: np.savez(h, **result))
    return path


def load_cached(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A cached clip (all arrays, or only ``keys``); ``meta`` comes back as a dict."""
    with np.load(path, allow_pickle=False) as data:
        names = keys if keys is not None else tuple(data.files)
        out = {name: data[name] for name in names}
    if "meta" in out:
        out["meta"] = json.loads(str(out["meta"]))
    return out


def write_failure(cache: str | Path, spec: ClipSpec, kind: str, message: str) -> dict[str, Any]:
    """Record why a clip failed (one small JSON file per clip, atomic)."""
    _, path = cache_paths(cache, spec.clip_id)
    entry = {
        "clip_id": spec.clip_id,
        "speaker": spec.speaker,
        "video": str(spec.video),
        "audio": str(spec.audio) if spec.audio is not None else None,
        "reason": kind,
        "message": message,
    }
    _atomic_write(path, lambda h: h.write(json.dumps(entry).encode()))
    return entry


def read_failure(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ClipError("encode", "JPEG encoding of a crop failed")
    return data.tobytes()


def extract_clip(spec: ClipSpec, config: ExtractConfig, coefficients: dict[str, np.ndarray] | None = None) -> dict:
    """Everything per clip, as arrays for :func:`write_cached`.

    Arguments:
        spec: the clip.
        config: extraction settings.
        coefficients: optional ``exp`` ``[T', E]`` and ``pose`` ``[T', P]`` from another source
            (Deep3DFaceRecon); the clip is cut to the shorter of video and coefficients.

    Returns:
        ``meta`` (JSON: ids, labels, counts), ``landmarks`` float32 ``[T, N, 3]`` in crop pixels
        (z scaled like x), ``ibug68`` float32 ``[T, 68, 2]`` in crop pixels, ``crop`` float64
        ``[T, 2, 3]`` (frame -> crop pixels), ``audio`` int16 ``[T * 640]``, ``mel``
        float32 ``[T, K, M]``, ``frames`` uint8 blob and ``frame_offsets`` int64, and ``exp`` /
        ``pose`` when ``coefficients`` are given.

    Raises:
        ClipError: with ``kind`` one of ``unreadable``, ``too_short``, ``no_face``,
            ``short_audio``, ``length_mismatch``.
    """
    kept: list[np.ndarray] | None = [] if config.frames else None

    def decoded() -> Iterator[np.ndarray]:
        """The frames, kept for the crops while they fit in the memory budget."""
        nonlocal kept
        budget, used = config.frame_memory_mb * 2**20, 0
        for frame in iter_frames(spec.video.open(), config.fps):
            if kept is not None:
                used += frame.nbytes
                if used <= budget:
                    kept.append(frame)
                else:
                    kept = None  # too long: decode again for the crops
            yield frame

    try:
        with FaceTracker(refine_landmarks=config.refine_landmarks) as tracker:
            raw = tracker.track(decoded())  # (T, N, 3) frame pixels
    except MediaError as error:
        raise ClipError("unreadable", str(error)) from error
    except ValueError as error:  # np.stack of no frames
        raise ClipError("unreadable", f"{spec.video}: no frames decoded ({error})") from error
    count = len(raw)
    if coefficients is not None:
        have = len(coefficients["exp"])
        if abs(have - count) > max(2, 0.05 * count):
            raise ClipError(
                "length_mismatch",
                f"{spec.video}: {count} video frames at {config.fps} fps but {have} coefficient frames; "
                "were the coefficients extracted from this video at this frame rate?",
            )
        count = min(count, have)
        raw = raw[:count]
    if count < config.min_frames:
        raise ClipError("too_short", f"{spec.video}: {count} frames, fewer than min_frames={config.min_frames}")

    step = samples_per_frame(config.audio, config.fps)
    source = spec.audio if spec.audio is not None else spec.video
    try:
        waveform = read_audio(source.open(), config.audio.sample_rate)
    except MediaError as error:
        raise ClipError("unreadable", str(error)) from error
    need = count * step
    if len(waveform) < (1 - config.max_audio_shortfall) * need:
        raise ClipError(
            "short_audio",
            f"{source}: {len(waveform) / config.audio.sample_rate:.2f} s of audio for "
            f"{count / config.fps:.2f} s of video (more than {config.max_audio_shortfall:.0%} short)",
        )
    waveform = np.pad(waveform, (0, max(0, need - len(waveform))))[:need]

    try:
        landmarks = fill_gaps(raw, config.max_gap)
    except GapError as error:
        raise ClipError("no_face", f"{spec.video}: {error}") from error
    crop = crop_transforms(landmarks, config.size, config.crop_smoothing)  # (T, 2, 3)
    in_crop = transform_points(crop, landmarks).astype(np.float32)  # (T, N, 3) crop pixels

    blob, offsets = b"", np.zeros(0, dtype=np.int64)
    if config.frames:
        jpegs = []
        frames = kept if kept is not None else iter_frames(spec.video.open(), config.fps)
        try:
            for index, frame in enumerate(frames):
                if index >= count:
                    break
                jpegs.append(_encode_jpeg(warp_crop(frame, crop[index], config.size), config.jpeg_quality))
        except MediaError as error:
            raise ClipError("unreadable", str(error)) from error
        if len(jpegs) != count:
            raise ClipError("unreadable", f"{spec.video}: second decode gave {len(jpegs)} frames, the first {count}")
        blob, offsets = pack_frames(jpegs)

    meta = {
        "clip_id": spec.clip_id,
        "speaker": spec.speaker,
        "split": spec.split,
        "emotion": int(spec.emotion),
        "intensity": int(spec.intensity),
        "video": str(spec.video),
        "audio": str(source),
        "num_frames": int(count),
        "detected": float(1.0 - np.isnan(raw).reshape(count, -1).any(1).mean()),
    }
    out = {
        "meta": np.array(json.dumps(meta)),
        "landmarks": in_crop,
        "ibug68": to_ibug68(in_crop[..., :2]).astype(np.float32),
        "crop": crop,
        "audio": to_int16(waveform),
        "mel": log_mel(waveform, count, config.audio, config.fps),
        "frames": np.frombuffer(blob, dtype=np.uint8),
        "frame_offsets": offsets,
    }
    if coefficients is not None:
        out["exp"] = np.asarray(coefficients["exp"][:count], dtype=np.float32)
        out["pose"] = np.asarray(coefficients["pose"][:count], dtype=np.float32)
    return out
