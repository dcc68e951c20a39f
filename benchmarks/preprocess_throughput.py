"""Preprocessing throughput: fixed and per-frame costs of the whole command, against bare FaceMesh.

    python benchmarks/preprocess_throughput.py                       # 4 clips x 100 frames, 384 px
    python benchmarks/preprocess_throughput.py --clips 8 --frames 100 --size 720 --workers 1 2 4
    git archive <commit> flowvq | tar -x -C /tmp/before
    python benchmarks/preprocess_throughput.py --compare /tmp/before  # and that code, run by turns

The clips are the test suite's real media (scikit-image's astronaut photograph under a known
motion, speech-like audio, H.264 + AAC in a MEAD-shaped tree). What a user waits for is the
whole command (`flowvq preprocess mead ...` in a fresh interpreter: imports, worker start,
extraction, fit, packing), so that is what is timed, on three trees:

    C clips x F frames,   C clips x 2F frames,   2C clips x F frames

and the times are solved for ``fixed + per_clip * clips + per_frame * frames``: the fixed
cost (interpreter, imports, worker start, merge set-up), the cost of each clip beyond its
frames (opening files, cache writes, the models' reset, packing a record) and the cost of a
frame (each the fastest of ``--repeats`` runs: the machine may be shared; with ``--compare``
the two checkouts run by turns, so that both see the same load). The per-frame cost is compared with bare FaceMesh's (``FaceTracker`` alone on frames
decoded beforehand, tracking mode): the limit of the pipeline. Writes
``benchmarks/results/preprocess_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "tests"))


def bare_facemesh(root: Path, fps: float) -> dict[str, float]:
    """Frames/s and ms/frame of FaceMesh alone (one tracker, reset per clip) on decoded frames."""
    from flowvq.data.face import FaceTracker
    from flowvq.data.preprocess.layouts import scan_mead
    from flowvq.data.video import read_video

    videos = [read_video(spec.video.open(), fps) for spec in scan_mead(root, test_speakers=[], val_speakers=[])]
    with FaceTracker(find_small_faces=False) as tracker:
        tracker(videos[0][0])  # the graph's first run
        frames, start = 0, time.perf_counter()
        for video in videos:
            tracker.reset()
            for frame in video:
                tracker(frame)
            frames += len(video)
        elapsed = time.perf_counter() - start
    return {
        "frames": frames,
        "seconds": elapsed,
        "frames_per_s": frames / elapsed,
        "ms_per_frame": 1000 * elapsed / frames,
    }


def run_command(root: Path, out: Path, workers: int, crop: int, source: Path | None) -> dict[str, float]:
    """The whole `flowvq preprocess mead` command in a fresh interpreter: wall time and its parts."""
    command = [
        sys.executable,
        "-c",
        "import sys; from flowvq.cli import main; sys.argv = ['flowvq', *sys.argv[1:]]; main()",
        "preprocess",
        "mead",
        "--root",
        str(root),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--size",
        str(crop),
        "--exp_dim",
        "8",
        "--test_speakers",
        "[]",
        "--val_speakers",
        "[]",
        "--progress",
        "false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    # "<name>: N clips: ...; 12.3 s; failures in ..." is the extraction's own time
    line = next(line for line in done.stdout.splitlines() if " clips: " in line and " s; failures in " in line)
    extraction = float(line.rsplit(" s; failures in ", 1)[0].rsplit("; ", 1)[1])
    return {"seconds": wall, "extraction_seconds": extraction}


def import_seconds(source: Path | None, script: str) -> float:
    """A fresh interpreter running an import script."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def solve(trees: dict[str, tuple[int, int]], times: dict[str, dict[str, float]]) -> dict:
    """Fixed, per-clip and per-frame costs from the three trees' times."""
    design = np.array([[1, c, c * f] for c, f in trees.values()], dtype=np.float64)
    wall = np.array([times[name]["seconds"] for name in trees])
    fixed, per_clip, per_frame = np.linalg.solve(design, wall)
    extraction = np.array([times[name]["extraction_seconds"] for name in trees])
    return {
        "seconds": {name: t["seconds"] for name, t in times.items()},
        "extraction_seconds": {name: t["extraction_seconds"] for name, t in times.items()},
        "fixed_s": float(fixed),
        "per_clip_s": float(per_clip),
        "per_frame_ms": float(1000 * per_frame),
        "outside_extraction_s": float(np.mean(wall - extraction)),  # interpreter, imports, merge, packing
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4, help="C: clips of the smallest tree (even)")
    parser.add_argument("--frames", type=int, default=100, help="F: frames per clip of the shorter trees (25 fps)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per tree and worker count; the fastest counts")
    parser.add_argument("--size", type=int, default=384, help="side of the source video")
    parser.add_argument("--crop", type=int, default=128, help="side of the face crops")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--compare", type=Path, default=None, help="also time the command from this checkout")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]  # the machine may be shared: compare within one run

    from media import build_mead_tree

    trees = {
        "C x F": (args.clips, args.frames),
        "C x 2F": (args.clips, 2 * args.frames),
        "2C x F": (2 * args.clips, args.frames),
    }
    codes = {"this checkout": None, **({f"{args.compare}": args.compare} if args.compare else {})}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        roots = {}
        for name, (clips, frames) in trees.items():
            speakers = {f"M{100 + k:03d}": [("neutral", 1), ("happy", 2)] for k in range(clips // 2)}
            roots[name] = tmp / name.replace(" ", "")
            build_mead_tree(roots[name], speakers, frames, size=args.size)
        bare = bare_facemesh(roots["C x 2F"], 25.0)
        print(f"bare FaceMesh: {bare['frames_per_s']:.1f} frames/s ({bare['ms_per_frame']:.1f} ms/frame)")
        imports, table = {}, {}
        for code, source in codes.items():
            imports[code] = import_seconds(
                source,
                "import flowvq.cli, flowvq.data.preprocess.commands, flowvq.data.face, mediapipe, litdata, librosa",
            )
            # the CLI builds its parser from every command, which imports each command's module
            table[code] = import_seconds(source, "from flowvq.cli import _commands; _commands()")
            print(f"{code}: imports {imports[code]:.1f} s (preprocessing), {table[code]:.1f} s (every CLI command)")
        runs = []
        for workers in args.workers:
            tries: dict[str, dict[str, list]] = {code: {name: [] for name in trees} for code in codes}
            for name, (clips, frames) in trees.items():
                for k in range(args.repeats):
                    for code, source in codes.items():  # by turns: both see the same load
                        out = tmp / f"out-{len(runs)}-{name}-{k}-{code.replace('/', '_')}"
                        tries[code][name].append(run_command(roots[name], out, workers, args.crop, source))
                for code in codes:
                    print(f"{code}, {workers} worker(s), {name} ({clips} x {frames}): "
                          f"{min(t['seconds'] for t in tries[code][name]):.1f} s")  # fmt: skip
            for code in codes:
                best = {name: min(t, key=lambda x: x["seconds"]) for name, t in tries[code].items()}
                runs.append({"code": code, "workers": workers, **solve(trees, best)})
                r = runs[-1]
                print(f"{code}, {workers} worker(s): fixed {r['fixed_s']:.1f} s, per clip {r['per_clip_s']:.2f} s, "
                      f"per frame {r['per_frame_ms']:.1f} ms")  # fmt: skip

    result = {
        "benchmark": "preprocess_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/preprocess_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
        },
        "trees": {name: {"clips": c, "frames_per_clip": f} for name, (c, f) in trees.items()},
        "source_size": args.size,
        "crop_size": args.crop,
        "bare_facemesh": bare,
        "imports_s": imports,
        "cli_command_table_imports_s": table,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preprocess_throughput.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Preprocessing throughput: fixed and per-frame costs",
        "",
        f"`{result['command']}` on {result['machine']['cpus']} CPUs ({result['machine']['platform']}), "
        f"load average {load_before:.1f} at the start and {result['machine']['load_average_after']:.1f} at the end "
        f"(a shared machine: compare rows of one run); trees of {args.clips} x {args.frames}, {args.clips} x "
        f"{2 * args.frames} and {2 * args.clips} x {args.frames} clips x frames, {args.size} px source, {args.crop} px "
        f"crops, the fastest of {args.repeats} runs each; {result['date']}.",
        "",
        "The whole command in a fresh interpreter, timed on the three trees and solved for "
        "`fixed + per_clip * clips + per_frame * frames`.",
        "",
        "| code | what | fixed (s) | per clip (s) | per frame (ms) | per frame vs bare FaceMesh | outside extraction (s) "
        "| wall, C x F (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| | bare FaceMesh (1 process, frames decoded beforehand) | | | {bare['ms_per_frame']:.1f} | 1.00 | | |",
    ]
    for r in runs:
        lines.append(
            f"| {r['code']} | command, {r['workers']} worker(s) | {r['fixed_s']:.1f} | {r['per_clip_s']:.2f} | "
            f"{r['per_frame_ms']:.1f} | {bare['ms_per_frame'] / r['per_frame_ms']:.2f} | "
            f"{r['outside_extraction_s']:.1f} | {r['seconds']['C x F']:.1f} |"
        )
    lines += ["", "Imports alone in a fresh interpreter:"]
    for code in codes:
        lines.append(
            f"- {code}: {imports[code]:.1f} s for preprocessing's modules, {table[code]:.1f} s for the modules of "
            "every CLI command (flowvq.cli builds its parser from all of them, so every command pays this)"
        )
    lines += ["", "Wall times (s):"]
    for r in runs:
        lines.append(
            f"- {r['code']}, {r['workers']} worker(s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items())
        )
    lines.append("")
    (args.out / "preprocess_throughput.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
