"""VQGAN / VQIG speed: training steps/s in fp32 and bf16-mixed, VQIG rendering frames/s vs real time.

    python benchmarks/vq_speed.py                         # tiny training + rendering at 128 / 256 px
    python benchmarks/vq_speed.py --train-sizes tiny paper --repeats 3
    python benchmarks/vq_speed.py --baseline 2d90304 --rounds 3 --skip-rendering   # against an older commit
    python benchmarks/vq_speed.py --baseline 2d90304 --rounds 2 --train-sizes tiny tiny_faces --resolutions 128

``--baseline REF`` checks REF out into a temporary git worktree and runs *its own*
``benchmarks/vq_speed.py`` (training only, its code, its configs) in a subprocess, alternating
with this checkout's timing for ``--rounds`` rounds; each setting keeps its fastest round, so a
load spike on the shared machine hits both sides alike. The speed-up column compares the two.

Measured on the machine it runs on (write down its load: a shared CPU skews every figure):

- training: a full manual-optimization step of each stage (generator forward + loss + backward +
  Adam, then the discriminator's) on random batches in the DataModules' format, with the GAN
  terms on (the costlier regime), in fp32 and under ``torch.autocast(bfloat16)`` (what Lightning's
  ``bf16-mixed`` does), for the model sizes of ``configs/tiny/vqgan.yaml`` / ``vqig.yaml``
  (``tiny``), of the face codebook recipe ``configs/tiny/vqgan_faces.yaml`` and the tiny VQIG on
  it (``tiny_faces``; the baseline has no such rows) and of ``configs/*.yaml`` (``paper``); this
  checkout's models in channels-last (their default) and once more in NCHW under bf16
  (``channels_last=False``, the layout before);
- rendering: :meth:`VQIG.render` frames/s (source encoded once, then batches of target
  coefficients) with the paper-scale VQIG architecture built at 128 and 256 px, batch 1 and 16,
  fp32 and bf16 autocast; ratio to real time (25 fps): above 1 renders faster than video plays.

Writes ``benchmarks/results/vq_speed.{json,md}``.
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
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
FPS = 25.0
CONFIGS = {
    "tiny": (ROOT / "configs/tiny/vqgan.yaml", ROOT / "configs/tiny/vqig.yaml"),
    # the face codebook recipe (one GroupNorm group, 1024 factorised cosine codes) and a VQIG on it
    "tiny_faces": (ROOT / "configs/tiny/vqgan_faces.yaml", ROOT / "configs/tiny/vqig.yaml"),
    "paper": (ROOT / "configs/vqgan.yaml", ROOT / "configs/vqig.yaml"),
}
DIMS = {
    "tiny": dict(exp_dim=16, pose_dim=6),
    "tiny_faces": dict(exp_dim=16, pose_dim=6),
    "paper": dict(exp_dim=64, pose_dim=6),
}
#: (precision, channels_last) timed per model: the default path in both precisions, and bf16-mixed
#: in NCHW (``channels_last: false``, the layout before) to show what the memory layout is worth.
SETTINGS = (("32-true", True), ("bf16-mixed", True), ("bf16-mixed", False))


def model_args(path: Path) -> dict[str, Any]:
    args = dict(yaml.safe_load(path.read_text())["model"]["init_args"])
    args["log_images"] = 0
    return args


def batch_size_of(path: Path) -> int:
    return int(yaml.safe_load(path.read_text())["data"]["init_args"]["batch_size"])


def train_step(stage: str, model: Any, batch: dict[str, torch.Tensor], optimizers: list) -> None:
    """One manual-optimization step as the LightningModules take it (GAN terms on)."""
    opt_g, opt_d = optimizers
    if stage == "vqgan":
        images = batch["image"]
        recon, commit, _ = model.autoencoder(images)
        loss, _ = model.loss.generator_loss(images, recon, 1, commit, model.autoencoder.last_layer)
        target = images
    else:
        target = batch["target"]
        loss, _, out = model._losses(batch, 1)
        recon = out["image"]
    opt_g.zero_grad(set_to_none=True)
    for p in model.loss.discriminator.parameters():
        p.requires_grad_(False)
    loss.backward()
    opt_g.step()
    for p in model.loss.discriminator.parameters():
        p.requires_grad_(True)
    d_loss, _ = model.loss.discriminator_loss(target, recon.detach())
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()


def time_training(size: str, stage: str, repeats: int) -> list[dict[str, Any]]:
    from flowvq.lightning_modules.vqgan import VQGAN
    from flowvq.lightning_modules.vqig import VQIG

    vqgan_cfg, vqig_cfg = CONFIGS[size]
    rows = []
    for precision, layout in SETTINGS:
        torch.manual_seed(0)
        if stage == "vqgan":
            args = model_args(vqgan_cfg)
            args.update(disc_start=0, channels_last=layout)
            model = VQGAN(**args)
            res, bs = args["resolution"], batch_size_of(vqgan_cfg)
            batch = {"image": torch.rand(bs, 3, res, res) * 2 - 1}
        else:
            args = model_args(vqig_cfg)
            # the codebook's architecture from its stage-1 config (no checkpoint: speed only)
            args.update(DIMS[size], disc_start=0, codebook_checkpoint=None, codebook_config=model_args(vqgan_cfg))
            model = VQIG(**args, channels_last=layout)
            res, bs = model.hparams.resolution, batch_size_of(vqig_cfg)
            batch = {
                "source": torch.rand(bs, 3, res, res) * 2 - 1,
                "target": torch.rand(bs, 3, res, res) * 2 - 1,
                "target_exp": torch.randn(bs, args["exp_dim"]),
                "target_pose": torch.randn(bs, args["pose_dim"]),
            }
        model.train()
        optimizers = model.configure_optimizers()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            train_step(stage, model, batch, optimizers)  # warm-up (k-means init, allocations)
            start = time.perf_counter()
            for _ in range(repeats):
                train_step(stage, model, batch, optimizers)
            seconds = (time.perf_counter() - start) / repeats
        rows.append(
            {
                "size": size,
                "stage": stage,
                "precision": precision,
                "channels_last": layout,
                "batch_size": bs,
                "resolution": res,
                "seconds_per_step": seconds,
                "steps_per_s": 1.0 / seconds,
                "images_per_s": bs / seconds,
            }
        )
        print(rows[-1], flush=True)
    return rows


def time_rendering(resolutions: list[int], batch_sizes: list[int], frames: int) -> list[dict[str, Any]]:
    from flowvq.lightning_modules.vqig import VQIG

    rows = []
    for resolution in resolutions:
        args = model_args(CONFIGS["paper"][1])
        codebook = {**model_args(CONFIGS["paper"][0]), "resolution": resolution}
        args.update(DIMS["paper"], codebook_checkpoint=None, codebook_config=codebook)
        torch.manual_seed(0)
        model = VQIG(**args).eval()
        source = torch.rand(3, resolution, resolution) * 2 - 1
        for precision in ("32-true", "bf16-mixed"):
            for batch_size in batch_sizes:
                count = max(frames, batch_size)
                exp, pose = torch.randn(count, args["exp_dim"]), torch.randn(count, args["pose_dim"])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                    model.render(source, exp[:batch_size], pose[:batch_size], batch_size=batch_size)  # warm-up
                    start = time.perf_counter()
                    model.render(source, exp, pose, batch_size=batch_size)
                    seconds = time.perf_counter() - start
                fps = count / seconds
                rows.append(
                    {
                        "resolution": resolution,
                        "precision": precision,
                        "batch_size": batch_size,
                        "frames": count,
                        "frames_per_s": fps,
                        "real_time_ratio": fps / FPS,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# VQGAN / VQIG speed",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}; threads {result['threads']}; "
        f"load average at start {result['load_average']}. Command: `{result['command']}`.",
        "",
        "## Training (one manual-optimization step: generator + discriminator, GAN terms on)",
        "",
    ]
    if result.get("baseline"):
        lines += [
            f"`code` is this checkout or the baseline commit `{result['baseline']}` (its own benchmark script "
            f"and configs, run from a git worktree), alternating over {result['rounds']} rounds; each row "
            "keeps its fastest round. `vs baseline fp32` divides the baseline's fp32 s/step by the row's. "
            "`tiny_faces` (configs/tiny/vqgan_faces.yaml, and the tiny VQIG on that codebook) has no baseline "
            "row: the baseline cannot build that codebook (one norm group, factorised cosine lookup); its "
            "`vs baseline fp32` divides the baseline's `tiny` fp32 step of the same stage. `layout` is the "
            "memory format of the weights and activations (`channels_last: false` restores NCHW).",
            "",
        ]
    lines += [
        "| code | size | stage | precision | layout | batch | px | s/step | steps/s | images/s | bf16 speed-up "
        "| vs baseline fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["training"]:
        speedup = f"{r['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in r else ""
        versus = f"{r['speedup_vs_baseline_fp32']:.2f}x" if "speedup_vs_baseline_fp32" in r else ""
        lines.append(
            f"| {r.get('code', 'this')} | {r['size']} | {r['stage']} | {r['precision']} | "
            f"{'channels-last' if r.get('channels_last') else 'NCHW'} | {r['batch_size']} | "
            f"{r['resolution']} | {r['seconds_per_step']:.3f} | {r['steps_per_s']:.3f} | {r['images_per_s']:.1f} | "
            f"{speedup} | {versus} |"
        )
    if result.get("loss_terms"):
        lines += [
            "",
            "## Loss terms (forward + backward, batch 16, 64 px, float32)",
            "",
            "| term | ms |",
            "|---|---|",
        ]
        lines += [f"| {name} | {ms:.1f} |" for name, ms in result["loss_terms"].items()]
    if result["rendering"]:
        lines += [
            "",
            "## VQIG rendering (paper-scale architecture, untrained weights: speed only)",
            "",
            "| px | precision | batch | frames | frames/s | x real time (25 fps) |",
            "|---|---|---|---|---|---|",
        ]
    for r in result["rendering"]:
        lines.append(
            f"| {r['resolution']} | {r['precision']} | {r['batch_size']} | {r['frames']} | "
            f"{r['frames_per_s']:.2f} | {r['real_time_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def time_baseline(ref: str, worktree: Path, sizes: list[str], repeats: int) -> list[dict[str, Any]]:
    """Training rows of commit ``ref``'s own benchmark, run from a worktree in a subprocess."""
    out = worktree.parent / "baseline_results"
    command = [sys.executable, "benchmarks/vq_speed.py", "--skip-rendering", "--repeats", str(repeats)]
    command += ["--train-sizes", *[s for s in sizes if s in ("tiny", "paper")], "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(worktree))
    subprocess.run(command, cwd=worktree, env=env, check=True)
    rows = json.loads((out / "vq_speed.json").read_text())["training"]
    for row in rows:
        row["code"] = ref
    return rows


def time_loss_terms(repeats: int = 5) -> dict[str, float]:
    """ms per forward + backward of the reconstruction-side terms (ours against torchmetrics)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    from flowvq.nn.perceptual import ms_ssim
    from flowvq.nn.vq_losses import color_loss

    torch.manual_seed(0)
    target = torch.rand(16, 3, 64, 64) * 2 - 1
    recon = (target + 0.2 * torch.randn_like(target)).requires_grad_(True)
    terms = {
        "ms_ssim (flowvq, 4 scales, 7 px window)": lambda: ms_ssim(recon, target).mean(),
        "ms_ssim (torchmetrics, same scales and window)": lambda: multiscale_structural_similarity_index_measure(
            recon, target, data_range=2.0, kernel_size=7, betas=(0.0448, 0.2856, 0.3001, 0.2363)
        ),
        "color_loss (8 px blocks)": lambda: color_loss(target, recon),
        "l1": lambda: (recon - target).abs().mean(),
    }
    result = {}
    for name, term in terms.items():
        term().backward()
        start = time.perf_counter()
        for _ in range(repeats):
            term().backward()
        result[name] = (time.perf_counter() - start) / repeats * 1000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-sizes", nargs="*", default=["tiny"], choices=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per setting")
    parser.add_argument("--baseline", help="a git commit to time against, from a worktree (training only)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (baseline, this) per setting")
    parser.add_argument("--resolutions", nargs="*", type=int, default=[128, 256])
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 16])
    parser.add_argument("--frames", type=int, default=1, help="frames rendered per timing (at least the batch size)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-rendering", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/vq_speed.py " + " ".join(sys.argv[1:]),
        "baseline": args.baseline,
        "rounds": args.rounds,
        "training": [],
        "loss_terms": {},
        "rendering": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a run cut short still leaves its figures
        (args.out / "vq_speed.json").write_text(json.dumps(result, indent=2))
        (args.out / "vq_speed.md").write_text(markdown(result))

    if not args.skip_training:
        best: dict[tuple, dict[str, Any]] = {}

        def keep(rows: list[dict[str, Any]]) -> None:
            for row in rows:
                key = (row.get("code", "this"), row["size"], row["stage"], row["precision"], row.get("channels_last"))
                if key not in best or row["seconds_per_step"] < best[key]["seconds_per_step"]:
                    best[key] = row

        with tempfile.TemporaryDirectory(prefix="vq_speed_baseline_") as tmp:
            worktree = Path(tmp) / "tree"
            if args.baseline:
                subprocess.run(
                    ["git", "worktree", "add", "--detach", str(worktree), args.baseline], cwd=ROOT, check=True
                )
            try:
                for _ in range(args.rounds):
                    if args.baseline:
                        keep(time_baseline(args.baseline, worktree, args.train_sizes, args.repeats))
                    for size in args.train_sizes:
                        for stage in ("vqgan", "vqig"):
                            rows = time_training(size, stage, args.repeats)
                            for row in rows:
                                row["code"] = "this"
                            keep(rows)
            finally:
                if args.baseline:
                    subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
        rows = sorted(
            best.values(),
            key=lambda r: (
                r["size"],
                r["stage"],
                r["code"] != args.baseline,
                r["precision"],
                not r.get("channels_last"),
            ),
        )
        for row in rows:
            code, layout = row["code"], row.get("channels_last")
            fp32 = best.get((code, row["size"], row["stage"], "32-true", layout))
            if row["precision"] != "32-true" and fp32:
                row["speedup_vs_fp32"] = fp32["seconds_per_step"] / row["seconds_per_step"]
            else:
                row.pop("speedup_vs_fp32", None)
            base_size = "tiny" if row["size"] == "tiny_faces" else row["size"]
            base = best.get((args.baseline, base_size, row["stage"], "32-true", None)) if args.baseline else None
            if base:
                row["speedup_vs_baseline_fp32"] = base["seconds_per_step"] / row["seconds_per_step"]
        result["training"] = rows
        result["loss_terms"] = time_loss_terms()
        save()
    if not args.skip_rendering:
        result["rendering"] = time_rendering(args.resolutions, args.batch_sizes, args.frames)
    save()
    print(markdown(result))


if __name__ == "__main__":
    main()
