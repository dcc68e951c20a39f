"""A user's raw media as the models' inputs: speech -> log-mel columns, a photo -> the source crop.

Both go through exactly what preprocessing uses, so a generated video sees the features its
models were trained on:

- :func:`load_speech`: any file FFmpeg reads (wav, mp3, m4a, or the audio track of an mp4)
  -> 16 kHz mono (:func:`flowvq.data.video.read_audio`) -> log-mel columns ``[T, K, M]`` with
  the dataset card's settings (:func:`flowvq.data.audio.log_mel`), T frames at the card's fps.
- :func:`load_photo`: an image -> FaceMesh landmarks (the face detector first, to count the
  faces and take the largest) -> the FFHQ-style crop of :mod:`flowvq.data.face.crop` -> the
  source crop at the renderer's resolution and its iBUG-68 landmarks in crop pixels.
  :class:`Framing` places that crop as the dataset's own crops are placed (FFHQ crops for
  preprocessed data; SynthTalk renders its faces with its own margins, measured from its
  landmarks by :func:`dataset_framing`).

Example (runs as written once ``make demo`` has left ``runs/demo/``)::

    from flowvq.data.card import DatasetCard
    from flowvq.pipeline.inputs import load_photo, load_speech

    card = DatasetCard.load("runs/demo/data")
    speech = load_speech("runs/demo/inputs/speech.wav", card)
    face = load_photo("runs/demo/inputs/photo.png", size=64)
    print(speech.mel.shape, face.crop.shape, face.landmarks.shape)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowvq.data.audio import log_mel, samples_per_frame
from flowvq.data.card import AudioFeatures, DatasetCard
from flowvq.data.video import MediaError, read_audio

__all__ = [
    "FaceError",
    "StreamingMel",
    "iter_audio",
    "native_quiet",
    "read_image",
    "Framing",
    "SourceFace",
    "Speech",
    "dataset_framing",
    "load_photo",
    "load_speech",
    "speech_from_waveform",
]

#: Peak amplitude under which a recording counts as silent (about -66 dBFS).
SILENT_PEAK = 5e-4


class FaceError(ValueError):
    """A photo in which no face can be found."""


@dataclass
class Speech:
    """Audio as the models take it.

    Attributes:
        waveform: float32 mono at ``sample_rate`` (for muxing and sync metrics).
        mel: float32 ``[T, K, M]`` log-mel columns, K per video frame.
        fps: video frames per second the mel is aligned to.
        source: where it came from.
    """

    waveform: np.ndarray
    mel: np.ndarray
    sample_rate: int
    fps: float
    source: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.mel.shape[0])

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate


def _features(card_or_features: DatasetCard | AudioFeatures) -> tuple[AudioFeatures, float]:
    if isinstance(card_or_features, DatasetCard):
        return card_or_features.audio, float(card_or_features.fps)
    return card_or_features, 25.0


def speech_from_waveform(
    waveform: np.ndarray, card: DatasetCard | AudioFeatures, source: str = "waveform", check_silence: bool = True
) -> Speech:
    """:class:`Speech` of a mono waveform already at the card's sample rate (float in [-1, 1] or int16).

    T = ceil(samples / samples-per-frame): every sample of the audio is under a frame.
    """
    features, fps = _features(card)
    waveform = np.asarray(waveform)
    if waveform.dtype == np.int16:
        waveform = waveform.astype(np.float32) / 32768.0
    waveform = waveform.astype(np.float32).reshape(-1)
    step = samples_per_frame(features, fps)
    if len(waveform) < step:
        raise MediaError(
            f"{source}: {len(waveform)} audio samples, less than one video frame ({step} samples at "
            f"{features.sample_rate} Hz and {fps:g} fps); give a recording of speech"
        )
    if check_silence and float(np.abs(waveform).max()) < SILENT_PEAK:
        raise MediaError(
            f"{source}: the audio is silent (peak {float(np.abs(waveform).max()):.1e}); give a recording of speech"
        )
    frames = -(-len(waveform) // step)
    return Speech(waveform, log_mel(waveform, frames, features, fps), features.sample_rate, fps, source)


def load_speech(path: str | Path, card: DatasetCard | AudioFeatures) -> Speech:
    """Read a speech file (wav, mp3, m4a, the audio of an mp4, ...) into the card's log-mel features.

    Raises:
        MediaError: a missing or unreadable file, one without audio, or silent audio.
    """
    features, _ = _features(card)
    waveform = read_audio(path, features.sample_rate)
    return speech_from_waveform(waveform, card, source=repr(str(path)))


@dataclass(frozen=True)
class Framing:
    """Where the FFHQ quad of a face lands in the dataset's crops, in units of the crop side.

    ``centre`` is the quad centre, ``half`` its half side; preprocessing's own crops are the
    quad itself (centre 0.5, 0.5, half 0.5).
    """

    centre: tuple[float, float] = (0.5, 0.5)
    half: float = 0.5

    def to_dict(self) -> dict[str, object]:
        return {"centre": [float(c) for c in self.centre], "half": float(self.half)}


def dataset_framing(root: str | Path, split: str = "train", clips: int = 8) -> Framing:
    """The :class:`Framing` of a dataset's crops, measured from the iBUG-68 landmarks of its records."""
    from flowvq.data.card import DatasetCard
    from flowvq.data.shards import open_split

    card = DatasetCard.load(root)
    if not card.has_frames:
        return Framing()
    shards = open_split(root, split)
    centres, halves = [], []
    for index in range(min(clips, len(shards))):
        points = np.asarray(shards[index]["landmarks"], dtype=np.float64)  # (T, 68, 2) crop pixels
        centre, half = _quad(points)
        centres.append(centre / card.frame_size)
        halves.append(np.linalg.norm(half, axis=1) / card.frame_size)
    centre = np.concatenate(centres).mean(0)
    return Framing((float(centre[0]), float(centre[1])), float(np.concatenate(halves).mean()))


def _quad(ibug: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FFHQ quad (centre ``(T, 2)``, half-side vector ``(T, 2)``) of iBUG-68 landmarks ``(T, 68, 2)``."""
    from flowvq.data.face.crop import ffhq_quads

    return ffhq_quads(ibug)


@dataclass
class SourceFace:
    """The source face a renderer starts from.

    Attributes:
        crop: uint8 ``[S, S, 3]`` aligned face crop.
        landmarks: float32 ``[68, 2]`` iBUG-68 landmarks in crop pixels (NaN when unknown).
        matrix: ``[2, 3]`` similarity from photo pixels to crop pixels (None when the image
            was already a crop).
        photo: the original RGB image (for paste-back).
        faces: faces the detector found.
        notes: what a user should hear (several faces, a small face).
    """

    crop: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray | None = None
    photo: np.ndarray | None = None
    faces: int = 1
    notes: list[str] = field(default_factory=list)
    source: str = ""


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of an image file (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(f"{str(path)!r} is not a readable image ({error}); give a JPEG or PNG photo") from error


def aligned_source(crop: np.ndarray, size: int, landmarks: np.ndarray | None = None) -> SourceFace:
    """A :class:`SourceFace` of an image that is already an aligned crop (a dataset frame)."""
    from PIL import Image

    crop = np.asarray(crop, dtype=np.uint8)
    scale = size / crop.shape[1]
    if crop.shape[:2] != (size, size):
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
    points = np.full((68, 2), np.nan, np.float32) if landmarks is None else np.asarray(landmarks, np.float32) * scale
    return SourceFace(crop, points, faces=1, source="aligned crop")


@contextmanager
def native_quiet() -> Iterator[None]:
    """Send what native libraries write to the stderr file descriptor (mediapipe's TFLite and
    absl lines) to /dev/null for the duration, while Python's ``sys.stderr`` (progress bars,
    warnings, tracebacks) still reaches the real stderr."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr file descriptor: nothing to silence
        yield
        return
    python_stderr = sys.stderr
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    sys.stderr = open(os.dup(saved), "w", buffering=1, errors="backslashreplace")  # noqa: SIM115
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _landmarks_in(image: np.ndarray, box: np.ndarray | None) -> np.ndarray | None:
    """FaceMesh landmarks ``(478, 3)`` in image pixels, on a square around ``box`` (or the whole image)."""
    from flowvq.data.face import FaceTracker

    height, width = image.shape[:2]
    x0 = y0 = 0
    region = image
    if box is not None:
        side = int(min(2.2 * max(box[2] - box[0], box[3] - box[1]), height, width))
        x0 = int(np.clip((box[0] + box[2] - side) / 2, 0, width - side))
        y0 = int(np.clip((box[1] + box[3] - side) / 2, 0, height - side))
        region = image[y0 : y0 + side, x0 : x0 + side]
    with native_quiet(), FaceTracker(static_image_mode=True, find_small_faces=False) as tracker:
        points = tracker(np.ascontiguousarray(region))
    if np.isnan(points).any():
        return None
    points[:, :2] += np.array([x0, y0], dtype=np.float32)
    return points


def load_photo(image: str | Path | np.ndarray, size: int, framing: Framing | None = None) -> SourceFace:
    """The source crop of the face in a photo, cropped as the dataset's frames are.

    Arguments:
        image: a path (JPEG, PNG, ...) or an RGB uint8 array.
        size: side of the crop (the renderer's resolution).
        framing: where the face's FFHQ quad sits in the dataset's crops (default: FFHQ crops).

    Several faces: the largest is used and :attr:`SourceFace.notes` says so.

    Raises:
        FaceError: no face in the photo.
    """
    from flowvq.data.face import to_ibug68
    from flowvq.data.face.crop import transform_points, warp_crop
    from flowvq.data.face.detection import FaceDetector

    name = repr(str(image)) if isinstance(image, (str, Path)) else "the image"
    photo = read_image(image) if isinstance(image, (str, Path)) else np.asarray(image, dtype=np.uint8)
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise MediaError(f"{name}: expected an RGB image, got an array of shape {photo.shape}")
    framing = framing or Framing()
    with native_quiet(), FaceDetector() as detector:
        found = detector(photo)
    notes = []
    box = None
    if found:
        areas = [float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])) for d in found]
        largest = found[int(np.argmax(areas))]
        box = largest.box
        if len(found) > 1:
            notes.append(
                f"{name}: {len(found)} faces found; using the largest "
                f"({int(box[2] - box[0])} x {int(box[3] - box[1])} px at x={int(box[0])}, y={int(box[1])})"
            )
    points = _landmarks_in(photo, box)
    if points is None and box is not None:
        points = _landmarks_in(photo, None)
    if points is None:
        raise FaceError(
            f"{name}: no face found (face detector and FaceMesh); give a photo with one face, "
            "frontal and at least about 1/10 of the image wide"
        )
    ibug = to_ibug68(points[None, :, :2].astype(np.float64))  # (1, 68, 2)
    centre, half = _quad(ibug)
    length = float(np.linalg.norm(half[0]))
    x = half[0] / length
    y = np.array([-x[1], x[0]])
    scale = framing.half * size / length  # crop pixels per photo pixel
    linear = np.stack([x, y]) * scale  # (2, 2)
    target = np.asarray(framing.centre, dtype=np.float64) * size
    matrix = np.concatenate([linear, (target - linear @ centre[0])[:, None]], axis=1)
    crop = warp_crop(photo, matrix, size)
    landmarks = transform_points(matrix[None], ibug)[0].astype(np.float32)
    return SourceFace(crop, landmarks, matrix, photo, faces=max(1, len(found)), notes=notes, source=name)


def iter_audio(path: str | Path, sample_rate: int, block: int = 3200):
    """Decode a file's first audio stream as it is read: float32 mono blocks of about ``block`` samples.

    Raises:
        MediaError: a missing or unreadable file, or one without audio.
    """
    import av

    from flowvq.data.video import NoAudioError, _open

    container = _open(path)
    try:
        if not container.streams.audio:
            raise NoAudioError(f"{str(path)!r} has no audio stream; give a speech recording or a video with sound")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        pending: list[np.ndarray] = []
        size = 0
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    pending.append(out.to_ndarray().reshape(-1))
                    size += pending[-1].size
                if size >= block:
                    yield np.concatenate(pending).astype(np.float32)
                    pending, size = [], 0
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as error:
            raise MediaError(f"{str(path)!r}: audio decoding failed ({error}); the file is corrupt") from error
        if pending:
            yield np.concatenate(pending).astype(np.float32)
    finally:
        container.close()


class StreamingMel:
    """Log-mel columns of audio that arrives in blocks, equal to :func:`~flowvq.data.audio.log_mel`
    of the whole recording (same zero padding at both ends, same STFT frames).

    :meth:`push` adds samples; :meth:`ready` gives the mel ``[t, K, M]`` of the frames whose
    STFT windows are complete (all of them after :meth:`finish`).
    """

    def __init__(self, card: DatasetCard | AudioFeatures) -> None:
        self.features, self.fps = _features(card)
        self.step = samples_per_frame(self.features, self.fps)
        self.audio = np.zeros(0, dtype=np.float32)
        self.done = 0  # frames whose mel has been given
        self.final = False

    def push(self, samples: np.ndarray) -> None:
        self.audio = np.concatenate([self.audio, np.asarray(samples, dtype=np.float32).reshape(-1)])

    def finish(self) -> None:
        self.final = True

    @property
    def total_frames(self) -> int | None:
        return -(-len(self.audio) // self.step) if self.final else None

    def ready(self) -> np.ndarray:
        import librosa

        f = self.features
        half = f.n_fft // 2
        if self.final:
            stop = self.total_frames
        else:
            stop = max(self.done, (len(self.audio) - half) // self.step)
        if stop <= self.done:
            return np.zeros((0, f.mel_per_frame, f.n_mels), dtype=np.float32)
        begin = self.done * self.step - half
        end = stop * self.step + half
        limit = self.total_frames * self.step if self.final else len(self.audio)
        segment = np.zeros(end - begin, dtype=np.float32)
        lo, hi = max(begin, 0), min(end, limit, len(self.audio))
        if hi > lo:
            segment[lo - begin : hi - begin] = self.audio[lo:hi]
        mel = librosa.feature.melspectrogram(
            y=segment,
            sr=f.sample_rate,
            n_fft=f.n_fft,
            hop_length=f.hop_length,
            win_length=f.win_length,
            n_mels=f.n_mels,
            fmin=f.fmin,
            fmax=f.fmax,
            center=False,
            power=2.0,
        )
        count = stop - self.done
        mel = np.log(np.maximum(mel, 1e-5)).T[: count * f.mel_per_frame]
        self.done = stop
        return mel.reshape(count, f.mel_per_frame, f.n_mels).astype(np.float32)
