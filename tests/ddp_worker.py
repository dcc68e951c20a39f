"""Two-process CPU DDP run over ``CoefficientDataModule``, launched by ``tests/test_ddp.py``.

Each rank trains a tiny model for a few epochs (gloo backend) and writes, per epoch, the
clips it saw in training and validation to ``<out>/rank<r>_epoch<e>.json``. Lightning's
DDP launcher starts the second rank by re-running this script.

    python tests/ddp_worker.py --root <dataset root> --out <folder> [--epochs 2] [--num-workers 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from flowvq.datamodules import CoefficientDataModule


class ClipRecorder(LightningModule):
    """A linear model on the window's expression that records which clips reach its rank."""

    def __init__(self, exp_dim: int, out: str) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(exp_dim, 1)
        self.out = Path(out)
        self.seen: dict[str, list[Any]] = {"train": [], "val": []}

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        mask = batch["mask"].unsqueeze(-1).float()  # (B, W, 1)
        return (self.layer(batch["exp"]) * mask).pow(2).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.seen["train"].extend(zip(batch["clip_id"], batch["start"].tolist()))
        return self._loss(batch)  # the gradient all-reduce is a collective on every step

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.seen["val"].extend(zip(batch["clip_id"], batch["start"].tolist()))
        self.log("val/loss", self._loss(batch), sync_dist=True, batch_size=len(batch["clip_id"]))

    def on_train_epoch_end(self) -> None:  # after this epoch's validation
        path = self.out / f"rank{self.global_rank}_epoch{self.current_epoch}.json"
        report = {
            "world_size": self.trainer.world_size,
            "train": self.seen["train"],
            "val": self.seen["val"],
        }
        path.write_text(json.dumps(report))
        self.seen = {"train": [], "val": []}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    data = CoefficientDataModule(args.root, window=16, batch_size=args.batch_size, num_workers=args.num_workers)
    model = ClipRecorder(data.dims["exp_dim"], args.out)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=args.epochs,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)


if __name__ == "__main__":
    main()
