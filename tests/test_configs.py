"""Every YAML in configs/ parses and instantiates against its entry point; the CLI runs a fit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flowvq.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
#: LightningCLI configs; configs/pipeline/ holds pipeline YAMLs (stages + checkpoints), checked below.
CONFIGS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml") if "pipeline" not in p.relative_to(ROOT / "configs").parts
)
PIPELINES = sorted((ROOT / "configs" / "pipeline").glob("*.yaml"))


def config_id(path: Path) -> str:
    return str(path.relative_to(ROOT / "configs"))


def test_there_are_configs_for_both_scales():
    names = {config_id(p) for p in CONFIGS}
    assert "emotion_classifier.yaml" in names and "tiny/emotion_classifier.yaml" in names


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_config_instantiates(config, random_dataset, tmp_path, monkeypatch):
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer

    from flowvq.cli import FlowvqCLI

    monkeypatch.chdir(tmp_path)  # relative paths a config names (runs/, checkpoints) land here
    spec = yaml.safe_load(config.read_text())
    args = ["--config", str(config)]
    if "root" in spec.get("data", {}).get("init_args", {}):
        args += ["--data.init_args.root", str(random_dataset)]
    cli = FlowvqCLI(args=args, run=False)
    assert isinstance(cli.model, LightningModule)
    assert isinstance(cli.datamodule, LightningDataModule)
    assert isinstance(cli.trainer, Trainer)
    card = cli.datamodule.card
    for key, value in card.dims().items():  # sizes come from the dataset card, not the YAML
        if key in cli.model.hparams:
            assert cli.model.hparams[key] == value, key


@pytest.mark.parametrize("config", PIPELINES, ids=config_id)
def test_pipeline_config_names_known_stages(config, tmp_path, monkeypatch):
    """A pipeline YAML parses, each role names a stage class that fills it, and loading it without
    its checkpoints fails with the missing checkpoint named."""
    from flowvq.pipeline.pipeline import Pipeline, PipelineError, parse_config
    from flowvq.pipeline.stages import stage_class

    spec = yaml.safe_load(config.read_text())
    stages = parse_config(spec, str(config))
    assert "expression" in stages
    for role, stage in stages.items():
        assert stage_class(stage.get("kind"), stage.get("class_path")).ROLE == role
    monkeypatch.chdir(tmp_path)  # relative checkpoint paths resolve to nothing here
    with pytest.raises(PipelineError, match="does not exist"):
        Pipeline.from_config(spec, base=tmp_path)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == yaml.safe_load(config.read_text())["model"]["class_path"]


def test_fit_through_the_console_script(random_dataset, tmp_path):
    """`flowvq fit` end to end in a fresh process: one batch, a TensorBoard run and a checkpoint."""
    script = Path(sys.executable).parent / "flowvq"
    result = subprocess.run(
        [
            str(script),
            "fit",
            "--config",
            str(ROOT / "configs/tiny/emotion_classifier.yaml"),
            "--data.init_args.root",
            str(random_dataset),
            "--data.init_args.window",
            "8",
            "--data.init_args.batch_size",
            "4",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    checkpoints = list((tmp_path / "runs").rglob("*.ckpt"))
    assert events and checkpoints, f"no TensorBoard events or checkpoint under {tmp_path / 'runs'}"


def test_fit_without_data_says_what_to_run(tmp_path, capsys):
    with pytest.raises(Exception, match="flowvq synth"):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/tiny/emotion_classifier.yaml"),
                "--data.init_args.root",
                str(tmp_path / "missing"),
            ]
        )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_console_reports_bad_input_without_a_traceback(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    script = Path(sys.executable).parent / "flowvq"
    result = subprocess.run(
        [str(script), "synth", "--out", str(tmp_path / "taken")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "flowvq synth: error:" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "taken" / "file").read_text() == "keep me", "nothing is lost"
