"""``flowvq demo``: the suite's main job at CPU scale on the built-in SynthTalk dataset.

Writes SynthTalk (tiny preset) unless it is already there, trains each stage with its
``configs/tiny/`` config through the same LightningCLI that ``flowvq fit`` uses, scores the
held-out speakers, and prints where the TensorBoard runs are.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_DIR", "demo", "fit_stage"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
STAGES = ("flows", "image")


def _config(name: str) -> Path:
    path = CONFIG_DIR / "tiny" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: `flowvq demo` runs the configs of a flowvq checkout; "
            "install flowvq with `pip install -e .` from the repository"
        )
    return path


def fit_stage(name: str, data: Path, out: Path, extra: list[str] | None = None, test: bool = True) -> dict[str, Any]:
    """Fit ``configs/tiny/<name>.yaml`` on ``data``, logging under ``out``; test the best checkpoint.

    Returns the stage's summary: checkpoint, TensorBoard directory, test metrics, seconds.
    """
    from flowvq.cli import FlowvqCLI

    start = time.perf_counter()
    args = [
        "fit",
        "--config",
        str(_config(name)),
        "--data.init_args.root",
        str(data),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
        *(extra or []),
    ]
    with warnings.catch_warnings():  # the demo's own sys.argv is not meant for LightningCLI
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = FlowvqCLI(args=args)
    trainer = cli.trainer
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics: dict[str, float] = {}
    if test and cli.datamodule.card.splits.get("test"):
        results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)
        metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
    return {
        "stage": name,
        "checkpoint": best or (trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""),
        "tensorboard": trainer.logger.log_dir if trainer.logger else None,
        "test": metrics,
        "seconds": round(time.perf_counter() - start, 1),
    }


def render_grid(checkpoint: Path, data: Path, out: Path, count: int = 8, split: str = "test") -> Path:
    """PNG of VQIG frames: rows are source faces, target frames, and the VQIG's rendering of the
    target's coefficients from the source face (fixed pairs of ``split``)."""
    import numpy as np
    import torch
    from PIL import Image

    from flowvq.datamodules import FramePairDataModule
    from flowvq.lightning_modules.vqig import VQIG

    model = VQIG.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    datamodule = FramePairDataModule(data, batch_size=count, image_size=model.hparams.resolution)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()))
    rendered = [
        model.render(source, exp[None], pose[None])[0]
        for source, exp, pose in zip(batch["source"], batch["target_exp"], batch["target_pose"])
    ]
    rows = [batch["source"], batch["target"], torch.stack(rendered)]
    grid = torch.cat([torch.cat(list(row.float().clamp(-1, 1)), dim=2) for row in rows], dim=1)  # (3, 3H, nW)
    image = ((grid.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(out)
    return out


def demo(
    out: Path = Path("runs/demo"),
    data: Path = Path("data/synth"),
    seed: int = 0,
    fresh_data: bool = False,
    stages: list[str] | None = None,
    image_epochs: int = 5,
) -> list[dict[str, Any]]:
    """Run the whole suite at CPU scale on SynthTalk and print where to look.

    Args:
        out: where TensorBoard runs, checkpoints and the summary (``demo.json``) go.
        data: the SynthTalk root; written with the tiny preset unless a dataset is there.
        seed: seed of the synthetic dataset.
        fresh_data: rewrite the dataset even if one is there.
        stages: which groups to run after the emotion classifier (always first: the flows
            score their samples with it): ``flows`` (ExpFlow, PoseFlow), ``image``
            (VQGAN codebook, then VQIG on it; a few epochs each: the demo shows the path
            works, real quality needs a GPU or hours). Default: all.
        image_epochs: epochs of each image stage.
    """
    stages = list(STAGES if stages is None else stages)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown demo stages {unknown}: expected some of {', '.join(STAGES)}")
    from flowvq.data.card import CARD_NAME
    from flowvq.data.synth import synth

    out = Path(out)
    data = Path(data)
    if fresh_data or not (data / CARD_NAME).is_file():
        print(f"[demo] writing SynthTalk (tiny, seed {seed}) to {data}")
        synth(out=data, preset="tiny", seed=seed, overwrite=True)
    else:
        print(f"[demo] using the SynthTalk dataset at {data} (pass --fresh_data true to rewrite it)")

    summary = []
    classifier = fit_stage("emotion_classifier", data, out)
    summary.append(classifier)
    accuracy = classifier["test"].get("test/accuracy")
    if accuracy is not None:
        print(f"[demo] emotion classifier: held-out-speaker accuracy {accuracy:.3f} (chance 0.125)")

    if "flows" in stages:
        from flowvq.pipeline.flow_samples import plot_samples

        # ExpFlow's validation scores the emotion of its samples with the classifier just trained
        expflow = fit_stage(
            "expflow", data, out, ["--model.init_args.emotion_classifier", classifier["checkpoint"]], test=False
        )
        summary.append(expflow)
        summary.append(fit_stage("poseflow", data, out, test=False))
        picture = plot_samples(Path(expflow["checkpoint"]), data, out / "expflow_samples.png", ["happy", "sad"])
        expflow["samples_png"] = str(picture)
        print(f"[demo] ExpFlow samples for two emotions: {picture}")

    if "image" in stages:
        vqgan = fit_stage("vqgan", data, out, ["--trainer.max_epochs", str(image_epochs)], test=False)
        summary.append(vqgan)
        vqig = fit_stage(
            "vqig",
            data,
            out,
            ["--model.init_args.codebook_checkpoint", vqgan["checkpoint"], "--trainer.max_epochs", str(image_epochs)],
            test=False,
        )
        summary.append(vqig)
        picture = render_grid(Path(vqig["checkpoint"]), data, out / "vqig_frames.png")
        vqig["frames_png"] = str(picture)
        print(f"[demo] VQIG frames of held-out speakers (rows: source, target, rendered): {picture}")

    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"[demo] summary: {out / 'demo.json'}")
    for stage in summary:
        print(f"[demo] {stage['stage']}: checkpoint {stage['checkpoint']}, {stage['seconds']} s")
    print(f"[demo] TensorBoard: tensorboard --logdir {out}")
    return summary
