"""GMEG: one-batch fits, the Python API's shapes, smooth blends, locality in time, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from flowvq.data.card import DatasetCard, DatasetError
from flowvq.datamodules import CoefficientDataModule
from flowvq.lightning_modules.gmeg import GMEG
from flowvq.nn.gmeg import temporal_noise
from flowvq.pipeline.flow_samples import check_module_against_data_card

TINY = dict(
    latent_dim=8,
    audio_features=16,
    audio_hidden=16,
    hidden=32,
    layers=1,
    heads=2,
    attention_window=8,
    coder_hidden=32,
    coder_blocks=2,
    val_samples=2,
    val_sample_batches=1,
    embedding_batches=1,
)


def quiet_trainer(tmp_path, **options) -> Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return Trainer(**{**defaults, **options})


@pytest.fixture(scope="module")
def data(named_random_dataset) -> CoefficientDataModule:
    return CoefficientDataModule(named_random_dataset, window=16, prev_frames=0, batch_size=4)


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory) -> GMEG:
    """A GMEG after a few steps on the random dataset (its card read, as after training)."""
    torch.manual_seed(0)
    model = GMEG(**data.dims, **TINY)
    quiet_trainer(tmp_path_factory.mktemp("gmeg_fit"), max_steps=3, limit_val_batches=0).fit(model, datamodule=data)
    return model.eval()


@pytest.fixture(scope="module")
def mel(data) -> torch.Tensor:
    data.setup("test")
    return next(iter(data.test_dataloader()))["mel"][0]  # (16, C, M)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_one_batch_fit_trains_every_parameter(data, tmp_path, precision):
    torch.manual_seed(0)
    model = GMEG(**data.dims, **TINY)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0, precision=precision)
    trainer.fit(model, datamodule=data)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    # every parameter takes part in the loss (DDP needs that) and moved
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v.detach(), before[k])]
    assert not unchanged, unchanged
    assert int(model.mel_columns) == data.mel_channels
    assert int(model.jaw_index) == 0  # the card's "jaw_open"
    assert int(model.noise_rho_steps) == 1 and (model.noise_rho >= 0).all()


def test_fitting_lowers_the_loss_of_a_held_out_batch(data, tmp_path):
    torch.manual_seed(0)
    model = GMEG(**data.dims, **TINY, lr=3e-3)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))

    def loss() -> float:
        torch.manual_seed(1)
        return float(model.eval()._loss(batch)["loss"])

    before = loss()
    quiet_trainer(tmp_path, max_steps=30, limit_val_batches=0).fit(model, datamodule=data)
    assert loss() < before - 0.2, (before, loss())


def test_validation_logs_samples_and_interpolation_metrics(data, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from flowvq.lightning_modules.emotion_classifier import EmotionClassifier

    torch.manual_seed(0)
    classifier = EmotionClassifier(exp_dim=16, num_emotions=8, hidden=16, layers=1)
    path = tmp_path / "classifier.ckpt"
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(classifier, datamodule=data)
    Trainer.save_checkpoint(classifier.trainer, path)
    model = GMEG(**data.dims, **TINY, emotion_classifier=str(path), interpolation_steps=5)
    logger = TensorBoardLogger(tmp_path, name="gmeg")
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0, logger=logger)
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data, verbose=False)
    metrics = trainer.callback_metrics
    for name in (
        "val/loss",
        "val/ratio",
        "val/lipsync_samples",
        "val/emotion_accuracy_samples",
        "val/eppl",
        "val/epdv",
    ):
        assert name in metrics and math.isfinite(float(metrics[name])), name
    run = next((tmp_path / "gmeg").glob("version_*"))
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert "val/blend_strips" in events.Tags()["images"]  # a strip of samples per blend
    assert {"val/eppl", "val/epdv"} <= set(events.Tags()["scalars"])
    assert (run / "projector_config.pbtxt").is_file()  # z_gm per window, labelled by emotion


def test_sample_interpolate_and_latent_shapes(fitted, mel):
    t, z_dim, e = mel.shape[0], fitted.hparams.latent_dim, fitted.features
    assert fitted.sample(mel, emotion="happy", intensity=2, num_samples=8, seed=0).shape == (8, t, e)
    assert fitted.sample(mel, emotion_weights={"happy": 0.7, "surprised": 0.3}, num_samples=3).shape == (3, t, e)
    assert fitted.sample(mel[None].expand(2, -1, -1, -1), emotion="sad", num_samples=3).shape == (2, 3, t, e)
    assert fitted.interpolate(mel, "sad", "happy", steps=9, seed=0).shape == (9, t, e)
    z = fitted.latent(mel, emotion="happy", num_samples=4, seed=1)
    assert z.shape == (4, t, z_dim)
    # sample decodes exactly the latents latent() returns
    assert torch.allclose(fitted.decode(z), fitted.sample(mel, emotion="happy", num_samples=4, seed=1))
    # a real clip's latent (posterior mean), for training the head generator
    assert fitted.latent(mel, exp=torch.zeros(t, e)).shape == (1, t, z_dim)
    # seeded draws repeat; other seeds differ
    a, b = fitted.sample(mel, emotion="fear", seed=3), fitted.sample(mel, emotion="fear", seed=3)
    assert torch.equal(a, b) and not torch.equal(a, fitted.sample(mel, emotion="fear", seed=4))
    assert fitted.sample(mel, emotion="happy", denormalize=True).shape == (8, t, e)


def test_blends_move_smoothly_between_emotions(fitted, mel):
    path = fitted.interpolate(mel, "sad", "happy", steps=9, seed=0, temperature=1.0)
    steps = (path[1:] - path[:-1]).flatten(1).norm(dim=1)  # (8,)
    # an even pace: a draw that picked one component or the other would put the whole change
    # into one step (max / mean = 8)
    assert steps.max() < 2.0 * steps.mean(), steps
    assert (path[-1] - path[0]).norm() > 0
    # each step is the sample of that blend with the same seed: blends are points of the path
    mid = fitted.sample(mel, emotion_weights={"sad": 0.5, "happy": 0.5}, num_samples=1, seed=0, temperature=1.0)
    assert torch.allclose(mid[0], path[4], atol=1e-5)
    ends = fitted.sample(mel, emotion="happy", num_samples=1, seed=0, temperature=1.0)
    assert torch.allclose(ends[0], path[-1], atol=1e-5)


def test_intensity_moves_weight_towards_neutral(fitted):
    strong = fitted.emotion_weights("happy", 2)
    weak = fitted.emotion_weights("happy", 0)
    assert strong[5] == 1.0 and weak[5] == pytest.approx(0.5) and weak[0] == pytest.approx(0.5)
    labels, levels = torch.tensor([5, 0, -1, 6]), torch.tensor([0, 1, -1, 2])
    fitted.train()
    w = fitted.training_weights(labels, levels)
    fitted.eval()
    assert torch.allclose(w.sum(1), torch.ones(4))
    assert 0.375 <= float(w[0, 5]) <= 0.625 and float(w[0, 0]) == pytest.approx(1 - float(w[0, 5]))
    assert torch.equal(w[1], torch.nn.functional.one_hot(torch.tensor(0), 8).float())  # neutral stays one-hot
    assert torch.allclose(w[2], torch.full((8,), 1 / 8))  # unknown emotion: uniform
    assert float(w[3, 6]) >= 0.875


def test_generation_is_local_in_time(fitted, mel):
    """A long clip is generated in one pass; a frame does not depend on audio a second away,
    so whole clips and minutes of speech behave like the training windows."""
    long = mel.repeat(12, 1, 1)  # 192 frames
    changed = long.clone()
    changed[120:] = torch.randn_like(changed[120:])
    a = fitted.sample(long, emotion="happy", num_samples=2, seed=0)
    b = fitted.sample(changed, emotion="happy", num_samples=2, seed=0)
    assert torch.isfinite(a).all() and a.shape == (2, 192, fitted.features)
    assert torch.allclose(a[:, :40], b[:, :40], atol=1e-5)
    assert not torch.allclose(a[:, 130:], b[:, 130:])


def test_temporal_noise_has_unit_variance_and_the_asked_correlation():
    rho = torch.tensor([0.0, 0.5, 0.9])
    x = temporal_noise((64, 400, 3), rho, torch.Generator().manual_seed(0))
    assert torch.allclose(x.std((0, 1)), torch.ones(3), atol=0.05)
    lag1 = (x[:, 1:] * x[:, :-1]).mean((0, 1)) / x.pow(2).mean((0, 1))
    assert torch.allclose(lag1, rho, atol=0.03), lag1


def test_bad_emotion_input_is_refused_with_the_valid_names(fitted, mel):
    with pytest.raises(ValueError, match=r"unknown emotion 'joyful'.*neutral, angry, contempt"):
        fitted.sample(mel, emotion="joyful")
    with pytest.raises(ValueError, match=r"unknown emotion 'joyful'.*neutral"):
        fitted.sample(mel, emotion_weights={"happy": 0.5, "joyful": 0.5})
    with pytest.raises(ValueError, match=r">= 0.*'sad': -0.2"):
        fitted.sample(mel, emotion_weights={"happy": 1.2, "sad": -0.2})
    with pytest.raises(ValueError, match="sum to 0"):
        fitted.sample(mel, emotion_weights={"happy": 0.0})
    with pytest.raises(ValueError, match="one weight per emotion"):
        fitted.sample(mel, emotion_weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="either emotion"):
        fitted.sample(mel, emotion="happy", emotion_weights={"sad": 1.0})
    with pytest.raises(ValueError, match="intensity must be a level in 0..2"):
        fitted.sample(mel, emotion="happy", intensity=3)
    with pytest.raises(ValueError, match=r"mel must be \[T, 20, 80\]"):
        fitted.sample(mel[:, :10])
    # weights that do not sum to one are normalised, and the user is told
    with pytest.warns(UserWarning, match=r"sum to 2, not 1: normalised to \{happy: 0.5, surprised: 0.5\}"):
        halves = fitted.sample(mel, emotion_weights={"happy": 1.0, "surprised": 1.0}, seed=2)
    assert torch.allclose(halves, fitted.sample(mel, emotion_weights={"happy": 0.5, "surprised": 0.5}, seed=2))


def test_checkpoint_and_data_with_other_dims_are_refused(data, tmp_path, named_random_dataset):
    dims = {**data.dims, "exp_dim": 12}
    model = GMEG(**dims, **TINY)
    with pytest.raises(DatasetError, match=r"exp_dim=12 but the dataset has 16"):
        quiet_trainer(tmp_path, max_steps=1).fit(model, datamodule=data)
    with pytest.raises(DatasetError, match=r"GMEG checkpoint.*exp_dim=12 but the dataset has 16"):
        check_module_against_data_card(model, DatasetCard.load(named_random_dataset), named_random_dataset)


def test_checkpoint_round_trip_keeps_samples(fitted, mel, tmp_path):
    path = tmp_path / "gmeg.ckpt"
    torch.save({"state_dict": fitted.state_dict(), "hyper_parameters": dict(fitted.hparams)}, path)
    checkpoint = torch.load(path, weights_only=False)
    loaded = GMEG(**checkpoint["hyper_parameters"])
    loaded.load_state_dict(checkpoint["state_dict"])
    loaded.eval()
    assert torch.equal(loaded.noise_rho, fitted.noise_rho) and int(loaded.mel_columns) == int(fitted.mel_columns)
    assert torch.allclose(loaded.sample(mel, emotion="sad", seed=0), fitted.sample(mel, emotion="sad", seed=0))
