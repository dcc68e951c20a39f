"""Step 2 of preprocessing: fit what needs the whole train split, then pack the shards.

For ``mediapipe-pca``: the pose reference is the generalised Procrustes mean of (a sample
of) the train frames' landmarks; each frame's pose is its similarity onto that mean; the
expression basis is a PCA of the pose-normalised landmarks minus the speaker's neutral mean
shape (the mean over the speaker's neutral clips, or over all of its clips where emotions
are unknown), fitted on train frames only. The basis is saved next to the shards
(``mediapipe_pca.npz``) so that coefficients can be turned back into landmarks.

Blink (eyelid aperture) and gaze (iris landmarks, with ``refine_landmarks``) come from the
cached FaceMesh landmarks (:mod:`flowvq.data.face.eyes`); imports (Deep3DFaceRecon) carry
neither, and their card's ``fields`` says so.

The pose is the head's pose in the camera frame, whatever the crop did: each frame's crop
similarity (kept in the cache) is undone and the landmarks are put in one fixed, unrotated
frame per clip (:func:`flowvq.data.face.crop.to_clip_frame`): yaw, pitch, roll of the fit
onto the mean shape (roll from the image vertical), tx and ty the face centre in crop units
from the clip's mean crop centre, scale relative to the mean shape. The crop's smoothing
changes the frames, not the pose.

Clips are packed only if they pass the :class:`~flowvq.data.face.quality.QualityGate`: the
figures recorded at extraction (detected, confirmed, ordered) and the distance from the
train mean face measured here; the others go to ``failures.jsonl`` with their figures.
Packing is one process in a fixed order, so the same cache gives byte-identical shards.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowvq.data.card import DatasetCard, DatasetError
from flowvq.data.face import ExpressionBasis, mean_shape, pose_from_landmarks
from flowvq.data.face.crop import to_clip_frame
from flowvq.data.face.eyes import blink_from_aperture, eyelid_aperture, gaze_from_landmarks
from flowvq.data.face.quality import QualityGate, shape_error
from flowvq.data.preprocess.extract import ExtractConfig, cache_paths, load_cached
from flowvq.data.preprocess.layouts import ClipSpec
from flowvq.data.preprocess.runner import collect_failures
from flowvq.data.shards import write_dataset

__all__ = ["BASIS_NAME", "RecordMaker", "fit_basis", "merge_cache"]

log = logging.getLogger(__name__)

BASIS_NAME = "mediapipe_pca.npz"


class RecordMaker:
    """Turns a cached clip into a clip record (picklable, for litdata's workers).

    Arguments:
        size: crop side (landmarks are normalised by it for the pose).
        basis: path of the :class:`ExpressionBasis`; ``None`` for caches that carry their own
            ``exp`` and ``pose`` (imports).
        fields: optional record fields to derive from the cached FaceMesh landmarks: ``blink``
            (eyelid aperture) and ``gaze`` (iris landmarks; needs ``refine_landmarks``), see
            :mod:`flowvq.data.face.eyes`.
    """

    def __init__(self, size: int, basis: str | None = None, fields: tuple[str, ...] = ()) -> None:
        self.size = size
        self.basis_path = basis
        self.fields = tuple(fields)
        self._basis: ExpressionBasis | None = None

    def coefficients(self, landmarks: np.ndarray, crop: np.ndarray, speaker: str) -> tuple[np.ndarray, np.ndarray]:
        """exp ``[T, E]`` and camera-frame pose ``[T, 6]`` of crop-pixel landmarks ``[T, N, 3]``."""
        if self._basis is None:
            self._basis = ExpressionBasis.load(self.basis_path)
        pose, normalised = pose_from_landmarks(to_clip_frame(landmarks, crop, self.size), self._basis.reference)
        return self._basis.encode(normalised, speaker), pose

    def __call__(self, path: str) -> dict[str, Any]:
        data = load_cached(path)
        meta = data["meta"]
        if self.basis_path is not None:
            exp, pose = self.coefficients(data["landmarks"], data["crop"], meta["speaker"])
        else:
            exp, pose = data["exp"], data["pose"]
        record = {
            "clip_id": meta["clip_id"],
            "speaker": meta["speaker"],
            "split": meta["split"],
            "emotion": int(meta["emotion"]),
            "intensity": int(meta["intensity"]),
            "exp": np.ascontiguousarray(exp, dtype=np.float32),
            "pose": np.ascontiguousarray(pose, dtype=np.float32),
            "mel": data["mel"],
            "audio": data["audio"],
            "landmarks": data["ibug68"],
            "frames": data["frames"].tobytes(),
            "frame_offsets": data["frame_offsets"],
        }
        if "blink" in self.fields:
            record["blink"] = blink_from_aperture(eyelid_aperture(data["landmarks"]))
        if "gaze" in self.fields:
            record["gaze"] = gaze_from_landmarks(data["landmarks"])
        return record


def _stride(total: int, budget: int) -> int:
    return max(1, math.ceil(total / max(1, budget)))


def fit_basis(
    paths_by_split: dict[str, list[str]],
    metas: dict[str, dict[str, Any]],
    size: int,
    exp_dim: int = 64,
    max_shape_frames: int = 20_000,
    max_pca_frames: int = 50_000,
    max_shape_error: float | None = None,
) -> tuple[ExpressionBasis, dict[str, Any], dict[str, float]]:
    """Fit the pose reference and the PCA expression basis on the train clips.

    Arguments:
        paths_by_split: cached clip files per split (train is used for fitting; every
            split's speakers get a neutral shape).
        metas: clip file -> its meta.
        max_shape_frames, max_pca_frames: frames sampled (evenly) for the mean shape and the PCA.
        max_shape_error: clips whose median distance from the mean face (in mean-face radii,
            :func:`~flowvq.data.face.quality.shape_error`) is larger take no part in the
            neutral shapes and the PCA (``None``: every clip does).

    Returns:
        the basis, facts for the card (variance explained, speakers without neutral clips),
        and every clip's shape error (clip file -> median over its frames).
    """
    train = paths_by_split.get("train", [])
    if not train:
        raise DatasetError("no train clips were extracted: nothing to fit the expression basis on")
    total = sum(metas[p]["num_frames"] for p in train)

    def landmarks(path: str) -> np.ndarray:
        data = load_cached(path, ("landmarks", "crop"))
        return to_clip_frame(data["landmarks"], data["crop"], size)

    stride = _stride(total, max_shape_frames)
    sample = np.concatenate([landmarks(p)[::stride] for p in train])  # (F, N, 3)
    reference = mean_shape(sample)
    del sample

    # pose-normalise every clip once: its distance from the mean face, neutral sums per
    # speaker, and a train sample for the PCA
    stride = _stride(total, max_pca_frames)
    sums: dict[tuple[str, bool], np.ndarray] = {}
    counts: dict[tuple[str, bool], int] = defaultdict(int)
    shapes, speakers = [], []
    errors: dict[str, float] = {}
    for split, paths in paths_by_split.items():
        for path in paths:
            meta = metas[path]
            _, normalised = pose_from_landmarks(landmarks(path), reference)
            errors[path] = float(np.median(shape_error(normalised, reference)))
            if max_shape_error is not None and errors[path] > max_shape_error:
                continue
            for neutral_only in (False, True):
                if neutral_only and meta["emotion"] != 0:
                    continue
                key = (meta["speaker"], neutral_only)
                sums[key] = sums.get(key, 0.0) + normalised.sum(0)
                counts[key] += len(normalised)
            if split == "train":
                picked = normalised[::stride].astype(np.float32)
                shapes.append(picked)
                speakers += [meta["speaker"]] * len(picked)
    if not shapes:
        raise DatasetError(
            f"every train clip is further than max_shape_error={max_shape_error} from the mean face "
            f"(median distances {sorted(round(errors[p], 3) for p in train)}): these are not faces FaceMesh "
            "tracks well; check the videos, or raise --max_shape_error"
        )
    all_speakers = sorted({s for s, _ in sums})
    neutral, fallback = {}, []
    for speaker in all_speakers:
        key = (speaker, True) if counts[(speaker, True)] else (speaker, False)
        if not key[1]:
            fallback.append(speaker)
        neutral[speaker] = sums[key] / counts[key]
    shapes = np.concatenate(shapes)
    offsets = shapes - np.stack([neutral[s] for s in speakers])
    basis = ExpressionBasis.fit(offsets, reference, neutral, exp_dim)
    full_variance = float(
        ((offsets.reshape(len(offsets), -1) - basis.offset_mean) ** 2).sum() / max(1, len(offsets) - 1)
    )
    facts = {
        "explained_variance_ratio": float(basis.explained_variance.sum() / max(full_variance, 1e-12)),
        "pca_frames": int(len(offsets)),
        "speakers_without_neutral": fallback,
    }
    return basis, facts, errors


def _rejection(meta: dict[str, Any], figures: dict[str, Any], reasons: list[str], gate: QualityGate) -> dict:
    return {
        "clip_id": meta["clip_id"],
        "speaker": meta["speaker"],
        "video": meta["video"],
        "audio": meta["audio"],
        "reason": "quality",
        "message": "failed the face-quality gate: " + "; ".join(reasons),
        "figures": figures,
        "thresholds": gate.to_dict(),
    }


def merge_cache(
    cache: str | Path,
    out: str | Path,
    name: str,
    config: ExtractConfig,
    specs: Sequence[ClipSpec] | None = None,
    coefficient_source: str = "mediapipe-pca",
    exp_dim: int = 64,
    seed: int = 0,
    allow_missing: bool = False,
    quality: QualityGate | None = None,
    extra: dict[str, Any] | None = None,
) -> DatasetCard:
    """Apply the quality gate, fit the basis (``mediapipe-pca``), pack every split with litdata
    and write the card.

    Arguments:
        cache: the extraction cache.
        out: dataset root.
        specs: the clips that should be there; clips neither done nor failed are an error
            (a shard was not run) unless ``allow_missing``. ``None``: whatever the cache holds.
        coefficient_source: ``mediapipe-pca`` (fit the basis) or a source whose cache carries
            ``exp`` and ``pose`` (``deep3dfacerecon``).
        quality: thresholds of the face-quality gate (default :class:`QualityGate`'s).
    """
    cache, out = Path(cache), Path(out)
    gate = quality if quality is not None else QualityGate()
    if specs is not None:
        ids = [s.clip_id for s in specs]
        missing = [i for i in ids if not any(p.is_file() for p in cache_paths(cache, i))]
        if missing and not allow_missing:
            raise DatasetError(
                f"{len(missing)} of {len(ids)} clips are neither extracted nor failed in {str(cache)!r} "
                f"(e.g. {missing[0]!r}): run the remaining shards first, or pass --allow_missing true"
            )
        paths = [str(cache_paths(cache, i)[0]) for i in ids if cache_paths(cache, i)[0].is_file()]
    else:
        paths = [str(p) for p in sorted((cache / "clips").glob("*.npz"))]
    if not paths:
        raise DatasetError(f"no extracted clips in {str(cache)!r}; see {str(cache / 'failures.jsonl')!r} for why")
    paths = sorted(paths)
    metas = {p: load_cached(p, ("meta",))["meta"] for p in paths}
    figure_names = ("detected", "confirmed", "checked", "ordered", "face_width", "trim")
    figures = {p: {k: metas[p][k] for k in figure_names if k in metas[p]} for p in paths}
    rejected: dict[str, list[str]] = {}
    for path in paths:
        reasons = gate.failures(figures[path])
        if reasons:
            rejected[path] = reasons
    by_split: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        if path not in rejected:
            by_split[metas[path]["split"]].append(path)
    if not by_split.get("train") and any(metas[p]["split"] == "train" for p in rejected):
        raise DatasetError(
            f"every train clip failed the face-quality gate ({gate.to_dict()}), e.g. "
            f"{metas[next(p for p in rejected if metas[p]['split'] == 'train')]['clip_id']!r}: "
            f"{'; '.join(next(r for p, r in rejected.items() if metas[p]['split'] == 'train'))}. "
            "Check the videos, or relax the thresholds and rerun with --merge true"
        )
    out.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = {}
    if coefficient_source == "mediapipe-pca":
        basis, facts, errors = fit_basis(by_split, metas, config.size, exp_dim, max_shape_error=gate.max_shape_error)
        for path, error in errors.items():
            figures[path]["shape_error"] = error
            reasons = gate.failures({"shape_error": error})
            if reasons:
                rejected[path] = reasons
                by_split[metas[path]["split"]].remove(path)
        basis.save(out / BASIS_NAME)
        # blink and gaze from the same landmarks (Deep3D imports carry neither, as their card says)
        fields = ("blink", "gaze") if config.refine_landmarks else ("blink",)
        maker = RecordMaker(config.size, str(out / BASIS_NAME), fields)
        exp_dim = basis.exp_dim
        facts["basis"] = BASIS_NAME
        facts["num_landmarks"] = int(basis.reference.shape[0])
    else:
        fields = ()
        maker = RecordMaker(config.size, None)
        exp_dim = int(load_cached(paths[0], ("exp",))["exp"].shape[1])
    rejections = [_rejection(metas[p], figures[p], rejected[p], gate) for p in paths if p in rejected]
    for entry in rejections:
        log.warning("clip %s not packed: %s", entry["clip_id"], entry["message"])
    failures = collect_failures(cache, out, rejections)
    failed = sum(1 for _ in failures.open()) if failures.is_file() else 0
    card = DatasetCard(
        name=name,
        exp_dim=exp_dim,
        pose_dim=6,
        coefficient_source=coefficient_source,
        fps=config.fps,
        audio=config.audio,
        frame_size=config.size if config.frames else 0,
        exp_names=[f"pc{i}" for i in range(exp_dim)] if coefficient_source == "mediapipe-pca" else [],
        fields=list(fields),
        speakers={split: sorted({metas[p]["speaker"] for p in ps}) for split, ps in by_split.items() if ps},
        extra={
            **(extra or {}),
            **facts,
            "extract": {k: v for k, v in config.to_dict().items() if k != "audio"},
            "failed_clips": failed,
            "quality": {
                **gate.to_dict(),
                "rejected_clips": len(rejections),
                "packed_shape_error_max": max(
                    (figures[p]["shape_error"] for ps in by_split.values() for p in ps if "shape_error" in figures[p]),
                    default=None,
                ),
            },
            "trimmed_clips": sum(1 for ps in by_split.values() for p in ps if _trimmed(metas[p])),
            "pose_frame": (
                "camera: yaw, pitch, roll (rad) of the head in the video frame (roll from the image "
                "vertical); tx, ty, scale in the clip's fixed reference frame (unrotated, centred on its "
                "mean crop, crop units), see flowvq.data.preprocess.merge"
                if coefficient_source == "mediapipe-pca"
                else f"as given by {coefficient_source}"
            ),
        },
    )
    order = ("train", "val", "test")
    items = {split: sorted(by_split[split]) for split in order if by_split.get(split)}
    for split in order:  # a split packed by an earlier run and empty now must not be read
        if split not in items and (out / split).is_dir():
            shutil.rmtree(out / split)
    log.info("packing %s", {k: len(v) for k, v in items.items()})
    # one packing process: litdata splits the items across workers by count, so the chunks
    # (and the read order) would depend on the worker count
    return write_dataset(out, items, maker, card, seed=seed, num_workers=1)


def _trimmed(meta: dict[str, Any]) -> bool:
    start, stop = meta.get("trim", (0, 0))
    return start > 0 or stop < meta.get("source_frames", stop)
