"""A trained ExpFlow / PoseFlow on held-out audio: whole clips, long concatenated speech, plots.

What a user of the coefficient flows looks at: samples for whole test clips and for long
speech (test clips of one emotion joined), against the ground truth of the same clips.
``flowvq plot-samples`` draws them; ``benchmarks/flow_long_sequence.py`` scores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowvq.data.card import DatasetCard, check_dims
from flowvq.data.schema import EMOTIONS, emotion_index
from flowvq.lightning_modules.coefficient_flow import CoefficientFlow

__all__ = [
    "audio_context_of",
    "check_module_against_data_card",
    "concatenated",
    "load_flow",
    "modelled",
    "plot_samples",
    "sample_joined",
    "whole_clips",
]

#: The longest clip :func:`whole_clips` reads whole (frames; longer ones are cut).
MAX_CLIP_FRAMES = 2000
#: Per-frame arrays of a clip: always, and where the dataset carries them (the motion flow's).
CLIP_KEYS = ("exp", "pose", "mel", "energy")
OPTIONAL_KEYS = ("blink", "gaze")


def modelled(model: CoefficientFlow, clip: dict[str, Any]) -> torch.Tensor:
    """The dims a model generates of a clip ``[T, D]`` (ExpFlow: exp; PoseFlow: pose + blink; the
    motion flow: pose, blink, gaze), in the DataModule's normalised units, as its samples are."""
    batch = {k: clip[k][None] for k in ("exp", "pose", *OPTIONAL_KEYS) if k in clip}
    return model.from_model_units(model.select(batch)[0][0])


def check_module_against_data_card(model: CoefficientFlow, card: DatasetCard, root: Path | str) -> None:
    """:func:`~flowvq.data.card.check_dims` of a loaded model against a dataset card, then read it."""
    expected = {key: model.hparams.get(key) for key in card.dims() if key in model.hparams}
    check_dims(expected, card, f"{type(model).__name__} checkpoint (built with {expected})", root)
    model.read_card(card)


def load_flow(checkpoint: Path | str, data: Path | str) -> CoefficientFlow:
    """A CoefficientFlow checkpoint in eval mode, checked against (and reading) a dataset's card."""
    from flowvq.datamodules import CoefficientDataModule

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist: train one with `flowvq fit`")
    # weights_only=False: a checkpoint also holds the DataModule's hparams (paths); load only
    # checkpoints you trained or trust
    model = CoefficientFlow.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False).eval()
    check_module_against_data_card(model, CoefficientDataModule(data).card, data)
    return model


def audio_context_of(model: CoefficientFlow, default: int = 2) -> int:
    """Frames of audio either side of each frame that the model was trained with."""
    columns, per_frame = int(model.mel_columns), model.hparams.mel_per_frame or 1
    return (columns // per_frame - 1) // 2 if columns else default


def whole_clips(
    root: Path | str, prev_frames: int, split: str = "test", audio_context: int = 2
) -> list[dict[str, Any]]:
    """Every clip of a split whole: normalised ``exp [T, E]``, ``pose [T, P]``, ``mel`` windows
    ``[T, C, M]``, audio ``energy [T]`` (and ``blink [T]``, ``gaze [T, 2]`` where the dataset has
    them) as the DataModule makes them, with the labels."""
    from flowvq.datamodules import CoefficientDataModule

    data = CoefficientDataModule(
        root,
        window=MAX_CLIP_FRAMES,
        prev_frames=prev_frames,
        audio_context=audio_context,
        batch_size=1,
        windows_per_clip=1,
    )
    data.setup("test" if split == "test" else "validate")
    loader = data.test_dataloader() if split == "test" else data.val_dataloader()
    clips = []
    for batch in loader:
        valid = int(batch["mask"][0].sum())
        clip = {k: batch[k][0, :valid] for k in CLIP_KEYS + OPTIONAL_KEYS if k in batch}
        clip.update(emotion=int(batch["emotion"][0]), intensity=int(batch["intensity"][0]), clip_id=batch["clip_id"][0])
        clips.append(clip)
    return clips


def concatenated(clips: list[dict[str, Any]], frames: int, emotion: int | None = None) -> dict[str, Any]:
    """Clips (of one emotion, strongest intensity first; all clips when none has it) joined to
    ``frames`` frames, repeating them as needed: ``exp``, ``pose``, ``mel``, ``energy``, and
    ``emotion_matched`` (False when no clip had the emotion)."""
    if not clips:
        raise ValueError("no clips to join: the split is empty")
    chosen = [c for c in clips if emotion is None or c["emotion"] == emotion]
    matched = bool(chosen)
    chosen = sorted(chosen or clips, key=lambda c: -c["intensity"])
    parts, total = [], 0
    while total < frames:
        parts.append(chosen[len(parts) % len(chosen)])
        total += len(parts[-1]["exp"])
    keys = [k for k in CLIP_KEYS + OPTIONAL_KEYS if k in parts[0]]
    joined: dict[str, Any] = {k: torch.cat([p[k] for p in parts])[:frames] for k in keys}
    joined["intensity"] = max(chosen[0]["intensity"], 0)
    joined["emotion_matched"] = matched
    return joined


def sample_joined(
    model: CoefficientFlow,
    clips: list[dict[str, Any]],
    frames: int,
    emotion: str | int | None,
    num_samples: int = 4,
    temperature: float = 0.8,
    seed: int = 0,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Sample ``frames`` frames of joined held-out speech (clips of ``emotion``, see
    :func:`concatenated`) from a clip start, at the joined clips' strongest intensity.

    Returns the joined clips, their ground truth ``[T, D]`` and the samples ``[N, T, D]``, in
    the DataModule's normalised units (the modelled dims, :func:`modelled`).
    """
    index = None if emotion is None else emotion_index(emotion)
    joined = concatenated(clips, frames, index)
    truth = modelled(model, joined)
    samples = model.sample(
        joined["mel"],
        emotion,
        intensity=joined["intensity"],
        num_samples=num_samples,
        temperature=temperature,
        seed=seed,
    )
    return joined, truth, samples


def plot_samples(
    checkpoint: Path,
    data: Path,
    out: Path,
    emotions: list[str] | None = None,
    num_samples: int = 4,
    frames: int = 250,
    temperature: float = 0.8,
    seed: int = 0,
) -> Path:
    """Draw a trained ExpFlow / PoseFlow's samples for long held-out speech as a PNG.

    The audio is the test split's clips of each emotion joined to ``frames`` frames (250: 10 s),
    so the plot shows what a user gets over a long sequence, not a training window. One row
    per emotion (PoseFlow: one row), one panel per coefficient (the jaw and the first others
    for ExpFlow): ``num_samples`` sampled trajectories and the ground truth of the same clips;
    dashed lines at +-5 train-set std.

    Args:
        checkpoint: a CoefficientFlow checkpoint (``flowvq fit --config configs/tiny/expflow.yaml``).
        data: the dataset root it was trained on (its test split gives the audio).
        out: the PNG to write.
        emotions: emotions to sample (default: happy and sad).
        num_samples: samples per emotion.
        frames: length of the joined audio in frames (25 per second).
        temperature: latent temperature.
        seed: seeds the draws.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = load_flow(checkpoint, data)
    clips = whole_clips(data, model.hparams.prev_frames, audio_context=audio_context_of(model))
    emotions = list(emotions or ["happy", "sad"]) if model.hparams.prior != "gaussian" else [None]
    card = DatasetCard.load(data)
    names = [f"{model.hparams.field}[{d}]" for d in range(model.features)]
    if model.hparams.field == "exp" and len(card.exp_names) == model.features:
        names = list(card.exp_names)
    dims = [max(int(model.jaw_index), 0)] if model.hparams.field == "exp" else [0]
    dims += [d for d in range(model.features) if d not in dims][:3]
    figure, axes = plt.subplots(len(emotions), len(dims), figsize=(3.4 * len(dims), 2.3 * len(emotions)), squeeze=False)
    for row, emotion in enumerate(emotions):
        joined, truth, samples = sample_joined(model, clips, frames, emotion, num_samples, temperature, seed)
        index = None if emotion is None else emotion_index(emotion)
        label = emotion or "any emotion"
        if index is not None and not joined["emotion_matched"]:
            label += f" (no {EMOTIONS[index]} test clip: truth of other clips)"
        for col, d in enumerate(dims):
            axis = axes[row][col]
            for s in samples[..., d].numpy():
                axis.plot(s, lw=0.8, alpha=0.8)
            axis.plot(truth[:, d].numpy(), color="black", lw=1.5)
            for bound in (-5, 5):
                axis.axhline(bound, color="red", lw=0.5, ls="--")
            axis.set_title(f"{label}: {names[d]}", fontsize=8)
            axis.tick_params(labelsize=6)
    figure.suptitle(
        f"{num_samples} samples (colour) vs ground truth (black) over {frames} frames of held-out speech, "
        f"T={temperature}",
        fontsize=9,
    )
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
