"""SyncNet: the evaluation network for lip sync (LSE-D, LSE-C of generated videos).

Two towers embed a window of ``frames`` mouth crops and the log-mel of the same 0.2 s
(``frames x K`` mel columns: 20 columns at 100 Hz for 5 frames at 25 fps, as syncnet_python's
20 MFCC steps against 5 video frames). Embeddings are unit vectors; training is contrastive:
for each video window the aligned audio window is the positive, and the same clip's audio
shifted by ``min_negative_shift..max_offset`` frames either way (and, optionally, the other
windows' aligned audio in the batch) are the negatives, with logits ``-distance x scale``.
At scoring time the distance table over offsets ``-eval_offsets..eval_offsets`` of a whole
clip gives LSE-D and LSE-C (:mod:`flowvq.metrics.sync`).

References:
    Chung, Zisserman. Out of time: automated lip sync in the wild. ACCV workshops 2016.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric

from flowvq.lightning_modules.common import check_module_against_data
from flowvq.lightning_modules.schedules import cosine_schedule
from flowvq.metrics.sync import sync_scores
from flowvq.nn.conv_encoder import ConvEncoder

__all__ = ["SyncNet"]


class SyncNet(LightningModule):
    """Audio-visual sync embedding trained with time-shifted negatives.

    Input batches come from :class:`~flowvq.datamodules.AudioVisualDataModule`.

    Arguments:
        mel_bins, mel_per_frame: filled from the dataset card by the CLI.
        frames: video frames per window (must equal the DataModule's).
        crop_size: side the mouth crops are resized to (crops of another size are resized).
        mouth_scale: crop side over mouth width, as the DataModule crops (checked; scoring uses it).
        channels: widths of both towers' stages.
        embed_dim: embedding size.
        max_offset: largest time shift, in frames, of a training negative (at most the
            DataModule's ``max_shift``).
        min_negative_shift: shifts below this are not negatives (real mouths lead the sound by
            about a frame, so a one-frame shift is nearly as aligned as zero).
        batch_negatives: also use the other clips' aligned audio in the batch as negatives.
        eval_offsets: offsets searched either way when scoring a clip (15 in syncnet_python).
        lr, weight_decay: AdamW with cosine decay over the run.
    """

    def __init__(
        self,
        mel_bins: int | None = None,
        mel_per_frame: int | None = None,
        frames: int = 5,
        crop_size: int = 48,
        mouth_scale: float = 1.8,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        embed_dim: int = 256,
        max_offset: int = 15,
        min_negative_shift: int = 2,
        batch_negatives: bool = True,
        eval_offsets: int = 15,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__()
        if mel_bins is None or mel_per_frame is None:
            raise ValueError(
                "SyncNet needs mel_bins and mel_per_frame: the CLI fills them from the dataset card "
                "(data.init_args.root); in Python pass them, e.g. from `datamodule.dims`"
            )
        if not 1 <= min_negative_shift <= max_offset:
            raise ValueError(
                f"SyncNet: need 1 <= min_negative_shift ({min_negative_shift}) <= max_offset ({max_offset})"
            )
        self.save_hyperparameters()
        self.video = ConvEncoder(3 * frames, channels, embed_dim)
        self.audio = ConvEncoder(1, channels, embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
        # the train split's log-mel statistics, copied from the dataset card at the first fit
        self.register_buffer("mel_mean", torch.zeros(mel_bins))
        self.register_buffer("mel_std", torch.ones(mel_bins))
        self.register_buffer("has_mel_stats", torch.tensor(False))
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_offset_accuracy", MeanMetric())
            setattr(self, f"{split}_confidence", MeanMetric())

    # ------------------------------------------------------------------ embedding
    def embed_video(self, mouth: Tensor) -> Tensor:
        """``mouth [B, F, 3, h, w]`` in [-1, 1] -> unit embeddings ``[B, D]``."""
        if mouth.dim() != 5 or mouth.shape[1] != self.hparams.frames or mouth.shape[2] != 3:
            raise ValueError(f"mouth must be [B, {self.hparams.frames}, 3, h, w], got {tuple(mouth.shape)}")
        size = self.hparams.crop_size
        x = rearrange(mouth, "b f c h w -> b (f c) h w")
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return F.normalize(self.video(x), dim=-1)

    def embed_audio(self, mel: Tensor) -> Tensor:
        """Raw log-mel windows ``[B, F * K, M]`` -> unit embeddings ``[B, D]``."""
        columns = self.hparams.frames * self.hparams.mel_per_frame
        if mel.dim() != 3 or mel.shape[1:] != (columns, self.hparams.mel_bins):
            raise ValueError(f"mel must be [B, {columns}, {self.hparams.mel_bins}], got {tuple(mel.shape)}")
        x = (mel - self.mel_mean) / self.mel_std
        return F.normalize(self.audio(x[:, None]), dim=-1)

    def shifted_audio(self, mel: Tensor, offsets: list[int]) -> Tensor:
        """Embeddings ``[B, O, D]`` of the audio windows at ``offsets`` of a DataModule mel ``[B, (F + 2S) K, M]``."""
        k, f = self.hparams.mel_per_frame, self.hparams.frames
        shift = (mel.shape[1] // k - f) // 2
        if max(abs(o) for o in offsets) > shift:
            raise ValueError(
                f"offsets up to {max(abs(o) for o in offsets)} need audio context >= that, batch has {shift}"
            )
        windows = torch.stack([mel[:, (shift + o) * k : (shift + o + f) * k] for o in offsets], dim=1)
        embedded = self.embed_audio(rearrange(windows, "b o c m -> (b o) c m"))
        return rearrange(embedded, "(b o) d -> b o d", o=len(offsets))

    # ------------------------------------------------------------------ training
    def _offsets(self, mel: Tensor) -> list[int]:
        k, f = self.hparams.mel_per_frame, self.hparams.frames
        shift = min(self.hparams.max_offset, (mel.shape[1] // k - f) // 2)
        return list(range(-shift, shift + 1))

    def loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, list[int]]:
        """InfoNCE loss and the distance table ``[B, O]`` over all offsets (``O`` listed)."""
        offsets = self._offsets(batch["mel"])
        video = self.embed_video(batch["mouth"])  # (B, D)
        audio = self.shifted_audio(batch["mel"], offsets)  # (B, O, D)
        distances = (audio - video[:, None]).norm(dim=-1)  # (B, O)
        scale = self.log_scale.exp()
        centre = offsets.index(0)
        negatives = [i for i, o in enumerate(offsets) if abs(o) >= self.hparams.min_negative_shift]
        logits = -scale * distances[:, [centre, *negatives]]  # positive first
        if self.hparams.batch_negatives and video.shape[0] > 1:
            cross = torch.cdist(video, audio[:, centre])  # (B, B): video i against clip j's aligned audio
            clips = batch.get("clip_id")
            same = torch.eye(video.shape[0], dtype=torch.bool, device=video.device)
            if clips is not None:
                same = same | torch.tensor(
                    [[a == b for b in clips] for a in clips], dtype=torch.bool, device=video.device
                )
            logits = torch.cat([logits, (-scale * cross).masked_fill(same, float("-inf"))], dim=1)
        target = torch.zeros(video.shape[0], dtype=torch.long, device=video.device)
        return F.cross_entropy(logits, target), distances, offsets

    def _step(self, batch: dict[str, Any], split: str) -> Tensor:
        loss, distances, offsets = self.loss(batch)
        size = distances.shape[0]
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=size, sync_dist=split != "train")
        detached = distances.detach()
        best = detached.argmin(1) == offsets.index(0)
        accuracy = getattr(self, f"{split}_offset_accuracy")
        accuracy(best.float())
        self.log(f"{split}/offset_accuracy", accuracy, prog_bar=split != "train", batch_size=size, on_epoch=True)
        # per-window confidence: median minus minimum distance over the offsets
        confidence = getattr(self, f"{split}_confidence")
        confidence(detached.median(1).values - detached.min(1).values)
        self.log(f"{split}/confidence", confidence, batch_size=size, on_epoch=True)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per window: ``distances [O]`` over the batch's offsets and the best ``offset``
        (``<clip_id>_f<start>.npz`` under the prediction folder)."""
        _, distances, offsets = self.loss(batch)
        items = []
        for i, clip in enumerate(batch["clip_id"]):
            row = distances[i].detach().cpu()
            items.append(
                {
                    "name": f"{clip}_f{int(batch['start'][i]):05d}",
                    "distances": row.numpy(),
                    "offsets": np.asarray(offsets),
                    "offset": int(offsets[int(row.argmin())]),
                }
            )
        return items

    def setup(self, stage: str) -> None:
        card = check_module_against_data(self)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        for name in ("frames", "mouth_scale"):
            ours, theirs = self.hparams[name], getattr(datamodule, name, None)
            if theirs is not None and ours != theirs:
                raise ValueError(
                    f"SyncNet was built with {name}={ours} but the DataModule gives {name}={theirs}: "
                    f"set data.init_args.{name} and model.init_args.{name} to the same value"
                )
        if card is not None and card.stats is not None and not bool(self.has_mel_stats):
            self.mel_mean.copy_(torch.as_tensor(card.stats.mel_mean, dtype=torch.float32))
            self.mel_std.copy_(torch.as_tensor(card.stats.mel_std, dtype=torch.float32))
            self.has_mel_stats.fill_(True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": optimizer, "lr_scheduler": cosine_schedule(self, optimizer, final_fraction=0.02)}

    # ------------------------------------------------------------------ scoring whole clips
    @torch.no_grad()
    def offset_distances(
        self, crops: Tensor | np.ndarray, mel: Tensor | np.ndarray, offsets: int | None = None
    ) -> Tensor:
        """Distance table ``[W, 2S + 1]`` of a clip: every window of ``frames`` frames (W = T - F + 1)
        against the audio shifted by ``-S..S`` frames (S = ``offsets``, default ``eval_offsets``).

        Arguments:
            crops: mouth crops ``[T, h, w, 3]`` uint8 (:func:`~flowvq.data.mouth.mouth_crops`) or
                ``[T, 3, h, w]`` float in [-1, 1].
            mel: the clip's raw log-mel ``[T, K, M]``; audio outside the clip is silence.
        """
        from flowvq.datamodules.audio_visual import padded_mel

        s = self.hparams.eval_offsets if offsets is None else int(offsets)
        f = self.hparams.frames
        crops = torch.as_tensor(np.asarray(crops) if isinstance(crops, np.ndarray) else crops)
        if crops.dtype == torch.uint8:
            crops = rearrange(crops.float() / 127.5 - 1.0, "t h w c -> t c h w")
        mel = np.asarray(mel.cpu() if isinstance(mel, Tensor) else mel, dtype=np.float32)
        total = min(len(crops), len(mel))
        if total < f:
            raise ValueError(f"a clip of {total} frames is shorter than SyncNet's window of {f} frames")
        device = self.mel_mean.device
        crops = crops[:total].to(device)
        columns = torch.as_tensor(padded_mel(mel[:total], -s, total + s), device=device)  # ((T + 2S) K, M)
        k = self.hparams.mel_per_frame
        starts = range(total - f + 1)
        video = torch.cat(
            [self.embed_video(torch.stack([crops[t : t + f] for t in chunk])) for chunk in _chunks(starts, 64)]
        )  # (W, D)
        # audio window starting at frame t + o sits at column (t + o + S) K of the padded mel
        audio_starts = range(total - f + 1 + 2 * s)
        audio = torch.cat(
            [
                self.embed_audio(torch.stack([columns[a * k : (a + f) * k] for a in chunk]))
                for chunk in _chunks(audio_starts, 256)
            ]
        )  # (W + 2S, D)
        index = torch.arange(len(starts), device=device)[:, None] + torch.arange(2 * s + 1, device=device)  # (W, O)
        return (audio[index] - video[:, None]).norm(dim=-1).cpu()

    @torch.no_grad()
    def score_clip(
        self, frames: np.ndarray, landmarks: np.ndarray, mel: np.ndarray, offsets: int | None = None
    ) -> dict[str, float]:
        """LSE-D, LSE-C and the AV offset of a video ``[T, H, W, 3]`` uint8 with landmarks in its pixels."""
        from flowvq.data.mouth import mouth_crops

        crops = mouth_crops(frames, landmarks, self.hparams.crop_size, self.hparams.mouth_scale)
        lse_d, lse_c, offset = sync_scores(self.offset_distances(crops, mel, offsets))
        return {"lse_d": float(lse_d), "lse_c": float(lse_c), "offset": int(offset)}


def _chunks(values: range, size: int) -> list[range]:
    return [values[i : i + size] for i in range(0, len(values), size)]
