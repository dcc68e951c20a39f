"""The fast training paths give the reference paths' values (up to float rounding)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_vq_lightning import TINY_VQGAN, TINY_VQIG, FixedBatches
from torch import nn

from flowvq.lightning_modules.vqgan import VQGAN
from flowvq.lightning_modules.vqig import VQIG
from flowvq.nn.vq_autoencoder import GroupNorm
from flowvq.nn.vqig import CodebookAttention


def _attention_outputs(attention: CodebookAttention, fused: torch.Tensor, codebook: torch.Tensor, fast: bool):
    attention.fused_attention = fast
    fused = fused.detach().clone().requires_grad_(True)
    attention.zero_grad()
    logits, soft, hard = attention(fused, codebook)
    target = torch.arange(logits.shape[1]) % logits.shape[2]
    loss = F.cross_entropy(logits.flatten(0, 1), target.repeat(logits.shape[0])) + soft.pow(2).mean()
    loss.backward()
    return logits, soft, hard, fused.grad, attention.query.weight.grad.clone(), attention.key.weight.grad.clone()


def test_fused_codebook_attention_matches_the_reference() -> None:
    torch.manual_seed(0)
    attention = CodebookAttention(dim=16, num_heads=4, temperature=0.7)
    fused, codebook = torch.randn(3, 16, 4, 5), torch.randn(40, 16)
    fast = _attention_outputs(attention, fused, codebook, True)
    reference = _attention_outputs(attention, fused, codebook, False)
    for name, a, b in zip(("logits", "soft", "hard", "d fused", "d query", "d key"), fast, reference):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_fused_codebook_attention_is_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    attention = CodebookAttention(dim=8, num_heads=2)
    fused, codebook = torch.randn(2, 8, 3, 3), torch.randn(10, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, soft, _ = attention(fused, codebook)
    assert logits.dtype == soft.dtype == torch.float32
    reference_logits, reference_soft, _ = attention.forward_reference(fused, codebook)
    torch.testing.assert_close(logits, reference_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(soft, reference_soft, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 4])
def test_group_norm_keeps_channels_last_and_its_values(groups: int) -> None:
    torch.manual_seed(0)
    norm = GroupNorm(groups, 8, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 8, 5, 6)
    grads = []
    outputs = []
    for layout in (torch.contiguous_format, torch.channels_last):
        xi = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        y = norm(xi)
        assert y.is_contiguous(memory_format=layout)
        (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
        outputs.append(y.detach())
        grads.append(xi.grad)
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(grads[1], grads[0])


def _generator_step(model, batch: dict, stage: str, precision: str):
    """Generator loss (GAN terms on) and gradients of one step, as the LightningModules take it."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        if stage == "vqgan":
            recon, commit, _ = model.autoencoder(batch["image"])
            loss, _ = model.loss.generator_loss(batch["image"], recon, 1, commit, model.autoencoder.last_layer)
        else:
            loss, _, out = model._losses(batch, 1)
            recon = out["image"]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), recon.detach().float(), grads


def _model(stage: str, layout: bool):
    torch.manual_seed(0)
    common = dict(disc_start=0, channels_last=layout)
    if stage == "vqgan":
        return VQGAN(**TINY_VQGAN, norm_groups=1, **common)
    return VQIG(**TINY_VQIG, **common)


def _max_relative_error(grads: dict, reference: dict) -> float:
    """Largest gradient error, each tensor's relative to its own size, floored at 1e-3 of the largest
    gradient (a conv bias before an instance norm has a gradient that is zero but for rounding)."""
    floor = 1e-3 * max(float(g.abs().max()) for g in reference.values())
    return max(
        float((grads[n] - reference[n]).abs().max()) / max(float(reference[n].abs().max()), floor) for n in grads
    )


@pytest.mark.parametrize("stage", ["vqgan", "vqig"])
def test_channels_last_step_matches_nchw(stage: str) -> None:
    """float32: the NCHW values in another order; bfloat16: no further from float32 than NCHW's bfloat16."""
    batch = {k: v.unsqueeze(0).repeat(2, *[1] * v.ndim) for k, v in FixedBatches(stage == "vqig").items[0].items()}
    steps = {}
    for layout in (True, False):
        for precision in ("fp32", "bf16"):
            model = _model(stage, layout).train()
            steps[layout, precision] = _generator_step(model, batch, stage, precision)
            if layout:
                assert next(p for p in model.parameters() if p.ndim == 4).is_contiguous(
                    memory_format=torch.channels_last
                )
                assert steps[layout, precision][1].is_contiguous(memory_format=torch.channels_last)
            else:
                assert next(p for p in model.parameters() if p.ndim == 4).is_contiguous()
    loss, recon, grads = steps[True, "fp32"]
    ref_loss, ref_recon, ref_grads = steps[False, "fp32"]
    assert grads.keys() == ref_grads.keys() and grads
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(recon, ref_recon, rtol=1e-4, atol=1e-5)
    assert _max_relative_error(grads, ref_grads) < 1e-3
    (bf_loss, bf_recon, bf_grads), (nchw_loss, nchw_recon, nchw_grads) = steps[True, "bf16"], steps[False, "bf16"]
    assert (bf_recon - ref_recon).abs().max() <= 2 * (nchw_recon - ref_recon).abs().max() + 1e-3
    assert (bf_loss - ref_loss).abs() <= 2 * (nchw_loss - ref_loss).abs() + 1e-3
    assert _max_relative_error(bf_grads, ref_grads) <= 2 * _max_relative_error(nchw_grads, ref_grads) + 1e-3


def test_quantizer_looks_up_in_float32_under_bf16_autocast() -> None:
    """The nearest entry under CPU bf16 autocast is the float32 one (bf16 distances tie and flip)."""
    from flowvq.nn.quantizer import Quantizer

    torch.manual_seed(0)
    quantizer = Quantizer(16, 256, use_cosine_sim=True, lookup_dim=4).eval()
    z = torch.randn(2, 16, 8, 8).bfloat16().float()  # exactly representable in both precisions
    quantizer.train()  # the library's path (the eval path before k-means init is the plain lookup)
    quantizer.vq._codebook.initted.fill_(True)
    with torch.no_grad():
        codes, _, indices = quantizer(z, freeze_codebook=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            codes_bf16, _, indices_bf16 = quantizer(z, freeze_codebook=True)
    assert torch.equal(indices_bf16, indices)
    assert codes_bf16.dtype == torch.float32
    torch.testing.assert_close(codes_bf16, codes)
