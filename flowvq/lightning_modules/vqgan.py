"""Stage 1 of FlowVQTalker's image side: the VQGAN face codebook.

Trains :class:`~flowvq.nn.vq_autoencoder.VQAutoencoder` with :class:`~flowvq.nn.vq_losses.VQLoss`
(L1 + perceptual or its fallback, hinge PatchGAN with the adaptive weight from ``disc_start``)
by manual optimization: one Adam(0.5, 0.9) for encoder/codebook/decoder, one for the
discriminator. Batches are :class:`flowvq.datamodules.FrameDataModule`'s (``image`` [B, 3, H, W]
in [-1, 1]). Logs reconstructions, PSNR and codebook usage (perplexity, fraction of entries in
use) over each validation epoch.

Under DDP the module synchronises its own gradients (:mod:`~flowvq.lightning_modules.gradient_sync`):
each backward pass leaves the other network out and the discriminator does not train before
``disc_start``, so DDP's reducer, which expects every parameter in every backward, is turned
off and each optimizer's gradients are averaged over the ranks exactly once, just before its
step. A two-rank step equals a one-process step on the same global batch (tested).

Note: with two optimizers stepping, Lightning's ``global_step`` counts optimizer steps (two per
batch once the discriminator trains); ``disc_start`` here counts training batches
(``self.train_batches``, saved in checkpoints).

References:
    Esser, Rombach, Ommer. Taming Transformers. https://arxiv.org/abs/2012.09841
    Tan, Ji, Pan. FlowVQTalker. https://arxiv.org/abs/2403.06375
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor

from flowvq.lightning_modules.gradient_sync import (
    discriminator_step,
    own_gradient_sync,
    step_optimizer,
)
from flowvq.nn.quantizer import codebook_usage
from flowvq.nn.vq_autoencoder import VQAutoencoder
from flowvq.nn.vq_autoencoder import channels_last as memory_layout
from flowvq.nn.vq_losses import VQLoss

__all__ = ["VQGAN", "frame_items", "image_grid", "psnr"]

#: Hyperparameters that fix the autoencoder's architecture; a VQIG must agree on them.
ARCHITECTURE_KEYS = (
    "resolution",
    "channels",
    "ch_mult",
    "num_res_blocks",
    "attention",
    "codebook_size",
    "codebook_dim",
)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB per image (B,) for images in [-1, 1] (clamped), peak 1 after mapping to [0, 1]."""
    x = (x.float().clamp(-1, 1) + 1) / 2
    y = (y.float().clamp(-1, 1) + 1) / 2
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def image_grid(rows: list[Tensor], max_images: int = 8) -> Tensor:
    """Stack rows of image batches (B, 3, H, W) in [-1, 1] into one (3, R*H, N*W) image in [0, 1]."""
    rows = [r[:max_images].detach().float().clamp(-1, 1).add(1).div(2).cpu() for r in rows]
    return torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)


def frame_items(batch: dict, panels: list[Tensor], scores: Tensor) -> list[dict]:
    """Prediction items of a frame batch: one PNG per frame of ``panels`` side by side
    (each (B, 3, H, W) in [-1, 1]), named ``<clip_id>_f<frame>``, with its PSNR."""
    strip = torch.cat([p.detach().float().clamp(-1, 1) for p in panels], dim=-1)  # (B, 3, H, k*W)
    pixels = strip.add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    frames = batch.get("frame", batch.get("target_frame"))
    items = []
    for i, clip in enumerate(batch.get("clip_id", [f"batch{i}" for i in range(len(pixels))])):
        index = int(frames[i]) if frames is not None else i
        items.append({"name": f"{clip}_f{index:05d}", "image": pixels[i], "psnr": float(scores[i])})
    return items


def require(batch: dict, key: str, who: str) -> Tensor:
    """``batch[key]`` with an error that names the batch format expected."""
    if key not in batch:
        raise KeyError(
            f"{who} needs batch[{key!r}]; the batch has {sorted(batch)}. Use the DataModule named in its config"
        )
    return batch[key]


class VQGAN(L.LightningModule):
    """The codebook model (stage 1).

    Arguments:
        resolution: side of the square face crops (must match the dataset's ``frame_size``).
        channels, ch_mult, num_res_blocks, attention: encoder/decoder (see :class:`~flowvq.nn.vq_autoencoder.Encoder`).
        norm_groups: GroupNorm groups in encoder and decoder; ``None``: up to 32, which at the
            tiny widths (16-64 channels) is one or two channels per group, an instance norm that
            removes each channel's image mean, where flat colours live (see
            :func:`~flowvq.nn.vq_autoencoder.group_norm`).
        codebook_size, codebook_dim: K entries of D dims (1024 x 256 in the paper).
        ema_decay: EMA decay of the codebook.
        commitment_weight: beta of the commitment loss (0.25).
        kmeans_init: k-means initialisation of the codebook on the first batch.
        threshold_ema_dead_code: replace entries whose EMA usage falls below this (0 = never).
        cosine_codebook: find the nearest entry by cosine similarity of l2-normalised vectors.
        codebook_lookup_dim: factorised codes: look up and update the entries in this many dims
            (a linear map down from ``codebook_dim`` and back; Yu et al. use 8-32); ``None``:
            the entries are ``codebook_dim``-dim (see :class:`~flowvq.nn.quantizer.Quantizer`).
        pixel_weight, perceptual_weight, perceptual_weights_path, feature_match_weight,
        ssim_weight, disc_weight, disc_start, adaptive_gan_weight, disc_channels, disc_layers,
        disc_norm, color_weight, color_pool: the loss (see :class:`~flowvq.nn.vq_losses.VQLoss`).
        lr: learning rate of both Adam optimizers.
        lr_decay_batches: cosine decay of both learning rates from ``lr`` to
            ``lr * lr_min_fraction`` over this many training batches, constant after; 0 (default):
            constant ``lr``. A short CPU run that ends with a decay reconstructs better than one
            stopped at full rate (``benchmarks/results/vq_codebook.md``).
        lr_min_fraction: the decayed learning rate as a fraction of ``lr``.
        betas: Adam betas (0.5, 0.9) as in taming.
        log_images: reconstructions logged per validation epoch (0 = none).
        channels_last: keep the convolution weights (hence every activation) in channels-last
            memory, where CPU convolutions are 1.5-2x faster; the same values. ``False``: NCHW,
            the layout before (``benchmarks/results/vq_speed.md`` times both).
    """

    def __init__(
        self,
        resolution: int = 256,
        channels: int = 128,
        ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attention: bool = True,
        norm_groups: int | None = None,
        codebook_size: int = 1024,
        codebook_dim: int = 256,
        ema_decay: float = 0.8,
        commitment_weight: float = 0.25,
        kmeans_init: bool = False,
        threshold_ema_dead_code: float = 0.0,
        cosine_codebook: bool = False,
        codebook_lookup_dim: int | None = None,
        pixel_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        perceptual_weights_path: str | None = None,
        feature_match_weight: float = 1.0,
        ssim_weight: float = 1.0,
        disc_weight: float = 0.8,
        disc_start: int = 10000,
        adaptive_gan_weight: bool = True,
        disc_channels: int = 64,
        disc_layers: int = 3,
        disc_norm: str = "group",
        color_weight: float = 0.0,
        color_pool: int = 8,
        lr: float = 1e-4,
        lr_decay_batches: int = 0,
        lr_min_fraction: float = 0.05,
        betas: tuple[float, float] = (0.5, 0.9),
        log_images: int = 8,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if lr_decay_batches < 0 or not 0.0 <= lr_min_fraction <= 1.0:
            raise ValueError(
                f"VQGAN lr_decay_batches={lr_decay_batches}, lr_min_fraction={lr_min_fraction}: expected "
                "lr_decay_batches >= 0 (0 = constant learning rate) and 0 <= lr_min_fraction <= 1"
            )
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.autoencoder = VQAutoencoder(
            resolution,
            channels,
            tuple(ch_mult),
            num_res_blocks,
            attention,
            codebook_size,
            codebook_dim,
            norm_groups=norm_groups,
            decay=ema_decay,
            commitment_weight=commitment_weight,
            kmeans_init=kmeans_init,
            threshold_ema_dead_code=threshold_ema_dead_code,
            use_cosine_sim=cosine_codebook,
            lookup_dim=codebook_lookup_dim,
        )
        self.loss = VQLoss(
            pixel_weight=pixel_weight,
            perceptual_weight=perceptual_weight,
            perceptual_weights_path=perceptual_weights_path,
            feature_match_weight=feature_match_weight,
            ssim_weight=ssim_weight,
            disc_weight=disc_weight,
            disc_start=disc_start,
            adaptive_weight=adaptive_gan_weight,
            disc_channels=disc_channels,
            disc_layers=disc_layers,
            disc_norm=disc_norm,
            color_weight=color_weight,
            color_pool=color_pool,
        )
        # Training batches seen (not optimizer steps): the clock of disc_start.
        self.register_buffer("train_batches", torch.zeros((), dtype=torch.long))
        self._val_counts: Tensor | None = None
        memory_layout(self, channels_last)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        card = getattr(datamodule, "card", None)
        size = getattr(datamodule, "image_size", getattr(card, "frame_size", 0))
        if size and size != self.hparams.resolution:
            raise ValueError(
                f"VQGAN resolution={self.hparams.resolution} but the data gives {size} px frames: set "
                f"data.init_args.image_size to {self.hparams.resolution}, or model.init_args.resolution to {size}"
            )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.autoencoder.quantizer.enable_distributed_sync()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Images (B, 3, H, W) -> reconstruction, commitment loss, indices (B, h, w)."""
        self.autoencoder.check_images(images, "batch['image']")
        return self.autoencoder(images)

    def configure_optimizers(self):
        lr, betas = self.hparams.lr, tuple(self.hparams.betas)
        opt_g = torch.optim.Adam(self.autoencoder.parameters(), lr=lr, betas=betas)
        opt_d = torch.optim.Adam(self.loss.discriminator.parameters(), lr=lr, betas=betas)
        return [opt_g, opt_d]

    def learning_rate(self, batch: int) -> float:
        """The learning rate of both optimizers at training batch ``batch`` (cosine decay, see the arguments)."""
        lr, span = self.hparams.lr, self.hparams.lr_decay_batches
        if span <= 0:
            return lr
        floor = lr * self.hparams.lr_min_fraction
        return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(batch, span) / span))

    def training_step(self, batch: dict, batch_idx: int) -> None:
        own_gradient_sync(self)  # one all-reduce per optimizer step, below (see the module docstring)
        images = require(batch, "image", "VQGAN")
        opt_g, opt_d = self.optimizers()
        step = int(self.train_batches)
        if self.hparams.lr_decay_batches > 0:
            for optimizer in (opt_g, opt_d):
                for group in optimizer.param_groups:
                    group["lr"] = self.learning_rate(step)
        recon, commit_loss, indices = self(images)

        self.toggle_optimizer(opt_g)
        g_loss, g_logs = self.loss.generator_loss(
            images, recon, step, extra_loss=commit_loss, last_layer=self.autoencoder.last_layer
        )
        step_optimizer(self, opt_g, g_loss)
        self.untoggle_optimizer(opt_g)

        logs = {f"train/{k}": v for k, v in g_logs.items()}
        logs["train/commit"] = commit_loss.detach()
        if self.loss.gan_active(step):
            d_logs = discriminator_step(self, opt_d, images, recon)
            logs.update({f"train/{k}": v for k, v in d_logs.items()})
        usage = codebook_usage(torch.bincount(indices.flatten(), minlength=self.hparams.codebook_size))
        logs["train/perplexity"] = usage["perplexity"]
        logs["train/lr"] = torch.tensor(opt_g.param_groups[0]["lr"])
        self.train_batches += 1
        self.log_dict(logs, prog_bar=False, batch_size=images.shape[0])
        self.log("train/loss", g_logs["total"], prog_bar=True, batch_size=images.shape[0])

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(self.hparams.codebook_size, dtype=torch.long, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = require(batch, "image", "VQGAN")
        recon, _, indices = self(images)
        size = images.shape[0]
        self.log("val/l1", (recon - images).abs().mean(), batch_size=size, sync_dist=True)
        self.log("val/psnr", psnr(recon, images).mean(), batch_size=size, prog_bar=True, sync_dist=True)
        if self._val_counts is not None:
            self._val_counts += torch.bincount(indices.flatten(), minlength=self.hparams.codebook_size)
        if batch_idx == 0 and self.hparams.log_images:
            self._log_image("val/reconstruction", image_grid([images, recon], self.hparams.log_images))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        images = require(batch, "image", "VQGAN")
        recon, _, _ = self(images)
        size = images.shape[0]
        self.log("test/l1", (recon - images).abs().mean(), batch_size=size, sync_dist=True)
        self.log("test/psnr", psnr(recon, images).mean(), batch_size=size, sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Reconstructions: ``<clip_id>_f<frame>.png`` (input | reconstruction) and ``.npz`` (PSNR)
        under the prediction folder (:class:`~flowvq.callbacks.PredictionWriter`)."""
        images = require(batch, "image", "VQGAN")
        recon, _, _ = self(images)
        return frame_items(batch, [images, recon], psnr(recon, images))

    def on_validation_epoch_end(self) -> None:
        if self._val_counts is None:
            return
        counts = self._val_counts
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        usage = codebook_usage(counts)
        self.log("val/perplexity", usage["perplexity"], prog_bar=True)
        self.log("val/codebook_usage", usage["usage"])
        self._val_counts = None

    def _log_image(self, tag: str, grid: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image(tag, grid, self.current_epoch)
