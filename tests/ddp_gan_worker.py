"""One GAN training step, on two DDP ranks or in one process, for ``tests/test_ddp_models.py``.

Both modes see the same global batch of 4 (in DDP, rank r gets items 2r, 2r+1) and start
from the same weights (seeded). The worker records the gradient each optimizer steps with
(in ``on_before_optimizer_step``) and the parameters after the step, and rank 0 saves them:

    python tests/ddp_gan_worker.py --model vqgan --devices 2 --out <file.pt>
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from flowvq.lightning_modules.vqgan import VQGAN
from flowvq.lightning_modules.vqig import VQIG

RES, E, P, GLOBAL_BATCH = 16, 6, 6, 4
SMALL = dict(disc_channels=8, disc_layers=2, lr=1e-3, log_images=0, disc_start=0, perceptual_weights_path=None)
AUTOENCODER = dict(resolution=RES, codebook_size=16, codebook_dim=8)


def build(name: str) -> L.LightningModule:
    torch.manual_seed(0)
    if name == "vqgan":
        # no adaptive GAN weight: it is a ratio of per-rank gradient norms, not a mean over samples
        return VQGAN(
            **AUTOENCODER,
            **SMALL,
            channels=8,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attention=False,
            kmeans_init=False,
            adaptive_gan_weight=False,
        )
    model = VQIG(
        **AUTOENCODER,
        **SMALL,
        exp_dim=E,
        pose_dim=P,
        codebook_channels=8,
        codebook_ch_mult=(1, 2),
        codebook_res_blocks=1,
        codebook_attention=False,
        channels=8,
        ch_mult=(1, 2),
        feature_dim=16,
        motion_dim=8,
        num_heads=2,
    )
    model.net.autoencoder.requires_grad_(False)  # a random frozen codebook stands in for stage 1
    model.codebook_loaded.fill_(True)
    return model


class Items(Dataset):
    def __init__(self, pairs: bool, rank: int, world: int) -> None:
        g = torch.Generator().manual_seed(1)
        low = lambda: torch.rand(GLOBAL_BATCH, 3, 4, 4, generator=g) * 2 - 1  # noqa: E731
        up = lambda x: torch.nn.functional.interpolate(x, size=RES, mode="bilinear", align_corners=False)  # noqa: E731
        if pairs:
            items = {
                "source": up(low()),
                "target": up(low()),
                "target_exp": torch.randn(GLOBAL_BATCH, E, generator=g),
                "target_pose": torch.randn(GLOBAL_BATCH, P, generator=g),
            }
        else:
            items = {"image": up(low())}
        per_rank = GLOBAL_BATCH // world
        self.items = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in items.items()}

    def __len__(self) -> int:
        return len(next(iter(self.items.values())))

    def __getitem__(self, index: int) -> dict:
        return {k: v[index] for k, v in self.items.items()}


class Data(L.LightningDataModule):
    def __init__(self, pairs: bool) -> None:
        super().__init__()
        self.pairs = pairs

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        dataset = Items(self.pairs, trainer.global_rank, trainer.world_size)
        return DataLoader(dataset, batch_size=len(dataset), shuffle=False)


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    name = next(n for n, q in pl_module.named_parameters() if q is p)
                    self.grads[name] = p.grad.detach().clone()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["vqgan", "vqig"], required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model = build(args.model)
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=2,  # one batch: the generator's and the discriminator's step
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=Data(pairs=args.model == "vqig"))
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    path = args.out if trainer.global_rank == 0 else f"{args.out}.rank{trainer.global_rank}"
    torch.save({"grads": recorder.grads, "params": state, "world": trainer.world_size}, path)


if __name__ == "__main__":
    main()
