"""GMEG: GMTalker's Gaussian-mixture expression generator, as a LightningModule.

Speech (the mel windows of :class:`~flowvq.datamodules.CoefficientDataModule`) and a point of
the emotion simplex (one weight per MEAD emotion; intensity moves weight between neutral and
the emotion) map to expression coefficients through a per-frame latent ``z_gm`` whose prior
is a Gaussian mixture with one learnable component per emotion.

**Which reading of the paper this is.** The later version of GMTalker (arXiv 2312.07669 v3)
describes GMEG as a Transformer-based mixture-of-Gaussians *mapper* from speech and emotion
weights to a Gaussian-mixture latent, and a *decoder* from that latent to 3DMM expression
coefficients; the public text available to us does not give its losses or how the mapper is
trained. Where it is silent we took the reading the issue names: a **conditional VAE with a
mixture prior**:

- the mapper (:class:`~flowvq.nn.gmeg.MixtureMapper`, a Transformer over the audio with
  attention limited to a band of frames) gives, per frame, one Gaussian per emotion;
- the prior for emotion weights ``w`` is the *weighted component*
  ``N(sum_c w_c loc_c, sum_c w_c scale_c^2)``: its location is linear in ``w``, so moving the
  weights moves ``z_gm`` and the decoded expression continuously (no jump between components);
- a posterior encoder sees the true coefficients (training only); the loss is the negative
  ELBO: a Gaussian reconstruction likelihood (learned noise per dim) plus the KL divergence
  from the posterior to the weighted component, reparameterised;
- the decoder sees only ``z_gm``: lip motion, emotion and the clip's own variation all pass
  through the latent the head generator is conditioned on.

**Emotion weights in training** (the paper draws labels uniformly; our blend scheme): a clip of
emotion ``k`` at intensity level ``l`` gets ``w = a * onehot(k) + (1 - a) * onehot(neutral)``,
with ``a = intensity_weights[l]`` (0.5, 0.75, 1.0 for MEAD level_1..3) half of the time and
``a`` drawn uniformly within ``weight_jitter`` of it otherwise, so the segment between neutral and
each emotion is trained as that emotion's intensity axis. Neutral clips are one-hot neutral;
clips of unknown emotion (LRS3) get uniform weights.

**Sampling** draws ``z_gm = loc + T * scale * noise`` with noise correlated over time as an
AR(1) process whose lag-1 correlation per latent dim is measured on the posterior's codes
during training (``noise_rho``), so samples move as smoothly as encoded clips do. Everything is
local in time: whole clips and minutes of speech are generated in one pass.

References:
    GMTalker, https://arxiv.org/abs/2312.07669.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, repeat
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from flowvq.data.card import DatasetCard
from flowvq.data.schema import EMOTIONS
from flowvq.lightning_modules.common import check_module_against_data, record_mel_columns, tensorboard
from flowvq.lightning_modules.schedules import cosine_schedule
from flowvq.metrics.diversity import SampleDiversity
from flowvq.metrics.interpolation import EPDV, EPPL, path_embeddings
from flowvq.metrics.lipsync import LipSyncCorrelation
from flowvq.nn.gmeg import GMEGNet

__all__ = ["GMEG", "EmotionWeights"]

#: What ``emotion_weights`` may be: ``{"happy": 0.7, "surprised": 0.3}``, or C numbers.
EmotionWeights = Mapping[str, float] | Sequence[float] | Tensor

#: Blends drawn as strips in TensorBoard at each validation (names -> weights).
VAL_BLENDS: tuple[dict[str, float], ...] = (
    {"neutral": 1.0},
    {"happy": 1.0},
    {"happy": 0.5, "sad": 0.5},
    {"sad": 1.0},
    {"angry": 0.5, "surprised": 0.5},
)


class GMEG(LightningModule):
    """Gaussian-mixture expression generator (GMTalker): speech + emotion weights -> expression.

    Arguments:
        exp_dim, mel_bins, mel_per_frame, num_emotions: filled from the dataset card by the CLI.
        latent_dim: size of ``z_gm`` per frame (what :meth:`latent` returns; the StyleUNet head
            generator takes it as a condition).
        audio_features, audio_hidden: per-frame audio code and the audio encoder's width.
        hidden, layers, heads, attention_window, dropout: the mixture mapper (a Transformer over
            the audio; each frame attends to ``attention_window`` frames either side).
        coder_hidden, coder_blocks: the posterior encoder's and the decoder's convolutions.
        neutral_emotion: the emotion intensity blends from.
        intensity_weights: the emotion's weight (against neutral) at each intensity level.
        weight_jitter: half-width of the uniform draw around that weight in training (half of
            the windows); 0: always the level's weight.
        kl_weight: weight of the KL term; ``kl_warmup_steps`` ramps it from 0 over that many steps.
        prior_init_spread: std of the initial per-emotion offsets of the components.
        output_clip: generated frames are clipped to +-output_clip (normalised units).
        jaw_dim: the expression dim that opens the jaw (lip-sync scores); None: the card's
            ``jaw_open`` dim, or none.
        lr, weight_decay: AdamW, cosine decay to 5% over the run.
        emotion_classifier: an ``EmotionClassifier`` checkpoint scoring samples at validation
            (emotion accuracy, EPPL / EPDV of neutral -> emotion and happy <-> sad paths).
        val_samples, val_sample_batches, val_temperature: samples per window, batches that get
            them, and their temperature at validation; ``interpolation_steps`` steps per path;
            ``embedding_batches`` batches give ``z_gm`` to the TensorBoard projector.
    """

    def __init__(
        self,
        exp_dim: int | None = None,
        pose_dim: int | None = None,
        mel_bins: int | None = None,
        mel_per_frame: int | None = None,
        num_emotions: int | None = None,
        latent_dim: int = 16,
        audio_features: int = 64,
        audio_hidden: int = 64,
        hidden: int = 128,
        layers: int = 2,
        heads: int = 4,
        attention_window: int | None = 16,
        dropout: float = 0.1,
        coder_hidden: int = 128,
        coder_blocks: int = 3,
        neutral_emotion: str = "neutral",
        intensity_weights: list[float] | None = None,
        weight_jitter: float = 0.125,
        kl_weight: float = 1.0,
        kl_warmup_steps: int = 0,
        prior_init_spread: float = 1.0,
        output_clip: float | None = 10.0,
        jaw_dim: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        emotion_classifier: str | None = None,
        val_samples: int = 4,
        val_sample_batches: int = 2,
        val_temperature: float = 1.0,
        interpolation_steps: int = 9,
        embedding_batches: int = 8,
    ) -> None:
        super().__init__()
        if exp_dim is None or mel_bins is None:
            raise ValueError(
                "GMEG needs exp_dim and mel_bins: the CLI fills them from the dataset card "
                "(data.init_args.root); in Python pass them, e.g. **datamodule.dims"
            )
        levels = list(intensity_weights if intensity_weights is not None else [0.5, 0.75, 1.0])
        if not levels or any(not 0.0 <= a <= 1.0 for a in levels):
            raise ValueError(f"intensity_weights must be emotion weights in [0, 1] per level, got {levels}")
        if interpolation_steps < 3:
            raise ValueError(
                f"interpolation_steps must be >= 3 (EPDV needs two step distances), got {interpolation_steps}"
            )
        self.save_hyperparameters()
        self.num_emotions = num_emotions or len(EMOTIONS)
        self.emotion_names = (
            list(EMOTIONS[: self.num_emotions])
            if self.num_emotions <= len(EMOTIONS)
            else [str(i) for i in range(self.num_emotions)]
        )
        self.neutral = self._index(neutral_emotion)
        self.net = GMEGNet(
            exp_dim,
            mel_bins,
            num_components=self.num_emotions,
            latent=latent_dim,
            audio_features=audio_features,
            audio_hidden=audio_hidden,
            hidden=hidden,
            layers=layers,
            heads=heads,
            attention_window=attention_window,
            dropout=dropout,
            coder_hidden=coder_hidden,
            coder_blocks=coder_blocks,
            prior_init_spread=prior_init_spread,
        )
        self.features = exp_dim
        self.register_buffer("intensity_weight", torch.tensor(levels))
        # lag-1 correlation per latent dim of the posterior's codes around the prior (EMA over
        # training): the time structure of the sampling noise
        self.register_buffer("noise_rho", torch.zeros(latent_dim))
        self.register_buffer("noise_rho_steps", torch.tensor(0))
        # from the dataset card, saved with the checkpoint (see CoefficientFlow)
        self.register_buffer("coef_mean", torch.zeros(exp_dim))
        self.register_buffer("coef_std", torch.ones(exp_dim))
        self.register_buffer("jaw_index", torch.tensor(-1 if jaw_dim is None else jaw_dim))
        self.register_buffer("mel_columns", torch.tensor(0))
        self.val_diversity = SampleDiversity()
        self.val_lipsync = LipSyncCorrelation()
        self.val_lipsync_truth = LipSyncCorrelation()
        self.val_emotion_accuracy = MeanMetric()
        self.val_eppl = EPPL()
        self.val_epdv = EPDV()
        self._classifier: Any = None
        self._embeddings: list[tuple[Tensor, Tensor]] = []
        self._strip_mel: Tensor | None = None

    # -- data ------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        card = check_module_against_data(self)
        if card is not None:
            self.read_card(card)
            record_mel_columns(self, card, self.trainer.datamodule, "GMEG")
        path = self.hparams.emotion_classifier
        if path and not Path(path).is_file():  # fail now, not after the first training epoch
            raise FileNotFoundError(
                f"emotion_classifier={path!r} does not exist: train one with "
                "`flowvq fit --config configs/tiny/emotion_classifier.yaml` or set it to null"
            )

    def read_card(self, card: DatasetCard) -> None:
        """Keep the card's normalisation and jaw dim (setup calls this; call it to use the model
        outside a Trainer)."""
        if self.hparams.jaw_dim is not None:
            if not 0 <= self.hparams.jaw_dim < card.exp_dim:
                raise ValueError(f"jaw_dim={self.hparams.jaw_dim} is not an expression dim of {card.name!r}")
            self.jaw_index.fill_(self.hparams.jaw_dim)
        elif "jaw_open" in card.exp_names:
            self.jaw_index.fill_(card.exp_names.index("jaw_open"))
        else:
            self.jaw_index.fill_(-1)
            rank_zero_warn(
                f"the expression dims of {card.name!r} are not named, so no dim is known to open the jaw: "
                "lip-sync of samples is not scored. Set model.init_args.jaw_dim to score it"
            )
        if card.stats is not None:
            self.coef_mean.copy_(torch.tensor(card.stats.exp_mean))
            self.coef_std.copy_(torch.tensor(card.stats.exp_std))

    # The interface the long-sequence helpers (flowvq.pipeline.flow_samples, benchmarks/
    # flow_long_sequence.py) use for the coefficient flows: GMEG models exp in normalised units.
    def select(self, batch: dict[str, Any]) -> tuple[Tensor, None]:
        """The modelled coefficients of a batch: ``(exp [B, W, E], None)`` (no history)."""
        return batch["exp"], None

    def from_model_units(self, x: Tensor) -> Tensor:
        return x

    def to_model_units(self, x: Tensor) -> Tensor:
        return x

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalised coefficients to the dataset's units (statistics saved from its card)."""
        return x * self.coef_std.to(x.device) + self.coef_mean.to(x.device)

    # -- emotion weights -------------------------------------------------------------------

    def _index(self, emotion: str | int) -> int:
        if isinstance(emotion, (numbers.Integral, torch.Tensor)) and not isinstance(emotion, bool):
            index = int(emotion)
            if not 0 <= index < self.num_emotions:
                raise ValueError(
                    f"emotion index {index} is out of range: expected 0..{self.num_emotions - 1} "
                    f"({', '.join(self.emotion_names)})"
                )
            return index
        key = str(emotion).strip().lower()
        if key not in self.emotion_names:
            raise ValueError(f"unknown emotion {emotion!r}: expected one of {', '.join(self.emotion_names)}")
        return self.emotion_names.index(key)

    def emotion_weights(
        self, emotion: str | int | None = None, intensity: int | None = None, weights: EmotionWeights | None = None
    ) -> Tensor:
        """The point of the emotion simplex ``[C]`` that an emotion (+ intensity) or a weight
        mapping names.

        Arguments:
            emotion: name or index; ``intensity`` (0..levels-1) moves weight to neutral as in
                training (None: the emotion's component, the strongest level).
            weights: ``{"happy": 0.7, "surprised": 0.3}`` or C numbers. Negative weights and
                unknown names are refused; weights that do not sum to one are normalised with a
                warning.
        """
        if weights is not None:
            if emotion is not None or intensity is not None:
                raise ValueError(
                    "give either emotion (+ intensity) or emotion_weights, not both: put the neutral share "
                    "of a weaker intensity into emotion_weights"
                )
            return self._weights_vector(weights)
        if emotion is None:
            raise ValueError(f"name an emotion ({', '.join(self.emotion_names)}) or give emotion_weights")
        index = self._index(emotion)
        w = torch.zeros(self.num_emotions)
        a = 1.0
        if intensity is not None:
            levels = len(self.intensity_weight)
            if not 0 <= int(intensity) < levels:
                raise ValueError(f"intensity must be a level in 0..{levels - 1}, got {intensity}")
            a = float(self.intensity_weight[int(intensity)])
        w[index] += a
        w[self.neutral] += 1.0 - a
        return w

    def _weights_vector(self, weights: EmotionWeights) -> Tensor:
        if isinstance(weights, Mapping):
            w = torch.zeros(self.num_emotions, dtype=torch.float64)
            for name, value in weights.items():
                w[self._index(name)] += float(value)
        else:
            w = torch.as_tensor(weights, dtype=torch.float64).flatten().cpu()
            if w.numel() != self.num_emotions:
                raise ValueError(
                    f"emotion_weights must have one weight per emotion ({self.num_emotions}: "
                    f"{', '.join(self.emotion_names)}), got {w.numel()}"
                )
        named = dict(zip(self.emotion_names, w.tolist()))
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(
                f"emotion_weights must be finite and >= 0 (a point of the emotion simplex), got {named}; "
                f"valid names: {', '.join(self.emotion_names)}"
            )
        total = float(w.sum())
        if total <= 0:
            raise ValueError(
                f"emotion_weights sum to 0: give a positive weight to at least one of {self.emotion_names}"
            )
        if abs(total - 1.0) > 1e-4:
            warnings.warn(
                f"emotion_weights sum to {total:.4g}, not 1: normalised to {{"
                + ", ".join(f"{k}: {v / total:.3g}" for k, v in named.items() if v)
                + "}",
                UserWarning,
                stacklevel=3,
            )
            w = w / total
        return w.float()

    def training_weights(self, emotion: Tensor, intensity: Tensor) -> Tensor:
        """Emotion weights ``[B, C]`` for training windows (module docstring: our blend scheme)."""
        b, c = emotion.shape[0], self.num_emotions
        device = emotion.device
        levels = self.intensity_weight.to(device)
        level = intensity.clamp(0, len(levels) - 1)
        a = levels[level]
        jitter = self.hparams.weight_jitter
        if jitter > 0 and self.training:
            drawn = a + jitter * (2 * torch.rand(b, device=device) - 1)
            a = torch.where(torch.rand(b, device=device) < 0.5, a, drawn).clamp(0.0, 1.0)
        known = emotion >= 0
        target = emotion.clamp(min=0)
        w = torch.zeros(b, c, device=device)
        w[torch.arange(b, device=device), target] += a
        w[:, self.neutral] += 1 - a
        # neutral clips are neutral whatever their level; unknown emotion: uniform weights
        w = torch.where((target == self.neutral)[:, None], torch.nn.functional.one_hot(target, c).float(), w)
        return torch.where(known[:, None], w, torch.full_like(w, 1.0 / c))

    # -- training --------------------------------------------------------------------------

    def _kl_weight(self) -> float:
        warmup = self.hparams.kl_warmup_steps
        scale = min(1.0, (self.global_step + 1) / warmup) if warmup and self.training else 1.0
        return self.hparams.kl_weight * scale

    def _loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        weights = self.training_weights(batch["emotion"], batch["intensity"])
        return self.net.loss(batch["exp"].float(), batch["mel"].float(), weights, batch.get("mask"), self._kl_weight())

    @torch.no_grad()
    def _track_noise_correlation(self, out: dict[str, Tensor], mask: Tensor | None) -> None:
        r = (out["z"] - out["prior_loc"]) * torch.exp(-out["prior_log_scale"])  # (B, T, Z)
        valid = torch.ones(r.shape[:2], dtype=torch.bool, device=r.device) if mask is None else mask.bool()
        r = r * valid.unsqueeze(-1)
        pair = (valid[:, 1:] & valid[:, :-1]).unsqueeze(-1)
        numerator = (r[:, 1:] * r[:, :-1] * pair).sum((0, 1))
        denominator = (r**2 * valid.unsqueeze(-1)).sum((0, 1)).clamp(min=1e-6)
        rho = (numerator / denominator).clamp(0.0, 0.99).float()
        momentum = 0.0 if int(self.noise_rho_steps) == 0 else 0.98
        self.noise_rho.mul_(momentum).add_((1 - momentum) * rho)
        self.noise_rho_steps.add_(1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if batch["mel"].shape[0] == 0:  # short_clips="skip" can empty a batch
            return None
        out = self._loss(batch)
        self._track_noise_correlation(out, batch.get("mask"))
        size = batch["mel"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=size)
        self.log_dict({"train/kl": out["kl"], "train/mse": out["mse"]}, batch_size=size)
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["mel"].shape[0] == 0:
            return
        size = batch["mel"].shape[0]
        out = self._loss(batch)
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=size, sync_dist=True)
        self.log_dict({"val/kl": out["kl"], "val/mse": out["mse"]}, batch_size=size, sync_dist=True)
        if batch_idx < self.hparams.embedding_batches:
            z = self.net.encode(batch["exp"].float(), batch["mel"].float(), batch.get("mask"))
            m = batch["mask"].unsqueeze(-1).to(z) if "mask" in batch else torch.ones_like(z[..., :1])
            self._embeddings.append((((z * m).sum(1) / m.sum(1).clamp(min=1)).cpu(), batch["emotion"].cpu()))
        if batch_idx < self.hparams.val_sample_batches:
            self._score_samples(batch)
        if batch_idx == 0:
            self._score_interpolation(batch)
            self._strip_mel = batch["mel"][0][batch["mask"][0].bool()].float().cpu() if "mask" in batch else None

    def _score_samples(self, batch: dict[str, Any]) -> None:
        n = max(int(self.hparams.val_samples), 2)
        b = batch["exp"].shape[0]
        weights = self.training_weights(batch["emotion"], batch["intensity"]).repeat_interleave(n, 0)
        mel = repeat(batch["mel"].float(), "b t c m -> (b n) t c m", n=n)
        mask = batch["mask"].bool() if "mask" in batch else torch.ones(batch["exp"].shape[:2], dtype=torch.bool)
        with torch.autocast(self.device.type, enabled=False):
            z = self.net.draw(mel, weights, self.hparams.val_temperature, self.noise_rho, mask.repeat_interleave(n, 0))
            samples = self._clip(self.net.decode(z, mask.repeat_interleave(n, 0)))
        samples = rearrange(samples, "(b n) t e -> b n t e", n=n)
        truth = batch["exp"].float()
        self.val_diversity.update(samples, truth, mask)
        jaw = int(self.jaw_index)
        if jaw >= 0:
            self.val_lipsync.update(samples[..., jaw], batch["energy"], mask)
            self.val_lipsync_truth.update(truth[..., jaw], batch["energy"], mask)
        classifier = self._load_classifier()
        if classifier is not None:
            probs = classifier.predict_proba(samples.flatten(0, 1), mask=mask.repeat_interleave(n, 0))
            labels = batch["emotion"].repeat_interleave(n).to(probs.device)
            known = labels >= 0
            if known.any():
                self.val_emotion_accuracy.update((probs.argmax(-1) == labels)[known].float())
        del b

    def _score_interpolation(self, batch: dict[str, Any]) -> None:
        """EPPL / EPDV of neutral -> happy and sad -> happy on the batch's first window."""
        classifier = self._load_classifier()
        if classifier is None:
            return
        mask = batch["mask"][0].bool() if "mask" in batch else torch.ones(batch["mel"].shape[1], dtype=torch.bool)
        mel = batch["mel"][0][mask].float()
        steps = self.hparams.interpolation_steps
        for source, target in (("neutral", "happy"), ("sad", "happy")):
            path = self.interpolate(mel, source, target, steps=steps, seed=0, temperature=self.hparams.val_temperature)
            embedded = path_embeddings(classifier, path)
            self.val_eppl.update(embedded)
            self.val_epdv.update(embedded)

    def _load_classifier(self) -> Any:
        path = self.hparams.emotion_classifier
        if not path:
            return None
        if self._classifier is None:
            from flowvq.lightning_modules.emotion_classifier import load_emotion_classifier

            classifier = load_emotion_classifier(path, self.features, map_location=self.device)
            # kept out of the module tree: not saved in this model's checkpoints
            object.__setattr__(self, "_classifier", classifier)
        return self._classifier

    def on_validation_epoch_end(self) -> None:
        if self.val_diversity.frames > 0 or self.trainer.world_size > 1:
            scores = self.val_diversity.compute()
            self.log_dict({f"val/{k}": v for k, v in scores.items()})
            if int(self.jaw_index) >= 0:
                self.log("val/lipsync_samples", self.val_lipsync.compute())
                self.log("val/lipsync_truth", self.val_lipsync_truth.compute())
        if self.hparams.emotion_classifier:
            self.log("val/emotion_accuracy_samples", self.val_emotion_accuracy.compute())
            self.log("val/eppl", self.val_eppl.compute())
            self.log("val/epdv", self.val_epdv.compute())
        for metric in (
            self.val_diversity,
            self.val_lipsync,
            self.val_lipsync_truth,
            self.val_emotion_accuracy,
            self.val_eppl,
            self.val_epdv,
        ):
            metric.reset()
        writer = tensorboard(self)
        if writer is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            if self._strip_mel is not None and len(self._strip_mel) > 1:
                writer.add_figure("val/blend_strips", self._strip_figure(self._strip_mel), self.global_step)
            if self._embeddings:
                z = torch.cat([e[0] for e in self._embeddings]).float()
                labels = torch.cat([e[1] for e in self._embeddings]).tolist()
                names = [self.emotion_names[i] if 0 <= i < self.num_emotions else "unknown" for i in labels]
                if len(z) >= 2:
                    writer.add_embedding(z, metadata=names, global_step=self.global_step, tag="val/z_gm")
        self._embeddings = []
        self._strip_mel = None

    def _strip_figure(self, mel: Tensor) -> Any:
        """One strip per blend of :data:`VAL_BLENDS`: 3 samples of a few dims over the window."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        blends = [b for b in VAL_BLENDS if all(k in self.emotion_names for k in b)]
        jaw = max(int(self.jaw_index), 0)
        dims = [jaw] + [d for d in range(self.features) if d != jaw][:3]
        names = self._dim_names()
        figure, axes = plt.subplots(len(blends), len(dims), figsize=(2.8 * len(dims), 1.7 * len(blends)), squeeze=False)
        for row, blend in enumerate(blends):
            samples = self.sample(mel, emotion_weights=blend, num_samples=3, seed=0).cpu()  # (3, T, E)
            label = " + ".join(f"{v:g} {k}" for k, v in blend.items())
            for col, d in enumerate(dims):
                axis = axes[row][col]
                for s in samples[..., d].numpy():
                    axis.plot(s, lw=0.8)
                axis.set_ylim(-4, 4)
                axis.set_title(f"{label}: {names[d]}", fontsize=7)
                axis.tick_params(labelsize=6)
        figure.tight_layout()
        return figure

    def _dim_names(self) -> list[str]:
        card = getattr(getattr(self._trainer, "datamodule", None), "card", None) if self._trainer else None
        if card is not None and len(card.exp_names) == self.features:
            return list(card.exp_names)
        return [f"exp[{d}]" for d in range(self.features)]

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["mel"].shape[0] == 0:
            return
        size = batch["mel"].shape[0]
        out = self._loss(batch)
        self.log_dict({"test/loss": out["loss"], "test/mse": out["mse"]}, batch_size=size, sync_dist=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """``val_samples`` sequences per window (the window's emotion and intensity), in the
        dataset's units, beside the ground truth: ``<clip_id>_f<start>.npz`` with ``samples
        [N, W, E]``, ``z_gm [N, W, Z]``, ``truth [W, E]``, ``mask [W]``, ``emotion``, ``names``."""
        if batch["mel"].shape[0] == 0:
            return []
        n = max(int(self.hparams.val_samples), 1)
        weights = self.training_weights(batch["emotion"], batch["intensity"]).repeat_interleave(n, 0)
        mel = repeat(batch["mel"].float(), "b t c m -> (b n) t c m", n=n)
        mask = batch["mask"].bool().repeat_interleave(n, 0)
        with torch.autocast(self.device.type, enabled=False):
            z = self.net.draw(mel, weights, self.hparams.val_temperature, self.noise_rho, mask)
            samples = self.denormalize(self._clip(self.net.decode(z, mask)))
        samples = rearrange(samples, "(b n) t e -> b n t e", n=n)
        z = rearrange(z, "(b n) t z -> b n t z", n=n)
        truth = self.denormalize(batch["exp"].float())
        names = self._dim_names()
        items = []
        for i, clip in enumerate(batch["clip_id"]):
            label = int(batch["emotion"][i])
            items.append(
                {
                    "name": f"{clip}_f{int(batch['start'][i]):05d}",
                    "samples": samples[i].cpu().numpy(),
                    "z_gm": z[i].cpu().numpy(),
                    "truth": truth[i].cpu().numpy(),
                    "mask": batch["mask"][i].cpu().numpy(),
                    "emotion": self.emotion_names[label] if 0 <= label < self.num_emotions else "",
                    "names": names,
                }
            )
        return items

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": optimizer, "lr_scheduler": cosine_schedule(self, optimizer, final_fraction=0.05)}

    # -- the Python API --------------------------------------------------------------------

    def _clip(self, x: Tensor) -> Tensor:
        bound = self.hparams.output_clip
        return x if bound is None else x.clamp(-bound, bound)

    def _check_mel(self, mel: Tensor) -> Tensor:
        """``[T, C, M]`` or ``[B, T, C, M]`` -> ``[B, T, C, M]``, refusing another window shape."""
        batch = mel.unsqueeze(0) if mel.dim() == 3 else mel
        columns = int(self.mel_columns)
        if batch.dim() != 4 or (columns and batch.shape[2] != columns) or batch.shape[3] != self.hparams.mel_bins:
            raise ValueError(
                f"mel must be [T, {columns or 'C'}, {self.hparams.mel_bins}] (or [B, T, ...]) mel windows as in "
                f"training, got {tuple(mel.shape)}: take them from a CoefficientDataModule with the training's "
                "audio_context"
            )
        return batch.to(self.device, torch.float32)

    def _weights_rows(
        self,
        b: int,
        n: int,
        emotion: str | int | None,
        intensity: int | None,
        emotion_weights: EmotionWeights | None,
        generator: torch.Generator,
    ) -> Tensor:
        if emotion is None and emotion_weights is None:  # label-free: one emotion per sample
            drawn = torch.randint(0, self.num_emotions, (b * n,), generator=generator)
            return torch.stack([self.emotion_weights(int(k), intensity) for k in drawn]).to(self.device)
        w = self.emotion_weights(emotion, intensity, emotion_weights)
        return w.to(self.device).expand(b * n, -1)

    @torch.no_grad()
    def latent(
        self,
        mel: Tensor,
        emotion: str | int | None = None,
        intensity: int | None = None,
        emotion_weights: EmotionWeights | None = None,
        num_samples: int = 1,
        temperature: float = 1.0,
        seed: int | None = 0,
        exp: Tensor | None = None,
    ) -> Tensor:
        """The per-frame latent ``z_gm`` the head generator is conditioned on.

        Shape: ``[N, T, latent_dim]`` for ``mel [T, C, M]`` (``[B, N, T, latent_dim]`` for
        ``[B, T, C, M]``); ``latent_dim`` is ``hparams.latent_dim`` (16 in the shipped configs,
        32 at paper scale), one vector per video frame at the data's 25 fps. ``sample`` decodes
        exactly these latents: ``sample(...) == decode(latent(...))`` for the same arguments.

        Arguments:
            mel: normalised mel windows of a clip (the DataModule's ``mel``).
            emotion, intensity, emotion_weights: as in :meth:`sample`.
            num_samples, temperature, seed: as in :meth:`sample`.
            exp: ``[T, E]`` (or ``[B, T, E]``) normalised coefficients of a real clip: return
                its posterior mean instead (``[1, T, Z]``), the latent of real frames to train
                the head generator on; emotion arguments are then ignored.
        """
        batch = self._check_mel(mel)
        single = mel.dim() == 3
        was_training = self.training
        self.eval()
        try:
            with torch.autocast(self.device.type, enabled=False):
                if exp is not None:
                    x = exp.unsqueeze(0) if exp.dim() == 2 else exp
                    if x.shape[-1] != self.features or x.shape[:2] != batch.shape[:2]:
                        raise ValueError(
                            f"exp must be [T, {self.features}] with the mel's T={batch.shape[1]} frames, got "
                            f"{tuple(exp.shape)}"
                        )
                    z = self.net.encode(x.to(self.device, torch.float32), batch).unsqueeze(1)  # (B, 1, T, Z)
                else:
                    z = self._draw(batch, emotion, intensity, emotion_weights, num_samples, temperature, seed)
        finally:
            self.train(was_training)
        return z[0] if single else z

    def _draw(
        self,
        batch: Tensor,
        emotion: str | int | None,
        intensity: int | None,
        emotion_weights: EmotionWeights | None,
        num_samples: int,
        temperature: float,
        seed: int | None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """``z_gm [B, N, T, Z]``; ``weights [N, C]`` overrides the emotion arguments (one row per sample)."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        b, t = batch.shape[:2]
        generator = torch.Generator()
        generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**62))
        if weights is None:
            rows = self._weights_rows(b, num_samples, emotion, intensity, emotion_weights, generator)
        else:
            rows = weights.to(self.device).repeat(b, 1)
        noise = _noise(b * num_samples, t, self.noise_rho.cpu(), generator).to(self.device)
        mel = repeat(batch, "b t c m -> (b n) t c m", n=num_samples)
        z = self.net.draw(mel, rows, temperature, noise=noise)
        return rearrange(z, "(b n) t z -> b n t z", b=b)

    @torch.no_grad()
    def decode(self, z: Tensor, denormalize: bool = False) -> Tensor:
        """Expression coefficients ``[..., T, E]`` of latents ``z_gm [..., T, Z]``."""
        if z.shape[-1] != self.hparams.latent_dim:
            raise ValueError(f"z_gm must end in latent_dim={self.hparams.latent_dim}, got {tuple(z.shape)}")
        lead = z.shape[:-2]
        was_training = self.training
        self.eval()
        with torch.autocast(self.device.type, enabled=False):
            x = self._clip(self.net.decode(z.reshape(-1, *z.shape[-2:]).to(self.device, torch.float32)))
        self.train(was_training)
        if denormalize:
            x = self.denormalize(x)
        return x.reshape(*lead, *x.shape[-2:])

    @torch.no_grad()
    def sample(
        self,
        mel: Tensor,
        emotion: str | int | None = None,
        intensity: int | None = None,
        emotion_weights: EmotionWeights | None = None,
        num_samples: int = 8,
        temperature: float = 1.0,
        seed: int | None = 0,
        denormalize: bool = False,
    ) -> Tensor:
        """Sample expression sequences for the audio of a clip.

        Arguments:
            mel: ``[T, C, M]`` normalised mel windows of a whole clip (the DataModule's ``mel``),
                or ``[B, T, C, M]``; any length (60 s is one pass).
            emotion: name (``"happy"``) or index; None and no ``emotion_weights``: one emotion
                drawn per sample (label-free).
            intensity: level 0..levels-1 (MEAD level_1..3): the emotion's weight against neutral
                is ``intensity_weights[level]``; None: the emotion's own component (strongest).
            emotion_weights: a blend, ``{"happy": 0.7, "surprised": 0.3}`` or C numbers (instead
                of ``emotion``); normalised with a warning when it does not sum to one.
            num_samples: N sequences per clip.
            temperature: spread of the latent draws (0: the weighted component's location).
            seed: seeds the draws (the same seed gives the same noise for any emotion).
            denormalize: return coefficients in the dataset's units.

        Returns:
            ``[N, T, E]`` (``[B, N, T, E]`` for a batch of clips).
        """
        z = self.latent(mel, emotion, intensity, emotion_weights, num_samples, temperature, seed)
        return self.decode(z, denormalize)

    @torch.no_grad()
    def interpolate(
        self,
        mel: Tensor,
        source: str | EmotionWeights,
        target: str | EmotionWeights,
        steps: int = 9,
        seed: int | None = 0,
        temperature: float = 1.0,
        denormalize: bool = False,
    ) -> Tensor:
        """Expression sequences along the straight path of emotion weights from ``source`` to
        ``target`` (names or weight mappings), ``steps`` evenly spaced points, all with the
        same noise (so only the emotion changes): ``[steps, T, E]``."""
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        batch = self._check_mel(mel)
        if batch.shape[0] != 1:
            raise ValueError(f"interpolate takes one clip's mel [T, C, M], got {tuple(mel.shape)}")
        a = self.emotion_weights(source) if isinstance(source, (str, int)) else self._weights_vector(source)
        b = self.emotion_weights(target) if isinstance(target, (str, int)) else self._weights_vector(target)
        alpha = torch.linspace(0, 1, steps)[:, None]
        weights = (1 - alpha) * a + alpha * b  # (S, C)
        was_training = self.training
        self.eval()
        with torch.autocast(self.device.type, enabled=False):
            generator = torch.Generator()
            generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**62))
            noise = _noise(1, batch.shape[1], self.noise_rho.cpu(), generator).to(self.device)
            mel = batch.expand(steps, -1, -1, -1)
            z = self.net.draw(mel, weights.to(self.device), temperature, noise=noise.expand(steps, -1, -1))
        self.train(was_training)
        return self.decode(z, denormalize)


def _noise(rows: int, frames: int, rho: Tensor, generator: torch.Generator) -> Tensor:
    from flowvq.nn.gmeg import temporal_noise

    return temporal_noise((rows, frames, len(rho)), rho.float(), generator)
