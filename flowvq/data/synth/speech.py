"""SynthTalk audio: syllable trains of harmonic, formant-filtered voiced sound with pauses.

Each syllable is an optional consonant (a noise burst) and a vowel: a harmonic series on an
F0 contour, each harmonic weighted by the vowel's formant resonances and a spectral tilt.
Syllables group into words, words into phrases separated by pauses. Emotion scales F0,
F0 range, energy, speaking rate, tilt and breathiness, so the audio carries the emotion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PROSODY", "VOWELS", "Prosody", "Speech", "Voice", "speak"]

#: Vowel -> formants F1, F2, F3 (Hz, adult male) and lip shape (stretch, pucker).
VOWELS: dict[str, tuple[tuple[float, float, float], tuple[float, float]]] = {
    "a": ((730.0, 1090.0, 2440.0), (0.1, 0.0)),
    "e": ((530.0, 1840.0, 2480.0), (0.45, 0.0)),
    "i": ((300.0, 2250.0, 3010.0), (0.8, 0.0)),
    "o": ((570.0, 840.0, 2410.0), (0.0, 0.5)),
    "u": ((320.0, 870.0, 2240.0), (0.0, 0.9)),
}
_VOWEL_KEYS = tuple(VOWELS)
_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


@dataclass(frozen=True)
class Prosody:
    """Multipliers of a speaker's voice for one emotion (at full intensity)."""

    f0: float
    f0_range: float
    energy: float
    rate: float
    tilt: float  # spectral tilt exponent multiplier (< 1: brighter, pressed voice)
    breath: float  # aspiration noise multiplier


PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    "angry": Prosody(1.15, 1.4, 1.5, 1.15, 0.7, 0.8),
    "contempt": Prosody(0.95, 0.9, 0.8, 0.9, 1.05, 1.2),
    "disgusted": Prosody(0.93, 1.1, 0.9, 0.85, 1.05, 1.4),
    "fear": Prosody(1.3, 1.5, 0.95, 1.2, 1.0, 2.2),
    "happy": Prosody(1.25, 1.7, 1.3, 1.1, 0.85, 1.0),
    "sad": Prosody(0.85, 0.55, 0.65, 0.75, 1.3, 1.8),
    "surprised": Prosody(1.35, 1.9, 1.3, 1.0, 0.9, 1.1),
}


def _scaled(prosody: Prosody, scale: float) -> Prosody:
    """Interpolate between neutral (scale 0) and the emotion's prosody (scale 1)."""
    return Prosody(*(1.0 + (value - 1.0) * scale for value in vars(prosody).values()))


@dataclass(frozen=True)
class Voice:
    """A speaker's voice: mean F0 (Hz), formant scale (vocal tract), tilt, breathiness."""

    f0: float
    formant_scale: float
    tilt: float
    breath: float


@dataclass
class Speech:
    """A synthesised utterance.

    Attributes:
        waveform: float32 [N] in [-1, 1].
        f0: F0 per video frame (Hz, 0 where unvoiced) [T].
        vowel_shape: lip (stretch, pucker) per video frame [T, 2].
        onsets: syllable onset frame and stress weight [n, 2].
        word_onsets: word onset frame and stress weight [w, 2].
    """

    waveform: np.ndarray
    f0: np.ndarray
    vowel_shape: np.ndarray
    onsets: np.ndarray
    word_onsets: np.ndarray


def _syllable(
    rng: np.random.Generator, n: int, f0: float, f0_range: float, vowel: str, voice: Voice, prosody: Prosody, sr: int
) -> tuple[np.ndarray, np.ndarray]:
    """One voiced syllable of ``n`` samples at unit RMS, and its F0 contour."""
    t = np.arange(n) / n
    contour = f0 * (1.0 + 0.06 * f0_range * np.sin(np.pi * t) * rng.uniform(-1, 1.5) - 0.03 * t)
    contour *= 1.0 + 0.004 * np.sin(2 * np.pi * 5.5 * np.arange(n) / sr)  # vibrato
    phase = 2 * np.pi * np.cumsum(contour) / sr
    harmonics = np.arange(1, int(5000 / contour.max()) + 1)
    formants = np.array(VOWELS[vowel][0]) * voice.formant_scale
    frequencies = harmonics * contour.mean()
    resonance = 1.0 / (1.0 + ((frequencies[:, None] - formants) / (_BANDWIDTHS / 2)) ** 2)
    amplitude = harmonics ** (-voice.tilt * prosody.tilt) * (0.05 + resonance @ np.array([1.0, 0.6, 0.3]))
    wave = amplitude.astype(np.float32) @ np.sin(np.outer(harmonics, phase)).astype(np.float32)
    wave += voice.breath * prosody.breath * 0.08 * rng.standard_normal(n) * wave.std()
    ramp = min(n // 4, int(0.03 * sr))
    shape = np.ones(n)
    shape[:ramp] = np.sin(np.linspace(0, np.pi / 2, ramp)) ** 2
    shape[-2 * ramp :] = np.cos(np.linspace(0, np.pi / 2, 2 * ramp)) ** 2
    wave = wave * shape
    return wave / (np.sqrt(np.mean(wave**2)) + 1e-8), contour


def _consonant(rng: np.random.Generator, n: int) -> np.ndarray:
    """A fricative or plosive noise burst at unit RMS: high-passed (s-like) or broad (h-like)."""
    noise = rng.standard_normal(n + 1)
    burst = np.diff(noise) if rng.random() < 0.5 else noise[:n]
    burst *= np.hanning(n)
    return burst / (np.sqrt(np.mean(burst**2)) + 1e-8)


def speak(
    rng: np.random.Generator,
    frames: int,
    voice: Voice,
    emotion: str,
    scale: float,
    sample_rate: int = 16000,
    fps: float = 25.0,
) -> Speech:
    """Synthesise ``frames`` video frames' worth of emotional speech.

    Arguments:
        voice: the speaker's voice.
        emotion: emotion name; ``scale`` (0 = neutral delivery, 1 = full) scales its prosody.
    """
    prosody = _scaled(PROSODY[emotion], scale)
    step = sample_rate / fps
    n_total = int(round(frames * step))
    wave = np.zeros(n_total, dtype=np.float32)
    f0_track = np.zeros(frames, dtype=np.float32)
    shape_track = np.zeros((frames, 2), dtype=np.float32)
    onsets, word_onsets = [], []
    time = rng.uniform(0.08, 0.35)
    end = frames / fps - 0.15
    word_left = 0
    while time < end:
        if word_left == 0:  # a new word, after a pause
            word_left = int(rng.integers(1, 5))
            stressed_at = int(rng.integers(0, word_left))
            syllable_in_word = 0
            word_onsets.append((time * fps, 1.0 + 0.5 * rng.random()))
        duration = rng.uniform(0.12, 0.24) / prosody.rate
        duration = min(duration, end - time + 0.1)
        if duration < 0.06:
            break
        stress = 1.3 if syllable_in_word == stressed_at else 1.0
        amplitude = 0.07 * prosody.energy * stress * rng.uniform(0.85, 1.15)
        f0 = voice.f0 * prosody.f0 * (1 + 0.05 * prosody.f0_range * rng.standard_normal()) * (1.08 if stress > 1 else 1)
        vowel = _VOWEL_KEYS[int(rng.integers(0, len(_VOWEL_KEYS)))]
        start = int(time * sample_rate)
        if rng.random() < 0.55:  # a consonant before the vowel
            length = int(rng.uniform(0.03, 0.06) * sample_rate)
            stop = min(n_total, start + length)
            wave[start:stop] += 0.35 * amplitude * _consonant(rng, length)[: stop - start]
            start = stop
        n = int(duration * sample_rate)
        stop = min(n_total, start + n)
        voiced, contour = _syllable(rng, n, f0, prosody.f0_range, vowel, voice, prosody, sample_rate)
        wave[start:stop] += amplitude * voiced[: stop - start]
        first, last = int(np.ceil(start / step)), min(frames, int(stop / step) + 1)
        if last > first:
            centre = ((np.arange(first, last) + 0.5) * step - start).clip(0, n - 1).astype(int)
            f0_track[first:last] = contour[centre]
            bump = np.sin(np.pi * np.linspace(0.1, 0.9, last - first))
            shape_track[first:last] = np.maximum(shape_track[first:last], np.outer(bump, VOWELS[vowel][1]))
        onsets.append((time * fps, stress))
        time = stop / sample_rate + rng.uniform(0.015, 0.05)
        syllable_in_word += 1
        word_left -= 1
        if word_left == 0:
            pause = rng.uniform(0.1, 0.3) if rng.random() > 0.2 else rng.uniform(0.35, 0.6)
            time += pause / prosody.rate
    wave += rng.standard_normal(n_total).astype(np.float32) * 3e-4  # room noise
    peak = np.abs(wave).max()
    if peak > 0.95:  # never clip: a loud clip is scaled down as a whole
        wave *= 0.95 / peak
    return Speech(
        waveform=wave,
        f0=f0_track,
        vowel_shape=shape_track,
        onsets=np.array(onsets, dtype=np.float32).reshape(-1, 2),
        word_onsets=np.array(word_onsets, dtype=np.float32).reshape(-1, 2),
    )
