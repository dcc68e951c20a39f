"""Dataset layouts: MEAD (folders and tars), LRS3, HDTF, a labelled folder; speaker splits; sharding."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from flowvq.data.preprocess.layouts import (
    LayoutError,
    assign_splits,
    check_unique_ids,
    scan_folder,
    scan_hdtf,
    scan_lrs3,
    scan_mead,
)
from flowvq.data.preprocess.runner import select_shard
from flowvq.data.schema import EMOTIONS


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def mead_speaker(root: Path, speaker: str, clips: list[tuple[str, int, str]], views=("front", "left_30")) -> None:
    for emotion, level, name in clips:
        for view in views:
            touch(
                root / speaker / "video" / view / emotion / f"level_{level}" / f"{name}.mp4",
                f"{speaker}{view}".encode(),
            )
        touch(root / speaker / "audio" / emotion / f"level_{level}" / f"{name}.m4a", f"{speaker}{name}".encode())


def test_mead_folders_and_tars(tmp_path):
    mead_speaker(tmp_path, "M003", [("angry", 3, "001"), ("neutral", 1, "002")])
    mead_speaker(tmp_path, "W011", [("surprised", 2, "017")])
    mead_speaker(tmp_path, "M012", [("happy", 1, "001")])
    for kind in ("video", "audio"):  # M012 as released: unextracted tars
        with tarfile.open(tmp_path / "M012" / f"{kind}.tar", "w") as tar:
            tar.add(tmp_path / "M012" / kind, arcname=kind)
        for path in sorted((tmp_path / "M012" / kind).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (tmp_path / "M012" / kind).rmdir()
    specs = scan_mead(tmp_path, val_speakers=["W011"])
    assert [s.clip_id for s in specs] == [
        "M003_front_angry_3_001",
        "M003_front_neutral_1_002",
        "M012_front_happy_1_001",
        "W011_front_surprised_2_017",
    ]
    by_id = {s.clip_id: s for s in specs}
    angry = by_id["M003_front_angry_3_001"]
    assert (angry.emotion, angry.intensity, angry.split) == (EMOTIONS.index("angry"), 2, "test")
    assert angry.audio.path.endswith("M003/audio/angry/level_3/001.m4a")
    assert by_id["W011_front_surprised_2_017"].split == "val"
    tarred = by_id["M012_front_happy_1_001"]
    assert tarred.split == "train" and tarred.video.member is not None
    assert tarred.video.open().read() == b"M012front" and tarred.audio.open().read() == b"M012001"
    left = scan_mead(tmp_path, view="left_30", test_speakers=["W011"], val_speakers=[])
    assert {s.split for s in left if s.speaker == "W011"} == {"test"} and len(left) == 4
    assert [s.clip_id for s in scan_mead(tmp_path, emotions=["Neutral"])] == ["M003_front_neutral_1_002"]


def test_mead_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        scan_mead(tmp_path / "nowhere")
    with pytest.raises(LayoutError, match="no MEAD speakers"):
        scan_mead(tmp_path)
    mead_speaker(tmp_path, "M003", [("angry", 1, "001")], views=("front",))
    with pytest.raises(LayoutError, match="views found: \\['front'\\]"):
        scan_mead(tmp_path, view="down")
    touch(tmp_path / "M005" / "video" / "front" / "bored" / "level_1" / "001.mp4")
    with pytest.raises(LayoutError, match="unknown emotion 'bored'"):
        scan_mead(tmp_path)


def test_lrs3_splits_by_id(tmp_path):
    for subset, ids in (
        ("pretrain", ["aaaaaaaaaaa", "bbbbbbbbbbb"]),
        ("trainval", ["ccccccccccc"]),
        ("test", ["ddddddddddd"]),
    ):
        for video_id in ids:
            for clip in ("00001", "00002"):
                touch(tmp_path / subset / video_id / f"{clip}.mp4")
                touch(tmp_path / subset / video_id / f"{clip}.txt", b"Text: HELLO\nConf: 5\n")
    specs = scan_lrs3(tmp_path, val_fraction=0.34)
    assert len(specs) == 8 and all(s.emotion == -1 and s.intensity == -1 for s in specs)
    splits = {s.speaker: s.split for s in specs}
    assert splits["ddddddddddd"] == "test"
    assert sorted(v for k, v in splits.items() if k != "ddddddddddd") == ["train", "train", "val"]
    assert len({(s.speaker, s.split) for s in specs}) == 4  # never one id in two splits
    assert len(scan_lrs3(tmp_path, subsets=["test"])) == 2
    with pytest.raises(LayoutError, match="pass --subsets"):
        scan_lrs3(tmp_path, subsets=["nope"])


def test_hdtf_speakers_from_names(tmp_path):
    for name in ("WDA_BarackObama_000", "WDA_BarackObama_001", "RD_Radio1_000", "WRA_AnnaSmith_000", "WRA_Bob_003"):
        touch(tmp_path / f"{name}.mp4")
    specs = scan_hdtf(tmp_path, val_fraction=0.25, test_fraction=0.25)
    speakers = {s.speaker for s in specs}
    assert speakers == {"WDA_BarackObama", "RD_Radio1", "WRA_AnnaSmith", "WRA_Bob"}
    obama = {s.split for s in specs if s.speaker == "WDA_BarackObama"}
    assert len(obama) == 1
    assert sorted(s.split for s in specs if s.speaker != "WDA_BarackObama").count("train") >= 1


def test_folder_labels(tmp_path):
    touch(tmp_path / "v" / "anna" / "a.mp4")
    touch(tmp_path / "v" / "anna" / "b.mp4")
    touch(tmp_path / "v" / "solo.avi")
    labels = touch(tmp_path / "labels.csv", b"path,speaker,emotion,intensity\nanna/a.mp4,,happy,1\nanna/b.mp4,,5,\n")
    specs = scan_folder(tmp_path / "v", labels)
    assert [(s.clip_id, s.speaker, s.emotion, s.intensity) for s in specs] == [
        ("anna_a", "anna", 5, 1),
        ("anna_b", "anna", 5, -1),
    ]
    skipped: list[str] = []
    with pytest.warns(UserWarning, match="1 of 3 videos .* have no row in .* e.g. 'solo.avi'"):
        scan_folder(tmp_path / "v", labels, unlabelled=skipped)
    assert skipped == ["solo.avi"]
    unlabelled = scan_folder(tmp_path / "v")
    assert [(s.clip_id, s.speaker, s.emotion) for s in unlabelled] == [
        ("anna_a", "anna", -1),
        ("anna_b", "anna", -1),
        ("solo", "solo", -1),
    ]
    bad = touch(tmp_path / "bad.csv", b"file,emotion\n")
    with pytest.raises(LayoutError, match="needs a header with a 'path' column"):
        scan_folder(tmp_path / "v", bad)
    wrong = touch(tmp_path / "wrong.csv", b"path,emotion\nanna/a.mp4,bored\n")
    with pytest.raises(LayoutError, match="row 'anna/a.mp4': unknown emotion 'bored'"):
        scan_folder(tmp_path / "v", wrong)
    split = touch(tmp_path / "split.csv", b"path,split\nanna/a.mp4,train\nanna/b.mp4,test\n")
    with pytest.raises(LayoutError, match="splits are by speaker"):
        scan_folder(tmp_path / "v", split)


def test_assign_splits_is_by_speaker_and_seeded():
    speakers = [f"s{i:02d}" for i in range(20)]
    split = assign_splits(speakers, test_speakers=["s00", "s01"], val_fraction=0.1, seed=3)
    assert split["s00"] == split["s01"] == "test"
    assert sum(v == "val" for v in split.values()) == 2 and sum(v == "train" for v in split.values()) == 16
    assert split == assign_splits(list(reversed(speakers)), ["s00", "s01"], None, 0.1, seed=3)
    assert assign_splits(speakers, (), None, 0.1, test_fraction=0.2, seed=0) != assign_splits(
        speakers, (), None, 0.1, 0.2, seed=1
    )


def test_shards_partition_the_clips(tmp_path):
    for k in range(7):
        touch(tmp_path / f"spk{k % 3}" / f"clip{k}.mp4")
    specs = scan_folder(tmp_path)
    shards = [select_shard(list(reversed(specs)), 3, i) for i in range(3)]
    ids = [s.clip_id for shard in shards for s in shard]
    assert sorted(ids) == sorted(s.clip_id for s in specs) and len(set(ids)) == 7
    with pytest.raises(ValueError, match="--shard_index 3 must be in 0..2"):
        select_shard(specs, 3, 3)


def test_two_videos_with_one_clip_id_stop_the_scan(tmp_path):
    """a/b_c.mp4 and a_b/c.mp4 both make clip a_b_c: one would be lost, the other packed twice."""
    touch(tmp_path / "a" / "b_c.mp4")
    touch(tmp_path / "a_b" / "c.mp4")
    touch(tmp_path / "d" / "e.mp4")
    with pytest.raises(LayoutError, match=r"clip id 'a_b_c': '.*a/b_c.mp4' and '.*a_b/c.mp4'.*rename or move one"):
        scan_folder(tmp_path)
    hdtf = tmp_path / "hdtf"
    touch(hdtf / "WDA_Anna_000.mp4")
    touch(hdtf / "WDA_Anna_000.avi")  # same name, two containers
    with pytest.raises(LayoutError, match="clip id 'WDA_Anna_000'"):
        scan_hdtf(hdtf)
    specs = [*scan_folder(tmp_path / "d"), *scan_folder(tmp_path / "d")]
    with pytest.raises(LayoutError, match="clip id 'e'"):
        check_unique_ids(specs)


def test_hdtf_refuses_a_tree_that_is_not_hdtf(tmp_path):
    """A MEAD tree given to the HDTF reader used to make one speaker '001' across every split."""
    mead_speaker(tmp_path, "M003", [("angry", 1, "001"), ("happy", 1, "002")], views=("front",))
    mead_speaker(tmp_path, "W011", [("angry", 1, "001")], views=("front",))
    with pytest.raises(
        LayoutError, match="not named like HDTF's .*This looks like a MEAD tree: use `flowvq preprocess mead`"
    ):
        scan_hdtf(tmp_path)
    touch(tmp_path / "plain" / "interview.mp4")
    with pytest.raises(LayoutError, match="'interview.mp4'.*flowvq preprocess folder"):
        scan_hdtf(tmp_path / "plain")


def test_too_few_speakers_for_a_val_split_warn():
    with pytest.warns(UserWarning, match=r"no val split: val_fraction=0.1 of 2 speaker\(s\) \(a, b\)"):
        split = assign_splits(["a", "b"], val_fraction=0.1)
    assert set(split.values()) == {"train"}
    with pytest.warns(UserWarning, match="no test split"):
        assign_splits(["a", "b"], val_fraction=0.0, test_fraction=0.1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assign_splits(["a", "b", "c"], val_fraction=0.1)  # one val speaker: no warning
        assign_splits(["a", "b"], val_fraction=0.0)  # none asked for
