"""One-batch fits of the two image stages (VQGAN codebook, VQIG) on random tensors in the
DataModules' batch format, the GAN step's isolation, and the stage-1 checkpoint contract."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from flowvq.data.card import DatasetCard, DatasetError
from flowvq.lightning_modules.vqgan import VQGAN
from flowvq.lightning_modules.vqig import VQIG, CodebookMismatchError

RES, E, P = 32, 5, 6
TINY_VQGAN = dict(
    resolution=RES,
    channels=8,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    codebook_size=16,
    codebook_dim=8,
    disc_channels=8,
    disc_layers=2,
    lr=2e-3,
    log_images=0,
)
TINY_VQIG = dict(
    exp_dim=E,
    pose_dim=P,
    resolution=RES,
    codebook_size=16,
    codebook_dim=8,
    codebook_channels=8,
    codebook_ch_mult=(1, 2, 2),
    codebook_res_blocks=1,
    codebook_attention=True,
    channels=8,
    ch_mult=(1, 2, 2),
    feature_dim=16,
    motion_dim=8,
    num_heads=2,
    disc_channels=8,
    disc_layers=2,
    lr=2e-3,
    log_images=0,
)


class FixedBatches(Dataset):
    """The same few random frames / frame pairs, in the DataModules' item format."""

    def __init__(self, pairs: bool, size: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)

        # Smooth random images (upsampled noise), so that a tiny codebook can fit them.
        def images() -> torch.Tensor:
            low = torch.rand(size, 3, 4, 4, generator=g) * 2 - 1
            return torch.nn.functional.interpolate(low, size=RES, mode="bilinear", align_corners=False)

        self.items = []
        sources, targets = images(), images()
        exp, pose = torch.randn(size, E, generator=g), torch.randn(size, P, generator=g)
        for i in range(size):
            if pairs:
                self.items.append(
                    {"source": sources[i], "target": targets[i], "target_exp": exp[i], "target_pose": pose[i]}
                )
            else:
                self.items.append({"image": targets[i], "exp": exp[i], "pose": pose[i]})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class RandomFrames(L.LightningDataModule):
    def __init__(self, pairs: bool, card: DatasetCard | None = None) -> None:
        super().__init__()
        self.pairs = pairs
        self.card = card

    def train_dataloader(self) -> DataLoader:
        return DataLoader(FixedBatches(self.pairs), batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(FixedBatches(self.pairs, seed=1), batch_size=4)


def trainer(steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def l1_of(model: VQGAN) -> float:
    batch = FixedBatches(False)[0]["image"][None]
    model.eval()
    with torch.no_grad():
        recon, _, _ = model(batch)
    model.train()  # Lightning keeps the modes modules have when fit starts
    return (recon - batch).abs().mean().item()


@pytest.fixture(scope="module")
def codebook_checkpoint(tmp_path_factory) -> Path:
    """A stage-1 checkpoint trained for a few steps, saved as Lightning saves it."""
    torch.manual_seed(0)
    model = VQGAN(**TINY_VQGAN, disc_start=2)
    fit = trainer(3, limit_val_batches=0)
    fit.fit(model, datamodule=RandomFrames(pairs=False))
    path = tmp_path_factory.mktemp("vqgan") / "last.ckpt"
    fit.save_checkpoint(path)
    return path


def test_vqgan_one_batch_fit_reduces_reconstruction_error() -> None:
    # 40 GAN + VQ steps amplify thread-order differences in float sums: one thread keeps the
    # run the same on every machine (with 1 thread the error falls to 0.55x, with 2 to 0.71x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = VQGAN(**TINY_VQGAN, disc_start=35)
        before = l1_of(model)
        trainer(40, limit_val_batches=1).fit(model, datamodule=RandomFrames(pairs=False))
        after = l1_of(model)
    finally:
        torch.set_num_threads(threads)
    assert after < 0.75 * before, (before, after)
    assert int(model.train_batches) == 40
    # the discriminator started after disc_start batches: 35 generator steps + 5 x (generator + discriminator)
    assert model.trainer.global_step == 35 + 2 * 5
    logged = model.trainer.logged_metrics
    assert {"val/psnr", "val/perplexity", "val/codebook_usage", "train/d_loss", "train/g_gan"} <= set(logged)
    assert 1.0 <= logged["val/perplexity"] <= 16 and 0 < logged["val/codebook_usage"] <= 1


class StepIsolation(L.Callback):
    """Snapshots parameters at every optimizer step to see what each step changed."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict, dict]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        index = trainer.optimizers.index(optimizer)
        params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in pl_module.named_parameters()}
        self.records.append((index, params, grads))

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.records.append((-1, {n: p.detach().clone() for n, p in pl_module.named_parameters()}, {}))


@pytest.mark.parametrize("stage", ["vqgan", "vqig"])
def test_gan_step_updates_only_its_own_parameters(stage: str, codebook_checkpoint: Path) -> None:
    torch.manual_seed(0)
    if stage == "vqgan":
        model = VQGAN(**TINY_VQGAN, disc_start=0)
        generator_prefix = "autoencoder."
    else:
        model = VQIG(**TINY_VQIG, codebook_checkpoint=str(codebook_checkpoint), disc_start=0)
        generator_prefix = "net."
    spy = StepIsolation()
    trainer(1, limit_train_batches=1, limit_val_batches=0, callbacks=[spy]).fit(
        model, datamodule=RandomFrames(pairs=stage == "vqig")
    )
    (g_index, at_g, g_grads), (d_index, at_d, d_grads), (_, at_end, _) = spy.records
    assert (g_index, d_index) == (0, 1)

    def is_disc(name: str) -> bool:
        return name.startswith("loss.discriminator.")

    # gradients of each step reach only its own side
    assert any(g_grads[n] for n in g_grads if n.startswith(generator_prefix))
    assert not any(g_grads[n] for n in g_grads if is_disc(n))
    assert any(d_grads[n] for n in d_grads if is_disc(n))
    assert not any(d_grads[n] for n in d_grads if not is_disc(n))
    # the generator step (between the two snapshots) changed the generator and not the discriminator
    changed_by_g = {n for n in at_g if not torch.equal(at_g[n], at_d[n])}
    changed_by_d = {n for n in at_d if not torch.equal(at_d[n], at_end[n])}
    assert changed_by_g and all(not is_disc(n) for n in changed_by_g)
    assert changed_by_d and all(is_disc(n) for n in changed_by_d)
    if stage == "vqig":
        assert not any(n.startswith("net.autoencoder.") for n in changed_by_g), "the codebook model is frozen"


def code_scores(model: VQIG, batch: dict) -> tuple[float, float]:
    """Cross-entropy and accuracy of the predicted codes against the codes of the encoded targets."""
    model.eval()
    with torch.no_grad():
        out = model(batch["source"], batch["target_exp"], batch["target_pose"])
        codes = model.net.autoencoder.encode_indices(batch["target"]).flatten(1)  # (B, n)
    model.train()
    ce = torch.nn.functional.cross_entropy(out["logits"].transpose(1, 2), codes).item()
    return ce, (out["logits"].argmax(-1) == codes).float().mean().item()


def test_vqig_one_batch_fit_with_frozen_codebook(codebook_checkpoint: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    stage1 = torch.load(codebook_checkpoint, weights_only=False)["state_dict"]
    model = VQIG(**TINY_VQIG, codebook_checkpoint=str(codebook_checkpoint), disc_start=20)
    model.load_codebook(codebook_checkpoint)
    batch = next(iter(RandomFrames(pairs=True).train_dataloader()))
    ce_before, _ = code_scores(model, batch)
    fit = trainer(25, limit_val_batches=1)
    fit.fit(model, datamodule=RandomFrames(pairs=True))
    # the codebook model is the stage-1 one, untouched by training (weights and EMA codebook)
    for name, value in model.net.autoencoder.state_dict().items():
        torch.testing.assert_close(value, stage1[f"autoencoder.{name}"], msg=name)
    ce_after, accuracy = code_scores(model, batch)
    codes = model.net.autoencoder.encode_indices(batch["target"]).flatten()
    majority = (codes == codes.mode().values).float().mean().item()
    assert ce_after < ce_before - 0.1, (ce_before, ce_after)
    assert accuracy > 2 * majority, f"code accuracy {accuracy:.2f}, most frequent code alone {majority:.2f}"
    assert {"val/psnr", "val/ssim", "val/code_ce", "train/d_loss"} <= set(fit.logged_metrics)
    model.eval()
    with torch.no_grad():
        single = model.net(batch["source"][:1].expand(4, -1, -1, -1), batch["target_exp"], batch["target_pose"])

    # a VQIG checkpoint renders alone, without the stage-1 file
    path = tmp_path / "vqig.ckpt"
    fit.save_checkpoint(path)
    reloaded = VQIG.load_from_checkpoint(path, codebook_checkpoint=str(tmp_path / "gone.ckpt"))
    frames = reloaded.render(batch["source"][0], batch["target_exp"], batch["target_pose"], batch_size=3)
    assert frames.shape == (4, 3, RES, RES) and frames.abs().max() <= 1
    # batching over the sequence does not change frames
    one_by_one = torch.cat(
        [
            reloaded.render(batch["source"][0], batch["target_exp"][i : i + 1], batch["target_pose"][i : i + 1])
            for i in range(4)
        ]
    )
    torch.testing.assert_close(frames, one_by_one, atol=1e-5, rtol=1e-4)
    # the reloaded model renders what the trained one does for the same source
    torch.testing.assert_close(frames, single["image"].clamp(-1, 1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("flag", ["use_warp", "use_fusion", "use_cross_attention", "use_codebook"])
def test_vqig_ablation_fits_one_batch(flag: str, codebook_checkpoint: Path) -> None:
    torch.manual_seed(0)
    model = VQIG(**TINY_VQIG, codebook_checkpoint=str(codebook_checkpoint), disc_start=1, **{flag: False})
    fit = trainer(2, limit_val_batches=1)
    fit.fit(model, datamodule=RandomFrames(pairs=True))
    assert torch.isfinite(fit.logged_metrics["train/loss"])
    assert ("val/code_ce" in fit.logged_metrics) == (flag != "use_codebook")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"codebook_size": 32}, ["codebook_size=16", "codebook_size=32"]),
        ({"codebook_dim": 16, "num_heads": 2}, ["codebook_dim=8", "codebook_dim=16"]),
        ({"resolution": 64, "ch_mult": (1, 2, 2)}, ["resolution=32", "resolution=64"]),
    ],
)
def test_vqig_refuses_a_mismatched_codebook(override: dict, named: list[str], codebook_checkpoint: Path) -> None:
    # refused where the stage-1 file is read: at construction when it exists, when training starts if not
    with pytest.raises(CodebookMismatchError) as error:
        VQIG(**{**TINY_VQIG, **override}, codebook_checkpoint=str(codebook_checkpoint))
    model = VQIG(**{**TINY_VQIG, **override}, codebook_checkpoint=None)
    with pytest.raises(CodebookMismatchError) as late:
        model.load_codebook(codebook_checkpoint)
    for message in (str(error.value), str(late.value)):
        assert str(codebook_checkpoint) in message
        for text in named:
            assert text in message
    assert not bool(model.codebook_loaded)


def test_vqig_missing_codebook_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    model = VQIG(**TINY_VQIG, codebook_checkpoint=str(tmp_path / "runs" / "last.ckpt"))
    with pytest.raises(FileNotFoundError, match="train stage 1 first"):
        trainer(1).fit(model, datamodule=RandomFrames(pairs=True))


#: The generator's own arguments: the codebook's architecture comes from the stage-1 checkpoint.
VQIG_ONLY = {k: v for k, v in TINY_VQIG.items() if k != "resolution" and not k.startswith("codebook_")}


def test_vqig_reads_the_codebook_architecture_from_the_stage1_checkpoint(codebook_checkpoint: Path, tmp_path: Path):
    # a config that instantiates before stage 1 has run: the generator is built when training starts
    later = tmp_path / "stage1" / "last.ckpt"
    model = VQIG(**VQIG_ONLY, codebook_checkpoint=str(later), disc_start=10**6)
    assert model.net is None and model.hparams.codebook_size is None
    later.parent.mkdir()
    later.write_bytes(codebook_checkpoint.read_bytes())
    fit = trainer(1, limit_train_batches=1, limit_val_batches=0)
    fit.fit(model, datamodule=RandomFrames(pairs=True))
    stage1 = torch.load(codebook_checkpoint, weights_only=False)
    for key, name in (
        ("resolution", "resolution"),
        ("codebook_size", "codebook_size"),
        ("ch_mult", "codebook_ch_mult"),
    ):
        assert list(np.atleast_1d(model.hparams[name])) == list(np.atleast_1d(stage1["hyper_parameters"][key]))
    for name, value in model.net.autoencoder.state_dict().items():
        torch.testing.assert_close(value, stage1["state_dict"][f"autoencoder.{name}"], msg=name)
    # the VQIG checkpoint carries the architecture: it rebuilds and renders without the stage-1 file
    path = tmp_path / "vqig.ckpt"
    fit.save_checkpoint(path)
    later.unlink()
    reloaded = VQIG.load_from_checkpoint(path)
    batch = next(iter(RandomFrames(pairs=True).train_dataloader()))
    frames = reloaded.render(batch["source"][0], batch["target_exp"], batch["target_pose"])
    model.eval()
    with torch.no_grad():
        expected = model.net(batch["source"][:1], batch["target_exp"], batch["target_pose"])["image"].clamp(-1, 1)
    torch.testing.assert_close(frames, expected, atol=1e-5, rtol=1e-4)


def test_vqig_without_any_codebook_architecture_says_what_to_give() -> None:
    with pytest.raises(
        ValueError, match="codebook_checkpoint.*or give resolution, codebook_channels, codebook_ch_mult"
    ):
        VQIG(**VQIG_ONLY, use_codebook=False)


def test_vqig_given_codebook_arguments_are_checked_against_the_checkpoint(codebook_checkpoint: Path) -> None:
    with pytest.raises(CodebookMismatchError, match="codebook_size=16.*configured for codebook_size=32"):
        VQIG(**VQIG_ONLY, codebook_size=32, codebook_checkpoint=str(codebook_checkpoint))


def test_vqig_checks_dataset_dims(codebook_checkpoint: Path) -> None:
    card = DatasetCard(name="other", exp_dim=E + 1, pose_dim=P, coefficient_source="synthetic", frame_size=RES)
    model = VQIG(**TINY_VQIG, codebook_checkpoint=str(codebook_checkpoint))
    with pytest.raises(DatasetError, match="exp_dim=5 but the dataset has 6"):
        trainer(1).fit(model, datamodule=RandomFrames(pairs=True, card=card))


def test_vqgan_names_a_bad_batch() -> None:
    model = VQGAN(**TINY_VQGAN)
    with pytest.raises(ValueError, match=r"batch\['image'\] has shape \(2, 3, 64, 64\)"):
        model(torch.zeros(2, 3, 64, 64))


def test_vqig_source_encoder_options_reach_the_net(codebook_checkpoint: Path) -> None:
    from flowvq.nn.vq_autoencoder import AttentionBlock

    def source_encoder(**options):
        return VQIG(**VQIG_ONLY, codebook_checkpoint=str(codebook_checkpoint), **options).net.source_encoder

    default, chosen = source_encoder(), source_encoder(norm_groups=1, source_attention=False)
    assert any(isinstance(m, AttentionBlock) for m in default.modules())
    assert not any(isinstance(m, AttentionBlock) for m in chosen.modules())
    assert {m.num_groups for m in chosen.modules() if isinstance(m, torch.nn.GroupNorm)} == {1}
    assert max(m.num_groups for m in default.modules() if isinstance(m, torch.nn.GroupNorm)) > 1
