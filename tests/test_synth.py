"""SynthTalk: schema, ground-truth relationships, determinism, rendering, the command."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from flowvq.data.audio import frame_envelope
from flowvq.data.card import DatasetCard
from flowvq.data.schema import EMOTIONS, unpack_frame
from flowvq.data.shards import open_split
from flowvq.data.synth import (
    EXP_NAMES,
    LEAD_FRAMES,
    PRESETS,
    load_ground_truth,
    make_record,
    simulate_clip,
    synth,
    write_preview,
)
from flowvq.data.synth.motion import EMOTION_TEMPLATES, EXP_INDEX
from flowvq.data.synth.presets import ClipSpec, SynthPreset, make_speaker, plan_clips
from flowvq.data.synth.render import FaceRenderer, wrinkle_strengths

MICRO = SynthPreset("micro", {"train": 1, "val": 1, "test": 1}, 1, 1, 1, (1.5, 1.6), 32)


def _records(root: Path, split: str) -> list[dict]:
    return sorted(open_split(root, split), key=lambda r: r["clip_id"])


def _clip(emotion: int = 0, intensity: int = 0, seed: int = 5, frames: int = 40, size: int = 32) -> ClipSpec:
    speaker = make_speaker(0, 0, "train")
    return ClipSpec("c", speaker, "train", emotion, intensity, seed, frames, size, True)


def test_tiny_records_follow_the_card(synth_tiny_root: Path) -> None:
    card = DatasetCard.load(synth_tiny_root)
    assert card.exp_dim == 16 and card.pose_dim == 6 and card.exp_names == list(EXP_NAMES)
    assert card.exp_names[0] == "jaw_open"
    assert card.frame_size == PRESETS["tiny"].frame_size
    speakers = {split: set(names) for split, names in card.speakers.items()}
    assert len(speakers["test"]) >= 2 and len(speakers["val"]) >= 1
    assert not (speakers["train"] & speakers["test"]) and not (speakers["train"] & speakers["val"])
    extra = card.extra["synth"]
    assert extra["lead_frames"] == LEAD_FRAMES
    assert np.allclose(extra["emotion_templates"], EMOTION_TEMPLATES)
    for split in ("train", "val", "test"):
        records = _records(synth_tiny_root, split)  # each read is validated against the card
        assert len(records) == card.splits[split]
        assert {r["speaker"] for r in records} == speakers[split]
        if split != "val":
            assert {r["emotion"] for r in records} == set(range(len(EMOTIONS)))
        for record in records:
            size = card.frame_size
            assert len(record["frame_offsets"]) == len(record["exp"]) + 1
            assert Image.open(io.BytesIO(unpack_frame(record, 0))).size == (size, size)
            landmarks = record["landmarks"]
            assert landmarks.min() >= 0 and landmarks.max() <= size, record["clip_id"]


def test_ground_truth_decomposes_exp(synth_tiny_root: Path) -> None:
    truth = load_ground_truth(synth_tiny_root, "test")
    blink = EXP_INDEX["blink"]
    for record in _records(synth_tiny_root, "test"):
        gt = truth[record["clip_id"]]
        rebuilt = gt["speech"] + gt["emotion_offset"] + gt["random"]
        rebuilt[:, blink] += gt["blink"]
        np.testing.assert_allclose(record["exp"], rebuilt, atol=1e-5)
        np.testing.assert_allclose(gt["envelope"], frame_envelope(record["audio"], len(record["exp"])), atol=1e-6)


def test_jaw_open_follows_the_envelope_with_a_lead(synth_tiny_root: Path) -> None:
    lags = range(-3, 4)
    scores = np.zeros(len(lags))
    records = _records(synth_tiny_root, "train")
    for record in records:
        jaw = record["exp"][:, 0]
        envelope = frame_envelope(record["audio"], len(jaw))
        for k, lag in enumerate(lags):  # corr(jaw[t], envelope[t + lag])
            a, b = (jaw[: len(jaw) - lag], envelope[lag:]) if lag >= 0 else (jaw[-lag:], envelope[:lag])
            scores[k] += np.corrcoef(a, b)[0, 1] / len(records)
    assert list(lags)[int(np.argmax(scores))] == LEAD_FRAMES
    assert scores[list(lags).index(LEAD_FRAMES)] > 0.8
    assert scores[list(lags).index(0)] < scores[list(lags).index(LEAD_FRAMES)]


def test_emotions_are_separable_on_held_out_speakers(synth_tiny_root: Path) -> None:
    def means(split: str) -> tuple[np.ndarray, np.ndarray]:
        records = _records(synth_tiny_root, split)
        features = np.stack([r["exp"][:, 1:13].mean(0) for r in records])  # all but jaw and nuisance dims
        return features, np.array([r["emotion"] for r in records])

    train_x, train_y = means("train")
    test_x, test_y = means("test")
    centroids = np.stack([train_x[train_y == e].mean(0) for e in range(len(EMOTIONS))])
    predicted = np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (predicted == test_y).mean() >= 0.6  # chance is 1/8


def test_audio_carries_the_emotion() -> None:
    def voice(emotion: str) -> tuple[float, float]:
        spec = _clip(EMOTIONS.index(emotion), 2, seed=11, frames=100)
        sim = simulate_clip(spec)
        voiced = sim.truth["f0"] > 0
        return float(sim.truth["f0"][voiced].mean()), float(np.sqrt(np.mean(sim.audio.astype(np.float64) ** 2)))

    f0 = {name: voice(name)[0] for name in ("neutral", "angry", "sad", "surprised")}
    energy = {name: voice(name)[1] for name in ("neutral", "angry", "sad")}
    assert f0["surprised"] > 1.15 * f0["neutral"] > 1.15 * f0["sad"]
    assert energy["angry"] > 1.3 * energy["neutral"] > 1.3 * energy["sad"]


def test_records_are_deterministic_by_seed() -> None:
    first, again, other = make_record(_clip(seed=3)), make_record(_clip(seed=3)), make_record(_clip(seed=4))
    for name in ("exp", "pose", "mel", "audio", "landmarks", "frame_offsets"):
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name]) or name == "frame_offsets"
    assert first["frames"] == again["frames"] and first["frames"] != other["frames"]
    assert plan_clips(PRESETS["tiny"], 0, 64, True) == plan_clips(PRESETS["tiny"], 0, 64, True)
    assert plan_clips(PRESETS["tiny"], 0, 64, True) != plan_clips(PRESETS["tiny"], 1, 64, True)


def test_write_is_deterministic_by_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESETS, "micro", MICRO)
    roots = {}
    for name in ("a", "b"):
        roots[name] = tmp_path / name
        synth(roots[name], preset="micro", seed=0, frames=False)

    def content(root: Path) -> dict[str, bytes]:
        # litdata's index.json and the card carry timestamps: compare the data itself
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".bin", ".npz"))
        return {str(p.relative_to(root)): p.read_bytes() for p in files}

    assert content(roots["a"]) == content(roots["b"]) != {}
    assert load_ground_truth(roots["a"], "train").keys() == {
        c.clip_id for c in plan_clips(MICRO, 0, 32, False)["train"]
    }
    card = DatasetCard.load(roots["a"])
    assert card.frame_size == 0 and len(_records(roots["a"], "train")[0]["frames"]) == 0


def test_synth_refuses_non_empty_out_and_unknown_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESETS, "micro", MICRO)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        synth(tmp_path, preset="micro")
    with pytest.raises(ValueError, match="tiny, small, full"):
        synth(tmp_path / "new", preset="huge")
    with pytest.raises(ValueError, match="frame_size"):
        synth(tmp_path / "new", preset="micro", frame_size=1024)
    synth(tmp_path, preset="micro", frames=False, overwrite=True)
    assert (tmp_path / "dataset.json").is_file() and (tmp_path / "notes.txt").read_text() == "keep me"


def _neutral(frames: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((frames, len(EXP_NAMES))), np.tile([0, 0, 0, 0, 0, 1.0], (frames, 1))


def _polygon_mask(size: int, points: np.ndarray) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in points.tolist()], fill=1)
    return np.asarray(mask, dtype=bool)


def test_teeth_show_when_the_mouth_opens() -> None:
    size = 96
    renderer = FaceRenderer(make_speaker(0, 2, "train"), size)
    exp, pose = _neutral(6)
    exp[:, EXP_INDEX["jaw_open"]] = np.linspace(0, 1, 6)
    frames = np.stack([np.asarray(im) for im in renderer.render_clip(exp, pose)]).astype(int)
    landmarks = renderer.landmarks(exp, pose)
    bright = [
        ((frame.min(-1) > 170) & _polygon_mask(size, points[48:60])).sum() for frame, points in zip(frames, landmarks)
    ]
    assert bright[0] <= 2 and min(bright[-3:]) > 15  # closed: no teeth; open: teeth
    assert np.corrcoef(bright, exp[:, 0])[0, 1] > 0.8


def test_teeth_follow_jaw_open_in_the_dataset(synth_tiny_root: Path) -> None:
    record = max(_records(synth_tiny_root, "train"), key=lambda r: r["exp"][:, 0].std())
    bright = []
    for index, points in enumerate(record["landmarks"]):
        frame = np.asarray(Image.open(io.BytesIO(unpack_frame(record, index))).convert("RGB")).astype(int)
        bright.append(((frame.min(-1) > 170) & _polygon_mask(frame.shape[0], points[48:60])).sum())
    assert np.corrcoef(bright, record["exp"][:, 0])[0, 1] > 0.6


def test_wrinkles_appear_with_their_expressions() -> None:
    def strength(name: str, value: float) -> np.ndarray:
        exp = np.zeros(len(EXP_NAMES))
        exp[EXP_INDEX[name]] = value
        return wrinkle_strengths(exp, age=0.0)

    groups = ("forehead", "glabella", "nasolabial_left", "nasolabial_right", "crows_feet", "nose")
    causes = {
        "brow_raise": {"forehead"},
        "brow_lower": {"glabella"},
        "nose_wrinkle": {"nose"},
        "lip_asym": {"nasolabial_right"},
    }
    causes["smile"] = {"nasolabial_left", "nasolabial_right", "crows_feet"}
    for name, expected in causes.items():
        assert not strength(name, 0.0).any()
        assert {g for g, a in zip(groups, strength(name, 1.0)) if a > 0.5} == expected, name

    size = 96
    speaker = dataclasses.replace(make_speaker(0, 2, "train"), age=0.0)
    renderer = FaceRenderer(speaker, size)
    exp, pose = _neutral(1)
    exp[0, EXP_INDEX["brow_raise"]] = 1.0
    brows = renderer.landmarks(exp, pose)[0, 17:27]
    top, left, right = int(brows[:, 1].min()) - 2, int(brows[:, 0].min()) + 4, int(brows[:, 0].max()) - 4
    forehead = (slice(top - 10, top), slice(left, right))  # above the raised brows
    with_lines = np.asarray(renderer.render(exp[0], pose[0])).astype(float)[forehead].mean()
    without = np.asarray(renderer.render(exp[0], pose[0], wrinkles=False)).astype(float)[forehead].mean()
    assert with_lines < without - 3  # the forehead lines darken the forehead
    exp[0, EXP_INDEX["brow_raise"]] = 0.0
    calm = np.asarray(renderer.render(exp[0], pose[0])).astype(float)[forehead].mean()
    calm_without = np.asarray(renderer.render(exp[0], pose[0], wrinkles=False)).astype(float)[forehead].mean()
    assert abs(calm - calm_without) < 0.5  # no expression, no lines


def test_preview_grid(synth_tiny_root: Path, tmp_path: Path) -> None:
    path = write_preview(synth_tiny_root, tmp_path / "grid.png", split="test", columns=3)
    size = DatasetCard.load(synth_tiny_root).frame_size
    image = Image.open(path)
    assert image.height == len(EMOTIONS) * size and image.width == 90 + 3 * size
    with pytest.raises(ValueError, match="expected one of"):
        write_preview(synth_tiny_root, tmp_path / "x.png", speaker="nobody")


def test_faces_preset_plans_many_new_identities_of_eight_frames() -> None:
    plan = plan_clips(PRESETS["faces"], 0, 64, True)
    train = plan["train"]
    assert len(train) == 3000 and len({c.speaker.speaker_id for c in train}) == 3000
    assert {c.num_frames for clips in plan.values() for c in clips} == {8}
    assert {c.emotion for c in train} == set(range(len(EMOTIONS)))  # random emotions, all of them drawn
    assert {c.intensity for c in train if c.emotion} == {0, 1, 2}
    # no face of the codebook's pretraining set is a speaker of another preset (held-out ones included)
    others = {
        c.speaker.seed
        for name in ("tiny", "small", "full")
        for clips in plan_clips(PRESETS[name], 0, 64, True).values()
        for c in clips
    }
    assert not others & {c.speaker.seed for clips in plan.values() for c in clips}
    backgrounds = np.array([c.speaker.background for c in train])
    assert backgrounds.min() < 70 and backgrounds.max() > 190  # the colour range SynthTalk draws from


def test_faces_preset_writes_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    faces = dataclasses.replace(PRESETS["faces"], name="faces_micro", speakers={"train": 3, "val": 1, "test": 1})
    monkeypatch.setitem(PRESETS, "faces_micro", faces)
    card = synth(tmp_path, preset="faces_micro", seed=0, frame_size=32)
    records = _records(tmp_path, "train")
    assert card.frame_size == 32 and len(records) == 3
    for record in records:
        assert len(record["frame_offsets"]) - 1 == 8 and record["landmarks"].shape == (8, 68, 2)
        assert Image.open(io.BytesIO(unpack_frame(record, 7))).size == (32, 32)


def test_records_carry_blink_and_gaze_mirroring_the_exp_dims(synth_tiny_root: Path) -> None:
    card = DatasetCard.load(synth_tiny_root)
    assert card.fields == ["blink", "gaze"] and len(card.stats.gaze_mean) == 2 and len(card.stats.blink_std) == 1
    truth = load_ground_truth(synth_tiny_root, "test")
    for record in _records(synth_tiny_root, "test"):  # each read is validated, optional fields included
        frames = len(record["exp"])
        assert record["blink"].shape == (frames,) and record["gaze"].shape == (frames, 2)
        np.testing.assert_allclose(record["blink"], truth[record["clip_id"]]["blink"], atol=1e-6)
        # gaze is a fixed per-speaker linear map of the exp dims (x right; the image's y down is gaze's up)
        for dim, name, sign in ((0, "gaze_x", 1), (1, "gaze_y", -1)):
            assert sign * np.corrcoef(record["gaze"][:, dim], record["exp"][:, EXP_INDEX[name]])[0, 1] > 0.999


def test_gaze_field_is_where_the_iris_is_drawn() -> None:
    """Render a frontal face looking left, ahead, right, down and up, find the dark pupil in each
    eye and measure its offset from the eye corners in half eye widths: the record's gaze."""
    from flowvq.data.synth.face import gaze_field, speaker_shape

    size = 256
    speaker = make_speaker(0, 1, "train")
    renderer = FaceRenderer(speaker, size)
    exp, pose = _neutral(5)
    exp[:, EXP_INDEX["gaze_x"]] = [-1.5, 0.0, 1.5, 0.0, 0.0]
    exp[:, EXP_INDEX["gaze_y"]] = [0.0, 0.0, 0.0, 1.5, -1.5]
    frames = np.stack([np.asarray(im.convert("L")) for im in renderer.render_clip(exp, pose)]).astype(float)
    landmarks = renderer.landmarks(exp, pose)
    expected = gaze_field(speaker_shape(speaker.seed), exp)
    measured = []
    for frame, points in zip(frames, landmarks):
        offsets = []
        for eye in (slice(36, 42), slice(42, 48)):
            inside = _polygon_mask(size, points[eye])
            ys, xs = np.nonzero(inside & (frame < np.percentile(frame[inside], 15)))  # the pupil
            corners = points[eye][[0, 3]]
            offsets.append(
                (np.array([xs.mean(), ys.mean()]) - corners.mean(0)) / (np.linalg.norm(corners[1] - corners[0]) / 2)
            )
        measured.append(np.mean(offsets, 0) * [1, -1])  # y up
    measured = np.array(measured)
    # horizontally the drawn pupil moves as gaze says (from looking ahead: the glint biases both alike)
    np.testing.assert_allclose(measured[:3, 0] - measured[1, 0], expected[:3, 0] - expected[1, 0], atol=0.03)
    assert expected[0, 0] < -0.2 and expected[2, 0] > 0.2
    # vertically the lids hide part of the pupil, so only its direction is measurable: down, then up
    assert expected[3, 1] < expected[1, 1] < expected[4, 1]
    assert measured[3, 1] < measured[1, 1] < measured[4, 1]
