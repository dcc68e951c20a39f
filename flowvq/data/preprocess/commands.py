"""``flowvq preprocess mead|lrs3|hdtf|folder``: real video to clip shards.

Each command scans its layout, extracts every clip into a cache (``<out>/cache`` unless
``cache`` is given), then fits the expression basis on the train split and packs the
shards (the ``--merge`` step). On a cluster, run the extraction as an array job with
``--num_shards N --shard_index i`` (each task extracts its share; nothing is packed), then
run the same command once with ``--merge true``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flowvq.data.card import CARD_NAME, AudioFeatures, DatasetCard, DatasetError
from flowvq.data.face.quality import QualityGate
from flowvq.data.preprocess.extract import ExtractConfig
from flowvq.data.preprocess.layouts import (
    MEAD_TEST_SPEAKERS,
    ClipSpec,
    scan_folder,
    scan_hdtf,
    scan_lrs3,
    scan_mead,
)
from flowvq.data.preprocess.merge import merge_cache
from flowvq.data.preprocess.runner import Loader, RunSummary, run_extraction

__all__ = [
    "extract_config",
    "quality_gate",
    "preprocess_folder",
    "preprocess_hdtf",
    "preprocess_lrs3",
    "preprocess_mead",
    "run_preprocess",
]

log = logging.getLogger(__name__)


def run_preprocess(
    specs: Sequence[ClipSpec],
    out: str | Path,
    name: str,
    config: ExtractConfig,
    workers: int = 1,
    exp_dim: int = 64,
    num_shards: int = 1,
    shard_index: int = 0,
    merge: bool = False,
    cache: str | Path | None = None,
    retry_failed: bool = False,
    limit: int | None = None,
    allow_missing: bool = False,
    seed: int = 0,
    progress: bool = True,
    coefficients: dict[str, str] | None = None,
    load_coefficients: Loader | None = None,
    coefficient_source: str = "mediapipe-pca",
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    quality: QualityGate | None = None,
    unlabelled: Sequence[str] = (),
) -> DatasetCard | RunSummary:
    """Extract (unless ``merge``), then merge (when ``merge``, or when the run is not sharded
    and nothing was left by ``limit``). Returns the card, or the extraction summary when
    no merge ran.

    A finished dataset in ``out`` (its ``dataset.json`` exists) is left alone and its card
    returned, unless ``overwrite`` (extract what is missing, then pack again) or ``merge``
    (pack again from the cache).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {str(out)!r} is a file: give a folder (new, or a dataset made by flowvq)")
    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        raise DatasetError(f"--cache {str(cache)!r} is a file: give a folder")
    cache = Path(cache) if cache is not None else out / "cache"
    if (out / CARD_NAME).is_file() and not (overwrite or merge):
        card = DatasetCard.load(out)
        print(
            f"{name}: {str(out)!r} is a finished dataset ({card.splits} clips); left as it is. "
            "Pass --overwrite true to extract new clips and pack it again, or --merge true to pack it again"
        )
        return card
    extra = dict(extra or {})
    if unlabelled:
        print(f"{name}: {len(unlabelled)} videos have no row in the labels CSV and are skipped, e.g. {unlabelled[0]!r}")
        extra["videos_without_labels"] = len(unlabelled)
    summary = None
    if not merge:
        summary = run_extraction(
            specs,
            cache,
            config,
            workers=workers,
            num_shards=num_shards,
            shard_index=shard_index,
            retry_failed=retry_failed,
            limit=limit,
            coefficients=coefficients,
            load_coefficients=load_coefficients,
            progress=progress,
            settings={"coefficient_source": coefficient_source},
        )
        print(f"{name}: {summary}; failures in {cache / 'failures.jsonl'}")
        if num_shards > 1 or summary.left:
            print("not packed yet: run the remaining clips/shards, then the same command with --merge true")
            return summary
    card = merge_cache(
        cache,
        out,
        name,
        config,
        specs=specs,
        coefficient_source=coefficient_source,
        exp_dim=exp_dim,
        seed=seed,
        allow_missing=allow_missing,
        quality=quality,
        extra=extra,
    )
    print(f"{name}: wrote {card.splits} clips to {out} (E={card.exp_dim}, frames {card.frame_size or 'none'})")
    return card


def extract_config(
    size: int = 256,
    frames: bool = True,
    crop_smoothing: float | None = 12.5,
    max_gap: int = 5,
    refine_landmarks: bool = True,
    n_mels: int = 80,
    max_trim: float = 2.0,
) -> ExtractConfig:
    """The extraction settings the commands expose."""
    return ExtractConfig(
        size=size,
        frames=frames,
        crop_smoothing=crop_smoothing,
        max_gap=max_gap,
        max_trim=max_trim,
        refine_landmarks=refine_landmarks,
        audio=AudioFeatures(n_mels=n_mels),
    )


def quality_gate(
    min_detected: float = 0.8, min_confirmed: float = 0.5, min_ordered: float = 0.95, max_shape_error: float = 0.25
) -> QualityGate:
    """The face-quality thresholds the commands expose."""
    return QualityGate(min_detected, min_confirmed, min_ordered, max_shape_error)


#: The arguments every ``preprocess`` command shares, as their docstrings (``--help``) list them.
_SHARED_ARGS = """crop_smoothing: Gaussian sigma (frames) of the crop track; null: one crop per clip.
        max_gap: longest run of frames without a detected face that is interpolated.
        refine_landmarks: FaceMesh with iris landmarks (478 points).
        n_mels: mel bins.
        num_shards: split the clip list across this many machines (array job).
        shard_index: this machine's shard, 0..num_shards-1.
        merge: only fit the basis and pack the shards from the cache (after all shards ran).
        cache: extraction cache folder (default <out>/cache).
        retry_failed: try clips that failed before again.
        limit: extract at most this many clips in this run.
        allow_missing: merge even if some clips were neither extracted nor failed.
        seed: for the split draws and the shard shuffle.
        progress: show progress bars.
        overwrite: pack a finished dataset in out again (after extracting clips not yet in the
            cache); without it (or --merge true) a finished dataset is left as it is.
        max_trim: leading and trailing frames without a face are cut, up to this many seconds
            at each end (recorded in the cache as trim); longer runs reject the clip.
        min_detected: quality gate: least fraction of frames where FaceMesh finds the face.
        min_confirmed: quality gate: least fraction of sampled frames where mediapipe's face
            detector confirms an upright face on the mesh (rejects upside-down and non-faces).
        min_ordered: quality gate: least fraction of frames whose landmarks are in a face's order
            (brows, eyes, nose, mouth, chin from top to bottom).
        max_shape_error: quality gate: largest median distance of the 68 landmarks from the
            train mean face after alignment, in mean-face radii. Clips failing the gate are not
            packed and go to failures.jsonl with their figures (no new extraction is needed to
            change the thresholds: rerun with --merge true)."""


def _shared_args(command: Callable[..., Any]) -> Callable[..., Any]:
    """Put the shared arguments' documentation where the command's docstring says ``{shared_args}``."""
    command.__doc__ = (command.__doc__ or "").replace("{shared_args}", _SHARED_ARGS)
    return command


def _run_command(specs: Any, args: dict[str, Any], name: str, extra: dict[str, Any], **more: Any) -> Any:
    """:func:`run_preprocess` with the options every command shares, taken from its arguments."""
    return run_preprocess(
        specs,
        args["out"],
        name,
        extract_config(
            args["size"],
            args["frames"],
            args["crop_smoothing"],
            args["max_gap"],
            args["refine_landmarks"],
            args["n_mels"],
            args["max_trim"],
        ),
        workers=args["workers"],
        exp_dim=args["exp_dim"],
        num_shards=args["num_shards"],
        shard_index=args["shard_index"],
        merge=args["merge"],
        cache=args["cache"],
        retry_failed=args["retry_failed"],
        limit=args["limit"],
        allow_missing=args["allow_missing"],
        seed=args["seed"],
        progress=args["progress"],
        overwrite=args["overwrite"],
        quality=quality_gate(args["min_detected"], args["min_confirmed"], args["min_ordered"], args["max_shape_error"]),
        extra=extra,
        **more,
    )


@_shared_args
def preprocess_mead(
    root: Path,
    out: Path,
    view: str = "front",
    test_speakers: list[str] = list(MEAD_TEST_SPEAKERS),  # noqa: B006 - read only; shown in --help
    val_speakers: list[str] | None = None,
    speakers: list[str] | None = None,
    emotions: list[str] | None = None,
    workers: int = 1,
    frames: bool = True,
    size: int = 256,
    exp_dim: int = 64,
    crop_smoothing: float | None = 12.5,
    max_gap: int = 5,
    refine_landmarks: bool = True,
    n_mels: int = 80,
    num_shards: int = 1,
    shard_index: int = 0,
    merge: bool = False,
    cache: Path | None = None,
    retry_failed: bool = False,
    limit: int | None = None,
    allow_missing: bool = False,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    max_trim: float = 2.0,
    min_detected: float = 0.8,
    min_confirmed: float = 0.5,
    min_ordered: float = 0.95,
    max_shape_error: float = 0.25,
) -> DatasetCard | RunSummary:
    """Preprocess MEAD into clip shards (mediapipe landmarks, Procrustes pose, PCA expression).

    Reads ``<root>/<speaker>/video/<view>/<emotion>/level_<n>/<NNN>.mp4`` and
    ``<root>/<speaker>/audio/<emotion>/level_<n>/<NNN>.m4a`` (or each speaker's unextracted
    ``video.tar`` / ``audio.tar``); emotion and intensity come from the path.

    Args:
        root: the MEAD folder (one sub-folder per speaker, e.g. M003).
        out: dataset root to write (shards, dataset.json, failures.jsonl, cache/).
        view: camera view folder (front, left_30, ...).
        test_speakers: speakers of the test split (EAT / EDTalk's split by default).
        val_speakers: speakers of the val split; default: 10% of the rest, drawn with seed.
        speakers: only these speakers (default all).
        emotions: only these emotions (default all 8).
        workers: extraction processes on this machine.
        frames: store aligned JPEG face crops (false: coefficient-only shards).
        size: crop side in pixels.
        exp_dim: number of PCA expression coefficients E.
        {shared_args}
    """
    specs = scan_mead(root, view, test_speakers, val_speakers, speakers=speakers, emotions=emotions, seed=seed)
    return _run_command(specs, locals(), f"mead-{view}", extra={"source": "MEAD", "root": str(root), "view": view})


@_shared_args
def preprocess_lrs3(
    root: Path,
    out: Path,
    subsets: list[str] = ["pretrain", "trainval", "test"],  # noqa: B006 - read only; shown in --help
    val_fraction: float = 0.02,
    workers: int = 1,
    frames: bool = True,
    size: int = 256,
    exp_dim: int = 64,
    crop_smoothing: float | None = 12.5,
    max_gap: int = 5,
    refine_landmarks: bool = True,
    n_mels: int = 80,
    num_shards: int = 1,
    shard_index: int = 0,
    merge: bool = False,
    cache: Path | None = None,
    retry_failed: bool = False,
    limit: int | None = None,
    allow_missing: bool = False,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    max_trim: float = 2.0,
    min_detected: float = 0.8,
    min_confirmed: float = 0.5,
    min_ordered: float = 0.95,
    max_shape_error: float = 0.25,
) -> DatasetCard | RunSummary:
    """Preprocess LRS3 (``{pretrain,trainval,test}/<id>/<clip>.mp4``) into clip shards; emotion unknown.

    Args:
        root: the LRS3 folder.
        out: dataset root to write.
        subsets: which of pretrain, trainval, test to read (test -> test split).
        val_fraction: fraction of the non-test ids held out for val.
        workers: extraction processes on this machine.
        frames: store aligned JPEG face crops (false: coefficient-only shards, e.g. for PoseFlow).
        size: crop side in pixels.
        exp_dim: number of PCA expression coefficients E.
        {shared_args}
    """
    specs = scan_lrs3(root, subsets, val_fraction, seed)
    return _run_command(specs, locals(), "lrs3", extra={"source": "LRS3", "root": str(root), "subsets": list(subsets)})


@_shared_args
def preprocess_hdtf(
    root: Path,
    out: Path,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    workers: int = 1,
    frames: bool = True,
    size: int = 256,
    exp_dim: int = 64,
    crop_smoothing: float | None = 12.5,
    max_gap: int = 5,
    refine_landmarks: bool = True,
    n_mels: int = 80,
    num_shards: int = 1,
    shard_index: int = 0,
    merge: bool = False,
    cache: Path | None = None,
    retry_failed: bool = False,
    limit: int | None = None,
    allow_missing: bool = False,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    max_trim: float = 2.0,
    min_detected: float = 0.8,
    min_confirmed: float = 0.5,
    min_ordered: float = 0.95,
    max_shape_error: float = 0.25,
) -> DatasetCard | RunSummary:
    """Preprocess HDTF (videos named like ``WDA_BarackObama_000.mp4``) into clip shards; emotion unknown.

    Args:
        root: folder holding the HDTF videos (searched recursively).
        out: dataset root to write.
        val_fraction: fraction of speakers for val.
        test_fraction: fraction of speakers for test.
        workers: extraction processes on this machine.
        frames: store aligned JPEG face crops.
        size: crop side in pixels.
        exp_dim: number of PCA expression coefficients E.
        {shared_args}
    """
    specs = scan_hdtf(root, val_fraction, test_fraction, seed)
    return _run_command(specs, locals(), "hdtf", extra={"source": "HDTF", "root": str(root)})


@_shared_args
def preprocess_folder(
    root: Path,
    out: Path,
    labels: Path | None = None,
    name: str = "folder",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    workers: int = 1,
    frames: bool = True,
    size: int = 256,
    exp_dim: int = 64,
    crop_smoothing: float | None = 12.5,
    max_gap: int = 5,
    refine_landmarks: bool = True,
    n_mels: int = 80,
    num_shards: int = 1,
    shard_index: int = 0,
    merge: bool = False,
    cache: Path | None = None,
    retry_failed: bool = False,
    limit: int | None = None,
    allow_missing: bool = False,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    max_trim: float = 2.0,
    min_detected: float = 0.8,
    min_confirmed: float = 0.5,
    min_ordered: float = 0.95,
    max_shape_error: float = 0.25,
) -> DatasetCard | RunSummary:
    """Preprocess every video under a folder into clip shards, labelled by an optional CSV.

    The CSV has a header with ``path`` (relative to root) and any of ``speaker``, ``emotion``
    (name or index), ``intensity`` (0..2), ``split`` (train/val/test), ``audio``. Without it
    the speaker is the video's folder name and emotions are unknown.

    Args:
        root: folder of videos (searched recursively).
        out: dataset root to write.
        labels: optional labels CSV with a header row. Columns: path (the video, relative to
            root; required), speaker (default: the video's folder name), emotion (neutral, angry,
            contempt, disgusted, fear, happy, sad, surprised, or 0..7), intensity (0..2), split
            (train, val or test; by speaker), audio (a separate audio file, relative to root).
            Videos without a row are skipped and counted.
        name: dataset name for the card.
        val_fraction: fraction of speakers for val (where the CSV gives no split).
        test_fraction: fraction of speakers for test (where the CSV gives no split).
        workers: extraction processes on this machine.
        frames: store aligned JPEG face crops.
        size: crop side in pixels.
        exp_dim: number of PCA expression coefficients E.
        {shared_args}
    """
    unlabelled: list[str] = []
    specs = scan_folder(root, labels, val_fraction, test_fraction, seed, unlabelled=unlabelled)
    extra = {"source": "folder", "root": str(root), "labels": str(labels) if labels else None}
    return _run_command(specs, locals(), name, extra=extra, unlabelled=unlabelled)
