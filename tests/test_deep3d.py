"""Deep3DFaceRecon import: generated PIRenderer- and SadTalker-style .mat files with real videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from media import build_mead_tree
from scipy.io import savemat

from flowvq.data.deep3d import CoefficientFileError, import_deep3d, load_coefficients
from flowvq.data.shards import open_split

FRAMES = 25


def pirenderer(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    transform = np.tile([224.0, 224.0, 0.0, 100.0, 110.0], (rows, 1))
    transform[:, 2] = rng.uniform(0.8, 1.2, rows)
    return {"coeff": rng.normal(size=(rows, 257)), "transform_params": transform}


def sadtalker(rows: int, seed: int) -> dict[str, np.ndarray]:
    return {"coeff_3dmm": np.random.default_rng(seed).normal(size=(rows, 73))}


def test_load_coefficients_layouts(tmp_path):
    savemat(tmp_path / "p.mat", pirenderer(10, 0))
    coeff, params = pirenderer(10, 0)["coeff"], pirenderer(10, 0)["transform_params"]
    loaded = load_coefficients(tmp_path / "p.mat")
    np.testing.assert_allclose(loaded["exp"], coeff[:, 80:144], rtol=1e-6)
    expected = np.stack([coeff[:, 225], coeff[:, 224], coeff[:, 226], coeff[:, 254], coeff[:, 255], params[:, 2]], 1)
    np.testing.assert_allclose(loaded["pose"], expected, rtol=1e-6)

    savemat(tmp_path / "s.mat", sadtalker(7, 1))
    coeff = sadtalker(7, 1)["coeff_3dmm"]
    loaded = load_coefficients(tmp_path / "s.mat")
    np.testing.assert_allclose(loaded["exp"], coeff[:, :64], rtol=1e-6)
    expected = np.stack([coeff[:, 65], coeff[:, 64], coeff[:, 66], coeff[:, 67], coeff[:, 68], coeff[:, 70]], 1)
    np.testing.assert_allclose(loaded["pose"], expected, rtol=1e-6)

    savemat(tmp_path / "bad.mat", {"coefficients": np.zeros((3, 257))})
    with pytest.raises(CoefficientFileError, match="has keys \\['coefficients'\\]: expected 'coeff'"):
        load_coefficients(tmp_path / "bad.mat")
    savemat(tmp_path / "short.mat", {"coeff": np.zeros((3, 80))})
    with pytest.raises(CoefficientFileError, match="expected \\[T, 257\\]"):
        load_coefficients(tmp_path / "short.mat")


def test_import_deep3d_with_videos(tmp_path):
    videos = tmp_path / "MEAD"
    build_mead_tree(videos, {"M001": [("neutral", 1), ("happy", 1)], "M003": [("neutral", 1), ("sad", 1)]}, FRAMES, 128)
    coeffs = tmp_path / "coeffs"
    (coeffs / "M001/video/front/neutral/level_1").mkdir(parents=True)
    (coeffs / "M003/video/front/neutral/level_1").mkdir(parents=True)
    # by relative path (PIRenderer), by clip id (SadTalker, one row more than the video: cut), a
    # file far longer than its video (refused), and a video with no file (recorded)
    savemat(coeffs / "M001/video/front/neutral/level_1/001.mat", pirenderer(FRAMES, 0))
    savemat(coeffs / "M001_front_happy_1_001.mat", sadtalker(FRAMES + 1, 1))
    savemat(coeffs / "M003/video/front/neutral/level_1/001.mat", pirenderer(2 * FRAMES, 2))
    out = tmp_path / "data"
    card = import_deep3d(coeffs, out, videos, size=96, progress=False)
    assert card.coefficient_source == "deep3dfacerecon" and (card.exp_dim, card.pose_dim) == (64, 6)
    assert card.splits == {"train": 2} and card.frame_size == 96
    records = {r["clip_id"]: r for r in open_split(out, "train")}
    neutral, happy = records["M001_front_neutral_1_001"], records["M001_front_happy_1_001"]
    np.testing.assert_allclose(neutral["exp"], pirenderer(FRAMES, 0)["coeff"][:, 80:144], rtol=1e-6)
    np.testing.assert_allclose(neutral["pose"][:, 5], pirenderer(FRAMES, 0)["transform_params"][:, 2], rtol=1e-6)
    np.testing.assert_allclose(happy["exp"], sadtalker(FRAMES + 1, 1)["coeff_3dmm"][:FRAMES, :64], rtol=1e-6)
    assert len(happy["frame_offsets"]) == FRAMES + 1 and happy["landmarks"].shape == (FRAMES, 68, 2)
    failures = {f["clip_id"]: f["reason"] for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert failures == {"M003_front_neutral_1_001": "length_mismatch", "M003_front_sad_1_001": "missing_coefficients"}
