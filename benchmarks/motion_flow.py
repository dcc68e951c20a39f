"""The motion flow (GMTalker's NFMG: head pose, blink, gaze) as a user samples it, with and without pretraining.

    python benchmarks/motion_flow.py --pretrain /tmp/small_s1 --target /tmp/tiny_s2 --variants affine spline

What stands in for what (SynthTalk, written with blink and gaze):

- LRS3, the large pretraining corpus: ``--pretrain``, e.g. preset ``small`` seed 1 (12 train
  speakers, 540 clips; the Gaussian prior ignores its emotion labels);
- MEAD / the target person: ``--target``, e.g. preset ``tiny`` seed 2 (4 train speakers, 32
  clips), scored on its test speakers (never seen by either training).

For each variant (model options over ``configs/tiny/motion_flow.yaml``) and seed, two models:

- ``scratch``: trained on the target's train split for ``--target-epochs`` epochs;
- ``pretrained``: trained on ``--pretrain`` for ``--pretrain-epochs`` epochs, then fine-tuned
  on the target for ``--target-epochs`` epochs from that checkpoint (``init_from``, its
  normalisation kept, the learning rate scaled by ``--finetune-lr`` as
  ``configs/motion_flow_finetune.yaml`` does against ``motion_flow.yaml``).

Both are sampled as :mod:`benchmarks.flow_long_sequence` samples PoseFlow (its ``evaluate``:
whole test clips, and their audio joined to 10 s and 60 s, 4 samples from a clip start) at
each ``--temperatures``: per-dim std, lag-1 and lag-10 autocorrelation of pose, blink and
gaze against the ground truth's, blink rate (closures past half shut per second) against the
truth's, tails, clamps and drift.

Writes ``benchmarks/results/motion_flow.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

#: variant -> model options over configs/tiny/motion_flow.yaml
VARIANTS: dict[str, dict[str, Any]] = {
    "affine": {},  # the config: the papers' Glow coupling, self_history 0.5
    "spline": dict(coupling="spline"),  # rational-quadratic spline couplings
    "affine_no_self_history": dict(self_history=0.0),
    "spline_no_self_history": dict(coupling="spline", self_history=0.0),
}
SAMPLES = 4


def train(
    config: dict[str, Any], root: Path, epochs: int, checkpoint: Path, work: Path, **options: Any
) -> tuple[Any, float | None]:
    """A motion flow trained on ``root`` for ``epochs`` (or loaded from ``checkpoint`` if it exists)."""
    from expflow_ablation import _data, _trainer

    from flowvq.lightning_modules.coefficient_flow import CoefficientFlow

    data = _data(root, 16, 4)
    if checkpoint.is_file():
        model = CoefficientFlow.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
        model.read_card(data.card)
        return model, None
    model = CoefficientFlow(**{**config, **options, **data.dims})
    start = time.perf_counter()
    trainer = _trainer(epochs, work)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(checkpoint)
    return model, time.perf_counter() - start


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Ratios of a long-speech report against its ground truth, per dim."""
    std = np.array(report["std"]) / np.maximum(np.array(report["truth_std"]), 1e-9)

    def ratio(key: str) -> list[float]:
        truth = np.array(report[f"truth_{key}"])
        return (np.array(report[key]) / np.where(np.abs(truth) > 1e-9, truth, np.nan)).tolist()

    return {"std_ratio": std.tolist(), "lag1_ratio": ratio("lag1"), "lag10_ratio": ratio("lag10")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", type=Path, required=True, help="SynthTalk root standing in for LRS3")
    parser.add_argument("--target", type=Path, required=True, help="SynthTalk root standing in for MEAD")
    parser.add_argument("--variants", nargs="+", default=["affine", "spline"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--target-epochs", type=int, default=40)
    parser.add_argument("--finetune-lr", type=float, default=0.2, help="fine-tuning lr / pretraining lr")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.8, 1.0])
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints (default: a temp folder)")
    parser.add_argument("--merge", action="store_true", help="keep other variants' rows of earlier runs")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from flow_long_sequence import evaluate

    from flowvq.pipeline.flow_samples import whole_clips

    work = args.work or Path(tempfile.mkdtemp(prefix="motion_flow_"))
    work.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "configs/tiny/motion_flow.yaml").read_text())["model"]["init_args"]
    clips = whole_clips(args.target, config.get("prev_frames", 4))
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            options = VARIANTS[variant]
            tag = f"{variant}_seed{seed}"
            torch.manual_seed(seed)
            scratch, scratch_s = train(
                config,
                args.target,
                args.target_epochs,
                work / f"scratch_{tag}_e{args.target_epochs}.ckpt",
                work,
                **options,
            )
            torch.manual_seed(seed)
            pretrained_path = work / f"pretrain_{tag}_e{args.pretrain_epochs}.ckpt"
            _, pretrain_s = train(config, args.pretrain, args.pretrain_epochs, pretrained_path, work, **options)
            torch.manual_seed(seed)
            finetuned, finetune_s = train(
                config,
                args.target,
                args.target_epochs,
                work / f"finetune_{tag}_e{args.pretrain_epochs}_{args.target_epochs}.ckpt",
                work,
                **options,
                init_from=str(pretrained_path),
                lr=config["lr"] * args.finetune_lr,
            )
            for name, model, seconds in (
                ("scratch", scratch, {"train_s": scratch_s}),
                ("pretrained", finetuned, {"pretrain_s": pretrain_s, "finetune_s": finetune_s}),
            ):
                for temperature in args.temperatures:
                    result = evaluate(model, clips, None, "pose", temperature=temperature)
                    for report in result["long"].values():
                        report.pop("plot", None)
                        report.update(summary(report))
                    row = {"variant": variant, "training": name, "seed": seed, "temperature": temperature}
                    rows.append({**row, **seconds, **result})
                    long = result["long"]["any_60s"]
                    print(
                        json.dumps({**row, "blink": [long.get("blink_rate"), long.get("truth_blink_rate")]}), flush=True
                    )
    command = "python benchmarks/motion_flow.py " + " ".join(sys.argv[1:] if argv is None else argv)
    commands = [command]
    path = RESULTS / "motion_flow.json"
    setting = {
        "pretrain": str(args.pretrain),
        "target": str(args.target),
        "pretrain_epochs": args.pretrain_epochs,
        "target_epochs": args.target_epochs,
    }
    if args.merge and path.is_file():
        earlier = json.loads(path.read_text())
        if earlier.get("setting") == setting:
            done = {(r["variant"], r["training"], r["seed"], r["temperature"]) for r in rows}
            rows = [
                r for r in earlier["rows"] if (r["variant"], r["training"], r["seed"], r["temperature"]) not in done
            ] + rows
            commands = earlier["commands"] + commands
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"commands": commands, "setting": setting, "rows": rows}, indent=2))
    (RESULTS / "motion_flow.md").write_text(markdown(commands, setting, rows))
    print((RESULTS / "motion_flow.md").read_text())
    return 0


def _dims(values: list[float]) -> str:
    return " ".join("-" if v is None or not np.isfinite(v) else f"{v:.2f}" for v in values)


def markdown(commands: list[str], setting: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    names = next((L["names"] for r in rows for L in r["long"].values()), [])
    lines = [
        "# The motion flow (NFMG): pose, blink and gaze on held-out speakers, pretrained or not",
        "",
        "`" + "` and `".join(commands) + "`",
        "",
        f"SynthTalk stands in for both corpora: `{setting['pretrain']}` for LRS3 (pretraining, "
        f"{setting['pretrain_epochs']} epochs) and `{setting['target']}` for MEAD / the target (training or "
        f"fine-tuning, {setting['target_epochs']} epochs); scored on the target's test speakers. Model: "
        "`configs/tiny/motion_flow.yaml` with the variant's options. "
        f"{SAMPLES} samples per clip from a clip start. Ratios are sample / ground truth per dim, in the order "
        f"{', '.join(names)}; normalised units (train std = 1). Blink rate: closures past half shut per second.",
        "",
        "## Long speech (test clips joined, 10 s and 60 s)",
        "",
        "| variant | training | seed | T | audio | std ratio | lag-1 ratio | lag-10 ratio | blink rate (truth) | "
        "drift first / last (truth) | tail (truth) | clamped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for key, L in r["long"].items():
            lines.append(
                f"| {r['variant']} | {r['training']} | {r['seed']} | {r['temperature']} | {key} | "
                f"{_dims(L['std_ratio'])} | {_dims(L['lag1_ratio'])} | {_dims(L['lag10_ratio'])} | "
                f"{L.get('blink_rate', float('nan')):.2f} ({L.get('truth_blink_rate', float('nan')):.2f}) | "
                f"{L['drift_first']:.2f} / {L['drift_last']:.2f} ({L['truth_drift']:.2f}) | "
                f"{L['tail_fraction']:.4f} ({L['truth_tail_fraction']:.4f}) | {L['clamp_fraction']:.4f} |"
            )
    lines += [
        "",
        "## Whole test clips",
        "",
        "| variant | training | seed | T | tail (truth) | clamped | diversity / GT spread | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["clips"]
        seconds = r.get("train_s") or sum(v for k, v in r.items() if k.endswith("_s") and v) or float("nan")
        lines.append(
            f"| {r['variant']} | {r['training']} | {r['seed']} | {r['temperature']} | "
            f"{c['tail_fraction']:.4f} ({c['truth_tail_fraction']:.4f}) | {c['clamp_fraction']:.4f} | "
            f"{c['diversity_ratio']:.2f} | {seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
