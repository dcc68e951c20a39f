"""Every model under real DDP, through the CLI a user runs: two gloo ranks on the CPU.

- every config in ``configs/tiny/`` fits for a few steps on two ranks (a new model is covered by
  adding its tiny config); the slow variant then runs ``flowvq test`` and ``flowvq predict`` on two
  ranks from the checkpoint it saved;
- a GAN step on two ranks equals a one-process step on the same global batch;
- a validation figure logged on two ranks equals the one-process figure on the same data.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = sorted((ROOT / "configs/tiny").glob("*.yaml"))
FLOWVQ = Path(sys.executable).parent / "flowvq"
GAN_WORKER = Path(__file__).with_name("ddp_gan_worker.py")


def clean_env() -> dict[str, str]:
    """The environment of a fresh shell: one thread per rank, no rank variables of a parent run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "GLOBAL_RANK", "LOCAL_RANK", "NODE_RANK", "LITDATA_POSIX_FAST", "MASTER_PORT"):
        env.pop(name, None)
    return {k: v for k, v in env.items() if not k.startswith(("SLURM_", "PL_"))}


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [str(FLOWVQ), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert run.returncode == 0, f"flowvq {' '.join(args[:3])} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    return run


def small_overrides(config: Path) -> list[str]:
    """Shrink a tiny config to a few steps on the random dataset (sizes only, never the model's design)."""
    spec = yaml.safe_load(config.read_text())
    data = spec["data"]["class_path"].rsplit(".", 1)[-1]
    model = spec["model"]["class_path"].rsplit(".", 1)[-1]
    args = {
        "CoefficientDataModule": ["--data.init_args.window", "8", "--data.init_args.windows_per_clip", "1"],
        "FrameDataModule": ["--data.init_args.frames_per_clip", "2"],
        "FramePairDataModule": ["--data.init_args.pairs_per_clip", "2"],
        "AudioVisualDataModule": ["--data.init_args.windows_per_clip", "2"],
    }[data]
    args += ["--data.init_args.batch_size", "2" if data == "CoefficientDataModule" else "4"]
    if model in ("VQGAN", "VQIG", "StyleUNetHead"):
        args += ["--model.init_args.disc_start", "1"]  # both optimizers step within the run
    if model == "StyleUNetHead":  # the config's SynthTalk speaker is not in the random dataset: every speaker
        args += ["--data.init_args.speaker", "null", "--model.init_args.log_video_frames", "4"]
    return args


@pytest.fixture(scope="module")
def tiny_codebook(named_random_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stage-1 checkpoint of configs/tiny/vqgan.yaml (one step, one process) for the VQIG config."""
    folder = tmp_path_factory.mktemp("tiny_codebook")
    config = ROOT / "configs/tiny/vqgan.yaml"
    run_cli(
        ["fit", "--config", str(config), "--data.init_args.root", str(named_random_dataset)]
        + small_overrides(config)
        + ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.logger", "false"],
        cwd=folder,
    )
    return folder / "runs/tiny_vqgan/checkpoints/last.ckpt"


def fit_on_two_ranks(config: Path, data: Path, codebook: Path, folder: Path) -> tuple[list[str], Path]:
    """``flowvq fit`` of a tiny config for one epoch on two gloo ranks; the CLI arguments it used and its last.ckpt."""
    common = ["--config", str(config), "--data.init_args.root", str(data)]
    common += small_overrides(config)
    common += ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    common += ["--trainer.logger.init_args.save_dir", str(folder / "runs")]
    if "codebook_checkpoint" in yaml.safe_load(config.read_text())["model"]["init_args"]:  # not in comments
        common += ["--model.init_args.codebook_checkpoint", str(codebook)]
    fit = run_cli(
        ["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1"]
        + ["--trainer.check_val_every_n_epoch", "1", "--trainer.log_every_n_steps", "1"],
        cwd=folder,
    )
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in fit.stdout + fit.stderr
    (checkpoint,) = folder.rglob("last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    # 12 train clips, 6 per rank, 2 per batch: 3 batches (the GANs step twice per batch once on)
    assert state["global_step"] >= 3 and state["epoch"] == 0, "the fit did not finish its epoch"
    return common, checkpoint


@pytest.mark.parametrize("config", TINY, ids=lambda p: p.stem)
def test_tiny_config_fits_on_two_ranks(config, named_random_dataset, tiny_codebook, tmp_path):
    fit_on_two_ranks(config, named_random_dataset, tiny_codebook, tmp_path)


@pytest.mark.slow  # three two-rank launches per config (about 45-60 s each on 2 cores): `pytest -m slow`
@pytest.mark.parametrize("config", TINY, ids=lambda p: p.stem)
def test_tiny_config_tests_and_predicts_on_two_ranks(config, named_random_dataset, tiny_codebook, tmp_path):
    common, checkpoint = fit_on_two_ranks(config, named_random_dataset, tiny_codebook, tmp_path)
    test = run_cli(["test", *common, "--ckpt_path", str(checkpoint), "--trainer.limit_test_batches", "1"], cwd=tmp_path)
    assert "test/" in test.stdout, test.stdout[-2000:]

    run_cli(["predict", *common, "--ckpt_path", str(checkpoint), "--trainer.limit_predict_batches", "1"], cwd=tmp_path)
    written = list((tmp_path / "runs").rglob("predictions/*.npz"))
    indexes = list((tmp_path / "runs").rglob("predictions/index.rank*.jsonl"))
    assert written, "flowvq predict wrote nothing under <log_dir>/predictions"
    assert {p.name for p in indexes} == {"index.rank0.jsonl", "index.rank1.jsonl"}, "both ranks write"
    if "Frame" in yaml.safe_load(config.read_text())["data"]["class_path"]:
        png = next((tmp_path / "runs").rglob("predictions/*.png"))
        assert png.stat().st_size > 0
    arrays = np.load(written[0])
    assert all(np.isfinite(arrays[k]).all() for k in arrays.files if arrays[k].dtype.kind == "f")


@pytest.mark.parametrize("model", ["vqgan", "vqig"])
def test_gan_step_on_two_ranks_equals_one_process_step(model, tmp_path):
    for devices in (2, 1):
        command = [sys.executable, str(GAN_WORKER), "--model", model, "--devices", str(devices)]
        command += ["--out", str(tmp_path / f"{devices}.pt")]
        run = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
    two, one = torch.load(tmp_path / "2.pt"), torch.load(tmp_path / "1.pt")
    rank1 = torch.load(tmp_path / "2.pt.rank1")
    assert two["world"] == 2 and one["world"] == 1
    # each optimizer stepped with the mean of the ranks' gradients: the global batch's gradient
    assert set(two["grads"]) == set(one["grads"]) and any("discriminator" in k for k in one["grads"])
    for part in ("loss.discriminator.", "autoencoder." if model == "vqgan" else "net."):
        names = [k for k in one["grads"] if k.startswith(part)]
        a = torch.cat([two["grads"][k].flatten() for k in names])
        b = torch.cat([one["grads"][k].flatten() for k in names])
        assert (a - b).norm() <= 1e-5 * b.norm(), f"{part}: gradients differ by {((a - b).norm() / b.norm()):.2e}"
    # and the ranks hold the same weights afterwards
    for name, value in two["params"].items():
        assert torch.equal(value, rank1["params"][name]), name
    # away from noise-level gradients (which Adam's first step turns into +-lr), the same update
    for name, grad in one["grads"].items():
        if grad.abs().max() > 1e-4:
            strong = grad.abs() > 1e-4
            diff = (two["params"][name] - one["params"][name])[strong].abs().max()
            assert diff < 1e-5, (name, float(diff))


def read_metrics(folder: Path) -> dict[str, float]:
    (path,) = folder.rglob("metrics.csv")
    values: dict[str, float] = {}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            values.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return values


def test_validation_figures_are_the_same_on_two_ranks_as_on_one(named_random_dataset, tmp_path):
    """ExpFlow's sampled-emotion accuracy (a torchmetrics mean) and NLL, logged by `flowvq validate`."""
    classifier_config = ROOT / "configs/tiny/emotion_classifier.yaml"
    data = ["--data.init_args.root", str(named_random_dataset), *small_overrides(classifier_config)]
    run_cli(
        ["fit", "--config", str(classifier_config), *data, "--trainer.max_steps", "2"]
        + ["--trainer.limit_val_batches", "0", "--trainer.logger", "false"],
        cwd=tmp_path,
    )
    classifier = next(tmp_path.rglob("*.ckpt"))
    config = ROOT / "configs/tiny/expflow.yaml"
    figures = {}
    for devices in (1, 2):
        folder = tmp_path / f"devices{devices}"
        run_cli(
            ["validate", "--config", str(config), *data, "--model.init_args.emotion_classifier", str(classifier)]
            + ["--model.init_args.val_sample_batches", "10", "--model.init_args.embedding_batches", "0"]
            # temperature 0: each window's samples are its component's location, the same in both runs
            + ["--model.init_args.val_temperature", "0"]
            + ["--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto"]
            + ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]
            + ["--trainer.logger.init_args.save_dir", str(folder), "--seed_everything", "0"],
            cwd=tmp_path,
        )
        figures[devices] = read_metrics(folder)
    for name in ("val/nll", "val/emotion_accuracy_samples"):
        assert name in figures[1] and name in figures[2], (name, figures)
    assert figures[2]["val/nll"] == pytest.approx(figures[1]["val/nll"], rel=1e-4)
    # every validation window is scored once in both runs: the reduced mean is the same number
    assert figures[2]["val/emotion_accuracy_samples"] == pytest.approx(figures[1]["val/emotion_accuracy_samples"])
