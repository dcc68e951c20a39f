"""`flowvq demo` end to end on SynthTalk tiny: every stage trains, a pipeline YAML, videos per emotion,
everything under --out; and the small pieces it is made of (configs lookup, the report helper)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flowvq.pipeline.demo import config_dir, demo


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected some of flows, image"):
        demo(out=tmp_path, data=tmp_path / "data", stages=["audio"])


def test_demo_does_not_import_the_command_line():
    code = "import sys, flowvq.pipeline.demo, flowvq.pipeline.train; assert 'flowvq.cli' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_configs_are_found_from_a_checkout_or_an_installed_prefix(tmp_path, monkeypatch):
    assert (config_dir() / "tiny" / "expflow.yaml").is_file()
    shipped = tmp_path / "share" / "flowvq" / "configs"
    (shipped / "tiny").mkdir(parents=True)
    monkeypatch.setenv("FLOWVQ_CONFIGS", str(shipped))
    assert config_dir() == shipped
    monkeypatch.setenv("FLOWVQ_CONFIGS", str(tmp_path / "nowhere"))
    assert config_dir() != tmp_path / "nowhere"  # falls back to the checkout


def test_report_writes_json_and_markdown_with_the_machine(tmp_path):
    from flowvq.report import write_report

    rows = [{"stage": "ExpFlow", "fps": 412.25, "real_time": True}, {"stage": "VQIG", "fps": 9.5, "real_time": False}]
    json_path, md_path = write_report("speed", rows, "Speed", ["one note"], out=tmp_path, command="python x.py")
    record = json.loads(json_path.read_text())
    assert record["rows"] == rows and record["command"] == "python x.py"
    assert record["machine"]["cpus"] >= 1 and record["machine"]["versions"]["torch"]
    text = md_path.read_text()
    assert text.startswith("# Speed") and "Command: `python x.py`" in text and "Machine: " in text
    assert "| stage | fps | real_time |" in text and "| ExpFlow | 412.25 | yes |" in text and "- one note" in text


@pytest.mark.slow
def test_demo_runs_the_whole_chain_under_its_out_folder(synth_tiny_root, tmp_path, monkeypatch):
    """About 2 minutes on one CPU thread: every stage briefly, videos per emotion, then `flowvq generate`
    with the pipeline it leaves."""
    from flowvq.data.video import probe

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "demo"
    summary = demo(out=out, data=synth_tiny_root, flow_epochs=2, image_epochs=1, evaluate=False)
    stages = [stage["stage"] for stage in summary]
    assert stages[:5] == ["emotion_classifier", "expflow", "poseflow", "vqgan", "vqig"] and "generate" in stages
    assert summary[0]["test"]["test/accuracy"] > 0.2  # 8 emotions: chance is 0.125
    for stage in summary[:5]:
        assert Path(stage["checkpoint"]).is_relative_to(out) and Path(stage["checkpoint"]).exists(), stage
    videos = next(stage for stage in summary if stage["stage"] == "generate")["videos"]
    assert len(videos) == 9  # one per emotion and all of them side by side
    assert all(probe(video).has_audio for video in videos)
    assert list(cwd.iterdir()) == []  # nothing outside --out (no ./checkpoints, no runs/tiny_*)
    from flowvq.cli import main

    main(["generate", "--pipeline", str(out / "pipeline.yaml"), "--image", str(out / "inputs" / "photo.png"),
          "--audio", str(out / "inputs" / "speech.wav"), "--out", str(tmp_path / "mine"), "--quiet", "true"])  # fmt: skip
    assert probe(tmp_path / "mine" / "sample_0.mp4").has_audio
