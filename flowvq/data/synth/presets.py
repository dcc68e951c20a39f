"""SynthTalk presets (a small registry), speakers and the clip plan.

A preset fixes how many speakers each split holds (splits are by speaker: val and test
speakers are never seen in training), how many clips each speaker records per emotion and
intensity, clip lengths and the frame size. Everything is drawn from ``numpy`` generators
seeded by ``(seed, purpose, index)``, so a plan is identical for a seed whatever the order or
process in which clips are later rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowvq.data.schema import EMOTIONS, INTENSITY_LEVELS
from flowvq.data.synth.speech import Voice

__all__ = ["PRESETS", "ClipSpec", "SpeakerSpec", "SynthPreset", "get_preset", "make_speakers", "plan_clips"]


@dataclass(frozen=True)
class SynthPreset:
    """Size of a SynthTalk dataset.

    Attributes:
        speakers: speakers per split, e.g. ``{"train": 4, "val": 1, "test": 2}``.
        neutral_clips: neutral clips per speaker (intensity 0).
        clips_per_level: clips per speaker for each non-neutral emotion and intensity level.
        levels_per_emotion: intensity levels each speaker records per emotion (3: all; 1: one
            level per emotion, rotating over speakers so that every level still occurs).
        seconds: range of clip lengths.
        frame_size: side of the square face crops in pixels.
        takes_per_speaker: when > 0, each speaker records this many clips of random emotions
            and intensities instead of the grid above (many identities, few frames each).
        first_speaker: index of the first speaker; identities are drawn from their index, so a
            preset whose speakers must differ from every other preset's starts far from 0.
    """

    name: str
    speakers: dict[str, int]
    neutral_clips: int
    clips_per_level: int
    levels_per_emotion: int
    seconds: tuple[float, float]
    frame_size: int
    takes_per_speaker: int = 0
    first_speaker: int = 0


PRESETS: dict[str, SynthPreset] = {
    preset.name: preset
    for preset in (
        # seconds to write on one core; every emotion; 2 held-out test speakers and a val speaker
        SynthPreset("tiny", {"train": 4, "val": 1, "test": 2}, 1, 1, 1, (1.5, 2.0), 64),
        # enough for an emotion classifier trained and scored on held-out speakers
        SynthPreset("small", {"train": 12, "val": 2, "test": 2}, 3, 2, 3, (2.0, 3.2), 128),
        # MEAD-like scale (MEAD: 60 speakers, ~40 neutral + 7 x 3 x 30 clips each)
        SynthPreset("full", {"train": 48, "val": 6, "test": 6}, 30, 10, 3, (2.5, 5.0), 128),
        # codebook pretraining, as the paper pretrains on a face set: thousands of identities
        # (never those of the other presets), one 8-frame clip each of a random emotion
        SynthPreset(
            "faces",
            {"train": 3000, "val": 32, "test": 32},
            0,
            0,
            0,
            (0.32, 0.32),
            64,
            takes_per_speaker=1,
            first_speaker=1_000_000,
        ),
    )
}


def get_preset(name: str | SynthPreset) -> SynthPreset:
    """The preset called ``name`` (or ``name`` itself if it is a preset); unknown names list the valid ones."""
    if isinstance(name, SynthPreset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown SynthTalk preset {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class SpeakerSpec:
    """One speaker: identity, voice, expressiveness, habitual pose and look.

    ``seed`` also seeds the face geometry and skin texture (derived on demand).
    """

    speaker_id: str
    split: str
    seed: int
    sex: str
    voice: Voice
    expressiveness: float  # scales the emotion templates
    jaw_gain: float  # jaw opening per unit of audio envelope
    blink_rate: float  # multiplies the emotion's blink rate
    pose_bias: tuple[float, ...]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    lips: tuple[int, int, int]
    background: tuple[int, int, int]
    clothes: tuple[int, int, int]
    long_hair: bool
    fringe: float  # how far the hairline comes down the forehead, 0..1
    age: float  # 0..1: depth of the resting wrinkles


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to generate one clip (picklable, for litdata workers)."""

    clip_id: str
    speaker: SpeakerSpec
    split: str
    emotion: int
    intensity: int
    seed: int
    num_frames: int
    frame_size: int  # crop size of the landmarks (and frames)
    frames: bool  # render frames, or write a coefficient-only record


_SKIN = np.array([[242, 208, 185], [224, 180, 150], [198, 150, 115], [160, 110, 80], [105, 70, 50]], dtype=float)
_HAIR = np.array([[30, 25, 22], [70, 45, 30], [120, 80, 45], [200, 165, 105], [140, 60, 30], [150, 150, 150]])
_IRIS = np.array([[70, 45, 25], [60, 100, 150], [70, 110, 70], [110, 85, 45], [40, 30, 25]])


def _colour(rgb: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(rgb), 0, 255))  # type: ignore[return-value]


def _luma(rgb: np.ndarray) -> float:
    return float(np.dot(rgb, [0.299, 0.587, 0.114]))


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def make_speaker(seed: int, index: int, split: str) -> SpeakerSpec:
    """Speaker number ``index`` of a dataset seeded with ``seed``."""
    own = _seed(seed, 1, index)
    rng = np.random.default_rng(own)
    sex = "W" if rng.random() < 0.5 else "M"
    tone = rng.uniform(0, len(_SKIN) - 1)
    low = int(tone)
    skin = _SKIN[low] + (tone - low) * (_SKIN[min(low + 1, len(_SKIN) - 1)] - _SKIN[low])
    skin = skin * rng.uniform(0.95, 1.05) + rng.normal(0, 2, 3)
    hair = _HAIR[rng.integers(0, len(_HAIR))] * rng.uniform(0.85, 1.15)
    if abs(_luma(hair) - _luma(skin)) < 50:  # hair must stand out from the skin
        hair = hair * 0.35 if _luma(skin) > 100 else np.array([200.0, 170.0, 120.0])
    lips = skin * np.array([0.86, 0.6, 0.62]) + np.array([25, 0, 5])
    background = rng.uniform(60, 200, 3)
    return SpeakerSpec(
        speaker_id=f"{sex}{index + 1:03d}",
        split=split,
        seed=own,
        sex=sex,
        voice=Voice(
            f0=rng.uniform(95, 135) if sex == "M" else rng.uniform(175, 235),
            formant_scale=rng.uniform(0.95, 1.05) * (1.15 if sex == "W" else 1.0),
            tilt=rng.uniform(0.9, 1.2),
            breath=rng.uniform(0.5, 1.5),
        ),
        expressiveness=float(rng.uniform(0.7, 1.3)),
        jaw_gain=float(rng.uniform(0.75, 1.15)),
        blink_rate=float(rng.uniform(0.7, 1.4)),
        pose_bias=tuple(float(v) for v in rng.normal(0, [0.05, 0.03, 0.02, 0.01, 0.01, 0.015])),
        skin=_colour(skin),
        hair=_colour(hair),
        iris=_colour(_IRIS[rng.integers(0, len(_IRIS))] + rng.normal(0, 6, 3)),
        lips=_colour(lips),
        background=_colour(background),
        clothes=_colour(rng.uniform(20, 220, 3)),
        long_hair=bool(sex == "W" and rng.random() < 0.75 or rng.random() < 0.1),
        fringe=float(rng.uniform(0.0, 1.0)),
        age=float(rng.uniform(0.0, 1.0)),
    )


def make_speakers(preset: SynthPreset, seed: int) -> dict[str, list[SpeakerSpec]]:
    """The speakers of each split (train first, then val, then test)."""
    out: dict[str, list[SpeakerSpec]] = {}
    index = preset.first_speaker
    for split in ("train", "val", "test"):
        out[split] = []
        for _ in range(preset.speakers.get(split, 0)):
            out[split].append(make_speaker(seed, index, split))
            index += 1
    return out


def plan_clips(
    preset: SynthPreset, seed: int, frame_size: int, frames: bool, fps: float = 25.0
) -> dict[str, list[ClipSpec]]:
    """Every clip of the dataset, per split, in a fixed order (the shard writer shuffles)."""
    plan: dict[str, list[ClipSpec]] = {}
    for split, speakers in make_speakers(preset, seed).items():
        clips = []
        for speaker_number, speaker in enumerate(speakers):
            takes: list[tuple[int, int]] = [(0, 0)] * preset.neutral_clips
            if preset.takes_per_speaker:
                rng = np.random.default_rng(_seed(seed, 3, speaker.seed % (2**31)))
                for _ in range(preset.takes_per_speaker):
                    emotion = int(rng.integers(0, len(EMOTIONS)))
                    takes.append((emotion, 0 if emotion == 0 else int(rng.integers(0, INTENSITY_LEVELS))))
            for emotion in range(1, len(EMOTIONS) if not preset.takes_per_speaker else 1):
                if preset.levels_per_emotion >= INTENSITY_LEVELS:
                    levels = list(range(INTENSITY_LEVELS))
                else:  # rotate levels over speakers and emotions so that all of them occur
                    first = speaker_number + emotion
                    levels = [(first + k) % INTENSITY_LEVELS for k in range(preset.levels_per_emotion)]
                takes += [(emotion, level) for level in levels for _ in range(preset.clips_per_level)]
            for take, (emotion, level) in enumerate(takes):
                clip_seed = _seed(seed, 2, speaker.seed % (2**31), take)
                length = np.random.default_rng(clip_seed).uniform(*preset.seconds)
                clips.append(
                    ClipSpec(
                        clip_id=f"{speaker.speaker_id}_{EMOTIONS[emotion]}_level{level + 1}_{take:03d}",
                        speaker=speaker,
                        split=split,
                        emotion=emotion,
                        intensity=level,
                        seed=clip_seed,
                        num_frames=int(round(length * fps)),
                        frame_size=frame_size,
                        frames=frames,
                    )
                )
        plan[split] = clips
    return plan
