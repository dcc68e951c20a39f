"""The VQGAN loss as a unit of its own: reconstruction, perceptual, hinge GAN with an adaptive
weight and a late discriminator start. Used by both image stages (VQGAN and VQIG).

Perceptual term: :class:`~flowvq.nn.perceptual.VGGPerceptual` when ``perceptual_weights_path``
names a local VGG16 (LPIPS) state dict. Nothing is downloaded, so without one the documented
fallback is used instead: discriminator feature matching (L1 between the discriminator's
block activations on real and reconstructed images, as in pix2pixHD) plus 1 - MS-SSIM. Feature
matching needs no pretrained network; MS-SSIM adds the structure term that L1 lacks. Until
``disc_start`` the discriminator does not train, so feature matching compares the features of a
randomly initialised network (a fixed multi-scale feature distance, not a learnt one); the tiny
recipes that stop before ``disc_start`` train with that alone.

References:
    Esser, Rombach, Ommer. Taming Transformers (adaptive GAN weight, discriminator start).
    https://arxiv.org/abs/2012.09841
    Wang et al. pix2pixHD (feature matching). https://arxiv.org/abs/1711.11585
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvq.nn.discriminator import PatchDiscriminator
from flowvq.nn.perceptual import VGGPerceptual, ms_ssim

__all__ = ["VQLoss", "adaptive_gan_weight", "color_loss", "hinge_d_loss"]

#: RGB -> YIQ: luma and the two chroma axes (I: orange-blue, Q: purple-green), each row unit length,
#: so that a chroma error counts as much as a luma error of the same size.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ = _YIQ / _YIQ.norm(dim=1, keepdim=True)


def color_loss(target: Tensor, recon: Tensor, pool: int = 8) -> Tensor:
    """Mean L1 distance between the block-mean colours of two image batches (B, 3, H, W).

    Each ``pool`` x ``pool`` block is averaged (what is left is colour, not texture), then
    both are rotated into luma / chroma (YIQ, rows normalised) and compared. Float32.
    """
    with torch.autocast(recon.device.type, enabled=False):
        pool = max(1, min(pool, recon.shape[-1], recon.shape[-2]))
        low_t = F.avg_pool2d(target.float(), pool)
        low_r = F.avg_pool2d(recon.float(), pool)
        basis = _YIQ.to(recon.device)
        diff = torch.einsum("ck,bkhw->bchw", basis, low_r - low_t)
        return diff.abs().mean()


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: mean relu(1 - D(x)) and relu(1 + D(G(z))), averaged."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """||d rec / d W|| / (||d gan / d W|| + 1e-4) at the decoder's last layer W (detached, clamped).

    Balances the two gradients where they enter the image, so the GAN term neither drowns nor
    is drowned by the reconstruction term whatever their scales.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


class VQLoss(nn.Module):
    """Generator and discriminator losses of a VQGAN-style image model; holds the discriminator.

    Arguments:
        pixel_weight: weight of the L1 reconstruction term.
        perceptual_weight: weight of the VGG (LPIPS) term when ``perceptual_weights_path`` is given.
        perceptual_weights_path: local VGG16 state dict (see :mod:`flowvq.nn.perceptual`); ``None``
            uses the fallback below.
        feature_match_weight: fallback: weight of discriminator feature matching.
        ssim_weight: fallback: weight of 1 - MS-SSIM.
        disc_weight: weight of the generator's GAN term (multiplied by the adaptive weight).
        disc_start: training step from which the GAN terms are on and the discriminator trains.
        adaptive_weight: balance the GAN gradient against the reconstruction gradient at the
            decoder's last layer; otherwise ``disc_weight`` alone.
        disc_channels, disc_layers, disc_norm: the :class:`PatchDiscriminator`.
        color_weight: weight of :func:`color_loss`, the L1 distance of the images' local mean
            colours in a luma/chroma basis (0 = off). MS-SSIM compares means only at its
            coarsest scale and L1 weighs a colour cast no more than any other error, so without
            this term a codebook can hand back the right layout in the wrong colours.
        color_pool: side in pixels of the blocks whose mean colour :func:`color_loss` compares.
    """

    def __init__(
        self,
        pixel_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        perceptual_weights_path: str | None = None,
        feature_match_weight: float = 1.0,
        ssim_weight: float = 1.0,
        disc_weight: float = 0.8,
        disc_start: int = 10000,
        adaptive_weight: bool = True,
        disc_channels: int = 64,
        disc_layers: int = 3,
        disc_norm: str = "group",
        color_weight: float = 0.0,
        color_pool: int = 8,
    ) -> None:
        super().__init__()
        if color_weight < 0 or color_pool < 1:
            raise ValueError(
                f"color_weight={color_weight} and color_pool={color_pool}: expected color_weight >= 0 "
                "(0 turns the colour term off) and color_pool >= 1 pixels"
            )
        self.color_weight = color_weight
        self.color_pool = color_pool
        self.pixel_weight = pixel_weight
        self.perceptual_weight = perceptual_weight
        self.feature_match_weight = feature_match_weight
        self.ssim_weight = ssim_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.adaptive_weight = adaptive_weight
        self.perceptual = VGGPerceptual(perceptual_weights_path) if perceptual_weights_path else None
        self.discriminator = PatchDiscriminator(disc_channels, disc_layers, disc_norm)

    def gan_active(self, step: int) -> bool:
        return step >= self.disc_start

    def reconstruction_loss(
        self, target: Tensor, recon: Tensor, fake: tuple[Tensor, list[Tensor]] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """L1 + colour + perceptual (or the fallback), the part of the loss that needs no adversary.

        ``fake`` is the discriminator's (logits, features) on ``recon`` when the caller already
        has them (:meth:`generator_loss` shares one pass between feature matching and the GAN term).
        """
        logs: dict[str, Tensor] = {}
        l1 = (target - recon).abs().mean()
        loss = self.pixel_weight * l1
        logs["l1"] = l1.detach()
        if self.color_weight > 0:
            color = color_loss(target, recon, self.color_pool)
            loss = loss + self.color_weight * color
            logs["color"] = color.detach()
        if self.perceptual is not None:
            perceptual = self.perceptual(recon.float(), target.float())
            loss = loss + self.perceptual_weight * perceptual
            logs["perceptual"] = perceptual.detach()
        else:
            if self.ssim_weight > 0:
                ssim_term = 1.0 - ms_ssim(recon, target).mean()
                loss = loss + self.ssim_weight * ssim_term
                logs["ms_ssim_loss"] = ssim_term.detach()
            if self.feature_match_weight > 0:
                # Before disc_start the discriminator has not trained: its features are those of a
                # random network (still a multi-scale feature distance, but no learnt one).
                with torch.no_grad():
                    _, real_features = self.discriminator(target, return_features=True)
                _, fake_features = fake if fake is not None else self.discriminator(recon, return_features=True)
                matching = sum((f - r).abs().mean() for f, r in zip(fake_features, real_features))
                matching = matching / len(fake_features)
                loss = loss + self.feature_match_weight * matching
                logs["feature_match"] = matching.detach()
        return loss, logs

    def generator_loss(
        self,
        target: Tensor,
        recon: Tensor,
        step: int,
        extra_loss: Tensor | None = None,
        last_layer: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the generator (encoder, codebook, decoder) for one batch.

        Arguments:
            target: real images (B, 3, H, W) in [-1, 1].
            recon: generated images (B, 3, H, W).
            step: the training step (the GAN term is off before ``disc_start``).
            extra_loss: terms added as they are (commitment loss, code cross-entropy).
            last_layer: the decoder's last weight, for the adaptive GAN weight; with ``None``
                (a frozen decoder) ``disc_weight`` is used alone.
        """
        gan_on = self.gan_active(step) and self.disc_weight > 0
        matching = self.perceptual is None and self.feature_match_weight > 0
        # One discriminator pass on the generated images serves feature matching and the GAN term.
        fake = self.discriminator(recon, return_features=True) if gan_on or matching else None
        rec_loss, logs = self.reconstruction_loss(target, recon, fake)
        loss = rec_loss
        if extra_loss is not None:
            loss = loss + extra_loss
        if gan_on:
            gan_loss = -fake[0].float().mean()
            weight = torch.tensor(self.disc_weight, device=recon.device)
            if self.adaptive_weight and last_layer is not None and last_layer.requires_grad and torch.is_grad_enabled():
                weight = weight * adaptive_gan_weight(rec_loss, gan_loss, last_layer)
            loss = loss + weight * gan_loss
            logs["g_gan"] = gan_loss.detach()
            logs["gan_weight"] = weight.detach()
        logs["rec"] = rec_loss.detach()
        logs["total"] = loss.detach()
        return loss, logs

    def discriminator_loss(self, target: Tensor, recon: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss of the discriminator on real ``target`` and (detached) generated ``recon``."""
        logits_real = self.discriminator(target.detach())
        logits_fake = self.discriminator(recon.detach())
        loss = hinge_d_loss(logits_real, logits_fake)
        return loss, {
            "d_loss": loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
