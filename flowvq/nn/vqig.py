"""The Vector Quantized Image Generator (VQIG) of FlowVQTalker, without its losses.

A source face and target coefficients (expression + pose) give a target frame:

    source image --SourceEncoder--> features (B, C, h, w)
    target exp, pose --MotionEncoder--> motion code (B, M)
    WarpingNetwork(features, motion) -> warped features          (use_warp)
    FuseNetwork(warped, source features; AdaIN by motion) -> fused (B, D, h, w)   (use_fusion)
    CodebookAttention(fused, codebook) -> code logits (B, h*w, K), codes (B, D, h, w)
                                                                  (use_cross_attention; else nearest code)
    frozen codebook decoder(codes) -> image (B, 3, H, W)          (use_codebook; else a trainable decoder on fused)

Which parts the paper uses is known; their internals are not (no code was released), so the
designs here are ours: a U-Net flow at the latent grid, AdaIN residual blocks, and cross-attention
whose keys are projected codebook entries and whose values are the entries themselves.
Einstein notation: ``b`` batch, ``n`` grid positions (h*w), ``k`` codebook entries, ``e`` heads.

References:
    Tan, Ji, Pan. FlowVQTalker. https://arxiv.org/abs/2403.06375
    Huang, Belongie. Arbitrary Style Transfer with Adaptive Instance Normalization.
    https://arxiv.org/abs/1703.06868
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from flowvq.nn.vq_autoencoder import Decoder, Encoder, ResnetBlock, VQAutoencoder
from flowvq.nn.warping import WarpingNetwork

__all__ = ["AdaIN", "CodebookAttention", "FuseNetwork", "MotionEncoder", "VQIGNet"]


class MotionEncoder(nn.Module):
    """Target coefficients -> motion code: MLP over [exp (B, E), pose (B, P)] -> (B, M)."""

    def __init__(self, exp_dim: int, pose_dim: int, motion_dim: int = 256, hidden: int = 256) -> None:
        super().__init__()
        self.exp_dim, self.pose_dim = exp_dim, pose_dim
        self.net = nn.Sequential(
            nn.Linear(exp_dim + pose_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, motion_dim),
        )

    def forward(self, exp: Tensor, pose: Tensor) -> Tensor:
        if exp.ndim != 2 or exp.shape[1] != self.exp_dim:
            raise ValueError(f"exp has shape {tuple(exp.shape)}, expected (B, {self.exp_dim}) (exp_dim of this model)")
        if pose.ndim != 2 or pose.shape[1] != self.pose_dim:
            raise ValueError(
                f"pose has shape {tuple(pose.shape)}, expected (B, {self.pose_dim}) (pose_dim of this model)"
            )
        return self.net(torch.cat([exp, pose], dim=-1))


class AdaIN(nn.Module):
    """Instance-normalise features (B, C, h, w), then scale and shift them by a style code (B, S)."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(style_dim, 2 * channels)
        # Start as the identity modulation (scale 1, shift 0).
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        scale, shift = rearrange(self.affine(style), "b (two c) -> two b c 1 1", two=2)
        return self.norm(x) * (1.0 + scale) + shift


class AdaINResBlock(nn.Module):
    """Residual block whose two normalisations are AdaIN by the motion code."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = AdaIN(channels, style_dim), AdaIN(channels, style_dim)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x, style)))
        h = self.conv2(F.silu(self.norm2(h, style)))
        return x + h


class FuseNetwork(nn.Module):
    """Joins identity/texture (the source features, unwarped) with the warped features, modulated
    by the motion code through AdaIN; outputs the codebook's dimension.

    Arguments:
        channels: channels of the source features.
        motion_dim: size of the motion code.
        out_channels: output channels (the code dimension D).
        num_blocks: AdaIN residual blocks.
        adain: ``False`` is the ablation without the fuse network: a plain projection of the
            warped features (no identity branch, no motion modulation).
    """

    def __init__(self, channels: int, motion_dim: int, out_channels: int, num_blocks: int = 2, adain: bool = True):
        super().__init__()
        self.adain = adain
        self.inp = nn.Conv2d(2 * channels if adain else channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList([AdaINResBlock(channels, motion_dim) for _ in range(num_blocks if adain else 0)])
        self.plain = ResnetBlock(channels) if not adain else nn.Identity()
        self.out = nn.Conv2d(channels, out_channels, 1)

    def forward(self, warped: Tensor, source: Tensor, motion: Tensor) -> Tensor:
        """Warped and source features (B, C, h, w), motion (B, M) -> fused (B, D, h, w)."""
        if not self.adain:
            return self.out(self.plain(self.inp(warped)))
        x = self.inp(torch.cat([warped, source], dim=1))
        for block in self.blocks:
            x = block(x, motion)
        return self.out(x)


class CodebookAttention(nn.Module):
    """Multi-head cross-attention from fused features (queries) to the codebook entries (keys, values).

    Each head compares its slice of the projected query with its slice of the projected entries;
    the head-mean of those scores is the code logits (B, n, K) that the code loss trains. The
    attention output per head is a softmax mixture of the entries' matching slice, so the soft
    output stays inside the codebook's span; the hard output is the argmax entry.

    Arguments:
        dim: code dimension D.
        num_heads: heads (must divide D).
        temperature: divides the logits (lower gives sharper soft lookups).
    """

    def __init__(self, dim: int, num_heads: int = 8, temperature: float = 1.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the code dim {dim}")
        self.num_heads = num_heads
        self.temperature = temperature
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)

    #: ``True``: the fast path (:meth:`forward_fused`), ``False``: the reference (:meth:`forward_reference`).
    fused_attention = True

    def forward(self, fused: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fused (B, D, h, w), codebook (K, D) -> logits (B, n, K), soft codes, hard codes (B, D, h, w)."""
        if self.fused_attention:
            return self.forward_fused(fused, codebook)
        return self.forward_reference(fused, codebook)

    def forward_fused(self, fused: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward_reference`'s values without its (B, E, n, K) score tensor, in float32.

        The head mean of the per-head scores q_e . k_e / s is q . k / (E s): one matmul gives the
        logits; the soft codes come from ``scaled_dot_product_attention``, which never holds the
        scores. Float32 whatever the autocast state: on this CPU the bfloat16 attention backward is
        2.6x slower than float32's at 16 dims a head, and the logits' argmax picks the hard code.
        """
        b, _, h, w = fused.shape
        e = self.num_heads
        with torch.autocast(fused.device.type, enabled=False):
            q = self.query(self.norm(rearrange(fused.float(), "b d h w -> b (h w) d")))  # (B, n, D)
            codebook = codebook.float()
            k = self.key(codebook)  # (K, D)
            scale = 1.0 / ((q.shape[-1] // e) ** 0.5 * self.temperature)
            logits = (q @ k.t()) * (scale / e)  # (B, n, K)
            qh = rearrange(q, "b n (e c) -> b e n c", e=e)
            kh = rearrange(k, "k (e c) -> e k c", e=e).expand(b, -1, -1, -1)
            vh = rearrange(codebook, "k (e c) -> e k c", e=e).expand(b, -1, -1, -1)
            soft = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)  # (B, E, n, c)
        soft = rearrange(soft, "b e (h w) c -> b (e c) h w", h=h).contiguous()
        hard = rearrange(codebook[logits.argmax(-1)], "b (h w) d -> b d h w", h=h).contiguous()
        return logits, soft, hard

    def forward_reference(self, fused: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The attention written out: per-head scores (B, E, n, K), their head mean, softmax mixture."""
        _, _, h, w = fused.shape
        e = self.num_heads
        q = rearrange(self.query(self.norm(rearrange(fused, "b d h w -> b (h w) d"))), "b n (e c) -> b e n c", e=e)
        k = rearrange(self.key(codebook), "k (e c) -> e k c", e=e)
        v = rearrange(codebook, "k (e c) -> e k c", e=e)
        scores = torch.einsum("benc,ekc->benk", q, k) / (q.shape[-1] ** 0.5 * self.temperature)  # (B, E, n, K)
        logits = scores.mean(1)  # (B, n, K)
        soft = torch.einsum("benk,ekc->benc", scores.softmax(-1), v.to(scores.dtype))  # (B, E, n, c)
        # contiguous: the decoder's GroupNorms are slow on the channels-last views rearrange gives
        soft = rearrange(soft, "b e (h w) c -> b (e c) h w", h=h).contiguous()
        hard = rearrange(codebook[logits.argmax(-1)], "b (h w) d -> b d h w", h=h).contiguous()
        return logits, soft, hard


class SourceEncoder(Encoder):
    """Source image -> identity/texture features at the codebook's latent grid (an :class:`Encoder`)."""


class VQIGNet(nn.Module):
    """The VQIG generator around a (frozen) VQ autoencoder; see the module docstring.

    Arguments:
        autoencoder: the stage-1 codebook model (its decoder and codebook are used; frozen
            unless ``use_codebook`` is off, where a fresh trainable decoder replaces them).
        exp_dim, pose_dim: coefficient sizes.
        channels, ch_mult, num_res_blocks: the source encoder (its ``len(ch_mult)`` must equal
            the autoencoder's, so both reach the same latent grid).
        feature_dim: channels of the source features.
        motion_dim: size of the motion code.
        fuse_blocks: AdaIN residual blocks in the fuse network.
        num_heads: heads of the codebook cross-attention.
        source_attention: self-attention at the source encoder's lowest resolution (off saves most of a
            step on a fine code grid, 32 x 32 at 64 px).
        norm_groups: GroupNorm groups of the source encoder (``None``: up to 32, an instance norm at the
            tiny widths, which strips the source's flat colours; 1 keeps them, as for the codebook).
        use_warp, use_fusion, use_cross_attention, use_codebook: the paper's ablation switches.
        lookup: how predicted codes reach the decoder in training: ``"straight_through"`` (the
            hard entry forward, the soft mixture's gradient backward), ``"soft"`` or ``"hard"``.
            Evaluation always uses the hard entry.
    """

    def __init__(
        self,
        autoencoder: VQAutoencoder,
        exp_dim: int,
        pose_dim: int,
        channels: int = 64,
        ch_mult: Sequence[int] = (1, 2, 2, 4, 4),
        num_res_blocks: int = 1,
        feature_dim: int = 256,
        motion_dim: int = 256,
        fuse_blocks: int = 2,
        num_heads: int = 8,
        source_attention: bool = True,
        norm_groups: int | None = None,
        use_warp: bool = True,
        use_fusion: bool = True,
        use_cross_attention: bool = True,
        use_codebook: bool = True,
        lookup: str = "straight_through",
    ) -> None:
        super().__init__()
        if lookup not in ("straight_through", "soft", "hard"):
            raise ValueError(f"lookup={lookup!r} is unknown: expected 'straight_through', 'soft' or 'hard'")
        if 2 ** (len(ch_mult) - 1) != autoencoder.resolution // autoencoder.latent_size:
            raise ValueError(
                f"the source encoder's ch_mult={list(ch_mult)} downsamples by {2 ** (len(ch_mult) - 1)} but the "
                f"codebook's latent grid is {autoencoder.latent_size} for {autoencoder.resolution} px: give ch_mult "
                f"{int(torch.log2(torch.tensor(autoencoder.resolution // autoencoder.latent_size))) + 1} factors"
            )
        self.use_warp, self.use_fusion = use_warp, use_fusion
        self.use_cross_attention, self.use_codebook = use_cross_attention, use_codebook
        self.lookup = lookup
        code_dim = autoencoder.quantizer.dim
        self.autoencoder = autoencoder
        self.autoencoder.requires_grad_(False)
        self.source_encoder = SourceEncoder(
            channels, ch_mult, num_res_blocks, feature_dim, attention=source_attention, norm_groups=norm_groups
        )
        self.motion_encoder = MotionEncoder(exp_dim, pose_dim, motion_dim)
        self.warping = WarpingNetwork(feature_dim, motion_dim, hidden=feature_dim // 2) if use_warp else None
        self.fuse = FuseNetwork(feature_dim, motion_dim, code_dim, fuse_blocks, adain=use_fusion)
        self.attention = CodebookAttention(code_dim, num_heads) if use_codebook and use_cross_attention else None
        # Without cross-attention the code logits are the quantizer's similarities. A cosine codebook's
        # lie in [-1, 1], where a softmax over K entries cannot leave uniform (the target's probability is
        # at most e^2 / (e^2 + K - 1), 0.007 at K = 1024): a learnt logit scale (log-parametrised, from 10,
        # as CLIP's temperature) lets the code cross-entropy choose codes. The argmax is unchanged.
        nearest_cosine = use_codebook and not use_cross_attention and autoencoder.quantizer.use_cosine_sim
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(10.0))) if nearest_cosine else None
        # Without the codebook: the same decoder architecture, trained from scratch on the fused features.
        self.plain_decoder = Decoder(**autoencoder.decoder_config) if not use_codebook else None

    def train(self, mode: bool = True) -> VQIGNet:
        super().train(mode)
        self.autoencoder.eval()  # frozen: no EMA updates, no dropout, whatever the trainer asks
        return self

    def forward(self, source: Tensor, exp: Tensor, pose: Tensor) -> dict[str, Tensor]:
        """Source images (B, 3, H, W), target exp (B, E) and pose (B, P) ->
        ``image`` (B, 3, H, W), ``logits`` (B, n, K) or absent, ``flow`` (B, 2, h, w) or absent."""
        return self.generate(self.source_encoder(source), exp, pose)

    def generate(self, source_features: Tensor, exp: Tensor, pose: Tensor) -> dict[str, Tensor]:
        """As :meth:`forward` from precomputed source features (B, C, h, w) (broadcast from B=1)."""
        motion = self.motion_encoder(exp, pose)  # (B, M)
        if source_features.shape[0] == 1 and motion.shape[0] > 1:
            source_features = source_features.expand(motion.shape[0], -1, -1, -1)
        out: dict[str, Tensor] = {}
        warped = source_features
        if self.warping is not None:
            warped, out["flow"] = self.warping(source_features, motion)
        fused = self.fuse(warped, source_features, motion)  # (B, D, h, w)
        if not self.use_codebook:
            out["image"] = self.plain_decoder(fused)
            return out
        codebook = self.autoencoder.quantizer.codebook.detach()
        if self.attention is not None:
            logits, soft, hard = self.attention(fused, codebook)
        else:
            # Without cross-attention the fused features are quantized to their nearest entry.
            logits = self.autoencoder.quantizer.logits(fused)
            if self.log_logit_scale is not None:
                logits = logits * self.log_logit_scale.exp()
            hard = rearrange(codebook[logits.argmax(-1)], "b (h w) d -> b d h w", h=fused.shape[-2]).contiguous()
            soft = fused
            if self.log_logit_scale is not None:
                # A cosine lookup sees only the direction of the projected features, so ``fused`` is no
                # stand-in for its code and the straight-through gradient through it drifted until the
                # codes collapsed (code accuracy 0.07 -> 0.001 after ~130 steps): the soft codes are the
                # softmax mixture of the entries under the scaled logits, as the cross-attention's are.
                soft = rearrange(
                    logits.softmax(-1) @ codebook.to(logits.dtype), "b (h w) d -> b d h w", h=hard.shape[-2]
                )
        if not self.training or self.lookup == "hard":
            codes = hard
        elif self.lookup == "soft":
            codes = soft
        else:
            codes = hard + (soft - soft.detach())
        out["logits"] = logits
        out["image"] = self.autoencoder.decode(codes)
        return out
