"""ExpFlow speed: training windows/s in fp32 and bf16-mixed, sampling frames/s against real time.

    python benchmarks/expflow_speed.py                       # tiny and paper-scale ExpFlow
    python benchmarks/expflow_speed.py --sizes tiny --steps 20 --seconds 10

Measured in one run, on the machine it runs on (rates per CPU second of the process, and per
wall second), for each model size (the model arguments of
``configs/tiny/expflow.yaml`` and ``configs/expflow.yaml``):

- training: windows/s of a full optimisation step (teacher-forced NLL, backward, AdamW) on
  batches in the ``CoefficientDataModule`` format (random tensors: the model's cost, not the
  data loading's), in fp32 and under ``torch.autocast(bfloat16)`` (what Lightning's
  ``bf16-mixed`` does); ratio bf16 / fp32;
- sampling: frames/s of streaming generation (frame by frame, the recurrent state carried)
  for a clip of ``--seconds`` seconds, with 1 and 8 samples at once; ratio to real time
  (25 fps): above 1 generates faster than the clip plays.

Writes ``benchmarks/results/expflow_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
FPS = 25.0
CONFIGS = {"tiny": ROOT / "configs/tiny/expflow.yaml", "paper": ROOT / "configs/expflow.yaml"}
#: Dataset sizes the model is built for: SynthTalk (E=16) and MEAD through mediapipe-pca (E=64).
DIMS = {"tiny": dict(exp_dim=16, pose_dim=6), "paper": dict(exp_dim=64, pose_dim=6)}


def build(size: str) -> tuple[Any, dict[str, Any]]:
    from flowvq.lightning_modules.coefficient_flow import CoefficientFlow

    config = yaml.safe_load(CONFIGS[size].read_text())
    options = dict(config["model"]["init_args"])
    options.update(DIMS[size], mel_bins=80, mel_per_frame=4, num_emotions=8)
    data = config["data"]["init_args"]
    torch.manual_seed(0)
    return CoefficientFlow(**options), data


def batch(size: int, window: int, exp_dim: int, data: dict[str, Any]) -> dict[str, torch.Tensor]:
    prev = data.get("prev_frames", 4)
    columns = (2 * data.get("audio_context", 2) + 1) * 4
    return {
        "exp": torch.randn(size, window, exp_dim),
        "pose": torch.randn(size, window, 6),
        "mel": torch.randn(size, window, columns, 80),
        "prev_exp": torch.randn(size, prev, exp_dim),
        "prev_pose": torch.randn(size, prev, 6),
        "prev_mask": torch.ones(size, prev, dtype=torch.bool),
        "mask": torch.ones(size, window, dtype=torch.bool),
        "emotion": torch.randint(0, 8, (size,)),
        "intensity": torch.randint(0, 3, (size,)),
    }


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(count: float, start: tuple[float, float]) -> tuple[float, float]:
    """``count`` per wall second and per CPU second of this process (robust on a shared machine)."""
    wall, cpu = _clocks()
    return count / (wall - start[0]), count / max(cpu - start[1], 1e-9)


def train_rate(model: Any, data: dict[str, Any], steps: int, bf16: bool, batch_size: int) -> tuple[float, float]:
    """Windows per wall second and per CPU second of full optimisation steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = batch(batch_size, data["window"], model.hparams.exp_dim, data)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.nll(inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator, oneDNN kernels
        step()
    start = _clocks()
    for _ in range(steps):
        step()
    return _rates(steps * batch_size, start)


def sample_rate(model: Any, data: dict[str, Any], samples: int, seconds: float, repeats: int) -> tuple[float, float]:
    """Generated frames (all samples together) per wall second and per CPU second, one clip."""
    frames = int(seconds * FPS)
    columns = (2 * data.get("audio_context", 2) + 1) * 4
    mel = torch.randn(frames, columns, 80)
    model.sample(mel[:10], emotion="happy", num_samples=samples)  # warm-up
    start = _clocks()
    for r in range(repeats):
        model.sample(mel, emotion="happy", num_samples=samples, seed=r)
    return _rates(repeats * samples * frames, start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "paper"], choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per precision")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the sampled clip")
    parser.add_argument("--repeats", type=int, default=2, help="timed sampling runs")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        model, data = build(size)
        batch_size = data["batch_size"]
        fp32, fp32_cpu = train_rate(model, data, args.steps, False, batch_size)
        bf16, bf16_cpu = train_rate(model, data, args.steps, True, batch_size)
        one, one_cpu = sample_rate(model, data, 1, args.seconds, args.repeats)
        eight, eight_cpu = sample_rate(model, data, 8, args.seconds, args.repeats)
        rows.append(
            {
                "size": size,
                "parameters": sum(p.numel() for p in model.parameters()),
                "batch": batch_size,
                "window": data["window"],
                "train_windows_per_s_fp32": fp32,
                "train_windows_per_s_bf16": bf16,
                "train_windows_per_cpu_s_fp32": fp32_cpu,
                "train_windows_per_cpu_s_bf16": bf16_cpu,
                "bf16_over_fp32_cpu": bf16_cpu / fp32_cpu,
                "sample_frames_per_s_1": one,
                "sample_frames_per_s_8": eight,
                "sample_frames_per_cpu_s_1": one_cpu,
                "sample_frames_per_cpu_s_8": eight_cpu,
                "realtime_1_cpu": one_cpu / FPS,
                "realtime_8_cpu": eight_cpu / FPS,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    machine = {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "command": "python benchmarks/expflow_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "expflow_speed.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = [
        "# ExpFlow speed",
        "",
        f"`{machine['command']}` on {machine['processor']}, {machine['threads']} threads, torch {machine['torch']}.",
        f"Sampling: a {args.seconds:.0f} s clip streamed frame by frame; real time = {FPS:.0f} fps.",
        "",
        "Rates per CPU second of this process (per wall second in brackets: the machine may be shared);",
        "the real-time ratios are per CPU second, i.e. for one uncontended set of threads.",
        "",
        "| size | params | batch x window | train win/s fp32 | train win/s bf16 | bf16/fp32 "
        "| sample fps (1) | x real time | sample fps (8) | x real time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['parameters']:,} | {r['batch']} x {r['window']} | "
            f"{r['train_windows_per_cpu_s_fp32']:.1f} ({r['train_windows_per_s_fp32']:.1f}) | "
            f"{r['train_windows_per_cpu_s_bf16']:.1f} ({r['train_windows_per_s_bf16']:.1f}) | "
            f"{r['bf16_over_fp32_cpu']:.2f} | "
            f"{r['sample_frames_per_cpu_s_1']:.0f} ({r['sample_frames_per_s_1']:.0f}) | {r['realtime_1_cpu']:.1f} | "
            f"{r['sample_frames_per_cpu_s_8']:.0f} ({r['sample_frames_per_s_8']:.0f}) | {r['realtime_8_cpu']:.1f} |"
        )
    (RESULTS / "expflow_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
