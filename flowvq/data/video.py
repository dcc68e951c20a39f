"""Video and audio IO with av (FFmpeg): decode to 25 fps RGB frames and 16 kHz mono audio, write mp4.

Frames are resampled to the target frame rate by nearest-timestamp selection (a frame may be
repeated or dropped, never blended), so a 30 fps or variable-rate source gives the same
timeline as a 25 fps one. Audio goes through av's resampler to mono float32 at the target
rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

__all__ = [
    "MediaError",
    "NoAudioError",
    "Source",
    "VideoInfo",
    "iter_frames",
    "probe",
    "read_audio",
    "read_video",
    "write_audio",
    "write_video",
]


class MediaError(ValueError):
    """A media file that cannot be read (missing, corrupt, no video or audio stream)."""


class NoAudioError(MediaError):
    """A readable media file without an audio stream."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` finds in a file; ``num_frames`` is after resampling to ``fps``."""

    path: str
    width: int
    height: int
    source_fps: float
    duration: float  # seconds of video
    num_frames: int
    fps: float
    has_audio: bool


Source = str | Path | BinaryIO  # a path, or an open binary file (e.g. a member of a tar archive)


def _name(source: Source) -> str:
    return str(getattr(source, "name", source)) if not isinstance(source, (str, Path)) else str(source)


def _open(source: Source) -> av.container.InputContainer:
    if not isinstance(source, (str, Path)):
        source.seek(0)
        try:
            return av.open(source)
        except (av.error.FFmpegError, UnicodeDecodeError) as error:
            raise MediaError(f"{_name(source)!r} is not a readable media file ({error}); re-download it") from error
    path = Path(source)
    if not path.is_file():
        raise MediaError(f"{str(path)!r} does not exist or is not a file")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise MediaError(
            f"{str(path)!r} is not a readable media file ({error}); re-download or re-encode it"
        ) from error


def _video_stream(container: av.container.InputContainer, path: Source) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(f"{_name(path)!r} has no video stream (expected an mp4/avi/mkv with video)")
    return container.streams.video[0]


def _frame_time(frame: av.VideoFrame, stream: av.video.stream.VideoStream, index: int) -> float:
    if frame.pts is not None and stream.time_base is not None:
        return float(frame.pts * stream.time_base)
    rate = float(stream.average_rate or 25)
    return index / rate


def iter_frames(path: Source, fps: float = 25.0) -> Iterator[np.ndarray]:
    """Decode a video as RGB uint8 frames ``(H, W, 3)`` resampled to ``fps``.

    Output frame ``k`` is the source frame whose timestamp is nearest to ``k / fps``
    (timestamps relative to the first frame). The stream ends with the source.

    Raises:
        MediaError: if the file is missing, unreadable or has no video stream.
    """
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        start: float | None = None
        previous: tuple[float, av.VideoFrame] | None = None
        k = 0  # next output index
        count = 0
        try:
            for count, frame in enumerate(container.decode(stream)):  # noqa: B007 - count used after the loop
                t = _frame_time(frame, stream, count)
                if start is None:
                    start = t
                t -= start
                # emit every target time k/fps that is closer to the previous frame than to this one
                while previous is not None and k / fps <= (previous[0] + t) / 2:
                    yield previous[1].to_ndarray(format="rgb24")
                    k += 1
                previous = (t, frame)
        except av.error.FFmpegError as error:
            raise MediaError(
                f"{_name(path)!r}: decoding failed after {count} frames ({error}); the file is corrupt"
            ) from error
        if previous is None:
            raise MediaError(f"{_name(path)!r} has a video stream but no decodable frames; the file is corrupt")
        # the last source frame covers until its timestamp plus one source frame period
        rate = float(stream.average_rate or fps)
        end = previous[0] + 1.0 / rate
        while k / fps < end - 0.5 / fps:
            yield previous[1].to_ndarray(format="rgb24")
            k += 1
    finally:
        container.close()


def read_video(path: Source, fps: float = 25.0) -> np.ndarray:
    """All frames of a video at ``fps`` as uint8 ``(T, H, W, 3)`` (see :func:`iter_frames`)."""
    frames = list(iter_frames(path, fps))
    return np.stack(frames)


def probe(path: Source, fps: float = 25.0) -> VideoInfo:
    """Size, rate and duration of a video without decoding it all (duration from the container)."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        source_fps = float(stream.average_rate or 0) or fps
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = (stream.frames or 0) / source_fps
        return VideoInfo(
            path=_name(path),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            source_fps=source_fps,
            duration=duration,
            num_frames=int(round(duration * fps)),
            fps=fps,
            has_audio=bool(container.streams.audio),
        )
    finally:
        container.close()


def read_audio(path: Source, sample_rate: int = 16000) -> np.ndarray:
    """The first audio stream of a file as mono float32 in [-1, 1] at ``sample_rate``.

    Raises:
        MediaError: if the file is missing, unreadable or has no audio stream.
    """
    container = _open(path)
    try:
        if not container.streams.audio:
            raise NoAudioError(
                f"{_name(path)!r} has no audio stream; give the separate audio file (e.g. MEAD's .m4a) or a video with sound"
            )
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as error:
            raise MediaError(f"{_name(path)!r}: audio decoding failed ({error}); the file is corrupt") from error
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32)
    finally:
        container.close()


def _add_audio_stream(container: av.container.OutputContainer, sample_rate: int) -> av.audio.stream.AudioStream:
    stream = container.add_stream("aac", rate=sample_rate)
    stream.layout = "mono"
    return stream


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    audio = np.clip(audio.astype(np.float32), -1.0, 1.0)
    step = 1024  # aac frame size
    for start in range(0, len(audio), step):
        chunk = audio[start : start + step]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 18,
) -> Path:
    """Write RGB uint8 frames ``(T, H, W, 3)`` as H.264 mp4, with AAC audio when given.

    Arguments:
        frames: uint8 frames; odd sizes are padded by one pixel (yuv420 needs even sides).
        audio: mono waveform (float in [-1, 1] or int16) at ``sample_rate``.
        crf: x264 quality (lower is better).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        audio_stream = _add_audio_stream(container, sample_rate) if audio is not None else None
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            _encode_audio(container, audio_stream, audio, sample_rate)
    return path


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = 16000) -> Path:
    """Write a mono waveform as AAC in an mp4 container (``.m4a``, as MEAD ships its audio)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = _add_audio_stream(container, sample_rate)
        _encode_audio(container, stream, audio, sample_rate)
    return path
