"""Helpers every flowvq LightningModule shares: dataset checks and TensorBoard figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flowvq.data.card import DatasetCard, DatasetError, check_dims

__all__ = ["check_module_against_data", "confusion_figure", "tensorboard"]


def check_module_against_data(module: Any) -> DatasetCard | None:
    """Compare a module's card-derived hparams with its trainer's datamodule card.

    Returns the card (or ``None`` when the module runs without a flowvq datamodule).

    Raises:
        DatasetError: when, e.g., a checkpoint trained with E=64 meets a dataset with E=16.
    """
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    card = getattr(datamodule, "card", None)
    if card is None:
        return None
    expected = {key: module.hparams.get(key) for key in card.dims() if key in module.hparams}
    root = getattr(datamodule, "root", None)
    check_dims(expected, card, f"{type(module).__name__} (built with {expected})", root)
    return card


def tensorboard(module: Any) -> Any | None:
    """The module's TensorBoard ``SummaryWriter``, or ``None`` when logging elsewhere."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in getattr(module, "loggers", []) or []:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def confusion_figure(matrix: np.ndarray, names: Sequence[str], title: str = "confusion"):
    """A matplotlib figure of a confusion matrix, rows = true class, normalised per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    figure, axis = plt.subplots(figsize=(6, 5.5))
    axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                colour = "white" if normalised[i, j] > 0.5 else "black"
                axis.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    axis.set_title(title)
    figure.tight_layout()
    return figure


def record_mel_columns(module: Any, card: DatasetCard, datamodule: Any, what: str = "model") -> None:
    """Record in ``module.mel_columns`` the width of the mel windows ``datamodule`` gives, refusing a
    DataModule whose windows differ from the ones the module was trained on."""
    context = getattr(datamodule, "audio_context", None)
    if context is None:
        return
    columns = (2 * int(context) + 1) * card.audio.mel_per_frame
    if int(module.mel_columns) and int(module.mel_columns) != columns:
        raise DatasetError(
            f"this {what} was trained on mel windows of {int(module.mel_columns)} columns, the DataModule "
            f"gives {columns} (audio_context={context}, {card.audio.mel_per_frame} per frame): set "
            "data.init_args.audio_context to the training value"
        )
    module.mel_columns.fill_(columns)
