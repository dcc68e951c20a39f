"""GMEG against ExpFlow on SynthTalk's held-out speakers: samples and emotion interpolation.

    python benchmarks/gmeg_quality.py --data /tmp/synth_s1 --epochs 30 --seeds 0 1
    python benchmarks/gmeg_quality.py --data /tmp/synth_s1 --classifier work/classifier.pt \\
        --expflow 'work/expflow_self_history0.5_seed{seed}_e6.ckpt' --seeds 0 1

Trains GMEG (the model of ``configs/tiny/gmeg.yaml``) on the train speakers for ``--epochs``
epochs per seed, takes ExpFlow from ``--expflow`` (a checkpoint of
``benchmarks/flow_long_sequence.py`` on the same data and seed; without it, one is trained
here from ``configs/tiny/expflow.yaml``), and scores both on the test speakers (never seen):

- **samples**, exactly as ``benchmarks/flow_long_sequence.py`` scores the flows (its
  ``evaluate``): whole test clips, 4 samples each with the clip's emotion and intensity at
  T=0.8: emotion accuracy by the suite's emotion classifier, lip-sync (jaw against the audio
  envelope) beside the ground truth's, diversity (std across samples) over the ground truth's
  per-clip spread, values beyond 5 std; and 10 s / 60 s of joined test speech (drift from the
  truth's mean, tails, emotion accuracy per 10 s);
- **interpolation**: for one whole test clip of each emotion (strongest intensity), paths of
  9 steps from neutral to each emotion and between happy and sad (GMEG: its emotion weights;
  ExpFlow: the latent location and scale moved linearly from one component to the other, the
  same noise at every step); EPPL and EPDV in the classifier's embedding
  (:mod:`flowvq.metrics.interpolation`), and how often the classifier's probability of the
  target emotion rises from one step to the next (``monotonic``: fraction of steps that do not
  fall by more than 0.01; ``all rising``: fraction of paths where every step does).

GMEG is scored at T=0.8 (as ExpFlow) and at T=1.0, the temperature its prior is trained at;
a per-dim diversity table says where samples vary less than the truth (blinks and gaze are
GMTalker's motion generator's, not GMEG's: one diversity figure leaves them out). Evaluations
are cached in ``--work`` (``eval_<model>_T<t>.json``), so a rerun scores only what is new.

Goals (issue 13): emotion accuracy >= 0.9, lip-sync >= 0.8 of the ground truth's, diversity
0.5-2x the ground truth's spread. Writes ``benchmarks/results/gmeg_quality.{json,md}``.
"""

from __future__ import annotations

import argparse
import inspect
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

STEPS = 9
#: latent temperature of every sample scored here (flow_long_sequence's)
TEMPERATURE = 0.8
PATHS = [("neutral", e) for e in ("angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")]
PATHS += [("happy", "sad"), ("sad", "happy")]
#: a step "falls" when the target probability drops by more than this
TOLERANCE = 0.01


@torch.no_grad()
def expflow_interpolate(flow: Any, mel: torch.Tensor, source: str, target: str, steps: int, seed: int) -> torch.Tensor:
    """ExpFlow's interpolation: the latent's location and scale moved linearly from the source
    component to the target's, with the same standard noise at every step: ``[S, T, E]``."""
    from flowvq.data.schema import emotion_index
    from flowvq.lightning_modules.coefficient_flow import _seeded

    prior = flow.net.prior
    a, b = emotion_index(source), emotion_index(target)
    t = mel.shape[0]
    with _seeded(seed, flow.device):
        noise = prior._standard_noise(torch.full((t,), a, dtype=torch.long))  # (T, D)
    alpha = torch.linspace(0, 1, steps)[:, None, None]
    loc = (1 - alpha) * prior.loc[a] + alpha * prior.loc[b]  # (S, 1, D)
    scale = (1 - alpha) * prior.scale[a] + alpha * prior.scale[b]
    z = loc + TEMPERATURE * scale * noise[None]  # (S, T, D)
    x = flow.net.sample(mel[None].expand(steps, -1, -1, -1).float(), z=z.float())
    return flow.from_model_units(x)


@torch.no_grad()
def interpolation_scores(model: Any, kind: str, clips: list[dict[str, Any]], classifier: Any) -> dict[str, Any]:
    """EPPL, EPDV and the target probability along each path of :data:`PATHS`, per path pair
    averaged over the test clips used (one whole clip per emotion, strongest intensity)."""
    from flowvq.data.schema import EMOTIONS, emotion_index
    from flowvq.metrics.interpolation import EPDV, EPPL, monotonic_fraction, path_embeddings

    chosen: dict[int, dict[str, Any]] = {}
    for clip in sorted(clips, key=lambda c: -c["intensity"]):
        chosen.setdefault(clip["emotion"], clip)
    audio = [chosen[k] for k in sorted(chosen)]
    rows = {}
    for source, target in PATHS:
        eppl, epdv, rising, all_rising, first, last = EPPL(), EPDV(), [], [], [], []
        for index, clip in enumerate(audio):
            if kind == "gmeg":
                path = model.interpolate(clip["mel"], source, target, steps=STEPS, seed=index, temperature=TEMPERATURE)
            else:
                path = expflow_interpolate(model, clip["mel"], source, target, STEPS, seed=index)
            embedded = path_embeddings(classifier, path)
            eppl.update(embedded)
            epdv.update(embedded)
            p = classifier.predict_proba(path.float())[:, emotion_index(target)]  # (S,)
            rising.append(monotonic_fraction(p, TOLERANCE))
            all_rising.append(float(monotonic_fraction(p, TOLERANCE) == 1.0))
            first.append(float(p[0]))
            last.append(float(p[-1]))
        rows[f"{source}->{target}"] = {
            "eppl": float(eppl.compute()),
            "epdv": float(epdv.compute()),
            "monotonic": float(np.mean(rising)),
            "all_rising": float(np.mean(all_rising)),
            "p_target_start": float(np.mean(first)),
            "p_target_end": float(np.mean(last)),
        }
    rows["clips"] = [EMOTIONS[k] for k in sorted(chosen)]
    return rows


#: dims GMTalker leaves to its motion generator (NFMG: pose, blinks, gaze), left out of one diversity figure
MOTION_DIMS = ("blink", "gaze_x", "gaze_y")


@torch.no_grad()
def per_dim_diversity(model: Any, clips: list[dict[str, Any]], temperature: float, names: list[str]) -> dict[str, Any]:
    """Std across 4 samples per dim (the same draws as ``evaluate``'s whole clips: same seeds)
    over the ground truth's per-clip std per dim, and that ratio without :data:`MOTION_DIMS`."""
    spread, truth = [], []
    for index, clip in enumerate(clips):
        samples = model.sample(
            clip["mel"],
            clip["emotion"],
            intensity=max(clip["intensity"], 0),
            num_samples=4,
            temperature=temperature,
            seed=index,
        )  # (N, T, E)
        spread.append(samples.double().std(0).mean(0))
        truth.append(clip["exp"].double().std(0))
    sd, gt = torch.stack(spread).mean(0), torch.stack(truth).mean(0)
    keep = [d for d, n in enumerate(names) if n not in MOTION_DIMS]
    return {
        "names": names,
        "ratio": (sd / gt).tolist(),
        "ratio_without_motion_dims": float(sd[keep].mean() / gt[keep].mean()),
    }


def train_gmeg(data_root: Path, epochs: int, seed: int, work: Path) -> tuple[Any, float | None]:
    from expflow_ablation import _trainer

    from flowvq.datamodules import CoefficientDataModule
    from flowvq.lightning_modules.gmeg import GMEG

    checkpoint = work / f"gmeg_seed{seed}_e{epochs}.ckpt"
    if checkpoint.is_file():
        return GMEG.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False).eval(), None
    spec = yaml.safe_load((ROOT / "configs/tiny/gmeg.yaml").read_text())
    config = {k: v for k, v in spec["model"]["init_args"].items() if k != "emotion_classifier"}
    options = spec["data"]["init_args"]
    data = CoefficientDataModule(
        data_root,
        window=options["window"],
        prev_frames=0,
        batch_size=options["batch_size"],
        windows_per_clip=options["windows_per_clip"],
    )
    torch.manual_seed(seed)
    model = GMEG(**config, **data.dims)
    start = time.perf_counter()
    trainer = _trainer(epochs, work)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(checkpoint)
    return model.eval(), time.perf_counter() - start


def load_or_train_expflow(path: Path | None, data_root: Path, seed: int, work: Path) -> tuple[Any, str]:
    from expflow_ablation import _data, _trainer

    from flowvq.lightning_modules.coefficient_flow import CoefficientFlow

    if path is not None:
        return CoefficientFlow.load_from_checkpoint(path, map_location="cpu", weights_only=False).eval(), str(path)
    checkpoint = work / f"expflow_self_history0.5_seed{seed}_e6.ckpt"
    if not checkpoint.is_file():
        spec = yaml.safe_load((ROOT / "configs/tiny/expflow.yaml").read_text())["model"]["init_args"]
        config = {k: v for k, v in spec.items() if k != "emotion_classifier"}
        data = _data(data_root, 16, 4)
        torch.manual_seed(seed)
        flow = CoefficientFlow(**config, **data.dims)
        trainer = _trainer(6, work)
        trainer.fit(flow, datamodule=data)
        trainer.save_checkpoint(checkpoint)
    return CoefficientFlow.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False).eval(), str(
        checkpoint
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="SynthTalk root (e.g. preset small, seed 1)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--classifier", type=Path, default=None, help="EmotionClassifier (.ckpt or a saved module)")
    parser.add_argument("--classifier-epochs", type=int, default=10)
    parser.add_argument(
        "--expflow",
        default=None,
        help="ExpFlow checkpoint on the same data and seed ('{seed}' is replaced by the seed)",
    )
    parser.add_argument(
        "--gmeg-temperatures",
        nargs="+",
        type=float,
        default=[TEMPERATURE, 1.0],
        help="GMEG is also scored at 1.0, the temperature its prior is trained at (ExpFlow: 0.8 only)",
    )
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from expflow_ablation import train_classifier
    from flow_long_sequence import evaluate

    from flowvq.data.card import DatasetCard
    from flowvq.lightning_modules.emotion_classifier import load_emotion_classifier
    from flowvq.pipeline.flow_samples import check_module_against_data_card

    work = args.work or Path(tempfile.mkdtemp(prefix="gmeg_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.classifier is not None:
        classifier = load_emotion_classifier(args.classifier)
    else:
        classifier, _ = train_classifier(args.data, args.classifier_epochs, work)
        torch.save(classifier, work / "classifier.pt")
    card = DatasetCard.load(args.data)
    takes_temperature = "temperature" in inspect.signature(evaluate).parameters
    names = list(card.exp_names) or [f"exp[{d}]" for d in range(card.exp_dim)]
    rows, train_s, sources = [], {}, {}
    for seed in args.seeds:
        gmeg, train_s[seed] = train_gmeg(args.data, args.epochs, seed, work)
        check_module_against_data_card(gmeg, card, args.data)
        given = None if args.expflow is None else Path(args.expflow.replace("{seed}", str(seed)))
        expflow, sources[seed] = load_or_train_expflow(given, args.data, seed, work)
        check_module_against_data_card(expflow, card, args.data)
        models = (
            ("GMEG", gmeg, f"gmeg_seed{seed}_e{args.epochs}", args.gmeg_temperatures),
            ("ExpFlow", expflow, Path(sources[seed]).stem, [TEMPERATURE]),
        )
        rows += score(models, seed, args.data, work, classifier, names, takes_temperature)
    command = "python benchmarks/gmeg_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = {
        "command": command,
        "data": str(args.data),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "gmeg_train_s": train_s,
        "expflow": sources,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gmeg_quality.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "gmeg_quality.md").write_text(markdown(out))
    print((RESULTS / "gmeg_quality.md").read_text())
    return 0


def score(
    models: Any, seed: int, data: Path, work: Path, classifier: Any, names: list[str], takes_temperature: bool
) -> list[dict[str, Any]]:
    """Rows of one seed: each model at each of its temperatures (cached in ``work``)."""
    from flow_long_sequence import evaluate

    from flowvq.pipeline.flow_samples import audio_context_of, whole_clips

    rows = []
    for name, model, tag, temperatures in models:
        clips = whole_clips(data, model.hparams.get("prev_frames", 0), audio_context=audio_context_of(model))
        for temperature in temperatures:
            if temperature != TEMPERATURE and not takes_temperature:
                print(f"flow_long_sequence.evaluate samples at T={TEMPERATURE} only: {name} T={temperature} skipped")
                continue
            cache = work / f"eval_{tag}_T{temperature:g}.json"  # a rerun scores only what is new
            if cache.is_file():
                result = json.loads(cache.read_text())
            else:
                start = time.perf_counter()
                options = {"temperature": temperature} if takes_temperature else {}
                result = evaluate(model, clips, classifier, "exp", **options)
                for report in result["long"].values():
                    report.pop("plot", None)
                result["diversity_per_dim"] = per_dim_diversity(model, clips, temperature, names)
                if temperature == TEMPERATURE:
                    kind = "gmeg" if name == "GMEG" else "expflow"
                    result["interpolation"] = interpolation_scores(model, kind, clips, classifier)
                result["eval_s"] = time.perf_counter() - start
                cache.write_text(json.dumps(result))
            rows.append({"model": name, "seed": seed, "temperature": temperature, **result})
            print(json.dumps({"model": name, "seed": seed, "temperature": temperature, "clips": result["clips"]}))
    return rows


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "# GMEG against ExpFlow: held-out speakers, whole clips, long speech, interpolation",
        "",
        f"`{out['command']}`: GMEG ({out['epochs']} epochs per seed, configs/tiny/gmeg.yaml's model) "
        f"and ExpFlow ({', '.join(f'`{v}`' for v in out['expflow'].values())}) trained on the train speakers of `{out['data']}`, scored on its test "
        f"speakers; samples at T={TEMPERATURE} from a clip start, scored as `benchmarks/flow_long_sequence.py` "
        "scores them. Goals: emotion accuracy >= 0.9, lip-sync >= 0.8 of the truth's, diversity 0.5-2x the "
        "truth's per-clip spread.",
        "",
        "## Whole clips",
        "",
        "| model | seed | T | emotion acc | lip-sync (truth) | lip-sync / truth | diversity / GT spread | "
        "same without blink, gaze | tail (truth) | clamped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        c = r["clips"]
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['temperature']:g} | {c.get('emotion_accuracy', float('nan')):.3f} | "
            f"{c['lipsync']:.3f} ({c['lipsync_truth']:.3f}) | {c['lipsync'] / c['lipsync_truth']:.2f} | "
            f"{c['diversity_ratio']:.2f} | {r.get('diversity_per_dim', {}).get('ratio_without_motion_dims', float('nan')):.2f} | "
            f"{c['tail_fraction']:.4f} ({c['truth_tail_fraction']:.4f}) | {c['clamp_fraction']:.4f} |"
        )
    per_dim = [r for r in out["rows"] if "diversity_per_dim" in r]
    if per_dim:
        dim_names = per_dim[0]["diversity_per_dim"]["names"]
        lines += [
            "",
            "Diversity per dim (std across samples over the ground truth's per-clip std; GMTalker generates blinks "
            "and gaze with its motion generator, not GMEG):",
            "",
            "| model | seed | T | " + " | ".join(dim_names) + " |",
            "|---|---|---|" + "---|" * len(dim_names),
        ]
        for r in per_dim:
            ratios = " | ".join(f"{v:.2f}" for v in r["diversity_per_dim"]["ratio"])
            lines.append(f"| {r['model']} | {r['seed']} | {r['temperature']:g} | {ratios} |")
    lines += [
        "",
        "## Long speech",
        "",
        "| model | audio | drift first / last / worst (truth) | tail | frame change (truth) | emotion acc |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        for key, L in r["long"].items():
            lines.append(
                f"| {r['model']} s{r['seed']} T={r['temperature']:g} | {key} | {L['drift_first']:.2f} / {L['drift_last']:.2f} / {L['drift_max']:.2f} "
                f"({L['truth_drift']:.2f}) | {L['tail_fraction']:.4f} | {L['frame_variation']:.3f} "
                f"({L['truth_frame_variation']:.3f}) | {L.get('emotion_accuracy', float('nan')):.3f} |"
            )
    lines += [
        "",
        f"## Interpolation ({STEPS} steps; EPPL / EPDV in the classifier's embedding, lower is smoother)",
        "",
        "| seed | path | GMEG EPPL | GMEG EPDV (share) | GMEG monotonic (all rising) | ExpFlow EPPL | "
        "ExpFlow EPDV (share) | ExpFlow monotonic (all rising) | p(target) start -> end GMEG / ExpFlow |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    paths = {(r["model"], r["seed"]): r["interpolation"] for r in out["rows"] if "interpolation" in r}
    for seed in out["seeds"]:
        g, e = paths[("GMEG", seed)], paths[("ExpFlow", seed)]
        for key in [k for k in g if k != "clips"]:
            a, b = g[key], e[key]
            lines.append(
                f"| {seed} | {key} | {a['eppl']:.1f} | {a['epdv']:.1f} ({a['epdv'] / a['eppl']:.2f}) | "
                f"{a['monotonic']:.2f} ({a['all_rising']:.2f}) | {b['eppl']:.1f} | {b['epdv']:.1f} "
                f"({b['epdv'] / b['eppl']:.2f}) | {b['monotonic']:.2f} ({b['all_rising']:.2f}) | "
                f"{a['p_target_start']:.2f} -> {a['p_target_end']:.2f} / {b['p_target_start']:.2f} -> "
                f"{b['p_target_end']:.2f} |"
            )
    lines += [
        "",
        f"Audio of the paths: one whole test clip of each of {', '.join(g['clips'])} (the same for every seed); T={TEMPERATURE} for both. "
        "'share': EPDV / EPPL, the part of the squared path length due to an uneven pace (EPPL = mean(s)^2 + EPDV "
        "per path), comparable between paths of different lengths.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
