"""Step 1 of preprocessing: one clip -> a cached file of everything that does not need the whole dataset.

Per clip: decode at 25 fps, audio at 16 kHz mono (from the separate audio file or the
video's sound), FaceMesh landmarks on every frame, leading and trailing frames without a
face trimmed (within ``max_trim`` seconds), short gaps interpolated and long ones rejected,
the smoothed FFHQ-style crop, landmarks in crop pixels, log-mel features, JPEG crops, and
the face-quality figures of :mod:`flowvq.data.face.quality` (the gate itself is applied at
merge, so its thresholds can change without extracting again). The PCA basis and the pose reference need the whole train split, so they are
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
from flowvq.data.face.crop import ffhq_quads
from flowvq.data.face.detection import FaceDetector
from flowvq.data.face.quality import detector_agrees, landmark_order
from flowvq.data.preprocess.layouts import ClipSpec
from flowvq.data.schema import pack_frames
from flowvq.data.video import MediaError, NoAudioError, iter_frames, read_audio

__all__ = [
    "ClipError",
    "ExtractConfig",
    "FaceModels",
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
        max_trim: leading and trailing runs of frames without a face (longer than
            ``max_gap``) are cut, up to this many seconds each; the trim is recorded.
        quality_samples: frames per clip checked by the face detector (the ``confirmed`` figure).
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
    max_trim: float = 2.0
    quality_samples: int = 6
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


class FaceModels:
    """The FaceMesh tracker and the face detector, made once per process and reused for every
    clip (the tracker is reset between clips, which gives what a new one would).

    Arguments:
        refine_landmarks: FaceMesh iris refinement.
    """

    def __init__(self, refine_landmarks: bool = True) -> None:
        self.refine_landmarks = refine_landmarks
        self.tracker = FaceTracker(refine_landmarks=refine_landmarks)
        self.detector = FaceDetector()

    def close(self) -> None:
        self.tracker.close()
        self.detector.close()

    def __enter__(self) -> FaceModels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Side of the aligned crops the face detector checks (its full-range input size).
CHECK_SIZE = 192


class _Samples:
    """Evenly spaced aligned crops of the frames with a face, at most ``2 * count`` kept at a time."""

    def __init__(self, count: int) -> None:
        self.count, self.step = max(1, count), 1
        self.kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # frame -> (crop, iBUG-68 in the crop)

    def offer(self, index: int, frame: np.ndarray, landmarks: np.ndarray) -> None:
        if index % self.step or np.isnan(landmarks).any():
            return
        matrix = crop_transforms(landmarks[None], CHECK_SIZE, smoothing=0)
        ibug = transform_points(matrix, to_ibug68(landmarks[None, :, :2]))[0]
        self.kept[index] = (warp_crop(frame, matrix[0], CHECK_SIZE), ibug)
        if len(self.kept) > 2 * self.count:
            self.step *= 2
            self.kept = {k: v for k, v in self.kept.items() if k % self.step == 0}

    def pick(self, start: int, stop: int) -> list[tuple[np.ndarray, np.ndarray]]:
        inside = sorted(k for k in self.kept if start <= k < stop)
        if len(inside) > self.count:
            inside = [inside[i] for i in np.linspace(0, len(inside) - 1, self.count).round().astype(int)]
        return [self.kept[k] for k in inside]


def _size_hint(widths: list[float]) -> str:
    """What the face detector saw, for a no-face message."""
    if widths:
        return (
            f"; the face detector found a face {100 * float(np.median(widths)):.1f}% of the frame width "
            f"{len(widths)} time(s), but FaceMesh could not follow it there"
        )
    return "; neither FaceMesh nor the full-range face detector found one (faces under about 3% of the frame width are missed)"


def _trim(missing: np.ndarray, config: ExtractConfig, video: object, hint: str = "") -> tuple[int, int]:
    """First and one-past-last frame to keep: leading/trailing faceless runs longer than ``max_gap`` cut."""
    count, limit = len(missing), int(round(config.max_trim * config.fps))
    if missing.all():
        raise ClipError("no_face", f"{video}: no face detected in any of the {count} frames{hint}")
    first = int(np.argmax(~missing))
    last = count - int(np.argmax(~missing[::-1]))
    start = first if first > config.max_gap else 0
    stop = last if count - last > config.max_gap else count
    for frames, where in ((start, "first"), (count - stop, "last")):
        if frames > limit:
            raise ClipError(
                "no_face",
                f"{video}: no face in the {where} {frames} frames ({frames / config.fps:.1f} s), more than "
                f"max_trim={config.max_trim} s; the face enters late or leaves early: cut the video",
            )
    return start, stop


def extract_clip(
    spec: ClipSpec,
    config: ExtractConfig,
    coefficients: dict[str, np.ndarray] | None = None,
    models: FaceModels | None = None,
) -> dict:
    """Everything per clip, as arrays for :func:`write_cached`.

    Arguments:
        spec: the clip.
        config: extraction settings.
        coefficients: optional ``exp`` ``[T', E]`` and ``pose`` ``[T', P]`` from another source
            (Deep3DFaceRecon); the clip is cut to the shorter of video and coefficients.
        models: the tracker and detector to reuse (made for this clip when ``None``).

    Returns:
        ``meta`` (JSON: ids, labels, counts, the trim ``[start, stop)`` in source frames and
        the quality figures ``detected``, ``ordered``, ``confirmed``), ``landmarks`` float32
        ``[T, N, 3]`` in crop pixels (z scaled like x), ``ibug68`` float32 ``[T, 68, 2]`` in crop
        pixels, ``crop`` float64 ``[T, 2, 3]`` (frame -> crop pixels), ``audio`` int16
        ``[T * 640]``, ``mel`` float32 ``[T, K, M]``, ``frames`` uint8 blob and ``frame_offsets``
        int64, and ``exp`` / ``pose`` when ``coefficients`` are given.

    Raises:
        ClipError: with ``kind`` one of ``unreadable``, ``no_audio``, ``too_short``, ``no_face``,
            ``short_audio``, ``length_mismatch``.
    """
    if models is None or models.refine_landmarks != config.refine_landmarks:
        with FaceModels(config.refine_landmarks) as own:
            return extract_clip(spec, config, coefficients, own)
    kept: list[np.ndarray] | None = [] if config.frames else None
    samples = _Samples(config.quality_samples)
    models.tracker.reset()

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

    tracked = []
    width = 0
    try:
        for index, frame in enumerate(decoded()):
            width = frame.shape[1]
            tracked.append(models.tracker(frame))
            samples.offer(index, frame, tracked[-1])
    except MediaError as error:
        raise ClipError("unreadable", str(error)) from error
    if not tracked:
        raise ClipError("unreadable", f"{spec.video}: no frames decoded")
    raw = np.stack(tracked)  # (T, N, 3) frame pixels
    count = source_frames = len(raw)
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
    missing = np.isnan(raw).reshape(count, -1).any(1)  # (T,)
    start, stop = _trim(missing, config, spec.video, _size_hint(models.tracker.small_face_widths))
    raw, missing = raw[start:stop], missing[start:stop]
    count = stop - start
    if count < config.min_frames:
        raise ClipError("too_short", f"{spec.video}: {count} frames, fewer than min_frames={config.min_frames}")

    step = samples_per_frame(config.audio, config.fps)
    source = spec.audio if spec.audio is not None else spec.video
    try:
        waveform = read_audio(source.open(), config.audio.sample_rate)
    except NoAudioError as error:
        raise ClipError("no_audio", str(error)) from error
    except MediaError as error:
        raise ClipError("unreadable", str(error)) from error
    waveform = waveform[start * step :]
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
        hint = _size_hint(models.tracker.small_face_widths) if models.tracker.small_face_widths else ""
        raise ClipError("no_face", f"{spec.video}: {error}{hint}") from error
    crop = crop_transforms(landmarks, config.size, config.crop_smoothing)  # (T, 2, 3)
    in_crop = transform_points(crop, landmarks).astype(np.float32)  # (T, N, 3) crop pixels
    ibug = to_ibug68(in_crop[..., :2]).astype(np.float32)

    blob, offsets = b"", np.zeros(0, dtype=np.int64)
    if config.frames:
        jpegs = []
        frames = kept if kept is not None else iter_frames(spec.video.open(), config.fps)
        try:
            for index, frame in enumerate(frames):
                if index >= stop:
                    break
                if index >= start:
                    jpegs.append(_encode_jpeg(warp_crop(frame, crop[index - start], config.size), config.jpeg_quality))
        except MediaError as error:
            raise ClipError("unreadable", str(error)) from error
        if len(jpegs) != count:
            raise ClipError("unreadable", f"{spec.video}: second decode gave {len(jpegs)} frames, the first {count}")
        blob, offsets = pack_frames(jpegs)

    checks = [detector_agrees(models.detector(image), points) for image, points in samples.pick(start, stop)]
    _, half = ffhq_quads(landmarks[~missing] if (~missing).any() else landmarks)
    meta = {
        "clip_id": spec.clip_id,
        "speaker": spec.speaker,
        "split": spec.split,
        "emotion": int(spec.emotion),
        "intensity": int(spec.intensity),
        "video": str(spec.video),
        "audio": str(source),
        "num_frames": int(count),
        "source_frames": int(source_frames),
        "trim": [int(start), int(stop)],
        "detected": float(1.0 - missing.mean()),
        "ordered": float(landmark_order(ibug).mean()),
        "confirmed": float(np.mean(checks)) if checks else 0.0,
        "checked": len(checks),
        "face_width": float(np.median(2 * np.linalg.norm(half, axis=1)) / max(1, width)),
    }
    out = {
        "meta": np.array(json.dumps(meta)),
        "landmarks": in_crop,
        "ibug68": ibug,
        "crop": crop,
        "audio": to_int16(waveform),
        "mel": log_mel(waveform, count, config.audio, config.fps),
        "frames": np.frombuffer(blob, dtype=np.uint8),
        "frame_offsets": offsets,
    }
    if coefficients is not None:
        out["exp"] = np.asarray(coefficients["exp"][start:stop], dtype=np.float32)
        out["pose"] = np.asarray(coefficients["pose"][start:stop], dtype=np.float32)
    return out
