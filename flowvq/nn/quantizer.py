"""The face codebook: a thin wrapper over ``vector_quantize_pytorch.VectorQuantize``.

The wrapper fixes the conventions the rest of flowvq relies on: feature grids are
channel-first ``(B, D, h, w)``, indices are ``(B, h, w)``, ``indices_to_codes`` is the exact
inverse lookup, and ``nearest`` finds codes without updating the codebook (for encoding the
targets of the second stage). Einstein notation: ``b`` batch, ``d`` code dim, ``h w`` grid,
``n`` grid positions, ``k`` codebook entries.

References:
    van den Oord et al. Neural Discrete Representation Learning (EMA codebook, commitment).
    https://arxiv.org/abs/1711.00937
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

__all__ = ["Quantizer", "codebook_usage"]


class Quantizer(nn.Module):
    """Vector quantizer over a (B, D, h, w) grid with an EMA-updated codebook of ``codebook_size`` x D.

    Arguments:
        dim: code dimension D (the channels of the grid).
        codebook_size: number of entries K.
        decay: EMA decay of the codebook (0.8 is vector-quantize-pytorch's default).
        commitment_weight: beta of the commitment loss ||z - sg(q)||^2 (0.25 as in VQ-VAE/VQGAN).
        kmeans_init: initialise the codebook by k-means on the first batch.
        kmeans_iters: k-means iterations for that initialisation.
        threshold_ema_dead_code: entries whose EMA cluster size falls below this are replaced
            by random encoder outputs of the current batch (0 = never).
        use_cosine_sim: cosine-similarity codebook (l2-normalised codes) instead of Euclidean.
        rotation_trick: pass gradients through the quantizer with the rotation trick
            (arXiv 2410.06424) instead of the plain straight-through estimator.
        lookup_dim: factorised codes (Yu et al., arXiv 2110.04627): a linear map takes each
            D-dim feature to ``lookup_dim`` dims, the nearest entry is found and EMA-updated
            there, and a second linear map takes it back to D. ``None`` (or D): no projection,
            the entries are D-dim. With ``use_cosine_sim`` the lookup is on l2-normalised vectors.
            :attr:`codebook` always gives the D-dim codes the decoder sees.

    Example:
        >>> q = Quantizer(dim=4, codebook_size=8).eval()
        >>> codes, loss, indices = q(torch.randn(2, 4, 3, 3))
        >>> torch.allclose(q.indices_to_codes(indices), codes)
        True
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        decay: float = 0.8,
        commitment_weight: float = 0.25,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 0.0,
        use_cosine_sim: bool = False,
        rotation_trick: bool = True,
        lookup_dim: int | None = None,
    ) -> None:
        super().__init__()
        if lookup_dim is not None and not 1 <= lookup_dim <= dim:
            raise ValueError(
                f"Quantizer lookup_dim={lookup_dim}: expected 1 <= lookup_dim <= dim={dim} (the factorised "
                "lookup maps features down to lookup_dim), or None for a lookup in the full dim"
            )
        self.dim = dim
        self.lookup_dim = lookup_dim or dim
        self.codebook_size = codebook_size
        self.use_cosine_sim = use_cosine_sim
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            decay=decay,
            commitment_weight=commitment_weight,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=threshold_ema_dead_code,
            use_cosine_sim=use_cosine_sim,
            rotation_trick=rotation_trick,
            codebook_dim=self.lookup_dim,
            straight_through=False,
            accept_image_fmap=True,
            # The module is built before DDP starts; :meth:`enable_distributed_sync` turns the
            # all-reduce of EMA statistics on once the process group exists.
            sync_codebook=False,
        )

    @property
    def factorised(self) -> bool:
        """Whether entries live in a ``lookup_dim`` space smaller than D (:attr:`lookup_codebook`)."""
        return self.lookup_dim != self.dim

    @property
    def lookup_codebook(self) -> Tensor:
        """The entries where the nearest one is found, (K, lookup_dim) (l2-normalised for a cosine codebook)."""
        return self.vq.codebook

    @property
    def codebook(self) -> Tensor:
        """The codes the decoder sees, (K, D): the entries, mapped back to D when factorised."""
        return self.vq.project_out(self.vq.codebook)

    def forward(self, z: Tensor, freeze_codebook: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Quantize a grid.

        Arguments:
            z: encoder output (B, D, h, w).
            freeze_codebook: do not update the EMA statistics (the codebook stays as it is).

        Returns:
            quantized (B, D, h, w) with gradients passed to ``z``, the commitment loss (a scalar,
            already multiplied by ``commitment_weight``; zero in eval mode), indices (B, h, w).
        """
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"quantizer input has shape {tuple(z.shape)}, expected (B, {self.dim}, h, w)")
        if not self.training and not bool(self.vq._codebook.initted):
            # k-means initialisation must see training data, not a sanity-check validation batch.
            indices = self.nearest(z)
            return self.indices_to_codes(indices), z.new_zeros(()), indices
        # Float32 whatever the autocast state: the library turns autocast off for CUDA only, so under
        # CPU bf16 autocast its distances were bfloat16 (ties in the nearest entry, and its argmax and
        # one-hot passes 1.7x slower on this CPU).
        with torch.autocast(z.device.type, enabled=False):
            quantized, indices, commit_loss = self.vq(z.float(), freeze_codebook=freeze_codebook)
        # The library hands back a channels-last view; every layer after it would then run
        # channels-last, where GroupNorm is 2x (fp32) to 15x (bf16) slower on CPU than in NCHW.
        return quantized.contiguous(), commit_loss, indices

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Indices (B, h, w) -> codes (B, D, h, w); the inverse of the lookup in :meth:`forward`."""
        return rearrange(self.codebook[indices], "b h w d -> b d h w").contiguous()

    def logits(self, z: Tensor) -> Tensor:
        """Similarity of every grid position to every entry, (B, h*w, K): the negative squared
        distance (or the cosine similarity for a cosine codebook), in the lookup space when
        factorised; argmax gives :meth:`nearest`."""
        flat = rearrange(z, "b d h w -> b (h w) d")
        if self.factorised:
            flat = self.vq.project_in(flat)
        flat, codebook = flat.float(), self.lookup_codebook.float()
        if self.use_cosine_sim:
            return F.normalize(flat, dim=-1) @ F.normalize(codebook, dim=-1).t()  # (B, N, K)
        return -torch.cdist(flat, codebook.unsqueeze(0).expand(flat.shape[0], -1, -1)).pow(2)  # (B, N, K)

    @torch.no_grad()
    def nearest(self, z: Tensor) -> Tensor:
        """Indices (B, h, w) of the entries nearest to ``z`` (B, D, h, w), codebook untouched."""
        return rearrange(self.logits(z).argmax(-1), "b (h w) -> b h w", h=z.shape[-2])

    def enable_distributed_sync(self) -> None:
        """All-reduce EMA statistics and k-means samples across DDP ranks (call once the process group exists)."""
        from torch import distributed
        from vector_quantize_pytorch.vector_quantize_pytorch import sample_vectors_distributed

        codebook = self.vq._codebook
        codebook.use_ddp = True
        codebook.all_reduce_fn = distributed.all_reduce
        codebook.kmeans_all_reduce_fn = distributed.all_reduce
        codebook.sample_fn = sample_vectors_distributed
        codebook.replace_sample_fn = sample_vectors_distributed


@torch.no_grad()
def codebook_usage(counts: Tensor) -> dict[str, Tensor]:
    """Perplexity and fraction of entries in use from a histogram of code indices (K,).

    Perplexity is exp(entropy) of the code distribution: K when every entry is used equally,
    1 when a single entry takes every position (codebook collapse).
    """
    counts = counts.float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return {"perplexity": entropy.exp(), "usage": (counts > 0).float().mean()}
