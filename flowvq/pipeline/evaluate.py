"""``flowvq evaluate``: score a pipeline's videos against the ground truth of a held-out split.

Protocol (stated in every table):

- every clip of the split (held-out speakers: splits are by speaker) is generated from a
  **source frame of the same speaker** with **the clip's own audio, emotion and intensity**;
- ``source="neutral"`` (default): the source is frame 0 of the speaker's first neutral clip
  other than the one scored (else the speaker's first other clip, else the clip's own frame 0),
  so the source carries identity but not the clip's emotion, as in the emotional talking-face
  papers' MEAD protocol; ``source="first_frame"``: the clip's own frame 0 (reconstruction);
- image metrics (PSNR, SSIM, LPIPS, FID, CPBD, M-/F-LMD, LSE, Acc_emo) are scored on sample 0
  at the dataset's frame resolution (generated frames of another size are resized), over the
  frames both videos have; ``samples >= 2`` adds the diversity of the expression coefficients
  of N samples (std across samples, in train-normalised units, beside the ground truth's own
  spread over time);
- two reference rows: **source copy** (the source frame held still for the whole clip: the
  floor a generator must beat) and **ground truth** (the real video scored as if generated:
  each metric's ceiling; its M-/F-LMD is the landmark detector's disagreement with the
  record's landmarks);
- the papers' reported MEAD figures are printed beside them, labelled as figures on other data.

Landmarks for M-/F-LMD and the mouth crops of SyncNet come from mediapipe FaceMesh run on the
scored video (frames where it finds no face take the record's landmarks for the crop and are
left out of LMD; the table counts them).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from flowvq.data.card import DatasetCard, DatasetError
from flowvq.data.schema import EMOTIONS, num_frames
from flowvq.datamodules.base import Normalizer, decode_frame

__all__ = ["REPORTED", "EvaluationTable", "evaluate", "evaluate_command", "source_clips"]

#: (key, column title); arrows say which way is better.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("psnr", "PSNR ↑"),
    ("ssim", "SSIM ↑"),
    ("lpips", "LPIPS ↓"),
    ("fid", "FID ↓"),
    ("m_lmd", "M-LMD ↓"),
    ("f_lmd", "F-LMD ↓"),
    ("cpbd", "CPBD ↑"),
    ("lse_d", "LSE-D ↓"),
    ("lse_c", "LSE-C ↑"),
    ("acc_emo", "Acc_emo ↑"),
    ("diversity", "Diversity"),
    ("eppl", "EPPL ↓"),
    ("epdv", "EPDV ↓"),
)

#: The papers' reported MEAD figures (/work/shared/PAPERS.md: a secondary summary, unverified),
#: on MEAD with the papers' own evaluation networks: not comparable with rows scored here.
REPORTED: dict[str, dict[str, float]] = {
    "FlowVQTalker, reported on MEAD": {
        "ssim": 0.689,
        "fid": 16.55,
        "m_lmd": 1.939,
        "f_lmd": 2.061,
        "cpbd": 0.181,
        "acc_emo": 0.715,
    },
}

GROUND_TRUTH = "ground truth"
SOURCE_COPY = "source copy"


@dataclass
class EvaluationTable:
    """Rows of metric values (floats, or a "not computed: ..." reason), with what they rest on."""

    rows: dict[str, dict[str, Any]]
    counts: dict[str, dict[str, int]]
    protocol: str
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "counts": self.counts,
            "reported": REPORTED,
            "protocol": self.protocol,
            "settings": self.settings,
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        def cell(value: Any) -> str:
            if value is None:
                return "—"
            if isinstance(value, str):
                return "n/c"
            if isinstance(value, float) and math.isinf(value):
                return "∞"
            if isinstance(value, float) and math.isnan(value):
                return "nan"
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"

        keys = [k for k, _ in COLUMNS if any(k in row for row in self.rows.values())]
        titles = dict(COLUMNS)
        lines = ["| row | " + " | ".join(titles[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for name, row in self.rows.items():
            lines.append(f"| {name} | " + " | ".join(cell(row.get(k)) for k in keys) + " |")
        for name, row in REPORTED.items():
            lines.append(f"| *{name}* | " + " | ".join(cell(row.get(k)) for k in keys) + " |")
        reasons = sorted({v for row in self.rows.values() for v in row.values() if isinstance(v, str)})
        out = ["\n".join(lines), ""]
        out.append(
            "*Reported* rows are the papers' figures on MEAD with their own evaluation networks "
            "(a secondary summary, unverified): figures on other data, not comparable with the rows above."
        )
        if reasons:
            out.append("n/c = " + "; ".join(reasons))
        out.append(f"Protocol: {self.protocol}")
        counts = "; ".join(f"{row}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for row, c in self.counts.items())
        out.append(f"Counts: {counts}")
        out.extend(self.notes)
        return "\n\n".join(out) + "\n"


def source_clips(records: list[dict], mode: str = "neutral") -> dict[str, str]:
    """For each clip id, the clip whose frame 0 is its source (see the module's protocol)."""
    if mode not in ("neutral", "first_frame"):
        raise ValueError(f"source must be 'neutral' or 'first_frame', got {mode!r}")
    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["clip_id"]):
        by_speaker[record["speaker"]].append(record)
    chosen = {}
    for record in records:
        clip = record["clip_id"]
        if mode == "first_frame":
            chosen[clip] = clip
            continue
        others = [r for r in by_speaker[record["speaker"]] if r["clip_id"] != clip]
        neutral = [r for r in others if r["emotion"] == 0]
        chosen[clip] = (neutral or others or [record])[0]["clip_id"]
    return chosen


def _frames(record: dict, size: int) -> np.ndarray:
    return np.stack([decode_frame(record, i, size, size) for i in range(num_frames(record))])  # (T, H, W, 3)


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames])


class _RowScores:
    """The metric objects of one row of the table."""

    def __init__(self, perceptual: dict[str, Any], with_diversity: bool, with_interpolation: bool) -> None:
        from flowvq.metrics.diversity import SampleDiversity
        from flowvq.metrics.emotion import VideoEmotionAccuracy
        from flowvq.metrics.image import FramePSNR, FrameSSIM
        from flowvq.metrics.interpolation import EPDV, EPPL
        from flowvq.metrics.landmarks import LandmarkDistance
        from flowvq.metrics.sharpness import CPBD
        from flowvq.metrics.sync import LipSyncScores

        self.psnr, self.ssim = FramePSNR(), FrameSSIM()
        self.m_lmd, self.f_lmd = LandmarkDistance("mouth"), LandmarkDistance("face")
        self.cpbd = CPBD()
        self.sync = LipSyncScores()
        self.emotion = VideoEmotionAccuracy()
        self.perceptual = perceptual
        self.diversity = SampleDiversity() if with_diversity else None
        self.eppl, self.epdv = (EPPL(), EPDV()) if with_interpolation else (None, None)
        self.clips = 0


class _Scorer:
    """Scores one video (a row's version of a clip) against the clip's ground truth."""

    def __init__(
        self,
        syncnet: Any,
        classifier: Any,
        cpbd_stride: int,
        weights: Path | None,
        device: str,
    ) -> None:
        from flowvq.data.face import FaceTracker

        self.syncnet, self.classifier = syncnet, classifier
        self.cpbd_stride = cpbd_stride
        self.weights = weights
        self.device = device
        self.tracker = FaceTracker(find_small_faces=False)
        self.missing_landmarks: dict[str, int] = defaultdict(int)

    def close(self) -> None:
        self.tracker.close()

    def perceptual(self) -> dict[str, Any]:
        from flowvq.metrics.perceptual import perceptual_metrics

        return perceptual_metrics(self.weights)

    def score(self, row: str, scores: _RowScores, video: np.ndarray, truth: np.ndarray, record: dict) -> dict[str, Any]:
        """Update ``scores`` with ``video [T, H, W, 3]`` against ``truth`` (same shape); per-clip values back."""
        from flowvq.metrics.image import to_unit
        from flowvq.metrics.landmarks import detect_landmarks, landmark_distances
        from flowvq.metrics.sync import sync_scores

        t = min(len(video), len(truth))
        video, truth = video[:t], truth[:t]
        generated, real = to_unit(video), to_unit(truth)
        scores.psnr.update(generated, real)
        scores.ssim.update(generated, real)
        for name, metric in scores.perceptual.items():
            if isinstance(metric, str):
                continue
            if name == "lpips":
                metric.update(generated.clamp(0, 1), real.clamp(0, 1))
            else:
                metric.update(real, real=True)
                metric.update(generated, real=False)
        clip: dict[str, Any] = {"frames": t}
        detected = detect_landmarks(video, self.tracker)  # (T, 68, 2), NaN where no face
        target = torch.as_tensor(record["landmarks"][:t])
        scores.m_lmd.update(torch.as_tensor(detected), target)
        scores.f_lmd.update(torch.as_tensor(detected), target)
        found = ~np.isnan(detected).reshape(t, -1).any(1)
        self.missing_landmarks[row] += int((~found).sum())
        if found.any():
            clip["m_lmd"] = float(landmark_distances(torch.as_tensor(detected[found]), target[found]).mean())
        scores.cpbd.update(torch.as_tensor(video[:: self.cpbd_stride]))
        if self.syncnet is not None:
            crops_from = np.where(found[:, None, None], detected, record["landmarks"][:t])
            if t >= self.syncnet.hparams.frames:
                distances = self.syncnet.offset_distances(_mouth(self.syncnet, video, crops_from), record["mel"][:t])
                scores.sync.update(distances)
                lse_d, lse_c, offset = sync_scores(distances)
                clip.update(lse_d=float(lse_d), lse_c=float(lse_c), offset=int(offset))
        if self.classifier is not None and record["emotion"] >= 0:
            probabilities = self.classifier.video_probabilities(video)
            scores.emotion.update(probabilities[None], torch.tensor([int(record["emotion"])]))
            clip["emotion_predicted"] = EMOTIONS[int(probabilities.argmax())]
        scores.clips += 1
        return clip


def _mouth(syncnet: Any, video: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    from flowvq.data.mouth import mouth_crops

    return mouth_crops(video, landmarks, syncnet.hparams.crop_size, syncnet.hparams.mouth_scale)


def _load(kind: str, path: str | Path | None, device: str) -> tuple[Any, str | None]:
    """A checkpoint of an evaluation network, or ``None`` and the reason it is not used."""
    config = {"syncnet": "configs/syncnet.yaml", "frame_emotion_classifier": "configs/frame_emotion_classifier.yaml"}
    config["emotion_classifier"] = "configs/emotion_classifier.yaml"
    flag = {"syncnet": "--syncnet", "frame_emotion_classifier": "--emotion_classifier"}.get(
        kind, "--coefficient_classifier"
    )
    if path is None:
        return None, f"not computed: no {flag} checkpoint (train one: flowvq fit --config {config[kind]})"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {str(path)!r} does not exist: give the .ckpt that `flowvq fit` saved")
    module = {
        "syncnet": ("flowvq.lightning_modules.syncnet", "SyncNet"),
        "frame_emotion_classifier": ("flowvq.lightning_modules.frame_emotion_classifier", "FrameEmotionClassifier"),
        "emotion_classifier": ("flowvq.lightning_modules.emotion_classifier", "EmotionClassifier"),
    }[kind]
    import importlib

    cls = getattr(importlib.import_module(module[0]), module[1])
    stored = torch.load(path, map_location=device, weights_only=False)
    if isinstance(stored, cls):  # a whole pickled module (torch.save(model)) rather than a Lightning checkpoint
        return stored.eval(), None
    if not isinstance(stored, dict) or "state_dict" not in stored:
        raise ValueError(f"{flag} {str(path)!r} is neither a Lightning checkpoint nor a saved {module[1]}")
    return cls.load_from_checkpoint(path, map_location=device).eval(), None


def _check_out(out: Path, overwrite: bool) -> None:
    names = ("evaluate.json", "evaluate.md", "clips.jsonl")
    taken = [n for n in names if (out / n).exists()]
    if taken and not overwrite:
        raise FileExistsError(
            f"--out {str(out)!r} already holds a previous evaluation ({', '.join(taken)}): "
            "choose another folder or pass --overwrite true"
        )


def evaluate(
    pipeline: Any,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = "eval",
    syncnet: str | Path | None = None,
    emotion_classifier: str | Path | None = None,
    coefficient_classifier: str | Path | None = None,
    weights: str | Path | None = None,
    samples: int = 3,
    seed: int = 0,
    source: str = "neutral",
    limit: int | None = None,
    baselines: bool = True,
    interpolation_steps: int = 5,
    cpbd_stride: int = 4,
    device: str = "cpu",
    precision: str = "32",
    overwrite: bool = False,
    progress: bool = True,
    name: str | None = None,
) -> EvaluationTable:
    """Score a pipeline's videos on a held-out split (see the module docstring for the protocol).

    Arguments:
        pipeline: a :class:`~flowvq.pipeline.Pipeline`, the path of a pipeline YAML, or None
            (only the source-copy and ground-truth rows).
        data: dataset root with frames.
        split: the split to score (``test``: held-out speakers).
        out: folder for ``evaluate.json``, ``evaluate.md`` and ``clips.jsonl`` (None: write nothing).
        syncnet, emotion_classifier: checkpoints of the evaluation networks
            (``configs/syncnet.yaml``, ``configs/frame_emotion_classifier.yaml``); without them
            LSE and Acc_emo say "not computed".
        coefficient_classifier: a coefficient emotion classifier checkpoint
            (``configs/emotion_classifier.yaml``): with it, EPPL/EPDV of emotion blends from
            neutral to each clip's emotion (``interpolation_steps`` steps; pipelines whose
            expression stage takes emotion weights, e.g. GMEG).
        weights: a torch hub folder with LPIPS's and FID's weights (:mod:`flowvq.metrics.perceptual`).
        samples: samples per clip for the diversity column (1: no diversity).
        seed: generation seed of every clip.
        source: ``neutral`` or ``first_frame`` (the protocol above).
        limit: score only ``limit`` clips, evenly spaced over the clips sorted by id (so every
            speaker and emotion of the split is in the subset).
        baselines: add the source-copy and ground-truth rows.
        cpbd_stride: CPBD on every n-th frame (it is the slowest metric).
        device, precision: for the pipeline and the evaluation networks.
        overwrite: replace a previous evaluation in ``out``.
        progress: a progress bar over clips.
        name: the pipeline's row name (default: the pipeline's name).

    Returns:
        :class:`EvaluationTable` (also written to ``out``).
    """
    from flowvq.data.shards import ClipShards
    from flowvq.metrics.perceptual import perceptual_metrics

    root = Path(data)
    card = DatasetCard.load(root)
    if split not in card.splits:
        raise ValueError(
            f"unknown split {split!r}: the dataset at {str(root)!r} has splits {sorted(card.splits)}; "
            "use --split test (held-out speakers) or one of those"
        )
    if not card.has_frames:
        raise ValueError(
            f"the dataset at {str(root)!r} ({card.name!r}) has no frames (frame_size = 0 in its dataset.json): "
            f"evaluate scores videos against real frames; re-create it with frames "
            f"(`flowvq synth --out {root} --overwrite` or the `flowvq preprocess` command that made it, frames on)"
        )
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if out is not None:
        out = Path(out)
        _check_out(out, overwrite)
    if pipeline is not None and not hasattr(pipeline, "generate"):
        from flowvq.pipeline.pipeline import Pipeline

        pipeline = Pipeline.from_yaml(pipeline, device=device, precision=precision)
    if pipeline is not None and pipeline.card.exp_dim != card.exp_dim:
        raise DatasetError(
            f"the pipeline's expression stage was trained with E={pipeline.card.exp_dim} "
            f"({pipeline.card.name!r}) but {str(root)!r} ({card.name!r}) has E={card.exp_dim}: "
            "evaluate a pipeline on data of its own coefficient space"
        )
    sync_model, sync_reason = _load("syncnet", syncnet, device)
    classifier, classifier_reason = _load("frame_emotion_classifier", emotion_classifier, device)
    coefficient_model, coefficient_reason = _load("emotion_classifier", coefficient_classifier, device)
    if sync_model is not None:
        for key, value in (("mel_bins", card.audio.n_mels), ("mel_per_frame", card.audio.mel_per_frame)):
            if sync_model.hparams[key] != value:
                raise DatasetError(
                    f"the SyncNet checkpoint {str(syncnet)!r} was trained with {key}={sync_model.hparams[key]} "
                    f"but {str(root)!r} has {key}={value}: use a SyncNet trained on this dataset's audio features"
                )
    normalizer = Normalizer.from_card(card, root)

    shards = ClipShards(root, split)
    records = sorted((shards[i] for i in range(len(shards))), key=lambda r: r["clip_id"])
    if not records:
        raise ValueError(f"the {split!r} split of {str(root)!r} has no clips")
    by_id = {r["clip_id"]: r for r in records}
    sources = source_clips(records, source)
    scored = records
    if limit and limit < len(records):  # evenly spaced over the sorted clips: every speaker and emotion
        scored = [records[int(i)] for i in np.linspace(0, len(records) - 1, limit).round()]
    size = card.frame_size

    row_names: list[str] = []
    pipeline_row = None
    if pipeline is not None:
        pipeline_row = name or getattr(pipeline, "name", None) or "pipeline"
        row_names.append(pipeline_row)
    if baselines:
        row_names += [SOURCE_COPY, GROUND_TRUTH]
    if not row_names:
        raise ValueError("nothing to score: give a pipeline or keep baselines on")
    interpolate = coefficient_model is not None and pipeline is not None
    rows = {
        row: _RowScores(
            perceptual_metrics(weights), row == pipeline_row and samples >= 2, row == pipeline_row and interpolate
        )
        for row in row_names
    }
    scorer = _Scorer(sync_model, classifier, cpbd_stride, None if weights is None else Path(weights), device)
    clips_out: list[dict[str, Any]] = []
    seconds = defaultdict(float)
    notes: list[str] = []
    iterator: Any = scored
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(scored, desc="evaluate", unit="clip")
    try:
        for record in iterator:
            truth = _frames(record, size)
            source_record = by_id[sources[record["clip_id"]]]
            source_frame = decode_frame(source_record, 0, size, size)
            emotion = EMOTIONS[record["emotion"]] if record["emotion"] >= 0 else "neutral"
            intensity = max(int(record["intensity"]), 0)
            entry: dict[str, Any] = {"clip_id": record["clip_id"], "source": sources[record["clip_id"]]}
            for row, scores in rows.items():
                start = time.perf_counter()
                if row == GROUND_TRUTH:
                    video = truth
                elif row == SOURCE_COPY:
                    video = np.repeat(source_frame[None], len(truth), axis=0)
                else:
                    result = pipeline.generate(
                        source_frame, record["audio"], emotion=emotion, intensity=intensity, samples=1, seed=seed,
                        aligned=True,
                    )  # fmt: skip
                    video = _resize(np.ascontiguousarray(result.frames[0].transpose(0, 2, 3, 1)), size)
                    if scores.diversity is not None:
                        many = pipeline.generate(
                            None, record["audio"], emotion=emotion, intensity=intensity, samples=samples, seed=seed,
                            render=False,
                        )  # fmt: skip
                        t = min(many.coefficients["exp"].shape[1], len(truth))
                        exp = torch.as_tensor(normalizer.normalize("exp", many.coefficients["exp"][:, :t]))
                        gt = torch.as_tensor(normalizer.normalize("exp", record["exp"][:t]))
                        scores.diversity.update(exp[None], gt[None])
                    if scores.eppl is not None:
                        _interpolation(pipeline, coefficient_model, normalizer, record, emotion, seed,
                                       interpolation_steps, scores)  # fmt: skip
                    seconds["generate"] += time.perf_counter() - start
                    start = time.perf_counter()
                entry[row] = scorer.score(row, scores, video, truth, record)
                seconds["score"] += time.perf_counter() - start
            clips_out.append(entry)
    finally:
        scorer.close()

    table_rows: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    for row, scores in rows.items():
        values: dict[str, Any] = {
            "psnr": float(scores.psnr.compute()),
            "ssim": float(scores.ssim.compute()),
            "m_lmd": float(scores.m_lmd.compute()),
            "f_lmd": float(scores.f_lmd.compute()),
            "cpbd": float(scores.cpbd.compute()),
        }
        for key, metric in scores.perceptual.items():
            values[key] = metric if isinstance(metric, str) else float(metric.compute())
        if sync_model is None:
            values["lse_d"] = values["lse_c"] = sync_reason
        else:
            sync = scores.sync.compute()
            values["lse_d"], values["lse_c"] = float(sync["lse_d"]), float(sync["lse_c"])
        values["acc_emo"] = classifier_reason if classifier is None else float(scores.emotion.compute())
        if row == pipeline_row:
            if scores.diversity is not None:
                values["diversity"] = float(scores.diversity.compute()["diversity"])
                values["diversity_gt_spread"] = float(scores.diversity.compute()["gt_spread"])
            else:
                values["diversity"] = "not computed: samples=1 (use --samples 2 or more)"
            if scores.eppl is not None:
                values["eppl"], values["epdv"] = float(scores.eppl.compute()), float(scores.epdv.compute())
            else:
                values["eppl"] = values["epdv"] = coefficient_reason or "not computed: no pipeline"
        table_rows[row] = values
        counts[row] = {
            "clips": scores.clips,
            "frames_without_landmarks": scorer.missing_landmarks[row],
            "lmd_frames": int(scores.m_lmd.frames),
        }
    protocol = (
        f"{len(scored)} clips of the {split!r} split of {card.name!r} ({str(root)}; held-out speakers); each "
        f"generated from {'frame 0 of a neutral clip of the same speaker' if source == 'neutral' else 'its own frame 0'} "
        f"with the clip's audio, emotion and intensity (seed {seed}); image metrics on sample 0 at {size} px; "
        f"{f'diversity over {samples} samples; ' if pipeline is not None else ''}CPBD on every {cpbd_stride}th frame; M-/F-LMD in pixels of the "
        f"{size} px crops against the record's landmarks (mediapipe FaceMesh on the scored video)"
    )
    if pipeline is not None and pipeline.card.name != card.name:
        notes.append(f"The pipeline's stages were trained on {pipeline.card.name!r}; the scored data is {card.name!r}.")
    settings = {
        "pipeline": None
        if pipeline is None
        else pipeline.describe()
        if hasattr(pipeline, "describe")
        else str(pipeline),
        "data": str(root),
        "split": split,
        "samples": samples,
        "seed": seed,
        "source": source,
        "syncnet": None if syncnet is None else str(syncnet),
        "emotion_classifier": None if emotion_classifier is None else str(emotion_classifier),
        "coefficient_classifier": None if coefficient_classifier is None else str(coefficient_classifier),
        "weights": None if weights is None else str(weights),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    table = EvaluationTable(table_rows, counts, protocol, settings, notes)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluate.json").write_text(json.dumps(table.to_dict(), indent=2, default=str))
        (out / "evaluate.md").write_text(table.to_markdown())
        with open(out / "clips.jsonl", "w") as handle:
            handle.writelines(json.dumps(entry, default=str) + "\n" for entry in clips_out)
    return table


def _interpolation(
    pipeline: Any,
    classifier: Any,
    normalizer: Normalizer,
    record: dict,
    emotion: str,
    seed: int,
    steps: int,
    scores: _RowScores,
) -> None:
    """EPPL/EPDV of one path of emotion blends from neutral to ``emotion`` (same seed and audio)."""
    from flowvq.metrics.interpolation import path_embeddings

    target = emotion if emotion != "neutral" else "happy"
    path = []
    for a in np.linspace(0.0, 1.0, steps):
        weights = {"neutral": float(1 - a), target: float(a)}
        weights = {k: v for k, v in weights.items() if v > 0} or {"neutral": 1.0}
        result = pipeline.generate(
            None, record["audio"], emotion=None, emotion_weights=weights, samples=1, seed=seed, render=False
        )
        path.append(normalizer.normalize("exp", result.coefficients["exp"][0]))
    embeddings = path_embeddings(classifier, torch.as_tensor(np.stack(path)))
    scores.eppl.update(embeddings)
    scores.epdv.update(embeddings)


def evaluate_command(
    data: Path,
    pipeline: str | None = None,
    split: str = "test",
    out: Path = Path("eval"),
    syncnet: Path | None = None,
    emotion_classifier: Path | None = None,
    coefficient_classifier: Path | None = None,
    weights: Path | None = None,
    samples: int = 3,
    seed: int = 0,
    source: str = "neutral",
    limit: int | None = None,
    baselines: bool = True,
    device: str = "cpu",
    precision: str = "32",
    overwrite: bool = False,
    progress: bool = True,
) -> None:
    """Score a pipeline's videos on a dataset's held-out split; write evaluate.json and evaluate.md.

    Every clip is generated from a source frame of the same speaker (frame 0 of another,
    neutral clip; --source first_frame: its own frame 0) with the clip's audio, emotion and
    intensity, and scored against the real video. The table adds a source-copy row, a
    ground-truth row and the papers' reported MEAD figures (labelled as figures on other data).

    Arguments:
        data: dataset root with frames (e.g. from `flowvq synth` or `flowvq preprocess mead`).
        pipeline: pipeline YAML (configs/pipeline/flowvqtalker.yaml, runs/demo/pipeline.yaml);
            omit it for the source-copy and ground-truth rows alone.
        split: split to score (test: held-out speakers).
        out: output folder.
        syncnet: SyncNet checkpoint for LSE-D / LSE-C (flowvq fit --config configs/syncnet.yaml).
        emotion_classifier: frame emotion classifier checkpoint for Acc_emo
            (flowvq fit --config configs/frame_emotion_classifier.yaml).
        coefficient_classifier: coefficient emotion classifier checkpoint for EPPL / EPDV
            (flowvq fit --config configs/emotion_classifier.yaml).
        weights: torch hub folder with LPIPS's and FID's weights under hub/checkpoints/ (the
            eval extra); without it those columns say "not computed".
        samples: samples per clip for the diversity column.
        seed: generation seed.
        source: neutral or first_frame (which frame the videos are generated from).
        limit: score only LIMIT clips, evenly spaced over the split (every speaker and emotion).
        baselines: add the source-copy and ground-truth rows.
        device: cpu or cuda.
        precision: 32 or bf16.
        overwrite: replace a previous evaluation in out.
        progress: show a progress bar.
    """
    table = evaluate(
        pipeline,
        data,
        split=split,
        out=out,
        syncnet=syncnet,
        emotion_classifier=emotion_classifier,
        coefficient_classifier=coefficient_classifier,
        weights=weights,
        samples=samples,
        seed=seed,
        source=source,
        limit=limit,
        baselines=baselines,
        device=device,
        precision=precision,
        overwrite=overwrite,
        progress=progress,
    )
    print(table.to_markdown())
    print(f"wrote {Path(out) / 'evaluate.json'} and {Path(out) / 'evaluate.md'}")
