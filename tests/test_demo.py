"""`flowvq demo` end to end on SynthTalk tiny: every stage trains, writes its checkpoint and its picture."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from flowvq.pipeline.demo import demo


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected some of flows, image"):
        demo(out=tmp_path, data=tmp_path / "data", stages=["audio"])


@pytest.mark.slow
def test_demo_runs_every_stage(synth_tiny_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints named relative to the working directory land here
    summary = demo(out=tmp_path / "runs", data=synth_tiny_root, image_epochs=1)
    assert [stage["stage"] for stage in summary] == ["emotion_classifier", "expflow", "poseflow", "vqgan", "vqig"]
    assert summary[0]["test"]["test/accuracy"] > 0.5  # 8 emotions: chance is 0.125
    for stage in summary:
        assert stage["checkpoint"] and (tmp_path / stage["checkpoint"]).exists(), stage
    for key in ("samples_png", "frames_png"):
        path = next(stage[key] for stage in summary if key in stage)
        assert Image.open(path).size[0] > 0
    assert json.loads((tmp_path / "runs" / "demo.json").read_text()) == summary
