"""Preprocessing throughput: the per-clip pipeline against bare FaceMesh, and 1 vs 2 worker processes.

    python benchmarks/preprocess_throughput.py                        # 8 clips x 50 frames, 384 px
    python benchmarks/preprocess_throughput.py --clips 16 --frames 100 --size 720 --workers 1 2 4

The clips are the test suite's real media (scikit-image's astronaut photograph under a known
motion, speech-like audio, H.264 + AAC in a MEAD-shaped tree). Measured in one run:

- bare FaceMesh: frames/s of ``FaceTracker`` alone (tracking mode, one tracker per clip) on
  frames decoded beforehand: the limit of the pipeline;
- the pipeline: frames/s of the whole per-clip extraction (decode twice, FaceMesh, gap fill,
  smoothed crop, JPEG crops, audio decode + log-mel, atomic cache write) through the same
  worker function the ``preprocess`` commands use, in a process pool of 1, 2, ... workers;
  each pool is warmed up first (imports, one FaceMesh graph per worker), so the numbers are
  the steady rate a long run sees; the warm-up time is reported separately;
- the merge (Procrustes mean, PCA, litdata packing) per clip.

Ratios: ``pipeline / bare`` (1 worker) and ``N workers / 1 worker``. Writes
``benchmarks/results/preprocess_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "tests"))


def _warm(_: int) -> float:
    """Run in each pool worker before timing: imports, librosa's first call, a first FaceMesh graph."""
    start = time.perf_counter()
    import numpy as np

    from flowvq.data.audio import log_mel
    from flowvq.data.card import AudioFeatures
    from flowvq.data.face import FaceTracker

    log_mel(np.zeros(6400, dtype=np.float32), 10, AudioFeatures())  # librosa's lazy imports and JIT: ~4 s once
    with FaceTracker() as tracker:
        tracker(np.zeros((64, 64, 3), dtype=np.uint8))
    time.sleep(0.5)  # keep this worker busy so that every worker gets one warm-up task
    return time.perf_counter() - start


def _cpu() -> float:
    """CPU seconds of this process, all threads (mediapipe runs its graph on several)."""
    times = os.times()
    return times.user + times.system


def _timed_work(task) -> tuple:
    """The commands' worker function, with its CPU time."""
    from flowvq.data.preprocess.runner import _work

    start = _cpu()
    result = _work(task)
    return result, _cpu() - start


def bare_facemesh(specs, fps: float) -> dict[str, float]:
    from flowvq.data.face import FaceTracker
    from flowvq.data.video import read_video

    videos = [read_video(spec.video.open(), fps) for spec in specs]
    with FaceTracker() as tracker:  # warm-up graph
        tracker(videos[0][0])
    frames, elapsed, cpu = 0, 0.0, 0.0
    for video in videos:
        start, start_cpu = time.perf_counter(), _cpu()
        with FaceTracker() as tracker:
            for frame in video:
                tracker(frame)
        elapsed += time.perf_counter() - start
        cpu += _cpu() - start_cpu
        frames += len(video)
    return {
        "frames": frames,
        "seconds": elapsed,
        "frames_per_s": frames / elapsed,
        "cpu_ms_per_frame": 1000 * cpu / frames,
    }


def pipeline(specs, config, cache: Path, workers: int) -> dict[str, float]:
    from flowvq.data.preprocess.extract import check_settings
    from flowvq.data.preprocess.runner import _init_worker

    check_settings(cache, config.to_dict())
    tasks = [(spec, config, str(cache), None) for spec in specs]
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker) as pool:
        start = time.perf_counter()
        warm = pool.map(_warm, range(workers), chunksize=1)
        warm_up = time.perf_counter() - start
        start = time.perf_counter()
        timed = list(pool.imap_unordered(_timed_work, tasks))
        elapsed = time.perf_counter() - start
    results = [result for result, _ in timed]
    failed = [r for r in results if r[1] is not None]
    if failed:
        raise RuntimeError(f"benchmark clips failed: {failed}")
    frames = sum(_frames(cache, spec.clip_id) for spec in specs)
    return {
        "workers": workers,
        "frames": frames,
        "seconds": elapsed,
        "frames_per_s": frames / elapsed,
        "clips_per_s": len(specs) / elapsed,
        "cpu_ms_per_frame": 1000 * sum(cpu for _, cpu in timed) / frames,
        "warm_up_s": warm_up,
        "worker_warm_up_s": max(warm),
    }


def _frames(cache: Path, clip_id: str) -> int:
    from flowvq.data.preprocess.extract import cache_paths, load_cached

    return load_cached(cache_paths(cache, clip_id)[0], ("meta",))["meta"]["num_frames"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=50, help="frames per clip (25 fps)")
    parser.add_argument("--size", type=int, default=384, help="side of the source video")
    parser.add_argument("--crop", type=int, default=256, help="side of the face crops")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]  # the machine may be shared: the ratios are what compares

    from media import build_mead_tree

    from flowvq.data.preprocess.commands import extract_config
    from flowvq.data.preprocess.layouts import scan_mead
    from flowvq.data.preprocess.merge import merge_cache

    config = extract_config(size=args.crop)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        speakers = {f"M{100 + k:03d}": [("neutral", 1), ("happy", 2)] for k in range((args.clips + 1) // 2)}
        start = time.perf_counter()
        build_mead_tree(tmp / "MEAD", speakers, args.frames, size=args.size)
        specs = scan_mead(tmp / "MEAD", test_speakers=[], val_speakers=[])[: args.clips]
        print(
            f"built {len(specs)} clips of {args.frames} frames at {args.size} px in {time.perf_counter() - start:.1f} s"
        )

        bare = bare_facemesh(specs, config.fps)
        print(f"bare FaceMesh: {bare['frames_per_s']:.1f} frames/s")
        runs = []
        for workers in args.workers:
            run = pipeline(specs, config, tmp / f"cache{workers}", workers)
            runs.append(run)
            print(
                f"pipeline, {workers} worker(s): {run['frames_per_s']:.1f} frames/s (warm-up {run['warm_up_s']:.1f} s)"
            )
        start = time.perf_counter()
        merge_cache(
            tmp / f"cache{args.workers[0]}",
            tmp / "data",
            "bench",
            config,
            specs,
            exp_dim=min(64, len(specs) * args.frames // 2),
        )
        merge_s = time.perf_counter() - start
        print(f"merge: {merge_s:.1f} s")

    one = next((r for r in runs if r["workers"] == 1), runs[0])
    result = {
        "benchmark": "preprocess_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/preprocess_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
        },
        "clips": len(specs),
        "frames_per_clip": args.frames,
        "source_size": args.size,
        "crop_size": args.crop,
        "bare_facemesh": bare,
        "pipeline": runs,
        "merge_seconds": merge_s,
        "merge_seconds_per_clip": merge_s / len(specs),
        "ratio_pipeline_vs_bare_facemesh": one["frames_per_s"] / bare["frames_per_s"],
        "ratio_pipeline_vs_bare_facemesh_cpu": bare["cpu_ms_per_frame"] / one["cpu_ms_per_frame"],
        "scaling_vs_1_worker": {str(r["workers"]): r["frames_per_s"] / one["frames_per_s"] for r in runs},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preprocess_throughput.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Preprocessing throughput",
        "",
        f"`{result['command']}` on {result['machine']['cpus']} CPUs ({result['machine']['platform']}), "
        f"load average {result['machine']['load_average_before']:.1f} at the start; {len(specs)} clips x "
        f"{args.frames} frames, {args.size} px source, {args.crop} px crops; {result['date']}.",
        "",
        "| what | frames/s (wall) | vs bare FaceMesh | vs 1 worker | CPU ms/frame | vs bare (CPU) | warm-up (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| bare FaceMesh (1 process) | {bare['frames_per_s']:.1f} | 1.00 | | {bare['cpu_ms_per_frame']:.1f} | 1.00 | |",
    ]
    for r in runs:
        lines.append(
            f"| pipeline, {r['workers']} worker(s) | {r['frames_per_s']:.1f} | "
            f"{r['frames_per_s'] / bare['frames_per_s']:.2f} | {r['frames_per_s'] / one['frames_per_s']:.2f} | "
            f"{r['cpu_ms_per_frame']:.1f} | {bare['cpu_ms_per_frame'] / r['cpu_ms_per_frame']:.2f} | "
            f"{r['warm_up_s']:.1f} |"
        )
    lines += [
        "",
        f"Merge (mean shape, PCA, litdata packing): {merge_s:.1f} s ({result['merge_seconds_per_clip']:.2f} s/clip).",
        "",
    ]
    (args.out / "preprocess_throughput.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
