"""Import Deep3DFaceRecon coefficients (``flowvq import deep3d``) into clip shards.

Two file layouts are read (``scipy.io`` ``.mat``):

- PIRenderer style: ``coeff`` ``[T, 257]`` = id 0:80, exp 80:144, tex 144:224, angle
  224:227, gamma 227:254, trans 254:257; optional ``transform_params`` ``[T, 5]`` = (w0, h0,
  s, tx, ty) of the alignment crop.
- SadTalker style: ``coeff_3dmm`` ``[T, 73]`` = exp 0:64, angle 64:67, trans 67:70, then
  (s, tx, ty) of the alignment crop; ``[T, 70]`` without them.

Records: ``exp`` = the 64 expression coefficients; ``pose`` = yaw, pitch, roll (Deep3D's
angle is (x, y, z) = (pitch, yaw, roll), radians), tx, ty (Deep3D's trans x, y), scale (the
crop scale ``s`` where the file has it, else 1). Frames, audio, mel and the iBUG-68
landmarks come from the videos, through the same per-clip extraction as
``flowvq preprocess`` (the video must give as many 25 fps frames as the file has rows, give
or take 5%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowvq.data.card import DatasetCard
from flowvq.data.preprocess.commands import extract_config, quality_gate, run_preprocess
from flowvq.data.preprocess.layouts import MEAD_TEST_SPEAKERS, ClipSpec, LayoutError, scan_folder, scan_mead
from flowvq.data.preprocess.runner import RunSummary

__all__ = ["CoefficientFileError", "import_deep3d", "load_coefficients", "pose_from_deep3d"]

EXP = slice(80, 144)
ANGLE = slice(224, 227)
TRANS = slice(254, 257)


class CoefficientFileError(ValueError):
    """A coefficient file that is not in a Deep3DFaceRecon layout this importer knows."""


def pose_from_deep3d(angle: np.ndarray, trans: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """Deep3D angle ``[T, 3]`` (pitch, yaw, roll), trans ``[T, 3]``, crop scale ``[T]`` -> pose ``[T, 6]``."""
    scale = np.ones(len(angle)) if scale is None else np.asarray(scale, dtype=np.float64).reshape(-1)
    return np.stack([angle[:, 1], angle[:, 0], angle[:, 2], trans[:, 0], trans[:, 1], scale], axis=1).astype(np.float32)


def load_coefficients(path: str | Path) -> dict[str, np.ndarray]:
    """``exp`` ``[T, 64]`` and ``pose`` ``[T, 6]`` from a PIRenderer- or SadTalker-style ``.mat``.

    Raises:
        CoefficientFileError: naming the file, the keys found and the layouts expected.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        data = loadmat(str(path))
    except (ValueError, OSError, TypeError) as error:
        raise CoefficientFileError(f"{str(path)!r} is not a readable .mat file ({error})") from error
    keys = sorted(k for k in data if not k.startswith("__"))
    if "coeff" in data:
        coeff = np.atleast_2d(np.asarray(data["coeff"], dtype=np.float64))
        if coeff.shape[1] != 257:
            raise CoefficientFileError(f"{str(path)!r}: 'coeff' has shape {coeff.shape}, expected [T, 257]")
        scale = None
        if "transform_params" in data:
            params = np.atleast_2d(np.asarray(data["transform_params"], dtype=np.float64))
            if params.shape != (len(coeff), 5):
                raise CoefficientFileError(
                    f"{str(path)!r}: 'transform_params' has shape {params.shape}, expected [{len(coeff)}, 5]"
                )
            scale = params[:, 2]
        return {
            "exp": coeff[:, EXP].astype(np.float32),
            "pose": pose_from_deep3d(coeff[:, ANGLE], coeff[:, TRANS], scale),
        }
    if "coeff_3dmm" in data:
        coeff = np.atleast_2d(np.asarray(data["coeff_3dmm"], dtype=np.float64))
        if coeff.shape[1] not in (70, 73):
            raise CoefficientFileError(f"{str(path)!r}: 'coeff_3dmm' has shape {coeff.shape}, expected [T, 73] (or 70)")
        scale = coeff[:, 70] if coeff.shape[1] == 73 else None
        return {
            "exp": coeff[:, :64].astype(np.float32),
            "pose": pose_from_deep3d(coeff[:, 64:67], coeff[:, 67:70], scale),
        }
    raise CoefficientFileError(
        f"{str(path)!r} has keys {keys}: expected 'coeff' [T, 257] (+ 'transform_params', PIRenderer) "
        "or 'coeff_3dmm' [T, 73] (SadTalker)"
    )


def _relative(spec: ClipSpec, videos: Path) -> Path | None:
    if spec.video.member is not None:  # a member of <speaker>/video.tar
        return Path(spec.speaker) / spec.video.member.removeprefix("./")
    try:
        return Path(spec.video.path).relative_to(videos)
    except ValueError:
        return None


def match_coefficients(specs: list[ClipSpec], videos: Path, coeffs: Path) -> dict[str, str]:
    """Clip id -> its ``.mat``: at the video's relative path under ``coeffs``, or named by clip id."""
    found = {}
    for spec in specs:
        rel = _relative(spec, videos)
        candidates = [coeffs / rel.with_suffix(".mat")] if rel is not None else []
        candidates.append(coeffs / f"{spec.clip_id}.mat")
        for candidate in candidates:
            if candidate.is_file():
                found[spec.clip_id] = str(candidate)
                break
    return found


def import_deep3d(
    coeffs: Path,
    out: Path,
    videos: Path,
    layout: str = "mead",
    labels: Path | None = None,
    view: str = "front",
    test_speakers: list[str] = list(MEAD_TEST_SPEAKERS),  # noqa: B006 - read only; shown in --help
    val_speakers: list[str] | None = None,
    workers: int = 1,
    frames: bool = True,
    size: int = 256,
    crop_smoothing: float | None = 12.5,
    n_mels: int = 80,
    num_shards: int = 1,
    shard_index: int = 0,
    merge: bool = False,
    cache: Path | None = None,
    retry_failed: bool = False,
    allow_missing: bool = False,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    max_trim: float = 2.0,
    min_detected: float = 0.8,
    min_confirmed: float = 0.5,
    min_ordered: float = 0.95,
) -> DatasetCard | RunSummary:
    """Import Deep3DFaceRecon coefficients (PIRenderer ``coeff`` [T, 257] or SadTalker
    ``coeff_3dmm`` [T, 73] ``.mat`` files) with their videos into clip shards.

    Each video's ``.mat`` is found at the same relative path under ``coeffs`` as the video
    under ``videos`` (``M003/video/front/happy/level_1/001.mat``), or as ``<clip_id>.mat``.
    Videos without one are recorded in failures.jsonl.

    Args:
        coeffs: folder of .mat files.
        out: dataset root to write.
        videos: the videos the coefficients were extracted from (frames, audio, landmarks).
        layout: how to read videos: mead (labels from the path) or folder (labels CSV).
        labels: labels CSV for the folder layout.
        view: MEAD view.
        test_speakers: MEAD test speakers.
        val_speakers: MEAD val speakers (default 10% of the rest).
        workers: extraction processes on this machine.
        frames: store aligned JPEG face crops.
        size: crop side in pixels.
        crop_smoothing: Gaussian sigma (frames) of the crop track; null: one crop per clip.
        n_mels: mel bins.
        num_shards: split the clip list across this many machines.
        shard_index: this machine's shard.
        merge: only pack the shards from the cache.
        cache: extraction cache folder (default <out>/cache).
        retry_failed: try clips that failed before again.
        allow_missing: pack even if some clips were neither extracted nor failed.
        seed: for the split draw and the shard shuffle.
        progress: show progress bars.
        overwrite: pack a finished dataset in out again; without it (or --merge true) a
            finished dataset is left as it is.
        max_trim: leading and trailing frames without a face are cut (with their coefficient
            rows), up to this many seconds at each end.
        min_detected: quality gate: least fraction of frames where FaceMesh finds the face.
        min_confirmed: quality gate: least fraction of sampled frames where the face detector
            confirms an upright face on the mesh.
        min_ordered: quality gate: least fraction of frames whose landmarks are in a face's order.
    """
    coeffs, videos = Path(coeffs), Path(videos)
    if not coeffs.is_dir():
        raise LayoutError(f"coefficient folder {str(coeffs)!r} does not exist")
    if layout == "mead":
        specs = scan_mead(videos, view, test_speakers, val_speakers, seed=seed)
    elif layout == "folder":
        specs = scan_folder(videos, labels, seed=seed)
    else:
        raise ValueError(f"layout {layout!r}: expected 'mead' or 'folder'")
    matched = match_coefficients(specs, videos, coeffs)
    if not matched:
        raise LayoutError(
            f"none of the {len(specs)} videos under {str(videos)!r} has a .mat under {str(coeffs)!r} "
            "(expected the video's relative path with .mat, or <clip_id>.mat)"
        )
    config = extract_config(
        size, frames, crop_smoothing, max_gap=5, refine_landmarks=True, n_mels=n_mels, max_trim=max_trim
    )
    out = Path(out)
    unmatched = [s for s in specs if s.clip_id not in matched]
    if unmatched and not merge:
        from flowvq.data.preprocess.extract import cache_paths, write_failure

        for spec in unmatched:
            if not cache_paths(Path(cache or out / "cache"), spec.clip_id)[1].is_file():
                write_failure(
                    cache or out / "cache", spec, "missing_coefficients", f"no .mat for {spec.video} under {coeffs}"
                )
    return run_preprocess(
        [s for s in specs if s.clip_id in matched],
        out,
        "deep3d",
        config,
        workers=workers,
        num_shards=num_shards,
        shard_index=shard_index,
        merge=merge,
        cache=cache,
        retry_failed=retry_failed,
        allow_missing=allow_missing,
        seed=seed,
        progress=progress,
        coefficients=matched,
        load_coefficients=load_coefficients,
        coefficient_source="deep3dfacerecon",
        overwrite=overwrite,
        quality=quality_gate(min_detected, min_confirmed, min_ordered),
        extra={"source": "deep3dfacerecon", "coeffs": str(coeffs), "videos": str(videos)},
    )
