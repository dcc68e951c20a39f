"""GMTalker's emotion-guided head generator: the StyleUNet, trained on one person's frames.

A frame is rendered from its coefficients in three steps:

1. a landmark decoder turns the expression and pose coefficients into the 68 landmarks
   (:mod:`flowvq.nn.condition_maps`: exact from the card's PCA basis for ``mediapipe-pca``
   shards, a quadratic ridge model fitted on the speaker's train frames for SynthTalk and
   Deep3D imports), fitted in :meth:`StyleUNetHead.setup` and saved in the checkpoint;
2. the landmarks are drawn as anti-aliased contour channels (the condition maps; GMTalker
   renders 3DMM coefficients instead, which this suite has no renderer for);
3. the :class:`~flowvq.nn.styleunet.StyleUNet` turns the maps (plus GMEG's latent z_gm,
   broadcast as channels, where ``z_gm_dim > 0``) into the frame, its decoder modulated by the
   style code of the Emotion Mapping Network (:mod:`flowvq.lightning_modules.emotion_mapping`)
   for the frame's emotion weights.

Trained with the suite's :class:`~flowvq.nn.vq_losses.VQLoss` (L1 + perceptual or its
fallback + hinge PatchGAN from ``disc_start``), by manual optimization as the other GANs
(:mod:`~flowvq.lightning_modules.gradient_sync` under DDP), on
:class:`~flowvq.datamodules.FramePairDataModule` batches of one speaker (``speaker``: the
split is by clip within the speaker). The source frame of a pair is not an input (the
generator is person-specific); it is the source-copy baseline of :meth:`test_step`.

The EMN is read from ``emn_checkpoint`` in :meth:`setup` (frozen unless ``emn_trainable``);
without one (``null``) a freshly initialised EMN is used, and a log line says so: the tiny
recipe and the tests train that way, a user trains the EMN first.

z_gm: GMEG's per-frame latent ``(T, D)`` (:meth:`flowvq.lightning_modules.gmeg.GMEG.latent`).
With ``gmeg_checkpoint``, :meth:`setup` computes each clip's latent of its real frames once
(``GMEG.latent(mel, exp=exp)``, the posterior mean GMEG's docstring names for this use) and
every training or scored frame gets its own frame's latent; ``z_gm_dim`` must equal GMEG's
``latent_dim``. Without one, the ``z_gm_dim`` channels receive zeros (a stand-in of the same
shape), as wherever :meth:`render` is given ``z_gm=None``. At inference pass
``GMEG.latent(mel, emotion=...)[0]`` for the generated expression to :meth:`render`.

References:
    GMTalker. https://arxiv.org/abs/2312.07669
    Karras et al. StyleGAN2. https://arxiv.org/abs/1912.04958
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from flowvq.data.card import DatasetCard, DatasetError
from flowvq.data.schema import EMOTIONS
from flowvq.lightning_modules.common import check_module_against_data, tensorboard
from flowvq.lightning_modules.emotion_mapping import MAPPING_KEYS
from flowvq.lightning_modules.gradient_sync import (
    discriminator_step,
    own_gradient_sync,
    step_optimizer,
)
from flowvq.lightning_modules.vqgan import frame_items, image_grid, psnr, require
from flowvq.nn.condition_maps import (
    CONTOUR_GROUPS,
    LandmarkDecoder,
    PCALandmarkDecoder,
    QuadraticLandmarkDecoder,
    contour_colours,
    landmark_error,
    rasterize_contours,
)
from flowvq.nn.emotion_mapping import MappingNetwork, check_emotion_weights
from flowvq.nn.perceptual import ssim
from flowvq.nn.styleunet import StyleUNet
from flowvq.nn.vq_losses import VQLoss

__all__ = ["StyleUNetHead", "clip_mel_windows", "read_fit_frames"]

log = logging.getLogger(__name__)


def read_fit_frames(
    root: str | Path, locations: list[tuple[str, int]], image_size: int, max_frames: int = 20000
) -> dict[str, np.ndarray]:
    """exp, pose (dataset units) and landmarks (pixels of ``image_size``) of some clips' frames.

    Raises:
        DatasetError: the records carry no usable ``landmarks`` (non-finite or all equal:
            e.g. a Deep3D import without its videos).
    """
    from flowvq.data.shards import ClipShards

    card = DatasetCard.load(root)
    shards: dict[str, ClipShards] = {}
    exp, pose, landmarks = [], [], []
    total = 0
    for split, index in locations:
        if split not in shards:
            shards[split] = ClipShards(root, split, validate=False)
        record = shards[split][index]
        exp.append(record["exp"])
        pose.append(record["pose"])
        landmarks.append(np.asarray(record["landmarks"], dtype=np.float32))
        total += len(record["exp"])
        if total >= max_frames:
            break
    points = np.concatenate(landmarks) * (image_size / max(card.frame_size, 1))
    if not np.isfinite(points).all() or float(np.ptp(points)) == 0.0:
        raise DatasetError(
            f"the records of {str(root)!r} ({card.name!r}, coefficient source {card.coefficient_source!r}) "
            "carry no usable field 'landmarks' (non-finite or all equal): the StyleUNet's condition maps are "
            "drawn from landmarks decoded from the coefficients, and the decoder is fitted on them. Use shards "
            "preprocessed from video (`flowvq preprocess ...`, or `flowvq import deep3d` with the videos)"
        )
    return {"exp": np.concatenate(exp), "pose": np.concatenate(pose), "landmarks": points}


def clip_mel_windows(mel: np.ndarray, context: int, normalizer: Any) -> np.ndarray:
    """Normalised mel windows ``(T, (2 context + 1) K, M)`` of a clip's ``mel (T, K, M)``: frames
    t - context .. t + context around each frame, silence outside the clip (as the
    CoefficientDataModule gives GMEG)."""
    from flowvq.datamodules.base import SILENCE_LOG_MEL

    frames = mel.shape[0]
    around = np.arange(frames)[:, None] + np.arange(-context, context + 1)[None, :]  # (T, 2c+1)
    inside = (around >= 0) & (around < frames)
    windows = np.full((frames, 2 * context + 1, *mel.shape[1:]), SILENCE_LOG_MEL, dtype=np.float32)
    windows[inside] = mel[around[inside]]
    windows = windows.reshape(frames, -1, mel.shape[-1])  # (T, (2c+1) K, M)
    return normalizer.normalize("mel", windows).astype(np.float32)


class StyleUNetHead(L.LightningModule):
    """The person-specific head generator.

    Arguments:
        exp_dim, pose_dim, num_emotions: coefficient widths and emotions (filled from the card).
        resolution: side of the rendered frames.
        channels, ch_mult, max_channels: the StyleUNet (see :class:`~flowvq.nn.styleunet.StyleUNet`).
        z_gm_dim: width of GMEG's per-frame latent fed as channels (0: none).
        line_width: contour width in pixels (default ``resolution / 64``).
        landmark_decoder: ``auto`` (``pca`` for ``mediapipe-pca`` shards, else ``fitted``),
            ``pca`` or ``fitted`` (see :mod:`flowvq.nn.condition_maps`).
        decoder_ridge: ridge of the fitted decoder.
        emn_checkpoint: an :class:`~flowvq.lightning_modules.emotion_mapping.EmotionMappingNetwork`
            checkpoint (read in :meth:`setup`); ``None``: a fresh EMN (said in a log line).
        emn_trainable: fine-tune the EMN with the generator (else frozen).
        gmeg_checkpoint: a :class:`~flowvq.lightning_modules.gmeg.GMEG` checkpoint whose latent of
            each frame feeds the ``z_gm_dim`` channels (``None``: zeros).
        latent_dim, style_dim, hidden_dim, shared_layers, branch_layers: the EMN's
            architecture; a checkpoint that differs is refused, naming both.
        pixel_weight, perceptual_weight, perceptual_weights_path, feature_match_weight,
        ssim_weight, disc_weight, disc_start, adaptive_gan_weight, disc_channels, disc_layers,
        disc_norm, color_weight: the loss (:class:`~flowvq.nn.vq_losses.VQLoss`).
        lr, betas: Adam for the generator and the discriminator.
        log_images: frames in the validation grid (0 = none).
        log_video_frames: frames of the validation clip logged with ``add_video`` (0 = none).
    """

    def __init__(
        self,
        exp_dim: int | None = None,
        pose_dim: int | None = None,
        num_emotions: int | None = None,
        resolution: int = 256,
        channels: int = 32,
        ch_mult: tuple[int, ...] = (1, 2, 4, 8, 8),
        max_channels: int = 512,
        z_gm_dim: int = 0,
        line_width: float | None = None,
        landmark_decoder: str = "auto",
        decoder_ridge: float = 1e-3,
        emn_checkpoint: str | None = None,
        emn_trainable: bool = False,
        gmeg_checkpoint: str | None = None,
        latent_dim: int = 16,
        style_dim: int = 64,
        hidden_dim: int = 512,
        shared_layers: int = 4,
        branch_layers: int = 4,
        pixel_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        perceptual_weights_path: str | None = None,
        feature_match_weight: float = 1.0,
        ssim_weight: float = 1.0,
        disc_weight: float = 0.1,
        disc_start: int = 5000,
        adaptive_gan_weight: bool = False,
        disc_channels: int = 64,
        disc_layers: int = 3,
        disc_norm: str = "group",
        color_weight: float = 0.0,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.99),
        log_images: int = 8,
        log_video_frames: int = 50,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if exp_dim is None or pose_dim is None:
            raise ValueError(
                f"StyleUNetHead needs exp_dim and pose_dim, got exp_dim={exp_dim}, pose_dim={pose_dim}: "
                "`flowvq fit` fills them from the dataset card; in Python pass the card's sizes"
            )
        if landmark_decoder not in ("auto", "pca", "fitted"):
            raise ValueError(f"landmark_decoder={landmark_decoder!r}: expected auto, pca or fitted")
        num_emotions = 8 if num_emotions is None else int(num_emotions)
        self.decoder = self._make_decoder("pca" if landmark_decoder == "pca" else "fitted")
        self.net = StyleUNet(len(CONTOUR_GROUPS), style_dim, channels, tuple(ch_mult), z_gm_dim, max_channels)
        self.emn = MappingNetwork(latent_dim, style_dim, hidden_dim, num_emotions, shared_layers, branch_layers)
        self.emn.requires_grad_(emn_trainable)
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
        )
        # the card's normalisation statistics: batches and render() take normalised coefficients
        self.register_buffer("exp_mean", torch.zeros(exp_dim))
        self.register_buffer("exp_std", torch.ones(exp_dim))
        self.register_buffer("pose_mean", torch.zeros(pose_dim))
        self.register_buffer("pose_std", torch.ones(pose_dim))
        self.register_buffer("emn_loaded", torch.zeros((), dtype=torch.bool))
        self.register_buffer("decoder_error", torch.full((2,), float("nan")))  # held-out px: all, mouth
        self.register_buffer("train_batches", torch.zeros((), dtype=torch.long))
        self._latents: dict[str, Tensor] | None = None  # clip_id -> (T, z_gm_dim), from gmeg_checkpoint

    def _make_decoder(self, kind: str) -> LandmarkDecoder:
        h = self.hparams
        if kind == "pca":
            return PCALandmarkDecoder.empty(h.exp_dim, h.resolution)
        return QuadraticLandmarkDecoder(h.exp_dim, h.pose_dim, h.resolution)

    # ---------------------------------------------------------------- setup: data, decoder, EMN

    def load_emn(self, path: str | Path) -> None:
        """Copy the mapping network of an EmotionMappingNetwork checkpoint (architecture checked)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"EMN checkpoint {str(path)!r} does not exist: train it first "
                "(`flowvq fit --config configs/emotion_mapping.yaml`, or configs/tiny/emotion_mapping.yaml), "
                "or set model.init_args.emn_checkpoint to null to start from a fresh EMN"
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        theirs = dict(checkpoint.get("hyper_parameters", {}))
        state = checkpoint.get("state_dict", {})
        if not any(k.startswith("mapping.") for k in state):
            raise ValueError(
                f"{str(path)!r} is not an EmotionMappingNetwork checkpoint (no mapping.* weights); point "
                "emn_checkpoint at a checkpoint of flowvq.lightning_modules.emotion_mapping.EmotionMappingNetwork"
            )
        ours = {k: self.hparams[k] for k in MAPPING_KEYS}
        wrong = {k: (theirs[k], ours[k]) for k in MAPPING_KEYS if k in theirs and theirs[k] != ours[k]}
        if wrong:
            have = ", ".join(f"{k}={v[0]}" for k, v in wrong.items())
            want = ", ".join(f"{k}={v[1]}" for k, v in wrong.items())
            raise ValueError(
                f"EMN checkpoint {str(path)!r} has {have}, but this StyleUNetHead is configured for {want}: "
                "set model.init_args to the checkpoint's values"
            )
        self.emn.load_state_dict({k[len("mapping.") :]: v for k, v in state.items() if k.startswith("mapping.")})
        self.emn_loaded.fill_(True)

    def fit_decoder(self, datamodule: Any) -> dict[str, float]:
        """Build the landmark decoder from the datamodule's data; returns its held-out error (px)."""
        card: DatasetCard = datamodule.card
        size = self.hparams.resolution
        if getattr(datamodule, "speaker", None) is not None:
            clips = datamodule.speaker_clips()
            train, held = clips["train"], clips["val"]
        else:
            from flowvq.data.shards import ClipShards

            count = lambda split: len(ClipShards(datamodule.root, split, validate=False))  # noqa: E731
            train = [("train", i) for i in range(count("train"))]
            held = [("val", i) for i in range(count("val"))] if "val" in card.splits else train[-1:]
        fit = read_fit_frames(datamodule.root, train, size)
        kind = self.hparams.landmark_decoder
        if kind == "auto":
            kind = "pca" if card.coefficient_source == "mediapipe-pca" else "fitted"
        as_tensor = lambda name, data: torch.as_tensor(data[name], dtype=torch.float32)  # noqa: E731
        if kind == "pca":
            decoder = self._pca_decoder(datamodule)
            decoder.fit_affine(as_tensor("exp", fit), as_tensor("pose", fit), as_tensor("landmarks", fit))
        else:
            decoder = QuadraticLandmarkDecoder(self.hparams.exp_dim, self.hparams.pose_dim, size)
            decoder.fit(
                as_tensor("exp", fit), as_tensor("pose", fit), as_tensor("landmarks", fit), self.hparams.decoder_ridge
            )
        self.decoder = decoder.to(self.device)
        self.hparams.landmark_decoder = kind  # a checkpoint rebuilds this kind of decoder
        scored = read_fit_frames(datamodule.root, held, size)
        with torch.no_grad():
            predicted = self.decoder(
                as_tensor("exp", scored).to(self.device), as_tensor("pose", scored).to(self.device)
            )
        error = landmark_error(predicted.cpu(), as_tensor("landmarks", scored))
        self.decoder_error.copy_(torch.tensor([error["all"], error["mouth"]]))
        log.info(
            "StyleUNetHead: %s landmark decoder fitted on %d frames; held-out error %.2f px (mouth %.2f px) at %d px",
            kind,
            len(fit["exp"]),
            error["all"],
            error["mouth"],
            size,
        )
        return error

    def gmeg_latents(self, path: str | Path, datamodule: Any) -> dict[str, Tensor]:
        """``{clip_id: (T, z_gm_dim)}``: GMEG's latent of the real frames of the datamodule's clips."""
        from flowvq.data.shards import ClipShards
        from flowvq.lightning_modules.gmeg import GMEG

        if not Path(path).is_file():
            raise FileNotFoundError(
                f"GMEG checkpoint {str(path)!r} does not exist: train it (`flowvq fit --config configs/gmeg.yaml`) "
                "or set model.init_args.gmeg_checkpoint to null (zeros in the z_gm channels)"
            )
        gmeg = GMEG.load_from_checkpoint(path, map_location="cpu").eval()
        width = int(gmeg.hparams.latent_dim)
        if width != self.hparams.z_gm_dim:
            raise ValueError(
                f"GMEG checkpoint {str(path)!r} has latent_dim={width}, but this StyleUNetHead has "
                f"z_gm_dim={self.hparams.z_gm_dim}: set model.init_args.z_gm_dim to {width}"
            )
        columns = int(gmeg.mel_columns) or gmeg.hparams.get("mel_per_frame", 4)
        per_frame = datamodule.card.audio.mel_per_frame
        context = (columns // per_frame - 1) // 2
        if getattr(datamodule, "speaker", None) is not None:
            clips = datamodule.speaker_clips()
            locations = list(dict.fromkeys(clips["train"] + clips["val"]))
        else:
            locations = []
            for split in datamodule.card.splits:
                locations += [(split, i) for i in range(len(ClipShards(datamodule.root, split, validate=False)))]
        norm = datamodule.normalizer
        shards: dict[str, ClipShards] = {}
        latents = {}
        for split, index in locations:
            shards.setdefault(split, ClipShards(datamodule.root, split, validate=False))
            record = shards[split][index]
            mel = torch.as_tensor(clip_mel_windows(record["mel"], context, norm), dtype=torch.float32)
            exp = torch.as_tensor(norm.normalize("exp", record["exp"]), dtype=torch.float32)
            latents[record["clip_id"]] = gmeg.latent(mel, exp=exp)[0].float().cpu()  # (T, Z)
        log.warning("StyleUNetHead: GMEG latents of %d clips from %s feed the z_gm channels", len(latents), path)
        return latents

    def _batch_z_gm(self, batch: dict) -> Tensor | None:
        if self._latents is None:
            return None
        frames = batch["target_frame"].tolist()
        rows = [self._latents[clip][frame] for clip, frame in zip(batch["clip_id"], frames)]
        return torch.stack(rows).to(self.device)

    def _pca_decoder(self, datamodule: Any) -> PCALandmarkDecoder:
        from flowvq.data.face import IBUG68_FROM_FACEMESH, ExpressionBasis

        card: DatasetCard = datamodule.card
        name = card.extra.get("basis")
        path = Path(datamodule.root) / str(name)
        if not name or not path.is_file():
            raise DatasetError(
                f"{str(datamodule.root)!r} is a {card.coefficient_source!r} dataset without its PCA basis "
                f"(card extra 'basis' = {name!r}): re-create it with `flowvq preprocess`, or set "
                "model.init_args.landmark_decoder to fitted"
            )
        basis = ExpressionBasis.load(path)
        rows = np.array(IBUG68_FROM_FACEMESH)
        columns = (rows[:, None] * 3 + np.arange(3)).ravel()
        speaker = getattr(datamodule, "speaker", None)
        neutral = basis.neutral[speaker] if speaker in basis.neutral else np.mean(list(basis.neutral.values()), 0)
        return PCALandmarkDecoder(
            basis.components[:, columns], basis.offset_mean[columns], neutral[rows], self.hparams.resolution
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        card = check_module_against_data(self)
        if card is not None:
            size = getattr(datamodule, "image_size", card.frame_size)
            if size != self.hparams.resolution:
                raise ValueError(
                    f"StyleUNetHead resolution={self.hparams.resolution} but the data gives {size} px frames "
                    f"({card.name!r}): set data.init_args.image_size to {self.hparams.resolution}"
                )
            stats = datamodule.normalizer
            for name in ("exp", "pose"):
                getattr(self, f"{name}_mean").copy_(torch.as_tensor(stats.mean[name]))
                getattr(self, f"{name}_std").copy_(torch.as_tensor(stats.std[name]))
        if self.hparams.gmeg_checkpoint and self._latents is None and datamodule is not None:
            self._latents = self.gmeg_latents(self.hparams.gmeg_checkpoint, datamodule)
        if stage != "fit":
            return
        if card is not None and not bool(self.decoder.fitted):
            self.fit_decoder(datamodule)
        if not bool(self.emn_loaded):
            if self.hparams.emn_checkpoint:
                self.load_emn(self.hparams.emn_checkpoint)
            else:
                log.warning(
                    "StyleUNetHead: no emn_checkpoint given: using a fresh, untrained Emotion Mapping Network "
                    "(%s). Train one with configs/emotion_mapping.yaml and name it in model.init_args.emn_checkpoint",
                    "fine-tuned with the generator" if self.hparams.emn_trainable else "frozen at its initial weights",
                )

    # ---------------------------------------------------------------- rendering

    def condition(self, exp: Tensor, pose: Tensor) -> Tensor:
        """Condition maps ``(B, C, R, R)`` of normalised coefficients ``exp (B, E)``, ``pose (B, P)``."""
        with torch.no_grad():
            raw_exp = exp.float() * self.exp_std + self.exp_mean
            raw_pose = pose.float() * self.pose_std + self.pose_mean
            landmarks = self.decoder(raw_exp, raw_pose)  # (B, 68, 2) pixels
            return rasterize_contours(landmarks, self.hparams.resolution, self.hparams.line_width)

    def style(self, weights: Tensor, z: Tensor | None = None) -> Tensor:
        """EMN style codes ``(B, S)`` of emotion weights ``(B, K)`` (noise ``z (B, L)`` drawn if None),
        each scaled to unit root mean square.

        The EMN's codes have whatever scale its own training gave them (it matches the style
        encoder's codes, which only a small L2 holds), while the StyleUNet's modulation affines
        start at scales near 1 and expect codes of about unit size; a code of norm 20 turns
        the EMN's spread over ``z`` into large random modulations, colour blotches through the
        undemodulated to-RGB layers. The normalisation keeps the direction, which carries the
        emotion, and drops the scale (StyleGAN2 normalises its latent the same way).
        """
        if z is None:
            z = torch.randn(weights.shape[0], self.hparams.latent_dim, device=weights.device)
        code = self.emn(z, weights.float())
        return code * torch.rsqrt(code.pow(2).mean(-1, keepdim=True) + 1e-8)

    def forward(
        self, exp: Tensor, pose: Tensor, weights: Tensor, z: Tensor | None = None, z_gm: Tensor | None = None
    ) -> dict[str, Tensor]:
        condition = self.condition(exp, pose)
        image = self.net(condition, self.style(weights, z), z_gm)
        return {"image": image, "condition": condition}

    def emotion_weights(self, emotion: Tensor) -> Tensor:
        """One-hot weights ``(B, K)`` of emotion labels; unknown labels (-1) get uniform weights."""
        k = self.emn.num_emotions
        weights = F.one_hot(emotion.clamp_min(0), k).float()
        return torch.where((emotion < 0)[:, None], torch.full_like(weights, 1 / k), weights)

    @torch.no_grad()
    def render(
        self,
        exp: Tensor,
        pose: Tensor,
        emotion_weights: Tensor | dict[str, float] | str,
        z_gm: Tensor | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> Tensor:
        """This person's frames for a coefficient sequence.

        Arguments:
            exp: ``(T, E)`` expression coefficients, normalised with the dataset's train
                statistics (as the DataModules and the coefficient generators give them).
            pose: ``(T, P)`` poses, normalised likewise.
            emotion_weights: ``(K,)`` or ``(T, K)`` weights on the simplex, a dict
                ``{"happy": 0.7, "surprised": 0.3}`` (normalised to sum 1), or an emotion name.
            z_gm: GMEG's latent ``(T, z_gm_dim)``, or None (zeros).
            seed: the EMN's noise, one draw for the whole sequence (a constant style).
            batch_size: frames per forward pass.

        Returns:
            ``(T, 3, R, R)`` frames in [-1, 1].
        """
        h = self.hparams
        if exp.ndim != 2 or exp.shape[1] != h.exp_dim:
            raise ValueError(
                f"exp must be (T, {h.exp_dim}): this StyleUNetHead was trained on E={h.exp_dim} coefficients, "
                f"got width {exp.shape[-1] if exp.ndim else 0} (shape {tuple(exp.shape)})"
            )
        if pose.ndim != 2 or pose.shape[1] != h.pose_dim or pose.shape[0] != exp.shape[0]:
            raise ValueError(
                f"pose must be (T, {h.pose_dim}) with T = {exp.shape[0]} (exp's length), got {tuple(pose.shape)}"
            )
        frames = exp.shape[0]
        weights = self._weights(emotion_weights, frames)
        if z_gm is not None:
            if not h.z_gm_dim:
                raise ValueError("z_gm given, but this StyleUNetHead was built with z_gm_dim=0 (no z_gm input)")
            if z_gm.shape != (frames, h.z_gm_dim):
                raise ValueError(f"z_gm must be (T, {h.z_gm_dim}) = ({frames}, {h.z_gm_dim}), got {tuple(z_gm.shape)}")
        was_training = self.training
        self.eval()
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(1, h.latent_dim, generator=generator).to(self.device)
        out = []
        for start in range(0, frames, batch_size):
            stop = min(frames, start + batch_size)
            part = self(
                exp[start:stop].to(self.device),
                pose[start:stop].to(self.device),
                weights[start:stop].to(self.device),
                z.expand(stop - start, -1),
                None if z_gm is None else z_gm[start:stop].to(self.device),
            )
            out.append(part["image"].float().clamp(-1, 1))
        self.train(was_training)
        return torch.cat(out)

    def _weights(self, emotion_weights: Tensor | dict[str, float] | str, frames: int) -> Tensor:
        k = self.emn.num_emotions
        if isinstance(emotion_weights, str):
            emotion_weights = {emotion_weights: 1.0}
        if isinstance(emotion_weights, dict):
            vector = torch.zeros(k)
            for name, value in emotion_weights.items():
                if name not in EMOTIONS[:k]:
                    raise ValueError(f"unknown emotion {name!r} in emotion_weights: expected one of {EMOTIONS[:k]}")
                vector[EMOTIONS.index(name)] = float(value)
            if vector.sum() <= 0:
                raise ValueError(f"emotion_weights {emotion_weights} must have a positive sum")
            emotion_weights = vector / vector.sum()
        weights = torch.as_tensor(emotion_weights, dtype=torch.float32)
        if weights.ndim == 1:
            weights = weights[None].expand(frames, -1)
        if weights.shape[0] != frames:
            raise ValueError(f"emotion_weights must be (K,) or (T, K) with T = {frames}, got {tuple(weights.shape)}")
        return check_emotion_weights(weights, k)

    # ---------------------------------------------------------------- training

    def configure_optimizers(self):
        lr, betas = self.hparams.lr, tuple(self.hparams.betas)
        params = list(self.net.parameters()) + (list(self.emn.parameters()) if self.hparams.emn_trainable else [])
        opt_g = torch.optim.Adam(params, lr=lr, betas=betas)
        opt_d = torch.optim.Adam(self.loss.discriminator.parameters(), lr=lr, betas=betas)
        return [opt_g, opt_d]

    def _losses(self, batch: dict, step: int, z: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], dict]:
        target = require(batch, "target", "StyleUNetHead")
        weights = self.emotion_weights(require(batch, "emotion", "StyleUNetHead"))
        out = self(
            require(batch, "target_exp", "StyleUNetHead"), require(batch, "target_pose", "StyleUNetHead"), weights, z
        )
        last = self.net.up[-1].to_rgb.weight
        loss, logs = self.loss.generator_loss(target, out["image"], step, last_layer=last)
        return loss, logs, out

    def training_step(self, batch: dict, batch_idx: int) -> None:
        own_gradient_sync(self)
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

    def _fixed_noise(self, batch: dict) -> Tensor:
        generator = torch.Generator().manual_seed(0)  # validation figures do not depend on rank or order
        return torch.randn(batch["target"].shape[0], self.hparams.latent_dim, generator=generator).to(self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, logs, out = self._losses(batch, 0, self._fixed_noise(batch))
        target = batch["target"]
        size = target.shape[0]
        image = out["image"].clamp(-1, 1)
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, batch_size=size, sync_dist=True)
        self.log("val/psnr", psnr(image, target).mean(), batch_size=size, prog_bar=True, sync_dist=True)
        self.log("val/ssim", ssim(image, target).mean(), batch_size=size, sync_dist=True)
        writer = tensorboard(self)
        if batch_idx == 0 and self.hparams.log_images and writer is not None:
            grid = image_grid([contour_colours(out["condition"]), target, image], self.hparams.log_images)
            writer.add_image("val/condition_target_generated", grid, self.current_epoch)

    def on_validation_epoch_end(self) -> None:
        writer = tensorboard(self)
        frames = self.hparams.log_video_frames
        if writer is None or not frames or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        clip = self._validation_clip()
        if clip is None:
            return
        rendered = self.render(clip["exp"][:frames], clip["pose"][:frames], clip["weights"])
        truth = clip["frames"][: len(rendered)].to(rendered.device)
        video = torch.cat([truth, rendered], -1).add(1).div(2).clamp(0, 1)  # (T, 3, R, 2R): truth | rendered
        writer.add_video("val/truth_rendered", video[None].cpu(), self.current_epoch, fps=25)

    def _validation_clip(self) -> dict[str, Any] | None:
        """The first held-out clip of the datamodule: normalised coefficients, frames, weights."""
        from flowvq.data.shards import ClipShards
        from flowvq.datamodules.base import decode_frame

        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "normalizer"):
            return None
        if getattr(datamodule, "speaker", None) is not None:
            split, index = datamodule.speaker_clips()["val"][0]
        elif "val" in datamodule.card.splits:
            split, index = "val", 0
        else:
            return None
        record = ClipShards(datamodule.root, split, validate=False)[index]
        n = min(len(record["exp"]), self.hparams.log_video_frames)
        size = self.hparams.resolution
        images = np.stack([decode_frame(record, i, datamodule.card.frame_size, size) for i in range(n)])
        norm = datamodule.normalizer
        return {
            "exp": torch.as_tensor(norm.normalize("exp", record["exp"][:n]), dtype=torch.float32),
            "pose": torch.as_tensor(norm.normalize("pose", record["pose"][:n]), dtype=torch.float32),
            "frames": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
            "weights": self.emotion_weights(torch.tensor([int(record["emotion"])]))[0],
        }

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Scores beside the source-copy baseline (the pair's source frame offered as every output)."""
        _, _, out = self._losses(batch, 0, self._fixed_noise(batch))
        source, target = batch["source"], batch["target"]
        image = out["image"].clamp(-1, 1)
        scores = {
            "test/l1": (image - target).abs().mean(),
            "test/psnr": psnr(image, target).mean(),
            "test/ssim": ssim(image, target).mean(),
            "test/psnr_source_copy": psnr(source, target).mean(),
            "test/ssim_source_copy": ssim(source, target).mean(),
        }
        self.log_dict(scores, batch_size=target.shape[0], sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """``<clip_id>_f<frame>.png``: condition maps | target | rendered; ``.npz``: PSNR."""
        target = require(batch, "target", "StyleUNetHead")
        out = self(
            batch["target_exp"], batch["target_pose"], self.emotion_weights(batch["emotion"]), self._fixed_noise(batch)
        )
        image = out["image"].clamp(-1, 1)
        return frame_items(batch, [contour_colours(out["condition"]), target, image], psnr(image, target))
