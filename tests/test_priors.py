"""The latent priors: densities against scipy, sampling moments, temperature, posteriors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from flowvq.nn.priors import GaussianMixture, StandardGaussian, StudentTMixture, make_prior

D, C = 3, 4


def _randomised(prior):
    """A mixture with distinct, non-trivial parameters (the defaults are all equal)."""
    torch.manual_seed(0)
    with torch.no_grad():
        prior.loc.normal_(0, 2)
        prior.log_scale.uniform_(-0.5, 0.5)
        prior.logits.normal_()
        if isinstance(prior, StudentTMixture):
            prior.raw_df.uniform_(-1.0, 2.0)
    return prior


def _scipy_component(prior, k: int, z: np.ndarray) -> np.ndarray:
    loc = prior.loc[k].detach().double().numpy()
    scale = prior.scale[k].detach().double().numpy()
    if isinstance(prior, StudentTMixture):
        df = prior.df[k].detach().double().numpy()
        return stats.t.logpdf(z, df=df, loc=loc, scale=scale).sum(-1)
    return stats.multivariate_normal(mean=loc, cov=np.diag(scale**2)).logpdf(z)


@pytest.mark.parametrize("cls", [StudentTMixture, GaussianMixture])
def test_mixture_log_prob_matches_scipy(cls):
    prior = _randomised(cls(D, C))
    z = torch.randn(7, D) * 3
    zn = z.double().numpy()
    per_component = np.stack([_scipy_component(prior, k, zn) for k in range(C)], -1)  # (N, C)
    # one component per row
    component = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    got = prior.log_prob(z, component).detach().numpy()
    np.testing.assert_allclose(got, per_component[np.arange(7), component.numpy()], rtol=1e-4, atol=1e-4)
    # marginal: logsumexp over the learned weights; -1 rows are marginal too
    log_w = torch.log_softmax(prior.logits, -1).detach().double().numpy()
    expected = logsumexp(per_component + log_w, axis=-1)
    np.testing.assert_allclose(prior.log_prob(z).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prior.log_prob(z, torch.full((7,), -1)).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    # explicit weights
    w = torch.softmax(torch.randn(7, C), -1)
    expected_w = logsumexp(per_component + np.log(w.double().numpy()), axis=-1)
    np.testing.assert_allclose(prior.log_prob(z, w).detach().numpy(), expected_w, rtol=1e-4, atol=1e-4)


def test_standard_gaussian_matches_scipy():
    z = torch.randn(6, D)
    expected = stats.multivariate_normal(mean=np.zeros(D)).logpdf(z.double().numpy())
    np.testing.assert_allclose(StandardGaussian(D).log_prob(z).numpy(), expected, rtol=1e-5)


def test_degrees_of_freedom_stay_above_two():
    prior = StudentTMixture(D, C)
    with torch.no_grad():
        prior.raw_df.fill_(-50.0)
    assert (prior.df > 2).all()
    with pytest.raises(ValueError, match="init_df"):
        StudentTMixture(D, C, init_df=1.5)


@pytest.mark.parametrize("cls", [StudentTMixture, GaussianMixture])
def test_sampling_moments_of_a_component(cls):
    prior = _randomised(cls(D, C))
    torch.manual_seed(1)
    k = 2
    n = 40000
    x = prior.sample_given(n, torch.full((n,), k), temperature=0.5)
    loc, scale = prior.loc[k].detach(), prior.scale[k].detach()
    if cls is StudentTMixture:
        df = prior.df[k].detach()
        # a robust check of location and spread: median and interquartile range of a t
        q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75]), dim=0)
        iqr = torch.from_numpy(2 * stats.t.ppf(0.75, df.double().numpy())).float() * 0.5 * scale
        torch.testing.assert_close(q[1], loc, atol=0.05, rtol=0)
        torch.testing.assert_close(q[2] - q[0], iqr, atol=0.05, rtol=0.05)
    else:
        torch.testing.assert_close(x.mean(0), loc, atol=0.02, rtol=0)
        torch.testing.assert_close(x.std(0), 0.5 * scale, atol=0.02, rtol=0)


@pytest.mark.parametrize("cls", [StudentTMixture, GaussianMixture])
def test_marginal_sampling_follows_the_weights(cls):
    prior = _randomised(cls(D, C))
    with torch.no_grad():
        prior.loc.copy_(torch.arange(C).float().unsqueeze(1).expand(C, D) * 100)
        prior.log_scale.fill_(-3)
    torch.manual_seed(2)
    x = prior.sample_given(20000)
    picked = torch.round(x[:, 0] / 100).long()
    freq = torch.bincount(picked, minlength=C).float() / len(x)
    torch.testing.assert_close(freq, torch.softmax(prior.logits, -1).detach(), atol=0.02, rtol=0)


@pytest.mark.parametrize("cls", [StudentTMixture, GaussianMixture, StandardGaussian])
def test_temperature_zero_gives_the_location(cls):
    prior = cls(D, C)
    if cls is not StandardGaussian:
        prior = _randomised(prior)
    component = torch.tensor([0, 3, 1])
    x = prior.sample_given(3, component, temperature=0.0)
    expected = prior.loc[component].detach() if cls is not StandardGaussian else torch.zeros(3, D)
    torch.testing.assert_close(x.detach(), expected)
    code = torch.randn(3, D)
    torch.testing.assert_close(prior.sample_given(3, component, temperature=0.0, loc=code).detach(), code)


@pytest.mark.parametrize("cls", [StudentTMixture, GaussianMixture])
def test_intensity_interpolates_from_the_anchor(cls):
    prior = _randomised(cls(D, C, anchor=0))
    component = torch.tensor([2, 2, 2])
    x = prior.sample_given(3, component, temperature=0.0, intensity=torch.tensor([0.0, 1.0, 2.0])).detach()
    loc = prior.loc.detach()
    torch.testing.assert_close(x[0], loc[0])
    torch.testing.assert_close(x[1], loc[2])
    torch.testing.assert_close(x[2], loc[0] + 2 * (loc[2] - loc[0]))
    # the density follows the moved location: the moved point is the mode
    moved = prior.log_prob_given(x[2:], component[2:], torch.tensor([2.0]))
    unmoved = prior.log_prob_given(x[2:], component[2:])
    assert moved > unmoved


@pytest.mark.parametrize("cls", [StudentTMixture, GaussianMixture])
def test_posterior_recovers_well_separated_components(cls):
    prior = _randomised(cls(D, C))
    with torch.no_grad():
        prior.loc.mul_(10)
        prior.log_scale.fill_(-1)
    component = torch.arange(C).repeat(5)
    z = prior.sample_given(len(component), component, temperature=0.5)
    post = prior.posterior(z)
    torch.testing.assert_close(post.sum(-1), torch.ones(len(z)))
    assert (post.argmax(-1) == component).float().mean() > 0.95


@pytest.mark.parametrize("kind", ["student_t_mixture", "gaussian_mixture", "gaussian"])
def test_nflows_interface_and_gradients(kind):
    prior = make_prior(kind, D, C)
    z = torch.randn(5, D, requires_grad=True)
    context = torch.tensor([0, 1, 2, -1, 3])
    prior.log_prob(z, context).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    for name, p in prior.named_parameters():
        if name == "logits":  # only rows with unknown component reach the weights
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert prior.sample(3, context).shape == (5, 3, D)
    assert prior.sample(4).shape == (4, D)


def test_unknown_prior_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="student_t_mixture"):
        make_prior("laplace", D, C)
