"""The codebook's training options: factorised (low-dimensional, cosine) lookup, the learning-rate
decay, and a factorised stage-1 checkpoint used by the VQIG."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from test_vq_lightning import RES, VQIG_ONLY, trainer
from test_vq_lightning import TINY_VQGAN as TINY
from torch.utils.data import DataLoader, Dataset

from flowvq.lightning_modules.vqgan import VQGAN
from flowvq.lightning_modules.vqig import VQIG
from flowvq.nn.quantizer import Quantizer, codebook_usage


@pytest.mark.parametrize("cosine", [False, True])
def test_factorised_lookup_returns_full_dim_codes_and_inverts(cosine: bool) -> None:
    torch.manual_seed(0)
    quantizer = Quantizer(dim=12, codebook_size=10, lookup_dim=3, use_cosine_sim=cosine, kmeans_init=True)
    z = torch.randn(2, 12, 4, 5, requires_grad=True)
    quantized, commit, indices = quantizer.train()(z)
    assert quantized.shape == z.shape and indices.shape == (2, 4, 5) and commit.ndim == 0
    assert quantizer.lookup_codebook.shape == (10, 3) and quantizer.codebook.shape == (10, 12)
    (quantized.sum() + commit).backward()
    # gradients reach the encoder side and both projections
    assert z.grad.abs().sum() > 0
    assert quantizer.vq.project_in.weight.grad.abs().sum() > 0
    assert quantizer.vq.project_out.weight.grad.abs().sum() > 0
    quantizer.eval()
    with torch.no_grad():
        codes, _, indices = quantizer(z)
    torch.testing.assert_close(quantizer.indices_to_codes(indices), codes, atol=1e-5, rtol=1e-5)
    assert torch.equal(quantizer.nearest(z), indices)
    # only K distinct codes, each a row of the (K, D) codebook the VQIG attends to
    flat = codes.permute(0, 2, 3, 1).reshape(-1, 12)
    gap = (flat[:, None] - quantizer.codebook[None]).abs().amax(-1).min(dim=1).values
    assert gap.max() < 1e-5
    if cosine:
        torch.testing.assert_close(quantizer.lookup_codebook.norm(dim=-1), torch.ones(10), atol=1e-4, rtol=0)


def test_lookup_dim_out_of_range_is_refused() -> None:
    for bad in (0, 13):
        with pytest.raises(ValueError, match="lookup_dim"):
            Quantizer(dim=12, codebook_size=10, lookup_dim=bad)
    assert not Quantizer(dim=12, codebook_size=10, lookup_dim=12).factorised


def test_factorised_cosine_codebook_keeps_every_entry_in_use_on_clustered_features() -> None:
    """64 clusters in 32 dims, a codebook of 64 entries looked up in 8 dims: k-means + dead-code
    replacement keep nearly every entry in use while the features are learned through it."""
    torch.manual_seed(0)
    centres = torch.randn(64, 32) * 3
    quantizer = Quantizer(
        dim=32, codebook_size=64, lookup_dim=8, use_cosine_sim=True, kmeans_init=True, threshold_ema_dead_code=1.0
    )
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=1e-2)
    for _ in range(40):
        points = centres[torch.randint(0, 64, (512,))] + 0.1 * torch.randn(512, 32)
        z = points.t().reshape(1, 32, 16, 32)
        quantized, commit, _ = quantizer.train()(z)
        loss = (quantized - z).pow(2).mean() + commit
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    z = centres.repeat(8, 1).t().reshape(1, 32, 16, 32)
    counts = torch.bincount(quantizer.nearest(z).flatten(), minlength=64)
    assert codebook_usage(counts)["usage"] >= 0.75


class Smooth(Dataset):
    def __init__(self, size: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        low = torch.rand(size, 3, 4, 4, generator=g) * 2 - 1
        self.images = torch.nn.functional.interpolate(low, size=RES, mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index]}


def fit(model: VQGAN, batches: int) -> L.Trainer:
    run = trainer(batches, limit_val_batches=0)
    run.fit(model, DataLoader(Smooth(), batch_size=4))
    return run


def test_learning_rate_decays_on_a_cosine_to_its_floor() -> None:
    model = VQGAN(**TINY, lr_decay_batches=4, lr_min_fraction=0.1, disc_start=2)
    assert model.learning_rate(0) == pytest.approx(2e-3)
    assert model.learning_rate(2) == pytest.approx(2e-4 + 1.8e-3 * 0.5)
    assert model.learning_rate(4) == pytest.approx(2e-4) and model.learning_rate(100) == pytest.approx(2e-4)
    fit(model, 5)  # the last batch steps at the floor, both optimizers (the GAN is on from batch 2)
    for optimizer in model.trainer.optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)
    constant = VQGAN(**TINY)
    assert constant.learning_rate(10**6) == 2e-3
    with pytest.raises(ValueError, match="lr_min_fraction"):
        VQGAN(**TINY, lr_decay_batches=10, lr_min_fraction=1.5)
    assert math.isclose(VQGAN(**TINY, lr_decay_batches=10).learning_rate(5), 2e-3 * (0.05 + 0.95 * 0.5))


def test_vqig_builds_on_a_factorised_cosine_codebook_with_one_norm_group(tmp_path: Path) -> None:
    torch.manual_seed(0)
    stage1 = VQGAN(
        **TINY, norm_groups=1, codebook_lookup_dim=4, cosine_codebook=True, kmeans_init=True, disc_start=10**6
    )
    trainer = fit(stage1, 2)
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    vqig = VQIG(**VQIG_ONLY, codebook_checkpoint=str(path))  # the architecture comes from the checkpoint
    vqig.load_codebook(path)
    quantizer = vqig.net.autoencoder.quantizer
    assert quantizer.lookup_dim == 4 and quantizer.use_cosine_sim
    assert all(m.num_groups == 1 for m in vqig.net.autoencoder.modules() if isinstance(m, torch.nn.GroupNorm))
    torch.testing.assert_close(quantizer.codebook, stage1.autoencoder.quantizer.codebook)
    source = Smooth()[0]["image"][None]
    with torch.no_grad():
        image = vqig.net(source, torch.zeros(1, VQIG_ONLY["exp_dim"]), torch.zeros(1, VQIG_ONLY["pose_dim"]))["image"]
    assert image.shape == (1, 3, RES, RES) and torch.isfinite(image).all()


def test_fewer_norm_groups_let_a_flat_colour_through_the_encoder() -> None:
    """At tiny widths the default GroupNorm is an instance norm: each block removes every channel's
    image mean, so a colour offset added to the whole image reaches the codes only through the
    zero-padded borders. One group keeps it (the cause of the colour errors on unseen faces)."""
    from flowvq.nn.vq_autoencoder import Encoder, VQAutoencoder

    torch.manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8) * 2 - 1, size=64, mode="bilinear")
    offset = torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    change = {}
    for groups in (None, 1):
        torch.manual_seed(1)
        encoder = Encoder(16, (1, 2, 4), 1, 8, attention=False, norm_groups=groups).eval()
        with torch.no_grad():
            plain, shifted = encoder(image)[..., 4:12, 4:12], encoder(image + offset)[..., 4:12, 4:12]
        change[groups] = float((shifted - plain).abs().mean() / plain.abs().mean())
    assert change[1] > 3 * change[None]
    assert all(
        m.num_groups == 1 for m in VQAutoencoder(32, 16, (1, 2), 1, norm_groups=1).modules() if hasattr(m, "num_groups")
    )
    with pytest.raises(ValueError, match="norm_groups"):
        VQAutoencoder(32, 16, (1, 2), 1, norm_groups=0)
