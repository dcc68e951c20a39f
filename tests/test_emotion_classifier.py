"""The coefficient emotion classifier: shapes, masking, learning, one-batch fit, dims checks."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from flowvq.data.card import DatasetError
from flowvq.lightning_modules.emotion_classifier import EmotionClassifier
from flowvq.nn.temporal import TemporalConvEncoder


def separable_batch(size: int = 64, frames: int = 24, exp_dim: int = 6, seed: int = 0) -> dict:
    """Windows whose emotion shows as an offset on one expression dim, buried in noise."""
    generator = torch.Generator().manual_seed(seed)
    emotion = torch.randint(0, 4, (size,), generator=generator)
    exp = torch.randn(size, frames, exp_dim, generator=generator)
    exp[torch.arange(size), :, emotion] += 1.5
    return {
        "exp": exp,
        "pose": torch.randn(size, frames, 3, generator=generator),
        "mask": torch.ones(size, frames, dtype=torch.bool),
        "emotion": emotion,
        "intensity": torch.randint(0, 3, (size,), generator=generator),
    }


def test_padding_does_not_change_the_embedding():
    encoder = TemporalConvEncoder(4, hidden=16, layers=3).eval()
    x = torch.randn(2, 20, 4)
    mask = torch.ones(2, 20, dtype=torch.bool)
    padded = torch.cat([x, torch.randn(2, 7, 4) * 100], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 7, dtype=torch.bool)], dim=1)
    # padding on the right only reaches valid frames through the convs' right context, which
    # the mask zeroes before every block
    torch.testing.assert_close(encoder(x, mask), encoder(padded, padded_mask), atol=1e-5, rtol=1e-4)


def test_learns_a_separable_task():
    torch.manual_seed(0)
    model = EmotionClassifier(exp_dim=6, num_emotions=4, hidden=32, layers=2, input_noise=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = separable_batch()
    for _ in range(60):
        logits, _ = model(batch["exp"], mask=batch["mask"])
        loss = torch.nn.functional.cross_entropy(logits, batch["emotion"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = separable_batch(seed=1)
    accuracy = (model.predict_proba(held_out["exp"]).argmax(-1) == held_out["emotion"]).float().mean()
    assert accuracy > 0.9


def test_unknown_emotion_is_ignored_by_the_loss():
    model = EmotionClassifier(exp_dim=6, num_emotions=4, hidden=16, layers=1)
    batch = separable_batch(size=8)
    labelled, _ = model.loss(batch)
    batch["emotion"][:4] = -1
    batch["intensity"][:4] = -1
    partly, _ = model.loss(batch)
    assert partly != labelled and torch.isfinite(partly)
    batch["emotion"][:] = -1
    batch["intensity"][:] = -1
    unlabelled, _ = model.loss(batch)
    assert unlabelled == 0 and unlabelled.requires_grad


def test_one_batch_fit(tmp_path):
    model = EmotionClassifier(exp_dim=6, pose_dim=3, num_emotions=4, use_pose=True, hidden=16, layers=1)
    batch = separable_batch(size=8)
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(model, loader, loader)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(changed), "every parameter is trained (the intensity head included)"


def test_needs_dims():
    with pytest.raises(ValueError, match="fills them from the dataset card"):
        EmotionClassifier()
    model = EmotionClassifier(exp_dim=6, num_emotions=4, hidden=16, layers=1)
    with pytest.raises(ValueError, match="E=6"):
        model(torch.randn(2, 10, 5))


def test_checkpoint_for_other_dims_is_refused(random_dataset):
    from flowvq.datamodules import CoefficientDataModule

    data = CoefficientDataModule(random_dataset, window=8, batch_size=4)
    model = EmotionClassifier(exp_dim=64, num_emotions=8, hidden=16, layers=1)
    trainer = Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(DatasetError, match="exp_dim=64 but the dataset has"):
        trainer.fit(model, datamodule=data)
