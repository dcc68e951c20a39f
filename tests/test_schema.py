"""The clip record schema, the dataset card and the litdata shard round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flowvq.data.audio import frame_envelope, log_mel
from flowvq.data.card import AudioFeatures, DatasetCard, DatasetError, check_dims
from flowvq.data.schema import EMOTIONS, RecordError, emotion_index, pack_frames, unpack_frame, validate_record
from flowvq.data.shards import open_split, write_dataset


def make_record(item: tuple[int, str]) -> dict:
    """A valid record with E=5, P=6, K=4, M=8 and three fake JPEG frames per clip."""
    index, split = item
    frames = 20 + index
    rng = np.random.default_rng(index)
    blob, offsets = pack_frames([bytes([index, f]) * 7 for f in range(frames)])
    return {
        "clip_id": f"clip{index:03d}",
        "speaker": f"spk{index % 3}",
        "split": split,
        "emotion": index % len(EMOTIONS),
        "intensity": index % 3,
        "exp": rng.normal(size=(frames, 5)).astype(np.float32),
        "pose": rng.normal(size=(frames, 6)).astype(np.float32),
        "mel": rng.normal(size=(frames, 4, 8)).astype(np.float32),
        "audio": np.zeros(frames * 640, np.int16),
        "landmarks": rng.uniform(0, 64, size=(frames, 68, 2)).astype(np.float32),
        "frames": blob,
        "frame_offsets": offsets,
    }


def test_valid_record_passes():
    record = make_record((1, "train"))
    assert validate_record(record, exp_dim=5, pose_dim=6) is record


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("exp", np.zeros((21, 5), np.float64), "dtype float32"),
        ("pose", np.zeros((20, 6), np.float32), "dimension T is 20"),
        ("landmarks", np.zeros((21, 67, 2), np.float32), "shape"),
        ("emotion", 9, "not in -1..7"),
        ("audio", np.zeros(100, np.int16), "audio must cover the video"),
        ("exp", np.full((21, 5), np.nan, np.float32), "NaN"),
        ("frame_offsets", np.arange(5, dtype=np.int64), "T \\+ 1"),
    ],
)
def test_bad_record_names_clip_and_field(field, value, message):
    record = make_record((1, "train"))
    record[field] = value
    with pytest.raises(RecordError, match=message) as error:
        validate_record(record)
    assert "clip001" in str(error.value) and repr(field) in str(error.value)


def test_card_dims_are_enforced():
    with pytest.raises(RecordError, match="dimension E is 5 but other fields \\(or the card\\) give 64"):
        validate_record(make_record((1, "train")), exp_dim=64)


def test_emotion_names():
    assert emotion_index("Surprise") == EMOTIONS.index("surprised")
    with pytest.raises(ValueError, match="expected one of neutral, angry"):
        emotion_index("joyful")


def test_frames_pack_and_unpack():
    record = make_record((2, "train"))
    assert unpack_frame(record, 3) == bytes([2, 3]) * 7
    record["frames"], record["frame_offsets"] = pack_frames([])
    validate_record(record)
    with pytest.raises(RecordError, match="no frames"):
        unpack_frame(record, 0)


def test_shards_round_trip_and_card(tmp_path):
    card = DatasetCard(name="unit", exp_dim=5, pose_dim=6, coefficient_source="synthetic", frame_size=64)
    card.audio = AudioFeatures(n_mels=8)
    items = {"train": [(i, "train") for i in range(12)], "val": [(i, "val") for i in range(12, 15)]}
    write_dataset(tmp_path, items, make_record, card, seed=3)

    loaded = DatasetCard.load(tmp_path)
    assert loaded.splits == {"train": 12, "val": 3}
    assert len(loaded.stats.exp_mean) == 5 and len(loaded.stats.mel_std) == 8
    shards = open_split(tmp_path, "train")
    records = [shards[i] for i in range(len(shards))]
    assert sorted(r["clip_id"] for r in records) == [f"clip{i:03d}" for i in range(12)]
    original = make_record((4, "train"))
    stored = next(r for r in records if r["clip_id"] == "clip004")
    np.testing.assert_array_equal(stored["exp"], original["exp"])
    assert unpack_frame(stored, 2) == unpack_frame(original, 2)
    # the train statistics are those of all train frames
    exp = np.concatenate([make_record((i, "train"))["exp"] for i in range(12)])
    np.testing.assert_allclose(loaded.stats.exp_mean, exp.mean(0), atol=1e-5)


def test_write_refuses_bad_record(tmp_path):
    card = DatasetCard(name="unit", exp_dim=7, pose_dim=6, coefficient_source="synthetic")
    card.audio = AudioFeatures(n_mels=8)
    with pytest.raises(Exception, match="clip000.*'exp'.*dimension E"):
        write_dataset(tmp_path, {"train": [(0, "train")]}, make_record, card)


def test_missing_card_says_what_to_run(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json.*is missing.*flowvq synth"):
        DatasetCard.load(tmp_path)
    with pytest.raises(DatasetError, match="does not exist.*flowvq synth"):
        DatasetCard.load(tmp_path / "nowhere")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not a valid dataset card"):
        DatasetCard.load(tmp_path)


def test_read_refuses_shards_that_disagree_with_card(tmp_path):
    card = DatasetCard(name="unit", exp_dim=5, pose_dim=6, coefficient_source="synthetic")
    card.audio = AudioFeatures(n_mels=8)
    write_dataset(tmp_path, {"train": [(i, "train") for i in range(3)]}, make_record, card)
    data = json.loads((tmp_path / "dataset.json").read_text())
    data["exp_dim"] = 9
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match="'exp'.*re-create the dataset"):
        open_split(tmp_path, "train")[0]


def test_check_dims_message():
    card = DatasetCard(name="synth", exp_dim=16, pose_dim=6, coefficient_source="synthetic")
    check_dims({"exp_dim": 16, "pose_dim": 6}, card, "model")
    with pytest.raises(DatasetError, match="exp_dim=64 but the dataset has 16"):
        check_dims({"exp_dim": 64}, card, "ExpFlow checkpoint", "data/synth")


def test_audio_features_align_with_frames():
    sample_rate, frames = 16000, 10
    t = np.arange(frames * 640) / sample_rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) * (t > 0.2)  # silent for the first 5 frames
    mel = log_mel(tone, frames, AudioFeatures())
    assert mel.shape == (frames, 4, 80) and mel.dtype == np.float32
    assert mel[7].max() > mel[1].max() + 5  # a 440 Hz tone lights a few bins once it starts
    envelope = frame_envelope(tone, frames)
    assert envelope[:5].max() < 1e-6 and envelope[6:].min() > 0.3


def with_eyes(item: tuple[int, str]) -> dict:
    """:func:`make_record` with the optional blink and gaze fields."""
    record = make_record(item)
    rng = np.random.default_rng(100 + item[0])
    frames = len(record["exp"])
    record["blink"] = rng.uniform(0, 1, frames).astype(np.float32)
    record["gaze"] = rng.normal(0, 0.2, (frames, 2)).astype(np.float32)
    return record


def test_optional_blink_and_gaze_round_trip(tmp_path):
    card = DatasetCard(name="eyes", exp_dim=5, pose_dim=6, coefficient_source="synthetic", fields=["blink", "gaze"])
    card.audio = AudioFeatures(n_mels=8)
    write_dataset(tmp_path, {"train": [(i, "train") for i in range(6)]}, with_eyes, card)
    loaded = DatasetCard.load(tmp_path)
    assert loaded.fields == ["blink", "gaze"]
    stored = {r["clip_id"]: r for r in open_split(tmp_path, "train")}
    for i in range(6):
        original = with_eyes((i, "train"))
        np.testing.assert_array_equal(stored[original["clip_id"]]["gaze"], original["gaze"])
        np.testing.assert_array_equal(stored[original["clip_id"]]["blink"], original["blink"])
    gaze = np.concatenate([with_eyes((i, "train"))["gaze"] for i in range(6)])
    np.testing.assert_allclose(loaded.stats.gaze_mean, gaze.mean(0), atol=1e-5)
    np.testing.assert_allclose(loaded.stats.gaze_std, gaze.std(0), atol=1e-5)
    assert len(loaded.stats.blink_mean) == 1


@pytest.mark.parametrize(
    ("change", "fields", "message"),
    [
        (lambda r: r.update(gaze=np.zeros((len(r["exp"]), 3), np.float32)), None, "'gaze'.*shape"),
        (lambda r: r.update(gaze=np.zeros((3, 2), np.float32)), None, "'gaze'.*dimension T is 3"),
        (lambda r: r.update(blink=np.full(len(r["exp"]), 1.5, np.float32)), None, "'blink'.*\\[0, 1\\]"),
        (lambda r: r.pop("gaze"), ["blink", "gaze"], "'gaze'.*missing.*card lists it"),
        (lambda r: None, ["blink"], "'gaze'.*present but the dataset card lists only"),
    ],
)
def test_bad_optional_fields_are_named(change, fields, message):
    record = with_eyes((1, "train"))
    change(record)
    with pytest.raises(RecordError, match=message):
        validate_record(record, fields=fields)


def test_cards_without_fields_read_and_models_needing_them_are_told_what_to_run(tmp_path):
    from flowvq.data.card import require_fields

    card = DatasetCard(name="old", exp_dim=5, pose_dim=6, coefficient_source="synthetic")
    data = card.to_dict()
    del data["fields"]  # a card written before the optional fields existed
    del data["stats"]
    old = DatasetCard.from_dict(data)
    assert old.fields == []
    with pytest.raises(DatasetError, match="needs the record field\\(s\\) \\['gaze'\\].*re-run `flowvq synth`"):
        require_fields(old, ["gaze"], "motion flow")
    deep3d = DatasetCard(name="d3d", exp_dim=64, pose_dim=6, coefficient_source="deep3dfacerecon")
    with pytest.raises(DatasetError, match="\\['blink', 'gaze'\\].*Deep3DFaceRecon imports carry neither"):
        require_fields(deep3d, ["blink", "gaze"], "motion flow")
    require_fields(
        DatasetCard(name="new", exp_dim=5, pose_dim=6, coefficient_source="x", fields=["gaze"]), ["gaze"], "m"
    )
