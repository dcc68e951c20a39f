"""Coefficient-sequence emotion classifier: the evaluation network for generated expressions.

Later stages score the emotion accuracy of the coefficients a generator samples with it, so
it is trained for speaker-independent accuracy (evaluated on held-out speakers) and for
robustness to generated input (noise and amplitude augmentation on the normalised exp).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from flowvq.data.schema import EMOTIONS, INTENSITY_LEVELS
from flowvq.lightning_modules.common import check_module_against_data, confusion_figure, tensorboard
from flowvq.lightning_modules.schedules import cosine_schedule
from flowvq.nn.temporal import TemporalConvEncoder

__all__ = ["EmotionClassifier", "load_emotion_classifier"]


class EmotionClassifier(LightningModule):
    """Classify the emotion (and, as an auxiliary task, the intensity) of a coefficient window.

    Input is the DataModule's normalised ``exp`` (optionally with ``pose``) of shape
    ``(B, T, E)``; clips of unknown emotion (``-1``, e.g. LRS3) are ignored by the loss.

    Arguments:
        exp_dim, pose_dim, num_emotions: filled from the dataset card by the CLI.
        use_pose: also feed head pose (pose carries some emotion energy, but the default
            scores expression alone, which is what the expression generators produce).
        hidden, layers, kernel_size, dropout: the temporal conv encoder.
        intensity_weight: weight of the auxiliary intensity loss (0 disables it).
        label_smoothing: on the emotion cross-entropy.
        input_noise, amplitude_jitter: train-time augmentation: Gaussian noise (in units of
            the train std) and a random per-window gain on the expression, so generated
            coefficients, which are never exactly like real ones, are still scored well.
        lr, weight_decay: AdamW with cosine decay to 2% over the run (``max_steps`` or ``max_epochs``).
    """

    def __init__(
        self,
        exp_dim: int | None = None,
        pose_dim: int | None = None,
        num_emotions: int | None = None,
        use_pose: bool = False,
        hidden: int = 128,
        layers: int = 4,
        kernel_size: int = 5,
        dropout: float = 0.1,
        intensity_weight: float = 0.2,
        label_smoothing: float = 0.05,
        input_noise: float = 0.1,
        amplitude_jitter: float = 0.15,
        lr: float = 2e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__()
        if exp_dim is None or num_emotions is None:
            raise ValueError(
                "EmotionClassifier needs exp_dim and num_emotions: the CLI fills them from the dataset "
                "card (data.init_args.root); in Python pass them, e.g. from `datamodule.dims`"
            )
        if use_pose and pose_dim is None:
            raise ValueError("use_pose=True needs pose_dim (filled from the dataset card by the CLI)")
        self.save_hyperparameters()
        in_dim = exp_dim + (pose_dim if use_pose else 0)
        self.encoder = TemporalConvEncoder(in_dim, hidden, layers, kernel_size, dropout)
        self.emotion_head = nn.Linear(hidden, num_emotions)
        self.intensity_head = nn.Linear(hidden, INTENSITY_LEVELS)
        # one metric object per split ("train" cannot be a ModuleDict key: it is a Module method)
        self.train_accuracy = MulticlassAccuracy(num_emotions, ignore_index=-1)
        self.val_accuracy = MulticlassAccuracy(num_emotions, ignore_index=-1)
        self.test_accuracy = MulticlassAccuracy(num_emotions, ignore_index=-1)
        self.val_confusion = MulticlassConfusionMatrix(num_emotions, ignore_index=-1)
        self.test_confusion = MulticlassConfusionMatrix(num_emotions, ignore_index=-1)

    @property
    def emotion_names(self) -> list[str]:
        n = self.hparams.num_emotions
        return list(EMOTIONS[:n]) if n <= len(EMOTIONS) else [str(i) for i in range(n)]

    def setup(self, stage: str) -> None:
        check_module_against_data(self)

    def forward(self, exp: Tensor, pose: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``exp`` (B, T, E) [+ ``pose`` (B, T, P)], ``mask`` (B, T) -> emotion and intensity logits."""
        if exp.shape[-1] != self.hparams.exp_dim:
            raise ValueError(f"expected expression of size E={self.hparams.exp_dim}, got shape {tuple(exp.shape)}")
        x = exp
        if self.hparams.use_pose:
            if pose is None:
                raise ValueError("this classifier was trained with use_pose=True: pass pose as well")
            x = torch.cat([exp, pose], dim=-1)
        h = self.encoder(x, mask)  # (B, H)
        return self.emotion_head(h), self.intensity_head(h)

    @torch.no_grad()
    def predict_proba(self, exp: Tensor, pose: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Emotion probabilities ``(B, num_emotions)`` of normalised sequences of any length."""
        was_training = self.training
        self.eval()
        logits, _ = self(exp.to(self.device, self.dtype), None if pose is None else pose.to(self.device), mask)
        self.train(was_training)
        return logits.softmax(-1)

    @torch.no_grad()
    def embed(self, exp: Tensor, pose: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """The classifier's embedding ``(B, hidden)`` of normalised sequences of any length: the
        pooled encoder features its emotion head reads. EPPL and EPDV
        (:mod:`flowvq.metrics.interpolation`) measure distances in this space."""
        if exp.shape[-1] != self.hparams.exp_dim:
            raise ValueError(f"expected expression of size E={self.hparams.exp_dim}, got shape {tuple(exp.shape)}")
        was_training = self.training
        self.eval()
        x = exp.to(self.device, self.dtype)
        if self.hparams.use_pose:
            if pose is None:
                raise ValueError("this classifier was trained with use_pose=True: pass pose as well")
            x = torch.cat([x, pose.to(self.device, self.dtype)], dim=-1)
        h = self.encoder(x, None if mask is None else mask.to(self.device))
        self.train(was_training)
        return h

    def _augment(self, exp: Tensor) -> Tensor:
        gain = 1 + self.hparams.amplitude_jitter * torch.randn(exp.shape[0], 1, 1, device=exp.device)
        return exp * gain + self.hparams.input_noise * torch.randn_like(exp)

    def loss(self, batch: dict[str, Any], augment: bool = False) -> tuple[Tensor, Tensor]:
        """Cross-entropy on emotion (+ weighted intensity); labels of -1 are ignored."""
        exp = self._augment(batch["exp"]) if augment else batch["exp"]
        emotion_logits, intensity_logits = self(exp, batch.get("pose"), batch.get("mask"))
        emotion, intensity = batch["emotion"], batch["intensity"]
        loss = emotion_logits.sum() * 0  # keeps the graph when a batch has no labels at all
        if (emotion >= 0).any():
            loss = loss + F.cross_entropy(
                emotion_logits, emotion, ignore_index=-1, label_smoothing=self.hparams.label_smoothing
            )
        if self.hparams.intensity_weight > 0 and (intensity >= 0).any():
            loss = loss + self.hparams.intensity_weight * F.cross_entropy(intensity_logits, intensity, ignore_index=-1)
        return loss, emotion_logits

    def _step(self, batch: dict[str, Any], split: str) -> Tensor:
        loss, emotion_logits = self.loss(batch, augment=split == "train")
        emotion = batch["emotion"]
        batch_size = emotion.shape[0]
        self.log(f"{split}/loss", loss, prog_bar=split != "train", batch_size=batch_size, sync_dist=split != "train")
        accuracy = getattr(self, f"{split}_accuracy")
        accuracy(emotion_logits, emotion)
        self.log(f"{split}/accuracy", accuracy, prog_bar=True, batch_size=batch_size, on_epoch=True)
        if split != "train":
            getattr(self, f"{split}_confusion")(emotion_logits, emotion)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Emotion probabilities of each window: ``<clip_id>_f<start>.npz`` under the prediction
        folder (:class:`~flowvq.callbacks.PredictionWriter`) with ``probabilities [C]``,
        ``predicted`` and ``label`` (emotion names; ``label`` is empty where unknown)."""
        pose = batch.get("pose") if self.hparams.use_pose else None
        probabilities = self.predict_proba(batch["exp"], pose, batch.get("mask")).cpu()
        names = self.emotion_names
        items = []
        for i, clip in enumerate(batch["clip_id"]):
            label = int(batch["emotion"][i])
            items.append(
                {
                    "name": f"{clip}_f{int(batch['start'][i]):05d}",
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

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": optimizer, "lr_scheduler": cosine_schedule(self, optimizer, final_fraction=0.02)}


def load_emotion_classifier(
    path: str | Path, exp_dim: int | None = None, map_location: Any = "cpu"
) -> EmotionClassifier:
    """An :class:`EmotionClassifier` in eval mode with frozen weights, from a Lightning checkpoint
    (``.ckpt``) or a whole pickled module (``torch.save(classifier, path)``).

    Raises:
        FileNotFoundError: the file does not exist (says how to train one).
        DatasetError: ``exp_dim`` is given and the classifier scores another E.
    """
    from flowvq.data.card import DatasetError

    if not Path(path).is_file():
        raise FileNotFoundError(
            f"emotion_classifier={str(path)!r} does not exist: train one with "
            "`flowvq fit --config configs/tiny/emotion_classifier.yaml` or set it to null"
        )
    # weights_only=False: a checkpoint also holds the DataModule's hparams; load only files you trust
    loaded = torch.load(path, map_location=map_location, weights_only=False)
    if isinstance(loaded, EmotionClassifier):
        classifier = loaded
    else:
        classifier = EmotionClassifier.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    if exp_dim is not None and classifier.hparams.exp_dim != exp_dim:
        raise DatasetError(
            f"emotion_classifier={str(path)!r} scores E={classifier.hparams.exp_dim}, the generator makes "
            f"E={exp_dim}: use a classifier trained on the same dataset"
        )
    return classifier.eval().requires_grad_(False)
