"""The fast training paths give the reference paths' values (up to float rounding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
