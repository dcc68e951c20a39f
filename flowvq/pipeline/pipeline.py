"""A chain of trained stages, loaded from a pipeline YAML: photo + speech -> talking-face frames.

A pipeline YAML names each role's stage and checkpoint (see :mod:`flowvq.pipeline.stages`)::

    name: flowvqtalker
    card: null                 # dataset root or dataset.json; null: the root each checkpoint records
    stages:
      expression: {kind: expflow, checkpoint: runs/expflow/last.ckpt}
      motion: {kind: poseflow, checkpoint: runs/poseflow/last.ckpt}
      renderer: {kind: vqig, checkpoint: runs/vqig/last.ckpt}
    sampling: {temperature: 0.8}
    framing: null              # {centre: [x, y], half: h}: where faces sit in the crops; null: measured

A stage may give ``class_path`` (an adapter class) instead of ``kind`` and its own ``card``.
Relative paths are read from the YAML's folder where they exist there, else from the current directory.

Example::

    from flowvq.pipeline import Pipeline

    pipeline = Pipeline.from_yaml("runs/demo/pipeline.yaml")
    result = pipeline.generate("runs/demo/inputs/photo.png", "runs/demo/inputs/speech.wav", emotion="happy")
    print(result.frames.shape, result.fps)  # (1, T, 3, 64, 64) 25.0
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from flowvq.data.video import MediaError
from flowvq.pipeline.inputs import (
    SILENT_PEAK,
    Framing,
    SourceFace,
    Speech,
    aligned_source,
    load_photo,
    load_speech,
    speech_from_waveform,
)
from flowvq.pipeline.stages import ROLES, EmotionRequest, PipelineError, Stage, stage_class

__all__ = ["GenerationResult", "Pipeline", "PipelineError", "StreamChunk", "load_reference"]


@dataclass
class GenerationResult:
    """What :meth:`Pipeline.generate` returns.

    Attributes:
        frames: uint8 ``[N, T, 3, H, W]`` (N samples, T frames at ``fps``); ``None`` when the
            pipeline ran without rendering (``render=False``).
        coefficients: ``{"exp": [N, T, E], "pose": [N, T, P], ...}`` float32 in the dataset's
            units (as the shards hold them).
        fps: frames per second (the dataset card's, 25).
        audio: float32 mono waveform at ``sample_rate`` (what the frames are synchronised to).
        seeds: the seed of each sample (sample k used ``seed + k``).
        seconds: wall-clock seconds per stage (``audio``, ``face``, ``expression``, ``motion``,
            ``renderer``) and ``total``.
        source: the source face (crop, landmarks, the photo and the crop's matrix).
        emotion: the request, in words.
        notes: what the user should be told (e.g. several faces in the photo).
    """

    frames: np.ndarray | None
    coefficients: dict[str, np.ndarray]
    fps: float
    audio: np.ndarray
    sample_rate: int
    seeds: list[int]
    seconds: dict[str, float]
    source: SourceFace | None
    emotion: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.coefficients["exp"].shape[1])

    @property
    def real_time_factor(self) -> float:
        """Generation seconds per second of audio (below 1: faster than real time)."""
        return self.seconds.get("total", 0.0) / max(len(self.audio) / self.sample_rate, 1e-9)

    def write_video(self, path: str | Path, sample: int = 0, paste_back: bool = False) -> Path:
        """Write sample ``sample`` as an mp4 (H.264, the audio muxed as AAC) at ``fps``;
        ``paste_back``: the face pasted back into the source photo, at the photo's size."""
        from flowvq.pipeline.generate import VideoWriter
        from flowvq.pipeline.generate import paste_back as paste

        if self.frames is None:
            raise ValueError("this result has no frames (generated with render=False)")
        frames = np.ascontiguousarray(self.frames[sample].transpose(0, 2, 3, 1))  # (T, H, W, 3)
        if paste_back:
            if self.source is None or self.source.matrix is None:
                raise ValueError("paste_back needs the photo the face was cropped from")
            frames = paste(frames, self.source.photo, self.source.matrix)
        writer = VideoWriter(path, frames.shape[2], frames.shape[1], self.fps, self.sample_rate)
        writer.write(frames, self.audio)
        return writer.close()


def _resolve(path: str | Path, base: Path) -> Path:
    """A relative path from the YAML's folder where it exists there, else from the current directory."""
    path = Path(path).expanduser()
    if not path.is_absolute() and (base / path).exists():
        return base / path
    return path


@contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start


class Pipeline:
    """Trained stages chained: speech + a photo (+ an emotion) -> coefficients -> frames.

    Build with :meth:`from_yaml` (or :meth:`from_config` with a dict). Stages are keyed by role
    (``expression``, ``motion``, ``renderer``; see :mod:`flowvq.pipeline.stages`); a pipeline
    without a renderer generates coefficients only.

    Arguments:
        stages: role -> loaded :class:`~flowvq.pipeline.stages.Stage`.
        name: the pipeline's name.
        temperature: spread of the flows' latent draws.
        framing: where faces sit in the renderer's crops (None: measured from its dataset when
            the dataset is at hand, else FFHQ crops).
        precision: ``"32"`` or ``"bf16"`` (the renderer under bf16 autocast; flows sample in fp32).
        check_datasets: refuse stages trained on differently named datasets.
    """

    def __init__(
        self,
        stages: dict[str, Stage],
        name: str = "pipeline",
        temperature: float = 0.8,
        framing: Framing | None = None,
        precision: str = "32",
        check_datasets: bool = True,
    ) -> None:
        missing = [role for role in ("expression",) if role not in stages]
        if missing:
            raise PipelineError(f"pipeline {name!r} has no {missing[0]!r} stage (roles: {', '.join(ROLES)})")
        if precision not in ("32", "bf16"):
            raise ValueError(f"precision must be '32' or 'bf16', got {precision!r}")
        self.stages, self.name, self.temperature = stages, name, temperature
        self.precision = precision
        self.check_datasets = check_datasets
        self._framing = framing
        self.check()

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, device: str = "cpu", precision: str = "32") -> Pipeline:
        """Load every stage a pipeline YAML names, and check that they fit together.

        Raises:
            PipelineError: a missing checkpoint, an unknown stage kind, or stages whose sizes or
                datasets differ (the message names both stages).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pipeline YAML {str(path)!r} does not exist")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise PipelineError(f"pipeline YAML {str(path)!r} is not valid YAML ({error})") from error
        return cls.from_config(config, base=path.parent, device=device, precision=precision, source=str(path))

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        base: str | Path = ".",
        device: str = "cpu",
        precision: str = "32",
        source: str = "pipeline config",
    ) -> Pipeline:
        """:meth:`from_yaml` of an already parsed YAML (``base``: where relative paths are also looked for)."""
        base = Path(base)
        specs = parse_config(config, source)
        default_card = config.get("card")
        stages: dict[str, Stage] = {}
        for role, spec in specs.items():
            cls_ = stage_class(spec.get("kind"), spec.get("class_path"))
            if cls_.ROLE != role:
                raise PipelineError(
                    f"{source}: stage {role!r} is a {cls_.__name__}, which fills the {cls_.ROLE!r} role"
                )
            if "checkpoint" not in spec:
                raise PipelineError(f"{source}: stage {role!r} names no checkpoint")
            card = spec.get("card", default_card)
            options = {k: v for k, v in spec.items() if k not in ("kind", "class_path", "checkpoint", "card")}
            stages[role] = cls_.from_checkpoint(
                role,
                _resolve(spec["checkpoint"], base),
                None if card is None else _resolve(card, base),
                device=device,
                **options,
            )
        framing = config.get("framing")
        return cls(
            stages,
            name=str(config.get("name", Path(source).stem)),
            temperature=float((config.get("sampling") or {}).get("temperature", 0.8)),
            framing=None if framing is None else Framing(tuple(framing["centre"]), float(framing["half"])),
            precision=precision,
            check_datasets=bool(config.get("check_datasets", True)),
        )

    def check(self) -> None:
        """Refuse stages that do not fit together, naming both: sizes, names of the dims, audio
        features, frame rate and (with ``check_datasets``) the dataset they were trained on."""
        pairs = [("motion", "expression"), ("renderer", "expression"), ("renderer", "motion")]
        for a, b in pairs:
            if a not in self.stages or b not in self.stages:
                continue
            sa, sb = self.stages[a], self.stages[b]
            problems = []
            da, db = sa.dims(), sb.dims()
            for key in sorted(set(da) & set(db)):
                if da[key] != db[key]:
                    problems.append(f"{key} {da[key]} vs {db[key]}")
            ca, cb = sa.card, sb.card
            if "renderer" in (a, b) and "expression" in (a, b) and ca.exp_names != cb.exp_names:
                problems.append(f"expression dims {ca.exp_names} vs {cb.exp_names}")
            if "renderer" in (a, b) and "motion" in (a, b) and ca.pose_names != cb.pose_names:
                problems.append(f"pose dims {ca.pose_names} vs {cb.pose_names}")
            if a == "motion" and ca.audio != cb.audio:
                problems.append(f"audio features {ca.audio} vs {cb.audio}")
            if ca.fps != cb.fps:
                problems.append(f"fps {ca.fps:g} vs {cb.fps:g}")
            if self.check_datasets and (ca.name, ca.coefficient_source) != (cb.name, cb.coefficient_source):
                problems.append(
                    f"datasets {ca.name!r} ({ca.coefficient_source}) vs {cb.name!r} ({cb.coefficient_source}) "
                    "(set check_datasets: false if they share their coefficient space)"
                )
            if problems:
                raise PipelineError(
                    f"pipeline {self.name!r}: stage {a!r} ({type(sa).__name__}, {sa.checkpoint}) and stage {b!r} "
                    f"({type(sb).__name__}, {sb.checkpoint}) do not match: " + "; ".join(problems)
                )

    # -- properties ---------------------------------------------------------------------------

    @property
    def card(self):
        """The expression stage's dataset card (audio features, fps, emotion names)."""
        return self.stages["expression"].card

    @property
    def fps(self) -> float:
        return float(self.card.fps)

    @property
    def resolution(self) -> int | None:
        renderer = self.stages.get("renderer")
        return renderer.resolution if renderer is not None else None

    @property
    def framing(self) -> Framing:
        """Where faces sit in the renderer's crops: the YAML's ``framing``, else measured from
        the renderer's dataset (when it is at hand), else FFHQ crops."""
        if self._framing is None:
            from flowvq.pipeline.inputs import dataset_framing

            renderer = self.stages.get("renderer")
            root = Path(renderer.card_source) if renderer is not None else None
            if root is not None and root.is_file():
                root = root.parent
            try:
                self._framing = dataset_framing(root) if root is not None and root.is_dir() else Framing()
            except (OSError, ValueError, KeyError):
                self._framing = Framing()
        return self._framing

    def describe(self) -> dict[str, Any]:
        """Stages, checkpoints and datasets, for ``generate.json``."""
        return {
            "name": self.name,
            "stages": {
                role: {"class": type(s).__name__, "checkpoint": str(s.checkpoint), "dataset": s.card.name}
                for role, s in self.stages.items()
            },
            "temperature": self.temperature,
            "precision": self.precision,
            "framing": self.framing.to_dict() if "renderer" in self.stages else None,
        }

    # -- inputs -------------------------------------------------------------------------------

    def speech(self, audio: str | Path | np.ndarray | Speech) -> Speech:
        """:class:`Speech` of a file path, a waveform at the card's sample rate, or a Speech."""
        if isinstance(audio, Speech):
            return audio
        if isinstance(audio, (str, Path)):
            return load_speech(audio, self.card)
        return speech_from_waveform(np.asarray(audio), self.card)

    def source(self, image: str | Path | np.ndarray | SourceFace, aligned: bool = False) -> SourceFace:
        """The source face of a photo path or array (``aligned``: the image is already a crop)."""
        if isinstance(image, SourceFace):
            return image
        size = self.resolution or 256
        if aligned:
            return aligned_source(np.asarray(image), size)
        return load_photo(image, size, self.framing)

    def request(
        self,
        emotion: str | None = "neutral",
        emotion_weights: dict[str, float] | None = None,
        intensity: float = 2,
        reference: str | Path | np.ndarray | None = None,
    ) -> EmotionRequest:
        """Check an emotion request against the expression stage's emotions."""
        names = list(self.card.emotion_names)
        for name in [emotion] if emotion is not None and not emotion_weights else list(emotion_weights or {}):
            if name not in names:
                raise ValueError(f"unknown emotion {name!r}: expected one of {', '.join(names)}")
        if emotion_weights is not None and not emotion_weights:
            raise ValueError("emotion_weights is empty: give e.g. '{happy: 0.6, surprised: 0.4}'")
        if float(intensity) < 0:
            raise ValueError(f"intensity must be a level 0, 1, 2 or a non-negative factor, got {intensity}")
        ref = None
        if reference is not None:
            ref = (
                load_reference(reference, self.stages["expression"])
                if not isinstance(reference, np.ndarray)
                else reference
            )
            ref = np.asarray(ref, dtype=np.float32)
            if ref.ndim != 2 or ref.shape[1] != self.card.exp_dim:
                raise ValueError(f"reference expression must be [T, {self.card.exp_dim}], got {tuple(ref.shape)}")
        return EmotionRequest(emotion, dict(emotion_weights) if emotion_weights else None, intensity, ref)

    # -- generation ---------------------------------------------------------------------------

    def coefficients(
        self,
        mel: np.ndarray,
        request: EmotionRequest,
        samples: int,
        seed: int,
        seconds: dict[str, float],
        prev: dict[str, np.ndarray] | None = None,
        span: tuple[int, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Every coefficient stage on log-mel ``[T, K, M]`` (frames ``span`` of it, continuing from
        ``prev``): ``{"exp": [N, T, E], "pose": [N, T, P], "motion": [N, T, P + extras]}``."""
        prev = prev or {}
        with _timed(seconds, "expression"):
            out = self.stages["expression"].generate(
                mel, request, samples, seed, self.temperature, prev=prev.get("exp"), span=span
            )
        if "motion" in self.stages:
            with _timed(seconds, "motion"):
                motion = self.stages["motion"].generate(
                    mel, request, samples, seed, self.temperature, prev=prev.get("motion"), span=span
                )
            out["pose"] = motion.pop("pose")
            names = list(self.card.exp_names)
            columns = [v[..., None] if v.ndim == 2 else v for v in motion.values()]
            out["motion"] = np.concatenate([out["pose"], *columns], -1)  # the motion stage's own vector
            for name, values in motion.items():
                if name in names:  # the motion stage's blinks replace the expression's
                    out["exp"][..., names.index(name)] = values
                else:  # other motion fields (gaze) for renderers that take them
                    out[name] = values
        else:
            stats = self.card.stats
            t = out["exp"].shape[1]
            out["pose"] = np.broadcast_to(
                np.asarray(stats.pose_mean, np.float32), (samples, t, len(stats.pose_mean))
            ).copy()
        return out

    def generate(
        self,
        image: str | Path | np.ndarray | SourceFace | None,
        audio: str | Path | np.ndarray | Speech,
        emotion: str | None = "neutral",
        emotion_weights: dict[str, float] | None = None,
        intensity: float = 2,
        samples: int = 1,
        seed: int = 0,
        reference: str | Path | np.ndarray | None = None,
        aligned: bool = False,
        render: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> GenerationResult:
        """Generate ``samples`` talking-face videos of the face in ``image`` saying ``audio``.

        Arguments:
            image: a photo (path or RGB uint8 ``[H, W, 3]``; the largest face is cropped as the
                dataset's frames are), an aligned crop with ``aligned=True`` (e.g. a dataset
                frame), or a :class:`SourceFace`. May be None with ``render=False``.
            audio: a speech file (wav, mp3, m4a, mp4, ...), a mono waveform at the card's
                sample rate (float in [-1, 1] or int16), or a :class:`Speech`.
            emotion: one of the card's emotion names (``neutral``, ``angry``, ``contempt``,
                ``disgusted``, ``fear``, ``happy``, ``sad``, ``surprised``).
            emotion_weights: ``{name: weight}``: a mix of emotions (overrides ``emotion``).
            intensity: 0, 1, 2 (MEAD's levels) or a float factor along neutral -> emotion.
            samples: N videos, sample k drawn with seed ``seed + k`` (so sample k is the same
                whatever N).
            seed: the first sample's seed.
            reference: emotion transfer: expression coefficients ``[T, E]`` (dataset units), an
                ``.npz`` holding ``exp`` (e.g. a previous ``coefficients.npz`` or a clip record),
                or a video (datasets whose coefficients come from landmarks, ``mediapipe-pca``).
            aligned: ``image`` is already a crop like the dataset's frames.
            render: False: coefficients only (``frames`` is None).
            progress: called with the number of frames rendered after each batch.

        Returns:
            :class:`GenerationResult`: ``frames`` uint8 ``[N, T, 3, H, W]``, ``coefficients``,
            ``fps``, ``audio``, ``seeds``, per-stage ``seconds``.

        Raises:
            MediaError, FaceError, ValueError: unreadable or silent audio, no face, an unknown emotion.
        """
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        request = self.request(emotion, emotion_weights, intensity, reference)
        with _timed(seconds, "audio"):
            speech = self.speech(audio)
        source = None
        render = render and "renderer" in self.stages
        if render and self.stages["renderer"].NEEDS_SOURCE:
            if image is None:
                raise ValueError("an image is needed to render frames (or pass render=False)")
            with _timed(seconds, "face"):
                source = self.source(image, aligned)
        coefficients: dict[str, list[np.ndarray]] = {}
        for k in range(samples):  # one sample at a time: sample k does not depend on N
            one = self.coefficients(speech.mel, request, 1, seed + k, seconds)
            for key, value in one.items():
                coefficients.setdefault(key, []).append(value)
        stacked = {key: np.concatenate(values) for key, values in coefficients.items()}
        frames = None
        if render:
            renderer = self.stages["renderer"]
            rendered = []
            with _timed(seconds, "renderer"):
                for k in range(samples):
                    out = []
                    for begin in range(0, speech.num_frames, 25):
                        stop = min(begin + 25, speech.num_frames)
                        part = {key: value[k, begin:stop] for key, value in stacked.items()}
                        out.append(renderer.render(source, part, request, seed + k, self.precision))
                        if progress is not None:
                            progress(stop - begin)
                    rendered.append(np.concatenate(out))
            frames = np.stack(rendered)
        seconds["total"] = time.perf_counter() - start
        return GenerationResult(
            frames=frames,
            coefficients=stacked,
            fps=self.fps,
            audio=speech.waveform,
            sample_rate=speech.sample_rate,
            seeds=[seed + k for k in range(samples)],
            seconds={k: round(v, 4) for k, v in seconds.items()},
            source=source,
            emotion=request.describe(),
            notes=list(source.notes) if source is not None else [],
        )

    def stream(
        self,
        image: str | Path | np.ndarray | SourceFace,
        audio: str | Path | Iterator[np.ndarray],
        emotion: str | None = "neutral",
        emotion_weights: dict[str, float] | None = None,
        intensity: float = 2,
        samples: int = 1,
        seed: int = 0,
        reference: str | Path | np.ndarray | None = None,
        aligned: bool = False,
        chunk_frames: int = 25,
    ) -> Iterator[StreamChunk]:
        """Generate while the audio is read: chunks of about ``chunk_frames`` frames, each as soon
        as its audio (and the flows' look-ahead of ``audio_context`` frames) has arrived.

        Arguments as :meth:`generate`; ``audio`` is a file path (decoded block by block) or an
        iterator of float32 blocks at the card's sample rate. Each chunk continues the previous
        one's coefficients (the flows' previous-frame context), sample k with seeds derived
        from ``seed + k``; the mel features equal those of the whole recording.
        """
        from flowvq.pipeline.inputs import StreamingMel, iter_audio

        request = self.request(emotion, emotion_weights, intensity, reference)
        renderer = self.stages.get("renderer")
        source = self.source(image, aligned) if renderer is not None and renderer.NEEDS_SOURCE else None
        blocks = iter_audio(audio, self.card.audio.sample_rate) if isinstance(audio, (str, Path)) else audio
        context = max(getattr(s, "audio_context", 0) for s in self.stages.values())
        mel_stream = StreamingMel(self.card)
        mel = np.zeros((0, self.card.audio.mel_per_frame, self.card.audio.n_mels), dtype=np.float32)
        done, index = 0, 0
        prev: list[dict[str, np.ndarray]] = [{} for _ in range(samples)]
        heard = 0
        finished = False
        while not finished:
            try:
                block = next(blocks)
                mel_stream.push(block)
                heard += len(block)
            except StopIteration:
                mel_stream.finish()
                finished = True
            mel = np.concatenate([mel, mel_stream.ready()])
            if finished and (heard == 0 or float(np.abs(mel_stream.audio).max()) < SILENT_PEAK):
                raise MediaError(
                    f"{audio if isinstance(audio, (str, Path)) else 'the audio'}: the audio is silent or empty; give a recording of speech"
                )
            stop = len(mel) if finished else len(mel) - context
            if stop - done < (1 if finished else chunk_frames):
                continue
            seconds: dict[str, float] = {}
            start = time.perf_counter()
            window = mel[: min(len(mel), stop + context)]
            # the chunk's frames with their audio context; the previous chunk's last frames as history
            parts: dict[str, list[np.ndarray]] = {}
            for k in range(samples):
                one = self.coefficients(window, request, 1, seed + k + 7_919 * index, seconds, prev[k], (done, stop))
                prev[k] = (
                    {"exp": one["exp"][0, -8:], "motion": one["motion"][0, -8:]}
                    if "motion" in one
                    else {"exp": one["exp"][0, -8:]}
                )
                for key, value in one.items():
                    parts.setdefault(key, []).append(value)
            coefficients = {key: np.concatenate(values) for key, values in parts.items()}
            frames = None
            if renderer is not None:
                with _timed(seconds, "renderer"):
                    frames = np.stack(
                        [
                            renderer.render(
                                source,
                                {key: value[k] for key, value in coefficients.items()},
                                request,
                                seed + k,
                                self.precision,
                            )
                            for k in range(samples)
                        ]
                    )
            seconds["total"] = time.perf_counter() - start
            step = mel_stream.step
            yield StreamChunk(
                index, done, frames, coefficients, mel_stream.audio[done * step : stop * step], seconds, source
            )
            done, index = stop, index + 1


@dataclass
class StreamChunk:
    """One chunk of :meth:`Pipeline.stream`: frames ``[N, t, 3, H, W]`` from frame ``start`` on,
    their coefficients, the audio under them and the seconds each stage took."""

    index: int
    start: int
    frames: np.ndarray | None
    coefficients: dict[str, np.ndarray]
    audio: np.ndarray
    seconds: dict[str, float]
    source: SourceFace | None


def parse_config(config: Any, source: str = "pipeline config") -> dict[str, dict[str, Any]]:
    """The ``stages`` of a parsed pipeline YAML, checked for shape (role -> spec); loads nothing."""
    if not isinstance(config, dict) or not isinstance(config.get("stages"), dict):
        raise PipelineError(f"{source}: expected a mapping with `stages: {{role: {{kind, checkpoint}}}}`")
    specs = config["stages"]
    unknown = sorted(set(specs) - set(ROLES))
    if unknown:
        raise PipelineError(f"{source}: unknown stage roles {unknown}; expected some of {', '.join(ROLES)}")
    for role, spec in specs.items():
        if not isinstance(spec, dict) or not (spec.get("kind") or spec.get("class_path")):
            raise PipelineError(f"{source}: stage {role!r} needs `kind` (or `class_path`) and `checkpoint`")
    return {role: specs[role] for role in ROLES if role in specs}


def load_reference(reference: str | Path, stage: Stage) -> np.ndarray:
    """Expression coefficients ``[T, E]`` (dataset units) of a reference for emotion transfer.

    ``.npz``: its ``exp`` array (``[T, E]``, or ``[N, T, E]`` of which the first is taken), as in
    a ``coefficients.npz`` that ``flowvq generate`` wrote or a clip record's ``exp``; ``.npy``:
    the array itself. A video: its expression measured with the dataset's landmark PCA basis,
    possible only for ``mediapipe-pca`` datasets (SynthTalk's coefficients are not measurable
    from pixels).
    """
    path = Path(reference)
    if not path.is_file():
        raise FileNotFoundError(f"reference {str(path)!r} does not exist")
    if path.suffix in (".npz", ".npy"):
        data = np.load(path)
        if path.suffix == ".npz":
            if "exp" not in data:
                raise ValueError(f"reference {str(path)!r} holds no `exp` array (it has {', '.join(data.files)})")
            data = data["exp"]
        data = np.asarray(data, dtype=np.float32)
        return data[0] if data.ndim == 3 else data
    card = stage.card
    if card.coefficient_source != "mediapipe-pca":
        raise ValueError(
            f"reference {str(path)!r}: the expression stage's dataset {card.name!r} has {card.coefficient_source} "
            "coefficients, which cannot be measured from a video; give an .npz with an `exp` array "
            "(e.g. a coefficients.npz of `flowvq generate` or a clip record's exp)"
        )
    from flowvq.pipeline.reference import expression_of_video

    return expression_of_video(path, stage.card_source, card)
