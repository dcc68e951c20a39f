"""The image side's sanity ladder, rungs two to four: does a VQIG beat copying the source frame?

    python benchmarks/vq_ladder.py --data data/synth_small64 --codebook runs/faces_vqgan/checkpoints/last.ckpt \\
        --rung speaker --steps 600 --name speaker
    python benchmarks/vq_ladder.py ... --rung train --steps 600 --name train     # all training speakers
    python benchmarks/vq_ladder.py --data ... --codebook ... --evaluate-only       # the codebook alone
    python benchmarks/vq_ladder.py ... --model-arg use_codebook=false --name speaker_no_codebook

(Rung one, one fixed pair, is a test: ``tests/test_vq_ladder.py``.)

Rungs (SynthTalk splits are by speaker; within a training speaker every fifth clip, by take
number, is held out here and never trained on):

- ``speaker``: a VQIG trained on the pairs of one training speaker (``--speaker``, default the
  first), scored on that speaker's held-out clips;
- ``train``: trained on every training speaker's pairs, scored on their held-out clips;
- every run is also scored on the ``test`` split (speakers never seen in training).

Each row gives PSNR / SSIM of the rendered target frame, of the codebook's own reconstruction
of the target (the bound a VQIG on this frozen codebook can reach) and of the source frame
copied unchanged (the bar a generator must beat), over fixed pairs (4 per clip). The VQIG is
the tiny configuration (``configs/tiny/vqig.yaml``), GAN off, trained with Lightning in
bf16-mixed. Writes ``benchmarks/results/vq_ladder.{json,md}`` (rows are merged by name) and
``vq_ladder_<name>.png`` (rows: source, target, codebook, VQIG; then the mouths, 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
HOLDOUT_EVERY = 5


def held_out(clip_id: str) -> bool:
    """Every fifth take of a speaker (clip ids end in ``_<take>``) is held out of training."""
    return int(clip_id.rsplit("_", 1)[1]) % HOLDOUT_EVERY == 0


class Pairs(Dataset):
    """Pairs drawn by the FramePairDataModule's own sampler from a list of clip records."""

    def __init__(self, records: list[dict], sampler: Any, draws: int) -> None:
        self.records, self.sampler, self.draws = records, sampler, draws

    def __len__(self) -> int:
        return len(self.records) * self.draws

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index % len(self.records)]
        sample = self.sampler(record, index // len(self.records) + 1)[0]
        return {k: v for k, v in sample.items() if k in ("source", "target", "target_exp", "target_pose")}


def to_batch(items: list[dict]) -> dict[str, torch.Tensor]:
    images = {
        k: torch.from_numpy(np.stack([i[k] for i in items])).permute(0, 3, 1, 2).float() / 127.5 - 1
        for k in ("source", "target")
    }
    coefficients = {k: torch.from_numpy(np.stack([i[k] for i in items])) for k in ("target_exp", "target_pose")}
    return {**images, **coefficients}


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return to_batch(items)


def evaluation_pairs(records: list[dict], sampler: Any) -> list[dict]:
    pairs = []
    for record in records:
        for sample in sampler(record, 0):
            sample["mouth"] = sample["target_landmarks"]
            pairs.append(sample)
    return pairs


@torch.no_grad()
def score(vqig: Any, codebook: Any, pairs: list[dict], picture: Path | None) -> dict[str, float]:
    from flowvq.lightning_modules.vqgan import psnr
    from flowvq.nn.perceptual import ssim

    sys.path.insert(0, str(HERE))
    from vq_quality import mouth_crops

    totals: dict[str, list[torch.Tensor]] = {}
    shown: list[torch.Tensor] = []
    for start in range(0, len(pairs), 32):
        chunk = pairs[start : start + 32]
        batch = to_batch(chunk)
        target = batch["target"]
        outputs = {"source copy": batch["source"], "codebook": codebook(target)[0].clamp(-1, 1)}
        if vqig is not None:
            outputs["vqig"] = vqig(batch["source"], batch["target_exp"], batch["target_pose"])["image"].clamp(-1, 1)
        for name, image in outputs.items():
            totals.setdefault(f"{name} psnr", []).append(psnr(image, target))
            totals.setdefault(f"{name} ssim", []).append(ssim(image, target))
        if start == 0 and picture is not None:
            rows = [batch["source"], target, outputs["codebook"]] + ([outputs["vqig"]] if vqig is not None else [])
            landmarks = torch.from_numpy(np.stack([p["mouth"] for p in chunk]))
            mouths = [mouth_crops(r, landmarks, size=32) for r in rows[1:]]
            shown = [r[:8] for r in rows] + [torch.nn.functional.interpolate(m[:8], size=64) for m in mouths]
    if picture is not None and shown:
        grid = torch.cat([torch.cat(list(r), -1) for r in shown], -2)
        pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).resize((pixels.shape[1] * 2, pixels.shape[0] * 2), Image.NEAREST).save(picture)
    return {k: float(torch.cat(v).mean()) for k, v in totals.items()} | {"pairs": len(pairs)}


def train_vqig(
    data_root: Path,
    codebook_path: Path,
    train_records: list[dict],
    steps: int,
    batch_size: int = 16,
    lr: float = 5e-4,
    color_weight: float = 0.0,
    seed: int = 0,
    model_args: list[str] = (),
) -> tuple[Any, float]:
    """A VQIG of ``configs/tiny/vqig.yaml`` (GAN off, bf16-mixed) trained on the pairs of
    ``train_records`` for ``steps`` steps; returns it (in eval mode) and the training seconds.
    ``model_args``: ``KEY=VALUE`` init_args overrides. Also used by ``benchmarks/styleunet.py``."""
    import lightning as L

    from flowvq.datamodules import FramePairDataModule
    from flowvq.lightning_modules.vqig import VQIG

    L.seed_everything(seed)
    data = FramePairDataModule(data_root, batch_size=batch_size, pairs_per_clip=1, seed=seed)
    train_sampler = data.make_sampler("train")
    config = yaml.safe_load((ROOT / "configs/tiny/vqig.yaml").read_text())["model"]["init_args"]
    config.update(
        codebook_checkpoint=str(codebook_path),
        exp_dim=data.card.exp_dim,
        pose_dim=data.card.pose_dim,
        disc_start=10**9,
        lr=lr,
        color_weight=color_weight,
        log_images=0,
    )
    for item in model_args:
        key, _, value = item.partition("=")
        if key not in config:
            raise SystemExit(f"--model-arg {item!r}: {key!r} is not a VQIG init_arg of configs/tiny/vqig.yaml")
        config[key] = yaml.safe_load(value)
    vqig = VQIG(**config)
    vqig.load_codebook(codebook_path)
    loader = DataLoader(
        Pairs(train_records, train_sampler, draws=10**4),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=0,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(vqig, loader)
    return vqig.eval(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a SynthTalk root with frames (64 px)")
    parser.add_argument("--codebook", type=Path, required=True, help="stage-1 VQGAN checkpoint")
    parser.add_argument("--rung", choices=("speaker", "train"), default="speaker")
    parser.add_argument("--speaker", help="the speaker of rung 'speaker' (default: the first training speaker)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--color-weight", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model-arg",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="VQIG init_args overrides, e.g. use_codebook=false",
    )
    parser.add_argument("--name", help="row name (default: the rung)")
    parser.add_argument("--evaluate-only", action="store_true", help="score the codebook alone, train nothing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import lightning as L

    from flowvq.data.shards import open_split
    from flowvq.datamodules import FramePairDataModule
    from flowvq.lightning_modules.vqgan import VQGAN

    name = args.name or ("codebook" if args.evaluate_only else args.rung)
    L.seed_everything(args.seed)
    eval_data = FramePairDataModule(args.data, batch_size=4, pairs_per_clip=4, seed=args.seed)
    eval_sampler = eval_data.make_sampler("test")  # fixed pairs (random=False)
    records = list(open_split(args.data, "train"))
    speakers = sorted({r["speaker"] for r in records})
    if args.rung == "speaker":
        speaker = args.speaker or speakers[0]
        if speaker not in speakers:
            raise SystemExit(f"--speaker {speaker!r} is not a training speaker of {args.data}: one of {speakers}")
        records = [r for r in records if r["speaker"] == speaker]
    train_records = [r for r in records if not held_out(r["clip_id"])]
    held_records = [r for r in records if held_out(r["clip_id"])]
    test_records = list(open_split(args.data, "test"))

    codebook = VQGAN.load_from_checkpoint(args.codebook, map_location="cpu").eval()
    vqig = None
    seconds = 0.0
    if not args.evaluate_only:
        vqig, seconds = train_vqig(
            args.data,
            args.codebook,
            train_records,
            args.steps,
            args.batch_size,
            args.lr,
            args.color_weight,
            args.seed,
            args.model_arg,
        )

    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    if held_records:
        rows["held-out clips"] = score(
            vqig, codebook, evaluation_pairs(held_records, eval_sampler), args.out / f"vq_ladder_{name}.png"
        )
    rows["test speakers"] = score(
        vqig, codebook, evaluation_pairs(test_records, eval_sampler), args.out / f"vq_ladder_{name}_test.png"
    )
    result_path = args.out / "vq_ladder.json"
    results = json.loads(result_path.read_text()) if result_path.is_file() else {}
    results[name] = {
        "rung": "codebook" if args.evaluate_only else args.rung,
        "speakers": sorted({r["speaker"] for r in train_records}),
        "train_clips": len(train_records),
        "steps": 0 if args.evaluate_only else args.steps,
        "batch_size": args.batch_size,
        "color_weight": args.color_weight,
        "model_args": args.model_arg,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "command": "python benchmarks/vq_ladder.py " + " ".join(sys.argv[1:]),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "scores": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(results, indent=2))
    (args.out / "vq_ladder.md").write_text(markdown(results))
    print(markdown({name: results[name]}))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Image-side sanity ladder (rungs 2-4)",
        "",
        "PSNR (dB) / SSIM of the target frame: the VQIG's rendering, the frozen codebook's own",
        "reconstruction (the bound) and the source frame copied (the bar). Commands in the JSON.",
        "",
        "| run | rung | trained on | steps | train min | scored on | pairs | VQIG | codebook | source copy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in results.items():
        speakers = run["speakers"]
        trained = speakers[0] if len(speakers) == 1 else f"{len(speakers)} speakers"
        for where, s in run["scores"].items():
            vqig = f"{s['vqig psnr']:.2f} / {s['vqig ssim']:.3f}" if "vqig psnr" in s else "-"
            lines.append(
                f"| {name} | {run['rung']} | {trained} ({run['train_clips']} clips) | {run['steps']} | "
                f"{run['train_seconds'] / 60:.1f} | {where} | {s['pairs']} | {vqig} | "
                f"{s['codebook psnr']:.2f} / {s['codebook ssim']:.3f} | "
                f"{s['source copy psnr']:.2f} / {s['source copy ssim']:.3f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
