"""Preprocessing on real media: a MEAD-shaped tree of the astronaut photograph under known motion."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from media import FPS, build_mead_tree, corrupt, faceless, known_motion, moving_face, speech_like
from PIL import Image

from flowvq.data.card import DatasetError
from flowvq.data.preprocess import preprocess_folder, preprocess_mead
from flowvq.data.schema import EMOTIONS, unpack_frame
from flowvq.data.shards import open_split
from flowvq.data.video import write_video

SPEAKERS = {
    "M001": [("neutral", 1), ("happy", 2)],
    "W002": [("neutral", 1), ("angry", 3)],  # shipped as video.tar / audio.tar
    "M003": [("neutral", 1), ("sad", 1)],  # a default MEAD test speaker
    "W010": [("neutral", 1)],
}
FRAMES, SIZE, EXP_DIM = 25, 128, 8
SPLIT_OF = {"M001": "train", "W002": "train", "M003": "test", "W010": "val"}


def records(root: Path) -> dict[str, dict]:
    out = {}
    for split in ("train", "val", "test"):
        if (root / split / "index.json").is_file():
            for record in open_split(root, split):
                out[record["clip_id"]] = record
    return out


@pytest.fixture(scope="module")
def mead(tmp_path_factory):
    """The tree, and one uninterrupted run over it (fixed crop, so all head motion is in the pose)."""
    base = tmp_path_factory.mktemp("mead")
    truth = build_mead_tree(base / "MEAD", SPEAKERS, FRAMES, size=160, tar_speakers=("W002",))
    out = base / "data"
    card = preprocess_mead(
        base / "MEAD", out, val_speakers=["W010"], exp_dim=EXP_DIM, size=SIZE, crop_smoothing=None, progress=False
    )
    return SimpleNamespace(root=base / "MEAD", out=out, card=card, truth=truth, records=records(out))


def test_labels_splits_and_lengths(mead):
    card = mead.card
    assert card.coefficient_source == "mediapipe-pca"
    assert (card.exp_dim, card.pose_dim, card.frame_size) == (EXP_DIM, 6, SIZE)
    assert card.splits == {"train": 4, "val": 1, "test": 2}
    assert card.speakers == {"train": ["M001", "W002"], "val": ["W010"], "test": ["M003"]}
    assert len(card.stats.exp_mean) == EXP_DIM and len(card.stats.pose_mean) == 6
    assert set(mead.records) == set(mead.truth)
    for clip_id, record in mead.records.items():
        speaker, _, emotion, level, _ = clip_id.split("_")
        assert record["speaker"] == speaker and record["split"] == SPLIT_OF[speaker]
        assert record["emotion"] == EMOTIONS.index(emotion) and record["intensity"] == int(level) - 1
        assert record["exp"].shape == (FRAMES, EXP_DIM) and record["pose"].shape == (FRAMES, 6)
        assert record["mel"].shape == (FRAMES, 4, 80)
        assert record["audio"].shape == (FRAMES * 640,) and np.abs(record["audio"]).max() > 1000  # the .m4a's speech
        image = Image.open(io.BytesIO(unpack_frame(record, FRAMES - 1)))
        assert image.size == (SIZE, SIZE)
        landmarks = record["landmarks"]
        assert landmarks.shape == (FRAMES, 68, 2)
        # the crop is fixed here, so the moving face may touch its edges; it is centred across
        assert landmarks.min() > -0.05 * SIZE and landmarks.max() < 1.05 * SIZE
        assert abs(landmarks[..., 0].mean() - SIZE / 2) < 0.1 * SIZE
        # iBUG order: brows above eyes above nose tip above mouth above chin; left eye left of the right one
        heights = [landmarks[:, part, 1].mean(1) for part in (slice(17, 27), slice(36, 48), [30], slice(48, 68), [8])]
        assert all((upper < lower).all() for upper, lower in zip(heights[:-1], heights[1:]))
        assert (landmarks[:, 36:42, 0].mean(1) < landmarks[:, 42:48, 0].mean(1)).all()


def test_pose_follows_the_known_motion(mead):
    errors = []
    for clip_id, record in mead.records.items():
        motion, pose = mead.truth[clip_id], record["pose"].astype(np.float64)
        roll = pose[:, 2] - pose[:, 2].mean()
        error = np.degrees(np.sqrt(np.mean((roll - (motion.roll - motion.roll.mean())) ** 2)))
        errors.append(error)
        assert error < 1.0, (
            f"{clip_id}: roll RMS error {error:.2f} deg over a {np.degrees(np.ptp(motion.roll)):.0f} deg range"
        )
        # the photograph does not turn in depth: yaw and pitch stay put
        assert np.degrees(pose[:, :2].std(0)).max() < 2.0
        scale = pose[:, 5] / pose[:, 5].mean()
        assert np.abs(scale - motion.scale / motion.scale.mean()).max() < 0.05
        for axis in (0, 1):  # tx, ty follow the shift (the crop is fixed, unrotated up to its mean roll)
            assert np.corrcoef(pose[:, 3 + axis], motion.shift[:, axis])[0, 1] > 0.9
    print(f"roll RMS error per clip (deg): {np.round(errors, 3).tolist()}, mean {np.mean(errors):.3f}")


def test_expression_basis_is_saved_and_fitted_on_train(mead):
    from flowvq.data.face import ExpressionBasis

    basis = ExpressionBasis.load(mead.out / "mediapipe_pca.npz")
    assert basis.exp_dim == EXP_DIM and basis.reference.shape == (478, 3)
    assert sorted(basis.neutral) == sorted(SPEAKERS)
    assert mead.card.extra["pca_frames"] == 4 * FRAMES  # the train clips' frames only
    assert 0 < mead.card.extra["explained_variance_ratio"] <= 1


def test_blink_and_gaze_come_from_the_eyes_and_ignore_head_motion(mead):
    """FaceMesh's eyelids and irises give every record blink and gaze; the photograph's eyes do not
    move while the head rolls, shifts and scales, so neither does gaze, and it never blinks."""
    assert mead.card.fields == ["blink", "gaze"]
    assert len(mead.card.stats.blink_mean) == 1 and len(mead.card.stats.gaze_mean) == 2
    for clip_id, record in mead.records.items():
        assert record["blink"].shape == (FRAMES,) and record["gaze"].shape == (FRAMES, 2)
        assert record["blink"].max() < 0.3, clip_id
        assert record["gaze"].std(0).max() < 0.05, (clip_id, record["gaze"].std(0))
        assert np.abs(record["gaze"]).max() < 0.3  # the astronaut looks at the camera


def test_coefficient_datamodule_reads_the_shards(mead):
    from flowvq.datamodules.coefficients import CoefficientDataModule

    module = CoefficientDataModule(mead.out, window=16, batch_size=2, prev_frames=2)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["exp"].shape == (2, 16, EXP_DIM) and batch["pose"].shape == (2, 16, 6)
    assert np.isfinite(batch["exp"].numpy()).all()


def test_killed_and_sharded_runs_equal_an_uninterrupted_one(mead, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(mead.out / "cache", cache)
    clips = sorted((cache / "clips").glob("*.npz"))
    for path in clips[3:]:  # a run killed after three clips ...
        path.unlink()
    (cache / "clips" / f".{clips[3].name}.123.tmp").write_bytes(b"partial")  # ... mid-write
    out = tmp_path / "data"
    arguments = dict(
        val_speakers=["W010"], exp_dim=EXP_DIM, size=SIZE, crop_smoothing=None, cache=cache, progress=False
    )
    with pytest.raises(DatasetError, match="4 of 7 clips are neither extracted nor failed"):
        preprocess_mead(mead.root, out, merge=True, **arguments)
    summaries = [preprocess_mead(mead.root, out, num_shards=2, shard_index=i, **arguments) for i in (0, 1)]
    assert sum(s.extracted for s in summaries) == 4 and sum(s.done_before for s in summaries) == 3
    assert not (out / "dataset.json").exists()  # shards only extract
    card = preprocess_mead(mead.root, out, merge=True, **arguments)
    assert card.stats == mead.card.stats
    resumed = records(out)
    assert set(resumed) == set(mead.records)
    for clip_id, record in resumed.items():
        reference = mead.records[clip_id]
        for field in ("exp", "pose", "landmarks", "mel", "audio", "frame_offsets"):
            np.testing.assert_array_equal(record[field], reference[field], err_msg=f"{clip_id} {field}")
        assert record["frames"] == reference["frames"]


@pytest.mark.slow  # a fresh interpreter's imports; the fast version is the test above
def test_a_run_killed_with_sigkill_resumes(mead, tmp_path):
    """A real kill: the extraction process dies mid-run (SIGKILL, no cleanup); the re-run finishes it."""
    out = tmp_path / "data"
    arguments = dict(val_speakers=["W010"], exp_dim=EXP_DIM, size=SIZE, crop_smoothing=None, progress=False)
    script = (
        "import sys; from pathlib import Path; from flowvq.data.preprocess import preprocess_mead; "
        f"preprocess_mead(Path(sys.argv[1]), Path(sys.argv[2]), **{arguments!r})"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(mead.root), str(out)], stderr=subprocess.DEVNULL)
    clips = out / "cache" / "clips"
    deadline = time.monotonic() + 120
    while not list(clips.glob("*.npz")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(clips.glob("*.npz")))
    assert 1 <= done < len(mead.truth), f"the kill should land mid-run ({done} of {len(mead.truth)} clips done)"
    assert not (out / "dataset.json").exists()
    card = preprocess_mead(mead.root, out, **arguments)
    assert card.stats == mead.card.stats
    resumed = records(out)
    assert set(resumed) == set(mead.records)
    for clip_id, record in resumed.items():
        np.testing.assert_array_equal(record["exp"], mead.records[clip_id]["exp"], err_msg=clip_id)
        np.testing.assert_array_equal(record["pose"], mead.records[clip_id]["pose"], err_msg=clip_id)
        assert record["frames"] == mead.records[clip_id]["frames"]


def test_failures_are_recorded_and_the_run_goes_on(tmp_path):
    root = tmp_path / "MEAD"
    truth = build_mead_tree(root, {"M001": [("neutral", 1), ("happy", 1)], "M003": [("neutral", 1)]}, FRAMES, size=128)
    video, audio = root / "M001" / "video" / "front", root / "M001" / "audio"
    corrupt(video / "sad" / "level_1" / "001.mp4")
    write_video(video / "fear" / "level_1" / "001.mp4", faceless(FRAMES, 128), FPS)
    write_video(video / "disgusted" / "level_1" / "001.mp4", moving_face(known_motion(FRAMES), 128), FPS)
    from flowvq.data.video import write_audio

    for emotion, seconds in (("sad", 1.1), ("fear", 1.1), ("disgusted", 0.3)):  # disgusted: audio far too short
        write_audio(audio / emotion / "level_1" / "001.m4a", speech_like(seconds))
    out = tmp_path / "data"
    card = preprocess_mead(root, out, val_speakers=[], exp_dim=4, size=96, frames=False, workers=2, progress=False)
    assert card.splits == {"train": 2, "test": 1} and card.frame_size == 0
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    reasons = {f["clip_id"]: f["reason"] for f in failures}
    assert reasons == {
        "M001_front_sad_1_001": "unreadable",
        "M001_front_fear_1_001": "no_face",
        "M001_front_disgusted_1_001": "short_audio",
    }
    assert all(f["message"] for f in failures) and card.extra["failed_clips"] == 3
    for clip_id, record in records(out).items():
        assert len(record["frame_offsets"]) == 0 and record["frames"] == b""
        # the pose is the head's in the video frame, whatever the smoothed crop did
        roll = record["pose"][:, 2]
        error = np.degrees(
            np.sqrt(np.mean((roll - roll.mean() - truth[clip_id].roll + truth[clip_id].roll.mean()) ** 2))
        )
        assert error < 1.0, f"{clip_id}: roll RMS error {error:.2f} deg"
        # the smoothed crop follows the face; it lags a little behind this fast motion (a full
        # turn of +-12 degrees, +-10% scale in one second), so the chin may graze the bottom edge
        inside = ((record["landmarks"] >= 0) & (record["landmarks"] < 96)).all(-1)
        assert inside.mean() > 0.99 and record["landmarks"].min() > -5 and record["landmarks"].max() < 101
    # a re-run skips what is done and what failed, and packs the same dataset
    again = preprocess_mead(root, tmp_path / "again", val_speakers=[], exp_dim=4, size=96, frames=False,
                            cache=out / "cache", progress=False)  # fmt: skip
    assert again.stats == card.stats


def test_folder_with_labels_and_sound_in_the_video(tmp_path):
    root = tmp_path / "videos"
    for k, speaker in enumerate(["anna", "anna", "ben", "carl"]):
        frames = moving_face(known_motion(20, seed=k), 128)
        write_video(root / speaker / f"take{k}.mp4", frames, 30.0, audio=speech_like(20 / 30 + 0.05, seed=k))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,emotion,intensity,split\nanna/take0.mp4,happy,2,train\nanna/take1.mp4,sad,0,train\n"
        "ben/take2.mp4,neutral,0,train\ncarl/take3.mp4,3,1,test\n"
    )
    (root / "dan").mkdir()
    (root / "dan" / "outtake.mp4").write_bytes(b"no row in the CSV: skipped, never read")
    out = tmp_path / "data"
    with pytest.warns(UserWarning, match="1 of 5 videos .* no row"):
        card = preprocess_folder(root, out, labels=labels, exp_dim=4, size=96, frames=False, progress=False)
    assert card.splits == {"train": 3, "test": 1} and card.extra["videos_without_labels"] == 1
    clips = records(out)
    assert clips["carl_take3"]["emotion"] == EMOTIONS.index("disgusted") and clips["carl_take3"]["intensity"] == 1
    assert clips["anna_take0"]["speaker"] == "anna" and clips["anna_take0"]["intensity"] == 2
    # 20 frames at 30 fps -> round(20 * 25 / 30) = 17 frames at 25 fps, sound from the video's own track
    assert all(len(r["exp"]) == 17 and np.abs(r["audio"]).max() > 1000 for r in clips.values())
