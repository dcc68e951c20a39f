"""SynthTalk expression and head-pose processes: what drives each of the E=16 dims.

``exp = speech + emotion_offset + random + blink`` (each term exported as ground truth):

- ``speech``: ``jaw_open`` follows the audio envelope with a visual lead of ``LEAD_FRAMES``
  (the mouth opens before the sound), ``lip_stretch`` / ``lip_pucker`` follow each syllable's
  vowel (i/e stretch, o/u pucker) with the same lead;
- ``emotion_offset``: the emotion's template x intensity scale x the speaker's
  expressiveness, jittered per clip;
- ``random``: a per-clip smooth (Ornstein-Uhlenbeck) process on every dim, so one audio
  track maps to many expression tracks;
- ``blink``: Poisson blinks with an emotion-dependent rate.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from flowvq.data.schema import EMOTIONS

__all__ = [
    "EMOTION_TEMPLATES",
    "ENVELOPE_REF",
    "EXP_INDEX",
    "EXP_NAMES",
    "INTENSITY_SCALES",
    "LEAD_FRAMES",
    "NUISANCE_DIMS",
    "blinks",
    "intensity_scale",
    "ou_process",
    "pose_process",
    "random_expression",
    "speech_expression",
]

EXP_NAMES: tuple[str, ...] = (
    "jaw_open",
    "lip_stretch",
    "lip_pucker",
    "smile",
    "frown",
    "brow_raise",
    "brow_lower",
    "eye_wide",
    "squint",
    "blink",
    "nose_wrinkle",
    "lip_asym",
    "cheek_raise",
    "gaze_x",  # nuisance: iris position, independent of audio and emotion
    "gaze_y",
    "jaw_side",
)
EXP_INDEX: dict[str, int] = {name: index for index, name in enumerate(EXP_NAMES)}
NUISANCE_DIMS: tuple[str, ...] = ("gaze_x", "gaze_y", "jaw_side")
#: The mouth moves this many video frames before the sound it makes.
LEAD_FRAMES: int = 1
#: Audio RMS (of the int16 waveform scaled to [-1, 1]) that opens the jaw by one unit at gain 1.
ENVELOPE_REF: float = 0.14
#: Template scale of MEAD intensity levels 0, 1, 2 (neutral clips use 0).
INTENSITY_SCALES: tuple[float, ...] = (0.45, 0.75, 1.0)

_TEMPLATE_ROWS: dict[str, dict[str, float]] = {
    "neutral": {},
    "angry": {
        "brow_lower": 1.0,
        "frown": 0.5,
        "squint": 0.35,
        "nose_wrinkle": 0.3,
        "lip_stretch": 0.25,
        "eye_wide": 0.2,
    },
    "contempt": {"lip_asym": 1.0, "smile": 0.15, "squint": 0.3, "brow_lower": 0.15},
    "disgusted": {"nose_wrinkle": 1.0, "brow_lower": 0.5, "frown": 0.45, "squint": 0.45, "cheek_raise": 0.35},
    "fear": {"brow_raise": 0.75, "brow_lower": 0.3, "eye_wide": 1.0, "lip_stretch": 0.7, "jaw_open": 0.12},
    "happy": {"smile": 1.0, "cheek_raise": 0.85, "squint": 0.35, "lip_stretch": 0.25},
    "sad": {"frown": 0.9, "brow_raise": 0.35, "brow_lower": 0.2, "squint": 0.25, "lip_pucker": 0.2, "eye_wide": -0.2},
    "surprised": {"brow_raise": 1.0, "eye_wide": 0.85, "jaw_open": 0.3, "lip_pucker": 0.25},
}
#: Emotion templates [8, E] at intensity scale 1 and expressiveness 1, rows in EMOTIONS order.
EMOTION_TEMPLATES: np.ndarray = np.array(
    [[_TEMPLATE_ROWS[emotion].get(name, 0.0) for name in EXP_NAMES] for emotion in EMOTIONS], dtype=np.float32
)

#: Per-clip random process: standard deviation per dim (nuisance dims move most).
_RANDOM_STD = np.full(len(EXP_NAMES), 0.1)
_RANDOM_STD[[EXP_INDEX["gaze_x"], EXP_INDEX["gaze_y"]]] = 0.6
_RANDOM_STD[EXP_INDEX["jaw_side"]] = 0.25
_RANDOM_STD[EXP_INDEX["blink"]] = 0.0
_RANDOM_STD[EXP_INDEX["jaw_open"]] = 0.04

#: Blinks per second, and head-motion energy, per emotion.
BLINK_RATE: dict[str, float] = dict(zip(EMOTIONS, (0.3, 0.25, 0.3, 0.35, 0.5, 0.3, 0.4, 0.15)))
POSE_ENERGY: dict[str, float] = dict(zip(EMOTIONS, (1.0, 1.5, 0.9, 1.1, 1.3, 1.3, 0.6, 1.4)))
#: Mean pose offset per emotion (yaw, pitch, roll, tx, ty, log-scale) at full intensity;
#: pitch > 0 lifts the chin (the head tilts back), so sadness and anger lower the head.
POSE_OFFSET: dict[str, tuple[float, ...]] = {
    "neutral": (0, 0, 0, 0, 0, 0),
    "angry": (0, -0.06, 0, 0, 0.01, 0.03),
    "contempt": (0.08, 0.04, 0.05, 0, 0, 0),
    "disgusted": (-0.05, 0.03, -0.03, 0, 0, -0.02),
    "fear": (0, -0.03, 0, 0, 0, -0.05),
    "happy": (0, 0.02, 0.03, 0, 0, 0),
    "sad": (0, -0.1, -0.02, 0, 0.02, -0.02),
    "surprised": (0, 0.06, 0, 0, -0.01, 0.02),
}
_POSE_STD = np.array([0.09, 0.045, 0.035, 0.015, 0.012, 0.02])
_BLINK_SHAPE = np.array([0.45, 0.9, 1.0, 0.75, 0.4, 0.15])


def intensity_scale(emotion: int, intensity: int) -> float:
    """Template scale of a clip: 0 for neutral, ``INTENSITY_SCALES[intensity]`` otherwise."""
    return 0.0 if emotion == 0 else INTENSITY_SCALES[intensity]


def ou_process(rng: np.random.Generator, frames: int, dims: int, std: np.ndarray, coef: float) -> np.ndarray:
    """A stationary AR(1) process [frames, dims] with per-dim standard deviation ``std``."""
    burn = int(4 / (1 - coef))
    noise = rng.standard_normal((frames + burn, dims)) * np.sqrt(1 - coef**2)
    return (lfilter([1.0], [1.0, -coef], noise, axis=0)[burn:] * std).astype(np.float32)


def speech_expression(
    envelope: np.ndarray, vowel_shape: np.ndarray, jaw_gain: float, lead: int = LEAD_FRAMES
) -> tuple[np.ndarray, np.ndarray]:
    """Speech-driven expression [T, E] and the jaw drive [T].

    Arguments:
        envelope: audio RMS per frame [T] (``frame_envelope`` of the clip's audio).
        vowel_shape: per-frame (lip_stretch, lip_pucker) of the syllable being voiced [T, 2].
        jaw_gain: the speaker's jaw opening per unit of envelope / ``ENVELOPE_REF``.
    """
    frames = len(envelope)
    ahead = np.minimum(np.arange(frames) + lead, frames - 1)  # frame t shows the sound of t + lead
    speech = np.zeros((frames, len(EXP_NAMES)), dtype=np.float32)
    jaw = (jaw_gain * envelope[ahead] / ENVELOPE_REF).astype(np.float32)
    speech[:, EXP_INDEX["jaw_open"]] = jaw
    speech[:, EXP_INDEX["lip_stretch"]] = vowel_shape[ahead, 0]
    speech[:, EXP_INDEX["lip_pucker"]] = vowel_shape[ahead, 1]
    return speech, jaw


def random_expression(rng: np.random.Generator, frames: int) -> np.ndarray:
    """The per-clip smooth random process on every expression dim [T, E]."""
    slow = ou_process(rng, frames, len(EXP_NAMES), _RANDOM_STD, coef=0.96)
    return slow + (rng.normal(0, 0.5, len(EXP_NAMES)) * _RANDOM_STD).astype(np.float32)


def blinks(rng: np.random.Generator, frames: int, rate: float, fps: float = 25.0) -> np.ndarray:
    """Poisson blinks [T] in [0, 1] (1 = lids closed)."""
    starts = np.flatnonzero(rng.random(frames) < rate / fps)
    track = np.zeros(frames + len(_BLINK_SHAPE), dtype=np.float32)
    for start in starts:
        window = track[start : start + len(_BLINK_SHAPE)]
        np.maximum(window, _BLINK_SHAPE, out=window)
    return track[:frames]


def pose_process(
    rng: np.random.Generator,
    frames: int,
    word_onsets: np.ndarray,
    emotion: str,
    scale: float,
    bias: np.ndarray,
) -> np.ndarray:
    """Head pose [T, 6]: smooth AR processes, a nod at each stressed word onset, emotion style.

    Arguments:
        word_onsets: frame index and stress weight of each word onset [n, 2].
        emotion: emotion name (head-motion energy and mean offset).
        scale: the clip's intensity scale (0 for neutral).
        bias: the speaker's habitual pose offset (6,).
    """
    energy = 1.0 + (POSE_ENERGY[emotion] - 1.0) * max(scale, 0.0)
    slow = ou_process(rng, frames, 6, _POSE_STD * energy, coef=0.97)
    fast = ou_process(rng, frames, 6, _POSE_STD * 0.15 * energy, coef=0.7)
    pose = slow + fast + np.asarray(bias, dtype=np.float32)
    pose += np.asarray(POSE_OFFSET[emotion], dtype=np.float32) * scale
    nod = np.sin(np.linspace(0, np.pi, 9)) ** 2  # a 9-frame dip of the head
    for onset, stress in word_onsets:
        start = int(onset)
        stop = min(frames, start + len(nod))
        if 0 <= start < frames:
            pose[start:stop, 1] -= 0.03 * energy * stress * nod[: stop - start]  # the chin dips
    pose[:, 5] = np.exp(pose[:, 5])  # scale is positive, around 1
    return pose.astype(np.float32)
