"""DataModule throughput: windows/s and frames/s of each train loader against what a training step consumes.

    python benchmarks/datamodule_throughput.py                      # SynthTalk tiny in a temp dir
    python benchmarks/datamodule_throughput.py --root data/synth --workers 0 2 4

For every DataModule (coefficient windows, frame pairs, single frames) and worker count, the
train loader is run for whole epochs (after one warm-up epoch) until ``--seconds`` have passed;
workers are restarted every epoch, as under Lightning, and that cost is included. The need
side is a timed training step of a reference model on a batch of the same layout:

- coefficient windows: the project's ``EmotionClassifier`` (TemporalConvEncoder), and an
  audio-conditioned reference (a conv audio encoder over the ``[B, W, C, M]`` mel windows
  plus a GRU over exp/pose), the cheaper and the dearer end of the coefficient models;
- frames / frame pairs: a reference conv encoder-decoder (VQGAN-sized at 64 px: 4 strided
  convs down to 1/16, 4 up) on ``[B, 3, H, W]``.

``needed samples/s = batch size x steps/s``; ``headroom = loader samples/s / needed``; below 1
the loader starves the step. On this 2-core machine loader and step share the CPU; on a GPU
node the step runs on the accelerator, and ``--step-rate name=steps_per_s`` replaces a timed
step with a measured one. Writes ``benchmarks/results/datamodule_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from flowvq.datamodules import CoefficientDataModule, FrameDataModule, FramePairDataModule

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def write_default_dataset(root: Path, seed: int) -> str:
    """SynthTalk tiny when the synth package is there, else the test suite's random dataset."""
    try:
        from flowvq.data.synth import synth
    except ImportError:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from conftest import write_random_dataset  # the fixture's writer, no pytest needed

        write_random_dataset(root, seed=seed)
        return "random (tests/conftest.py)"
    synth(root, preset="tiny", seed=seed)
    return "SynthTalk tiny"


# --------------------------------------------------------------------------- loaders


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited (the epoch's workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure_loader(dm: Any, seconds: float, max_epochs: int) -> dict[str, float]:
    """Samples/s, frames/s and batches/s of a DataModule's train loader over whole epochs."""
    dm.setup("fit")
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up epoch: page cache, lazy imports
        pass
    samples = frames = batches = epochs = 0
    first_batch = 0.0  # summed time to the first batch of each epoch (worker start-up)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    while epochs < max_epochs and (epochs == 0 or time.perf_counter() - start < seconds):
        epoch_start = time.perf_counter()
        for index, batch in enumerate(loader):
            if index == 0:
                first_batch += time.perf_counter() - epoch_start
            batches += 1
            if "mask" in batch:  # coefficient windows: valid frames
                samples += batch["mask"].shape[0]
                frames += int(batch["mask"].sum())
            elif "source" in batch:  # pairs: two frames each
                samples += batch["source"].shape[0]
                frames += 2 * batch["source"].shape[0]
            else:
                samples += batch["image"].shape[0]
                frames += batch["image"].shape[0]
        epochs += 1
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return {
        "samples_per_s": samples / elapsed,
        # per CPU-second of this process and its (finished) workers: what one free core would
        # deliver, much less sensitive than wall time to other jobs on a shared machine
        "samples_per_cpu_s": samples / cpu,
        "frames_per_s": frames / elapsed,
        "batches_per_s": batches / elapsed,
        "epochs": epochs,
        "batches": batches,
        "first_batch_s": first_batch / max(1, epochs),
        "seconds": elapsed,
    }


# --------------------------------------------------------------------------- reference steps


class AudioConditionedReference(nn.Module):
    """A conv audio encoder over mel windows and a GRU over exp/pose: an ExpFlow/GMEG-sized step."""

    def __init__(self, exp_dim: int, pose_dim: int, mel_channels: int, mel_bins: int, hidden: int = 256) -> None:
        super().__init__()
        self.audio = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, hidden),
        )
        self.motion = nn.GRU(exp_dim + pose_dim + hidden, hidden, num_layers=2, batch_first=True)
        self.out = nn.Linear(hidden, exp_dim + pose_dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        b, w = batch["mel"].shape[:2]
        mel = rearrange(batch["mel"], "b w c m -> (b w) 1 c m")
        audio = rearrange(self.audio(mel), "(b w) h -> b w h", b=b, w=w)  # (B, W, H)
        motion = torch.cat([batch["exp"], batch["pose"]], dim=-1)  # (B, W, E + P)
        hidden, _ = self.motion(torch.cat([motion, audio], dim=-1))  # (B, W, H)
        return (self.out(hidden) - motion).pow(2).mean()


class ConvAutoencoderReference(nn.Module):
    """4 strided convs down to 1/16 and 4 transposed convs up: a VQGAN-sized image step."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        down: list[nn.Module] = []
        up: list[nn.Module] = []
        for a, b in zip(channels[:-1], channels[1:]):
            down += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
        for a, b in zip(channels[:0:-1], channels[-2::-1]):
            up += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
        self.net = nn.Sequential(*down, *up[:-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.net(images) - images).abs().mean()


def time_step(loss_of: Callable[[], torch.Tensor], parameters: Any, seconds: float, device: torch.device) -> float:
    """Training steps per second (forward, backward, AdamW) over at least ``seconds``, after two warm-up steps."""
    optimizer = torch.optim.AdamW(list(parameters), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of().backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        step()
    sync()
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        step()
        steps += 1
        if steps % 10 == 0:
            sync()
    sync()
    return steps / (time.perf_counter() - start)


def reference_steps(
    dm: CoefficientDataModule, image_size: int, batch: int, seconds: float, device: torch.device
) -> dict[str, dict]:
    """Steps/s of the reference models on random batches of the DataModules' layout."""
    from flowvq.lightning_modules import EmotionClassifier

    dims, window = dm.dims, dm.window
    E, P, C, M = dims["exp_dim"], dims["pose_dim"], dm.mel_channels, dims["mel_bins"]
    coeff = {
        "exp": torch.randn(batch, window, E, device=device),
        "pose": torch.randn(batch, window, P, device=device),
        "mel": torch.randn(batch, window, C, M, device=device),
        "mask": torch.ones(batch, window, dtype=torch.bool, device=device),
        "emotion": torch.randint(0, 8, (batch,), device=device),
    }
    classifier = EmotionClassifier(exp_dim=E, pose_dim=P, num_emotions=dims["num_emotions"]).to(device)
    audio_model = AudioConditionedReference(E, P, C, M).to(device)
    images = torch.rand(batch, 3, image_size, image_size, device=device) * 2 - 1
    image_model = ConvAutoencoderReference().to(device)
    steps = {
        "EmotionClassifier": (
            lambda: nn.functional.cross_entropy(classifier(coeff["exp"], None, coeff["mask"])[0], coeff["emotion"]),
            classifier.parameters(),
            "coefficient",
        ),
        "audio-conditioned reference": (lambda: audio_model(coeff), audio_model.parameters(), "coefficient"),
        "conv autoencoder reference": (lambda: image_model(images), image_model.parameters(), "frame"),
    }
    return {
        name: {"steps_per_s": time_step(loss, params, seconds, device), "batch": batch, "consumes": kind}
        for name, (loss, params, kind) in steps.items()
    }


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# DataModule throughput",
        "",
        f"Dataset: {result['dataset']} (`{result['root']}`), {result['machine']}, load average "
        f"{result['load_average'][0]:.1f} at the end; command: `{result['command']}`",
        "",
        "## Train loaders",
        "",
        "| DataModule | settings | workers | samples/s | frames/s | batches/s | samples/CPU-s | epochs timed "
        "| first batch (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["loaders"]:
        lines.append(
            f"| {row['datamodule']} | {row['settings']} | {row['num_workers']} | {row['samples_per_s']:.0f} | "
            f"{row['frames_per_s']:.0f} | {row['batches_per_s']:.1f} | {row['samples_per_cpu_s']:.0f} | {row['epochs']} | "
            f"{row['first_batch_s']:.2f} |"
        )
    lines += [
        "",
        "Samples are windows (coefficients), pairs (frame pairs) or frames; frames/s counts valid window frames "
        "or decoded images. Workers start anew each epoch (the epoch number seeds the samples); "
        "'first batch' is that start-up per epoch, which dominates the short epochs of a tiny dataset. "
        "samples/CPU-s divides by the CPU time of the loader process and its workers: the rate per free core.",
        "",
        "## Against a training step",
        "",
        "| step | batch | steps/s | needed samples/s | DataModule | best loader samples/s | headroom |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in result["comparison"]:
        lines.append(
            f"| {row['step']} | {row['batch']} | {row['steps_per_s']:.1f} | {row['needed_samples_per_s']:.0f} | "
            f"{row['datamodule']} | {row['loader_samples_per_s']:.0f} (workers={row['num_workers']}) | "
            f"{row['headroom']:.2f}x |"
        )
    lines += [
        "",
        "Headroom = loader samples/s / (batch x steps/s); below 1 the step waits for data. "
        f"Steps are timed on {result['step_device']} with {torch.get_num_threads()} threads.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="dataset root (default: write SynthTalk tiny to a temp dir)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--seconds", type=float, default=4.0, help="time each loader for at least this long")
    parser.add_argument("--max-epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch (loaders and steps)")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=None, help="default: the card's frame_size")
    parser.add_argument("--step-seconds", type=float, default=3.0, help="time each reference step this long")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for the steps")
    parser.add_argument("--step-rate", action="append", default=[], help="NAME=STEPS_PER_S, replaces a timed step")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="flowvq-bench-") as tmp:
        root, dataset = args.root, "given"
        if root is None:
            root = Path(tmp) / "data"
            dataset = write_default_dataset(root, args.seed)
        coeff = CoefficientDataModule(root, window=args.window, batch_size=args.batch_size)
        card = coeff.card
        image_size = args.image_size or card.frame_size
        # small datasets hold fewer clips than a batch: draw several samples per clip
        per_clip = max(1, min(8, args.batch_size * 4 // max(1, card.splits["train"])))
        while args.batch_size % per_clip:
            per_clip -= 1
        setups: list[tuple[str, str, Callable[[int], Any]]] = [
            (
                "CoefficientDataModule",
                f"W={args.window}, audio_context=2, prev_frames=4, windows_per_clip={per_clip}",
                lambda w: CoefficientDataModule(
                    root, window=args.window, batch_size=args.batch_size, num_workers=w, windows_per_clip=per_clip
                ),
            ),
        ]
        if card.has_frames:
            setups += [
                (
                    "FramePairDataModule",
                    f"{image_size} px, pairs_per_clip={per_clip}",
                    lambda w: FramePairDataModule(
                        root, batch_size=args.batch_size, num_workers=w, image_size=image_size, pairs_per_clip=per_clip
                    ),
                ),
                (
                    "FrameDataModule",
                    f"{image_size} px, frames_per_clip={per_clip}, flip",
                    lambda w: FrameDataModule(
                        root,
                        batch_size=args.batch_size,
                        num_workers=w,
                        image_size=image_size,
                        frames_per_clip=per_clip,
                        flip=True,
                    ),
                ),
            ]
        loaders = []
        for name, settings, make in setups:
            for workers in args.workers:
                row = {"datamodule": name, "settings": settings, "num_workers": workers, "batch_size": args.batch_size}
                row.update(measure_loader(make(workers), args.seconds, args.max_epochs))
                print(
                    f"{name:24s} workers={workers}: {row['samples_per_s']:8.0f} samples/s {row['frames_per_s']:9.0f} frames/s"
                )
                loaders.append(row)

        device = torch.device(args.device)
        steps = reference_steps(coeff, image_size, args.batch_size, args.step_seconds, device)
        for item in args.step_rate:
            name, _, rate = item.partition("=")
            if name not in steps:
                raise SystemExit(f"--step-rate {item!r}: unknown step {name!r}; expected one of {sorted(steps)}")
            steps[name]["steps_per_s"] = float(rate)
            steps[name]["given"] = True
        comparison = []
        for step, info in steps.items():
            needed = info["batch"] * info["steps_per_s"]
            names = (
                ["CoefficientDataModule"]
                if info["consumes"] == "coefficient"
                else ["FramePairDataModule", "FrameDataModule"]
            )
            for name in names:
                rows = [r for r in loaders if r["datamodule"] == name]
                if not rows:
                    continue
                best = max(rows, key=lambda r: r["samples_per_s"])
                comparison.append(
                    {
                        "step": step,
                        "batch": info["batch"],
                        "steps_per_s": info["steps_per_s"],
                        "needed_samples_per_s": needed,
                        "datamodule": name,
                        "loader_samples_per_s": best["samples_per_s"],
                        "num_workers": best["num_workers"],
                        "headroom": best["samples_per_s"] / needed,
                    }
                )
        result = {
            "dataset": dataset,
            "root": str(args.root) if args.root else "<temp dir>",
            "card": {"name": card.name, "splits": card.splits, "frame_size": card.frame_size, "exp_dim": card.exp_dim},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            "step_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "load_average": os.getloadavg(),
            "command": " ".join(
                ["python benchmarks/datamodule_throughput.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "loaders": loaders,
            "steps": steps,
            "comparison": comparison,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "datamodule_throughput.json").write_text(json.dumps(result, indent=2))
    (args.out / "datamodule_throughput.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
