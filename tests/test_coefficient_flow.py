"""ExpFlow / PoseFlow LightningModule: fits, sampling, seeds, intensity, transfer, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from flowvq.data.card import AudioFeatures, DatasetCard, DatasetError, Stats
from flowvq.lightning_modules.coefficient_flow import CoefficientFlow
from flowvq.pipeline.flow_samples import plot_samples

E, P, M, KP, C = 5, 3, 8, 4, 10  # exp dims, pose dims, mel bins, previous frames, mel columns
EXP_NAMES = ["jaw_open", "smile", "blink", "frown", "brow_raise"]
EMOTION_DIMS = [1, 3, 4]  # the dims emotions move (not the jaw, not the blink)
SMALL = dict(
    exp_dim=E,
    pose_dim=P,
    mel_bins=M,
    mel_per_frame=2,
    num_emotions=8,
    prev_frames=2,
    audio_features=16,
    audio_hidden=16,
    recurrent_hidden=32,
    flow_layers=3,
    coupling_hidden=32,
    coupling_blocks=1,
    lr=3e-3,
    val_samples=3,
    embedding_batches=2,
)
EXPFLOW = dict(SMALL, field="exp", prior="student_t_mixture", data_dropout=0.2)
POSEFLOW = dict(SMALL, field="pose", prior="gaussian", extra_exp_names=["blink"])


def _templates() -> torch.Tensor:
    """Per-emotion expression offsets (neutral: none), strong enough to tell emotions apart."""
    g = torch.Generator().manual_seed(0)
    templates = 1.5 * torch.randn(8, E, generator=g)
    templates[0] = 0
    templates[:, [0, 2]] = 0  # the jaw follows the audio only; blinks are emotion-free
    return templates


def structured_batch(
    b: int = 16, w: int = 16, seed: int = 0, emotion: torch.Tensor | None = None, intensity: int | None = None
) -> dict:
    """A batch in the CoefficientDataModule format where the jaw follows the audio energy and
    every emotion adds its template (scaled by intensity) to the expression."""
    g = torch.Generator().manual_seed(seed)
    n = w + KP
    emotion = torch.randint(0, 8, (b,), generator=g) if emotion is None else emotion
    intensity = torch.randint(0, 3, (b,), generator=g) if intensity is None else torch.full((b,), intensity)
    energy = torch.sigmoid(3 * torch.cumsum(0.5 * torch.randn(b, n, generator=g), 1).sin())  # (B, N)
    mel = 2 * energy[..., None, None] - 1 + 0.1 * torch.randn(b, n, C, M, generator=g)
    scale = (intensity.float() + 1) / 3
    exp = _templates()[emotion][:, None] * scale[:, None, None] + 0.3 * torch.randn(b, n, E, generator=g)
    exp[..., 0] = 2 * energy - 1 + 0.1 * torch.randn(b, n, generator=g)
    exp[..., 2] = (torch.rand(b, n, generator=g) < 0.1).float() * 2 - 0.2  # blinks
    pose = torch.cumsum(0.1 * torch.randn(b, n, P, generator=g), 1)
    return {
        "exp": exp[:, KP:],
        "pose": pose[:, KP:],
        "mel": mel[:, KP:],
        "energy": energy[:, KP:],
        "prev_exp": exp[:, :KP],
        "prev_pose": pose[:, :KP],
        "prev_mask": torch.ones(b, KP, dtype=torch.bool),
        "mask": torch.ones(b, w, dtype=torch.bool),
        "emotion": emotion,
        "intensity": intensity,
        "start": torch.full((b,), KP),
        "clip_id": [f"clip{i}" for i in range(b)],
    }


def _card(exp_dim: int = E) -> DatasetCard:
    return DatasetCard(
        name="structured",
        exp_dim=exp_dim,
        pose_dim=P,
        coefficient_source="synthetic",
        audio=AudioFeatures(n_mels=M, mel_per_frame=2),
        exp_names=EXP_NAMES[:exp_dim] if exp_dim <= len(EXP_NAMES) else [],
        stats=Stats([0.5] * exp_dim, [2.0] * exp_dim, [0.0] * P, [1.0] * P, [0.0] * M, [1.0] * M),
    )


class BatchData(LightningDataModule):
    """A DataModule that serves fixed batches and carries a dataset card."""

    def __init__(self, batches: list[dict], card: DatasetCard | None = None, prev_frames: int = KP) -> None:
        super().__init__()
        self.batches = batches
        self.card = card or _card()
        self.prev_frames = prev_frames
        self.root = "structured"

    def _loader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


def quiet_trainer(**options) -> Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or summary, plus ``options``."""
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return Trainer(**{**defaults, "enable_model_summary": False, **options})


def _trainer(tmp_path: Path, steps: int, logger: bool = False) -> Trainer:
    return Trainer(
        max_epochs=steps,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(tmp_path, name="flow") if logger else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=steps,
        default_root_dir=tmp_path,
    )


def _fit(options: dict, tmp_path: Path, steps: int = 25, logger: bool = False) -> tuple[CoefficientFlow, float, float]:
    torch.manual_seed(0)
    model = CoefficientFlow(**options)
    batch = structured_batch()
    data = BatchData([batch])
    model.read_card(data.card)
    before = model.nll(batch).item()
    _trainer(tmp_path, steps, logger).fit(model, datamodule=data)
    return model, before, model.eval().nll(batch).item()


# -- one-batch fits ----------------------------------------------------------------------------


def test_expflow_fits_one_batch_and_logs_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, before, after = _fit(EXPFLOW, tmp_path, logger=True)
    assert after < before - 0.3, (before, after)
    run = next((tmp_path / "flow").glob("version_*"))
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("val/nll", "val/diversity", "val/gt_spread", "val/lipsync_samples", "val/lipsync_truth"):
        assert tag in scalars, (tag, scalars)
    assert "val/trajectories" in events.Tags()["images"]
    assert (run / "projector_config.pbtxt").is_file()  # latents per emotion
    diversity = events.Scalars("val/diversity")[-1].value
    assert diversity > 0.01  # samples for the same audio and label differ
    # the jaw of the data follows the energy (how well samples do is measured in benchmarks/)
    assert events.Scalars("val/lipsync_truth")[-1].value > 0.9
    assert -1 <= events.Scalars("val/lipsync_samples")[-1].value <= 1


def test_poseflow_fits_one_batch_with_blink(tmp_path):
    model, before, after = _fit(POSEFLOW, tmp_path)
    assert after < before - 0.3, (before, after)
    assert model.features == P + 1
    assert model.extra_index.tolist() == [EXP_NAMES.index("blink")]
    x, prev = model.select(structured_batch())
    torch.testing.assert_close(x[..., P], structured_batch()["exp"][..., 2])
    assert prev.shape == (16, KP, P + 1)
    # the card's statistics of the modelled dims are kept for un-normalising
    torch.testing.assert_close(model.coef_std, torch.tensor([1.0, 1.0, 1.0, 2.0]))  # pose, then blink


# -- sampling ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def expflow() -> CoefficientFlow:
    torch.manual_seed(0)
    model = CoefficientFlow(**EXPFLOW).eval()
    with torch.no_grad():  # distinct component locations, as after training
        model.net.prior.loc.normal_(0, 1.5)
    return model


def test_sample_shapes(expflow):
    mel = structured_batch(b=2, w=12)["mel"]
    assert expflow.sample(mel[0], emotion="happy", intensity=2, num_samples=8, temperature=0.8).shape == (8, 12, E)
    assert expflow.sample(mel, emotion=3, num_samples=5).shape == (2, 5, 12, E)
    assert expflow.sample(mel[0], emotion=None, num_samples=3).shape == (3, 12, E)
    assert expflow.sample(mel[0], num_samples=2, prev=torch.randn(KP, E)).shape == (2, 12, E)


def test_seeds_and_temperature(expflow):
    mel = structured_batch(b=1, w=10)["mel"][0]
    a = expflow.sample(mel, "angry", seed=1)
    torch.testing.assert_close(a, expflow.sample(mel, "angry", seed=1))
    assert not torch.allclose(a, expflow.sample(mel, "angry", seed=2))
    assert a.std(0).mean() > 0.01  # samples of one call differ from one another
    cold = expflow.sample(mel, "angry", temperature=0.0, seed=1)
    torch.testing.assert_close(cold, expflow.sample(mel, "angry", temperature=0.0, seed=7))
    torch.testing.assert_close(cold[0], cold[-1])  # temperature 0: one deterministic sequence
    hot = expflow.sample(mel, "angry", temperature=1.0, seed=3)
    warm = expflow.sample(mel, "angry", temperature=0.3, seed=3)
    assert hot.std(0).mean() > warm.std(0).mean()


def test_unknown_emotion_lists_the_valid_ones(expflow):
    mel = structured_batch(b=1, w=4)["mel"][0]
    with pytest.raises(ValueError, match="neutral, angry, contempt"):
        expflow.sample(mel, emotion="bored")
    with pytest.raises(ValueError, match="intensity"):
        expflow.sample(mel, emotion="happy", intensity=5)


def test_higher_intensity_moves_samples_further_from_neutral(expflow):
    mel = structured_batch(b=1, w=16)["mel"][0]
    neutral = expflow.sample(mel, "neutral", num_samples=16, seed=0)
    distances = []
    for level in range(3):
        x = expflow.sample(mel, "surprised", intensity=level, num_samples=16, seed=0)
        distances.append((x - neutral).norm(dim=-1).mean().item())
    assert distances[0] < distances[1] < distances[2], distances
    exaggerated = expflow.sample(mel, "surprised", intensity_scale=2.0, num_samples=16, seed=0)
    assert (exaggerated - neutral).norm(dim=-1).mean().item() > distances[2]
    zero = expflow.sample(mel, "surprised", intensity_scale=0.0, num_samples=16, seed=0)
    torch.testing.assert_close(zero, neutral)


def test_denormalize_uses_the_card_statistics(expflow):
    mel = structured_batch(b=1, w=4)["mel"][0]
    with torch.no_grad():
        expflow.coef_mean.fill_(3.0)
        expflow.coef_std.fill_(2.0)
    try:
        raw = expflow.sample(mel, "happy", seed=0, denormalize=True)
        torch.testing.assert_close(raw, expflow.sample(mel, "happy", seed=0) * 2 + 3)
    finally:
        with torch.no_grad():
            expflow.coef_mean.zero_()
            expflow.coef_std.fill_(1.0)


# -- emotion transfer ----------------------------------------------------------------------------


def _nearest_template(x: torch.Tensor) -> torch.Tensor:
    """Emotion of each sequence ``[..., T, E]`` by its nearest template (the jaw left out)."""
    centroids = _templates()[:, EMOTION_DIMS]  # intensity level 2 scales templates by 1
    mean = x[..., EMOTION_DIMS].mean(-2)  # (..., 3)
    return torch.cdist(mean.reshape(-1, len(EMOTION_DIMS)), centroids).argmin(-1).reshape(mean.shape[:-1])


def test_emotion_transfer_reproduces_the_reference_emotion():
    """Samples generated from a reference clip's latent code show the reference's emotion far
    more often than label-free samples do (scored by the nearest emotion template)."""
    torch.manual_seed(0)
    # whole-window dropout makes the prior, not the history, carry the emotion
    model = CoefficientFlow(**dict(EXPFLOW, data_dropout=0.5, data_dropout_mode="sequence", lr=1e-2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(100):
        loss = model.nll(structured_batch(b=32, w=12, seed=100 + step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    emotions = torch.arange(1, 8)
    reference = structured_batch(b=7, w=24, seed=999, emotion=emotions, intensity=2)
    assert (_nearest_template(reference["exp"]) == emotions).all()  # the references are clear
    transferred, free = [], []
    for i in range(len(emotions)):
        code = model.encode(reference["exp"][i], reference["mel"][i])
        transferred.append(model.sample(reference["mel"][i], code=code, num_samples=8, seed=i))
        free.append(model.sample(reference["mel"][i], emotion=None, num_samples=8, seed=i))
    labels = emotions[:, None].expand(-1, 8)
    transfer_accuracy = (_nearest_template(torch.stack(transferred)) == labels).float().mean().item()
    free_accuracy = (_nearest_template(torch.stack(free)) == labels).float().mean().item()
    assert transfer_accuracy > free_accuracy + 0.3, (transfer_accuracy, free_accuracy)
    # the code of a single reference frame works too
    code = model.encode(reference["exp"][0, 5])
    assert code.z.shape == (E,) and code.frames.shape == (1, E)
    torch.testing.assert_close(code.posterior.sum(), torch.tensor(1.0))


# -- checkpoints and dimensions ------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_samples(tmp_path):
    model, _, _ = _fit(EXPFLOW, tmp_path, steps=2)
    trainer = _trainer(tmp_path, 1)
    trainer.strategy.connect(model)
    path = tmp_path / "expflow.ckpt"
    trainer.save_checkpoint(path)
    loaded = CoefficientFlow.load_from_checkpoint(path).eval()
    mel = structured_batch(b=1, w=8)["mel"][0]
    torch.testing.assert_close(loaded.sample(mel, "sad", seed=4), model.sample(mel, "sad", seed=4))
    torch.testing.assert_close(loaded.coef_std, model.coef_std)


def test_dims_mismatch_fails_with_a_clear_message(tmp_path):
    model = CoefficientFlow(**dict(EXPFLOW, exp_dim=8))
    with pytest.raises(DatasetError, match="exp_dim=8 but the dataset has 5"):
        _trainer(tmp_path, 1).fit(model, datamodule=BatchData([structured_batch()]))


def test_too_few_previous_frames_in_the_data(tmp_path):
    model = CoefficientFlow(**dict(EXPFLOW, prev_frames=6))
    with pytest.raises(ValueError, match="prev_frames >= 6"):
        _trainer(tmp_path, 1).fit(model, datamodule=BatchData([structured_batch()], prev_frames=KP))


def test_missing_blink_dim_is_named(tmp_path):
    model = CoefficientFlow(**dict(POSEFLOW, extra_exp_names=["eye_blink"]))
    with pytest.raises(DatasetError, match="eye_blink"):
        _trainer(tmp_path, 1).fit(model, datamodule=BatchData([structured_batch()]))


def test_missing_sizes_say_where_they_come_from():
    with pytest.raises(ValueError, match="dataset card"):
        CoefficientFlow(field="exp", mel_bins=M)


def test_poseflow_pretrain_then_finetune(tmp_path):
    pretrained, _, _ = _fit(POSEFLOW, tmp_path / "pre", steps=3)
    path = tmp_path / "pre.ckpt"
    trainer = _trainer(tmp_path, 1)
    trainer.strategy.connect(pretrained)
    trainer.save_checkpoint(path)
    finetuned = CoefficientFlow(**dict(POSEFLOW, init_from=str(path), lr=1e-12))
    _trainer(tmp_path / "fine", 1).fit(finetuned, datamodule=BatchData([structured_batch(seed=1)]))
    for (name, a), b in zip(pretrained.net.state_dict().items(), finetuned.net.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    wrong = CoefficientFlow(**dict(POSEFLOW, init_from=str(path), flow_layers=2))
    with pytest.raises(ValueError, match="flow_layers"):
        _trainer(tmp_path / "wrong", 1).fit(wrong, datamodule=BatchData([structured_batch()]))


def test_generated_frames_stay_within_the_output_clip():
    torch.manual_seed(0)
    model = CoefficientFlow(**dict(EXPFLOW, output_clip=3.0)).eval()
    with torch.no_grad():  # a wild flow: large random weights everywhere
        for p in model.net.flow.parameters():
            p.add_(torch.randn_like(p))
    x = model.sample(structured_batch(b=1, w=24)["mel"][0], "fear", num_samples=4, temperature=5.0)
    assert torch.isfinite(x).all() and x.abs().max() <= 3.0


# -- through the real DataModule and the emotion classifier ----------------------------------------


@pytest.mark.parametrize("field", ["exp", "pose"])
def test_fit_on_shards_through_the_coefficient_datamodule(field, random_dataset, tmp_path):
    """One epoch of two batches on litdata shards, sized from the dataset card."""
    from flowvq.datamodules import CoefficientDataModule

    data = CoefficientDataModule(random_dataset, window=8, prev_frames=4, batch_size=4)
    options = {**SMALL, **data.dims, "field": field, "prior": "student_t_mixture" if field == "exp" else "gaussian"}
    model = CoefficientFlow(**options)
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["val/nll"])
    assert trainer.callback_metrics["val/diversity"] > 0
    # the validation windows joined and sampled whole: figures of what a long sample does
    for name in ("val/long_tail_fraction", "val/long_clamp_fraction", "val/long_drift_growth"):
        assert torch.isfinite(trainer.callback_metrics[name]), name
    # the card's train statistics came with the model, for un-normalising its samples
    stats = data.card.stats
    expected = stats.exp_std if field == "exp" else stats.pose_std
    torch.testing.assert_close(model.coef_std, torch.tensor(expected))
    # the demo's figure of samples for two emotions, from the saved checkpoint
    path = tmp_path / "flow.ckpt"
    trainer.save_checkpoint(path)
    png = plot_samples(path, random_dataset, tmp_path / "samples.png", num_samples=2, frames=60)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_validation_scores_samples_with_the_emotion_classifier(tmp_path):
    from flowvq.lightning_modules.emotion_classifier import EmotionClassifier

    classifier = EmotionClassifier(exp_dim=E, num_emotions=8, hidden=16, layers=1)
    trainer = _trainer(tmp_path, 1)
    trainer.strategy.connect(classifier)
    path = tmp_path / "classifier.ckpt"
    trainer.save_checkpoint(path)
    model, _, _ = _fit(dict(EXPFLOW, emotion_classifier=str(path)), tmp_path / "flow", steps=1)
    score = model.trainer.callback_metrics["val/emotion_accuracy_samples"]
    assert 0.0 <= float(score) <= 1.0
    wrong = CoefficientFlow(**dict(EXPFLOW, emotion_classifier=str(tmp_path / "missing.ckpt")))
    with pytest.raises(FileNotFoundError, match="emotion_classifier"):
        _trainer(tmp_path / "wrong", 1).fit(wrong, datamodule=BatchData([structured_batch()]))


@pytest.mark.parametrize("budget", [{"max_steps": 9, "max_epochs": -1}, {"max_epochs": 3}])
def test_cosine_schedule_spans_the_run_in_steps_or_epochs(budget, random_dataset, tmp_path):
    """Under max_steps (max_epochs -1) the rate decays once over those steps, not over one epoch."""
    from flowvq.datamodules import CoefficientDataModule

    data = CoefficientDataModule(random_dataset, window=8, prev_frames=4, windows_per_clip=1, batch_size=4)
    model = CoefficientFlow(**{**SMALL, **data.dims, "lr": 1e-3, "val_sample_batches": 0})
    rates = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = quiet_trainer(
        **budget,
        limit_val_batches=0,
        callbacks=[Record()],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert len(rates) == 9  # 12 clips, 4 per batch: 3 steps an epoch
    assert rates[0] == pytest.approx(1e-3)
    assert all(b < a for a, b in zip(rates, rates[1:])), rates  # one monotone decay, no restart per epoch
    final = trainer.optimizers[0].param_groups[0]["lr"]
    assert final == pytest.approx(0.05e-3, rel=1e-3), "ends at eta_min after the run's last step"


def test_encode_and_sample_use_the_mel_windows_training_used(random_dataset, tmp_path):
    """A silent reference is encoded with training's (2c+1)K-column window; other shapes are refused."""
    from flowvq.datamodules import CoefficientDataModule

    data = CoefficientDataModule(random_dataset, window=8, prev_frames=4, windows_per_clip=1, batch_size=4)
    model = CoefficientFlow(**{**SMALL, **data.dims, "val_sample_batches": 0, "jaw_dim": 0})
    trainer = quiet_trainer(
        max_steps=1,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    columns = (2 * data.audio_context + 1) * data.card.audio.mel_per_frame  # 5 x 4
    assert int(model.mel_columns) == columns
    seen = []
    handle = model.net.audio.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    model.encode(torch.zeros(5, model.features))  # no audio: a silent reference frame
    handle.remove()
    assert seen[-1][2] == columns, seen
    with pytest.raises(ValueError, match=f"\\[T, {columns}, "):
        model.sample(torch.zeros(6, data.card.audio.mel_per_frame, model.hparams.mel_bins), "happy")


def test_unnamed_expression_dims_need_a_jaw_dim_for_lipsync(random_dataset):
    """PCA-like data names no dims: lip-sync is not scored on dim 0 silently, and jaw_dim sets it."""
    from flowvq.datamodules import CoefficientDataModule

    card = CoefficientDataModule(random_dataset).card
    assert not card.exp_names
    model = CoefficientFlow(**{**SMALL, **card.dims()})
    with pytest.warns(UserWarning, match="jaw_dim"):
        model.read_card(card)
    assert int(model.jaw_index) == -1
    chosen = CoefficientFlow(**{**SMALL, **card.dims(), "jaw_dim": 3})
    chosen.read_card(card)
    assert int(chosen.jaw_index) == 3
    with pytest.raises(ValueError, match="jaw_dim=99"):
        CoefficientFlow(**{**SMALL, **card.dims(), "jaw_dim": 99}).read_card(card)


def test_finetune_keeps_the_pretrained_units_when_the_data_normalise_otherwise(tmp_path):
    """PoseFlow pretrained on LRS3-normalised pose, fine-tuned on MEAD-normalised pose: the same
    raw motion reaches the loaded network in the units it was trained in (same likelihood)."""
    pretrained, _, _ = _fit(POSEFLOW, tmp_path / "pre", steps=3)
    pretrained.eval()
    path = tmp_path / "pre.ckpt"
    trainer = _trainer(tmp_path, 1)
    trainer.strategy.connect(pretrained)
    trainer.save_checkpoint(path)
    batch = structured_batch(seed=2)
    mean_a, std_a = pretrained.coef_mean.clone(), pretrained.coef_std.clone()
    # the same raw coefficients, normalised with other statistics (another corpus)
    mean_b, std_b = mean_a + 0.4, std_a * 1.7
    d = pretrained.features

    def renormalised(values: torch.Tensor, dims: slice | list) -> torch.Tensor:
        raw = values * std_a[dims] + mean_a[dims]
        return (raw - mean_b[dims]) / std_b[dims]

    other = dict(batch)
    pose_dims = list(range(P))
    for key in ("pose", "prev_pose"):
        other[key] = renormalised(batch[key], pose_dims)
    blink = int(pretrained.extra_index[0])
    for key in ("exp", "prev_exp"):
        other[key] = batch[key].clone()
        other[key][..., blink] = renormalised(batch[key][..., blink], [d - 1])
    finetuned = CoefficientFlow(**dict(POSEFLOW, init_from=str(path)))
    finetuned.read_card(BatchData([batch]).card)
    finetuned.coef_mean.copy_(mean_b)
    finetuned.coef_std.copy_(std_b)
    finetuned._initialise_from(str(path))
    finetuned.eval()
    torch.testing.assert_close(finetuned.nll(other), pretrained.nll(batch), atol=1e-4, rtol=1e-4)
    samples = finetuned.sample(other["mel"][0], num_samples=2, seed=0, denormalize=True)
    reference = pretrained.sample(batch["mel"][0], num_samples=2, seed=0, denormalize=True)
    torch.testing.assert_close(samples, reference, atol=1e-4, rtol=1e-4)
