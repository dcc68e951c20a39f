"""Audio features (librosa): log-mel columns aligned to video frames, and a per-frame envelope.

Every source (SynthTalk, MEAD, LRS3, HDTF, a folder of videos) goes through these two
functions, so the features a model sees do not depend on where a clip came from.
"""

from __future__ import annotations

import librosa
import numpy as np

from flowvq.data.card import AudioFeatures

__all__ = ["frame_envelope", "log_mel", "samples_per_frame", "to_int16"]


def samples_per_frame(features: AudioFeatures, fps: float) -> int:
    """Audio samples per video frame (640 at 16 kHz and 25 fps)."""
    value = features.sample_rate / fps
    if abs(value - round(value)) > 1e-6:
        raise ValueError(f"sample rate {features.sample_rate} is not a whole number of samples per frame at {fps} fps")
    return int(round(value))


def to_int16(waveform: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] to int16 (clipped)."""
    return (np.clip(waveform, -1.0, 1.0) * 32767.0).astype(np.int16)


def _as_float(waveform: np.ndarray) -> np.ndarray:
    if waveform.dtype == np.int16:
        return waveform.astype(np.float32) / 32768.0
    return waveform.astype(np.float32)


def log_mel(waveform: np.ndarray, num_frames: int, features: AudioFeatures, fps: float = 25.0) -> np.ndarray:
    """Log-mel features with ``features.mel_per_frame`` columns per video frame.

    Arguments:
        waveform: mono audio at ``features.sample_rate``, int16 or float in [-1, 1].
        num_frames: T, the number of video frames to cover; audio shorter than the video is
            padded with silence (callers refuse clips whose audio is much shorter).
        features: mel settings; ``hop_length * mel_per_frame`` must equal the samples per frame.

    Returns:
        float32 ``[T, K, M]``: natural log of the mel power, floored at 1e-5.
    """
    step = samples_per_frame(features, fps)
    if features.hop_length * features.mel_per_frame != step:
        raise ValueError(
            f"hop_length {features.hop_length} x mel_per_frame {features.mel_per_frame} must equal "
            f"{step} samples per video frame at {fps} fps"
        )
    audio = _as_float(waveform)
    need = num_frames * step
    audio = np.pad(audio, (0, max(0, need - len(audio))))[:need]
    mel = librosa.feature.melspectrogram(
        y=audio,
        sr=features.sample_rate,
        n_fft=features.n_fft,
        hop_length=features.hop_length,
        win_length=features.win_length,
        n_mels=features.n_mels,
        fmin=features.fmin,
        fmax=features.fmax,
        center=True,
        power=2.0,
    )  # (M, columns), columns = need / hop + 1
    mel = np.log(np.maximum(mel, 1e-5)).T[: num_frames * features.mel_per_frame]  # (T*K, M)
    return mel.reshape(num_frames, features.mel_per_frame, features.n_mels).astype(np.float32)


def frame_envelope(waveform: np.ndarray, num_frames: int, sample_rate: int = 16000, fps: float = 25.0) -> np.ndarray:
    """RMS amplitude of the audio under each video frame, float32 ``[T]`` (0 past the audio's end)."""
    step = int(round(sample_rate / fps))
    audio = _as_float(waveform)
    audio = np.pad(audio, (0, max(0, num_frames * step - len(audio))))[: num_frames * step]
    return np.sqrt(np.mean(audio.reshape(num_frames, step) ** 2, axis=1)).astype(np.float32)
