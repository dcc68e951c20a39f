"""CoefficientDataModule under real DDP: two CPU processes (gloo) for two epochs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flowvq.data.shards import open_split

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_ddp_ranks_see_disjoint_clips_and_finish(random_dataset: Path, tmp_path: Path) -> None:
    epochs, batch_size = 2, 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "GLOBAL_RANK", "LOCAL_RANK", "NODE_RANK", "LITDATA_POSIX_FAST"):
        env.pop(name, None)
    command = [sys.executable, str(WORKER), "--root", str(random_dataset), "--out", str(tmp_path)]
    command += ["--epochs", str(epochs), "--batch-size", str(batch_size), "--num-workers", "1"]
    # a rank waiting forever in a collective at the end of an epoch shows up as this timeout
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, f"DDP run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    shards = open_split(random_dataset, "train")
    train_clips = {shards[i]["clip_id"] for i in range(len(shards))}
    starts_by_epoch = []
    for epoch in range(epochs):
        reports = [json.loads((tmp_path / f"rank{rank}_epoch{epoch}.json").read_text()) for rank in (0, 1)]
        assert all(r["world_size"] == 2 for r in reports)
        train = [{clip for clip, _ in r["train"]} for r in reports]
        # every clip at most once per rank, none on both ranks
        assert all(len(r["train"]) == len(seen) for r, seen in zip(reports, train))
        assert not train[0] & train[1], f"epoch {epoch}: both ranks saw {train[0] & train[1]}"
        # the same number of steps on both ranks, and together the whole split (12 clips = 2 ranks x 3 batches of 2)
        assert len(train[0]) == len(train[1]) > 0
        assert train[0] | train[1] == train_clips
        val = [{clip for clip, _ in r["val"]} for r in reports]
        assert val[0] and val[1] and not val[0] & val[1]
        starts_by_epoch.append(dict(pair for r in reports for pair in r["train"]))
    assert starts_by_epoch[0] != starts_by_epoch[1]  # new random windows in the second epoch
