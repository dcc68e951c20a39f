"""Fit one stage from its YAML config without the command line: what the demo and tests chain.

:func:`fit_config` reads a ``flowvq fit`` config (``model``, ``data``, ``trainer`` with
``class_path`` / ``init_args``), fills the model's card-derived sizes from the dataset card
(as ``flowvq fit`` does), points every log and checkpoint into one folder, and fits. It does
not import the CLI (library code does not depend on the entry point), and it keeps the
console for a person: no model summary, no Lightning info lines or warnings, one progress bar.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["FitResult", "fit_config", "quiet_lightning"]


@dataclass
class FitResult:
    """A fitted stage: its checkpoint (``best``, else ``last``), the model and datamodule, seconds."""

    name: str
    checkpoint: Path
    model: Any
    datamodule: Any
    trainer: Any
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _instantiate(spec: Any) -> Any:
    """A ``class_path`` / ``init_args`` mapping as an object (nested ones too); other values as they are."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        kwargs = {key: _instantiate(value) for key, value in (spec.get("init_args") or {}).items()}
        return cls(**kwargs)
    if isinstance(spec, list):
        return [_instantiate(item) for item in spec]
    return spec


def _class(spec: dict[str, Any]) -> type:
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info lines (GPU available, model summary) and Python warnings."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _progress_callback(description: str, enabled: bool) -> Any:
    from lightning.pytorch.callbacks import Callback
    from tqdm.auto import tqdm

    class StepBar(Callback):
        """One tqdm bar over the training steps of the whole fit."""

        def on_train_start(self, trainer: Any, module: Any) -> None:
            total = trainer.estimated_stepping_batches
            self.bar = tqdm(
                total=int(total) if total != float("inf") else None,
                desc=description,
                unit="step",
                leave=False,
                disable=not enabled,
            )

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            self.bar.update(1)

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.bar.close()

    return StepBar()


def fit_config(
    config: str | Path | dict[str, Any],
    data: str | Path,
    out: str | Path,
    name: str,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> FitResult:
    """Fit a ``flowvq fit`` YAML config on ``data``; logs and checkpoints go under ``out/<name>``.

    Arguments:
        config: the YAML path (or its parsed mapping).
        data: the dataset root (``data.init_args.root``).
        out: the folder that receives everything this fit writes.
        name: the stage's folder name.
        overrides: dotted keys -> values, e.g. ``{"trainer.max_epochs": 3,
            "model.init_args.emotion_classifier": "..."}``.
        progress: show a progress bar over the training steps.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from flowvq.data.card import DatasetCard

    spec = copy.deepcopy(yaml.safe_load(Path(config).read_text()) if not isinstance(config, dict) else config)
    for key, value in (overrides or {}).items():
        _set(spec, key, value)
    _set(spec, "data.init_args.root", str(data))
    folder = Path(out) / name
    trainer_spec = dict(spec.get("trainer") or {})
    logger = trainer_spec.get("logger")
    if isinstance(logger, dict) and "class_path" in logger:
        logger = copy.deepcopy(logger)
        logger.setdefault("init_args", {}).update(save_dir=str(folder), name="tensorboard")
        trainer_spec["logger"] = logger
    callbacks = []
    for callback in trainer_spec.get("callbacks") or []:
        callback = copy.deepcopy(callback)
        if callback.get("class_path", "").endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(folder / "checkpoints")
        callbacks.append(callback)
    if not any(c.get("class_path", "").endswith("ModelCheckpoint") for c in callbacks):
        callbacks.append(
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(folder / "checkpoints"), "save_last": True},
            }
        )
    trainer_spec["callbacks"] = callbacks
    # the model's card-derived sizes (E, P, mel layout), as `flowvq fit` fills them
    card = DatasetCard.load(data)
    model_spec = spec["model"]
    parameters = inspect.signature(_class(model_spec).__init__).parameters
    init_args = model_spec.setdefault("init_args", {})
    for key, value in card.dims().items():
        if key in parameters and init_args.get(key) is None:
            init_args[key] = value
    start = time.perf_counter()
    with quiet_lightning():
        if spec.get("seed_everything") is not None:
            L.seed_everything(int(spec["seed_everything"]), verbose=False)
        model = _instantiate(model_spec)
        datamodule = _instantiate(spec["data"])
        kwargs = {key: _instantiate(value) for key, value in trainer_spec.items()}
        kwargs["callbacks"] = [*kwargs["callbacks"], _progress_callback(name, progress)]
        kwargs.update(enable_progress_bar=False, enable_model_summary=False)
        trainer = L.Trainer(**kwargs)
        trainer.fit(model, datamodule=datamodule)
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    path = (checkpoint.best_model_path or checkpoint.last_model_path) if checkpoint is not None else ""
    if not path:
        path = str(folder / "checkpoints" / "final.ckpt")
        trainer.save_checkpoint(path)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
    return FitResult(name, Path(path), model, datamodule, trainer, time.perf_counter() - start, metrics)
