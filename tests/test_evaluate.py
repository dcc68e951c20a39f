"""`flowvq evaluate`: the reference rows on SynthTalk, the evaluation networks' columns, the files, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from flowvq.data.card import DatasetCard
from flowvq.pipeline.evaluate import GROUND_TRUTH, SOURCE_COPY, evaluate, source_clips


def save_untrained(model, path: Path) -> Path:
    """A Lightning checkpoint of a freshly built model (what `flowvq fit` saves, without the fit)."""
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def networks(synth_tiny_root, tmp_path_factory) -> dict[str, Path]:
    from flowvq.lightning_modules.frame_emotion_classifier import FrameEmotionClassifier
    from flowvq.lightning_modules.syncnet import SyncNet

    dims = DatasetCard.load(synth_tiny_root).dims()
    folder = tmp_path_factory.mktemp("eval_networks")
    syncnet = SyncNet(mel_bins=dims["mel_bins"], mel_per_frame=dims["mel_per_frame"], crop_size=16, channels=(8,))
    classifier = FrameEmotionClassifier(num_emotions=dims["num_emotions"], input_size=32, channels=(8,))
    return {
        "syncnet": save_untrained(syncnet, folder / "syncnet.ckpt"),
        "emotion_classifier": save_untrained(classifier, folder / "classifier.ckpt"),
    }


def test_source_is_a_neutral_clip_of_the_same_speaker():
    records = [
        {"clip_id": "A_happy", "speaker": "A", "emotion": 5},
        {"clip_id": "A_neutral", "speaker": "A", "emotion": 0},
        {"clip_id": "A_sad", "speaker": "A", "emotion": 6},
        {"clip_id": "B_sad", "speaker": "B", "emotion": 6},
    ]
    chosen = source_clips(records)
    assert chosen == {"A_happy": "A_neutral", "A_neutral": "A_happy", "A_sad": "A_neutral", "B_sad": "B_sad"}
    assert source_clips(records, "first_frame")["A_sad"] == "A_sad"


def test_reference_rows_on_synthtalk(synth_tiny_root, networks, tmp_path):
    out = tmp_path / "eval"
    table = evaluate(None, synth_tiny_root, "test", out, limit=2, progress=False, samples=1, **networks)
    truth, copy = table.rows[GROUND_TRUTH], table.rows[SOURCE_COPY]
    # the real video against itself: the ceiling of the full-reference metrics
    assert math.isinf(truth["psnr"]) and truth["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert math.isfinite(copy["psnr"]) and copy["ssim"] < 1.0
    # a still source face does not follow the mouth: further from the record's landmarks than the real video
    assert truth["m_lmd"] < copy["m_lmd"]
    for row in (truth, copy):
        assert math.isfinite(row["lse_d"]) and row["lse_c"] >= 0 and 0 <= row["acc_emo"] <= 1
        assert row["lpips"].startswith("not computed") and row["fid"].startswith("not computed")
    written = json.loads((out / "evaluate.json").read_text())
    assert set(written["rows"]) == {GROUND_TRUTH, SOURCE_COPY} and written["counts"][GROUND_TRUTH]["clips"] == 2
    markdown = (out / "evaluate.md").read_text()
    assert "reported on MEAD" in markdown and "figures on other data" in markdown and "Protocol:" in markdown
    assert len((out / "clips.jsonl").read_text().splitlines()) == 2
    with pytest.raises(FileExistsError, match="--overwrite true"):
        evaluate(None, synth_tiny_root, "test", out, limit=1, progress=False)


def test_bad_input_gets_a_clear_error(synth_tiny_root, make_random_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"unknown split 'held_out'.*has splits \['test', 'train', 'val'\]"):
        evaluate(None, synth_tiny_root, "held_out", tmp_path / "a", progress=False)
    no_frames = make_random_dataset("no_frames_eval", frame_size=0, clip_frames={"train": [20], "test": [20]})
    with pytest.raises(ValueError, match="has no frames"):
        evaluate(None, no_frames, "test", tmp_path / "b", progress=False)
    with pytest.raises(FileNotFoundError, match="--syncnet"):
        evaluate(None, synth_tiny_root, "test", tmp_path / "c", syncnet=tmp_path / "missing.ckpt", progress=False)


def test_the_cli_command_reaches_evaluate(synth_tiny_root, tmp_path):
    from flowvq.cli import main

    # from the console this ValueError prints as one line with exit code 2 (tests/test_configs.py)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        main(["evaluate", "--data", str(synth_tiny_root), "--split", "dev", "--out", str(tmp_path / "e")])


def test_a_tiny_pipeline_gets_its_row(named_random_dataset, tmp_path, monkeypatch):
    """A real pipeline (every stage fitted for two steps) scored with two samples per clip (15 s on 2 cores)."""
    from test_generate import fit_stages, pipeline_yaml

    monkeypatch.chdir(tmp_path)
    stages = fit_stages(named_random_dataset, tmp_path / "stages")
    config = pipeline_yaml(tmp_path / "pipeline.yaml", stages)
    table = evaluate(config, named_random_dataset, "test", None, limit=2, samples=2, progress=False, name="tiny")
    row = table.rows["tiny"]
    assert math.isfinite(row["psnr"]) and 0 < row["ssim"] < 1
    assert row["diversity"] > 0, "two samples of a flow differ"
    assert table.counts["tiny"]["clips"] == 2 and set(table.rows) == {"tiny", SOURCE_COPY, GROUND_TRUTH}
