"""GMEG's networks (GMTalker's Gaussian-mixture expression generator), without Lightning.

Speech and a point of the emotion simplex map to a per-frame latent ``z_gm`` whose prior is a
Gaussian mixture with one component per emotion; a decoder maps ``z_gm`` to expression
coefficients. Training is a conditional VAE: a posterior encoder sees the coefficients, and
the KL divergence pulls its codes towards the *weighted component* of the prior (see
:class:`GMEGNet`). The decoder sees nothing but ``z_gm``, so everything a frame shows (the
mouth's opening for the sound, the emotion, the clip's own variation) passes through the
latent, and a blend of emotion weights moves the decoded expression continuously.

Every part is local in time (the audio window per frame, attention within a band of frames,
convolutions), so a 60 s clip is generated in one pass, the same way as a 32-frame training
window: there is no autoregressive state to drift.

Einstein notation in the docstrings: ``b`` batch, ``t`` frames, ``c`` emotion components,
``z`` latent size, ``e`` expression dims, ``h`` hidden channels.

References:
    GMTalker, https://arxiv.org/abs/2312.07669.
    Kingma & Welling, Auto-Encoding Variational Bayes, https://arxiv.org/abs/1312.6114.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from flowvq.nn.audio_encoder import AudioWindowEncoder
from flowvq.nn.temporal import ResidualTemporalBlock

__all__ = ["ExpressionDecoder", "GMEGNet", "MixtureMapper", "PosteriorEncoder", "gaussian_kl", "temporal_noise"]

#: Bounds of every predicted log-std (numerical safety; e^-6 .. e^2 in normalised units).
LOG_SCALE_MIN, LOG_SCALE_MAX = -6.0, 2.0


def gaussian_kl(loc_q: Tensor, log_scale_q: Tensor, loc_p: Tensor, log_scale_p: Tensor) -> Tensor:
    """KL(N(loc_q, scale_q^2) || N(loc_p, scale_p^2)) per element."""
    var_ratio = torch.exp(2 * (log_scale_q - log_scale_p))
    mean_term = ((loc_q - loc_p) * torch.exp(-log_scale_p)) ** 2
    return 0.5 * (var_ratio + mean_term - 1) - (log_scale_q - log_scale_p)


def temporal_noise(shape: tuple[int, int, int], rho: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Unit-variance Gaussian noise ``[b, t, z]`` correlated over time as an AR(1) process.

    ``rho [z]`` is the lag-1 correlation per latent dim (0: independent frames). Every frame's
    marginal is N(0, 1), the marginal the per-frame KL trains the prior for.
    """
    b, t, z = shape
    rho = rho.clamp(0.0, 0.999)
    white = torch.randn(b, t, z, generator=generator, device=rho.device, dtype=rho.dtype)
    innovation = torch.sqrt(1 - rho**2)
    out = torch.empty_like(white)
    out[:, 0] = white[:, 0]
    for step in range(1, t):
        out[:, step] = rho * out[:, step - 1] + innovation * white[:, step]
    return out


def _band_mask(mask: Tensor, window: int | None, heads: int) -> Tensor:
    """Attention mask ``[b * heads, t, t]`` (True = not attended): keys further than ``window``
    frames, or padded, are hidden; a frame always sees itself (no row is empty)."""
    b, t = mask.shape
    index = torch.arange(t, device=mask.device)
    hidden = ~mask[:, None, :].expand(b, t, t)
    if window is not None:
        hidden = hidden | ((index[:, None] - index[None, :]).abs() > window)[None]
    hidden = hidden & ~torch.eye(t, dtype=torch.bool, device=mask.device)[None]
    return hidden.repeat_interleave(heads, dim=0)


class MixtureMapper(nn.Module):
    """GMTalker's mixture-of-Gaussians mapper: speech -> one Gaussian per emotion per frame.

    A per-frame projection of the audio code, a depthwise convolution (which gives the
    Transformer the frames' order without absolute positions, so any length behaves alike),
    then Transformer encoder layers whose attention is limited to ``attention_window`` frames
    either side. Each frame's output gives, for every emotion ``c``, the location and log-std
    of the prior component ``N(loc[t, c], scale[t, c]^2)``: a learnable per-emotion offset
    (``component_loc``, ``component_log_scale``) plus a speech-dependent part.

    Arguments:
        audio_features: size of the per-frame audio code.
        latent: z size.
        num_components: C, one per emotion.
        hidden, layers, heads, dropout: the Transformer.
        attention_window: frames either side each frame attends to (None: all).
        init_spread: std of the random initial component offsets (distinct from the start).
    """

    def __init__(
        self,
        audio_features: int,
        latent: int,
        num_components: int,
        hidden: int = 128,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        attention_window: int | None = 16,
        init_spread: float = 1.0,
    ) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be a multiple of heads={heads}")
        self.latent, self.num_components, self.heads = latent, num_components, heads
        self.attention_window = attention_window
        self.inp = nn.Linear(audio_features, hidden)
        self.order = nn.Conv1d(hidden, hidden, 5, padding=2, groups=hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.loc = nn.Linear(hidden, num_components * latent)
        self.log_scale = nn.Linear(hidden, num_components * latent)
        nn.init.zeros_(self.log_scale.weight)
        nn.init.zeros_(self.log_scale.bias)
        self.component_loc = nn.Parameter(init_spread * torch.randn(num_components, latent))
        self.component_log_scale = nn.Parameter(torch.zeros(num_components, latent))

    def forward(self, audio: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``audio [b, t, a]``, ``mask [b, t]`` -> component ``loc``, ``log_scale`` ``[b, t, c, z]``."""
        h = self.inp(audio)  # (B, T, H)
        h = h + rearrange(self.order(rearrange(h, "b t h -> b h t")), "b h t -> b t h")
        h = self.transformer(h, mask=_band_mask(mask, self.attention_window, self.heads))
        h = self.norm(h)
        c, z = self.num_components, self.latent
        loc = rearrange(self.loc(h), "b t (c z) -> b t c z", c=c, z=z) + self.component_loc
        log_scale = rearrange(self.log_scale(h), "b t (c z) -> b t c z", c=c, z=z) + self.component_log_scale
        return loc, log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)


class _TemporalConvStack(nn.Module):
    """Masked residual temporal convolutions ``[b, t, in] -> [b, t, out]`` (dilations 1, 2, 1, 2, ...)."""

    def __init__(self, inputs: int, outputs: int, hidden: int, blocks: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Conv1d(inputs, hidden, 1)
        self.blocks = nn.ModuleList(
            ResidualTemporalBlock(hidden, kernel_size, dilation=1 + i % 2, dropout=dropout) for i in range(blocks)
        )
        self.out = nn.Conv1d(hidden, outputs, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = rearrange(mask.to(x.dtype), "b t -> b 1 t")
        h = self.inp(rearrange(x, "b t d -> b d t")) * m
        for block in self.blocks:
            h = block(h, m)
        return rearrange(self.out(h), "b d t -> b t d")


class PosteriorEncoder(nn.Module):
    """q(z_gm | expression, speech) per frame: temporal convolutions over both (training only)."""

    def __init__(self, exp_dim: int, audio_features: int, latent: int, hidden: int, blocks: int, dropout: float):
        super().__init__()
        self.net = _TemporalConvStack(exp_dim + audio_features, 2 * latent, hidden, blocks, 5, dropout)

    def forward(self, exp: Tensor, audio: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``exp [b, t, e]``, ``audio [b, t, a]`` -> ``loc``, ``log_scale`` ``[b, t, z]``."""
        loc, log_scale = self.net(torch.cat([exp, audio], -1), mask).chunk(2, dim=-1)
        return loc, log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)


class ExpressionDecoder(nn.Module):
    """z_gm ``[b, t, z]`` -> expression ``[b, t, e]`` (temporal convolutions; z is its only input)."""

    def __init__(self, latent: int, exp_dim: int, hidden: int, blocks: int, dropout: float) -> None:
        super().__init__()
        self.net = _TemporalConvStack(latent, exp_dim, hidden, blocks, 5, dropout)

    def forward(self, z: Tensor, mask: Tensor) -> Tensor:
        return self.net(z, mask)


class GMEGNet(nn.Module):
    """Audio encoder, mixture mapper (prior), posterior encoder and decoder of GMEG.

    The prior of ``z_gm`` at frame ``t`` given emotion weights ``w`` (a point of the simplex)
    is the *weighted component* ``N(sum_c w_c loc[t, c], sum_c w_c scale[t, c]^2)``: one
    Gaussian whose location moves linearly with ``w``, so a blend is never a jump from one
    component to another (a draw from the mixture itself would pick one component). For a
    one-hot ``w`` it is that emotion's component.

    Arguments:
        exp_dim: E.
        mel_bins: M of the mel windows.
        num_components: C, one per emotion.
        latent: size of ``z_gm`` per frame.
        audio_features, audio_hidden: the per-frame audio code and its encoder's width.
        hidden, layers, heads, attention_window, dropout: the mixture mapper.
        coder_hidden, coder_blocks: the posterior encoder's and the decoder's convolutions.
        prior_init_spread: std of the initial component offsets.
    """

    def __init__(
        self,
        exp_dim: int,
        mel_bins: int,
        num_components: int = 8,
        latent: int = 16,
        audio_features: int = 64,
        audio_hidden: int = 64,
        hidden: int = 128,
        layers: int = 2,
        heads: int = 4,
        attention_window: int | None = 16,
        dropout: float = 0.1,
        coder_hidden: int = 128,
        coder_blocks: int = 3,
        prior_init_spread: float = 1.0,
    ) -> None:
        super().__init__()
        self.exp_dim, self.latent, self.num_components = exp_dim, latent, num_components
        self.audio = AudioWindowEncoder(mel_bins, audio_features, hidden=audio_hidden)
        self.mapper = MixtureMapper(
            audio_features, latent, num_components, hidden, layers, heads, dropout, attention_window, prior_init_spread
        )
        self.posterior = PosteriorEncoder(exp_dim, audio_features, latent, coder_hidden, coder_blocks, dropout)
        self.decoder = ExpressionDecoder(latent, exp_dim, coder_hidden, coder_blocks, dropout)
        # per-dim log-std of the Gaussian reconstruction likelihood (learned: balances the KL)
        self.log_noise = nn.Parameter(torch.zeros(exp_dim))

    @staticmethod
    def _mask(mel: Tensor, mask: Tensor | None) -> Tensor:
        return torch.ones(mel.shape[:2], dtype=torch.bool, device=mel.device) if mask is None else mask.bool()

    def prior(self, audio: Tensor, weights: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The weighted component: ``loc``, ``log_scale`` ``[b, t, z]`` for ``weights [b, c]``
        (or per frame, ``[b, t, c]``)."""
        loc, log_scale = self.mapper(audio, mask)  # (B, T, C, Z)
        w = weights[:, None, :] if weights.dim() == 2 else weights  # (B, 1|T, C)
        w = w.to(loc.dtype).unsqueeze(-1)
        mean = (w * loc).sum(-2)  # (B, T, Z)
        variance = (w * torch.exp(2 * log_scale)).sum(-2)
        return mean, 0.5 * torch.log(variance.clamp(min=math.exp(2 * LOG_SCALE_MIN)))

    def loss(
        self, exp: Tensor, mel: Tensor, weights: Tensor, mask: Tensor | None = None, kl_weight: float = 1.0
    ) -> dict[str, Tensor]:
        """Negative ELBO per valid frame and expression dim, and its parts.

        Returns ``loss`` (reconstruction NLL + ``kl_weight`` * KL), ``nll`` (the reconstruction
        term), ``kl`` (nats per frame and expression dim), ``mse`` (of the posterior-mean
        reconstruction) and the posterior sample ``z [b, t, z]``, prior ``prior_loc``,
        ``prior_log_scale`` for diagnostics.
        """
        mask = self._mask(mel, mask)
        audio = self.audio(mel)  # (B, T, A)
        loc_q, log_scale_q = self.posterior(exp, audio, mask)
        loc_p, log_scale_p = self.prior(audio, weights, mask)
        z = loc_q + torch.exp(log_scale_q) * torch.randn_like(loc_q)
        recon = self.decoder(z, mask)  # (B, T, E)
        log_noise = self.log_noise.clamp(math.log(0.02), 1.0)
        nll = 0.5 * ((exp - recon) * torch.exp(-log_noise)) ** 2 + log_noise + 0.5 * math.log(2 * math.pi)
        kl = gaussian_kl(loc_q, log_scale_q, loc_p, log_scale_p)  # (B, T, Z)
        m = mask.to(exp.dtype)
        frames = m.sum().clamp(min=1)
        nll_per = (nll.sum(-1) * m).sum() / (frames * self.exp_dim)
        kl_per = (kl.sum(-1) * m).sum() / (frames * self.exp_dim)
        mse = ((((exp - recon) ** 2).mean(-1)) * m).sum() / frames
        return {
            "loss": nll_per + kl_weight * kl_per,
            "nll": nll_per,
            "kl": kl_per,
            "mse": mse.detach(),
            "z": z,
            "prior_loc": loc_p,
            "prior_log_scale": log_scale_p,
        }

    def encode(self, exp: Tensor, mel: Tensor, mask: Tensor | None = None) -> Tensor:
        """Posterior mean of ``z_gm [b, t, z]`` for given coefficients (a real clip's latent)."""
        mask = self._mask(mel, mask)
        loc, _ = self.posterior(exp, self.audio(mel), mask)
        return loc

    def draw(
        self,
        mel: Tensor,
        weights: Tensor,
        temperature: float = 1.0,
        rho: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """``z_gm [b, t, z]`` from the weighted component: location + temperature * scale * noise.

        ``noise`` (``[b, t, z]``, unit variance) defaults to :func:`temporal_noise` with lag-1
        correlation ``rho``; passing the same noise for several weights moves only the emotion.
        """
        mask = self._mask(mel, mask)
        loc, log_scale = self.prior(self.audio(mel), weights, mask)
        if noise is None:
            rho = torch.zeros(self.latent, device=mel.device) if rho is None else rho.to(mel.device, loc.dtype)
            noise = temporal_noise(tuple(loc.shape), rho, generator)
        return loc + temperature * torch.exp(log_scale) * noise.to(loc)

    def decode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Expression ``[b, t, e]`` of ``z_gm [b, t, z]``."""
        return self.decoder(z, self._mask(z, mask))
