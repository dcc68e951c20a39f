"""Callbacks the CLI adds: where ``flowvq predict`` writes what the models predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Writes each item a model's ``predict_step`` returns as files named by the item.

    An item is a dict with a ``name`` (``<clip_id>_f<frame>``): its ``image`` (H, W, 3 uint8)
    becomes ``<name>.png``; every other entry goes to ``<name>.npz`` (arrays as they are,
    strings and lists of names as string arrays). Each rank writes its own items, and
    ``index.rank<r>.jsonl`` lists them with their scalar entries (PSNR, predicted emotion).

    Arguments:
        output_dir: the folder; None: ``<the trainer's log_dir>/predictions`` (for the configs
            in ``configs/``: ``runs/<name>/version_<n>/predictions``).
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self._folder: Path | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: every rank asks here, once, not per batch
        base = self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        self._folder = Path(base)

    def write_on_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not prediction:
            return
        folder = self._folder or Path(trainer.default_root_dir) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for item in prediction:
            item = dict(item)
            name = str(item.pop("name"))
            image = item.pop("image", None)
            if image is not None:
                Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / f"{name}.png")
            arrays = {key: np.asarray(value) for key, value in item.items()}
            np.savez(folder / f"{name}.npz", **arrays)
            scalars = {k: v for k, v in item.items() if isinstance(v, (int, float, str))}
            lines.append(json.dumps({"name": name, **scalars}))
        with open(folder / f"index.rank{trainer.global_rank}.jsonl", "a") as index:
            index.write("".join(line + "\n" for line in lines))
