"""Latent priors for the coefficient flows, as nflows ``Distribution`` subclasses.

ExpFlow's latent space is a Student's-t mixture with one component per emotion (FlowVQTalker);
its ablation swaps in a Gaussian mixture (also GMTalker's latent), and PoseFlow uses a
standard Gaussian. All three share :class:`LatentPrior`'s interface, so the flow treats them
alike:

- ``log_prob_given(z, component, intensity)``: log-density under one component per row
  (``component = -1`` rows, or ``component=None``, use the whole mixture);
- ``sample_given(component, temperature, intensity, loc)``: one draw per row;
- ``posterior(z)``: component responsibilities.

The nflows ``log_prob(inputs, context)`` / ``sample(num_samples, context)`` entry points take
``context`` as either component indices (long ``[N]``, ``-1`` = marginal) or mixture weights
(float ``[N, C]``, e.g. one-hot, or GMTalker's emotion weights).

**Intensity** (our design; the papers do not say how it is done): the mixtures have an
``anchor`` component (neutral). With an intensity factor ``a`` the location used for
component ``k`` is ``loc[anchor] + a * (loc[k] - loc[anchor])``: ``a = 1`` is the component
itself, ``a = 0`` the neutral one, ``a > 1`` exaggerates. Scale and degrees of freedom stay
the component's own.

References:
    FlowVQTalker, https://arxiv.org/abs/2403.06375 (Student's-t mixture latent).
    Alexanderson & Henter, Robust model training and generalisation with Studentising
    flows, https://arxiv.org/abs/2006.06599.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from nflows.distributions.base import Distribution
from torch import Tensor, nn

__all__ = ["GaussianMixture", "LatentPrior", "StandardGaussian", "StudentTMixture", "make_prior"]

#: Degrees of freedom are ``MIN_DF + DF_MARGIN + softplus(raw)``: df > 2 keeps the variance
#: finite, and the margin keeps it so even where softplus underflows to 0.
MIN_DF = 2.0
DF_MARGIN = 0.01


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class LatentPrior(Distribution):
    """Base of the latent priors: the component-aware interface the coefficient flow uses.

    Arguments:
        features: latent size D.
        num_components: mixture components C (1 for an unconditional prior).
    """

    def __init__(self, features: int, num_components: int) -> None:
        super().__init__()
        if features < 1 or num_components < 1:
            raise ValueError(f"features and num_components must be >= 1, got {features} and {num_components}")
        self.features = features
        self.num_components = num_components

    # -- component-aware interface ---------------------------------------------------------

    def log_prob_given(self, z: Tensor, component: Tensor | None = None, intensity: Tensor | None = None) -> Tensor:
        """Log-density ``[N]`` of ``z [N, D]`` under each row's component (``-1``: marginal)."""
        raise NotImplementedError

    def sample_given(
        self,
        num: int,
        component: Tensor | None = None,
        temperature: float | Tensor = 1.0,
        intensity: Tensor | None = None,
        loc: Tensor | None = None,
    ) -> Tensor:
        """``num`` draws ``[num, D]``; ``component`` [num] (``-1`` or None: drawn from the weights).

        ``loc`` [num, D] replaces the component location (emotion transfer from a latent code).
        Temperature scales the spread around the location; temperature 0 gives the location.
        """
        raise NotImplementedError

    def posterior(self, z: Tensor) -> Tensor:
        """Component responsibilities ``[N, C]`` of ``z [N, D]`` (rows sum to 1)."""
        return z.new_ones(z.shape[0], self.num_components) / self.num_components

    # -- nflows interface ------------------------------------------------------------------

    def _split_context(self, n: int, context: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """``(component [N] or None, weights [N, C] or None)`` from an nflows context."""
        if context is None:
            return None, None
        if context.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            return context.reshape(n).long(), None
        if context.dim() != 2 or context.shape[1] != self.num_components:
            raise ValueError(
                f"context must be component indices [N] (long) or weights [N, {self.num_components}] (float); "
                f"got {tuple(context.shape)} {context.dtype}"
            )
        return None, context

    def _log_prob(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        component, weights = self._split_context(inputs.shape[0], context)
        if weights is not None:
            return self.log_prob_weighted(inputs, weights)
        return self.log_prob_given(inputs, component)

    def log_prob_weighted(self, z: Tensor, weights: Tensor) -> Tensor:
        """``log sum_k w_k p_k(z)`` for per-row weights ``[N, C]`` (normalised here)."""
        return self.log_prob_given(z, None)

    def _sample(self, num_samples: int, context: Tensor | None) -> Tensor:
        if context is None:
            return self.sample_given(num_samples)
        component, weights = self._split_context(context.shape[0], context)
        rows = context.shape[0]
        if weights is not None:
            picks = torch.multinomial(weights / weights.sum(-1, keepdim=True), num_samples, replacement=True)
            component = picks.reshape(-1)  # (rows * num_samples,)
        else:
            component = component.repeat_interleave(num_samples)
        return self.sample_given(rows * num_samples, component).reshape(rows, num_samples, self.features)


class StandardGaussian(LatentPrior):
    """``N(0, I)``: PoseFlow's prior. Components, intensity and the anchor do not apply.

    Example:
        >>> prior = StandardGaussian(3)
        >>> prior.sample_given(5, temperature=0.0).abs().sum().item()
        0.0
    """

    def __init__(self, features: int, num_components: int = 1, anchor: int | None = None) -> None:
        # ``num_components``/``anchor`` are accepted (and ignored) so that every prior builds
        # from the same arguments.
        super().__init__(features, 1)
        self.register_buffer("_log_z", torch.tensor(0.5 * features * math.log(2 * math.pi)), persistent=False)

    def log_prob_given(self, z: Tensor, component: Tensor | None = None, intensity: Tensor | None = None) -> Tensor:
        return -0.5 * z.pow(2).sum(-1) - self._log_z

    def sample_given(
        self,
        num: int,
        component: Tensor | None = None,
        temperature: float | Tensor = 1.0,
        intensity: Tensor | None = None,
        loc: Tensor | None = None,
    ) -> Tensor:
        noise = torch.randn(num, self.features, device=self._log_z.device, dtype=self._log_z.dtype)
        temperature = torch.as_tensor(temperature, dtype=noise.dtype, device=noise.device).reshape(-1, 1)
        base = loc if loc is not None else torch.zeros_like(noise)
        return base + temperature * noise

    def _mean(self, context: Tensor | None) -> Tensor:
        return self._log_z.new_zeros(self.features)


class _Mixture(LatentPrior):
    """A mixture of diagonal location-scale components with learnable weights.

    Arguments:
        features: latent size D.
        num_components: C (one per emotion).
        anchor: the neutral component that intensity interpolates from; None disables
            intensity (every factor acts as 1).
        init_spread: std of the random initial locations (0: all at the origin; labels
            separate them during training).
    """

    def __init__(self, features: int, num_components: int, anchor: int | None = 0, init_spread: float = 0.0) -> None:
        super().__init__(features, num_components)
        if anchor is not None and not 0 <= anchor < num_components:
            raise ValueError(f"anchor {anchor} is not a component index 0..{num_components - 1}")
        self.anchor = anchor
        self.loc = nn.Parameter(init_spread * torch.randn(num_components, features))
        self.log_scale = nn.Parameter(torch.zeros(num_components, features))
        self.logits = nn.Parameter(torch.zeros(num_components))

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def locations(self, component: Tensor, intensity: Tensor | None = None) -> Tensor:
        """Component locations ``[N, D]``, moved along the anchor -> component line by intensity."""
        loc = self.loc[component]  # (N, D)
        if intensity is None or self.anchor is None:
            return loc
        anchor = self.loc[self.anchor].unsqueeze(0)
        factor = intensity.to(loc.dtype).reshape(-1, 1)
        return anchor + factor * (loc - anchor)

    def _component_log_prob(self, z: Tensor, loc: Tensor, log_scale: Tensor, component: Tensor | None) -> Tensor:
        """Log-density of ``z`` under components given by broadcastable loc/log_scale."""
        raise NotImplementedError

    def _standard_noise(self, component: Tensor) -> Tensor:
        """Unit-scale draws ``[N, D]`` of each row's component shape (before loc/scale)."""
        raise NotImplementedError

    def _all_log_prob(self, z: Tensor) -> Tensor:
        """``log p_k(z)`` for every component: ``[N, C]``."""
        everyone = torch.arange(self.num_components, device=z.device)
        return self._component_log_prob(
            z.unsqueeze(1), self.loc.unsqueeze(0), self.log_scale.unsqueeze(0), everyone.unsqueeze(0)
        )

    def log_prob_given(self, z: Tensor, component: Tensor | None = None, intensity: Tensor | None = None) -> Tensor:
        marginal = self.log_prob_weighted(z, None)
        if component is None:
            return marginal
        known = component >= 0
        index = component.clamp(min=0)
        loc = self.locations(index, intensity)
        own = self._component_log_prob(z, loc, self.log_scale[index], index)
        return torch.where(known, own, marginal)

    def log_prob_weighted(self, z: Tensor, weights: Tensor | None) -> Tensor:
        log_w = (
            F.log_softmax(self.logits, -1).unsqueeze(0) if weights is None else (weights / weights.sum(-1, True)).log()
        )
        return torch.logsumexp(log_w + self._all_log_prob(z), dim=-1)

    def posterior(self, z: Tensor) -> Tensor:
        return F.softmax(F.log_softmax(self.logits, -1) + self._all_log_prob(z), dim=-1)

    def sample_given(
        self,
        num: int,
        component: Tensor | None = None,
        temperature: float | Tensor = 1.0,
        intensity: Tensor | None = None,
        loc: Tensor | None = None,
    ) -> Tensor:
        device = self.loc.device
        if component is None:
            component = torch.full((num,), -1, dtype=torch.long, device=device)
        component = component.to(device).long()
        unknown = component < 0
        if unknown.any():
            drawn = torch.multinomial(F.softmax(self.logits.detach(), -1), num, replacement=True)
            component = torch.where(unknown, drawn, component)
        base = self.locations(component, intensity) if loc is None else loc
        temperature = torch.as_tensor(temperature, dtype=base.dtype, device=device).reshape(-1, 1)
        return base + temperature * self.scale[component] * self._standard_noise(component)

    def _mean(self, context: Tensor | None) -> Tensor:
        return (F.softmax(self.logits, -1).unsqueeze(-1) * self.loc).sum(0)


class GaussianMixture(_Mixture):
    """Mixture of diagonal Gaussians, one component per emotion (ablation; GMTalker's latent).

    Example:
        >>> prior = GaussianMixture(4, 8)
        >>> prior.log_prob(torch.zeros(2, 4), torch.tensor([5, -1])).shape
        torch.Size([2])
    """

    def _component_log_prob(self, z: Tensor, loc: Tensor, log_scale: Tensor, component: Tensor | None) -> Tensor:
        u = (z - loc) * torch.exp(-log_scale)
        return (-0.5 * u.pow(2) - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)

    def _standard_noise(self, component: Tensor) -> Tensor:
        return torch.randn(component.shape[0], self.features, device=self.loc.device, dtype=self.loc.dtype)


class StudentTMixture(_Mixture):
    """Mixture of diagonal Student's-t components, one per emotion (ExpFlow's prior).

    Each component is a product of univariate t distributions with its own location, scale
    and degrees of freedom per dimension; ``df = 2.01 + softplus(raw)`` stays above 2 so the
    variance is finite (heavy tails, but a spread that temperature can scale).

    Arguments:
        features, num_components, anchor, init_spread: as for the Gaussian mixture.
        init_df: initial degrees of freedom (> 2).

    Example:
        >>> prior = StudentTMixture(4, 8)
        >>> bool((prior.df > 2).all())
        True
    """

    def __init__(
        self,
        features: int,
        num_components: int,
        anchor: int | None = 0,
        init_spread: float = 0.0,
        init_df: float = 5.0,
    ) -> None:
        super().__init__(features, num_components, anchor, init_spread)
        if init_df <= MIN_DF + DF_MARGIN:
            raise ValueError(f"init_df must be > {MIN_DF + DF_MARGIN}, got {init_df}")
        self.raw_df = nn.Parameter(
            torch.full((num_components, features), _inverse_softplus(init_df - MIN_DF - DF_MARGIN))
        )

    @property
    def df(self) -> Tensor:
        return MIN_DF + DF_MARGIN + F.softplus(self.raw_df)

    def _component_log_prob(self, z: Tensor, loc: Tensor, log_scale: Tensor, component: Tensor | None) -> Tensor:
        df = self.df[component]  # broadcast like loc
        u = (z - loc) * torch.exp(-log_scale)
        log_norm = torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2) - 0.5 * torch.log(df * math.pi)
        return (log_norm - log_scale - (df + 1) / 2 * torch.log1p(u.pow(2) / df)).sum(-1)

    def _standard_noise(self, component: Tensor) -> Tensor:
        df = self.df[component].detach()  # (N, D)
        # t = normal / sqrt(chi2 / df)
        chi2 = torch.distributions.Chi2(df).sample()
        return torch.randn_like(df) * torch.rsqrt(chi2 / df)


_PRIORS = {"student_t_mixture": StudentTMixture, "gaussian_mixture": GaussianMixture, "gaussian": StandardGaussian}


def make_prior(
    kind: str, features: int, num_components: int, anchor: int | None = 0, init_spread: float = 0.0
) -> LatentPrior:
    """Build a prior by name: ``student_t_mixture``, ``gaussian_mixture`` or ``gaussian``.

    ``init_spread`` is the std of the mixtures' random initial locations (the anchor's
    location starts at the origin); the Gaussian ignores it.
    """
    if kind not in _PRIORS:
        raise ValueError(f"unknown prior {kind!r}: expected one of {', '.join(_PRIORS)}")
    if kind == "gaussian":
        return StandardGaussian(features)
    prior = _PRIORS[kind](features, num_components, anchor=anchor, init_spread=init_spread)
    if anchor is not None:
        with torch.no_grad():
            prior.loc[anchor].zero_()
    return prior
