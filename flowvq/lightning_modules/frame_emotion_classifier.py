"""Frame emotion classifier: the evaluation network for the emotion accuracy (Acc_emo) of videos.

The papers score generated videos with an emotion classifier fine-tuned on MEAD faces, per
video. This one is trained here on the train split's face frames (FrameDataModule) and
scored on held-out speakers; a video's emotion is the argmax of its frames' mean
probabilities (:meth:`FrameEmotionClassifier.video_probabilities`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from flowvq.data.schema import EMOTIONS
from flowvq.lightning_modules.common import check_module_against_data, confusion_figure, tensorboard
from flowvq.lightning_modules.schedules import cosine_schedule
from flowvq.nn.conv_encoder import ConvEncoder

__all__ = ["FrameEmotionClassifier", "clip_accuracy"]


def clip_accuracy(probabilities: Tensor, labels: Tensor, clips: list[str]) -> Tensor:
    """Per clip of a batch: 1.0 where the argmax of its frames' mean probabilities is its label.

    Frames of unknown emotion (``-1``) are left out; returns ``[clips with a label]``.
    """
    correct = []
    for clip in dict.fromkeys(clips):
        rows = torch.tensor([c == clip for c in clips], device=probabilities.device) & (labels >= 0)
        if rows.any():
            correct.append((probabilities[rows].mean(0).argmax() == labels[rows][0]).float())
    return torch.stack(correct) if correct else probabilities.new_zeros(0)


class FrameEmotionClassifier(LightningModule):
    """Classify the emotion of single face frames.

    Batches come from :class:`~flowvq.datamodules.FrameDataModule` (``image [B, 3, H, W]`` in
    [-1, 1], ``emotion [B]``, ``clip_id``); frames of unknown emotion (-1) are ignored.

    Arguments:
        num_emotions: filled from the dataset card by the CLI.
        input_size: side the frames are resized to (any input size is accepted).
        channels: widths of the conv encoder's stages.
        dropout: before the classifier layer.
        label_smoothing: on the cross-entropy.
        lr, weight_decay: AdamW with cosine decay over the run.
    """

    def __init__(
        self,
        num_emotions: int | None = None,
        input_size: int = 64,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        dropout: float = 0.2,
        label_smoothing: float = 0.05,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__()
        if num_emotions is None:
            raise ValueError(
                "FrameEmotionClassifier needs num_emotions: the CLI fills it from the dataset card "
                "(data.init_args.root); in Python pass it, e.g. from `datamodule.dims`"
            )
        self.save_hyperparameters()
        self.encoder = ConvEncoder(3, channels, num_emotions, dropout)
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_accuracy", MulticlassAccuracy(num_emotions, average="micro", ignore_index=-1))
        for split in ("val", "test"):
            setattr(self, f"{split}_clip_accuracy", MeanMetric())
            setattr(self, f"{split}_confusion", MulticlassConfusionMatrix(num_emotions, ignore_index=-1))

    @property
    def emotion_names(self) -> list[str]:
        n = self.hparams.num_emotions
        return list(EMOTIONS[:n]) if n <= len(EMOTIONS) else [str(i) for i in range(n)]

    def forward(self, image: Tensor) -> Tensor:
        """``image [B, 3, H, W]`` in [-1, 1] -> logits ``[B, C]``."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [-1, 1], got {tuple(image.shape)}")
        size = self.hparams.input_size
        if image.shape[-2:] != (size, size):
            image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.encoder(image)

    @torch.no_grad()
    def predict_proba(self, image: Tensor) -> Tensor:
        return self(image).softmax(-1)

    @torch.no_grad()
    def video_probabilities(self, frames: np.ndarray | Tensor, batch_size: int = 64) -> Tensor:
        """Mean emotion probabilities ``[C]`` over the frames ``[T, H, W, 3]`` uint8 of a video."""
        frames = torch.as_tensor(np.asarray(frames) if isinstance(frames, np.ndarray) else frames)
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        device = next(self.parameters()).device
        total = torch.zeros(self.hparams.num_emotions)
        for start in range(0, len(frames), batch_size):
            chunk = rearrange(frames[start : start + batch_size].float() / 127.5 - 1.0, "t h w c -> t c h w")
            total += self.predict_proba(chunk.to(device)).sum(0).cpu()
        return total / max(len(frames), 1)

    def _step(self, batch: dict[str, Any], split: str) -> Tensor:
        logits = self(batch["image"])
        emotion = batch["emotion"]
        loss = logits.sum() * 0  # keeps the graph when a batch has no labels
        if (emotion >= 0).any():
            loss = loss + F.cross_entropy(
                logits, emotion, ignore_index=-1, label_smoothing=self.hparams.label_smoothing
            )
        size = emotion.shape[0]
        self.log(f"{split}/loss", loss, prog_bar=split != "train", batch_size=size, sync_dist=split != "train")
        accuracy = getattr(self, f"{split}_accuracy")
        accuracy(logits, emotion)
        self.log(f"{split}/accuracy", accuracy, prog_bar=True, batch_size=size, on_epoch=True)
        if split != "train":
            getattr(self, f"{split}_confusion")(logits, emotion)
            correct = clip_accuracy(logits.softmax(-1).detach(), emotion, batch["clip_id"])
            if len(correct):
                metric = getattr(self, f"{split}_clip_accuracy")
                metric(correct)
                self.log(f"{split}/clip_accuracy", metric, prog_bar=True, batch_size=len(correct), on_epoch=True)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per frame: the frame as ``<clip_id>_f<frame>.png`` and ``probabilities``, ``predicted``,
        ``label`` in the ``.npz`` beside it."""
        probabilities = self.predict_proba(batch["image"]).cpu()
        images = ((batch["image"].detach().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        names = self.emotion_names
        items = []
        for i, clip in enumerate(batch["clip_id"]):
            label = int(batch["emotion"][i])
            items.append(
                {
                    "name": f"{clip}_f{int(batch['frame'][i]):05d}",
                    "image": rearrange(images[i], "c h w -> h w c").numpy(),
                    "probabilities": probabilities[i].numpy(),
                    "predicted": names[int(probabilities[i].argmax())],
                    "label": names[label] if 0 <= label < len(names) else "",
                }
            )
        return items

    def _log_confusion(self, split: str) -> None:
        confusion = getattr(self, f"{split}_confusion")
        matrix = confusion.compute().cpu().numpy()
        confusion.reset()
        writer = tensorboard(self)
        if writer is not None and self.trainer.is_global_zero:
            figure = confusion_figure(matrix, self.emotion_names, f"{split} confusion, epoch {self.current_epoch}")
            writer.add_figure(f"{split}/confusion", figure, global_step=self.global_step)

    def on_validation_epoch_end(self) -> None:
        self._log_confusion("val")

    def on_test_epoch_end(self) -> None:
        self._log_confusion("test")

    def setup(self, stage: str) -> None:
        check_module_against_data(self)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": optimizer, "lr_scheduler": cosine_schedule(self, optimizer, final_fraction=0.02)}
