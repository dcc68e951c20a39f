"""Figures of long sampled sequences (flowvq.metrics.long_sequence) and the held-out audio they use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowvq.metrics.long_sequence import (
    autocorrelation,
    clamp_fraction,
    drift_profile,
    event_rate,
    frame_variation,
    sequence_report,
    tail_fraction,
)
from flowvq.pipeline.flow_samples import concatenated


def test_drift_profile_shows_a_runaway_and_not_a_steady_sequence():
    t = np.arange(96)
    steady = np.zeros((2, 96, 4)) + 1.0  # RMS distance 1 from a zero mean, throughout
    runaway = np.zeros((2, 96, 4)) + (t / 32.0)[None, :, None]  # climbs by one unit per window
    assert drift_profile(steady, np.zeros(4)) == pytest.approx([1.0, 1.0, 1.0])
    profile = drift_profile(runaway, np.zeros(4))
    assert profile[0] < 0.6 and profile[2] > 2.4 and np.all(np.diff(profile) > 0)


def test_tails_clamps_and_frame_changes_are_counted_exactly():
    x = torch.zeros(1, 10, 2)
    x[0, 3, 0] = 6.0  # one value beyond 5 std
    x[0, 4, 1] = -10.0  # one at the clamp
    assert tail_fraction(x) == pytest.approx(2 / 20)
    assert clamp_fraction(x, 10.0) == pytest.approx(1 / 20)
    assert clamp_fraction(x, None) == 0.0
    assert frame_variation(torch.arange(5.0).reshape(5, 1)) == pytest.approx(1.0)


def test_autocorrelation_and_blink_rate_of_known_signals():
    t = np.arange(1000)
    slow = np.sin(2 * np.pi * t / 200)[:, None]  # lag 10 is 1/20 of the period
    noise = np.random.default_rng(0).standard_normal((1000, 1))
    assert autocorrelation(slow, 10)[0] == pytest.approx(np.cos(2 * np.pi * 10 / 200), abs=0.02)
    assert abs(autocorrelation(noise, 10)[0]) < 0.1
    blinks = np.zeros(250)
    blinks[[20, 21, 100, 180, 181, 182]] = 1.0  # three blinks in 10 s
    assert event_rate(blinks, 0.5, fps=25) == pytest.approx(0.3)


def test_sequence_report_is_judged_against_the_truths_own_figures():
    truth = np.random.default_rng(1).standard_normal((96, 3)) * 0.5
    report = sequence_report(truth[None].repeat(2, 0), truth, clip=10.0)
    assert report["drift_first"] == pytest.approx(report["truth_profile"][0])
    assert report["drift_growth"] == pytest.approx(report["truth_profile"][-1] / report["truth_profile"][0])
    assert report["tail_fraction"] == report["truth_tail_fraction"] == 0.0


def _clip(frames: int, emotion: int, intensity: int, value: float) -> dict:
    return {
        "exp": torch.full((frames, 2), value),
        "pose": torch.zeros(frames, 3),
        "mel": torch.zeros(frames, 4, 5),
        "energy": torch.zeros(frames),
        "emotion": emotion,
        "intensity": intensity,
    }


def test_concatenated_joins_clips_of_the_emotion_to_the_length():
    clips = [_clip(30, 5, 0, 1.0), _clip(40, 6, 2, 2.0), _clip(20, 5, 2, 3.0)]
    joined = concatenated(clips, 100, emotion=5)
    assert joined["exp"].shape == (100, 2) and joined["mel"].shape == (100, 4, 5)
    assert set(joined["exp"][:, 0].tolist()) == {1.0, 3.0}, "only the happy clips"
    assert joined["exp"][0, 0] == 3.0 and joined["intensity"] == 2, "strongest intensity first"
    assert joined["emotion_matched"]
    other = concatenated(clips, 10, emotion=0)  # no neutral clip: all clips, and it says so
    assert not other["emotion_matched"] and other["exp"].shape == (10, 2)
    with pytest.raises(ValueError, match="empty"):
        concatenated([], 10)
