"""GMTalker's Emotion Mapping Network (EMN), trained with a style encoder of frames.

The EMN (:class:`~flowvq.nn.emotion_mapping.MappingNetwork`) maps noise and an
emotion-weights vector to the style code that modulates the StyleUNet head generator
(:mod:`flowvq.lightning_modules.styleunet`). It is trained on emotional frames of many
speakers (:class:`~flowvq.datamodules.FrameDataModule` batches: ``image``, ``emotion``)
together with a :class:`~flowvq.nn.emotion_mapping.StyleEncoder`, so that the codes it maps
emotion e to lie where the encoder puts real frames of emotion e: StarGAN v2's pairing of
mapping network and style encoder.

Objective (and why): StarGAN v2 ties the two through its generator (style reconstruction
and the adversarial loss on generated images). Here the EMN is trained before, and apart
from, the person-specific head generator (which is trained afterwards on one person with the
EMN frozen), so there is no generator to close that loop. What remains is the pairing itself,
trained by two terms:

- the style encoder learns emotion-bearing codes: cross-entropy of a linear emotion
  classifier on its codes (plus a small L2 on the codes, which keeps their scale fixed);
- the EMN learns to match, per emotion, the *distribution* of the encoder's codes of real
  frames (detached): the class-conditional MMD of :func:`~flowvq.nn.emotion_mapping.conditional_mmd`
  between (code, emotion) pairs of real frames and of the EMN fed random noise and the same
  emotions one-hot. MMD matches distributions without an adversary (stable on CPU-size
  batches) and keeps the EMN's codes spread over ``z`` as the real codes are spread over
  speakers and frames, where an L2 to the class mean would collapse every ``z`` onto one code.

Measured at validation and test (held-out speakers): the classifier's accuracy on the
encoder's codes (``acc_encoder``) and on EMN codes of each emotion (``acc_mapped``: are
codes mapped from e classified as e), and the conditional MMD.

References:
    Choi et al. StarGAN v2. https://arxiv.org/abs/1912.01865
    GMTalker. https://arxiv.org/abs/2312.07669
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from flowvq.lightning_modules.common import check_module_against_data
from flowvq.lightning_modules.vqgan import require
from flowvq.nn.emotion_mapping import MappingNetwork, StyleEncoder, conditional_mmd

__all__ = ["MAPPING_KEYS", "EmotionMappingNetwork"]

#: Hyperparameters that fix the mapping network's architecture; a head generator must agree on them.
MAPPING_KEYS = ("latent_dim", "style_dim", "hidden_dim", "num_emotions", "shared_layers", "branch_layers")


class EmotionMappingNetwork(L.LightningModule):
    """The EMN and its style encoder.

    Arguments:
        resolution: side of the frames the style encoder reads.
        num_emotions: emotions (filled from the dataset card by the CLI).
        latent_dim, style_dim, hidden_dim, shared_layers, branch_layers: the mapping network
            (StarGAN v2: 16, 64, 512, 4, 4).
        encoder_channels: widths of the style encoder's stages (each halves the resolution).
        encoder_head: how the style encoder reads its last feature map: ``"spatial"`` (a
            linear map of the whole map, as StarGAN v2) or ``"mean"`` (global average pooling,
            which loses where the brows and mouth corners are; see
            :class:`~flowvq.nn.emotion_mapping.StyleEncoder`).
        mmd_weight: weight of the conditional MMD of the EMN's codes.
        code_weight: weight of the L2 on the encoder's codes.
        lr, weight_decay: AdamW for all three networks (StarGAN v2 trains its mapping
            network at a hundredth of the others' rate: ``mapping_lr_scale``).
        mapping_lr_scale: the mapping network's learning rate relative to ``lr``.
    """

    def __init__(
        self,
        resolution: int = 256,
        num_emotions: int | None = None,
        latent_dim: int = 16,
        style_dim: int = 64,
        hidden_dim: int = 512,
        shared_layers: int = 4,
        branch_layers: int = 4,
        encoder_channels: tuple[int, ...] = (32, 64, 128, 256),
        encoder_head: str = "spatial",
        mmd_weight: float = 1.0,
        code_weight: float = 1e-3,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        mapping_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        num_emotions = 8 if num_emotions is None else int(num_emotions)
        self.mapping = MappingNetwork(latent_dim, style_dim, hidden_dim, num_emotions, shared_layers, branch_layers)
        self.encoder = StyleEncoder(resolution, style_dim, tuple(encoder_channels), encoder_head)
        self.classifier = torch.nn.Linear(style_dim, num_emotions)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        check_module_against_data(self)
        size = getattr(datamodule, "image_size", None)
        if size is not None and size != self.hparams.resolution:
            raise ValueError(
                f"EmotionMappingNetwork resolution={self.hparams.resolution} but the data gives {size} px frames: "
                f"set data.init_args.image_size to {self.hparams.resolution}"
            )

    def configure_optimizers(self):
        lr, decay = self.hparams.lr, self.hparams.weight_decay
        return torch.optim.AdamW(
            [
                {"params": [*self.encoder.parameters(), *self.classifier.parameters()]},
                {"params": self.mapping.parameters(), "lr": lr * self.hparams.mapping_lr_scale},
            ],
            lr=lr,
            weight_decay=decay,
        )

    def mapped_codes(self, emotions: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """EMN codes ``(B, S)`` for random noise and one-hot ``emotions (B,)``."""
        z = torch.randn(len(emotions), self.hparams.latent_dim, generator=generator, device=emotions.device)
        weights = F.one_hot(emotions, self.mapping.num_emotions).float()
        return self.mapping(z, weights)

    def _step(self, batch: dict, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        images = require(batch, "image", "EmotionMappingNetwork")
        emotions = require(batch, "emotion", "EmotionMappingNetwork")
        known = emotions >= 0  # unknown emotions (-1, LRS3) train nothing here
        images, emotions = images[known], emotions[known]
        codes = self.encoder(images)  # (B, S)
        logits = self.classifier(codes)
        ce = F.cross_entropy(logits.float(), emotions)
        mapped = self.mapped_codes(emotions, generator)
        mmd = conditional_mmd(codes.detach().float(), mapped.float(), emotions)
        code_l2 = codes.float().pow(2).mean()
        loss = ce + self.hparams.mmd_weight * mmd + self.hparams.code_weight * code_l2
        mapped_logits = self.classifier(mapped)
        logs = {
            "loss": loss.detach(),
            "ce": ce.detach(),
            "mmd": mmd.detach(),
            "code_l2": code_l2.detach(),
            "acc_encoder": (logits.argmax(-1) == emotions).float().mean(),
            "acc_mapped": (mapped_logits.argmax(-1) == emotions).float().mean(),
        }
        return loss, logs

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, logs = self._step(batch)
        size = int(batch["image"].shape[0])
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=size, prog_bar=False)
        return loss

    def _evaluate(self, batch: dict, prefix: str) -> None:
        # fixed noise per batch: a validation figure does not depend on the rank or the order
        generator = torch.Generator(device=batch["image"].device).manual_seed(0)
        _, logs = self._step(batch, generator)
        size = int(batch["image"].shape[0])
        self.log_dict({f"{prefix}/{k}": v for k, v in logs.items()}, batch_size=size, sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per frame: the frame (``.png``), its style code and the predicted emotion (``.npz``)."""
        images = require(batch, "image", "EmotionMappingNetwork")
        codes = self.encoder(images)
        probabilities = self.classifier(codes).float().softmax(-1)
        pixels = images.float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        items = []
        for i, clip in enumerate(batch.get("clip_id", [f"batch{i}" for i in range(len(images))])):
            frame = int(batch["frame"][i]) if "frame" in batch else i
            items.append(
                {
                    "name": f"{clip}_f{frame:05d}",
                    "image": pixels[i],
                    "style_code": codes[i].float().cpu().numpy(),
                    "probabilities": probabilities[i].cpu().numpy(),
                    "predicted_emotion": int(probabilities[i].argmax()),
                    "emotion": int(batch["emotion"][i]) if "emotion" in batch else -1,
                }
            )
        return items

    @torch.no_grad()
    def style(self, emotion_weights: Tensor, num_samples: int = 1, seed: int | None = None) -> Tensor:
        """Style codes ``(num_samples, S)`` for one weights vector ``(K,)`` (a blend of emotions)."""
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        z = torch.randn(num_samples, self.hparams.latent_dim, generator=generator, device=self.device)
        weights = emotion_weights.to(self.device).float().reshape(1, -1).expand(num_samples, -1)
        return self.mapping(z, weights)
