"""The VQIG ablation in the one-shot setting: trained on thousands of identities, scored on unseen ones.

    python benchmarks/vq_ablation.py reference --data /tmp/vqw/small64 --faces /tmp/vqw/faces \\
        --codebook runs/faces_f2/checkpoints/last.ckpt --work /tmp/ablation
    python benchmarks/vq_ablation.py run --variant full --seed 0 --steps 400 ...   # one run per call
    python benchmarks/vq_ablation.py report --work /tmp/ablation

Each ``run`` trains the tiny VQIG of ``benchmarks/vq_ladder.py`` (``configs/tiny/vqig.yaml``, GAN
off, bf16-mixed) with one ablation switch off (``full``, ``no_warp``, ``no_fusion``,
``no_cross_attention``, ``no_codebook``) on pairs from ``--faces`` (``flowvq synth --preset
faces``: thousands of identities, one clip each; the two frames of a pair come from one clip),
then scores it on SynthTalk ``--data``'s test speakers (never seen: the one-shot setting a user
runs) and on the held-out clips of its training speakers (``vq_ladder.held_out``; also never
seen, since training used the face set). The VQIG's codebook architecture and its source
encoder's ``ch_mult`` are read from the ``--codebook`` checkpoint's hyperparameters.
Coefficients are normalised with the face set's statistics, the ones the model was trained on.

Scores per pair set: PSNR, SSIM; F-LMD and M-LMD (FaceMesh on the rendering against the record's
landmarks, ``vq_quality.Landmarks`` / ``vq_quality.lmd``, NaN frames left out, detection rate
given); the share of bright pixels inside the inner lips of open-mouth targets
(``styleunet.teeth_share``). ``reference`` scores, once, the source frame copied (the bar), the
codebook's own reconstruction of the target (the bound of a VQIG that decodes through it) and
the detector on the ground-truth frames (the LMD floor). ``report`` gives mean and min-max over
seeds per variant in ``vq_ablation.{json,md}`` and the frame and mouth pictures of one seed
(``vq_ablation_frames.png``, ``vq_ablation_mouths.png``: the widest-open test mouths).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from styleunet import score_row, teeth_share  # noqa: E402
from vq_ladder import ROOT, evaluation_pairs, held_out, to_batch, train_vqig  # noqa: E402
from vq_quality import Landmarks, lmd, mouth_crops, save_png, to_uint8  # noqa: E402

VARIANTS = {
    "full": [],
    "no_warp": ["use_warp=false"],
    "no_fusion": ["use_fusion=false"],
    "no_cross_attention": ["use_cross_attention=false"],
    "no_codebook": ["use_codebook=false"],
}
#: Stage-1 hyperparameter of the codebook checkpoint -> VQIG init_arg that must equal it.
CODEBOOK_ARGS = {
    "resolution": "resolution",
    "codebook_size": "codebook_size",
    "codebook_dim": "codebook_dim",
    "channels": "codebook_channels",
    "ch_mult": "codebook_ch_mult",
    "num_res_blocks": "codebook_res_blocks",
    "attention": "codebook_attention",
}
SETS = ("test speakers", "held-out clips")
PICTURE = 8  # frames in the pictures


def codebook_model_args(codebook: Path) -> list[str]:
    """``KEY=VALUE`` VQIG overrides that make the tiny config match the codebook checkpoint: its
    architecture (where the config still declares it) and the source encoder's ``ch_mult``, so the
    source features lie on the code grid."""
    import yaml

    hyper = torch.load(codebook, map_location="cpu", weights_only=False)["hyper_parameters"]
    config = yaml.safe_load((ROOT / "configs/tiny/vqig.yaml").read_text())["model"]["init_args"]
    args = [f"{vqig}={json.dumps(hyper[key])}" for key, vqig in CODEBOOK_ARGS.items() if vqig in config]
    return args + [f"ch_mult={json.dumps(hyper['ch_mult'])}"]


def pair_sets(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Fixed evaluation pairs of SynthTalk's test speakers and training speakers' held-out clips,
    their coefficients normalised with the face set's statistics."""
    from flowvq.data.shards import open_split
    from flowvq.datamodules import FramePairDataModule

    faces = FramePairDataModule(args.faces, batch_size=4, pairs_per_clip=4, seed=0)
    data = FramePairDataModule(args.data, batch_size=4, pairs_per_clip=args.eval_pairs, seed=0)
    if data.card.exp_dim != faces.card.exp_dim or data.card.pose_dim != faces.card.pose_dim:
        raise SystemExit(
            f"--data {args.data} has exp/pose dims {data.card.exp_dim}/{data.card.pose_dim}, --faces {args.faces} "
            f"{faces.card.exp_dim}/{faces.card.pose_dim}: they must match (the model reads one coefficient space)"
        )
    sampler = dataclasses.replace(data.make_sampler("test"), normalizer=faces.normalizer)  # fixed pairs
    held = [r for r in open_split(args.data, "train") if held_out(r["clip_id"])]
    return {
        "test speakers": evaluation_pairs(list(open_split(args.data, "test")), sampler),
        "held-out clips": evaluation_pairs(held, sampler),
    }


def picture_order(pairs: list[dict]) -> np.ndarray:
    """The test pairs with the widest-open target mouths (inner lips 62 and 66), widest first."""
    truth = np.stack([p["target_landmarks"] for p in pairs])
    return np.argsort(-(truth[:, 66, 1] - truth[:, 62, 1]), kind="stable")[:PICTURE]


@torch.no_grad()
def score(render: dict[str, Any], pairs: list[dict], detector: Landmarks) -> dict[str, dict[str, float]]:
    """Scores of each ``render[name](batch) -> images`` on ``pairs``; name ``ground truth`` gets
    landmarks and teeth only (it is the target)."""
    from flowvq.lightning_modules.vqgan import psnr
    from flowvq.nn.perceptual import ssim

    scores: dict[str, dict[str, list]] = {n: {"psnr": [], "ssim": [], "f": [], "m": [], "teeth": []} for n in render}
    for start in range(0, len(pairs), 32):
        chunk = pairs[start : start + 32]
        batch = to_batch(chunk)
        truth = np.stack([p["target_landmarks"] for p in chunk])
        open_mouth = truth[:, 66, 1] - truth[:, 62, 1] > 0.05 * batch["target"].shape[-1]  # as styleunet.py
        for name, fn in render.items():
            image = fn(batch).float().clamp(-1, 1)
            if name != "ground truth":
                scores[name]["psnr"].append(psnr(image, batch["target"]))
                scores[name]["ssim"].append(ssim(image, batch["target"]))
            f, m = lmd(detector(to_uint8(image)), truth)
            scores[name]["f"].append(f)
            scores[name]["m"].append(m)
            scores[name]["teeth"].append(teeth_share(image, truth, open_mouth))
    return {name: score_row(s) for name, s in scores.items()}


def command_reference(args: argparse.Namespace) -> None:
    from flowvq.lightning_modules.vqgan import VQGAN

    codebook = VQGAN.load_from_checkpoint(args.codebook, map_location="cpu").eval()
    render = {
        "source copy": lambda b: b["source"],
        "codebook": lambda b: codebook(b["target"])[0],
        "ground truth": lambda b: b["target"],
    }
    sets = pair_sets(args)
    detector = Landmarks()
    result = {"scores": {where: score(render, pairs, detector) for where, pairs in sets.items()}}
    chosen = [sets["test speakers"][i] for i in picture_order(sets["test speakers"])]
    batch = to_batch(chosen)
    pictures = {
        "source": batch["source"],
        "target": batch["target"],
        "codebook": codebook(batch["target"])[0].clamp(-1, 1),
        "landmarks": torch.from_numpy(np.stack([p["target_landmarks"] for p in chosen])),
    }
    args.work.mkdir(parents=True, exist_ok=True)
    torch.save(pictures, args.work / "reference_pictures.pt")
    result |= run_card(args)
    (args.work / "reference.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["scores"], indent=1))


def command_run(args: argparse.Namespace) -> None:
    from flowvq.data.shards import open_split

    name = f"{args.variant}_s{args.seed}"
    model_args = codebook_model_args(args.codebook) + VARIANTS[args.variant] + args.model_arg
    records = list(open_split(args.faces, "train"))
    vqig, seconds = train_vqig(
        args.faces, args.codebook, records, args.steps, args.batch_size, args.lr, 0.0, args.seed, model_args
    )

    def render(batch: dict) -> torch.Tensor:
        return vqig(batch["source"], batch["target_exp"], batch["target_pose"])["image"]

    sets = pair_sets(args)
    detector = Landmarks()
    result = {
        "variant": args.variant,
        "seed": args.seed,
        "model_args": model_args,
        "train_identities": len({r["speaker"] for r in records}),
        "train_clips": len(records),
        "train_seconds": round(seconds, 1),
        "scores": {where: score({"vqig": render}, pairs, detector)["vqig"] for where, pairs in sets.items()},
    } | run_card(args)
    chosen = [sets["test speakers"][i] for i in picture_order(sets["test speakers"])]
    with torch.no_grad():
        torch.save(render(to_batch(chosen)).float().clamp(-1, 1), args.work / f"{name}_pictures.pt")
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(name, json.dumps(result["scores"], indent=1))


def run_card(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "steps": getattr(args, "steps", 0),
        "batch_size": getattr(args, "batch_size", 0),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/vq_ablation.py " + " ".join(sys.argv[1:]),
    }


def summarise(runs: list[dict], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": sorted(r["seed"] for r in runs)}
    for key in ("psnr", "ssim", "m_lmd", "f_lmd", "teeth_share_open_mouths", "detected"):
        values = np.array([r["scores"][where][key] for r in runs])
        out[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else None,
            "min": float(values.min()),
            "max": float(values.max()),
            "per_seed": [float(v) for v in values],
        }
    return out


def versus_full(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Each variant minus ``full`` of the same seed (PSNR, SSIM, M-LMD), per scored set: the
    paired differences and their mean, over the seeds both have."""
    full = {r["seed"]: r for r in runs.get("full", [])}
    out: dict[str, Any] = {}
    for variant, variant_runs in runs.items():
        if variant == "full":
            continue
        paired = [(r, full[r["seed"]]) for r in variant_runs if r["seed"] in full]
        out[variant] = {
            where: {
                key: [float(r["scores"][where][key] - f["scores"][where][key]) for r, f in paired]
                for key in ("psnr", "ssim", "m_lmd")
            }
            | {"seeds": [r["seed"] for r, _ in paired]}
            for where in SETS
        }
    return out


def command_report(args: argparse.Namespace) -> None:
    from flowvq.lightning_modules.vqgan import image_grid

    reference = json.loads((args.work / "reference.json").read_text())
    runs: dict[str, list[dict]] = {}
    for path in sorted(args.work.glob("*_s[0-9]*.json")):
        run = json.loads(path.read_text())
        runs.setdefault(run["variant"], []).append(run)
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    complete = [s for s in seeds if all(any(r["seed"] == s for r in runs.get(v, [])) for v in VARIANTS)]
    result = {
        "reference": reference,
        "complete_seeds": complete,
        "codebook": reference["command"].split("--codebook ")[1].split()[0],
        "variants": {
            v: {
                "runs": [{k: r[k] for k in ("seed", "steps", "train_seconds", "load_average", "command")} for r in rs],
                **{where: summarise(rs, where) for where in SETS},
            }
            for v in VARIANTS
            if (rs := sorted(runs.get(v, []), key=lambda r: r["seed"]))
        },
    }
    result["versus_full"] = versus_full(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vq_ablation.json").write_text(json.dumps(result, indent=2))
    (args.out / "vq_ablation.md").write_text(markdown(result))
    print(markdown(result))

    pictures = torch.load(args.work / "reference_pictures.pt")
    seed = args.picture_seed
    shown = [v for v in VARIANTS if (args.work / f"{v}_s{seed}_pictures.pt").is_file()]
    rendered = [torch.load(args.work / f"{v}_s{seed}_pictures.pt") for v in shown]
    landmarks = pictures["landmarks"]
    rows = [pictures["source"], pictures["target"], *rendered, pictures["codebook"]]
    labels = ["source", "target", *[f"{v} (seed {seed})" for v in shown], "codebook reconstruction"]
    save_png(image_grid(rows, PICTURE), args.out / "vq_ablation_frames.png", labels)
    mouths = [mouth_crops(r, landmarks) for r in rows]
    save_png(image_grid(mouths, PICTURE), args.out / "vq_ablation_mouths.png", [f"{n} mouth" for n in labels])


def fmt(stat: dict[str, Any], digits: int) -> str:
    spread = f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else ""
    return f"{stat['mean']:.{digits}f}{spread} [{stat['min']:.{digits}f}, {stat['max']:.{digits}f}]"


def markdown(result: dict[str, Any]) -> str:
    variants = result["variants"]
    first = next(iter(variants.values()))["runs"][0] if variants else {}
    lines = [
        "# VQIG ablation, one-shot: trained on the face set, scored on unseen identities",
        "",
        f"Tiny VQIG (GAN off, bf16-mixed), {first.get('steps', '?')} steps of batch 16 per run, trained on "
        "`flowvq synth --preset faces` pairs; scored on SynthTalk small's test speakers and on its training "
        f"speakers' held-out clips (neither seen in training; codebook `{result['codebook']}`). Each cell: mean ± std [min, max] over the seeds. "
        f"Complete seeds: {result['complete_seeds']}. M-LMD / F-LMD: FaceMesh on the output against the record's "
        "landmarks, px at 64 (lower is better); the ground-truth row is the detector on the target itself (the "
        "floor). Teeth: share of bright pixels inside the inner lips of open-mouth targets. Commands in the JSON.",
        "",
    ]
    for where in SETS:
        ref = result["reference"]["scores"][where]
        lines += [
            f"## {where}",
            "",
            "| model | PSNR dB | SSIM | M-LMD | F-LMD | detected | teeth share | train min / run |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, v in variants.items():
            s = v[where]
            minutes = np.mean([r["train_seconds"] for r in v["runs"]]) / 60
            lines.append(
                f"| {name} | {fmt(s['psnr'], 2)} | {fmt(s['ssim'], 3)} | {fmt(s['m_lmd'], 2)} | "
                f"{fmt(s['f_lmd'], 2)} | {s['detected']['mean']:.2f} | {s['teeth_share_open_mouths']['mean']:.3f} | "
                f"{minutes:.1f} |"
            )
        for name in ("source copy", "codebook", "ground truth"):
            r = ref[name]
            label = {"codebook": "codebook reconstruction (bound)", "ground truth": "ground truth (floor)"}.get(
                name, name
            )
            psnr = f"{r['psnr']:.2f}" if "psnr" in r else "-"
            ssim = f"{r['ssim']:.3f}" if "ssim" in r else "-"
            lines.append(
                f"| {label} | {psnr} | {ssim} | {r['m_lmd']:.2f} | {r['f_lmd']:.2f} | {r['detected']:.2f} | "
                f"{r['teeth_share_open_mouths']:.3f} | - |"
            )
        lines += ["", f"Pairs: {ref['source copy']['pairs']}.", ""]
    if result["versus_full"]:
        lines += [
            "## Each variant minus full, same seed",
            "",
            "Per seed (in seed order); a part whose removal hurts shows negative PSNR / SSIM and positive M-LMD "
            "differences.",
            "",
            "| variant | scored on | PSNR dB | SSIM | M-LMD |",
            "|---|---|---|---|---|",
        ]
        for variant, sets in result["versus_full"].items():
            for where, d in sets.items():
                cells = [
                    ", ".join(f"{x:+.{n}f}" for x in d[key]) for key, n in (("psnr", 2), ("ssim", 3), ("m_lmd", 2))
                ]
                lines.append(f"| {variant} | {where} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("reference", "run", "report"))
    parser.add_argument("--data", type=Path, help="SynthTalk root with frames (64 px) to score on")
    parser.add_argument("--faces", type=Path, help="face set to train on (flowvq synth --preset faces)")
    parser.add_argument("--codebook", type=Path, help="stage-1 VQGAN checkpoint")
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--model-arg", nargs="*", default=[], metavar="KEY=VALUE", help="more VQIG init_args overrides (every variant)"
    )
    parser.add_argument("--eval-pairs", type=int, default=4, help="fixed pairs per evaluation clip")
    parser.add_argument("--picture-seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True, help="per-run results and pictures")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.command != "report":
        missing = [f"--{k}" for k in ("data", "faces", "codebook") if getattr(args, k) is None]
        if missing:
            raise SystemExit(f"{args.command} needs {', '.join(missing)}")
    args.work.mkdir(parents=True, exist_ok=True)
    {"reference": command_reference, "run": command_run, "report": command_report}[args.command](args)


if __name__ == "__main__":
    main()
