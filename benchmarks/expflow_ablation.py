"""The FlowVQTalker ablation of ExpFlow, measured on SynthTalk's held-out speakers.

    python benchmarks/expflow_ablation.py                             # writes SynthTalk 'small' first
    python benchmarks/expflow_ablation.py --data data/synth_small --epochs 8

Trains ExpFlow (the tiny config's model, ``configs/tiny/expflow.yaml``) with the Student's-t
mixture prior, a Gaussian mixture and a single Gaussian, each with and without data dropout,
on the train speakers, and scores each on the test speakers (never seen in training):

- ``nll``: teacher-forced negative log-likelihood per frame and dimension (nats);
- ``emotion_acc``: emotion accuracy of samples drawn with each test window's emotion and
  intensity, by an :class:`~flowvq.lightning_modules.emotion_classifier.EmotionClassifier`
  trained here on the same train speakers (its accuracy on the real test windows is reported
  as the ceiling; 1/8 is chance); the single Gaussian has no emotion component, so its
  samples are label-free;
- ``lipsync``: correlation of the samples' jaw_open with the audio envelope (best lag within
  2 frames), and the same figure for the ground truth;
- ``diversity``: std across 8 samples for the same window, against the ground truth's per-clip
  spread (std over time); ``ratio`` = diversity / spread.

Writes ``benchmarks/results/expflow_ablation.{json,md}``.
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

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
#: How samples are drawn for scoring (kept in the results, so --merge never mixes two ways).
SAMPLING = "clip start: no previous frames; label and intensity of the window"

VARIANTS: dict[str, dict[str, Any]] = {
    "t_mixture+dropout": dict(prior="student_t_mixture"),
    "gauss_mixture+dropout": dict(prior="gaussian_mixture"),
    "gaussian+dropout": dict(prior="gaussian"),
    "t_mixture": dict(prior="student_t_mixture", data_dropout=0.0),
    "gauss_mixture": dict(prior="gaussian_mixture", data_dropout=0.0),
    "gaussian": dict(prior="gaussian", data_dropout=0.0),
    # beyond the paper: how the dropout is drawn, and noise on the history
    "t_mixture+frame_dropout": dict(prior="student_t_mixture", data_dropout_mode="frame"),
    "t_mixture+dropout+history_noise": dict(prior="student_t_mixture", history_noise=0.3),
}


def _trainer(epochs: int, root: Path) -> Any:
    from lightning.pytorch import Trainer

    return Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        default_root_dir=root,
    )


def _data(root: Path, batch_size: int, windows_per_clip: int, window: int = 32) -> Any:
    from flowvq.datamodules import CoefficientDataModule

    return CoefficientDataModule(
        root, window=window, prev_frames=4, batch_size=batch_size, windows_per_clip=windows_per_clip
    )


def train_classifier(root: Path, epochs: int, work: Path) -> tuple[Any, float]:
    from flowvq.lightning_modules.emotion_classifier import EmotionClassifier

    data = _data(root, 32, 2)
    torch.manual_seed(0)
    classifier = EmotionClassifier(
        **{k: v for k, v in data.dims.items() if k in ("exp_dim", "pose_dim", "num_emotions")}
    )
    _trainer(epochs, work).fit(classifier, datamodule=data)
    return classifier.eval(), classifier_accuracy(classifier, root)


def classifier_accuracy(classifier: Any, root: Path) -> float:
    """Accuracy of the emotion classifier on the real test windows (the ceiling for samples)."""
    data = _data(root, 32, 1)
    data.setup("test")
    correct = total = 0
    for batch in data.test_dataloader():
        probs = classifier.predict_proba(batch["exp"], mask=batch["mask"])
        correct += int((probs.argmax(-1) == batch["emotion"]).sum())
        total += len(batch["emotion"])
    return correct / max(total, 1)


@torch.no_grad()
def evaluate(model: Any, root: Path, classifier: Any, samples: int, temperature: float) -> dict[str, float]:
    from einops import rearrange

    from flowvq.metrics.diversity import SampleDiversity
    from flowvq.metrics.lipsync import LipSyncCorrelation

    data = _data(root, 16, 1)
    data.setup("test")
    model.eval()
    diversity, lipsync, lipsync_truth = SampleDiversity(), LipSyncCorrelation(), LipSyncCorrelation()
    nll_sum = frames = correct = scored = 0.0
    jaw = int(model.jaw_index)
    generator_seed = 0
    for batch in data.test_dataloader():
        mask = batch["mask"]
        n_frames = float(mask.sum())
        nll_sum += float(model.nll(batch)) * n_frames
        frames += n_frames
        x = batch["exp"]
        b = x.shape[0]
        component = None if model.hparams.prior == "gaussian" else batch["emotion"].repeat_interleave(samples)
        level = None if component is None else batch["intensity"].repeat_interleave(samples)
        torch.manual_seed(generator_seed)
        generator_seed += 1
        # from a clip start (no previous frames): the ground truth's history would hand the
        # samples the window's emotion whatever the prior does
        drawn = model.net.sample(batch["mel"].repeat_interleave(samples, 0), component, level, temperature)
        drawn = rearrange(drawn, "(b n) t d -> b n t d", b=b)
        diversity.update(drawn, x, mask)
        lipsync.update(drawn[..., jaw], batch["energy"], mask)
        lipsync_truth.update(x[..., jaw], batch["energy"], mask)
        probs = classifier.predict_proba(
            rearrange(drawn, "b n t d -> (b n) t d"), mask=mask.repeat_interleave(samples, 0)
        )
        labels = batch["emotion"].repeat_interleave(samples)
        correct += float((probs.argmax(-1) == labels).sum())
        scored += len(labels)
    spread = diversity.compute()
    return {
        "nll": nll_sum / frames,
        "emotion_acc": correct / scored,
        "lipsync_samples": float(lipsync.compute()),
        "lipsync_truth": float(lipsync_truth.compute()),
        "diversity": float(spread["diversity"]),
        "gt_spread": float(spread["gt_spread"]),
        "diversity_ratio": float(spread["ratio"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="SynthTalk root (default: write 'small' to a temp dir)")
    parser.add_argument("--epochs", type=int, default=6, help="ExpFlow training epochs per variant")
    parser.add_argument("--classifier-epochs", type=int, default=10)
    parser.add_argument(
        "--classifier", type=Path, default=None, help="EmotionClassifier checkpoint (default: train one)"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS)[:6], choices=list(VARIANTS))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--merge", action="store_true", help="keep other variants' rows of the last run")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from flowvq.lightning_modules.coefficient_flow import CoefficientFlow

    work = Path(tempfile.mkdtemp(prefix="expflow_ablation_"))
    root = args.data
    if root is None or not (root / "dataset.json").is_file():
        from flowvq.data.synth import synth

        root = root or work / "synth_small"
        synth(root, preset="small", seed=0, frames=False)
    started = time.perf_counter()
    if args.classifier is not None:
        from flowvq.lightning_modules.emotion_classifier import EmotionClassifier

        classifier = EmotionClassifier.load_from_checkpoint(args.classifier, map_location="cpu", weights_only=False)
        ceiling = classifier_accuracy(classifier, root)
    else:
        classifier, ceiling = train_classifier(root, args.classifier_epochs, work)
    print(f"classifier accuracy on real test windows: {ceiling:.3f}", flush=True)
    config = yaml.safe_load((ROOT / "configs/tiny/expflow.yaml").read_text())["model"]["init_args"]
    config = {k: v for k, v in config.items() if k != "emotion_classifier"}
    rows = []
    for name in args.variants:
        data = _data(root, 16, 4)
        torch.manual_seed(0)
        model = CoefficientFlow(**{**config, **VARIANTS[name], **data.dims})
        start = time.perf_counter()
        _trainer(args.epochs, work).fit(model, datamodule=data)
        seconds = time.perf_counter() - start
        row = {"variant": name, "train_s": seconds, **evaluate(model, root, classifier, args.samples, args.temperature)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "python benchmarks/expflow_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    commands = [command]
    previous = RESULTS / "expflow_ablation.json"
    if args.merge and previous.is_file():
        # rows of an earlier run with the same data and epochs (other variants, run apart)
        earlier = json.loads(previous.read_text())
        same = (earlier.get(k) for k in ("data", "epochs", "sampling"))
        if tuple(same) == (str(root), args.epochs, SAMPLING):
            done = {r["variant"] for r in rows}
            rows = [r for r in earlier["rows"] if r["variant"] not in done] + rows
            rows.sort(key=lambda r: list(VARIANTS).index(r["variant"]))
            commands = earlier.get("commands", [earlier.get("command")]) + commands
    result = {
        "command": command,
        "commands": commands,
        "data": str(root),
        "epochs": args.epochs,
        "sampling": SAMPLING,
        "classifier_accuracy_real": ceiling,
        "total_s": time.perf_counter() - started,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "expflow_ablation.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# ExpFlow ablation (SynthTalk, held-out test speakers)",
        "",
        "`"
        + "` and `".join(commands)
        + f"`: {args.epochs} epochs per variant on the train speakers of SynthTalk 'small'; "
        f"{args.samples} samples per test window at temperature {args.temperature}, from a clip start (no "
        "previous frames), with the window's emotion and intensity. Emotion classifier "
        f"accuracy on the real test windows: {ceiling:.3f} (chance 0.125).",
        "",
        "| variant | held-out NLL | emotion acc (samples) | lip-sync samples | lip-sync truth | diversity | GT spread | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['nll']:.3f} | {r['emotion_acc']:.3f} | {r['lipsync_samples']:.3f} | "
            f"{r['lipsync_truth']:.3f} | {r['diversity']:.3f} | {r['gt_spread']:.3f} | {r['diversity_ratio']:.2f} |"
        )
    (RESULTS / "expflow_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
