"""Shared fixtures: small datasets written through the real shard writer."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowvq.data.audio import log_mel, to_int16
from flowvq.data.card import AudioFeatures, DatasetCard
from flowvq.data.schema import EMOTIONS, NUM_LANDMARKS, pack_frames
from flowvq.data.shards import write_dataset

#: Clip lengths in frames per split of the random dataset; 20 is shorter than a 32-frame window.
RANDOM_CLIP_FRAMES: dict[str, list[int]] = {
    "train": [48, 20, 64, 40, 56, 72, 36, 44, 60, 52, 68, 38],
    "val": [50, 24, 42, 66],
    "test": [46, 58, 34, 40],
}
RANDOM_SPEAKERS: dict[str, list[str]] = {"train": ["spk0", "spk1", "spk2"], "val": ["spk3"], "test": ["spk4"]}


@dataclass(frozen=True)
class RandomClip:
    """What :func:`random_record` needs to build one clip (picklable, for litdata workers)."""

    clip_id: str
    speaker: str
    split: str
    frames: int
    seed: int
    emotion: int
    intensity: int
    exp_dim: int = 16
    pose_dim: int = 6
    frame_size: int = 64  # 0: no frames


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def random_record(clip: RandomClip) -> dict:
    """A clip record of random but well-formed arrays, with real log-mels of a random waveform."""
    rng = np.random.default_rng(clip.seed)
    frames = clip.frames
    features = AudioFeatures()
    samples = frames * features.sample_rate // 25
    # noise under a slowly varying envelope, so that the per-frame energy varies
    envelope = np.repeat(rng.uniform(0.0, 0.6, size=frames), samples // frames)
    audio = to_int16(envelope * rng.standard_normal(samples))
    jpegs: list[bytes] = []
    if clip.frame_size:
        size = clip.frame_size
        blocks = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
        base = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)  # (size, size, 3) 8-px blocks
        for index in range(frames):
            image = base.copy()
            image[:, :, 0] = (base[:, :, 0].astype(int) + 3 * index) % 256  # frames differ
            jpegs.append(_jpeg(image))
    blob, offsets = pack_frames(jpegs)
    return {
        "clip_id": clip.clip_id,
        "speaker": clip.speaker,
        "split": clip.split,
        "emotion": clip.emotion,
        "intensity": clip.intensity,
        "exp": (rng.standard_normal((frames, clip.exp_dim)) * 0.5 + 0.1).astype(np.float32),
        "pose": (rng.standard_normal((frames, clip.pose_dim)) * 0.2).astype(np.float32),
        "mel": log_mel(audio, frames, features),
        "audio": audio,
        "landmarks": rng.uniform(0, max(clip.frame_size, 64), size=(frames, NUM_LANDMARKS, 2)).astype(np.float32),
        "frames": blob,
        "frame_offsets": offsets,
        # the optional fields (drawn last, so the arrays above do not change with them)
        "blink": rng.uniform(0, 1, frames).astype(np.float32),
        "gaze": (rng.standard_normal((frames, 2)) * 0.2).astype(np.float32),
    }


def write_random_dataset(
    root: Path,
    frame_size: int = 64,
    exp_dim: int = 16,
    pose_dim: int = 6,
    clip_frames: dict[str, list[int]] | None = None,
    seed: int = 0,
    exp_names: list[str] | None = None,
) -> DatasetCard:
    """Write a small random dataset (speakers split by split) with the real shard writer."""
    clip_frames = clip_frames or RANDOM_CLIP_FRAMES
    items: dict[str, list[RandomClip]] = {}
    for split, lengths in clip_frames.items():
        speakers = RANDOM_SPEAKERS[split]
        items[split] = [
            RandomClip(
                clip_id=f"{split}_{index:03d}",
                speaker=speakers[index % len(speakers)],
                split=split,
                frames=frames,
                seed=seed * 1000 + 100 * list(RANDOM_CLIP_FRAMES).index(split) + index,
                emotion=index % len(EMOTIONS),
                intensity=index % 3,
                exp_dim=exp_dim,
                pose_dim=pose_dim,
                frame_size=frame_size,
            )
            for index, frames in enumerate(lengths)
        ]
    card = DatasetCard(
        name="random",
        exp_dim=exp_dim,
        pose_dim=pose_dim,
        coefficient_source="synthetic",
        frame_size=frame_size,
        speakers={split: RANDOM_SPEAKERS[split] for split in clip_frames},
        exp_names=list(exp_names or []),
        fields=["blink", "gaze"],
    )
    # librosa loads and compiles lazily on its first call (seconds); pay that once here rather
    # than in each split's forked litdata worker
    log_mel(np.zeros(640, dtype=np.int16), 1, AudioFeatures())
    return write_dataset(root, items, random_record, card, seed=seed)


@pytest.fixture(scope="session")
def make_random_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``make_random_dataset(name, **options)`` writes (once per name) and returns a root."""
    written: dict[str, Path] = {}

    def make(name: str, **options) -> Path:
        if name not in written:
            root = tmp_path_factory.mktemp(name)
            write_random_dataset(root, **options)
            written[name] = root
        return written[name]

    return make


@pytest.fixture(scope="session")
def random_dataset(make_random_dataset: Callable[..., Path]) -> Path:
    """Root of a small random dataset: 5 speakers, 12/4/4 clips, E=16, P=6, 64 px JPEG frames."""
    return make_random_dataset("random_dataset")


#: Expression dim names of :func:`named_random_dataset` (PoseFlow models "blink", ExpFlow scores "jaw_open").
NAMED_EXP = ["jaw_open", "blink"] + [f"exp{i}" for i in range(2, 16)]


@pytest.fixture(scope="session")
def named_random_dataset(make_random_dataset: Callable[..., Path]) -> Path:
    """:func:`random_dataset` whose card names its 16 expression dims (``NAMED_EXP``), so every tiny
    config (PoseFlow's blink included) trains on it."""
    return make_random_dataset("named_random_dataset", exp_names=NAMED_EXP)


@pytest.fixture(scope="session")
def synth_tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of SynthTalk ``tiny`` (seed 0), written once per session."""
    from flowvq.data.synth import synth

    root = tmp_path_factory.mktemp("synth_tiny")
    synth(root, preset="tiny", seed=0)
    return root
