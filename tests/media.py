"""Real test media: scikit-image's astronaut photograph moved through a known motion, with speech-like audio.

The face is a real photograph (what FaceMesh was trained for), so the tests exercise the
real decoder, detector and pose fit; the motion applied to it (roll, shift, scale per
frame) is known exactly, so the recovered pose can be scored in degrees.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowvq.data.video import write_audio, write_video

SAMPLE_RATE = 16000
FPS = 25.0
#: Centre of the astronaut's face in the 512 x 512 photograph, and the side of the region
#: around it that becomes a frame.
FACE_CENTRE = (222.0, 125.0)
REGION = 200.0


@dataclass
class Motion:
    """Known per-frame motion of the photograph (in the output frame's pixels)."""

    roll: np.ndarray  # (T,) radians, positive = clockwise in the image (the pose convention)
    shift: np.ndarray  # (T, 2) pixels
    scale: np.ndarray  # (T,)


def speech_like(seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Syllable trains of a harmonic voice (F0 contour, two formants) with pauses, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + 10 * rng.standard_normal()  # (n,)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = np.zeros(n)
    formants = rng.uniform([500, 1200], [800, 2200])
    for k in range(1, 30):
        frequency = k * f0.mean()
        gain = sum(1 / (1 + ((frequency - f) / 120) ** 2) for f in formants) / k**0.5
        voice += gain * np.sin(k * phase)
    # syllables at about 4 per second, each a raised-cosine envelope, with a pause now and then
    envelope = np.zeros(n)
    start = rng.uniform(0.0, 0.1)
    while start < seconds:
        length = rng.uniform(0.12, 0.22)
        index = (t >= start) & (t < start + length)
        envelope[index] = np.sin(np.pi * (t[index] - start) / length) ** 2
        start += length + (rng.uniform(0.3, 0.5) if rng.random() < 0.2 else rng.uniform(0.03, 0.08))
    audio = voice * envelope + 0.003 * rng.standard_normal(n)
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def known_motion(
    num_frames: int, seed: int = 0, roll_deg: float = 12.0, shift: float = 10.0, scale: float = 0.1
) -> Motion:
    """A smooth motion: roll up to ``roll_deg``, shift up to ``shift`` px, scale within 1 +- ``scale``."""
    rng = np.random.default_rng(seed)
    u = np.arange(num_frames) / max(1, num_frames - 1)
    p = rng.uniform(0, 2 * np.pi, 4)
    return Motion(
        roll=np.deg2rad(roll_deg) * np.sin(2 * np.pi * u + p[0]),
        shift=shift * np.stack([np.sin(2 * np.pi * u + p[1]), np.cos(2 * np.pi * u + p[2])], 1),
        scale=1 + scale * np.sin(2 * np.pi * u + p[3]),
    )


def moving_face(
    motion: Motion, size: int = 160, photo: np.ndarray | None = None, centre: tuple[float, float] = FACE_CENTRE
) -> np.ndarray:
    """Frames ``(T, size, size, 3)``: the photograph's region around ``centre`` (the face),
    rotated, shifted and scaled per frame about the frame centre."""
    import cv2

    photo = astronaut() if photo is None else photo
    face = np.array(centre)
    base = size / REGION  # photo pixels -> frame pixels
    middle = np.array([size / 2, size / 2])
    frames = []
    for roll, shift, scale in zip(motion.roll, motion.shift, motion.scale):
        c, s = np.cos(roll), np.sin(roll)
        linear = scale * base * np.array([[c, -s], [s, c]])  # rotation by +roll in x-right, y-down pixels
        offset = middle + shift - linear @ face
        matrix = np.concatenate([linear, offset[:, None]], axis=1)
        frames.append(
            cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        )
    return np.stack(frames)


def faceless(num_frames: int, size: int = 160, seed: int = 0) -> np.ndarray:
    """Frames of the photograph's lower right (the suit, no face), drifting slowly."""
    photo = astronaut()
    frames = [photo[300 + k : 300 + k + size, 300 : 300 + size] for k in range(num_frames)]
    return np.stack(frames)


def build_mead_tree(
    root: Path,
    speakers: dict[str, list[tuple[str, int]]],
    num_frames: int = 25,
    size: int = 160,
    tar_speakers: tuple[str, ...] = (),
) -> dict[str, Motion]:
    """A MEAD-shaped folder: ``<speaker>/video/front/<emotion>/level_<n>/<NNN>.mp4`` (no sound) and
    ``<speaker>/audio/<emotion>/level_<n>/<NNN>.m4a``; speakers in ``tar_speakers`` get
    ``video.tar`` / ``audio.tar`` instead of the folders.

    Arguments:
        speakers: speaker -> [(emotion, level), ...], one clip ``001`` each.

    Returns:
        clip id (as the MEAD scanner names it) -> the motion applied.
    """
    truth = {}
    for k, (speaker, clips) in enumerate(sorted(speakers.items())):
        photo = astronaut()
        if k % 2:  # a second "identity": the photograph mirrored and tinted
            photo = np.ascontiguousarray(photo[:, ::-1])
            photo = np.clip(photo.astype(np.int16) + np.array([12, -6, -10]), 0, 255).astype(np.uint8)
        for j, (emotion, level) in enumerate(clips):
            seed = 100 * k + j
            motion = known_motion(num_frames, seed)
            centre = (photo.shape[1] - 1 - FACE_CENTRE[0], FACE_CENTRE[1]) if k % 2 else FACE_CENTRE
            frames = moving_face(motion, size, photo, centre)
            base = root / speaker
            write_video(base / "video" / "front" / emotion / f"level_{level}" / "001.mp4", frames, FPS)
            write_audio(
                base / "audio" / emotion / f"level_{level}" / "001.m4a", speech_like(num_frames / FPS + 0.1, seed)
            )
            truth[f"{speaker}_front_{emotion}_{level}_001"] = motion
        if speaker in tar_speakers:
            for kind in ("video", "audio"):
                _tar_folder(root / speaker / kind, root / speaker / f"{kind}.tar")
    return truth


def _tar_folder(folder: Path, archive: Path) -> None:
    """Pack a folder as an uncompressed tar (members ``<kind>/...``, as MEAD ships them) and remove it."""
    import shutil

    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=folder.name)
    shutil.rmtree(folder)


def corrupt(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """A file with an .mp4 name and random bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path
