"""What holds the face codebook's reconstruction down: short VQGAN runs on the faces set, scored on
SynthTalk small.

    flowvq synth --out /tmp/faces --preset faces --seed 0
    flowvq synth --out /tmp/small64 --preset small --frame_size 64 --seed 0
    python benchmarks/vq_codebook.py --faces /tmp/faces --data /tmp/small64 --steps 500 --name baseline \\
        --model-arg color_weight=1.0
    python benchmarks/vq_codebook.py ... --name continuous --bypass          # no quantization at all
    python benchmarks/vq_codebook.py ... --name lookup8 --model-arg codebook_lookup_dim=8 cosine_codebook=true
    python benchmarks/vq_codebook.py --data /tmp/small64 --evaluate CKPT --name faces_codebook   # score a checkpoint

Each run trains the VQGAN of ``--config`` (default ``configs/tiny/vqgan.yaml``; ``--model-arg``
overrides its init_args) on the faces set for ``--steps`` batches of 16 frames with Lightning in
bf16-mixed, one thread (the run does not stop early; ``--minutes`` is a safety cap), then scores
it with :func:`vq_ladder.score` on SynthTalk small's test speakers (never seen) and on the
training speakers' held-out clips (every fifth take): PSNR / SSIM of the reconstruction against
the target frame, and the codes in use over those frames (distinct entries / codebook size,
perplexity). ``--bypass`` replaces the quantizer by the identity (continuous latents): the bound
of the architecture and optimisation at that budget; it exists only here, never in a model.

Writes ``benchmarks/results/vq_codebook.{json,md}`` (rows merged by name, each with its command,
steps, train minutes and load average) and, with ``--picture``, ``vq_codebook_<name>.png``
(rows: target, reconstruction, for test speakers then held-out clips; 2x). Checkpoints go to
``--work/<name>.ckpt``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

import vq_ladder  # noqa: E402  (benchmarks/ is not a package)


class Bypass(nn.Module):
    """The identity in place of the quantizer (diagnosis only): continuous latents, no loss, index 0 everywhere."""

    def __init__(self, quantizer: nn.Module) -> None:
        super().__init__()
        self.dim, self.codebook_size = quantizer.dim, quantizer.codebook_size

    def forward(self, z: Tensor, freeze_codebook: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        return z, z.new_zeros(()), torch.zeros(z.shape[0], *z.shape[2:], dtype=torch.long, device=z.device)

    def nearest(self, z: Tensor) -> Tensor:
        return torch.zeros(z.shape[0], *z.shape[2:], dtype=torch.long, device=z.device)


def build_model(config_path: Path, model_args: list[str]) -> Any:
    from flowvq.lightning_modules.vqgan import VQGAN

    config = yaml.safe_load(config_path.read_text())["model"]["init_args"]
    config["log_images"] = 0
    for item in model_args:
        key, _, value = item.partition("=")
        if key not in VQGAN.__init__.__code__.co_varnames:
            raise SystemExit(f"--model-arg {item!r}: {key!r} is not a VQGAN init_arg")
        config[key] = yaml.safe_load(value)
    return VQGAN(**config), config


class StopAfter:
    """Callback: stop after ``batches`` training batches (Lightning's global_step counts both optimizers)."""

    def __new__(cls, batches: int):
        import lightning as L

        class _Stop(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if int(pl_module.train_batches) >= batches:
                    trainer.should_stop = True

        return _Stop()


def train(args: argparse.Namespace) -> tuple[Any, dict, float, int]:
    import lightning as L

    from flowvq.datamodules import FrameDataModule

    L.seed_everything(args.seed)
    model, config = build_model(args.config, args.model_arg)
    if args.init is not None:
        # fine-tuning: the autoencoder and its codebook from a checkpoint; a fresh discriminator and
        # batch clock (disc_start and lr_decay_batches count from here)
        state = torch.load(args.init, map_location="cpu", weights_only=False)["state_dict"]
        prefix = "autoencoder."
        model.autoencoder.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    if args.bypass:
        model.autoencoder.quantizer = Bypass(model.autoencoder.quantizer)
    # a str, not a Path: the checkpoint then loads with torch.load(weights_only=True)
    data = FrameDataModule(str(args.faces), batch_size=args.batch_size, frames_per_clip=8, seed=args.seed)
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_epochs=-1,
        max_steps=-1,
        max_time={"minutes": args.minutes},
        callbacks=[StopAfter(args.steps)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    if not args.bypass:
        args.work.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(args.work / f"{args.name}.ckpt")
    return model.eval(), config, seconds, int(model.train_batches)


@torch.no_grad()
def usage(model: Any, pairs: list[dict]) -> dict[str, float]:
    """Distinct codes and perplexity over the target frames of ``pairs``."""
    from flowvq.nn.quantizer import codebook_usage

    size = model.hparams.codebook_size
    counts = torch.zeros(size, dtype=torch.long)
    for start in range(0, len(pairs), 32):
        target = vq_ladder.to_batch(pairs[start : start + 32])["target"]
        counts += torch.bincount(model.autoencoder.encode_indices(target).flatten(), minlength=size)
    stats = codebook_usage(counts)
    return {"codes used": int((counts > 0).sum()), "codebook size": size, "perplexity": float(stats["perplexity"])}


def picture(model: Any, groups: list[list[dict]], path: Path, count: int = 8) -> None:
    import numpy as np
    from PIL import Image

    rows = []
    with torch.no_grad():
        for pairs in groups:
            target = vq_ladder.to_batch(pairs[:: max(1, len(pairs) // count)][:count])["target"]
            rows += [target, model(target)[0].clamp(-1, 1)]
    grid = torch.cat([torch.cat(list(r), -1) for r in rows], -2)
    pixels = ((grid + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(pixels)).resize(
        (pixels.shape[1] * 2, pixels.shape[0] * 2), Image.NEAREST
    ).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=Path, help="the faces preset (training frames)")
    parser.add_argument("--data", type=Path, required=True, help="SynthTalk small at 64 px (scoring)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/tiny/vqgan.yaml")
    parser.add_argument("--model-arg", nargs="*", default=[], metavar="KEY=VALUE", help="VQGAN init_args overrides")
    parser.add_argument("--bypass", action="store_true", help="continuous latents: no quantization (diagnosis)")
    parser.add_argument("--steps", type=int, default=500, help="training batches")
    parser.add_argument("--minutes", type=float, default=30.0, help="safety cap on training time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate", type=Path, help="score this VQGAN checkpoint instead of training")
    parser.add_argument("--init", type=Path, help="fine-tune: start from this VQGAN checkpoint's autoencoder")
    parser.add_argument("--name", required=True)
    parser.add_argument("--picture", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("runs/vq_codebook"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.evaluate is None and args.faces is None:
        parser.error("give --faces (a faces set to train on) or --evaluate CHECKPOINT")

    import lightning as L

    from flowvq.data.shards import open_split
    from flowvq.datamodules import FramePairDataModule
    from flowvq.lightning_modules.vqgan import VQGAN

    seconds, steps, config = 0.0, 0, {}
    if args.evaluate is not None:
        model = VQGAN.load_from_checkpoint(args.evaluate, map_location="cpu").eval()
        steps = int(model.train_batches)
    else:
        model, config, seconds, steps = train(args)

    L.seed_everything(args.seed)
    sampler = FramePairDataModule(args.data, batch_size=4, pairs_per_clip=4, seed=args.seed).make_sampler("test")
    held = [r for r in open_split(args.data, "train") if vq_ladder.held_out(r["clip_id"])]
    groups = {
        "test speakers": vq_ladder.evaluation_pairs(list(open_split(args.data, "test")), sampler),
        "held-out clips": vq_ladder.evaluation_pairs(held, sampler),
    }
    scores = {}
    for where, pairs in groups.items():
        s = vq_ladder.score(None, model, pairs, None)
        scores[where] = {"psnr": s["codebook psnr"], "ssim": s["codebook ssim"], "pairs": s["pairs"]}
        if not args.bypass:
            scores[where].update(usage(model, pairs))
    if args.picture:
        args.out.mkdir(parents=True, exist_ok=True)
        picture(model, list(groups.values()), args.out / f"vq_codebook_{args.name}.png")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "vq_codebook.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[args.name] = {
        "command": "python benchmarks/vq_codebook.py " + " ".join(sys.argv[1:]),
        "checkpoint": str(args.evaluate or (None if args.bypass else args.work / f"{args.name}.ckpt")),
        "bypass": args.bypass,
        "model_args": args.model_arg,
        "init": str(args.init) if args.init else None,
        "steps": steps,
        "batch_size": args.batch_size,
        "train_minutes": round(seconds / 60, 2),
        "seconds_per_step": round(seconds / max(steps, 1), 3),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "scores": scores,
    }
    path.write_text(json.dumps(results, indent=2))
    (args.out / "vq_codebook.md").write_text(markdown(results))
    print(markdown({args.name: results[args.name]}))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# The face codebook: what holds reconstruction down",
        "",
        "Tiny VQGAN trained on the faces preset, scored on SynthTalk small at 64 px: PSNR (dB) / SSIM of",
        "the reconstruction, codes in use over the scored frames (distinct / size, perplexity). Source copy",
        "scores 24.75 dB on the test speakers. Commands and load averages in the JSON.",
        "",
        "| run | changes | steps | train min | test speakers | codes (test) | held-out clips | codes (held-out) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in results.items():
        changes = (["continuous (no quantizer)"] if run["bypass"] else []) + run["model_args"]
        changes = " ".join(changes + ([f"from {Path(run['init']).stem}"] if run.get("init") else [])) or "-"
        cells = []
        for where in ("test speakers", "held-out clips"):
            s = run["scores"][where]
            cells.append(f"{s['psnr']:.2f} / {s['ssim']:.3f}")
            cells.append(
                f"{s['codes used']} / {s['codebook size']}, {s['perplexity']:.0f}" if "codes used" in s else "-"
            )
        lines.append(
            f"| {name} | {changes} | {run['steps']} | {run['train_minutes']:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
