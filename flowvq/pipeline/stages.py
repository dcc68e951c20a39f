"""The stages a pipeline chains, and the registry that names them.

A pipeline has three roles, whichever system fills them:

- ``expression``: audio (+ emotion) -> expression coefficients ``[N, T, E]`` (ExpFlow; GMEG);
- ``motion``: audio -> head pose ``[N, T, P]`` and extra expression dims such as blinks
  (PoseFlow; GMTalker's motion flow);
- ``renderer``: a source face + coefficients -> frames (VQIG; StyleUNet head generator).

Each stage is a small adapter around a trained LightningModule's checkpoint; it speaks in the
dataset's own units (coefficients as the shards hold them, not normalised), so stages trained
with different normalisation statistics still chain. :data:`STAGE_KINDS` maps a short name
(the pipeline YAML's ``kind``) to the adapter's import path; a YAML may instead give the
``class_path`` of any adapter class. Adding a system is one adapter per new model plus a
pipeline YAML, not a change to :class:`~flowvq.pipeline.pipeline.Pipeline`.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from flowvq.data.card import CARD_NAME, DatasetCard, DatasetError

__all__ = [
    "ROLES",
    "STAGE_KINDS",
    "EmotionRequest",
    "ExpFlowStage",
    "GMEGStage",
    "PipelineError",
    "PoseFlowStage",
    "Stage",
    "StyleUNetHeadStage",
    "VQIGStage",
    "load_card",
    "mel_windows",
    "stage_class",
]

#: The roles of a pipeline, in the order they run.
ROLES = ("expression", "motion", "renderer")

#: ``kind`` in a pipeline YAML -> adapter class (import path). GMTalker's stages register here.
STAGE_KINDS: dict[str, str] = {
    "expflow": "flowvq.pipeline.stages:ExpFlowStage",
    "poseflow": "flowvq.pipeline.stages:PoseFlowStage",
    "vqig": "flowvq.pipeline.stages:VQIGStage",
    # GMTalker: GMEG, the motion flow (a CoefficientFlow configuration, like PoseFlow), the head generator
    "gmeg": "flowvq.pipeline.stages:GMEGStage",
    "motion_flow": "flowvq.pipeline.stages:PoseFlowStage",
    "styleunet_head": "flowvq.pipeline.stages:StyleUNetHeadStage",
}

#: log(1e-5): the log-mel of silence, used outside the audio (as the DataModule pads).
SILENCE = float(np.log(1e-5))


class PipelineError(ValueError):
    """A pipeline that cannot run: a missing checkpoint, stages that do not fit together."""


def stage_class(kind: str | None = None, class_path: str | None = None) -> type[Stage]:
    """The adapter class of a registry ``kind`` or an explicit ``class_path`` (``module.Class`` or ``module:Class``)."""
    if class_path is None:
        if kind not in STAGE_KINDS:
            raise PipelineError(f"unknown stage kind {kind!r}: expected one of {', '.join(sorted(STAGE_KINDS))}")
        class_path = STAGE_KINDS[kind]
    module, _, name = class_path.replace(":", ".").rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise PipelineError(f"stage class {class_path!r} cannot be imported ({error})") from error
    if not (isinstance(found, type) and issubclass(found, Stage)):
        raise PipelineError(f"stage class {class_path!r} is not a flowvq.pipeline.stages.Stage")
    return found


def load_card(where: str | Path) -> DatasetCard:
    """A dataset card from a dataset root or a ``dataset.json`` file itself."""
    path = Path(where)
    if path.is_file():
        return DatasetCard.from_dict(json.loads(path.read_text()))
    return DatasetCard.load(path)


def mel_windows(mel: np.ndarray, context: int, card: DatasetCard) -> Tensor:
    """Mel windows ``[T, (2c+1) K, M]`` of log-mel columns ``[T, K, M]``, normalised with the card.

    The same windows the CoefficientDataModule cuts: frames ``t - c .. t + c`` around each
    frame, silence outside the audio, standardised with the train split's mel statistics.
    """
    t = len(mel)
    around = np.arange(t)[:, None] + np.arange(-context, context + 1)[None, :]  # (T, 2c+1)
    inside = (around >= 0) & (around < t)
    out = np.full((t, 2 * context + 1, *mel.shape[1:]), SILENCE, dtype=np.float32)
    out[inside] = mel[around[inside]]
    out = out.reshape(t, -1, mel.shape[-1])  # (T, C, M)
    mean = np.asarray(card.stats.mel_mean, dtype=np.float32)
    std = np.asarray(card.stats.mel_std, dtype=np.float32)
    return torch.from_numpy((out - mean) / std)


@dataclass
class EmotionRequest:
    """What the user asked for: one emotion, a weighted mix of several, or a reference's code.

    Attributes:
        emotion: a name (``"happy"``) or None for a label-free draw.
        weights: ``{name: weight}`` mixing emotions (overrides ``emotion``).
        intensity: level 0..2 (MEAD level_1..3), or a float factor along neutral -> emotion.
        reference: expression coefficients ``[T, E]`` (dataset units) of a reference clip whose
            emotion is transferred.
    """

    emotion: str | None = "neutral"
    weights: dict[str, float] | None = None
    intensity: float = 2
    reference: np.ndarray | None = None

    def describe(self) -> str:
        if self.reference is not None:
            return "transferred from the reference"
        if self.weights:
            return " + ".join(f"{w:g} {name}" for name, w in self.weights.items()) + f", intensity {self.intensity:g}"
        return f"{self.emotion}, intensity {self.intensity:g}"


@dataclass
class Stage:
    """A trained model in a pipeline role. Subclasses set ``ROLE`` and implement :meth:`load`
    and the role's method (``expression``/``motion``: :meth:`generate`; ``renderer``: :meth:`render`).

    Attributes:
        name: the role it fills in this pipeline.
        checkpoint: the checkpoint it was loaded from.
        card: the dataset card it was trained on (units, audio features, names).
        model: the LightningModule.
    """

    ROLE: ClassVar[str] = ""
    #: A renderer that draws the face of a source photo (False: a person-specific generator).
    NEEDS_SOURCE: ClassVar[bool] = True
    name: str
    checkpoint: Path
    card: DatasetCard
    model: Any
    card_source: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(
        cls, name: str, checkpoint: str | Path, card: str | Path | None = None, device: str = "cpu", **options: Any
    ) -> Stage:
        """Load the model and its dataset card (``card``: a root or ``dataset.json``; default: the
        data root recorded in the checkpoint)."""
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise PipelineError(
                f"stage {name!r}: checkpoint {str(checkpoint)!r} does not exist; train it with `flowvq fit` "
                "or correct the path in the pipeline YAML"
            )
        model = cls.load(checkpoint, device)
        if card is None:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get(
                "datamodule_hyper_parameters", {}
            )
            card = saved.get("root")
            if card is None:
                raise PipelineError(
                    f"stage {name!r}: {str(checkpoint)!r} records no dataset; name its dataset root or "
                    f"{CARD_NAME} with `card:` in the pipeline YAML"
                )
        try:
            loaded = load_card(card)
        except DatasetError as error:
            raise PipelineError(
                f"stage {name!r}: the dataset card of {str(checkpoint)!r} cannot be read ({error}); "
                f"name the {CARD_NAME} it was trained with under `card:` in the pipeline YAML"
            ) from error
        if loaded.stats is None:
            raise PipelineError(f"stage {name!r}: the card at {str(card)!r} has no train statistics")
        stage = cls(name, checkpoint, loaded, model, str(card), options)
        stage.check()
        return stage

    @classmethod
    def load(cls, checkpoint: Path, device: str) -> Any:
        raise NotImplementedError

    def dims(self) -> dict[str, int]:
        """The sizes this stage consumes or produces (``exp_dim``, ``pose_dim``, ...)."""
        return {}

    def check(self) -> None:
        """Refuse a checkpoint whose sizes differ from its own card's (naming both)."""
        have = self.card.dims()
        wrong = {k: (v, have[k]) for k, v in self.dims().items() if k in have and v != have[k]}
        if wrong:
            details = ", ".join(f"{k}={a} in the checkpoint but {b} in the card" for k, (a, b) in wrong.items())
            raise PipelineError(
                f"stage {self.name!r} ({self.checkpoint}) does not match its dataset card {self.card_source!r}: {details}"
            )


def _normal(card: DatasetCard, key: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.asarray(getattr(card.stats, f"{key}_mean"), dtype=np.float32),
        np.asarray(getattr(card.stats, f"{key}_std"), dtype=np.float32),
    )


class _FlowStage(Stage):
    """A CoefficientFlow checkpoint (ExpFlow or PoseFlow)."""

    FIELD: ClassVar[str] = ""

    @classmethod
    def load(cls, checkpoint: Path, device: str) -> Any:
        from flowvq.lightning_modules.coefficient_flow import CoefficientFlow

        try:
            # weights_only=False: a checkpoint also holds the DataModule's hparams (paths)
            model = CoefficientFlow.load_from_checkpoint(checkpoint, map_location=device, weights_only=False)
        except (KeyError, TypeError, RuntimeError) as error:
            raise PipelineError(f"{str(checkpoint)!r} is not a CoefficientFlow checkpoint ({error})") from error
        if model.hparams.field != cls.FIELD:
            other = {"exp": "an ExpFlow", "pose": "a PoseFlow"}[model.hparams.field]
            raise PipelineError(
                f"{str(checkpoint)!r} is {other} checkpoint (field={model.hparams.field!r}), not a {cls.__name__[:-5]}"
            )
        return model.eval()

    def dims(self) -> dict[str, int]:
        h = self.model.hparams
        out = {"mel_bins": h.mel_bins, "mel_per_frame": h.mel_per_frame}
        out["exp_dim" if self.FIELD == "exp" else "pose_dim"] = h.exp_dim if self.FIELD == "exp" else h.pose_dim
        return out

    @property
    def audio_context(self) -> int:
        from flowvq.pipeline.flow_samples import audio_context_of

        return audio_context_of(self.model)

    def windows(self, mel: np.ndarray, span: tuple[int, int] | None = None) -> Tensor:
        """Normalised mel windows of frames ``span`` (default: all) of log-mel ``[T, K, M]``."""
        windows = mel_windows(mel, self.audio_context, self.card)
        return windows if span is None else windows[span[0] : span[1]]

    def _to_units(self, x: Tensor) -> np.ndarray:
        return self.model.denormalize(x).float().cpu().numpy()

    def _prev(self, prev: np.ndarray | None) -> Tensor | None:
        """Frames (dataset units) to continue from, in the model's normalised units."""
        if prev is None:
            return None
        mean, std = self.model.coef_mean.cpu().numpy(), self.model.coef_std.cpu().numpy()
        return torch.from_numpy(((prev - mean) / std).astype(np.float32))


class ExpFlowStage(_FlowStage):
    """ExpFlow (FlowVQTalker): expression coefficients from audio and an emotion request."""

    ROLE = "expression"
    FIELD = "exp"

    def _mixed_code(self, request: EmotionRequest) -> Any:
        """A latent location mixing several emotions' (intensity-scaled) component locations."""
        from flowvq.lightning_modules.coefficient_flow import LatentCode

        net = self.model.net
        prior = net.prior
        if not hasattr(prior, "locations"):
            raise PipelineError(f"stage {self.name!r}: a {type(prior).__name__} prior has no emotions to mix")
        names = list(request.weights)
        index = torch.tensor([self.model._emotion(n) for n in names])
        weights = torch.tensor([float(request.weights[n]) for n in names])
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"emotion_weights must be non-negative with a positive sum, got {request.weights}")
        weights = weights / weights.sum()
        factor = self._factor(request.intensity, len(names))
        loc = (weights[:, None] * prior.locations(index, factor)).sum(0)
        posterior = torch.zeros(self.model.num_emotions)
        posterior[index] = weights
        main = int(index[int(weights.argmax())])
        return LatentCode(loc.detach(), loc.detach()[None], posterior, main)

    def _factor(self, intensity: float, count: int) -> Tensor | None:
        if float(intensity).is_integer() and 0 <= int(intensity) < self.model.hparams.intensity_levels:
            return self.model.net.intensity_factor(torch.full((count,), int(intensity), dtype=torch.long))
        return torch.full((count,), float(intensity))

    def generate(
        self,
        mel: np.ndarray,
        request: EmotionRequest,
        samples: int,
        seed: int,
        temperature: float = 0.8,
        prev: np.ndarray | None = None,
        span: tuple[int, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Expression coefficients ``{"exp": [N, T, E]}`` in dataset units for log-mel ``[T, K, M]``
        (frames ``span`` of it, continuing from ``prev`` ``[K', E]``)."""
        windows = self.windows(mel, span)
        code, scale, level = None, None, request.intensity
        if request.reference is not None:
            reference = self._prev(np.asarray(request.reference, dtype=np.float32))
            code = self.model.encode(reference)
        elif request.weights:
            code = self._mixed_code(request)
        elif not float(level).is_integer():
            scale, level = float(level), None
        x = self.model.sample(
            windows,
            emotion=request.emotion,
            intensity=None if level is None else int(level),
            num_samples=samples,
            temperature=temperature,
            seed=seed,
            intensity_scale=scale,
            code=code,
            prev=self._prev(prev),
        )
        return {"exp": self._to_units(x)}


class PoseFlowStage(_FlowStage):
    """PoseFlow (FlowVQTalker): head pose (and the blink dims it was trained with) from audio."""

    ROLE = "motion"
    FIELD = "pose"

    def generate(
        self,
        mel: np.ndarray,
        request: EmotionRequest | None,
        samples: int,
        seed: int,
        temperature: float = 0.8,
        prev: np.ndarray | None = None,
        span: tuple[int, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """``{"pose": [N, T, P], <extra exp name>: [N, T], <extra field>: [N, T] or [N, T, W]}``
        in dataset units (PoseFlow's blink; the motion flow's blink and gaze fields)."""
        windows = self.windows(mel, span)
        x = self.model.sample(
            windows, num_samples=samples, temperature=temperature, seed=seed + 7919, prev=self._prev(prev)
        )
        values = self._to_units(x)  # (N, T, P + extras)
        at = self.model.hparams.pose_dim
        out = {"pose": values[..., :at]}
        for name in self.model.hparams.extra_exp_names or []:
            out[name], at = values[..., at], at + 1
        from flowvq.data.schema import OPTIONAL_FIELDS  # the record's blink [T], gaze [T, 2]

        for name in self.model.hparams.get("extra_fields") or []:
            shape = OPTIONAL_FIELDS[name].shape
            width = 1 if len(shape) == 1 else int(shape[-1])
            out[name] = values[..., at] if width == 1 else values[..., at : at + width]
            at += width
        return out


class VQIGStage(Stage):
    """VQIG (FlowVQTalker): frames of a source face driven by coefficients."""

    ROLE = "renderer"

    @classmethod
    def load(cls, checkpoint: Path, device: str) -> Any:
        from flowvq.lightning_modules.vqig import VQIG

        try:
            model = VQIG.load_from_checkpoint(checkpoint, map_location=device, weights_only=False)
        except (KeyError, TypeError, RuntimeError) as error:
            raise PipelineError(f"{str(checkpoint)!r} is not a VQIG checkpoint ({error})") from error
        return model.eval()

    def dims(self) -> dict[str, int]:
        return {"exp_dim": self.model.hparams.exp_dim, "pose_dim": self.model.hparams.pose_dim}

    @property
    def resolution(self) -> int:
        return int(self.model.hparams.resolution)

    @torch.no_grad()
    def render(
        self,
        source: Any,
        coefficients: dict[str, np.ndarray],
        request: EmotionRequest | None = None,
        seed: int = 0,
        precision: str = "32",
        batch_size: int = 16,
    ) -> np.ndarray:
        """Frames uint8 ``[T, 3, H, W]`` of the source crop (``source.crop``, uint8 ``[H, W, 3]``)
        driven by ``coefficients["exp"]`` ``[T, E]`` and ``["pose"]`` ``[T, P]`` in dataset units."""
        device = self.model.device
        image = torch.from_numpy(np.ascontiguousarray(source.crop)).permute(2, 0, 1).float().div(127.5).sub(1)
        e, p = _normalised(self.card, coefficients)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            frames = self.model.render(image.to(device), e, p, batch_size=batch_size)
        return _to_uint8(frames)


def _normalised(card: DatasetCard, coefficients: dict[str, np.ndarray]) -> tuple[Tensor, Tensor]:
    """exp and pose of one sample in the card's normalised units (what image models take)."""
    exp_mean, exp_std = _normal(card, "exp")
    pose_mean, pose_std = _normal(card, "pose")
    e = torch.from_numpy(((coefficients["exp"] - exp_mean) / exp_std).astype(np.float32))
    p = torch.from_numpy(((coefficients["pose"] - pose_mean) / pose_std).astype(np.float32))
    return e, p


def _to_uint8(frames: Tensor) -> np.ndarray:
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


class GMEGStage(Stage):
    """GMEG (GMTalker): expression coefficients and the per-frame latent ``z_gm`` from audio and
    emotion weights (a point of the emotion simplex; an emotion + intensity is one such point)."""

    ROLE = "expression"

    @classmethod
    def load(cls, checkpoint: Path, device: str) -> Any:
        from flowvq.lightning_modules.gmeg import GMEG

        try:
            model = GMEG.load_from_checkpoint(checkpoint, map_location=device, weights_only=False)
        except (KeyError, TypeError, RuntimeError) as error:
            raise PipelineError(f"{str(checkpoint)!r} is not a GMEG checkpoint ({error})") from error
        return model.eval()

    def dims(self) -> dict[str, int]:
        h = self.model.hparams
        return {
            "exp_dim": h.exp_dim,
            "mel_bins": h.mel_bins,
            "mel_per_frame": h.mel_per_frame,
            "z_gm_dim": h.latent_dim,
        }

    @property
    def audio_context(self) -> int:
        columns, per_frame = int(self.model.mel_columns), self.model.hparams.mel_per_frame or 1
        return (columns // per_frame - 1) // 2 if columns else 2

    def generate(
        self,
        mel: np.ndarray,
        request: EmotionRequest,
        samples: int,
        seed: int,
        temperature: float = 0.8,
        prev: np.ndarray | None = None,
        span: tuple[int, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """``{"exp": [N, T, E], "z_gm": [N, T, Z]}`` (exp in dataset units); ``prev`` is unused
        (GMEG is not autoregressive: a chunk sees its own audio window)."""
        if request.reference is not None:
            raise ValueError("GMEG has no emotion transfer from a reference: give --emotion or --emotion_weights")
        windows = mel_windows(mel, self.audio_context, self.card)
        windows = windows if span is None else windows[span[0] : span[1]]
        emotion, intensity, weights = request.emotion, request.intensity, request.weights
        if weights is None and not float(intensity).is_integer():  # a factor: that share of the emotion
            factor = min(max(float(intensity), 0.0), 1.0)
            weights = {emotion: factor, self.model.hparams.neutral_emotion: 1.0 - factor}
        kwargs = {"emotion_weights": weights} if weights else {"emotion": emotion, "intensity": int(intensity)}
        z = self.model.latent(windows, num_samples=samples, temperature=temperature, seed=seed, **kwargs)
        exp = self.model.decode(z, denormalize=True)
        return {"exp": exp.float().cpu().numpy(), "z_gm": z.float().cpu().numpy()}


class StyleUNetHeadStage(Stage):
    """GMTalker's person-specific head generator: that person's frames from coefficients, emotion
    weights and GMEG's ``z_gm`` (no source photo: the person is the one it was trained on)."""

    ROLE = "renderer"
    NEEDS_SOURCE = False

    @classmethod
    def load(cls, checkpoint: Path, device: str) -> Any:
        from flowvq.lightning_modules.styleunet import StyleUNetHead

        try:
            model = StyleUNetHead.load_from_checkpoint(checkpoint, map_location=device, weights_only=False)
        except (KeyError, TypeError, RuntimeError) as error:
            raise PipelineError(f"{str(checkpoint)!r} is not a StyleUNetHead checkpoint ({error})") from error
        return model.eval()

    def dims(self) -> dict[str, int]:
        h = self.model.hparams
        out = {"exp_dim": h.exp_dim, "pose_dim": h.pose_dim}
        if h.z_gm_dim:
            out["z_gm_dim"] = h.z_gm_dim
        return out

    @property
    def resolution(self) -> int:
        return int(self.model.hparams.resolution)

    @torch.no_grad()
    def render(
        self,
        source: Any,
        coefficients: dict[str, np.ndarray],
        request: EmotionRequest | None = None,
        seed: int = 0,
        precision: str = "32",
        batch_size: int = 16,
    ) -> np.ndarray:
        """Frames uint8 ``[T, 3, R, R]`` of one sample's coefficients (``source`` is not used)."""
        e, p = _normalised(self.card, coefficients)
        weights: Any = "neutral"
        if request is not None:
            weights = request.weights or request.emotion or "neutral"
        z_gm = coefficients.get("z_gm") if self.model.hparams.z_gm_dim else None
        device = self.model.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            frames = self.model.render(
                e, p, weights, None if z_gm is None else torch.from_numpy(z_gm), seed=seed, batch_size=batch_size
            )
        return _to_uint8(frames)
