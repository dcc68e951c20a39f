"""Stage 2 of FlowVQTalker's image side: the Vector Quantized Image Generator (VQIG).

Renders a target frame from a source face image and target coefficients (expression + pose)
through the frozen stage-1 codebook and decoder (:class:`~flowvq.nn.vqig.VQIGNet`). Trained on
:class:`flowvq.datamodules.FramePairDataModule` batches (``source``, ``target``, ``target_exp``,
``target_pose``) with L1 + perceptual (or its fallback) on the image, cross-entropy of the
predicted code logits against the codes of the encoded target, and a hinge PatchGAN term.

The stage-1 checkpoint (``codebook_checkpoint``) is read in :meth:`setup` (or by calling
:meth:`load_codebook`), not in the constructor, so a config instantiates before stage 1 has
run; a VQIG checkpoint carries the frozen codebook and decoder itself and renders alone.

Under DDP the module synchronises its own gradients, as the VQGAN does
(:mod:`~flowvq.lightning_modules.gradient_sync`): one all-reduce per optimizer step of exactly
that optimizer's parameters.

The paper's ablation is four configs: ``use_warp``, ``use_fusion``, ``use_cross_attention`` and
``use_codebook`` set to false one at a time (``configs/vqig_ablation/``).

References:
    Tan, Ji, Pan. FlowVQTalker. https://arxiv.org/abs/2403.06375
"""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from flowvq.data.card import check_dims
from flowvq.lightning_modules.gradient_sync import (
    discriminator_step,
    own_gradient_sync,
    step_optimizer,
)
from flowvq.lightning_modules.vqgan import ARCHITECTURE_KEYS, VQGAN, frame_items, image_grid, psnr, require
from flowvq.nn.perceptual import ssim
from flowvq.nn.vq_autoencoder import channels_last as memory_layout
from flowvq.nn.vq_losses import VQLoss
from flowvq.nn.vqig import VQIGNet

__all__ = ["VQIG", "CodebookMismatchError"]


#: The VQIG hyperparameter that must equal each stage-1 architecture key.
_HPARAM_OF = {
    "resolution": "resolution",
    "channels": "codebook_channels",
    "ch_mult": "codebook_ch_mult",
    "num_res_blocks": "codebook_res_blocks",
    "attention": "codebook_attention",
    "codebook_size": "codebook_size",
    "codebook_dim": "codebook_dim",
}


def _stage1_autoencoder(config: dict) -> tuple[torch.nn.Module, dict]:
    """The autoencoder a VQGAN with these hyperparameters builds (quantizer options included) and the
    VQGAN's full hyperparameters (its defaults filled in). Built without its losses' files: the
    stage-1 perceptual weights need not exist where the VQIG renders."""
    # Only VQGAN arguments: a CLI-run checkpoint also holds _class_path and _instantiator. The
    # defaults come from the signature, not from the VQGAN's hparams, which LightningCLI replaces
    # with the outer module's while it instantiates the VQIG.
    parameters = inspect.signature(VQGAN.__init__).parameters.values()
    full = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    full.update((k, v) for k, v in config.items() if k in full)
    full = {k: (list(v) if isinstance(v, tuple) else v) for k, v in full.items()}
    autoencoder = VQGAN(**{**full, "perceptual_weights_path": None}).autoencoder
    return autoencoder, full


class CodebookMismatchError(ValueError):
    """A stage-1 checkpoint whose codebook or resolution differ from what the VQIG is configured for."""


class VQIG(L.LightningModule):
    """The image generator (stage 2).

    Arguments:
        codebook_checkpoint: path of the stage-1 :class:`~flowvq.lightning_modules.vqgan.VQGAN`
            checkpoint; read in :meth:`setup` when training starts (not needed with
            ``use_codebook: false``, nor to load a VQIG checkpoint).
        exp_dim, pose_dim: coefficient sizes (filled from the dataset card by the CLI).
        resolution, codebook_size, codebook_dim, codebook_channels, codebook_ch_mult,
        codebook_res_blocks, codebook_attention: optional. The stage-1 architecture is read from
            ``codebook_checkpoint`` (its hyperparameters); any of these that is given is checked
            against it, and a checkpoint that differs is refused, naming both. Without a
            checkpoint (``use_codebook: false`` from scratch, speed benchmarks) give all seven,
            or ``codebook_config``.
        codebook_config: the stage-1 VQGAN's hyperparameters (its ``__init__`` arguments). Filled
            from ``codebook_checkpoint`` and saved with the VQIG, so that a VQIG checkpoint
            rebuilds its codebook model without the stage-1 file; not normally set by hand.
        channels, ch_mult, num_res_blocks, feature_dim, motion_dim, fuse_blocks, num_heads,
        source_attention, norm_groups, lookup: the generator (see :class:`~flowvq.nn.vqig.VQIGNet`).
        use_warp, use_fusion, use_cross_attention, use_codebook: ablation switches.
        pixel_weight, perceptual_weight, perceptual_weights_path, feature_match_weight,
        ssim_weight, disc_weight, disc_start, disc_channels, disc_layers, disc_norm, color_weight, color_pool: image
            losses (see :class:`~flowvq.nn.vq_losses.VQLoss`; the GAN weight is fixed since the
            decoder is frozen).
        code_weight: weight of the code cross-entropy.
        lr, betas: Adam for the generator and the discriminator.
        log_images: frames logged per validation epoch (0 = none).
        channels_last: keep the convolution weights (hence every activation) in channels-last
            memory, where CPU convolutions are 1.5-2x faster; the same values. ``False``: NCHW,
            the layout before (``benchmarks/results/vq_speed.md`` times both).
    """

    def __init__(
        self,
        codebook_checkpoint: str | None = None,
        exp_dim: int | None = None,
        pose_dim: int | None = None,
        resolution: int | None = None,
        codebook_size: int | None = None,
        codebook_dim: int | None = None,
        codebook_channels: int | None = None,
        codebook_ch_mult: tuple[int, ...] | None = None,
        codebook_res_blocks: int | None = None,
        codebook_attention: bool | None = None,
        codebook_config: dict | None = None,
        channels: int = 64,
        ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4),
        num_res_blocks: int = 1,
        feature_dim: int = 256,
        motion_dim: int = 256,
        fuse_blocks: int = 2,
        num_heads: int = 8,
        source_attention: bool = True,
        norm_groups: int | None = None,
        lookup: str = "straight_through",
        use_warp: bool = True,
        use_fusion: bool = True,
        use_cross_attention: bool = True,
        use_codebook: bool = True,
        pixel_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        perceptual_weights_path: str | None = None,
        feature_match_weight: float = 1.0,
        ssim_weight: float = 1.0,
        code_weight: float = 1.0,
        disc_weight: float = 0.1,
        disc_start: int = 5000,
        disc_channels: int = 64,
        disc_layers: int = 3,
        disc_norm: str = "group",
        color_weight: float = 0.0,
        color_pool: int = 8,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        log_images: int = 8,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if exp_dim is None or pose_dim is None:
            raise ValueError(
                f"VQIG needs exp_dim and pose_dim, got exp_dim={exp_dim}, pose_dim={pose_dim}: "
                "`flowvq fit` fills them from the dataset card; in Python pass the card's sizes"
            )
        # The generator is built as soon as the stage-1 architecture is known: now (from
        # codebook_config, the stage-1 file, or the seven codebook_* arguments), else in setup,
        # once stage 1 has written its checkpoint (a config instantiates before stage 1 runs).
        self.net: VQIGNet | None = None
        config, source = codebook_config, "codebook_config"
        if config is None and codebook_checkpoint and Path(codebook_checkpoint).is_file():
            config, source = self._read_stage1(codebook_checkpoint)[0], f"codebook checkpoint {codebook_checkpoint!r}"
        if config is None and all(self.hparams[k] is not None for k in _HPARAM_OF.values()):
            config = {key: self.hparams[name] for key, name in _HPARAM_OF.items()}
        if config is not None:
            self._build(config, source)
        elif not codebook_checkpoint:
            missing = [name for name in _HPARAM_OF.values() if self.hparams[name] is None]
            raise ValueError(
                "VQIG reads the codebook's architecture from the stage-1 checkpoint: set "
                "model.init_args.codebook_checkpoint to a VQGAN checkpoint (e.g. runs/tiny_vqgan/checkpoints/last.ckpt), "
                f"or give {', '.join(missing)}"
            )
        self.loss = VQLoss(
            pixel_weight=pixel_weight,
            perceptual_weight=perceptual_weight,
            perceptual_weights_path=perceptual_weights_path,
            feature_match_weight=feature_match_weight,
            ssim_weight=ssim_weight,
            disc_weight=disc_weight,
            disc_start=disc_start,
            adaptive_weight=False,
            disc_channels=disc_channels,
            disc_layers=disc_layers,
            disc_norm=disc_norm,
            color_weight=color_weight,
            color_pool=color_pool,
        )
        # Saved with the model: a VQIG checkpoint already holds its codebook.
        self.register_buffer("codebook_loaded", torch.zeros((), dtype=torch.bool))
        self.register_buffer("train_batches", torch.zeros((), dtype=torch.long))
        memory_layout(self, self.hparams.channels_last)

    # ---------------------------------------------------------------- stage-1 checkpoint

    @staticmethod
    def _read_stage1(path: str | Path) -> tuple[dict, dict, dict]:
        """The stage-1 checkpoint's VQGAN hyperparameters, its ``autoencoder.`` weights and the file's contents.

        Raises:
            FileNotFoundError: no file at ``path``.
            CodebookMismatchError: not a VQGAN checkpoint.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"codebook checkpoint {str(path)!r} does not exist: train stage 1 first "
                "(`flowvq fit --config configs/vqgan.yaml`, or configs/tiny/vqgan.yaml at CPU scale) "
                "or set model.init_args.codebook_checkpoint to its checkpoint"
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        prefix = "autoencoder."
        weights = {k[len(prefix) :]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)}
        if not weights or not all(k in hparams for k in ARCHITECTURE_KEYS):
            raise CodebookMismatchError(
                f"{str(path)!r} is not a VQGAN codebook checkpoint (no autoencoder weights or hyperparameters); "
                "point codebook_checkpoint at a checkpoint of flowvq.lightning_modules.vqgan.VQGAN"
            )
        return hparams, weights, checkpoint

    def _build(self, config: dict, source: str) -> None:
        """Build the generator around the stage-1 autoencoder that ``config`` (VQGAN hyperparameters) describes,
        after checking it against the codebook_* arguments given; record both in the hyperparameters."""
        self._check_architecture(config, source)
        # The VQGAN builds the autoencoder from its own hyperparameters, quantizer options included.
        autoencoder, config = _stage1_autoencoder(config)
        for key, name in _HPARAM_OF.items():
            self.hparams[name] = config[key]
        self.hparams["codebook_config"] = config
        h = self.hparams
        self.net = VQIGNet(
            autoencoder,
            h.exp_dim,
            h.pose_dim,
            channels=h.channels,
            ch_mult=tuple(h.ch_mult),
            num_res_blocks=h.num_res_blocks,
            feature_dim=h.feature_dim,
            motion_dim=h.motion_dim,
            fuse_blocks=h.fuse_blocks,
            num_heads=h.num_heads,
            source_attention=h.source_attention,
            norm_groups=h.norm_groups,
            use_warp=h.use_warp,
            use_fusion=h.use_fusion,
            use_cross_attention=h.use_cross_attention,
            use_codebook=h.use_codebook,
            lookup=h.lookup,
        )

    def _check_architecture(self, theirs: dict, source: str) -> None:
        """Refuse a stage-1 architecture that differs from the codebook_* arguments given (those not None)."""
        theirs = {k: (list(theirs[k]) if k == "ch_mult" else theirs[k]) for k in ARCHITECTURE_KEYS if k in theirs}
        ours = self.expected_architecture()
        wrong = {k: (theirs[k], ours[k]) for k in ours if k in theirs and ours[k] is not None and theirs[k] != ours[k]}
        if wrong:
            have = ", ".join(f"{k}={v[0]}" for k, v in wrong.items())
            want = ", ".join(f"{k}={v[1]}" for k, v in wrong.items())
            fix = ", ".join(f"{_HPARAM_OF[k]}: {v[0]}" for k, v in wrong.items())
            raise CodebookMismatchError(
                f"{source} has {have}, but this VQIG is configured for {want}. Set model.init_args ({fix}) to "
                "match it, or leave the codebook_* arguments out: the VQIG reads them from codebook_checkpoint"
            )

    def expected_architecture(self) -> dict:
        """The stage-1 architecture this VQIG is built for (``None``: not given, read from the checkpoint)."""
        h = self.hparams
        return {
            key: (list(h[name]) if name == "codebook_ch_mult" and h[name] is not None else h[name])
            for key, name in _HPARAM_OF.items()
        }

    def load_codebook(self, path: str | Path) -> None:
        """Copy the frozen encoder, codebook and decoder from a stage-1 VQGAN checkpoint (building
        the generator first if its architecture was not known yet).

        Raises:
            FileNotFoundError: no file at ``path``.
            CodebookMismatchError: the checkpoint's codebook size/dim, resolution or
                autoencoder architecture differ from this VQIG's; the message names both.
        """
        hparams, weights, _ = self._read_stage1(path)
        self._check_architecture(hparams, f"codebook checkpoint {str(path)!r}")
        if self.net is None:
            self._build(hparams, f"codebook checkpoint {str(path)!r}")
        else:
            # Same architecture (checked above); the frozen model is rebuilt as stage 1 built it, so that
            # its quantizer options (EMA, lookup) are the checkpoint's whatever the VQIG was built from.
            autoencoder, self.hparams["codebook_config"] = _stage1_autoencoder(hparams)
            self.net.autoencoder = autoencoder.eval()
        self.net.autoencoder.load_state_dict(weights)
        self.net.autoencoder.requires_grad_(False)
        self.codebook_loaded.fill_(True)
        memory_layout(self, self.hparams.get("channels_last", True))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        card = getattr(datamodule, "card", None)
        if card is not None:
            check_dims(
                {"exp_dim": self.hparams.exp_dim, "pose_dim": self.hparams.pose_dim},
                card,
                "VQIG",
                getattr(datamodule, "root", None),
            )
        if stage == "fit" and not bool(self.codebook_loaded):
            if self.hparams.codebook_checkpoint:
                self.load_codebook(self.hparams.codebook_checkpoint)
            elif self.hparams.use_codebook:
                raise ValueError(
                    "VQIG needs the stage-1 codebook to train: set model.init_args.codebook_checkpoint to a "
                    "VQGAN checkpoint (e.g. runs/tiny_vqgan/checkpoints/last.ckpt)"
                )
        if self.net is None:
            raise ValueError(
                f"this VQIG has no generator yet: its codebook checkpoint {self.hparams.codebook_checkpoint!r} is read "
                f"when training starts, and {stage!r} needs a trained VQIG: load one with VQIG.load_from_checkpoint "
                "(or --ckpt_path), or fit first"
            )
        size = getattr(datamodule, "image_size", getattr(card, "frame_size", 0))
        if size and size != self.hparams.resolution:
            raise ValueError(
                f"VQIG resolution={self.hparams.resolution} but the data gives {size} px frames "
                f"({getattr(card, 'name', 'the data')!r}): set data.init_args.image_size to {self.hparams.resolution}, "
                "or use a codebook and VQIG built for the data's frame size"
            )

    # ---------------------------------------------------------------- training

    def configure_optimizers(self):
        lr, betas = self.hparams.lr, tuple(self.hparams.betas)
        params = [p for n, p in self.net.named_parameters() if not n.startswith("autoencoder.")]
        opt_g = torch.optim.Adam(params, lr=lr, betas=betas)
        opt_d = torch.optim.Adam(self.loss.discriminator.parameters(), lr=lr, betas=betas)
        return [opt_g, opt_d]

    def forward(self, source: Tensor, exp: Tensor, pose: Tensor) -> dict[str, Tensor]:
        self.net.autoencoder.check_images(source, "source")
        return self.net(source, exp, pose)

    def _losses(self, batch: dict, step: int) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        source = require(batch, "source", "VQIG")
        target = require(batch, "target", "VQIG")
        out = self(source, require(batch, "target_exp", "VQIG"), require(batch, "target_pose", "VQIG"))
        extra = None
        logs: dict[str, Tensor] = {}
        if "logits" in out:
            target_codes = self.net.autoencoder.encode_indices(target)  # (B, h, w)
            code_loss = F.cross_entropy(out["logits"].flatten(0, 1).float(), target_codes.flatten())
            extra = self.hparams.code_weight * code_loss
            logs["code_ce"] = code_loss.detach()
            logs["code_acc"] = (out["logits"].argmax(-1) == target_codes.flatten(1)).float().mean()
        loss, g_logs = self.loss.generator_loss(target, out["image"], step, extra_loss=extra)
        logs.update(g_logs)
        return loss, logs, out

    def training_step(self, batch: dict, batch_idx: int) -> None:
        own_gradient_sync(self)  # one all-reduce per optimizer step, below (see the module docstring)
        opt_g, opt_d = self.optimizers()
        step = int(self.train_batches)
        self.toggle_optimizer(opt_g)
        loss, logs, out = self._losses(batch, step)
        step_optimizer(self, opt_g, loss)
        self.untoggle_optimizer(opt_g)
        if self.loss.gan_active(step):
            d_logs = discriminator_step(self, opt_d, batch["target"], out["image"])
            logs.update(d_logs)
        self.train_batches += 1
        size = batch["target"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=size)
        self.log("train/loss", logs["total"], prog_bar=True, batch_size=size)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, logs, out = self._losses(batch, 0)
        target = batch["target"]
        size = target.shape[0]
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, batch_size=size, sync_dist=True)
        self.log("val/psnr", psnr(out["image"], target).mean(), batch_size=size, prog_bar=True, sync_dist=True)
        self.log("val/ssim", ssim(out["image"].clamp(-1, 1), target).mean(), batch_size=size, sync_dist=True)
        if batch_idx == 0 and self.hparams.log_images:
            grid = image_grid([batch["source"], target, out["image"]], self.hparams.log_images)
            experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
            if experiment is not None and hasattr(experiment, "add_image"):
                experiment.add_image("val/source_target_generated", grid, self.current_epoch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Scores beside the source-copy baseline (the source frame offered as every output)."""
        _, logs, out = self._losses(batch, 0)
        source, target = batch["source"], batch["target"]
        size = target.shape[0]
        image = out["image"].clamp(-1, 1)
        scores = {
            "test/l1": (image - target).abs().mean(),
            "test/psnr": psnr(image, target).mean(),
            "test/ssim": ssim(image, target).mean(),
            "test/psnr_source_copy": psnr(source, target).mean(),
            "test/ssim_source_copy": ssim(source, target).mean(),
        }
        self.log_dict(scores, batch_size=size, sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Rendered targets: ``<clip_id>_f<target frame>.png`` (source | target | generated) and
        ``.npz`` (PSNR) under the prediction folder (:class:`~flowvq.callbacks.PredictionWriter`)."""
        source, target = require(batch, "source", "VQIG"), require(batch, "target", "VQIG")
        out = self(source, require(batch, "target_exp", "VQIG"), require(batch, "target_pose", "VQIG"))
        return frame_items(batch, [source, target, out["image"]], psnr(out["image"], target))

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def render(self, source_image: Tensor, exp: Tensor, pose: Tensor, batch_size: int = 16) -> Tensor:
        """Frames of one source face driven by a sequence of coefficients.

        Arguments:
            source_image: (3, H, W) or (1, 3, H, W) in [-1, 1], H = W = ``resolution``.
            exp: (T, E) target expression coefficients, normalised with the dataset's train stats
                (as the DataModules give them).
            pose: (T, P) target poses, normalised likewise.
            batch_size: frames per forward pass.

        Returns:
            (T, 3, H, W) frames in [-1, 1].
        """
        if source_image.ndim == 3:
            source_image = source_image.unsqueeze(0)
        if exp.ndim != 2 or pose.ndim != 2 or exp.shape[0] != pose.shape[0]:
            raise ValueError(
                f"render needs exp (T, E) and pose (T, P) of the same length, got {tuple(exp.shape)} and {tuple(pose.shape)}"
            )
        was_training = self.training
        self.eval()
        source_image = source_image.to(self.device)
        self.net.autoencoder.check_images(source_image, "source_image")
        features = self.net.source_encoder(source_image)  # (1, C, h, w), computed once for the sequence
        frames = []
        for start in range(0, exp.shape[0], batch_size):
            e = exp[start : start + batch_size].to(self.device)
            p = pose[start : start + batch_size].to(self.device)
            frames.append(self.net.generate(features, e, p)["image"].clamp(-1, 1))
        self.train(was_training)
        return torch.cat(frames)
