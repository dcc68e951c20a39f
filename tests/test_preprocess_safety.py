"""Preprocessing loses no clip and packs no bad one: the quality gate, the camera-frame pose,
reruns that change nothing, trims, and errors a user can act on.

One folder of real media (the astronaut photograph under known motion) is extracted once:
three speakers whose heads roll slowly around different mean angles (a motion the crop's
smoothing absorbs), an upside-down portrait, a clip where the face is there in half the
frames, a video without sound and a clip that starts with a second of black.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from media import FPS, faceless, known_motion, moving_face, speech_like

from flowvq.data.card import DatasetError
from flowvq.data.preprocess import preprocess_folder
from flowvq.data.preprocess.extract import load_cached
from flowvq.data.shards import open_split
from flowvq.data.video import write_video

SIZE, EXP_DIM = 64, 4
ROLL_OFFSETS = {"anna": 8.0, "ben": 0.0, "carl": -6.0}  # degrees: each speaker's mean roll
SLOW = 75  # frames of the slow clips: one roll period of 3 s, mostly absorbed by the crop's smoothing


def write(path: Path, frames: np.ndarray, seconds: float | None, seed: int = 0) -> Path:
    audio = speech_like(seconds, seed) if seconds else None
    return write_video(path, frames, FPS, audio=audio)


def build_tree(root: Path) -> dict:
    truth = {}
    for k, (speaker, offset) in enumerate(ROLL_OFFSETS.items()):
        motion = known_motion(SLOW, seed=k, roll_deg=12.0, shift=6.0, scale=0.05)
        motion.roll = motion.roll + np.deg2rad(offset)
        write(root / speaker / "take.mp4", moving_face(motion, 160), SLOW / FPS + 0.1, seed=k)
        truth[f"{speaker}_take"] = motion
    upright = moving_face(known_motion(30, seed=7), 160)
    write(root / "dora" / "upside_down.mp4", np.ascontiguousarray(upright[:, ::-1, ::-1]), 1.3)
    flicker = upright.copy()
    flicker[8:22] = faceless(30, 160)[8:22]  # a face in 16 of 30 frames, like a cat FaceMesh half believes in
    write(root / "emil" / "flicker.mp4", flicker, 1.3)
    write(root / "fred" / "silent.mp4", upright, None)
    late = np.concatenate([np.zeros((25, 160, 160, 3), np.uint8), moving_face(known_motion(35, seed=9), 160)])
    write(root / "gina" / "late.mp4", late, 60 / FPS + 0.1, seed=9)
    return truth


ARGS = dict(val_fraction=0.0, test_fraction=0.0, exp_dim=EXP_DIM, size=SIZE, max_gap=20, progress=False)


def records(root: Path) -> dict[str, dict]:
    return {r["clip_id"]: r for r in open_split(root, "train")}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("safety")
    truth = build_tree(base / "videos")
    out = base / "data"
    card = preprocess_folder(base / "videos", out, **ARGS)
    failures = {f["clip_id"]: f for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    return SimpleNamespace(root=base / "videos", out=out, card=card, truth=truth, failures=failures)


def test_pose_is_the_head_pose_in_the_camera_frame(tree):
    """Default (smoothed) crops: the roll in the shards is the head's roll in the video, mean
    included, not the part the crop did not follow (about half of it before)."""
    packed = records(tree.out)
    rolls = {c: packed[c]["pose"][:, 2].astype(np.float64) for c in tree.truth}
    mean_pose = np.mean(np.concatenate(list(rolls.values())))
    mean_true = np.mean(np.concatenate([m.roll for m in tree.truth.values()]))
    errors = {}
    for clip_id, motion in tree.truth.items():
        error = (rolls[clip_id] - mean_pose) - (motion.roll - mean_true)
        errors[clip_id] = float(np.degrees(np.sqrt(np.mean(error**2))))
        # translation follows the shift in the video, the crop having followed it too
        assert np.corrcoef(packed[clip_id]["pose"][:, 3], motion.shift[:, 0])[0, 1] > 0.9
    print(f"camera-frame roll RMS error (deg): {errors}")
    assert max(errors.values()) < 1.0, errors
    assert "camera" in tree.card.extra["pose_frame"]


def test_quality_gate_keeps_bad_faces_out_and_says_why(tree):
    assert tree.card.splits == {"train": 4}  # three slow clips and the trimmed one
    assert set(tree.card.speakers["train"]) == {"anna", "ben", "carl", "gina"}
    upside, flicker = tree.failures["dora_upside_down"], tree.failures["emil_flicker"]
    assert upside["reason"] == flicker["reason"] == "quality"
    assert upside["figures"]["detected"] >= 0.8 and upside["figures"]["confirmed"] < 0.2  # FaceMesh was sure
    assert "--min_confirmed" in upside["message"]
    assert flicker["figures"]["detected"] < 0.6 and "detected 0.5" in flicker["message"]
    assert upside["thresholds"]["min_confirmed"] == 0.5 and tree.card.extra["quality"]["rejected_clips"] == 2
    for clip_id in tree.truth:  # the good ones are confirmed and near the mean face
        meta = load_cached(tree.out / "cache" / "clips" / f"{clip_id}.npz", ("meta",))["meta"]
        assert meta["confirmed"] >= 0.8 and meta["ordered"] == 1.0 and meta["detected"] > 0.8
    print(f"quality of the packed clips: {tree.card.extra['quality']}")
    assert tree.card.extra["quality"]["packed_shape_error_max"] < 0.25
    # thresholds are options of the merge: no new extraction to change them
    loose = tree.out.parent / "loose"
    card = preprocess_folder(
        tree.root, loose, cache=tree.out / "cache", merge=True, min_detected=0.5, min_confirmed=0.0, **ARGS
    )
    assert card.splits == {"train": 6} and card.extra["quality"]["rejected_clips"] == 0
    with pytest.raises(DatasetError, match="every train clip failed the face-quality gate.*--min_detected"):
        preprocess_folder(tree.root, loose, cache=tree.out / "cache", merge=True, min_detected=1.01, **ARGS)
    with pytest.raises(DatasetError, match="every train clip is further than max_shape_error=0.001"):
        preprocess_folder(tree.root, loose, cache=tree.out / "cache", merge=True, max_shape_error=0.001, **ARGS)


def test_no_sound_and_leading_black(tree):
    assert tree.failures["fred_silent"]["reason"] == "no_audio"
    assert "no audio stream" in tree.failures["fred_silent"]["message"]
    late = records(tree.out)["gina_late"]
    meta = load_cached(tree.out / "cache" / "clips" / "gina_late.npz", ("meta",))["meta"]
    assert meta["trim"] == [25, 60] and meta["source_frames"] == 60 and len(late["exp"]) == 35
    # the audio is cut with the frames: the record's sound is the source's from 1 s on
    source = speech_like(60 / FPS + 0.1, 9)[16000 : 16000 + len(late["audio"])]
    assert len(late["audio"]) == 35 * 640
    assert np.corrcoef(late["audio"].astype(np.float64), source)[0, 1] > 0.9
    assert tree.card.extra["trimmed_clips"] == 1


def test_a_rerun_leaves_a_finished_dataset_alone_and_packing_ignores_workers(tree, capsys):
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tree.out.rglob("*") if p.is_file()}
    card = preprocess_folder(tree.root, tree.out, **ARGS)
    assert card.splits == tree.card.splits and "finished dataset" in capsys.readouterr().out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tree.out.rglob("*") if p.is_file()} == files
    # packing the same cache with two workers gives byte-identical chunks and index
    again = tree.out.parent / "two_workers"
    preprocess_folder(tree.root, again, cache=tree.out / "cache", merge=True, workers=2, **ARGS)
    chunks = sorted(p.name for p in (tree.out / "train").glob("*.bin"))
    assert chunks == sorted(p.name for p in (again / "train").glob("*.bin"))
    for name in chunks:
        assert (again / "train" / name).read_bytes() == (tree.out / "train" / name).read_bytes(), name

    def index(root: Path) -> dict:  # litdata stamps each write (updated_at, for stream caches)
        content = json.loads((root / "train" / "index.json").read_text())
        del content["updated_at"]
        return content

    assert index(again) == index(tree.out)
    # --overwrite packs again, to the same bytes
    preprocess_folder(tree.root, tree.out, overwrite=True, **ARGS)
    for name in chunks:
        assert (tree.out / "train" / name).read_bytes() == files[tree.out / "train" / name][1], name


def test_out_naming_a_file_is_one_error_line(tmp_path, monkeypatch, capsys):
    from flowvq.cli import main

    target = tmp_path / "taken.txt"
    target.write_text("not a dataset")
    (tmp_path / "v").mkdir()
    write(tmp_path / "v" / "a.mp4", np.zeros((3, 32, 32, 3), np.uint8), None)
    with pytest.raises(DatasetError, match="is a file: give a folder"):
        preprocess_folder(tmp_path / "v", target, progress=False)
    monkeypatch.setattr(
        sys, "argv", ["flowvq", "preprocess", "folder", "--root", str(tmp_path / "v"), "--out", str(target)]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowvq preprocess folder: error: --out") and len(err.splitlines()) == 1


def _help(command: list[str], capsys) -> str:
    from flowvq.cli import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


def test_error_hints_name_flags_the_cli_accepts(tmp_path, capsys):
    import re

    from flowvq.data.face import ExpressionBasis
    from flowvq.data.preprocess.extract import ExtractConfig
    from flowvq.data.preprocess.layouts import ClipSpec, MediaRef
    from flowvq.data.preprocess.merge import merge_cache
    from flowvq.data.preprocess.runner import select_shard

    messages = []
    with pytest.raises(ValueError) as error:
        ExpressionBasis.fit(np.zeros((3, 4, 3)), np.zeros((4, 3)), {}, exp_dim=8)
    messages.append(str(error.value))
    with pytest.raises(ValueError) as error:
        select_shard([], 2, 5)
    messages.append(str(error.value))
    spec = ClipSpec("x", "s", "train", MediaRef(str(tmp_path / "x.mp4")))
    with pytest.raises(DatasetError) as error:
        merge_cache(tmp_path / "cache", tmp_path / "out", "n", ExtractConfig(), specs=[spec])
    messages.append(str(error.value))
    flags = {flag for message in messages for flag in re.findall(r"--\w[\w-]*", message)}
    assert flags >= {"--exp_dim", "--shard_index", "--num_shards", "--allow_missing"}
    usage = _help(["preprocess", "mead"], capsys)
    for flag in flags:
        assert re.search(rf"{flag}\b", usage), (
            f"{flag} is named in an error but `flowvq preprocess mead` has no such flag"
        )


def test_folder_help_names_the_labels_columns(capsys):
    usage = _help(["preprocess", "folder"], capsys)
    for column in ("path", "speaker", "emotion", "intensity (0..2)", "split", "audio"):
        assert column in usage


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_main_process_ends_the_workers_quietly(tree, tmp_path, how):
    out = tmp_path / "data"
    script = (
        "import sys; from pathlib import Path; from flowvq.data.preprocess import preprocess_folder; "
        f"preprocess_folder(Path(sys.argv[1]), Path(sys.argv[2]), workers=2, **{ARGS!r})"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tree.root), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 90
    while not list((out / "cache" / "clips").glob("*.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(process.pid)
    assert len(workers) >= 2, "the run should have its worker processes by now"
    process.send_signal(how)
    stdout, stderr = process.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "worker processes outlived the main process"
    time.sleep(0.5)  # anything an orphaned worker would print
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]
    if how == signal.SIGTERM:
        assert process.returncode == 143 and "run the same command again" in stdout
