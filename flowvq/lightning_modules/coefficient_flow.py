"""ExpFlow and PoseFlow (FlowVQTalker's flow-based coefficient generator) as one LightningModule.

ExpFlow and PoseFlow are configurations of :class:`CoefficientFlow`:

- ExpFlow: ``field="exp"``, ``prior="student_t_mixture"`` (one component per emotion),
  data dropout on; sampled by emotion, intensity and temperature.
- PoseFlow: ``field="pose"`` (+ ``extra_exp_names=["blink"]`` where the data has a blink
  dimension), ``prior="gaussian"``; pretrained on emotion-free shards (LRS3, or SynthTalk at
  CPU scale) and fine-tuned with ``init_from`` pointing at the pretrained checkpoint.
- GMTalker's motion flow (NFMG): ``field="pose"``, ``extra_fields=["blink", "gaze"]`` (the
  record's optional fields), ``prior="gaussian"``: head pose, blinks and gaze from a Gaussian
  prior through the same conditional flow, conditioned on the audio and the previous motion,
  pretrained on LRS3 and fine-tuned like PoseFlow (``configs/motion_flow*.yaml``). The paper
  describes no architecture the flow lacks, so it is a configuration, not a class.

Training maximises the teacher-forced log-likelihood of the DataModule's windows (reported as
nats per dimension). At each validation it logs the NLL, and, on a few batches, samples N
sequences per window to log the diversity, the lip-sync correlation of samples and of the
ground truth (ExpFlow), the emotion accuracy of samples (when an emotion classifier
checkpoint is configured), a figure of sampled trajectories against the ground truth, and the
latents per emotion (TensorBoard projector).

References:
    FlowVQTalker, https://arxiv.org/abs/2403.06375.
    MoGlow, https://arxiv.org/abs/1905.06598.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange, repeat
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from flowvq.data.card import DatasetCard, DatasetError, require_fields
from flowvq.data.schema import EMOTIONS, GAZE_NAMES, OPTIONAL_FIELDS, POSE_NAMES, emotion_index
from flowvq.lightning_modules.common import check_module_against_data, record_mel_columns, tensorboard
from flowvq.lightning_modules.schedules import cosine_schedule
from flowvq.metrics.diversity import SampleDiversity
from flowvq.metrics.lipsync import LipSyncCorrelation
from flowvq.nn.flows import CoefficientFlowNet

__all__ = ["CoefficientFlow", "LatentCode"]

#: Dims each optional record field adds to the modelled vector (blink [T], gaze [T, 2]).
FIELD_WIDTHS: dict[str, int] = {
    name: 1 if len(spec.shape) == 1 else int(spec.shape[-1]) for name, spec in OPTIONAL_FIELDS.items()
}


@dataclass
class LatentCode:
    """A reference's place in the latent space (:meth:`CoefficientFlow.encode`).

    Attributes:
        z: ``[D]`` the mean latent of the reference frames: the code generation starts from.
        frames: ``[T, D]`` the latent of every reference frame.
        posterior: ``[C]`` the prior components' responsibilities for the reference.
        component: the most responsible component (its scale and tails are used to sample).
    """

    z: Tensor
    frames: Tensor
    posterior: Tensor
    component: int

    @property
    def emotion(self) -> str:
        return EMOTIONS[self.component] if self.component < len(EMOTIONS) else str(self.component)


class CoefficientFlow(LightningModule):
    """Conditional normalizing flow over per-frame coefficients (ExpFlow / PoseFlow).

    Arguments:
        field: ``"exp"`` (ExpFlow) or ``"pose"`` (PoseFlow).
        extra_exp_names: expression dims appended to the pose (PoseFlow's blink), by their
            names in the dataset card's ``exp_names``; resolved when training starts.
        extra_fields: optional record fields appended after those (the motion flow's
            ``["blink", "gaze"]``: 1 and 2 dims, see :mod:`flowvq.data.schema`); a dataset
            without them (Deep3D imports, SynthTalk written before gaze) is refused, naming
            the field.
        exp_dim, pose_dim, mel_bins, mel_per_frame, num_emotions: filled from the dataset
            card by the CLI.
        prior: ``"student_t_mixture"``, ``"gaussian_mixture"`` or ``"gaussian"``.
        neutral_emotion: the component intensity interpolates from (None: no intensity).
        prev_frames: K previous frames in the context (the DataModule's ``prev_frames`` >= K).
        audio_features, audio_hidden, recurrent, recurrent_hidden: audio code size, audio
            encoder width, and the recurrent network.
        flow_layers, coupling_hidden, coupling_blocks, linear: the per-frame flow.
        coupling: ``"affine"`` (the papers' Glow coupling) or ``"spline"`` (rational-quadratic
            splines: a frame's conditional can be multimodal, e.g. blink onsets; see
            :class:`~flowvq.nn.flows.ConditionalFrameFlow`).
        data_dropout, data_dropout_mode: previous-frame dropout in training (see
            :mod:`flowvq.nn.flows`).
        intensity_levels: intensity levels in the data (MEAD: 3).
        prior_init_spread: std of the random initial component locations.
        output_clip: bound of generated frames in normalised units (train-set stds).
        history_noise: std of the noise on the previous frames in training.
        recurrent_window: frames each recurrent state is computed over, in training and
            sampling alike (None: since the window's or the clip's start; see
            :mod:`flowvq.nn.flows`).
        self_history: fraction of training windows conditioned on the network's own
            free-running reconstruction instead of the ground truth's history (scheduled
            sampling; see :mod:`flowvq.nn.flows`); ``self_history_spread`` the std of the
            noise on the latents it decodes.
        jaw_dim: the expression dim that opens the jaw, for lip-sync scores (ExpFlow); None:
            the card's ``jaw_open`` dim. Data whose dims are not named (PCA coefficients) has
            none: lip-sync is then not scored, with a warning, until this is set.
        lr, weight_decay: AdamW, cosine decay to 5% over the run (``max_steps`` or ``max_epochs``).
        init_from: a checkpoint whose network weights start this training (PoseFlow:
            pretrained on LRS3, fine-tuned on MEAD).
        emotion_classifier: an ``EmotionClassifier`` checkpoint scoring samples at validation.
        val_samples: N samples per window at validation; ``val_sample_batches`` batches get
            them; ``val_temperature`` their temperature; ``embedding_batches`` batches give
            latents to the projector.
        val_long_frames: at each validation, the validation windows of one emotion are joined
            to this many frames and sampled whole (2 samples), as a user samples long speech;
            the fraction of values beyond 5 std (``val/long_tail_fraction``), at the clamp
            (``val/long_clamp_fraction``), the growth of the distance from the ground truth's
            mean from the first to the last 32 frames (``val/long_drift_growth``) and a figure
            of the sequences (``val/long_samples``) are logged. 0: off.
    """

    def __init__(
        self,
        field: Literal["exp", "pose"] = "exp",
        extra_exp_names: list[str] | None = None,
        extra_fields: list[str] | None = None,
        exp_dim: int | None = None,
        pose_dim: int | None = None,
        mel_bins: int | None = None,
        mel_per_frame: int | None = None,
        num_emotions: int | None = None,
        prior: Literal["student_t_mixture", "gaussian_mixture", "gaussian"] = "student_t_mixture",
        neutral_emotion: str | None = "neutral",
        prev_frames: int = 4,
        audio_features: int = 64,
        audio_hidden: int = 64,
        recurrent: Literal["gru", "lstm"] = "gru",
        recurrent_hidden: int = 128,
        flow_layers: int = 4,
        coupling_hidden: int = 128,
        coupling_blocks: int = 2,
        linear: Literal["lu", "permutation", "reverse"] = "lu",
        coupling: Literal["affine", "spline"] = "affine",
        data_dropout: float = 0.0,
        data_dropout_mode: Literal["frame", "sequence"] = "frame",
        intensity_levels: int = 3,
        prior_init_spread: float = 1.0,
        output_clip: float | None = 10.0,
        history_noise: float = 0.0,
        recurrent_window: int | None = None,
        self_history: float = 0.0,
        self_history_spread: float = 0.5,
        jaw_dim: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        init_from: str | None = None,
        emotion_classifier: str | None = None,
        val_samples: int = 4,
        val_sample_batches: int = 2,
        val_temperature: float = 0.8,
        embedding_batches: int = 8,
        val_long_frames: int = 250,
    ) -> None:
        super().__init__()
        if field not in ("exp", "pose"):
            raise ValueError(f"field must be 'exp' (ExpFlow) or 'pose' (PoseFlow), got {field!r}")
        extra = list(extra_exp_names or [])
        if field == "exp" and extra:
            raise ValueError("extra_exp_names only applies to field='pose' (e.g. PoseFlow's blink)")
        fields = list(extra_fields or [])
        if field == "exp" and fields:
            raise ValueError("extra_fields only applies to field='pose' (e.g. the motion flow's blink and gaze)")
        unknown = [name for name in fields if name not in FIELD_WIDTHS]
        if unknown or len(set(fields)) != len(fields):
            raise ValueError(
                f"extra_fields={fields}: expected distinct names among the record's optional fields {list(FIELD_WIDTHS)}"
            )
        size = exp_dim if field == "exp" else pose_dim
        if size is None or mel_bins is None:
            raise ValueError(
                f"CoefficientFlow(field={field!r}) needs {'exp_dim' if field == 'exp' else 'pose_dim'} and "
                "mel_bins: the CLI fills them from the dataset card (data.init_args.root); in Python pass "
                "them, e.g. **datamodule.dims"
            )
        self.save_hyperparameters()
        self.num_emotions = num_emotions or len(EMOTIONS)
        components = 1 if prior == "gaussian" else self.num_emotions
        anchor = None if neutral_emotion is None or prior == "gaussian" else emotion_index(neutral_emotion)
        self.features = size + len(extra) + sum(FIELD_WIDTHS[name] for name in fields)
        self.net = CoefficientFlowNet(
            self.features,
            mel_bins,
            num_components=components,
            prior=prior,
            anchor=anchor,
            prev_frames=prev_frames,
            audio_features=audio_features,
            audio_hidden=audio_hidden,
            recurrent=recurrent,
            recurrent_hidden=recurrent_hidden,
            flow_layers=flow_layers,
            coupling_hidden=coupling_hidden,
            coupling_blocks=coupling_blocks,
            linear=linear,
            data_dropout=data_dropout,
            data_dropout_mode=data_dropout_mode,
            intensity_levels=intensity_levels,
            prior_init_spread=prior_init_spread,
            output_clip=output_clip,
            history_noise=history_noise,
            recurrent_window=recurrent_window,
            self_history=self_history,
            self_history_spread=self_history_spread,
            coupling=coupling,
        )
        # Filled from the dataset card in setup() and saved with the checkpoint, so a loaded
        # model can pick its blink dims and un-normalise its samples without the dataset.
        self.register_buffer("extra_index", torch.full((len(extra),), -1, dtype=torch.long))
        self.register_buffer("coef_mean", torch.zeros(self.features))
        self.register_buffer("coef_std", torch.ones(self.features))
        self.register_buffer("jaw_index", torch.tensor(-1 if jaw_dim is None else jaw_dim))  # -1: unknown
        # columns of the mel window each frame was trained with ((2 * audio_context + 1) * K);
        # 0 until the DataModule sets it. encode() and sample() use and check it.
        self.register_buffer("mel_columns", torch.tensor(0))
        # The network's own units, as an affine map of the DataModule's normalised units:
        # identity, except after init_from a checkpoint normalised with other statistics
        # (PoseFlow pretrained on LRS3, fine-tuned on MEAD), whose units the network keeps.
        self.register_buffer("unit_scale", torch.ones(self.features))
        self.register_buffer("unit_shift", torch.zeros(self.features))
        self.val_diversity = SampleDiversity()
        self.val_lipsync = LipSyncCorrelation()
        self.val_lipsync_truth = LipSyncCorrelation()
        # a torchmetrics mean: reduced over DDP ranks before it is logged
        self.val_emotion_accuracy = MeanMetric()
        self._classifier: Any = None
        self._embeddings: list[tuple[Tensor, Tensor]] = []
        self._trajectories: tuple[Tensor, Tensor, Tensor] | None = None
        self._long: dict[str, Any] = {}

    # -- data ------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        card = check_module_against_data(self)
        if card is not None:
            self.read_card(card)
            datamodule = self.trainer.datamodule
            record_mel_columns(self, card, datamodule)
            have = getattr(datamodule, "prev_frames", None)
            if have is not None and have < self.hparams.prev_frames:
                raise ValueError(
                    f"the model conditions on prev_frames={self.hparams.prev_frames} previous frames, the "
                    f"DataModule gives {have}: set data.init_args.prev_frames >= {self.hparams.prev_frames}"
                )
        path = self.hparams.emotion_classifier
        if path and not Path(path).is_file():  # fail now, not after the first training epoch
            raise FileNotFoundError(
                f"emotion_classifier={path!r} does not exist: train one with "
                "`flowvq fit --config configs/tiny/emotion_classifier.yaml` or set it to null"
            )
        if stage == "fit" and self.hparams.init_from:
            self._initialise_from(self.hparams.init_from)

    def read_card(self, card: DatasetCard) -> None:
        """Resolve the blink dims and keep the normalisation of the modelled dims (setup calls this;
        call it yourself to use the model outside a Trainer)."""
        fields = list(self.hparams.get("extra_fields") or [])
        require_fields(card, fields, f"CoefficientFlow(extra_fields={fields})")
        extra = list(self.hparams.extra_exp_names or [])
        if extra:
            missing = [name for name in extra if name not in card.exp_names]
            if missing:
                raise DatasetError(
                    f"extra_exp_names {missing} are not expression dims of the dataset {card.name!r} "
                    f"(its exp_names: {card.exp_names or 'none recorded'}); remove them from the config"
                )
            self.extra_index.copy_(torch.tensor([card.exp_names.index(n) for n in extra]))
        if self.hparams.get("jaw_dim") is not None:
            if not 0 <= self.hparams.jaw_dim < card.exp_dim:
                raise ValueError(
                    f"jaw_dim={self.hparams.jaw_dim} is not an expression dim of {card.name!r} (E={card.exp_dim})"
                )
            self.jaw_index.fill_(self.hparams.jaw_dim)
        elif "jaw_open" in card.exp_names:
            self.jaw_index.fill_(card.exp_names.index("jaw_open"))
        elif self.hparams.field == "exp":
            self.jaw_index.fill_(-1)
            rank_zero_warn(
                f"the expression dims of {card.name!r} are not named, so no dim is known to open the jaw: "
                "lip-sync of samples is not scored. Set model.init_args.jaw_dim to score it"
            )
        if card.stats is not None:
            stats = card.stats
            if self.hparams.field == "exp":
                mean, std = stats.exp_mean, stats.exp_std
            else:
                index = self.extra_index.tolist()
                mean = stats.pose_mean + [stats.exp_mean[i] for i in index]
                std = stats.pose_std + [stats.exp_std[i] for i in index]
                for name in fields:
                    mean = mean + list(getattr(stats, f"{name}_mean"))
                    std = std + list(getattr(stats, f"{name}_std"))
            self.coef_mean.copy_(torch.tensor(mean))
            self.coef_std.copy_(torch.tensor(std))

    def _initialise_from(self, path: str) -> None:
        """Start from another checkpoint's network weights (pretrain -> fine-tune)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"init_from={path!r} does not exist: point it at the pretrained checkpoint")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        theirs = checkpoint.get("hyper_parameters", {})
        for key in (
            "field",
            "prior",
            "prev_frames",
            "flow_layers",
            "coupling_hidden",
            "recurrent_hidden",
            "extra_fields",
            "coupling",
        ):
            if key in theirs and theirs[key] != self.hparams[key]:
                raise ValueError(
                    f"init_from={path!r} was trained with {key}={theirs[key]!r}, this model has "
                    f"{key}={self.hparams[key]!r}: fine-tune with the pretraining's architecture"
                )
        weights = _drop_legacy_keys(
            {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}, self.net
        )
        ours = self.net.state_dict()
        wrong = {
            k: (tuple(v.shape), tuple(ours[k].shape))
            for k, v in weights.items()
            if k in ours and v.shape != ours[k].shape
        }
        if wrong:
            raise DatasetError(
                f"init_from={path!r} has other sizes than this model ({len(wrong)} tensors, e.g. "
                f"{next(iter(wrong.items()))}): it was trained on data with other dims"
            )
        self.net.load_state_dict(weights)
        self._keep_pretrained_units(checkpoint["state_dict"], path)

    def _keep_pretrained_units(self, state: dict[str, Tensor], path: str) -> None:
        """Map this data's normalisation onto the one the loaded network was trained with."""
        mean, std = state.get("coef_mean"), state.get("coef_std")
        if mean is None or std is None or mean.shape != self.coef_mean.shape:
            return
        scale = self.coef_std / std.to(self.coef_std)
        shift = (self.coef_mean - mean.to(self.coef_mean)) / std.to(self.coef_std)
        self.unit_scale.copy_(scale * state.get("unit_scale", torch.ones_like(scale)).to(scale))
        self.unit_shift.copy_(shift + state.get("unit_shift", torch.zeros_like(shift)).to(shift))
        if not (torch.allclose(scale, torch.ones_like(scale)) and torch.allclose(shift, torch.zeros_like(shift))):
            rank_zero_info(
                f"init_from={path!r} was normalised with other statistics than this data's: its network keeps "
                f"its units (per dim, scale {[round(v, 3) for v in scale.tolist()]}, shift "
                f"{[round(v, 3) for v in shift.tolist()]} from this data's normalised units)"
            )

    def to_model_units(self, x: Tensor) -> Tensor:
        """The DataModule's normalised coefficients ``[..., D]`` in the network's units."""
        return x * self.unit_scale.to(x) + self.unit_shift.to(x)

    def from_model_units(self, x: Tensor) -> Tensor:
        """The network's units back to the DataModule's normalised coefficients."""
        return (x - self.unit_shift.to(x)) / self.unit_scale.to(x)

    def select(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """The modelled coefficients of a batch in the network's units: ``(x [B, W, D], prev [B, Kp, D])``."""
        x, prev = self._select(batch)
        x = self.to_model_units(x)
        if prev is not None:
            prev = self.to_model_units(prev)
            if "prev_mask" in batch:  # frames before the clip stay zeros, as the network knows them
                prev = prev * batch["prev_mask"].unsqueeze(-1).to(prev)
        return x, prev

    def _select(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        if self.hparams.field == "exp":
            return batch["exp"], batch.get("prev_exp")
        x, prev = batch["pose"], batch.get("prev_pose")
        if len(self.extra_index):
            if (self.extra_index < 0).any():
                raise RuntimeError(
                    "extra_exp_names were never resolved against a dataset card: train through a Trainer "
                    "with a flowvq DataModule (its setup reads the card)"
                )
            x = torch.cat([x, batch["exp"][..., self.extra_index]], -1)
            if prev is not None:
                prev = torch.cat([prev, batch["prev_exp"][..., self.extra_index]], -1)
        for name in self.hparams.get("extra_fields") or []:
            if name not in batch:
                raise DatasetError(
                    f"the batch has no {name!r} (keys {sorted(batch)}): this model needs the record field {name!r}; "
                    "use a dataset whose card lists it in `fields` (re-run `flowvq synth` or `flowvq preprocess`)"
                )
            x = torch.cat([x, batch[name].reshape(*x.shape[:2], -1).to(x)], -1)
            if prev is not None:
                prev = torch.cat([prev, batch[f"prev_{name}"].reshape(*prev.shape[:2], -1).to(prev)], -1)
        return x, prev

    def _components(self, batch: dict[str, Any]) -> Tensor | None:
        return None if self.hparams.prior == "gaussian" else batch["emotion"]

    # -- training --------------------------------------------------------------------------

    def nll(self, batch: dict[str, Any]) -> Tensor:
        """Negative log-likelihood per valid frame and dimension (nats)."""
        x, prev = self.select(batch)
        lp = self.net.log_prob(
            x, batch["mel"], self._components(batch), batch.get("intensity"), prev, batch.get("prev_mask")
        )  # (B, W)
        mask = batch.get("mask")
        mask = torch.ones_like(lp, dtype=torch.bool) if mask is None else mask.bool()
        return -(lp * mask).sum() / (mask.sum().clamp(min=1) * self.features)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if batch["mel"].shape[0] == 0:  # short_clips="skip" can empty a batch
            return None
        loss = self.nll(batch)
        self.log("train/nll", loss, prog_bar=True, batch_size=batch["mel"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["mel"].shape[0] == 0:
            return
        batch_size = batch["mel"].shape[0]
        self.log("val/nll", self.nll(batch), prog_bar=True, batch_size=batch_size, sync_dist=True)
        if batch_idx < self.hparams.embedding_batches:
            self._collect_latents(batch)
        if batch_idx < self.hparams.val_sample_batches:
            self._score_samples(batch, first=batch_idx == 0)
        self._collect_long(batch)

    def _collect_long(self, batch: dict[str, Any]) -> None:
        """Gather the valid frames of windows of one emotion for the long-sequence check."""
        wanted = self.hparams.get("val_long_frames", 0)
        if not wanted or self._long.get("frames", 0) >= wanted:
            return
        x, _ = self.select(batch)
        for i in range(x.shape[0]):
            emotion = int(batch["emotion"][i])
            if self._long.setdefault("emotion", emotion) != emotion and self.hparams.prior != "gaussian":
                continue
            valid = batch["mask"][i].bool() if "mask" in batch else torch.ones(x.shape[1], dtype=torch.bool)
            self._long.setdefault("mel", []).append(batch["mel"][i][valid].float())
            self._long.setdefault("truth", []).append(x[i][valid].float())
            self._long["intensity"] = max(int(batch["intensity"][i]), 0)
            self._long["frames"] = self._long.get("frames", 0) + int(valid.sum())

    def _log_long(self) -> None:
        """Sample the joined validation windows whole and log how the samples hold up."""
        from flowvq.metrics.long_sequence import sequence_report

        long, self._long = self._long, {}
        wanted = self.hparams.get("val_long_frames", 0)
        if not wanted or self.trainer.sanity_checking:
            return
        if not long.get("frames"):
            if self.trainer.world_size > 1:  # the other ranks log: so must this one
                long = {"frames": 0}
            else:
                return
        if long["frames"]:
            mel = torch.cat(long["mel"])[:wanted]
            truth = torch.cat(long["truth"])[:wanted]
            emotion = None if self.hparams.prior == "gaussian" else long["emotion"]
            component = None if emotion is None or emotion < 0 else torch.full((2,), emotion, device=self.device)
            level = None if component is None else torch.full((2,), long["intensity"], device=self.device)
            with torch.autocast(self.device.type, enabled=False):
                samples = self.net.sample(
                    mel[None].expand(2, -1, -1, -1), component, level, self.hparams.val_temperature
                )
            report = sequence_report(samples, truth, self.hparams.output_clip)
            figures = {
                "val/long_tail_fraction": report["tail_fraction"],
                "val/long_clamp_fraction": report["clamp_fraction"],
                "val/long_drift_growth": report["drift_growth"],
            }
        else:
            figures = dict.fromkeys(("val/long_tail_fraction", "val/long_clamp_fraction", "val/long_drift_growth"), 0.0)
        self.log_dict(figures, sync_dist=True)
        writer = tensorboard(self)
        if long["frames"] and writer is not None and self.trainer.is_global_zero:
            writer.add_figure(
                "val/long_samples",
                self._trajectory_figure(
                    samples[None].cpu(), truth[None].cpu(), torch.tensor([long.get("emotion", -1)])
                ),
                self.global_step,
            )

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["mel"].shape[0] == 0:
            return
        self.log("test/nll", self.nll(batch), batch_size=batch["mel"].shape[0], sync_dist=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """``val_samples`` sequences per window, in the dataset's units, beside the ground truth.

        Each item becomes ``<clip_id>_f<start>.npz`` under the prediction folder
        (:class:`~flowvq.callbacks.PredictionWriter`): ``samples [N, W, D]``, ``truth [W, D]``,
        ``mask [W]``, the emotion sampled (the window's label; PoseFlow: none) and ``names``.
        """
        if batch["mel"].shape[0] == 0:
            return []
        x, prev = self.select(batch)
        n = max(int(self.hparams.val_samples), 1)
        component = self._components(batch)
        comp = None if component is None else component.repeat_interleave(n)
        level = batch["intensity"].repeat_interleave(n) if comp is not None else None
        prev_r = None if prev is None else prev.float().repeat_interleave(n, 0)
        prev_mask = None if "prev_mask" not in batch else batch["prev_mask"].repeat_interleave(n, 0)
        mel = repeat(batch["mel"].float(), "b t c m -> (b n) t c m", n=n)
        with torch.autocast(self.device.type, enabled=False):
            samples = self.net.sample(mel, comp, level, self.hparams.val_temperature, prev=prev_r, prev_mask=prev_mask)
        samples = rearrange(self.denormalize(self.from_model_units(samples)), "(b n) t d -> b n t d", n=n)
        truth = self.denormalize(self.from_model_units(x.float()))
        names = self._dim_names()
        items = []
        for i, clip in enumerate(batch["clip_id"]):
            label = int(batch["emotion"][i])
            items.append(
                {
                    "name": f"{clip}_f{int(batch['start'][i]):05d}",
                    "samples": samples[i].cpu().numpy(),
                    "truth": truth[i].cpu().numpy(),
                    "mask": batch["mask"][i].cpu().numpy(),
                    "emotion": EMOTIONS[label] if component is not None and 0 <= label < len(EMOTIONS) else "",
                    "names": names,
                }
            )
        return items

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": optimizer, "lr_scheduler": cosine_schedule(self, optimizer, final_fraction=0.05)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        # checkpoints from before these were recorded
        state.setdefault("mel_columns", torch.tensor(0))
        state.setdefault("unit_scale", torch.ones(self.features))
        state.setdefault("unit_shift", torch.zeros(self.features))
        legacy = _drop_legacy_keys({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}, self.net)
        for key in [k for k in state if k.startswith("net.") and k[len("net.") :] not in legacy]:
            del state[key]

    # -- sampling, encoding, transfer ------------------------------------------------------

    def _emotion(self, emotion: str | int | None) -> int:
        if emotion is None:
            return -1
        index = emotion_index(emotion)
        if index >= self.num_emotions:
            raise ValueError(f"emotion {emotion!r} is index {index}, the model has {self.num_emotions} emotions")
        return index

    @torch.no_grad()
    def sample(
        self,
        mel: Tensor,
        emotion: str | int | None = None,
        intensity: int | None = 2,
        num_samples: int = 8,
        temperature: float = 0.8,
        seed: int | None = 0,
        intensity_scale: float | None = None,
        code: LatentCode | None = None,
        prev: Tensor | None = None,
        denormalize: bool = False,
    ) -> Tensor:
        """Sample coefficient sequences for the audio of a clip.

        Arguments:
            mel: ``[T, C, M]`` mel windows of a whole clip, normalised as the DataModule gives
                them (its ``mel``), or ``[B, T, C, M]`` for several clips.
            emotion: name (``"happy"``) or index; None draws one per sample from the mixture
                (label-free). Ignored by a Gaussian prior (PoseFlow).
            intensity: level 0..levels-1 (MEAD level_1..3); None: factor 1.
            num_samples: N sequences per clip.
            temperature: spread of the latent draws (0: the component location, deterministic).
            seed: seeds the draws (None: the global generator).
            intensity_scale: overrides the level with a factor along the neutral -> emotion
                line (0 neutral, 1 the emotion's location, > 1 exaggerated).
            code: a :class:`LatentCode` from :meth:`encode`: sample around it (emotion transfer;
                ``emotion`` and intensity are then ignored).
            prev: ``[K', D]`` frames before the clip (normalised) to continue from; default: a
                clip start.
            denormalize: return coefficients in the dataset's units instead of normalised ones.

        Returns:
            ``[N, T, D]`` (or ``[B, N, T, D]``), D = E for ExpFlow, P (+ blink) for PoseFlow.
        """
        single = mel.dim() == 3
        mel = mel.unsqueeze(0) if single else mel
        if mel.dim() != 4:
            raise ValueError(f"mel must be [T, C, M] or [B, T, C, M], got {tuple(mel.shape)}")
        self._check_mel(mel)
        b, t = mel.shape[:2]
        rows = b * num_samples
        mel = repeat(mel.to(self.device, torch.float32), "b t c m -> (b n) t c m", n=num_samples)
        component = torch.full((rows,), self._emotion(emotion), dtype=torch.long, device=self.device)
        level: Tensor | None = None
        if intensity_scale is not None:
            level = torch.full((rows,), float(intensity_scale), device=self.device)
        elif intensity is not None:
            if not 0 <= intensity < self.hparams.intensity_levels:
                raise ValueError(
                    f"intensity must be a level in 0..{self.hparams.intensity_levels - 1}, got {intensity}"
                )
            level = torch.full((rows,), int(intensity), dtype=torch.long, device=self.device)
        loc = None
        if code is not None:
            loc = code.z.to(self.device).expand(rows, -1)
            component = torch.full_like(component, code.component)
            level = None
        prev_mask = None
        if prev is not None:
            prev = repeat(self.to_model_units(prev.to(self.device, torch.float32)), "k d -> r k d", r=rows)
            prev_mask = torch.ones(prev.shape[:2], dtype=torch.bool, device=self.device)
        if self.hparams.prior == "gaussian":
            component, level = None, None
        was_training = self.training
        self.eval()
        with _seeded(seed, self.device), torch.autocast(self.device.type, enabled=False):
            x = self.net.sample(mel, component, level, temperature, loc=loc, prev=prev, prev_mask=prev_mask)
        self.train(was_training)
        x = self.from_model_units(x)
        if denormalize:
            x = x * self.coef_std + self.coef_mean
        x = rearrange(x, "(b n) t d -> b n t d", b=b)
        return x[0] if single else x

    @torch.no_grad()
    def encode(self, reference: Tensor, mel: Tensor | None = None, emotion: str | int | None = None) -> LatentCode:
        """Map reference coefficients through the bijection to a latent code.

        Arguments:
            reference: ``[T, D]`` normalised coefficients of a reference clip, or ``[D]`` for
                one frame.
            mel: ``[T, C, M]`` the reference's audio; None: mean audio features (zeros in
                normalised units), which suits a silent reference frame.
            emotion: the component to sample the code with; None: the most responsible one.
        """
        reference = self.to_model_units(reference.to(self.device, torch.float32))
        if reference.dim() == 1:
            reference = reference.unsqueeze(0)
        if reference.dim() != 2 or reference.shape[-1] != self.features:
            raise ValueError(
                f"reference must be [T, {self.features}] or [{self.features}], got {tuple(reference.shape)}"
            )
        t = reference.shape[0]
        if mel is None:
            # the training window's shape, filled with mean features (zeros once normalised)
            columns = int(self.mel_columns) or self.hparams.mel_per_frame or 1
            mel = torch.zeros(t, columns, self.hparams.mel_bins, device=self.device)
        self._check_mel(mel.unsqueeze(0))
        was_training = self.training
        self.eval()
        with torch.autocast(self.device.type, enabled=False):
            z, _ = self.net(reference.unsqueeze(0), mel.to(self.device, torch.float32).unsqueeze(0))
        self.train(was_training)
        frames = z[0]  # (T, D)
        posterior = self.net.prior.posterior(frames).mean(0)  # (C,)
        component = int(posterior.argmax()) if emotion is None else self._emotion(emotion)
        if self.hparams.prior == "gaussian":
            component = 0
        return LatentCode(frames.mean(0), frames, posterior, component)

    def _check_mel(self, mel: Tensor) -> None:
        """Refuse mel windows ``[B, T, C, M]`` of another shape than training used."""
        columns = int(self.mel_columns)
        if (columns and mel.shape[2] != columns) or mel.shape[3] != self.hparams.mel_bins:
            raise ValueError(
                f"mel windows must be [T, {columns or 'C'}, {self.hparams.mel_bins}] as in training, got "
                f"{tuple(mel.shape[1:])}: take them from a CoefficientDataModule with the training's audio_context"
            )

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalised coefficients to the dataset's units (statistics saved from its card)."""
        return x * self.coef_std.to(x.device) + self.coef_mean.to(x.device)

    # -- validation logging ----------------------------------------------------------------

    def _collect_latents(self, batch: dict[str, Any]) -> None:
        x, prev = self.select(batch)
        with torch.autocast(self.device.type, enabled=False):
            z, _ = self.net(x.float(), batch["mel"].float(), prev, batch.get("prev_mask"))
        mask = batch["mask"].bool() if "mask" in batch else torch.ones(z.shape[:2], dtype=torch.bool)
        m = mask.unsqueeze(-1).to(z.dtype)
        per_window = (z * m).sum(1) / m.sum(1).clamp(min=1)  # (B, D)
        self._embeddings.append((per_window.detach().cpu(), batch["emotion"].detach().cpu()))

    def _score_samples(self, batch: dict[str, Any], first: bool) -> None:
        x, prev = self.select(batch)
        n = max(int(self.hparams.val_samples), 2)
        b = x.shape[0]
        component = self._components(batch)
        mel = repeat(batch["mel"].float(), "b t c m -> (b n) t c m", n=n)
        comp = None if component is None else component.repeat_interleave(n)
        level = batch["intensity"].repeat_interleave(n) if comp is not None else None
        prev_r = None if prev is None else prev.float().repeat_interleave(n, 0)
        prev_mask = None if "prev_mask" not in batch else batch["prev_mask"].repeat_interleave(n, 0)
        with torch.autocast(self.device.type, enabled=False):
            samples = self.net.sample(
                mel, comp, level, self.hparams.val_temperature, prev=prev_r, prev_mask=prev_mask
            )  # (BN, T, D)
        samples = rearrange(samples, "(b n) t d -> b n t d", b=b)
        mask = batch["mask"].bool() if "mask" in batch else torch.ones(x.shape[:2], dtype=torch.bool)
        self.val_diversity.update(samples, x.float(), mask)
        if self.hparams.field == "exp":
            jaw = int(self.jaw_index)
            if jaw >= 0:
                self.val_lipsync.update(samples[..., jaw], batch["energy"], mask)
                self.val_lipsync_truth.update(x[..., jaw], batch["energy"], mask)
            classifier = self._load_classifier()
            if classifier is not None:
                flat = rearrange(self.from_model_units(samples), "b n t d -> (b n) t d")
                probs = classifier.predict_proba(flat, mask=mask.repeat_interleave(n, 0))
                labels = batch["emotion"].repeat_interleave(n).to(probs.device)
                known = labels >= 0
                if known.any():
                    self.val_emotion_accuracy.update((probs.argmax(-1) == labels)[known].float())
        if first:
            keep = min(b, 4)
            self._trajectories = (samples[:keep].cpu(), x[:keep].float().cpu(), batch["emotion"][:keep].cpu())

    def _load_classifier(self) -> Any:
        path = self.hparams.emotion_classifier
        if not path:
            return None
        if self._classifier is None:
            from flowvq.lightning_modules.emotion_classifier import EmotionClassifier

            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"emotion_classifier={path!r} does not exist: train one with "
                    "`flowvq fit --config configs/tiny/emotion_classifier.yaml` or set it to null"
                )
            classifier = EmotionClassifier.load_from_checkpoint(path, map_location=self.device, weights_only=False)
            if classifier.hparams.exp_dim != self.features:
                raise DatasetError(
                    f"emotion_classifier={path!r} scores E={classifier.hparams.exp_dim}, this ExpFlow makes "
                    f"E={self.features}: use a classifier trained on the same dataset"
                )
            classifier.eval().requires_grad_(False)
            # kept out of the module tree: not saved in this model's checkpoints
            object.__setattr__(self, "_classifier", classifier)
        return self._classifier

    def on_validation_epoch_end(self) -> None:
        if self.val_diversity.frames > 0 or self.trainer.world_size > 1:
            scores = self.val_diversity.compute()
            self.log_dict({f"val/{k}": v for k, v in scores.items()}, sync_dist=False)
            if self.hparams.field == "exp" and int(self.jaw_index) >= 0:
                self.log("val/lipsync_samples", self.val_lipsync.compute())
                self.log("val/lipsync_truth", self.val_lipsync_truth.compute())
        self.val_diversity.reset()
        self.val_lipsync.reset()
        self.val_lipsync_truth.reset()
        if self.hparams.field == "exp" and self.hparams.emotion_classifier:
            # every rank logs (a collective); a rank with no labelled window adds nothing
            self.log("val/emotion_accuracy_samples", self.val_emotion_accuracy.compute())
        self.val_emotion_accuracy.reset()
        self._log_long()
        writer = tensorboard(self)
        if writer is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            if self._trajectories is not None:
                writer.add_figure("val/trajectories", self._trajectory_figure(*self._trajectories), self.global_step)
            if self._embeddings:
                z = torch.cat([e[0] for e in self._embeddings]).float()
                labels = torch.cat([e[1] for e in self._embeddings]).tolist()
                names = [EMOTIONS[i] if 0 <= i < len(EMOTIONS) else "unknown" for i in labels]
                if len(z) >= 2:
                    writer.add_embedding(z, metadata=names, global_step=self.global_step, tag="val/latents")
        self._trajectories = None
        self._embeddings = []

    def _trajectory_figure(self, samples: Tensor, truth: Tensor, emotion: Tensor) -> Any:
        """Sampled trajectories (thin) against the ground truth (black), a few dims per clip."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        dims = [max(int(self.jaw_index), 0)] if self.hparams.field == "exp" else [0]
        dims += [d for d in range(self.features) if d not in dims][:2]
        clips = samples.shape[0]
        figure, axes = plt.subplots(clips, len(dims), figsize=(3.2 * len(dims), 2.0 * clips), squeeze=False)
        names = self._dim_names()
        for i in range(clips):
            for j, d in enumerate(dims):
                axis = axes[i][j]
                for s in samples[i, :, :, d].numpy():
                    axis.plot(s, lw=0.8, alpha=0.7)
                axis.plot(truth[i, :, d].numpy(), color="black", lw=1.6, label="ground truth")
                label = int(emotion[i])
                axis.set_title(f"{EMOTIONS[label] if label >= 0 else 'unknown'}: {names[d]}", fontsize=8)
                axis.tick_params(labelsize=6)
        figure.tight_layout()
        return figure

    def _dim_names(self) -> list[str]:
        card = getattr(getattr(self._trainer, "datamodule", None), "card", None) if self._trainer else None
        if card is not None:
            base = card.exp_names if self.hparams.field == "exp" else card.pose_names
            names = list(base) + list(self.hparams.extra_exp_names or []) + self._field_names()
            if len(names) == self.features:
                return names
        return self.feature_names

    def _field_names(self) -> list[str]:
        names = []
        for name in self.hparams.get("extra_fields") or []:
            names += list(GAZE_NAMES) if name == "gaze" else [name]
        return names

    @property
    def feature_names(self) -> list[str]:
        """Names of the modelled dims, known without a dataset (PoseFlow's and the motion flow's:
        yaw ... scale, the extra exp dims, blink, gaze_x, gaze_y)."""
        if self.hparams.field == "exp":
            return [f"exp[{d}]" for d in range(self.features)]
        pose_dim = int(self.hparams.pose_dim)
        pose = list(POSE_NAMES) if pose_dim == len(POSE_NAMES) else [f"pose[{d}]" for d in range(pose_dim)]
        return pose + list(self.hparams.extra_exp_names or []) + self._field_names()


def _drop_legacy_keys(weights: dict[str, Tensor], net: CoefficientFlowNet) -> dict[str, Tensor]:
    """Drop intensity factors that checkpoints before PoseFlow stopped building them still hold."""
    if net.level_logits is None:
        weights = {k: v for k, v in weights.items() if k != "level_logits"}
    return weights


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Run with the global generators seeded, restoring their state afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
