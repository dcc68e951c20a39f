"""GMTalker's motion flow (NFMG): CoefficientFlow over head pose, blink and gaze, as configured in
``configs/tiny/motion_flow.yaml``; shards without the fields are refused, naming them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from test_coefficient_flow import KP, BatchData, P, _card, _trainer, structured_batch

from flowvq.data.card import DatasetError
from flowvq.lightning_modules.coefficient_flow import CoefficientFlow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny/motion_flow.yaml"


def motion_batch(seed: int = 0) -> dict:
    """:func:`structured_batch` plus blink events and a slowly wandering gaze (normalised units)."""
    batch = structured_batch(seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    b, w = batch["pose"].shape[:2]
    n = w + KP
    blink = (torch.rand(b, n, generator=g) < 0.08).float() * 3 - 0.3
    gaze = torch.cumsum(0.2 * torch.randn(b, n, 2, generator=g), 1).clamp(-2, 2)
    batch.update(blink=blink[:, KP:], prev_blink=blink[:, :KP], gaze=gaze[:, KP:], prev_gaze=gaze[:, :KP])
    return batch


def motion_card(**changes):
    """The structured card with blink and gaze statistics, as a dataset carrying both has."""
    card = _card()
    stats = replace(card.stats, blink_mean=[0.1], blink_std=[0.25], gaze_mean=[0.0, -0.05], gaze_std=[0.15, 0.07])
    return replace(card, **{"fields": ["blink", "gaze"], "stats": stats, **changes})


def motion_flow(**changes) -> CoefficientFlow:
    """The tiny config's model at the structured batch's sizes."""
    options = yaml.safe_load(TINY.read_text())["model"]["init_args"]
    sizes = dict(exp_dim=5, pose_dim=P, mel_bins=8, mel_per_frame=2, num_emotions=8, prev_frames=2, val_samples=2)
    torch.manual_seed(0)
    return CoefficientFlow(**{**options, **sizes, **changes})


def test_motion_flow_config_fits_one_batch(tmp_path):
    model = motion_flow()
    assert model.hparams.extra_fields == ["blink", "gaze"] and model.hparams.prior == "gaussian"
    assert model.features == P + 3
    assert model.feature_names == [f"pose[{d}]" for d in range(P)] + ["blink", "gaze_x", "gaze_y"]
    batch = motion_batch()
    data = BatchData([batch], card=motion_card())
    model.read_card(data.card)
    x, prev = model.select(batch)
    torch.testing.assert_close(x[..., P], batch["blink"])
    torch.testing.assert_close(x[..., P + 1 :], batch["gaze"])
    assert prev.shape == (16, KP, P + 3)
    torch.testing.assert_close(model.coef_std, torch.tensor([1.0, 1.0, 1.0, 0.25, 0.15, 0.07]))
    before = model.nll(batch).item()
    _trainer(tmp_path, 20).fit(model, datamodule=data)
    after = model.eval().nll(batch).item()
    assert after < before - 0.3, (before, after)
    samples = model.sample(batch["mel"][0], num_samples=3, seed=0)
    assert samples.shape == (3, batch["mel"].shape[1], P + 3) and torch.isfinite(samples).all()


@pytest.mark.parametrize(
    ("card", "message"),
    [
        (lambda: motion_card(fields=[]), r"needs the record field\(s\) \['blink', 'gaze'\].*re-run `flowvq synth`"),
        (lambda: motion_card(fields=["blink"]), r"\['gaze'\].*(its optional fields: \['blink'\])"),
        (
            lambda: motion_card(fields=[], coefficient_source="deep3dfacerecon"),
            r"\['blink', 'gaze'\].*Deep3DFaceRecon imports carry neither",
        ),
    ],
)
def test_shards_without_blink_or_gaze_are_refused_naming_the_field(card, message, tmp_path):
    model = motion_flow()
    with pytest.raises(DatasetError, match=message):
        _trainer(tmp_path, 1).fit(model, datamodule=BatchData([motion_batch()], card=card()))
    # a batch without the field (a model used by hand) is refused the same way
    batch = motion_batch()
    del batch["gaze"]
    with pytest.raises(DatasetError, match="no 'gaze'.*needs the record field 'gaze'"):
        model.select(batch)


def test_finetune_keeps_the_pretrained_units_of_blink_and_gaze(tmp_path):
    pretrained = motion_flow()
    _trainer(tmp_path / "pre", 2).fit(pretrained, datamodule=BatchData([motion_batch()], card=motion_card()))
    path = tmp_path / "pretrained.ckpt"
    pretrained.trainer.save_checkpoint(path)
    target = motion_card()
    target = replace(target, stats=replace(target.stats, gaze_std=[0.3, 0.07], blink_mean=[0.2]))
    model = motion_flow(init_from=str(path), lr=1e-4)
    _trainer(tmp_path / "fine", 1).fit(model, datamodule=BatchData([motion_batch()], card=target))
    # the target's gaze_x std is twice the pretraining's; its blink mean is 0.1 higher (0.4 of its std)
    torch.testing.assert_close(model.unit_scale[P + 1], torch.tensor(2.0))
    torch.testing.assert_close(model.unit_shift[P], torch.tensor(0.4))
    torch.testing.assert_close(model.unit_scale[: P + 1], torch.ones(P + 1))
    with pytest.raises(ValueError, match="extra_fields"):  # a pretraining over other fields
        other = motion_flow(init_from=str(path), extra_fields=["blink"])
        _trainer(tmp_path / "other", 1).fit(other, datamodule=BatchData([motion_batch()], card=target))
