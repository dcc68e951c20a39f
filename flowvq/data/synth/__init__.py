"""SynthTalk: a procedural, MEAD-shaped talking-face dataset with known ground truth.

``flowvq synth --out data/synth --preset tiny --seed 0`` writes it; see
:mod:`flowvq.data.synth.generate` for the generative process and the ground-truth layout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from flowvq.data.card import CARD_NAME, SPLITS, DatasetCard
from flowvq.data.synth.generate import GROUND_TRUTH, load_ground_truth, make_record, simulate_clip, write_synth
from flowvq.data.synth.motion import EMOTION_TEMPLATES, EXP_NAMES, LEAD_FRAMES
from flowvq.data.synth.presets import PRESETS, get_preset
from flowvq.data.synth.preview import write_preview

__all__ = [
    "EMOTION_TEMPLATES",
    "EXP_NAMES",
    "GROUND_TRUTH",
    "LEAD_FRAMES",
    "PRESETS",
    "load_ground_truth",
    "make_record",
    "simulate_clip",
    "synth",
    "write_preview",
    "write_synth",
]

#: What a SynthTalk root holds; ``--overwrite`` removes only these.
_OWN_ENTRIES = (CARD_NAME, *SPLITS, "ground_truth", "preview.png")


def synth(
    out: Path,
    preset: str = "tiny",
    seed: int = 0,
    overwrite: bool = False,
    workers: int = 1,
    frame_size: int | None = None,
    frames: bool = True,
) -> DatasetCard:
    """Write a SynthTalk dataset: procedural emotional talking faces with exact ground truth.

    Speakers with their own faces and voices say syllable trains in the 8 MEAD emotions at 3
    intensities; each clip has 16 kHz audio, log-mels, 16 semantic expression coefficients,
    head pose, 68 landmarks and rendered face crops. The generative process (emotion
    templates, audio-to-jaw lead, per-clip envelopes) is written beside the shards, under
    ``ground_truth/`` and the card's ``extra["synth"]``.

    Args:
        out: dataset root to create (``dataset.json``, ``train/``, ``val/``, ``test/``, ``ground_truth/``).
        preset: dataset size: tiny (seconds, 64 px), small (an emotion classifier's worth, 128 px), full (MEAD-like)
            or faces (3000 new identities x 8 frames at 64 px: a face set to pretrain the codebook on).
        seed: random seed; the same seed writes identical data.
        overwrite: replace the dataset already in ``out``.
        workers: processes that render clips.
        frame_size: side of the face crops in pixels (16..256); the preset's size by default.
        frames: render face crops; false writes coefficient-only shards (faster, no image models).
    """
    get_preset(preset)  # an unknown preset fails before anything is touched
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file: expected a directory to write the dataset into")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"--out {str(out)!r} is not empty: pass --overwrite true (overwrite=True) to replace "
                "the dataset there, or choose another directory"
            )
        for name in _OWN_ENTRIES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    card = write_synth(out, preset=preset, seed=seed, workers=workers, frame_size=frame_size, frames=frames)
    print(
        f"wrote SynthTalk {preset!r} (seed {seed}) to {out}: "
        + ", ".join(f"{split} {count} clips" for split, count in card.splits.items())
        + f" in {card.extra['synth']['write_seconds']:.1f} s"
    )
    return card
