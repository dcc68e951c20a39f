"""Image-side quality on held-out speakers: the codebook (VQGAN) and the VQIG with its ablations.

    python benchmarks/vq_quality.py --data data/synth \\
        --vqgan runs/tiny_vqgan/checkpoints/last.ckpt \\
        --vqig full=runs/tiny_vqig/checkpoints/last.ckpt no_warp=runs/tiny_vqig_no_warp/checkpoints/last.ckpt ...

On the ``--split`` (default ``test``: SynthTalk's test speakers are never seen in training):

- codebook: reconstruction PSNR / SSIM of every frame the FrameDataModule gives, code usage
  (fraction of entries used, perplexity) over all of them;
- each VQIG: PSNR / SSIM of the frame rendered from the source frame and the target's
  coefficients against the target frame; F-LMD / M-LMD (68 points, mouth 48..67, each frame
  mean-centred, mean Euclidean distance in crop pixels) between FaceMesh landmarks detected on
  the rendered frame and the target's ground-truth landmarks, with the detection rate; the same
  detector on the ground-truth frames gives the floor (``ground truth`` row), and the source
  frame itself scored as an output gives the bar to beat (``source copy`` row);
- a PNG of mouth crops (target / each VQIG / codebook reconstruction) and one of whole frames.

Writes ``benchmarks/results/vq_quality.{json,md}`` and ``vq_mouths.png``, ``vq_frames.png``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: Row of the quality table that scores the unchanged source frame against the target.
SOURCE_COPY = "source copy"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class Landmarks:
    """FaceMesh (static images) -> iBUG-68 in crop pixels; frames upsampled to 256 px first."""

    def __init__(self) -> None:
        from flowvq.data.face import FaceTracker

        self.tracker = FaceTracker(static_image_mode=True, refine_landmarks=True)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        from flowvq.data.face import to_ibug68

        out = []
        for frame in frames:
            scale = 256 / frame.shape[0]
            big = np.asarray(Image.fromarray(frame).resize((256, 256), Image.BICUBIC))
            out.append(to_ibug68(self.tracker(big))[:, :2] / scale)
        return np.stack(out)  # (B, 68, 2), NaN where no face


def lmd(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame F-LMD and M-LMD of (B, 68, 2) landmark sets, each frame mean-centred."""
    p = predicted - predicted.mean(1, keepdims=True)
    t = truth - truth.mean(1, keepdims=True)
    distance = np.linalg.norm(p - t, axis=-1)  # (B, 68)
    return distance.mean(1), distance[:, 48:68].mean(1)


def mouth_crops(frames: torch.Tensor, landmarks: torch.Tensor, size: int = 48) -> torch.Tensor:
    """Square crops (B, 3, size, size) around the ground-truth mouth (points 48..67), 1.6x its width."""
    crops = []
    for frame, points in zip(frames, landmarks):
        mouth = points[48:68]
        centre = mouth.mean(0)
        half = float((mouth[:, 0].max() - mouth[:, 0].min()) * 0.8).__ceil__() + 2
        x0, y0 = int(centre[0]) - half, int(centre[1]) - half
        padded = torch.nn.functional.pad(frame, (half, half, half, half), value=-1)
        crop = padded[:, y0 + half : y0 + 3 * half, x0 + half : x0 + 3 * half]
        crops.append(torch.nn.functional.interpolate(crop[None], size=(size, size), mode="nearest")[0])
    return torch.stack(crops)


def evaluate_codebook(path: Path, data: Path, split: str, batch_size: int, max_batches: int) -> dict[str, Any]:
    from flowvq.datamodules import FrameDataModule
    from flowvq.lightning_modules.vqgan import VQGAN, psnr
    from flowvq.nn.perceptual import ssim
    from flowvq.nn.quantizer import codebook_usage

    model = VQGAN.load_from_checkpoint(path, map_location="cpu").eval()
    dm = FrameDataModule(data, batch_size=batch_size, image_size=model.hparams.resolution)
    dm.setup("test" if split == "test" else "validate")
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    psnrs, ssims = [], []
    counts = torch.zeros(model.hparams.codebook_size, dtype=torch.long)
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if index == max_batches:
                break
            recon, _, indices = model(batch["image"])
            psnrs.append(psnr(recon, batch["image"]))
            ssims.append(ssim(recon.clamp(-1, 1), batch["image"]))
            counts += torch.bincount(indices.flatten(), minlength=model.hparams.codebook_size)
    usage = codebook_usage(counts)
    return {
        "checkpoint": str(path),
        "frames": int(torch.cat(psnrs).numel()),
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "codebook_usage": float(usage["usage"]),
        "perplexity": float(usage["perplexity"]),
        "codebook_size": int(model.hparams.codebook_size),
        "train_batches": int(model.train_batches),
    }


def evaluate_vqig(
    runs: dict[str, Path], vqgan: Path | None, data: Path, split: str, batch_size: int, max_batches: int, out: Path
) -> list[dict[str, Any]]:
    from flowvq.datamodules import FramePairDataModule
    from flowvq.lightning_modules.vqgan import VQGAN, image_grid, psnr
    from flowvq.lightning_modules.vqig import VQIG
    from flowvq.nn.perceptual import ssim

    models = {name: VQIG.load_from_checkpoint(path, map_location="cpu").eval() for name, path in runs.items()}
    resolution = next(iter(models.values())).hparams.resolution
    codebook = VQGAN.load_from_checkpoint(vqgan, map_location="cpu").eval() if vqgan else None
    dm = FramePairDataModule(data, batch_size=batch_size, image_size=resolution)
    dm.setup("test" if split == "test" else "validate")
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    detector = Landmarks()
    scores: dict[str, dict[str, list]] = {
        name: {"psnr": [], "ssim": [], "f": [], "m": []} for name in [*models, SOURCE_COPY, "ground truth"]
    }
    examples = None
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if index == max_batches:
                break
            truth = batch["target_landmarks"].numpy()
            outputs = {}
            for name, model in models.items():
                image = model(batch["source"], batch["target_exp"], batch["target_pose"])["image"].clamp(-1, 1)
                outputs[name] = image
                scores[name]["psnr"].append(psnr(image, batch["target"]))
                scores[name]["ssim"].append(ssim(image, batch["target"]))
            scores[SOURCE_COPY]["psnr"].append(psnr(batch["source"], batch["target"]))
            scores[SOURCE_COPY]["ssim"].append(ssim(batch["source"], batch["target"]))
            outputs[SOURCE_COPY] = batch["source"]
            outputs["ground truth"] = batch["target"]
            for name, image in outputs.items():
                f, m = lmd(detector(to_uint8(image)), truth)
                scores[name]["f"].append(f)
                scores[name]["m"].append(m)
            if examples is None:
                examples = (batch, outputs)
    rows = []
    for name, s in scores.items():
        f, m = np.concatenate(s["f"]), np.concatenate(s["m"])
        row = {
            "model": name,
            "checkpoint": str(runs.get(name, "")),
            "frames": int(f.size),
            "detected": float(np.isfinite(f).mean()),
            "f_lmd": float(np.nanmean(f)) if np.isfinite(f).any() else None,
            "m_lmd": float(np.nanmean(m)) if np.isfinite(m).any() else None,
        }
        if s["psnr"]:
            row.update(psnr=float(torch.cat(s["psnr"]).mean()), ssim=float(torch.cat(s["ssim"]).mean()))
        if name in models:
            model = models[name]
            row.update(
                {k: bool(model.hparams[k]) for k in ("use_warp", "use_fusion", "use_cross_attention", "use_codebook")}
            )
            row["train_batches"] = int(model.train_batches)
        rows.append(row)
    if examples is not None:
        batch, outputs = examples
        count = min(8, batch["target"].shape[0])
        names = [n for n in outputs if n not in ("ground truth", SOURCE_COPY)]
        frame_rows = [batch["source"][:count], batch["target"][:count]] + [outputs[n][:count] for n in names]
        mouth_rows = [mouth_crops(batch["target"][:count], batch["target_landmarks"][:count])]
        mouth_rows += [mouth_crops(outputs[n][:count], batch["target_landmarks"][:count]) for n in names]
        labels = ["target"] + names
        if codebook is not None:
            recon, _, _ = codebook(batch["target"][:count])
            mouth_rows.append(mouth_crops(recon.clamp(-1, 1), batch["target_landmarks"][:count]))
            labels.append("codebook reconstruction")
        save_png(image_grid(frame_rows, count), out / "vq_frames.png", ["source", "target", *names])
        save_png(image_grid(mouth_rows, count), out / "vq_mouths.png", labels)
    return rows


def save_png(grid: torch.Tensor, path: Path, labels: list[str]) -> None:
    """Save a (3, H, W) grid in [0, 1], upscaled 2x; ``labels`` (one per row) go to a .txt beside it."""
    image = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(path)
    path.with_suffix(".txt").write_text("rows, top to bottom: " + ", ".join(labels) + "\n")


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Image side quality (held-out speakers)", "", f"Command: `{result['command']}`", ""]
    if result.get("codebook"):
        c = result["codebook"]
        lines += [
            "## Codebook (VQGAN reconstruction)",
            "",
            "| frames | PSNR dB | SSIM | codes in use | perplexity | training batches |",
            "|---|---|---|---|---|---|",
            f"| {c['frames']} | {c['psnr']:.2f} | {c['ssim']:.3f} | {c['codebook_usage']:.3f} of {c['codebook_size']} "
            f"| {c['perplexity']:.1f} | {c['train_batches']} |",
            "",
        ]
    if result.get("vqig"):
        lines += [
            "## VQIG and ablations (target frame from source frame + target coefficients)",
            "",
            "F-LMD / M-LMD: FaceMesh landmarks of the rendered frame vs the target's ground truth (crop px); "
            "the ground-truth row is the detector's own error on real frames (the floor). The source-copy row "
            "scores the source frame itself as the output: the bar a generator must beat to have moved the face.",
            "",
            "| model | PSNR dB | SSIM | F-LMD | M-LMD | faces detected | training batches |",
            "|---|---|---|---|---|---|---|",
        ]

        def fmt(value: Any, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        for r in result["vqig"]:
            lines.append(
                f"| {r['model']} | {fmt(r.get('psnr'), '.2f')} | {fmt(r.get('ssim'), '.3f')} | {fmt(r['f_lmd'], '.2f')} "
                f"| {fmt(r['m_lmd'], '.2f')} | {r['detected']:.2f} | {r.get('train_batches', '-')} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--vqgan", type=Path, default=None, help="stage-1 checkpoint")
    parser.add_argument("--vqig", nargs="*", default=[], help="name=checkpoint for each VQIG (full model, ablations)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batches", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = {}
    for item in args.vqig:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--vqig takes name=checkpoint items, got {item!r}")
        runs[name] = Path(path)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"command": "python benchmarks/vq_quality.py " + " ".join(os.sys.argv[1:])}
    torch.manual_seed(0)
    if args.vqgan:
        result["codebook"] = evaluate_codebook(args.vqgan, args.data, args.split, args.batch_size, args.max_batches)
        print(result["codebook"], flush=True)
    if runs:
        result["vqig"] = evaluate_vqig(
            runs, args.vqgan, args.data, args.split, args.batch_size, args.max_batches, args.out
        )
    (args.out / "vq_quality.json").write_text(json.dumps(result, indent=2))
    (args.out / "vq_quality.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
