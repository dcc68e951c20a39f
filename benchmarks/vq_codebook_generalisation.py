"""Does the face codebook carry to unseen speakers? Train / held-out reconstruction, luma vs chroma.

    python benchmarks/vq_codebook_generalisation.py --data data/synth_small64 --steps 500
    python benchmarks/vq_codebook_generalisation.py --data data/synth --steps 1000 --jitter 0 1

Trains the VQ autoencoder of ``configs/tiny/vqgan.yaml`` (same architecture, codebook and
reconstruction loss; the GAN terms stay off, so the figures isolate what the codebook learns)
for ``--steps`` batches of random training frames, once per colour-jitter strength given
(see :mod:`flowvq.datamodules.augment`), then reconstructs every ``--stride``-th frame of the
train and test splits (splits are by speaker: the test speakers are never seen) and reports:

- PSNR of the RGB reconstruction, and PSNR of its luma (Y) and two chroma channels (I, Q) of
  YIQ, so an error of structure and an error of colour can be told apart;
- codes in use on each split.

Writes ``benchmarks/results/vq_codebook_generalisation.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CONFIG = ROOT / "configs/tiny/vqgan.yaml"


def load_frames(root: Path, split: str, stride: int) -> tuple[torch.Tensor, list[str]]:
    """Every ``stride``-th frame of every clip of a split: (N, 3, H, W) uint8 and the speakers."""
    from flowvq.data.schema import num_frames
    from flowvq.data.shards import ClipShards
    from flowvq.datamodules.base import decode_frame

    shards = ClipShards(root, split)
    size = shards.card.frame_size
    if not size:
        raise SystemExit(f"{root} has no frames (frame_size 0): write it with frames (`flowvq synth --out {root}`)")
    images, speakers = [], []
    for index in range(len(shards)):
        record = shards[index]
        for t in range(0, num_frames(record), stride):
            images.append(decode_frame(record, t, size, size))
            speakers.append(record["speaker"])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), speakers


def channel_psnr(recon: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, mean over images) of RGB and of the Y, I, Q channels; images in [0, 1]."""
    from flowvq.datamodules.augment import _RGB_TO_YIQ

    yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float32)

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((-10 * torch.log10((a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10))).mean())

    r, t = (torch.einsum("ij,bjhw->bihw", yiq, x) for x in (recon, target))
    return {
        "rgb": psnr(recon, target),
        "Y": psnr(r[:, :1], t[:, :1]),
        "I": psnr(r[:, 1:2], t[:, 1:2]),
        "Q": psnr(r[:, 2:], t[:, 2:]),
    }


def jitter_batch(images: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """The DataModules' colour jitter (one transform per image) on a uint8 batch (B, 3, H, W)."""
    from flowvq.datamodules.augment import color_jitter

    if strength == 0:
        return images
    hwc = images.permute(0, 2, 3, 1).numpy()
    out = [color_jitter([image], rng, strength)[0] for image in hwc]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def run(args: argparse.Namespace, strength: float, train: torch.Tensor, test: torch.Tensor) -> dict[str, Any]:
    from flowvq.nn.vq_autoencoder import VQAutoencoder
    from flowvq.nn.vq_losses import VQLoss

    model_args = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    autoencoder = VQAutoencoder(
        train.shape[-1],
        model_args["channels"],
        tuple(model_args["ch_mult"]),
        model_args["num_res_blocks"],
        model_args["attention"],
        model_args["codebook_size"],
        model_args["codebook_dim"],
        kmeans_init=model_args["kmeans_init"],
        threshold_ema_dead_code=model_args["threshold_ema_dead_code"],
    )
    loss = VQLoss(disc_start=10**12, disc_channels=model_args["disc_channels"], disc_layers=model_args["disc_layers"])
    loss.discriminator.requires_grad_(False)  # feature matching through a fixed random discriminator
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=model_args["lr"], betas=(0.5, 0.9))
    start = time.process_time()
    for step in range(args.steps):
        batch = jitter_batch(train[rng.integers(len(train), size=args.batch_size)], strength, rng)
        images = batch.float() / 127.5 - 1
        recon, commit, _ = autoencoder(images)
        total, _ = loss.generator_loss(images, recon, step, extra_loss=commit)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    cpu_s = time.process_time() - start
    autoencoder.eval()
    result: dict[str, Any] = {"color_jitter": strength, "steps": args.steps, "train_cpu_s": round(cpu_s, 1)}
    with torch.no_grad():
        for name, frames in (("train", train), ("test", test)):
            recons, codes = [], []
            for i in range(0, len(frames), 64):
                images = frames[i : i + 64].float() / 127.5 - 1
                recon, _, indices = autoencoder(images)
                recons.append((recon.clamp(-1, 1) + 1) / 2)
                codes.append(indices.flatten())
            scores = channel_psnr(torch.cat(recons), frames.float() / 255)
            result[name] = {
                **{k: round(v, 2) for k, v in scores.items()},
                "codes": int(torch.cat(codes).unique().numel()),
            }
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Codebook generalisation: seen vs unseen speakers",
        "",
        f"Data: `{report['data']}` ({report['train_speakers']} train speakers, {report['test_speakers']} test "
        f"speakers, every {report['stride']}th frame: {report['train_frames']} / {report['test_frames']} frames). "
        f"Architecture and loss of `configs/tiny/vqgan.yaml`, GAN off, batch {report['batch_size']}. "
        f"Machine: {report['machine']}. Command: `{report['command']}`.",
        "",
        "PSNR in dB; Y is luma (structure, shading), I and Q are the chroma axes of YIQ (I: orange-blue, Q: purple-green).",
        "",
        "| color_jitter | steps | split | RGB | Y | I | Q | codes in use | train CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        for split in ("train", "test"):
            s = r[split]
            lines.append(
                f"| {r['color_jitter']} | {r['steps']} | {split} | {s['rgb']:.2f} | {s['Y']:.2f} | {s['I']:.2f} | "
                f"{s['Q']:.2f} | {s['codes']} of {report['codebook_size']} | {r['train_cpu_s']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument(
        "--jitter", nargs="*", type=float, default=[0.0, 0.5], help="colour-jitter strengths to compare"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4, help="every n-th frame of each clip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (args.data / "dataset.json").is_file():
        raise SystemExit(f"no dataset at {args.data}: write one first (`flowvq synth --out {args.data} --preset tiny`)")
    train, train_speakers = load_frames(args.data, "train", args.stride)
    test, test_speakers = load_frames(args.data, "test", args.stride)
    report: dict[str, Any] = {
        "data": str(args.data),
        "train_speakers": len(set(train_speakers)),
        "test_speakers": len(set(test_speakers)),
        "train_frames": len(train),
        "test_frames": len(test),
        "stride": args.stride,
        "batch_size": args.batch_size,
        "codebook_size": yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["codebook_size"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load {[round(x, 2) for x in os.getloadavg()]}",
        "command": "python benchmarks/vq_codebook_generalisation.py "
        + f"--data {args.data} --steps {args.steps} --jitter {' '.join(str(j) for j in args.jitter)}",
        "runs": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for strength in args.jitter:
        report["runs"].append(run(args, strength, train, test))
        print(json.dumps(report["runs"][-1]), flush=True)
        (args.out / "vq_codebook_generalisation.json").write_text(json.dumps(report, indent=2))
        (args.out / "vq_codebook_generalisation.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
