"""The SLURM template: under the environment sbatch + srun give its tasks, Lightning sees the
intended world size and ranks, and the DDP fit it starts runs to the end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "configs/slurm/fit.sbatch"

# srun on one node: one copy of the command per task, each with the variables srun sets.
FAKE_SRUN = """#!/usr/bin/env bash
tasks=$SLURM_NTASKS_PER_NODE
export SLURM_NTASKS=$((tasks * SLURM_JOB_NUM_NODES)) SLURM_NNODES=$SLURM_JOB_NUM_NODES SLURM_NODEID=0
pids=()
for ((i = 0; i < tasks; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" > "$TASK_LOGS/task$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""


def sbatch_options(path: Path) -> dict[str, str]:
    options = {}
    for line in path.read_text().splitlines():
        if match := re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line):
            options[match.group(1)] = match.group(2) or ""
    return options


def test_template_asks_for_requeue_signal_and_one_task_per_device():
    options = sbatch_options(TEMPLATE)
    assert options["signal"] == "SIGUSR1@90"
    assert options["ntasks-per-node"] == options["gres"].rsplit(":", 1)[-1], "one task per GPU"
    assert "srun flowvq fit" in TEMPLATE.read_text()


def test_lightning_sees_the_world_the_template_sets_up(named_random_dataset, tmp_path):
    """The VQGAN: two optimizers stepped by hand, the case DDP's reducer refuses by default."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "PL_", "LOCAL_RANK", "RANK"))
    }
    env.update(
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env.get('PATH', '')}",
        VENV=str(Path(sys.executable).parents[1]),
        TASK_LOGS=str(logs),
        OMP_NUM_THREADS="1",
        # what sbatch exports for `--nodes=1 --ntasks-per-node=2`
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="flowvq",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NODELIST="localhost",
        SLURM_CPUS_PER_TASK="1",
    )
    result = subprocess.run(
        [
            "bash",
            str(TEMPLATE),
            str(ROOT / "configs/tiny/vqgan.yaml"),
            "--data.init_args.root",
            str(named_random_dataset),
            "--data.init_args.frames_per_clip",
            "2",
            "--data.init_args.batch_size",
            "4",
            "--model.init_args.disc_start",
            "1",
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    task_logs = {path.name: path.read_text() for path in sorted(logs.glob("task*.log"))}
    assert result.returncode == 0, "\n".join(log[-2000:] for log in task_logs.values()) + result.stderr[-1000:]
    assert len(task_logs) == 2
    for rank in range(2):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in task_logs[f"task{rank}.log"]
    (checkpoint,) = tmp_path.rglob("last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3, "2 batches: the generator's step, then both optimizers' steps"
