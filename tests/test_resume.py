"""A fit killed by SIGKILL and resumed with ``--ckpt_path last`` continues as if never stopped."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOWVQ = Path(sys.executable).parent / "flowvq"


def fit(args: list[str], cwd: Path, log_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [str(FLOWVQ), "fit", *args, "--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]
    command += ["--trainer.logger.init_args.save_dir", str(log_dir)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def losses(log_dir: Path) -> dict[int, float]:
    values = {}
    for path in log_dir.rglob("metrics.csv"):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                if row.get("train/nll"):
                    values[int(row["step"])] = float(row["train/nll"])
    return values


def test_killed_fit_resumes_with_the_same_steps_and_losses(random_dataset, tmp_path):
    config = [
        "--config",
        str(ROOT / "configs/tiny/expflow.yaml"),
        "--data.init_args.root",
        str(random_dataset),
        "--data.init_args.window",
        "8",
        "--data.init_args.windows_per_clip",
        "1",
        "--data.init_args.batch_size",
        "4",  # 12 train clips: 3 steps an epoch
        # deterministic: no data dropout, history noise or own-sample history (order and windows are seeded)
        "--model.init_args.data_dropout",
        "0",
        "--model.init_args.history_noise",
        "0",
        "--model.init_args.self_history",
        "0",
        "--model.init_args.val_sample_batches",
        "0",
        "--trainer.max_epochs",
        "4",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.log_every_n_steps",
        "1",
    ]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir()
    interrupted.mkdir()
    run = fit(config, straight, straight / "logs")
    assert run.returncode == 0, run.stderr[-3000:]

    # killed mid-epoch 2 (step 7), after the epoch-1 checkpoint (step 6)
    killed = fit(
        config + ["--trainer.callbacks+=kill_at.KillAt", "--trainer.callbacks.step", "7"],
        interrupted,
        interrupted / "logs",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = fit(config + ["--ckpt_path", "last"], interrupted, interrupted / "resumed_logs")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout

    expected, got = losses(straight / "logs"), losses(interrupted / "resumed_logs")
    assert max(expected) == max(got) == 11, "both runs end at the same step (4 epochs x 3 steps)"
    assert min(got) == 6, "the resumed run continues from the checkpoint's step"
    for step in sorted(got):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
