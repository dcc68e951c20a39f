"""``flowvq generate``: a photo and a voice recording -> talking-face videos with sound.

Writes into ``--out``: ``sample_<k>.mp4`` (25 fps, H.264, the input audio muxed as AAC),
``coefficients.npz`` (``exp [N, T, E]``, ``pose [N, T, P]`` in the dataset's units, ``seeds``,
``fps``) and ``generate.json`` (inputs, pipeline, seeds, seconds per stage, real-time factor).
``--batch jobs.csv`` runs many jobs on one loaded pipeline, one folder per row, and records
each row's outcome in ``batch.json`` (a failed row does not stop the others).
``--stream`` generates and writes chunk by chunk as the audio is decoded and reports the
first-frame latency.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from flowvq.data.video import MediaError

__all__ = ["Job", "VideoWriter", "generate", "paste_back", "read_jobs", "run_job"]

#: Files a run leaves in ``--out`` (a folder holding one of them holds a previous run).
RUN_FILES = ("generate.json", "batch.json", "coefficients.npz")

#: Errors that fail one job (one batch row) rather than the whole command.
JOB_ERRORS = (FileNotFoundError, ValueError, KeyError, OSError)


@dataclass
class Job:
    """One video request: the columns of a ``--batch`` CSV."""

    image: str | None
    audio: str
    emotion: str = "neutral"
    intensity: float = 2
    emotion_weights: dict[str, float] | None = None
    reference: str | None = None
    samples: int = 1
    seed: int = 0
    name: str = ""


class VideoWriter:
    """An mp4 written as frames and audio arrive: H.264 video, mono AAC audio.

    Arguments:
        path: the file.
        width, height: frame size (odd sizes are padded by one pixel).
        fps: frame rate.
        sample_rate: audio rate (None: no audio stream).
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float = 25.0, sample_rate: int | None = 16000):
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rate = Fraction(fps).limit_denominator(1001)
        self.size = (width + width % 2, height + height % 2)
        self.container = av.open(str(self.path), mode="w")
        self.video = self.container.add_stream("libx264", rate=self.rate)
        self.video.width, self.video.height = self.size
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": "18", "preset": "veryfast"}
        self.audio = None
        if sample_rate is not None:
            self.audio = self.container.add_stream("aac", rate=sample_rate)
            self.audio.layout = "mono"
        self.sample_rate = sample_rate
        self.frames = 0
        self.samples = 0
        self._pending = np.zeros(0, dtype=np.float32)

    def write(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        """Append RGB uint8 frames ``[t, H, W, 3]`` and the audio under them (float mono)."""
        import av

        for image in frames:
            pad_h, pad_w = self.size[1] - image.shape[0], self.size[0] - image.shape[1]
            if pad_h or pad_w:
                image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            frame.time_base = 1 / self.rate
            self.frames += 1
            for packet in self.video.encode(frame):
                self.container.mux(packet)
        if audio is not None and self.audio is not None:
            self._pending = np.concatenate([self._pending, np.clip(np.asarray(audio, np.float32), -1, 1)])
            whole = len(self._pending) // 1024 * 1024
            self._encode_audio(self._pending[:whole])
            self._pending = self._pending[whole:]

    def _encode_audio(self, audio: np.ndarray) -> None:
        import av

        for start in range(0, len(audio), 1024):
            chunk = audio[start : start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self.samples
            frame.time_base = Fraction(1, self.sample_rate)
            self.samples += len(chunk)
            for packet in self.audio.encode(frame):
                self.container.mux(packet)

    def close(self) -> Path:
        for packet in self.video.encode(None):
            self.container.mux(packet)
        if self.audio is not None:
            if len(self._pending):
                self._encode_audio(self._pending)
            for packet in self.audio.encode(None):
                self.container.mux(packet)
        self.container.close()
        return self.path


def paste_back(frames: np.ndarray, photo: np.ndarray, matrix: np.ndarray, feather: float = 0.08) -> np.ndarray:
    """Put generated crops ``[T, S, S, 3]`` back into the photo they were cut from.

    Arguments:
        frames: uint8 crops.
        photo: the RGB photo ``[H, W, 3]``.
        matrix: ``[2, 3]`` photo pixels -> crop pixels (:attr:`SourceFace.matrix`).
        feather: width of the blend at the crop's border, as a fraction of its side.

    Returns:
        uint8 ``[T, H, W, 3]``.
    """
    import cv2

    size = frames.shape[1]
    height, width = photo.shape[:2]
    inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    ramp = np.minimum(np.arange(size), np.arange(size)[::-1]) / max(1.0, feather * size)
    mask = np.clip(np.minimum(ramp[:, None], ramp[None, :]), 0, 1).astype(np.float32)
    mask = cv2.warpAffine(mask, inverse, (width, height), flags=cv2.INTER_LINEAR)[..., None]  # (H, W, 1)
    base = photo.astype(np.float32)
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for index, crop in enumerate(frames):
        warped = cv2.warpAffine(crop, inverse, (width, height), flags=cv2.INTER_LINEAR).astype(np.float32)
        out[index] = np.clip(mask * warped + (1 - mask) * base, 0, 255).round().astype(np.uint8)
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` holding a previous run unless ``overwrite``; then clear that run's files."""
    previous = [name for name in RUN_FILES if (out / name).exists()] + sorted(p.name for p in out.glob("sample_*.mp4"))
    if not previous:
        return
    if not overwrite:
        raise FileExistsError(
            f"--out {str(out)!r} holds a previous run ({', '.join(previous[:3])}); "
            "pass --overwrite true to replace it or choose another --out"
        )
    batch = out / "batch.json"
    if batch.exists():
        for row in json.loads(batch.read_text()).get("rows", []):
            folder = out / str(row.get("name", ""))
            made = (folder / "generate.json").exists() or (folder / "error.txt").exists()
            if row.get("name") and folder.is_dir() and made:
                shutil.rmtree(folder)
    for name in previous:
        (out / name).unlink()
    for path in out.glob("sample_*"):
        path.unlink()


def _progress(total: int, description: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="frame", file=sys.stderr, disable=not enabled, leave=False)


def _video_frames(result_frames: np.ndarray, k: int) -> np.ndarray:
    return np.ascontiguousarray(result_frames[k].transpose(0, 2, 3, 1))  # (T, H, W, 3)


def run_job(pipeline: Any, job: Job, out: Path, paste: bool = False, stream: bool = False, quiet: bool = False) -> dict:
    """Generate one job's videos into ``out``; returns what ``generate.json`` records."""
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda message: None) if quiet else (lambda message: print(f"[generate] {message}", flush=True))
    inputs = {k: v for k, v in asdict(job).items() if k != "name"}
    if stream:
        record = _run_streaming(pipeline, job, out, paste, say, quiet)
    else:
        total = None
        bar = None

        def progress(count: int) -> None:
            nonlocal bar
            if bar is None:
                bar = _progress(total or 0, "rendering", not quiet)
            bar.update(count)

        audio_start = time.perf_counter()
        speech = pipeline.speech(job.audio)
        audio_time = time.perf_counter() - audio_start
        total = speech.num_frames * job.samples
        say(f"audio {job.audio}: {speech.seconds:.2f} s -> {speech.num_frames} frames at {pipeline.fps:g} fps")
        result = pipeline.generate(
            job.image,
            speech,
            emotion=job.emotion,
            emotion_weights=job.emotion_weights,
            intensity=job.intensity,
            samples=job.samples,
            seed=job.seed,
            reference=job.reference,
            progress=progress,
        )
        if bar is not None:
            bar.close()
        for note in result.notes:
            say(note)
        files = []
        write_start = time.perf_counter()
        if result.frames is not None:
            for k in range(job.samples):
                frames = _video_frames(result.frames, k)
                if paste:
                    source = result.source
                    if source is None or source.matrix is None:
                        raise ValueError("--paste_back needs a renderer that draws the face of a photo (VQIG)")
                    writer = VideoWriter(
                        out / f"sample_{k}_crop.mp4", frames.shape[2], frames.shape[1], result.fps, result.sample_rate
                    )
                    writer.write(frames, result.audio)
                    files.append(str(writer.close()))
                    frames = paste_back(frames, source.photo, source.matrix)
                writer = VideoWriter(
                    out / f"sample_{k}.mp4", frames.shape[2], frames.shape[1], result.fps, result.sample_rate
                )
                writer.write(frames, result.audio)
                files.append(str(writer.close()))
        seconds = dict(result.seconds)
        seconds["audio"] = round(audio_time, 4)
        seconds["total"] = round(seconds["total"] + audio_time, 4)
        seconds["write"] = round(time.perf_counter() - write_start, 4)
        np.savez(out / "coefficients.npz", seeds=np.array(result.seeds), fps=result.fps, **result.coefficients)
        audio_seconds = len(result.audio) / result.sample_rate
        record = {
            "frames": result.num_frames,
            "fps": result.fps,
            "audio_seconds": round(audio_seconds, 3),
            "seeds": result.seeds,
            "emotion": result.emotion,
            "seconds": seconds,
            "real_time_factor": round((seconds["total"] + seconds["write"]) / audio_seconds, 4),
            "notes": result.notes,
            "files": files + [str(out / "coefficients.npz")],
        }
    record = {"inputs": inputs, "pipeline": pipeline.describe(), **record}
    (out / "generate.json").write_text(json.dumps(record, indent=2))
    say(
        f"wrote {job.samples} video(s) to {out}: {record['frames']} frames, {record['audio_seconds']} s of audio "
        f"in {record['seconds']['total']:.2f} s (real-time factor {record['real_time_factor']:.2f})"
    )
    return record


def _run_streaming(pipeline: Any, job: Job, out: Path, paste: bool, say: Any, quiet: bool) -> dict:
    """Chunk by chunk: decode audio, generate, write; first-frame latency and real-time factor."""
    start = time.perf_counter()
    writers: list[VideoWriter] = []
    seconds: dict[str, float] = {}
    latency = None
    parts: dict[str, list[np.ndarray]] = {}
    audio_samples = 0
    bar = _progress(0, "streaming", not quiet)
    notes: list[str] = []
    try:
        for chunk in pipeline.stream(
            job.image,
            job.audio,
            emotion=job.emotion,
            emotion_weights=job.emotion_weights,
            intensity=job.intensity,
            samples=job.samples,
            seed=job.seed,
            reference=job.reference,
        ):
            for key, value in chunk.seconds.items():
                seconds[key] = seconds.get(key, 0.0) + value
            for key, value in chunk.coefficients.items():
                parts.setdefault(key, []).append(value)
            audio_samples += len(chunk.audio)
            if chunk.frames is not None:
                if paste and (chunk.source is None or chunk.source.matrix is None):
                    raise ValueError("--paste_back needs a renderer that draws the face of a photo (VQIG)")
                if not writers and chunk.source is not None:
                    notes = list(chunk.source.notes)
                    for note in notes:
                        say(note)
                for k in range(job.samples):
                    frames = _video_frames(chunk.frames, k)
                    if paste:
                        frames = paste_back(frames, chunk.source.photo, chunk.source.matrix)
                    if len(writers) <= k:
                        writers.append(
                            VideoWriter(out / f"sample_{k}.mp4", frames.shape[2], frames.shape[1], pipeline.fps)
                        )
                    writers[k].write(frames, chunk.audio)
            if latency is None:
                latency = time.perf_counter() - start
            bar.update(chunk.coefficients["exp"].shape[1] * job.samples)
    except BaseException:
        bar.close()
        for writer in writers:  # no half-written videos left behind a failed run
            with contextlib.suppress(Exception):
                writer.close()
            writer.path.unlink(missing_ok=True)
        raise
    bar.close()
    files = [str(w.close()) for w in writers]
    total = time.perf_counter() - start
    coefficients = {key: np.concatenate(values, axis=1) for key, values in parts.items()}
    seeds = list(range(job.seed, job.seed + job.samples))
    np.savez(out / "coefficients.npz", seeds=np.array(seeds), fps=pipeline.fps, **coefficients)
    audio_seconds = audio_samples / pipeline.card.audio.sample_rate
    seconds["total"] = total
    return {
        "frames": int(coefficients["exp"].shape[1]),
        "fps": pipeline.fps,
        "audio_seconds": round(audio_seconds, 3),
        "seeds": seeds,
        "emotion": job.emotion if not job.emotion_weights else str(job.emotion_weights),
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "streaming": True,
        "first_frame_latency": round(latency or 0.0, 4),
        "real_time_factor": round(total / max(audio_seconds, 1e-9), 4),
        "notes": notes,
        "files": files + [str(out / "coefficients.npz")],
    }


def _path_near(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or not (base / path).exists():
        return str(path)
    return str(base / path)


def read_jobs(path: str | Path) -> list[Job]:
    """Jobs of a CSV with a header: ``image``, ``audio`` (required), ``emotion``, ``intensity``,
    ``emotion_weights`` (YAML, e.g. ``{happy: 0.6, sad: 0.4}``), ``reference``, ``samples``,
    ``seed``, ``name`` (the row's folder; default ``row_<i>``). Relative paths: from the current
    directory, else the CSV's folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--batch {str(path)!r} does not exist")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"--batch {str(path)!r} has no rows (expected a header line: image,audio,emotion,...)")
    missing = {"image", "audio"} - set(rows[0])
    if missing:
        raise ValueError(f"--batch {str(path)!r} lacks the column(s) {', '.join(sorted(missing))}")
    jobs = []
    for index, row in enumerate(rows):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        weights = yaml.safe_load(row["emotion_weights"]) if row.get("emotion_weights") else None
        jobs.append(
            Job(
                image=_path_near(row["image"], path.parent),
                audio=_path_near(row["audio"], path.parent),
                emotion=row.get("emotion") or "neutral",
                intensity=float(row.get("intensity") or 2),
                emotion_weights=weights,
                reference=_path_near(row["reference"], path.parent) if row.get("reference") else None,
                samples=int(row.get("samples") or 1),
                seed=int(row.get("seed") or 0),
                name=row.get("name") or f"row_{index:03d}",
            )
        )
    return jobs


def generate(
    pipeline: Path,
    image: str | None = None,
    audio: str | None = None,
    out: Path = Path("generated"),
    emotion: str = "neutral",
    intensity: float = 2,
    emotion_weights: dict[str, float] | None = None,
    reference: str | None = None,
    samples: int = 1,
    seed: int = 0,
    batch: Path | None = None,
    overwrite: bool = False,
    paste_back: bool = False,
    stream: bool = False,
    precision: str = "32",
    device: str = "cpu",
    quiet: bool = False,
) -> dict:
    """Generate talking-face videos from a photo and a speech recording with a pipeline of trained stages.

    Writes ``sample_<k>.mp4`` (25 fps, the audio muxed), ``coefficients.npz`` and
    ``generate.json`` (inputs, seeds, seconds per stage, real-time factor) into ``--out``.

    Args:
        pipeline: pipeline YAML naming each stage's checkpoint (configs/pipeline/flowvqtalker.yaml,
            or runs/demo/pipeline.yaml after `make demo`).
        image: photo of a face (JPEG, PNG); the largest face is used.
        audio: speech (wav, mp3, m4a, or a video's audio track).
        out: output folder; one holding a previous run is refused unless --overwrite.
        emotion: neutral, angry, contempt, disgusted, fear, happy, sad or surprised.
        intensity: 0, 1, 2 (MEAD's levels) or a factor along neutral -> emotion.
        emotion_weights: a mix of emotions, e.g. '{happy: 0.6, surprised: 0.4}' (overrides --emotion).
        reference: emotion transfer from a reference: an .npz with an `exp` array (e.g. another
            run's coefficients.npz) or, for mediapipe-pca datasets, a video.
        samples: videos per input (sample k uses seed + k).
        seed: seed of the first sample.
        batch: CSV of jobs (columns image, audio, emotion, intensity, emotion_weights, reference,
            samples, seed, name): one model load, one folder per row, outcomes in batch.json; a
            failed row is recorded and the others go on (exit code 1 if any failed).
        overwrite: replace a previous run in --out.
        paste_back: paste the generated face back into the photo (sample_<k>.mp4 at the photo's
            size; the crops go to sample_<k>_crop.mp4).
        stream: generate and write chunk by chunk as the audio is decoded; reports the
            first-frame latency.
        precision: 32 or bf16 (the renderer under bf16 autocast).
        device: cpu or cuda.
        quiet: no progress bar or messages.
    """
    from flowvq.pipeline.pipeline import Pipeline

    out = Path(out)
    if batch is None and audio is None:
        raise ValueError("give --audio and --image (or --batch jobs.csv)")
    jobs = (
        read_jobs(batch)
        if batch is not None
        else [Job(image, audio, emotion, intensity, emotion_weights, reference, samples, seed, "")]
    )
    _check_out(out, overwrite)
    # nflows' LU layers call a deprecated torch solver on every step: not the user's concern
    warnings.filterwarnings("ignore", message=".*triangular_solve.*")
    start = time.perf_counter()
    loaded = Pipeline.from_yaml(pipeline, device=device, precision=precision)
    if not quiet:
        stages = ", ".join(f"{role} {type(stage).__name__[:-5]}" for role, stage in loaded.stages.items())
        print(
            f"[generate] pipeline {loaded.name!r} ({stages}) loaded in {time.perf_counter() - start:.1f} s", flush=True
        )
    renderer = loaded.stages.get("renderer")
    if batch is None and image is None and renderer is not None and renderer.NEEDS_SOURCE:
        raise ValueError(f"give --image: the renderer of {str(pipeline)!r} draws the face of a photo")
    if batch is None:
        return run_job(loaded, jobs[0], out, paste_back, stream, quiet)
    rows = []
    for index, job in enumerate(jobs):
        folder = out / job.name
        try:
            record = run_job(loaded, job, folder, paste_back, stream, quiet)
            rows.append({"row": index, "name": job.name, "status": "ok", "frames": record["frames"]})
        except (*JOB_ERRORS, MediaError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.txt").write_text(message + "\n")
            rows.append({"row": index, "name": job.name, "status": "failed", "error": message})
            if not quiet:
                print(f"[generate] row {index} ({job.name}) failed: {message}", file=sys.stderr, flush=True)
    summary = {
        "batch": str(batch),
        "rows": rows,
        "ok": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "seconds": round(time.perf_counter() - start, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch.json").write_text(json.dumps(summary, indent=2))
    if not quiet:
        print(
            f"[generate] batch: {summary['ok']} of {len(rows)} rows done, {summary['failed']} failed ({out / 'batch.json'})"
        )
    if summary["failed"]:
        raise SystemExit(1)
    return summary
