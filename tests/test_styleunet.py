"""GMTalker's image side: condition maps, the StyleUNet, the EMN and the head generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowvq.data.card import DatasetCard, DatasetError
from flowvq.data.face import IBUG68_FROM_FACEMESH, ExpressionBasis, pose_from_landmarks
from flowvq.data.face import rotation_from_euler as rotation_np
from flowvq.data.shards import write_dataset
from flowvq.datamodules import FrameDataModule, FramePairDataModule
from flowvq.datamodules.frames import held_out_clip
from flowvq.nn.condition_maps import (
    CONTOUR_GROUPS,
    PCALandmarkDecoder,
    QuadraticLandmarkDecoder,
    rasterize_contours,
    rotation_from_euler,
)
from flowvq.nn.emotion_mapping import MappingNetwork, StyleEncoder, conditional_mmd
from flowvq.nn.styleunet import ModulatedConv2d, StyleUNet

TINY_HEAD = dict(
    resolution=64,
    channels=8,
    ch_mult=(1, 2, 2),
    max_channels=16,
    latent_dim=4,
    style_dim=8,
    hidden_dim=16,
    shared_layers=1,
    branch_layers=2,
    disc_channels=8,
    disc_layers=1,
    log_images=2,
    log_video_frames=4,
)


def quiet_trainer(tmp_path: Path, **kwargs):
    import lightning as L

    options = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**options, **kwargs})


# ---------------------------------------------------------------- condition maps


def test_contours_are_anti_aliased_lines_in_their_own_channels():
    points = torch.full((1, 68, 2), 1000.0)  # off the image
    points[0, 0:17, 0] = torch.linspace(10.0, 50.0, 17)  # the jaw: a horizontal line at y = 20.5
    points[0, 0:17, 1] = 20.5
    maps = rasterize_contours(points, 64)
    assert maps.shape == (1, len(CONTOUR_GROUPS), 64, 64)
    assert maps.min() >= 0 and maps.max() <= 1
    jaw = maps[0, 0]
    assert jaw[20, 15:45].min() > 0.95  # on the line (pixel centres at y = 20.5)
    assert jaw[18, 15:45].max() < 0.05 and jaw[23, 15:45].max() < 0.05  # two pixels away: nothing
    assert maps[0, 1:].sum() == 0  # the other channels are empty
    half = rasterize_contours(points + torch.tensor([0.0, 0.5]), 64)[0, 0]  # between two pixel rows
    assert torch.allclose(half[20, 15:45], half[21, 15:45], atol=0.05) and 0.3 < float(half[20, 30]) < 0.7
    wide = rasterize_contours(points * 4, 256)[0, 0]  # 4x the size: a line about 4 px wide
    assert wide[80:84, 80:180].min() > 0.5


def test_torch_rotation_matches_the_preprocessing_convention():
    angles = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.4, -0.3]], dtype=torch.float64)
    ours = rotation_from_euler(angles[:, 0], angles[:, 1], angles[:, 2])
    theirs = rotation_np(angles[:, 0].numpy(), angles[:, 1].numpy(), angles[:, 2].numpy())
    assert np.allclose(ours.numpy(), theirs, atol=1e-10)


def test_pca_decoder_inverts_the_mediapipe_pca_coefficients_exactly():
    """Round trip: 478-point shapes -> Procrustes pose + PCA expression (as preprocessing computes
    them) -> the decoder -> the shapes' 68 iBUG points in crop pixels. The basis keeps every
    component here, so encoding loses nothing and the decoder must give the points back exactly;
    a truncated basis adds only the PCA's own residual."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(478, 3))
    reference -= reference.mean(0)
    neutral = reference + 0.02 * rng.normal(size=(478, 3))
    offsets = 0.05 * rng.normal(size=(1500, 478, 3))  # full rank: the basis spans every shape
    basis = ExpressionBasis.fit(offsets, reference, {"spk": neutral}, exp_dim=478 * 3)
    yaw, pitch, roll = rng.uniform(-0.4, 0.4, size=(3, 30))
    scale, shift = rng.uniform(0.8, 1.2, size=30), rng.normal(scale=0.1, size=(30, 3))
    local = neutral + 0.05 * rng.normal(size=(30, 478, 3))
    shapes = scale[:, None, None] * np.einsum("tij,tnj->tni", rotation_np(yaw, pitch, roll), local) + shift[:, None]
    pose, normalised = pose_from_landmarks(shapes, basis.reference)
    exp = basis.encode(normalised, "spk")
    rows = np.array(IBUG68_FROM_FACEMESH)
    columns = (rows[:, None] * 3 + np.arange(3)).ravel()
    decoder = PCALandmarkDecoder(basis.components[:, columns], basis.offset_mean[columns], neutral[rows], 64)
    decoded = decoder(torch.from_numpy(exp), torch.from_numpy(pose)).numpy()
    expected = (shapes[:, rows, :2] + 1) * 32  # crop units -> pixels of a 64 px crop
    assert np.abs(decoded - expected).max() < 1e-2  # float32 through pose and basis
    # the pose matters: decoding with the identity pose misses by pixels
    still = np.tile(np.array([0, 0, 0, 0, 0, 1], dtype=np.float32), (30, 1))
    assert np.abs(decoder(torch.from_numpy(exp), torch.from_numpy(still)).numpy() - expected).max() > 1


def test_fitted_decoder_recovers_a_quadratic_map_and_names_both_widths():
    torch.manual_seed(0)
    exp, pose = torch.randn(400, 4), torch.randn(400, 3)
    x = torch.cat([exp, pose], -1)
    truth = (x @ torch.randn(7, 136) + (x[:, :1] * x[:, 4:5]) @ torch.randn(1, 136)).unflatten(-1, (68, 2))
    decoder = QuadraticLandmarkDecoder(4, 3, 64).fit(exp[:300], pose[:300], truth[:300], ridge=1e-8)
    assert (decoder(exp[300:], pose[300:]) - truth[300:]).abs().max() < 1e-2
    with pytest.raises(ValueError, match="exp of width 4 .* got 5"):
        decoder(torch.randn(2, 5), torch.randn(2, 3))


# ---------------------------------------------------------------- nets


def test_modulated_conv_shapes_demodulation_and_per_sample_weights():
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, style_dim=4, upsample=True)
    torch.nn.init.normal_(conv.affine.weight)
    x, style = torch.randn(3, 6, 8, 8), torch.randn(3, 4)
    out = conv(x, style)
    assert out.shape == (3, 5, 16, 16)
    weight = conv.modulated_weight(style)  # (B, O, I, k, k)
    assert weight.shape == (3, 5, 6, 3, 3)
    assert torch.allclose(weight.pow(2).sum((2, 3, 4)), torch.ones(3, 5), atol=1e-4)  # demodulated
    # the grouped convolution is each sample's own convolution
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    for b in range(3):
        own = F.conv2d(up[b : b + 1], weight[b], padding=1) + conv.bias[None, :, None, None]
        assert torch.allclose(out[b : b + 1], F.leaky_relu(own, 0.2) * 2**0.5, atol=1e-5)
    # demodulation removes a global scale of the modulation
    with torch.no_grad():
        conv.affine.weight.mul_(3.0)
        conv.affine.bias.mul_(3.0)
    assert torch.allclose(conv(x, style), out, atol=1e-5)
    rgb = ModulatedConv2d(6, 3, 1, style_dim=4, demodulate=False, activate=False)
    assert rgb(x, style).shape == (3, 3, 8, 8)


def test_styleunet_renders_frames_with_and_without_z_gm():
    net = StyleUNet(6, style_dim=8, channels=8, ch_mult=(1, 2, 2), z_gm_dim=3)
    maps, style = torch.rand(2, 6, 32, 32), torch.randn(2, 8)
    assert net(maps, style).shape == (2, 3, 32, 32)
    assert not torch.equal(net(maps, style, torch.ones(2, 3)), net(maps, style))  # z_gm is an input
    assert not torch.equal(net(maps, style), net(maps, torch.randn(2, 8)))  # the style modulates
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(1, 6, 30, 30), style[:1])


def test_mapping_network_branches_blend_and_refuse_bad_weights():
    torch.manual_seed(0)
    net = MappingNetwork(latent_dim=4, style_dim=6, hidden_dim=16, num_emotions=8, shared_layers=2, branch_layers=2)
    z = torch.randn(5, 4)
    branches = net.branches(z)  # (B, K, S)
    assert branches.shape == (5, 8, 6)
    one_hot = F.one_hot(torch.full((5,), 3), 8).float()
    assert torch.allclose(net(z, one_hot), branches[:, 3])
    blend = torch.zeros(5, 8)
    blend[:, 1], blend[:, 5] = 0.25, 0.75
    assert torch.allclose(net(z, blend), 0.25 * branches[:, 1] + 0.75 * branches[:, 5], atol=1e-6)
    with pytest.raises(ValueError, match="sum to 1"):
        net(z, torch.ones(5, 8))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        net(z, torch.ones(5, 7) / 7)


def test_conditional_mmd_is_zero_for_one_distribution_and_grows_with_a_shift():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat(16)
    real = torch.randn(64, 8) + labels[:, None]
    assert conditional_mmd(real, real.clone(), labels).abs() < 1e-6
    near = conditional_mmd(real, torch.randn(64, 8) + labels[:, None], labels)
    far = conditional_mmd(real, torch.randn(64, 8) + labels[:, None] + 3, labels)
    assert far > 3 * near
    # per emotion, not pooled: each emotion's codes placed where another emotion's lie are far,
    # though the codes of all emotions together have the same distribution
    swapped = torch.randn(64, 8) + ((labels + 1) % 4)[:, None]
    assert conditional_mmd(real, swapped, labels) > 3 * near


def test_style_encoder_refuses_other_sizes_and_unknown_heads():
    for head in StyleEncoder.HEADS:
        encoder = StyleEncoder(32, style_dim=4, channels=(4, 8), head=head)
        assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 4)
        with pytest.raises(ValueError, match="image_size"):
            encoder(torch.randn(1, 3, 64, 64))
    assert StyleEncoder(33, style_dim=4, channels=(4, 8))(torch.randn(1, 3, 33, 33)).shape == (1, 4)  # odd side
    with pytest.raises(ValueError, match="spatial"):
        StyleEncoder(32, head="max")


def blob_frames(rows: list[int], size: int = 64) -> torch.Tensor:
    """Grey frames, each with one bright 4 x 6 px patch centred on a row, in the middle column."""
    frames = torch.full((len(rows), 3, size, size), -0.5)
    for i, row in enumerate(rows):
        frames[i, :, row - 2 : row + 2, size // 2 - 3 : size // 2 + 3] = 0.8
    return frames


def test_spatial_head_keeps_where_a_feature_is_and_mean_pooling_loses_it():
    # the same brow-like patch higher or lower on the face, far from the borders: global average
    # pooling of translation-equivariant features gives both the same code; the spatial head does not
    torch.manual_seed(0)
    frames = blob_frames([26, 38])
    mean = StyleEncoder(64, style_dim=8, channels=(4, 8), head="mean").eval()
    spatial = StyleEncoder(64, style_dim=8, channels=(4, 8), head="spatial").eval()
    with torch.no_grad():
        pooled, kept = mean(frames), spatial(frames)
    assert torch.allclose(pooled[0], pooled[1], atol=1e-5)
    assert (kept[0] - kept[1]).norm() > 100 * (pooled[0] - pooled[1]).norm().clamp_min(1e-7)


# ---------------------------------------------------------------- one speaker's frames


def test_speaker_filter_splits_by_take_within_the_speaker(random_dataset):
    dm = FramePairDataModule(random_dataset, batch_size=2, pairs_per_clip=1, speaker="spk0", holdout_every=4)
    dm.setup("fit")
    ids = {}
    for part in ("train", "val"):
        dataset = dm.loader(part).dataset
        ids[part] = [dataset[i][0]["clip_id"] for i in range(len(dataset))]
    assert ids["train"] and ids["val"] and set(ids["train"]).isdisjoint(ids["val"])
    assert len(ids["train"]) + len(ids["val"]) == 4  # spk0's clips in the random dataset
    assert all(int(c.rsplit("_", 1)[1]) % 4 == 0 for c in ids["val"])
    assert not any(int(c.rsplit("_", 1)[1]) % 4 == 0 for c in ids["train"])
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["speaker"]) == {"spk0"} and batch["source"].shape == (2, 3, 64, 64)
    assert held_out_clip("no_number_here", 4, 2) and not held_out_clip("M001_happy_level1_007", 0, 5)


def test_unknown_speaker_lists_the_speakers(random_dataset):
    dm = FrameDataModule(random_dataset, batch_size=2, frames_per_clip=1, speaker="M003")
    with pytest.raises(ValueError, match="speaker='M003' is not in the dataset.*spk0, spk1, spk2, spk3, spk4"):
        dm.setup("fit")


def _constant_landmarks(clip):
    from conftest import random_record

    record = random_record(clip)
    record["landmarks"] = np.zeros_like(record["landmarks"])
    return record


def test_shards_without_landmarks_are_refused_naming_the_field(tmp_path):
    from conftest import RandomClip

    from flowvq.lightning_modules.styleunet import read_fit_frames

    clips = [RandomClip(f"train_{i:03d}", "spk0", "train", 12, i, i % 8, 0) for i in range(2)]
    card = DatasetCard(
        name="no_landmarks",
        exp_dim=16,
        pose_dim=6,
        coefficient_source="deep3dfacerecon",
        frame_size=64,
        fields=["blink", "gaze"],
    )
    write_dataset(tmp_path, {"train": clips}, _constant_landmarks, card)
    with pytest.raises(DatasetError, match="field 'landmarks'"):
        read_fit_frames(tmp_path, [("train", 0), ("train", 1)], 64)


# ---------------------------------------------------------------- LightningModules


def test_emotion_mapping_network_fits_one_batch(random_dataset, tmp_path):
    from flowvq.lightning_modules.emotion_mapping import EmotionMappingNetwork

    model = EmotionMappingNetwork(
        resolution=64, num_emotions=8, latent_dim=4, style_dim=8, hidden_dim=16, shared_layers=1, branch_layers=1,
        encoder_channels=(4, 8), lr=1e-2,
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = FrameDataModule(random_dataset, batch_size=8, frames_per_clip=2)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    after = model.state_dict()
    for part in ("mapping.", "encoder.", "classifier."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(part)), part
    assert "val/acc_mapped" in trainer.callback_metrics and "val/mmd" in trainer.callback_metrics


def test_emotion_mapping_network_learns_an_emotion_shown_by_position():
    # emotion e is a patch at row 8 + 2e: the encoder must read where it is, and the EMN must
    # then map each emotion to codes the classifier calls e (the MMD pairing)
    from flowvq.lightning_modules.emotion_mapping import EmotionMappingNetwork

    torch.manual_seed(0)
    model = EmotionMappingNetwork(
        resolution=32, num_emotions=8, latent_dim=4, style_dim=8, hidden_dim=32, shared_layers=1, branch_layers=2,
        encoder_channels=(4, 8), encoder_head="spatial", lr=3e-3,
    )  # fmt: skip
    emotions = torch.arange(8).repeat(2)
    batch = {"image": blob_frames((8 + 2 * emotions).tolist(), size=32), "emotion": emotions}
    batch["image"] = batch["image"] + 0.05 * torch.randn_like(batch["image"])
    optimiser = model.configure_optimizers()
    for _ in range(60):
        loss, logs = model._step(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert logs["acc_encoder"] == 1.0
    _, logs = model._step(batch, torch.Generator().manual_seed(1))  # fresh noise
    assert logs["acc_mapped"] >= 0.9


@pytest.fixture(scope="module")
def fitted_head(random_dataset, tmp_path_factory):
    """A StyleUNetHead after one training batch on speaker spk1, saved as a checkpoint."""
    from flowvq.lightning_modules.styleunet import StyleUNetHead

    folder = tmp_path_factory.mktemp("styleunet")
    head = StyleUNetHead(exp_dim=16, pose_dim=6, num_emotions=8, **TINY_HEAD)
    # the root as a string, as the CLI gives it (a Path in the saved hparams needs weights_only=False)
    data = FramePairDataModule(str(random_dataset), batch_size=2, pairs_per_clip=1, speaker="spk1", holdout_every=4)
    from lightning.pytorch.loggers import TensorBoardLogger

    trainer = quiet_trainer(
        folder,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(folder, name="tb"),
    )
    before = {k: v.clone() for k, v in head.net.state_dict().items()}
    trainer.fit(head, datamodule=data)
    trainer.save_checkpoint(folder / "head.ckpt")
    return head, before, folder / "head.ckpt"


def test_styleunet_head_fits_one_batch_and_renders_from_its_checkpoint(fitted_head):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from flowvq.lightning_modules.styleunet import StyleUNetHead

    head, before, path = fitted_head
    (events,) = path.parent.rglob("events.out.tfevents.*")
    logged = EventAccumulator(str(events), size_guidance={"tensors": 0, "images": 0}).Reload().Tags()
    assert "val/condition_target_generated" in logged["images"], logged
    assert "val/truth_rendered" in logged["images"], "the validation clip (add_video) was not logged"
    changed = [k for k, v in head.net.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "the generator did not train"
    assert bool(head.decoder.fitted) and torch.isfinite(head.decoder_error).all()
    assert not any(p.requires_grad for p in head.emn.parameters()), "the EMN is frozen by default"
    loaded = StyleUNetHead.load_from_checkpoint(path, map_location="cpu")
    assert loaded.hparams.landmark_decoder == "fitted" and bool(loaded.decoder.fitted)
    exp, pose = torch.randn(5, 16), torch.randn(5, 6)
    frames = loaded.render(exp, pose, {"happy": 0.7, "surprised": 0.3})
    assert frames.shape == (5, 3, 64, 64) and frames.abs().max() <= 1
    assert torch.equal(frames, head.render(exp, pose, {"happy": 0.7, "surprised": 0.3}))
    assert not torch.equal(frames, loaded.render(exp, pose, "sad"))


def test_render_names_both_widths_and_refuses_unknown_emotions(fitted_head):
    head, _, _ = fitted_head
    with pytest.raises(ValueError, match="trained on E=16 coefficients, got width 12"):
        head.render(torch.randn(3, 12), torch.randn(3, 6), "happy")
    with pytest.raises(ValueError, match="unknown emotion 'joy'"):
        head.render(torch.randn(3, 16), torch.randn(3, 6), {"joy": 1.0})
    with pytest.raises(ValueError, match="z_gm_dim=0"):
        head.render(torch.randn(3, 16), torch.randn(3, 6), "happy", z_gm=torch.zeros(3, 4))


def test_head_styles_have_unit_size_whatever_the_emn_scale():
    # an EMN whose codes are 50x larger renders the same frames: the head keeps the codes' direction
    from flowvq.lightning_modules.styleunet import StyleUNetHead

    torch.manual_seed(0)
    head = StyleUNetHead(exp_dim=16, pose_dim=6, num_emotions=8, **TINY_HEAD).eval()
    weights, z = torch.eye(8)[[0, 5, 7]], torch.randn(3, TINY_HEAD["latent_dim"])
    style = head.style(weights, z)
    assert torch.allclose(style.pow(2).mean(-1), torch.ones(3), atol=1e-4)
    condition = torch.rand(3, len(CONTOUR_GROUPS), 64, 64)
    with torch.no_grad():
        before = head.net(condition, style, None)
        head.emn.branch_weights[-1].mul_(50.0)
        head.emn.branch_biases[-1].mul_(50.0)
        after = head.net(condition, head.style(weights, z), None)
    assert torch.allclose(before, after, atol=1e-4)


def test_head_refuses_an_emn_checkpoint_of_another_architecture(tmp_path):
    from flowvq.lightning_modules.emotion_mapping import EmotionMappingNetwork
    from flowvq.lightning_modules.styleunet import StyleUNetHead

    emn = EmotionMappingNetwork(resolution=32, num_emotions=8, latent_dim=4, style_dim=6, hidden_dim=16,
                                shared_layers=1, branch_layers=2, encoder_channels=(4,))  # fmt: skip
    import lightning as L

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(emn)
    trainer.save_checkpoint(tmp_path / "emn.ckpt")
    head = StyleUNetHead(exp_dim=16, pose_dim=6, num_emotions=8, **TINY_HEAD)
    with pytest.raises(ValueError, match="style_dim=6.*style_dim=8"):
        head.load_emn(tmp_path / "emn.ckpt")
    with pytest.raises(FileNotFoundError, match="emotion_mapping.yaml"):
        head.load_emn(tmp_path / "missing.ckpt")
