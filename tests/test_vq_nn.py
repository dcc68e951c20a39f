"""Contract tests of the image-side parts: quantizer, warping, VQIG net, losses."""

from __future__ import annotations

import pytest
import torch

from flowvq.nn.discriminator import PatchDiscriminator
from flowvq.nn.perceptual import VGGPerceptual, ms_ssim, ssim
from flowvq.nn.quantizer import Quantizer, codebook_usage
from flowvq.nn.vq_autoencoder import VQAutoencoder
from flowvq.nn.vq_losses import VQLoss, adaptive_gan_weight, color_loss, hinge_d_loss
from flowvq.nn.vqig import CodebookAttention, VQIGNet
from flowvq.nn.warping import WarpingNetwork, warp

TINY_AE = dict(resolution=32, channels=8, ch_mult=(1, 2, 2), num_res_blocks=1, codebook_size=16, codebook_dim=8)


@pytest.mark.parametrize(
    "options",
    [{}, {"kmeans_init": True}, {"threshold_ema_dead_code": 2.0}, {"use_cosine_sim": True}, {"rotation_trick": False}],
)
@pytest.mark.parametrize("training", [True, False])
def test_quantizer_round_trip(options: dict, training: bool) -> None:
    torch.manual_seed(0)
    quantizer = Quantizer(dim=6, codebook_size=12, **options).train(training)
    z = torch.randn(3, 6, 5, 4, requires_grad=True)
    if options.get("kmeans_init"):
        quantizer.train()(z)  # k-means runs on the first training batch
        quantizer.train(training)
    used = quantizer.codebook.clone()  # a training forward moves the EMA codebook after its lookup
    quantized, commit, indices = quantizer(z)
    assert quantized.shape == z.shape and indices.shape == (3, 5, 4) and commit.ndim == 0
    # indices -> codes is the quantized output
    probe = Quantizer(dim=6, codebook_size=12, **options)
    probe.load_state_dict(quantizer.state_dict())
    probe.vq.codebook = used
    torch.testing.assert_close(probe.indices_to_codes(indices), quantized, atol=1e-5, rtol=1e-5)
    if not training:
        torch.testing.assert_close(quantizer.indices_to_codes(indices), quantized, atol=1e-5, rtol=1e-5)
    # nearest() finds the same entries without touching the codebook
    before = quantizer.codebook.clone()
    assert torch.equal(quantizer.nearest(z), quantizer.vq(z, freeze_codebook=True)[1])
    torch.testing.assert_close(quantizer.codebook, before)
    if training:
        quantized.sum().backward()
        assert z.grad is not None and z.grad.abs().sum() > 0


def test_quantizer_ema_moves_codebook_only_in_training() -> None:
    torch.manual_seed(0)
    quantizer = Quantizer(dim=4, codebook_size=8)
    z = torch.randn(2, 4, 4, 4)
    before = quantizer.codebook.clone()
    quantizer.eval()(z)
    torch.testing.assert_close(quantizer.codebook, before)
    quantizer.train()(z)
    assert not torch.allclose(quantizer.codebook, before)


def test_kmeans_init_waits_for_a_training_batch() -> None:
    torch.manual_seed(0)
    quantizer = Quantizer(dim=4, codebook_size=8, kmeans_init=True)
    before = quantizer.codebook.clone()
    codes, _, indices = quantizer.eval()(torch.randn(2, 4, 4, 4))  # e.g. Lightning's sanity validation
    torch.testing.assert_close(quantizer.codebook, before)
    torch.testing.assert_close(codes, quantizer.indices_to_codes(indices))
    quantizer.train()(torch.randn(2, 4, 4, 4) + 5.0)
    assert quantizer.codebook.mean() > 4.0  # initialised from the training batch


def test_codebook_usage() -> None:
    uniform = codebook_usage(torch.ones(8))
    collapsed = codebook_usage(torch.tensor([5, 0, 0, 0]))
    assert torch.isclose(uniform["perplexity"], torch.tensor(8.0)) and uniform["usage"] == 1.0
    assert torch.isclose(collapsed["perplexity"], torch.tensor(1.0)) and collapsed["usage"] == 0.25


def test_autoencoder_shapes_and_resolution_error() -> None:
    ae = VQAutoencoder(**TINY_AE)
    recon, _, indices = ae(torch.randn(2, 3, 32, 32))
    assert recon.shape == (2, 3, 32, 32) and indices.shape == (2, 8, 8) and ae.latent_size == 8
    torch.testing.assert_close(ae.eval().decode_indices(indices), ae.decode(ae.quantizer.indices_to_codes(indices)))
    with pytest.raises(ValueError, match=r"expected \(B, 3, 32, 32\)"):
        ae.check_images(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="not divisible"):
        VQAutoencoder(30, 8, (1, 2, 2), 1, True, 16, 8)


def test_warp_with_zero_flow_is_identity() -> None:
    features = torch.randn(2, 5, 7, 9)
    torch.testing.assert_close(warp(features, torch.zeros(2, 2, 7, 9)), features, atol=1e-5, rtol=1e-5)


def test_warp_shifts_by_one_pixel() -> None:
    features = torch.randn(1, 3, 6, 11)
    step = 2.0 / (11 - 1)  # one pixel in normalised x units
    flow = torch.zeros(1, 2, 6, 11)
    flow[:, 0] = step
    shifted = warp(features, flow)
    torch.testing.assert_close(shifted[..., :-1], features[..., 1:], atol=1e-5, rtol=1e-5)


def test_warping_network_starts_at_identity_and_learns() -> None:
    net = WarpingNetwork(channels=8, motion_dim=4, hidden=8)
    features = torch.randn(2, 8, 6, 6)
    warped, flow = net(features, torch.randn(2, 4))
    assert torch.all(flow == 0)
    torch.testing.assert_close(warped, features, atol=1e-5, rtol=1e-5)
    warped.pow(2).mean().backward()
    assert net.out[-1].weight.grad.abs().sum() > 0


def test_codebook_attention_soft_and_hard() -> None:
    torch.manual_seed(0)
    attention = CodebookAttention(dim=8, num_heads=2)
    codebook = torch.randn(16, 8)
    logits, soft, hard = attention(torch.randn(2, 8, 3, 3), codebook)
    assert logits.shape == (2, 9, 16) and soft.shape == hard.shape == (2, 8, 3, 3)
    # hard codes are codebook rows chosen by the logits' argmax
    chosen = codebook[logits.argmax(-1)]  # (B, n, D)
    torch.testing.assert_close(hard.flatten(2).transpose(1, 2), chosen)
    # a very sharp attention makes the soft lookup a codebook mixture inside its range
    assert soft.abs().max() <= codebook.abs().max() + 1e-5


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"use_warp": False},
        {"use_fusion": False},
        {"use_cross_attention": False},
        {"use_codebook": False},
    ],
)
def test_vqig_net_gradients_reach_trainable_parts_only(flags: dict) -> None:
    torch.manual_seed(0)
    ae = VQAutoencoder(**TINY_AE)
    net = VQIGNet(
        ae, exp_dim=5, pose_dim=6, channels=8, ch_mult=(1, 2, 2), feature_dim=16, motion_dim=8, num_heads=2, **flags
    )
    net.train()
    assert not ae.training, "the codebook autoencoder stays in eval mode"
    out = net(torch.randn(2, 3, 32, 32), torch.randn(2, 5), torch.randn(2, 6))
    assert out["image"].shape == (2, 3, 32, 32)
    assert ("logits" in out) == flags.get("use_codebook", True)
    assert ("flow" in out) == flags.get("use_warp", True)
    loss = out["image"].pow(2).mean() + (out["logits"].logsumexp(-1).mean() if "logits" in out else 0)
    loss.backward()
    for name, param in net.named_parameters():
        if name.startswith("autoencoder."):
            assert param.grad is None, f"{name} of the frozen codebook model got a gradient"
    trainable = [n for n, p in net.named_parameters() if not n.startswith("autoencoder.")]
    without_grad = [n for n in trainable if dict(net.named_parameters())[n].grad is None]
    # zero-initialised heads (flow, AdaIN) get gradients; nothing trainable is disconnected
    assert not without_grad, without_grad


def test_vqig_net_refuses_a_mismatched_source_encoder() -> None:
    with pytest.raises(ValueError, match="latent grid"):
        VQIGNet(VQAutoencoder(**TINY_AE), 5, 6, channels=8, ch_mult=(1, 2), feature_dim=16, motion_dim=8)


def test_motion_encoder_names_bad_dims() -> None:
    net = VQIGNet(VQAutoencoder(**TINY_AE), 5, 6, channels=8, ch_mult=(1, 2, 2), feature_dim=16, motion_dim=8)
    with pytest.raises(ValueError, match=r"exp has shape \(2, 4\), expected \(B, 5\)"):
        net(torch.randn(2, 3, 32, 32), torch.randn(2, 4), torch.randn(2, 6))


def test_adaptive_weight_is_finite_and_positive() -> None:
    torch.manual_seed(0)
    ae = VQAutoencoder(**TINY_AE)
    disc = PatchDiscriminator(channels=8, num_layers=2)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, _, _ = ae(images)
    weight = adaptive_gan_weight((recon - images).abs().mean(), -disc(recon).mean(), ae.last_layer)
    assert torch.isfinite(weight) and weight > 0 and not weight.requires_grad


def test_hinge_loss() -> None:
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)) == 1


def test_vq_loss_gan_starts_at_disc_start() -> None:
    torch.manual_seed(0)
    loss = VQLoss(disc_start=3, disc_channels=8, disc_layers=2)
    ae = VQAutoencoder(**TINY_AE)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, commit, _ = ae(images)
    _, before = loss.generator_loss(images, recon, step=2, extra_loss=commit, last_layer=ae.last_layer)
    _, after = loss.generator_loss(images, recon, step=3, extra_loss=commit, last_layer=ae.last_layer)
    assert "g_gan" not in before and "g_gan" in after
    assert {"l1", "ms_ssim_loss", "feature_match"} <= set(before)  # the documented fallback
    d_loss, _ = loss.discriminator_loss(images, recon)
    assert d_loss.requires_grad and torch.isfinite(d_loss)


def test_ssim_and_ms_ssim() -> None:
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(2))
    noisy = (x + 0.5 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.all(ms_ssim(x, noisy) < 0.9) and torch.all(ssim(x, noisy) < 0.9)


def _ssim_with_a_2d_window(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM written out the textbook way: images in [0, 1], five 2-D Gaussian convolutions, valid region."""
    x, y = (x + 1) / 2, (y + 1) / 2
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[1], 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return value.flatten(1).mean(1)


def test_ssim_equals_the_textbook_form_and_ignores_autocast() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    reference = _ssim_with_a_2d_window(x, y)
    torch.testing.assert_close(ssim(x, y), reference, atol=1e-5, rtol=1e-5)
    multi = ms_ssim(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(ssim(x, y), reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ms_ssim(x, y), multi, atol=1e-5, rtol=1e-5)
    # the luminance term needs non-negative intensities: the same images scored in [0, 1]
    torch.testing.assert_close(ssim((x + 1) / 2, (y + 1) / 2, value_range=(0.0, 1.0)), reference)
    with pytest.raises(ValueError, match="value_range"):
        ssim(x, y, value_range=(1.0, -1.0))


def test_color_loss_sees_a_colour_cast_that_ms_ssim_misses() -> None:
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8) * 1.6 - 0.8, size=64, mode="bilinear")
    cast = x + torch.tensor([0.1, -0.1, 0.1]).view(1, 3, 1, 1)  # a purple cast, 0.1 per channel
    texture = x + 0.1 * torch.sign(torch.randn_like(x))  # zero-mean texture error, the same L1
    torch.testing.assert_close((cast - x).abs().mean(), (texture - x).abs().mean())
    assert ms_ssim(cast, x).min() > ms_ssim(texture, x).max()  # MS-SSIM: the cast is the smaller error
    assert color_loss(x, cast) > 5 * color_loss(x, texture)  # the colour term: the cast is the error
    assert color_loss(x, x) == 0
    with pytest.raises(ValueError, match="color_weight"):
        VQLoss(color_weight=-1.0)
    loss = VQLoss(color_weight=1.0, disc_channels=8, disc_layers=2)
    _, logs = loss.generator_loss(x, cast, step=0)
    torch.testing.assert_close(logs["color"], color_loss(x, cast))


def test_generator_loss_runs_the_discriminator_once_per_image_batch() -> None:
    """Feature matching and the GAN term share one pass on the generated images."""
    torch.manual_seed(0)
    loss = VQLoss(disc_start=0, disc_channels=8, disc_layers=2)
    calls = []
    loss.discriminator.register_forward_hook(lambda module, args, out: calls.append(torch.is_grad_enabled()))
    ae = VQAutoencoder(**TINY_AE)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, commit, _ = ae(images)
    total, logs = loss.generator_loss(images, recon, step=0, extra_loss=commit, last_layer=ae.last_layer)
    assert {"feature_match", "g_gan"} <= set(logs)
    assert sorted(calls) == [False, True]  # real features without a graph, generated images with one
    total.backward()
    assert ae.last_layer.grad is not None


def test_codes_reach_the_decoder_in_nchw() -> None:
    """The codebook lookup comes back channels-last from the library; GroupNorm is slow on that layout."""
    ae = VQAutoencoder(**TINY_AE).train()
    quantized, _, indices = ae.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert quantized.is_contiguous()
    assert ae.quantizer.indices_to_codes(indices).is_contiguous()
    attention = CodebookAttention(8, num_heads=2)
    _, soft, hard = attention(torch.randn(2, 8, 4, 4), torch.randn(16, 8))
    assert soft.is_contiguous() and hard.is_contiguous()


def test_vgg_perceptual_loads_a_local_file(tmp_path) -> None:
    torch.manual_seed(0)
    with pytest.raises(FileNotFoundError, match="perceptual weights"):
        VGGPerceptual(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="lack VGG16 features"):
        VGGPerceptual(bad)
    # A state dict with torchvision's key layout, from a freshly initialised trunk.
    from flowvq.nn import perceptual

    layers, width = [], 3
    for item in perceptual._VGG16:
        if item == "M":
            layers.append(torch.nn.MaxPool2d(2))
        else:
            layers += [torch.nn.Conv2d(width, item, 3, padding=1), torch.nn.ReLU()]
            width = item
    state = {f"features.{k}": v for k, v in torch.nn.Sequential(*layers).state_dict().items()}
    state["lin0.model.1.weight"] = torch.full((1, 64, 1, 1), 0.5)
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    net = VGGPerceptual(path)
    torch.testing.assert_close(net.features[0].weight, state["features.0.weight"])
    assert torch.all(net.lins[0] == 0.5)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert net(x, x) == 0
    y = x.clone().requires_grad_(True)
    distance = net(x, (y + 0.3).clamp(-1, 1))
    distance.backward()
    assert distance > 0 and y.grad is not None
    assert all(p.grad is None for p in net.parameters())


def test_nearest_code_logits_of_a_cosine_codebook_can_choose_codes() -> None:
    """Without cross-attention the code logits are cosine similarities, bounded in [-1, 1]: the net's
    learnt scale lets the code cross-entropy fall below the floor those bounds put on it."""
    torch.manual_seed(0)
    ae = VQAutoencoder(**TINY_AE, use_cosine_sim=True).eval()
    net = VQIGNet(
        ae, 5, 6, channels=8, ch_mult=(1, 2, 2), feature_dim=16, motion_dim=8, num_heads=2, use_cross_attention=False
    )
    source, exp, pose = torch.randn(4, 3, 32, 32), torch.randn(4, 5), torch.randn(4, 6)
    targets = torch.randint(0, 16, (4, 64))  # 8 x 8 grid
    bounded_floor = torch.log(torch.tensor(1 + 15 * torch.e**-2.0)).item()  # best CE with logits in [-1, 1]
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(net(source, exp, pose)["logits"].transpose(1, 2), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * bounded_floor, (loss.item(), bounded_floor)
    assert net.log_logit_scale.exp() > 10.0
