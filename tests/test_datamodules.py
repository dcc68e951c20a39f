"""DataModules over clip shards: batch layout, alignment, normalisation, sampling, errors."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image

from flowvq.data.audio import frame_envelope
from flowvq.data.card import DatasetCard, DatasetError
from flowvq.data.schema import RecordError, unpack_frame
from flowvq.data.shards import open_split
from flowvq.datamodules import CoefficientDataModule, FrameDataModule, FramePairDataModule
from flowvq.datamodules.base import IBUG_MIRROR, SILENCE_LOG_MEL, Normalizer, collate_samples, flip_landmarks

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def records(random_dataset: Path) -> dict[str, dict]:
    """Every raw record of the random dataset, by clip id."""
    out = {}
    for split in SPLITS:
        shards = open_split(random_dataset, split)
        for index in range(len(shards)):
            record = shards[index]
            out[record["clip_id"]] = record
    return out


def batches(loader) -> list[dict]:
    return list(loader)


def clip_order(loader) -> list[tuple[str, int]]:
    return [(clip, int(start)) for batch in loader for clip, start in zip(batch["clip_id"], batch["start"])]


# --------------------------------------------------------------------------- batch layout


@pytest.mark.parametrize("split", SPLITS)
def test_coefficient_batch_layout(random_dataset: Path, split: str) -> None:
    dm = CoefficientDataModule(random_dataset, window=32, audio_context=2, prev_frames=4, batch_size=4)
    dm.setup()
    card = DatasetCard.load(random_dataset)
    assert dm.dims == card.dims()
    all_batches = batches(dm.loader(split))
    assert all_batches, f"no {split} batch"
    batch = all_batches[0]
    E, P, K, M = card.exp_dim, card.pose_dim, card.audio.mel_per_frame, card.audio.n_mels
    expected = {
        "exp": ((4, 32, E), torch.float32),
        "pose": ((4, 32, P), torch.float32),
        "mel": ((4, 32, 5 * K, M), torch.float32),
        "energy": ((4, 32), torch.float32),
        "prev_exp": ((4, 4, E), torch.float32),
        "prev_pose": ((4, 4, P), torch.float32),
        "prev_mask": ((4, 4), torch.bool),
        "mask": ((4, 32), torch.bool),
        "emotion": ((4,), torch.long),
        "intensity": ((4,), torch.long),
        "start": ((4,), torch.long),
    }
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape, key
        assert batch[key].dtype == dtype, key
    assert dm.mel_channels == 5 * K
    assert len(batch["clip_id"]) == 4 and all(c.startswith(split) for c in batch["clip_id"])
    assert all(torch.isfinite(batch[k]).all() for k in ("exp", "pose", "mel", "energy"))
    seen = [c for b in all_batches for c in b["clip_id"]]
    assert len(seen) == len(set(seen))
    if split == "train":  # whole batches only
        assert len(seen) == card.splits[split] // 4 * 4
    else:  # one device: every clip once
        assert len(seen) == card.splits[split]


@pytest.mark.parametrize("split", SPLITS)
def test_frame_pair_batch_layout(random_dataset: Path, split: str) -> None:
    dm = FramePairDataModule(random_dataset, batch_size=4, image_size=32, pairs_per_clip=2)
    batch = batches(dm.loader(split))[0]
    for role in ("source", "target"):
        assert tuple(batch[role].shape) == (4, 3, 32, 32) and batch[role].dtype == torch.float32
        assert batch[role].min() >= -1 and batch[role].max() <= 1
        assert tuple(batch[f"{role}_exp"].shape) == (4, 16)
        assert tuple(batch[f"{role}_pose"].shape) == (4, 6)
        assert tuple(batch[f"{role}_landmarks"].shape) == (4, 68, 2)
    assert batch["emotion"].dtype == torch.long and tuple(batch["intensity"].shape) == (4,)
    assert len(batch["clip_id"]) == 4
    # two pairs per clip: clips come in consecutive pairs
    assert batch["clip_id"][0] == batch["clip_id"][1] and batch["clip_id"][2] == batch["clip_id"][3]


@pytest.mark.parametrize("split", SPLITS)
def test_frame_batch_layout(random_dataset: Path, split: str) -> None:
    dm = FrameDataModule(random_dataset, batch_size=8, frames_per_clip=4)
    batch = batches(dm.loader(split))[0]
    assert tuple(batch["image"].shape) == (8, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert tuple(batch["exp"].shape) == (8, 16) and tuple(batch["pose"].shape) == (8, 6)
    assert tuple(batch["landmarks"].shape) == (8, 68, 2)
    assert batch["flipped"].dtype == torch.bool and not batch["flipped"].any()
    assert batch["emotion"].dtype == torch.long and len(batch["clip_id"]) == 8


# --------------------------------------------------------------------------- alignment


def test_windows_align_with_records(random_dataset: Path, records: dict[str, dict]) -> None:
    context, previous, window = 2, 4, 32
    dm = CoefficientDataModule(
        random_dataset, window=window, audio_context=context, prev_frames=previous, batch_size=4, windows_per_clip=2
    )
    stats = DatasetCard.load(random_dataset).stats
    exp_mean, exp_std = np.array(stats.exp_mean, np.float32), np.array(stats.exp_std, np.float32)
    mel_mean, mel_std = np.array(stats.mel_mean, np.float32), np.array(stats.mel_std, np.float32)
    checked_context = checked_prev = 0
    for batch in dm.loader("train"):
        for b, clip in enumerate(batch["clip_id"]):
            record, start = records[clip], int(batch["start"][b])
            frames = len(record["exp"])
            valid = min(window, frames - start)
            assert batch["mask"][b].sum() == valid and batch["mask"][b, :valid].all()
            raw_exp = batch["exp"][b, :valid].numpy() * exp_std + exp_mean
            np.testing.assert_allclose(raw_exp, record["exp"][start : start + valid], atol=1e-5)
            np.testing.assert_allclose(
                dm.denormalize_pose(batch["pose"][b, :valid]).numpy(), record["pose"][start : start + valid], atol=1e-5
            )
            envelope = frame_envelope(record["audio"], frames)
            np.testing.assert_allclose(batch["energy"][b, :valid].numpy(), envelope[start : start + valid], atol=1e-6)
            raw_mel = rearrange(batch["mel"][b].numpy() * mel_std + mel_mean, "w (c k) m -> w c k m", c=2 * context + 1)
            for t in range(window):
                for offset in range(-context, context + 1):
                    frame = start + t + offset
                    got = raw_mel[t, offset + context]
                    if 0 <= frame < frames:
                        np.testing.assert_allclose(got, record["mel"][frame], atol=1e-4)
                    else:  # audio outside the clip is silence
                        np.testing.assert_allclose(got, SILENCE_LOG_MEL, atol=1e-4)
                        checked_context += 1
            for k in range(previous):
                frame = start - previous + k
                assert bool(batch["prev_mask"][b, k]) == (frame >= 0)
                if frame >= 0:
                    raw = dm.denormalize_exp(batch["prev_exp"][b, k]).numpy()
                    np.testing.assert_allclose(raw, record["exp"][frame], atol=1e-5)
                    checked_prev += 1
                else:
                    assert (batch["prev_exp"][b, k] == 0).all() and (batch["prev_pose"][b, k] == 0).all()
    assert checked_prev > 0 and checked_context > 0  # both cases occurred


def test_short_clip_is_padded_and_masked(random_dataset: Path, records: dict[str, dict]) -> None:
    short = [c for c, r in records.items() if r["split"] == "train" and len(r["exp"]) < 32]
    assert short, "the fixture must hold a clip shorter than the window"
    dm = CoefficientDataModule(random_dataset, window=32, batch_size=2)
    found = 0
    for batch in dm.loader("train"):
        for b, clip in enumerate(batch["clip_id"]):
            if clip in short:
                frames = len(records[clip]["exp"])
                assert int(batch["start"][b]) == 0 and int(batch["mask"][b].sum()) == frames
                assert (batch["exp"][b, frames:] == 0).all() and (batch["energy"][b, frames:] == 0).all()
                found += 1
    assert found == len(short)
    skipping = CoefficientDataModule(random_dataset, window=32, batch_size=2, short_clips="skip")
    seen = [c for batch in skipping.loader("train") for c in batch["clip_id"]]
    assert seen and not set(seen) & set(short)
    assert all(batch["mask"].all() for batch in skipping.loader("train"))


def test_frame_pairs_match_records(random_dataset: Path, records: dict[str, dict]) -> None:
    card = DatasetCard.load(random_dataset)
    dm = FramePairDataModule(random_dataset, batch_size=4, image_size=32, pairs_per_clip=2)
    for batch in dm.loader("train"):
        for b, clip in enumerate(batch["clip_id"]):
            record = records[clip]
            source, target = int(batch["source_frame"][b]), int(batch["target_frame"][b])
            assert source != target
            for role, index in (("source", source), ("target", target)):
                image = Image.open(io.BytesIO(unpack_frame(record, index)))
                image.draft("RGB", (32, 32))  # libjpeg's 1/2 scale decode, then exact size
                expected = np.asarray(image.convert("RGB").resize((32, 32), Image.BICUBIC), dtype=np.float32)
                got = rearrange(batch[role][b].numpy(), "c h w -> h w c")
                np.testing.assert_allclose((got + 1) * 127.5, expected, atol=1e-3)
                np.testing.assert_allclose(
                    batch[f"{role}_landmarks"][b].numpy(), record["landmarks"][index] * 32 / card.frame_size, atol=1e-4
                )
                np.testing.assert_allclose(
                    dm.denormalize_exp(batch[f"{role}_exp"][b]).numpy(), record["exp"][index], atol=1e-5
                )


def test_fixed_eval_pairs_and_frames(random_dataset: Path) -> None:
    pairs = FramePairDataModule(random_dataset, batch_size=4, pairs_per_clip=2, image_size=32)

    def chosen(loader, keys):
        return [tuple(zip(batch["clip_id"], *(batch[k].tolist() for k in keys))) for batch in loader]

    val = pairs.val_dataloader()
    assert chosen(val, ["source_frame", "target_frame"]) == chosen(val, ["source_frame", "target_frame"])
    train = pairs.train_dataloader()
    assert chosen(train, ["source_frame", "target_frame"]) != chosen(train, ["source_frame", "target_frame"])
    frames = FrameDataModule(random_dataset, batch_size=8, frames_per_clip=4, flip=True)
    val = frames.val_dataloader()
    first = chosen(val, ["frame", "flipped"])
    assert first == chosen(val, ["frame", "flipped"])
    assert not any(flipped for batch in first for *_, flipped in batch)  # no augmentation outside training


def test_frames_match_records_and_flip(random_dataset: Path, records: dict[str, dict]) -> None:
    dm = FrameDataModule(random_dataset, batch_size=8, frames_per_clip=4, flip=True)
    flips = 0
    for batch in dm.loader("train"):
        for b, clip in enumerate(batch["clip_id"]):
            index = int(batch["frame"][b])
            image = np.asarray(Image.open(io.BytesIO(unpack_frame(records[clip], index))).convert("RGB"))
            landmarks = records[clip]["landmarks"][index]
            if batch["flipped"][b]:
                image, landmarks = image[:, ::-1], flip_landmarks(landmarks, 64)
                flips += 1
            got = rearrange(batch["image"][b].numpy(), "c h w -> h w c")
            np.testing.assert_allclose((got + 1) * 127.5, image, atol=1e-3)
            np.testing.assert_allclose(batch["landmarks"][b].numpy(), landmarks, atol=1e-4)
    assert flips > 0


def test_ibug_mirror_permutation() -> None:
    mirror = np.array(IBUG_MIRROR)
    assert sorted(mirror.tolist()) == list(range(68))
    assert (mirror[mirror] == np.arange(68)).all()  # an involution
    assert mirror[48] == 54 and mirror[36] == 45 and mirror[0] == 16 and mirror[33] == 33 and mirror[62] == 62
    # a face symmetric about x = 32 (each point's mirror partner at the reflected position) is unchanged
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 64, size=(68, 2)).astype(np.float32)
    for i, j in enumerate(mirror):
        if i < j:
            points[j] = (64 - points[i][0], points[i][1])
        elif i == j:
            points[i, 0] = 32.0
    np.testing.assert_allclose(flip_landmarks(points, 64), points, atol=1e-5)
    # a dot drawn at a point lands at the mirrored point after flipping the image
    image = np.zeros((64, 64), dtype=np.uint8)
    image[20, 10] = 255  # pixel (x=10, y=20): its centre is (10.5, 20.5)
    landmarks = np.zeros((68, 2), dtype=np.float32)
    landmarks[36] = (10.5, 20.5)
    flipped_image, flipped = image[:, ::-1], flip_landmarks(landmarks, 64)
    x, y = flipped[45]
    assert flipped_image[int(y), int(x)] == 255


# --------------------------------------------------------------------------- sampling across epochs


def test_fixed_eval_windows_and_random_train_windows(random_dataset: Path) -> None:
    dm = CoefficientDataModule(random_dataset, batch_size=2, seed=3)
    val = dm.val_dataloader()
    first, second = clip_order(val), clip_order(val)
    assert first == second
    v1, v2 = batches(val), batches(val)
    assert all(torch.equal(a["mel"], b["mel"]) for a, b in zip(v1, v2))
    train = dm.train_dataloader()
    epochs = [dict(clip_order(train)) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # new random starts each epoch
    # seeded: the same seed replays the same epochs, another seed does not
    again = CoefficientDataModule(random_dataset, batch_size=2, seed=3).train_dataloader()
    assert dict(clip_order(again)) == epochs[0]
    other = CoefficientDataModule(random_dataset, batch_size=2, seed=4).train_dataloader()
    assert dict(clip_order(other)) != epochs[0]


def test_centred_window_for_eval(random_dataset: Path, records: dict[str, dict]) -> None:
    dm = CoefficientDataModule(random_dataset, window=16, batch_size=2)
    for clip, start in clip_order(dm.val_dataloader()):
        assert start == (len(records[clip]["exp"]) - 16) // 2
    spread = CoefficientDataModule(random_dataset, window=16, batch_size=3, windows_per_clip=3)
    starts: dict[str, list[int]] = {}
    for clip, start in clip_order(spread.val_dataloader()):
        starts.setdefault(clip, []).append(start)
    for clip, values in starts.items():
        assert values[0] == 0 and values[-1] == len(records[clip]["exp"]) - 16


def test_workers_give_the_same_samples(random_dataset: Path) -> None:
    serial = CoefficientDataModule(random_dataset, batch_size=2, num_workers=0, seed=1)
    parallel = CoefficientDataModule(random_dataset, batch_size=2, num_workers=2, seed=1)
    assert sorted(clip_order(serial.val_dataloader())) == sorted(clip_order(parallel.val_dataloader()))
    loaders = serial.train_dataloader(), parallel.train_dataloader()
    for _ in range(2):  # epoch 1 and 2: the starts depend on the clip and epoch, not the worker
        assert sorted(clip_order(loaders[0])) == sorted(clip_order(loaders[1]))


@pytest.mark.parametrize("posix_fast", ["0", "1"])
def test_ranks_read_disjoint_clips(random_dataset: Path, monkeypatch: pytest.MonkeyPatch, posix_fast: str) -> None:
    """Two ranks (set through litdata's WORLD_SIZE / GLOBAL_RANK) split the clips evenly.

    ``LITDATA_POSIX_FAST=1`` is how litdata treats a parallel file system (whole chunks per
    worker); the one-chunk dataset must still be split, or one rank would wait for the other.
    """
    monkeypatch.setenv("LITDATA_POSIX_FAST", posix_fast)
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("GLOBAL_RANK", str(rank))
        dm = CoefficientDataModule(random_dataset, batch_size=2, num_workers=1)
        seen.append([c for batch in dm.train_dataloader() for c in batch["clip_id"]])
    assert len(seen[0]) == len(seen[1]) > 0
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == DatasetCard.load(random_dataset).splits["train"]


# --------------------------------------------------------------------------- normalisation


def test_normalisation_uses_card_stats(random_dataset: Path, records: dict[str, dict]) -> None:
    dm = CoefficientDataModule(random_dataset, batch_size=2)
    card = DatasetCard.load(random_dataset)
    np.testing.assert_allclose(dm.normalizer.mean["exp"], card.stats.exp_mean, rtol=1e-6)
    np.testing.assert_allclose(dm.normalizer.std["pose"], card.stats.pose_std, rtol=1e-6)
    # the card's stats are the train split's: normalised train frames have mean 0 and std 1
    train = [r for r in records.values() if r["split"] == "train"]
    exp = dm.normalize_exp(np.concatenate([r["exp"] for r in train]))
    pose = dm.normalize_pose(np.concatenate([r["pose"] for r in train]))
    mel = dm.normalizer.normalize("mel", np.concatenate([r["mel"].reshape(-1, r["mel"].shape[-1]) for r in train]))
    for values in (exp, pose, mel):
        np.testing.assert_allclose(values.mean(0), 0, atol=1e-3)
        np.testing.assert_allclose(values.std(0), 1, atol=1e-3)
    # round trip on tensors, on any leading shape
    x = torch.randn(3, 5, card.exp_dim, dtype=torch.float64)
    torch.testing.assert_close(dm.normalize_exp(dm.denormalize_exp(x)), x)


# --------------------------------------------------------------------------- errors


def test_root_without_card(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    dm = CoefficientDataModule(tmp_path)  # configs instantiate without data; the card is read on use
    with pytest.raises(DatasetError, match=r"dataset\.json.*missing.*flowvq synth"):
        dm.setup("fit")
    with pytest.raises(DatasetError, match="does not exist.*flowvq synth"):
        FrameDataModule(tmp_path / "nowhere").setup("fit")


def test_card_and_shards_disagree(random_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(random_dataset, root)
    card = json.loads((root / "dataset.json").read_text())
    card["exp_dim"] = 17
    (root / "dataset.json").write_text(json.dumps(card))
    dm = CoefficientDataModule(root, batch_size=2)
    with pytest.raises(RecordError, match=r"clip 'train_\d+', field 'exp'.*E is 16.*17.*re-create"):
        next(iter(dm.train_dataloader()))


def test_frame_modules_refuse_datasets_without_frames(make_random_dataset) -> None:
    root = make_random_dataset("no_frames", frame_size=0, clip_frames={"train": [40, 30], "val": [40]})
    for module in (FrameDataModule(root), FramePairDataModule(root)):
        with pytest.raises(ValueError, match=r"needs face frames.*frame_size = 0.*Re-create"):
            module.setup("fit")
    dm = CoefficientDataModule(root, batch_size=2)  # coefficient models still work on it
    assert len(batches(dm.train_dataloader())) == 1
    assert dm.test_dataloader() == []  # no test split written


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="multiple of the 2 samples"):
        CoefficientDataModule("unused", batch_size=3, windows_per_clip=2).check()
    with pytest.raises(ValueError, match="short_clips"):
        CoefficientDataModule("unused", short_clips="drop")


def test_collate_leaves_out_skipped_samples() -> None:
    def sample(clip: str, keep: bool) -> dict:
        return {"exp": np.full((4, 2), float(keep), np.float32), "emotion": 1, "clip_id": clip, "_keep": keep}

    batch = collate_samples([[sample("a", True), sample("a", False)], [sample("b", False)]])
    assert batch["clip_id"] == ["a"] and tuple(batch["exp"].shape) == (1, 4, 2) and (batch["exp"] == 1).all()
    assert "_keep" not in batch
    empty = collate_samples([[sample("a", False)]])  # every clip skipped: an empty batch of the same layout
    assert tuple(empty["exp"].shape) == (0, 4, 2) and tuple(empty["emotion"].shape) == (0,) and empty["clip_id"] == []


def test_card_without_stats_is_refused(random_dataset: Path) -> None:
    card = DatasetCard.load(random_dataset)
    card.stats = None
    with pytest.raises(DatasetError, match="no train statistics.*re-create"):
        Normalizer.from_card(card, random_dataset)


# --------------------------------------------------------------------------- colour jitter


def test_color_matrix_keeps_luma_and_round_trips() -> None:
    from flowvq.datamodules.augment import _RGB_TO_YIQ, color_matrix

    np.testing.assert_allclose(color_matrix(0.0, 1.0), np.eye(3), atol=1e-12)
    rgb = np.random.default_rng(0).uniform(0, 1, size=(100, 3))
    turned = rgb @ color_matrix(2.0, 0.7).T
    np.testing.assert_allclose(turned @ _RGB_TO_YIQ[0], rgb @ _RGB_TO_YIQ[0], atol=1e-9)  # luma unchanged
    np.testing.assert_allclose(turned @ color_matrix(-2.0, 1 / 0.7).T, rgb, atol=1e-9)  # inverse transform
    assert np.abs(turned - rgb).max() > 0.1


def test_color_jitter_shares_one_transform_and_is_seeded() -> None:
    from flowvq.datamodules.augment import color_jitter

    image = np.random.default_rng(1).integers(40, 215, size=(16, 16, 3), dtype=np.uint8)
    a, b = color_jitter([image, image.copy()], np.random.default_rng(7), 1.0)
    assert a.dtype == np.uint8 and a.shape == image.shape
    np.testing.assert_array_equal(a, b)  # the frames of a sample share the transform
    (again,) = color_jitter([image], np.random.default_rng(7), 1.0)
    np.testing.assert_array_equal(again, a)
    assert np.abs(a.astype(int) - image).max() > 10
    (same,) = color_jitter([image], np.random.default_rng(7), 0.0)
    np.testing.assert_array_equal(same, image)
    with pytest.raises(ValueError, match="color_jitter strength=2"):
        color_jitter([image], np.random.default_rng(0), 2.0)


@pytest.mark.parametrize("module", ["frames", "pairs"])
def test_color_jitter_only_in_training(random_dataset: Path, module: str) -> None:
    def make(strength: float):
        if module == "frames":
            return FrameDataModule(random_dataset, batch_size=8, frames_per_clip=4, color_jitter=strength)
        return FramePairDataModule(random_dataset, batch_size=4, pairs_per_clip=2, color_jitter=strength)

    key = "image" if module == "frames" else "target"
    plain, jittered = make(0.0), make(1.0)
    for split in ("val", "test"):
        for x, y in zip(plain.loader(split), jittered.loader(split)):
            torch.testing.assert_close(x[key], y[key])
    changed = [
        (x[key] - y[key]).abs().amax().item() for x, y in zip(plain.loader("train"), jittered.loader("train"))
    ]
    assert changed and min(changed) > 0.1
    with pytest.raises(ValueError, match="color_jitter=-0.5 must be in"):
        make(-0.5)
