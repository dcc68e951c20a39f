"""The ``flowvq`` command.

``flowvq fit|validate|test|predict --config configs/<model>.yaml`` go to LightningCLI; every
other subcommand is a typed function whose docstring is its ``--help``::

    flowvq synth --out data/synth --preset tiny --seed 0
    flowvq fit --config configs/tiny/emotion_classifier.yaml
    flowvq fit --config configs/emotion_classifier.yaml --print_config
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["COMMANDS", "fill_from_card", "main"]  # and FlowvqCLI, built on first access

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

#: Subcommand -> "module:function", or a group of them. Imported only when used.
COMMANDS: dict[str, str | dict[str, str]] = {
    "synth": "flowvq.data.synth:synth",
    "demo": "flowvq.pipeline.demo:demo",
    "generate": "flowvq.pipeline.generate:generate",
    "evaluate": "flowvq.pipeline.evaluate:evaluate_command",
    "plot-samples": "flowvq.pipeline.flow_samples:plot_samples",
    "preview": "flowvq.data.synth:write_preview",
    "preprocess": {
        "mead": "flowvq.data.preprocess.commands:preprocess_mead",
        "lrs3": "flowvq.data.preprocess.commands:preprocess_lrs3",
        "hdtf": "flowvq.data.preprocess.commands:preprocess_hdtf",
        "folder": "flowvq.data.preprocess.commands:preprocess_folder",
    },
    "import": {"deep3d": "flowvq.data.deep3d:import_deep3d"},
}

#: Model constructor arguments that the CLI fills from the dataset card (unless set).
CARD_ARGUMENTS = ("exp_dim", "pose_dim", "mel_bins", "mel_per_frame", "num_emotions")


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _lightning_cli_class() -> type:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class FlowvqCLI(LightningCLI):
        """LightningCLI that sizes the model from the dataset card of the configured data.

        Every model constructor argument in ``CARD_ARGUMENTS`` that the config leaves unset
        (``None``) is taken from ``<data.root>/dataset.json``; so one YAML trains on SynthTalk,
        MEAD or LRS3 with no change but the data path.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("subclass_mode_model", True)
            kwargs.setdefault("subclass_mode_data", True)
            kwargs.setdefault("save_config_kwargs", {"overwrite": True})
            super().__init__(LightningModule, LightningDataModule, *args, **kwargs)

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            fill_from_card(config)

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            trainer = super().instantiate_trainer(**kwargs)
            if self.subcommand == "predict":
                from lightning.pytorch.callbacks import BasePredictionWriter

                from flowvq.callbacks import PredictionWriter

                if not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
                    # `flowvq predict` writes files: <log_dir>/predictions unless a writer is configured
                    trainer.callbacks.append(PredictionWriter())
            return trainer

    return FlowvqCLI


def fill_from_card(config: Any) -> None:
    """Set the model's card-derived sizes (E, P, mel layout) from the data root's card."""
    from flowvq.data.card import DatasetCard

    data_args = getattr(config.data, "init_args", None)
    root = getattr(data_args, "root", None) if data_args is not None else None
    model_args = getattr(config.model, "init_args", None)
    if root is None or model_args is None:
        return
    card = DatasetCard.load(root)
    module, _, name = config.model.class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name)
    parameters = inspect.signature(model_class.__init__).parameters
    for key, value in card.dims().items():
        if key in parameters and getattr(model_args, key, None) is None:
            model_args[key] = value


def __getattr__(name: str) -> Any:
    if name == "FlowvqCLI":  # built lazily: importing flowvq.cli must not import Lightning
        return _lightning_cli_class()
    raise AttributeError(name)


def _commands(only: str | None = None) -> dict[str, Any]:
    """The subcommands' functions; ``only``: import just that one's module (each command's
    imports cost seconds: torch, mediapipe, librosa), the others are not loaded."""

    def load(entry: str | dict[str, str]) -> Any:
        if isinstance(entry, dict):
            return {name: load(target) for name, target in entry.items()}
        return _resolve(entry)

    names = [only] if only in COMMANDS else list(COMMANDS)
    return {name: load(COMMANDS[name]) for name in names}


#: Errors that mean "bad input" rather than a bug: from the console they print as one
#: message, without a traceback (set FLOWVQ_TRACEBACK=1 to see it).
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, KeyError)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``flowvq`` console script."""
    if argv is None and not os.environ.get("FLOWVQ_TRACEBACK"):
        try:
            _main(None)
        except USER_ERRORS as error:  # DatasetError, RecordError, MediaError are among these
            command = " ".join(sys.argv[1:3]) if len(sys.argv) > 2 and not sys.argv[2].startswith("-") else sys.argv[1]
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"flowvq {command}: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    _main(argv)


def _main(argv: list[str] | None) -> None:
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        # from the console LightningCLI reads sys.argv itself (and warns if given both)
        _lightning_cli_class()(args=None if from_console else argv)
        return
    from jsonargparse import CLI

    if not argv or argv[0] in ("-h", "--help"):
        print(
            "flowvq: emotional audio-driven talking-face generation.\n\n"
            "  flowvq {fit,validate,test,predict} --config configs/<model>.yaml   (LightningCLI)\n"
            f"  flowvq {{{','.join(COMMANDS)}}} --help\n"
        )
        if not argv:
            raise SystemExit(2)
    CLI(_commands(argv[0] if argv else None), args=argv, as_positional=False)


if __name__ == "__main__":
    main()
