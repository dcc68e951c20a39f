"""ExpFlow and PoseFlow as a user samples them: whole held-out clips and long held-out speech.

    python benchmarks/flow_long_sequence.py --data /tmp/synth_s1 --field exp --seeds 0 1
    python benchmarks/flow_long_sequence.py --data /tmp/synth_s1 --field pose --variants paper recurrent_window

Trains each variant (the tiny config's model, ``configs/tiny/expflow.yaml`` or
``poseflow.yaml``, with the variant's options) on the train speakers for ``--epochs`` epochs
per seed, then samples on the test speakers (never seen), from a clip start, at T=0.8:

- **whole clips**: every test clip, 4 samples with its emotion and intensity (PoseFlow:
  label-free). Fraction of values beyond 5 std, of clamped values, clips with any value beyond
  5 std, emotion accuracy of whole sampled clips (ExpFlow; an emotion classifier trained here
  on the train speakers), lip-sync (jaw against the audio envelope), all beside the ground
  truth's own figures;
- **long speech**: test clips of one emotion concatenated to 10 s and 60 s (250 and 1500
  frames; ExpFlow: happy and sad, PoseFlow: any), 4 samples: the RMS distance from the ground
  truth's mean per 32-frame window (first, last, worst) against the ground truth's, values
  beyond 5 std, clamps, frame-to-frame change; PoseFlow also per-dim std, lag-1 and lag-10
  autocorrelation and blink rate against the ground truth's.

Writes ``benchmarks/results/<expflow|poseflow>_long_sequence.{json,md}`` and a plot of
250 sampled frames against the ground truth per variant (``..._<variant>.png``).
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

#: variant -> model options over the tiny config (the paper's method is "paper")
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "recurrent_window": dict(recurrent_window=32),
    "recurrent_window+history_noise": dict(recurrent_window=32, history_noise=0.3),
    "history_noise0.3": dict(history_noise=0.3),
    "history_noise0.6": dict(history_noise=0.6),
    "self_history0.5": dict(self_history=0.5),
    "self_history0.5+history_noise0.3": dict(self_history=0.5, history_noise=0.3),
    # spline couplings: a frame's conditional can be multimodal (blink onsets; issue 13)
    "self_history0.5+spline": dict(self_history=0.5, coupling="spline"),
    # the prior question (the paper prefers the t-mixture for small emotional datasets)
    "gauss_mixture": dict(prior="gaussian_mixture"),
    "gauss_mixture+history_noise0.3": dict(prior="gaussian_mixture", history_noise=0.3),
    "gauss_mixture+self_history0.5": dict(prior="gaussian_mixture", self_history=0.5),
    "no_frame_dropout": dict(data_dropout_mode="sequence"),  # PoseFlow's configs use frame mode
    # training windows of 64 frames (the DataModule's window; "window" is not a model option)
    "window64": dict(window=64),
    "window64+recurrent_window": dict(window=64, recurrent_window=32),
}
LONG = {"10s": 250, "60s": 1500}
SAMPLES, TEMPERATURE, WINDOW = 4, 0.8, 32


def motion_statistics(model: Any, samples: torch.Tensor, truth: torch.Tensor) -> dict[str, Any]:
    """Per-dim lag-1 / lag-10 autocorrelation of samples ``[N, T, D]`` and the ground truth ``[T, D]``,
    and, where a dim is named ``blink``, the blink rate (closures past half shut, per second) of both."""
    from flowvq.metrics.long_sequence import autocorrelation, event_rate

    report = {
        "names": model.feature_names,
        "lag1": autocorrelation(samples, 1).tolist(),
        "truth_lag1": autocorrelation(truth, 1).tolist(),
        "lag10": autocorrelation(samples, 10).tolist(),
        "truth_lag10": autocorrelation(truth, 10).tolist(),
    }
    if "blink" in model.feature_names:
        d = model.feature_names.index("blink")
        report["blink_rate"] = event_rate(samples[..., d] * model.coef_std[d] + model.coef_mean[d], 0.5)
        report["truth_blink_rate"] = event_rate(truth[..., d] * model.coef_std[d] + model.coef_mean[d], 0.5)
    return report


def classify(classifier: Any, sequences: torch.Tensor) -> torch.Tensor:
    return classifier.predict_proba(sequences.float()).argmax(-1)


@torch.no_grad()
def evaluate(
    model: Any, clips: list[dict[str, Any]], classifier: Any, field: str, temperature: float = TEMPERATURE
) -> dict[str, Any]:
    from flowvq.metrics.diversity import SampleDiversity
    from flowvq.metrics.lipsync import LipSyncCorrelation
    from flowvq.metrics.long_sequence import sequence_report, tail_fraction
    from flowvq.pipeline.flow_samples import modelled, sample_joined

    model.eval()
    clip_limit = model.hparams.output_clip
    labelled = field == "exp"
    result: dict[str, Any] = {}
    # -- whole clips
    tails, truth_tails, clamps, flagged, correct, scored = [], [], [], 0, 0, 0
    lipsync, lipsync_truth, diversity = LipSyncCorrelation(), LipSyncCorrelation(), SampleDiversity()
    jaw = int(model.jaw_index)
    for index, clip in enumerate(clips):
        truth = modelled(model, clip)
        emotion = clip["emotion"] if labelled else None
        samples = model.sample(
            clip["mel"],
            emotion,
            intensity=max(clip["intensity"], 0),
            num_samples=SAMPLES,
            temperature=temperature,
            seed=index,
        )  # (N, T, D)
        report = sequence_report(samples, truth, clip_limit)
        diversity.update(samples.unsqueeze(0), truth.unsqueeze(0))
        tails.append(report["tail_fraction"])
        truth_tails.append(report["truth_tail_fraction"])
        clamps.append(report["clamp_fraction"])
        flagged += int(tail_fraction(samples) > 0)
        if labelled and classifier is not None:
            correct += int((classify(classifier, samples) == clip["emotion"]).sum())
            scored += SAMPLES
        if labelled and jaw >= 0:
            energy = clip["energy"].unsqueeze(0)
            lipsync.update(samples[..., jaw].unsqueeze(0), energy)
            lipsync_truth.update(truth[..., jaw].unsqueeze(0), energy)
    result["clips"] = {
        "count": len(clips),
        "tail_fraction": float(np.mean(tails)),
        "truth_tail_fraction": float(np.mean(truth_tails)),
        "clamp_fraction": float(np.mean(clamps)),
        "clips_with_tail": flagged,
        # std across the samples against the ground truth's own spread over time, per clip
        "diversity_ratio": float(diversity.compute()["ratio"]),
    }
    if scored:
        result["clips"]["emotion_accuracy"] = correct / scored
    if labelled and jaw >= 0:
        result["clips"]["lipsync"] = float(lipsync.compute())
        result["clips"]["lipsync_truth"] = float(lipsync_truth.compute())
    # -- long speech
    emotions = {"happy": 5, "sad": 6} if labelled else {"any": None}
    result["long"] = {}
    for name, emotion in emotions.items():
        for length, frames in LONG.items():
            _, truth, samples = sample_joined(model, clips, frames, emotion, SAMPLES, temperature, seed=frames)
            report = sequence_report(samples, truth, clip_limit, window=WINDOW)
            if labelled and classifier is not None:
                segments = samples[:, : (frames // 250) * 250].reshape(-1, 250, samples.shape[-1])
                report["emotion_accuracy"] = float((classify(classifier, segments) == emotion).float().mean())
            if not labelled:
                report.update(motion_statistics(model, samples, truth))
            if length == "10s":
                report["plot"] = (samples[:2].numpy(), truth.numpy())
            result["long"][f"{name}_{length}"] = report
    return result


def plot(path: Path, long: dict[str, Any], names: list[str], field: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in long if k.endswith("10s")]
    dims = list(range(min(4, len(names))))
    if field == "exp":  # the dims the runaway shows in, when the card names them
        wanted = [names.index(n) for n in ("jaw_open", "smile", "frown", "cheek_raise") if n in names]
        dims = wanted or dims
    figure, axes = plt.subplots(len(keys), len(dims), figsize=(3.3 * len(dims), 2.2 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        samples, truth = long[key]["plot"]
        for col, d in enumerate(dims):
            axis = axes[row][col]
            for s in samples[..., d]:
                axis.plot(s, lw=0.7, alpha=0.8)
            axis.plot(truth[:, d], color="black", lw=1.2)
            axis.axhline(5, color="red", lw=0.5, ls="--")
            axis.axhline(-5, color="red", lw=0.5, ls="--")
            axis.set_title(f"{key}: {names[d]}", fontsize=8)
            axis.tick_params(labelsize=6)
    figure.suptitle("250 sampled frames (colour) vs ground truth (black); red: 5 std", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="SynthTalk root (e.g. preset small, seed 1)")
    parser.add_argument(
        "--eval-data", type=Path, default=None, help="score on this root's test split (default: --data's)"
    )
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. small_train)")
    parser.add_argument("--field", choices=["exp", "pose"], default="exp")
    parser.add_argument("--variants", nargs="+", default=["paper", "recurrent_window"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument(
        "--classifier", type=Path, default=None, help="EmotionClassifier checkpoint (default: train one)"
    )
    parser.add_argument("--classifier-epochs", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints (default: a temp folder)")
    parser.add_argument("--merge", action="store_true", help="keep other variants' rows of earlier runs")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from expflow_ablation import _data, _trainer, train_classifier

    from flowvq.lightning_modules.coefficient_flow import CoefficientFlow
    from flowvq.pipeline.flow_samples import whole_clips

    work = args.work or Path(tempfile.mkdtemp(prefix="flow_long_"))
    work.mkdir(parents=True, exist_ok=True)
    name = ("expflow" if args.field == "exp" else "poseflow") + (f"_{args.tag}" if args.tag else "")
    classifier = None
    if args.field == "exp":
        if args.classifier is not None:
            from flowvq.lightning_modules.emotion_classifier import EmotionClassifier

            classifier = EmotionClassifier.load_from_checkpoint(args.classifier, map_location="cpu", weights_only=False)
        elif (work / "classifier.pt").is_file():  # trained by an earlier run in this folder
            classifier = torch.load(work / "classifier.pt", weights_only=False)
        else:
            classifier, _ = train_classifier(args.data, args.classifier_epochs, work)
            torch.save(classifier, work / "classifier.pt")
    model_name = "expflow" if args.field == "exp" else "poseflow"
    config = yaml.safe_load((ROOT / f"configs/tiny/{model_name}.yaml").read_text())["model"]["init_args"]
    config = {k: v for k, v in config.items() if k != "emotion_classifier"}
    clips = whole_clips(args.eval_data or args.data, config.get("prev_frames", 4))
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            options = dict(VARIANTS[variant])
            window = options.pop("window", 32)
            data = _data(args.data, 16 if window == 32 else 8, 4 if window == 32 else 2, window)
            torch.manual_seed(seed)
            model = CoefficientFlow(**{**config, **options, **data.dims})
            checkpoint = work / f"{name}_{variant}_seed{seed}_e{args.epochs}.ckpt"
            start = time.perf_counter()
            if checkpoint.is_file():
                model = CoefficientFlow.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
                train_s = None
            else:
                trainer = _trainer(args.epochs, work)
                trainer.fit(model, datamodule=data)
                trainer.save_checkpoint(checkpoint)
                train_s = time.perf_counter() - start
            result = evaluate(model, clips, classifier, args.field)
            if seed == args.seeds[0]:
                names = model._dim_names() if model._trainer else [f"{args.field}[{d}]" for d in range(model.features)]
                if args.field == "exp":
                    names = list(data.card.exp_names) or names
                else:
                    names = list(data.card.pose_names) + list(model.hparams.extra_exp_names or [])
                plot(RESULTS / f"{name}_long_sequence_{variant}.png", result["long"], names, args.field)
            for report in result["long"].values():
                report.pop("plot", None)
            row = {"variant": variant, "seed": seed, "train_s": train_s, **result}
            rows.append(row)
            print(json.dumps({"variant": variant, "seed": seed, "clips": result["clips"]}), flush=True)
    command = "python benchmarks/flow_long_sequence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    commands = [command]
    previous = RESULTS / f"{name}_long_sequence.json"
    if args.merge and previous.is_file():  # rows of earlier runs on the same data and epochs
        earlier = json.loads(previous.read_text())
        if (earlier.get("data"), earlier.get("epochs")) == (str(args.data), args.epochs):
            done = {(r["variant"], r["seed"]) for r in rows}
            rows = [r for r in earlier["rows"] if (r["variant"], r["seed"]) not in done] + rows
            commands = earlier["commands"] + commands
    RESULTS.mkdir(exist_ok=True)
    result = {"commands": commands, "data": str(args.data), "epochs": args.epochs, "rows": rows}
    previous.write_text(json.dumps(result, indent=2))
    command = "` and `".join(commands)
    (RESULTS / f"{name}_long_sequence.md").write_text(markdown(name, command, rows, args))
    print((RESULTS / f"{name}_long_sequence.md").read_text())
    return 0


def markdown(name: str, command: str, rows: list[dict[str, Any]], args: Any) -> str:
    lines = [
        f"# {name}: whole held-out clips and long held-out speech",
        "",
        f"`{command}`: {args.epochs} epochs per variant and seed on the train speakers of `{args.data}`; "
        f"{SAMPLES} samples at T={TEMPERATURE} from a clip start on the test speakers. Normalised units (train "
        "std = 1). 'tail': fraction of values beyond 5 std; 'clamped': at the output clamp; 'drift': RMS distance "
        f"from the ground truth's mean per {WINDOW}-frame window.",
        "",
        "## Whole clips",
        "",
        "| variant | seed | tail (truth) | clamped | clips with tail | emotion acc | lip-sync (truth) | diversity / GT spread |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["clips"]
        acc = f"{c['emotion_accuracy']:.3f}" if "emotion_accuracy" in c else "-"
        sync = f"{c['lipsync']:.3f} ({c['lipsync_truth']:.3f})" if "lipsync" in c else "-"
        lines.append(
            f"| {r['variant']} | {r['seed']} | {c['tail_fraction']:.4f} ({c['truth_tail_fraction']:.4f}) | "
            f"{c['clamp_fraction']:.4f} | {c['clips_with_tail']}/{c['count']} | {acc} | {sync} | "
            f"{c.get('diversity_ratio', float('nan')):.2f} |"
        )
    lines += ["", "## Long speech", ""]
    pose = name.startswith("poseflow")
    header = "| variant | seed | audio | drift first / last / worst (truth) | tail (truth) | clamped | frame change (truth) |"
    header += " std ratio | lag-10 ratio | blink rate (truth) |" if pose else " emotion acc |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        for key, L in r["long"].items():
            cells = [
                r["variant"],
                str(r["seed"]),
                key,
                f"{L['drift_first']:.2f} / {L['drift_last']:.2f} / {L['drift_max']:.2f} ({L['truth_drift']:.2f})",
                f"{L['tail_fraction']:.4f} ({L['truth_tail_fraction']:.4f})",
                f"{L['clamp_fraction']:.4f}",
                f"{L['frame_variation']:.3f} ({L['truth_frame_variation']:.3f})",
            ]
            if pose:
                std = np.array(L["std"]) / np.maximum(np.array(L["truth_std"]), 1e-9)
                lag = np.array(L["lag10"]) / np.where(np.abs(L["truth_lag10"]) > 1e-9, L["truth_lag10"], np.nan)
                cells += [
                    " ".join(f"{v:.2f}" for v in std),
                    " ".join(f"{v:.2f}" for v in lag),
                    f"{L.get('blink_rate', float('nan')):.2f} ({L.get('truth_blink_rate', float('nan')):.2f})",
                ]
            else:
                cells.append(f"{L.get('emotion_accuracy', float('nan')):.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
