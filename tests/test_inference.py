"""The exact-inference core against brute-force enumeration of all K^T paths."""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from regime_dmm.inference import (
    expected_statistics,
    forecast,
    log_normalizer,
    posterior,
    stationary_distribution,
    viterbi,
)

from brute_force import brute_force


def random_potentials(seed, batch=2, steps=6, k=3):
    g = torch.Generator().manual_seed(seed)
    log_init = torch.randn(batch, k, generator=g, dtype=torch.float64).log_softmax(-1)
    log_trans = torch.randn(batch, steps, k, k, generator=g, dtype=torch.float64).log_softmax(-1)
    obs_ll = 2 * torch.randn(batch, steps, k, generator=g, dtype=torch.float64)
    return log_init, log_trans, obs_ll


@pytest.mark.parametrize("seed,steps,k", [(0, 1, 2), (1, 5, 2), (2, 6, 3), (3, 4, 4), (4, 7, 3)])
def test_log_z_marginals_and_viterbi_match_enumeration(seed, steps, k):
    log_init, log_trans, obs_ll = random_potentials(seed, steps=steps, k=k)
    post = posterior(log_init, log_trans, obs_ll)
    log_z_hmm = log_normalizer(log_init, log_trans, obs_ll)
    for b in range(log_init.shape[0]):
        ref_z, ref_smoothed, ref_path = brute_force(log_init[b].numpy(), log_trans[b].numpy(), obs_ll[b].numpy())
        assert post.log_z[b].item() == pytest.approx(ref_z, abs=1e-10)
        assert log_z_hmm[b].item() == pytest.approx(ref_z, abs=1e-7)
        np.testing.assert_allclose(post.smoothed[b].numpy(), ref_smoothed, atol=1e-10)
        np.testing.assert_array_equal(viterbi(log_init[b].numpy(), log_trans[b].numpy(), obs_ll[b].numpy()), ref_path)


@pytest.mark.parametrize("seed,steps,k", [(0, 1, 2), (1, 5, 2), (2, 6, 3), (3, 4, 4), (4, 7, 3)])
def test_expected_statistics_match_enumeration_and_the_scans(seed, steps, k):
    """The E-step as the gradient of log Z: log Z and smoothed marginals by enumeration of all K^T paths,
    pairwise marginals against the prefix/suffix scans of ``posterior``."""
    log_init, log_trans, obs_ll = random_potentials(seed, steps=steps, k=k)
    stats = expected_statistics(log_init, log_trans, obs_ll)
    post = posterior(log_init, log_trans, obs_ll)
    for b in range(log_init.shape[0]):
        ref_z, ref_smoothed, _ = brute_force(log_init[b].numpy(), log_trans[b].numpy(), obs_ll[b].numpy())
        assert stats.log_z[b].item() == pytest.approx(ref_z, abs=1e-10)
        np.testing.assert_allclose(stats.smoothed[b].numpy(), ref_smoothed, atol=1e-10)
    np.testing.assert_allclose(stats.pairwise[:, 1:].numpy(), post.log_pairwise[:, 1:].exp().numpy(), atol=1e-10)
    assert (stats.pairwise[:, 0] == 0).all()
    assert not stats.smoothed.requires_grad


def test_log_normalizer_equals_pyro_discrete_hmm():
    """The tree of log-matrix products is DiscreteHMM's computation (p(z_0) put into step 0's rows)."""
    log_init, log_trans, obs_ll = random_potentials(9, batch=3, steps=257, k=4)
    first = log_init[:, None, None, :].expand(-1, 1, 4, -1)
    hmm = dist.DiscreteHMM(
        torch.zeros(3, 4, dtype=torch.float64),
        torch.cat([first, log_trans[:, 1:]], dim=1),
        dist.Delta(torch.zeros_like(obs_ll), log_density=obs_ll),
        duration=257,
    )
    expected = hmm.log_prob(torch.zeros(3, 257, dtype=torch.float64))
    np.testing.assert_allclose(log_normalizer(log_init, log_trans, obs_ll).numpy(), expected.numpy(), atol=1e-9)


def test_a_step_no_regime_can_emit_gives_minus_infinity():
    """A day every regime finds impossible makes the likelihood zero wherever it falls (the training loop's
    finiteness checks rely on it)."""
    log_init, log_trans, obs_ll = random_potentials(10, batch=1, steps=9, k=3)
    for t in (0, 4, 8):
        bad = obs_ll.clone()
        bad[0, t] = -float("inf")
        assert log_normalizer(log_init, log_trans, bad).item() == -float("inf")


def test_filtered_last_step_is_enumeration_of_prefix():
    log_init, log_trans, obs_ll = random_potentials(5, steps=6, k=3)
    post = posterior(log_init, log_trans, obs_ll)
    for t in range(6):
        _, ref, _ = brute_force(log_init[0].numpy(), log_trans[0, : t + 1].numpy(), obs_ll[0, : t + 1].numpy())
        np.testing.assert_allclose(post.filtered[0, t].numpy(), ref[-1], atol=1e-10)


def test_pairwise_marginals_are_consistent_and_match_gradient():
    log_init, log_trans, obs_ll = random_potentials(6, steps=6, k=3)
    post = posterior(log_init, log_trans, obs_ll)
    pair = post.log_pairwise.exp()[:, 1:]
    np.testing.assert_allclose(pair.sum((-1, -2)).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(pair.sum(-2).numpy(), post.smoothed[:, 1:].numpy(), atol=1e-12)
    np.testing.assert_allclose(pair.sum(-1).numpy(), post.smoothed[:, :-1].numpy(), atol=1e-12)
    # smoothed marginals are the gradient of log Z w.r.t. the emission log-likelihoods
    obs = obs_ll.clone().requires_grad_()
    (grad,) = torch.autograd.grad(log_normalizer(log_init, log_trans, obs).sum(), obs)
    np.testing.assert_allclose(grad.numpy(), post.smoothed.numpy(), atol=1e-7)


def test_padding_at_the_end_changes_nothing():
    log_init, log_trans, obs_ll = random_potentials(7, batch=1, steps=5, k=3)
    padded_obs = torch.cat([obs_ll, torch.zeros(1, 3, 3, dtype=torch.float64)], dim=1)
    padded_trans = torch.cat([log_trans, log_trans[:, :3]], dim=1)
    a = posterior(log_init, log_trans, obs_ll)
    b = posterior(log_init, padded_trans, padded_obs)
    assert a.log_z.item() == pytest.approx(b.log_z.item(), abs=1e-12)
    np.testing.assert_allclose(a.smoothed.numpy(), b.smoothed[:, :5].numpy(), atol=1e-12)
    assert log_normalizer(log_init, padded_trans, padded_obs).item() == pytest.approx(a.log_z.item(), abs=1e-7)


def test_long_series_stays_finite_and_normalised():
    log_init, log_trans, obs_ll = random_potentials(8, batch=1, steps=20_000, k=4)
    post = posterior(log_init, log_trans, 20 * obs_ll)
    assert torch.isfinite(post.log_z).all()
    np.testing.assert_allclose(post.smoothed.sum(-1).numpy(), 1.0, atol=1e-9)


def test_forecast_converges_to_stationary_distribution():
    trans = np.array([[0.9, 0.08, 0.02], [0.1, 0.8, 0.1], [0.05, 0.25, 0.7]])
    pi = stationary_distribution(trans)
    np.testing.assert_allclose(pi @ trans, pi, atol=1e-12)
    probs = forecast(np.array([1.0, 0.0, 0.0]), trans, 400)
    np.testing.assert_allclose(probs[0], trans[0])
    np.testing.assert_allclose(probs[-1], pi, atol=1e-10)


def test_one_step_predictive_densities_sum_to_log_z_and_match_prefixes():
    log_init, log_trans, obs_ll = random_potentials(9, batch=1, steps=6, k=3)
    post = posterior(log_init, log_trans, obs_ll)
    assert post.log_predictive.sum().item() == pytest.approx(post.log_z.item(), abs=1e-10)
    prev = 0.0
    for t in range(6):
        z, _, _ = brute_force(log_init[0].numpy(), log_trans[0, : t + 1].numpy(), obs_ll[0, : t + 1].numpy())
        assert post.log_predictive[0, t].item() == pytest.approx(z - prev, abs=1e-10)
        prev = z


def test_a_million_steps_keep_a_finite_likelihood_and_normalised_marginals():
    """Log-space recursions: no underflow over 10^6 steps (cheap model: K = 2, one series)."""
    steps = 1_000_000
    g = torch.Generator().manual_seed(0)
    obs_ll = -5.0 * torch.rand(1, steps, 2, generator=g, dtype=torch.float64)
    log_trans = torch.tensor([[0.95, 0.05], [0.1, 0.9]], dtype=torch.float64).log().expand(1, steps, 2, 2)
    log_init = torch.tensor([[0.5, 0.5]], dtype=torch.float64).log()
    log_z = log_normalizer(log_init, log_trans, obs_ll)
    assert torch.isfinite(log_z).all() and log_z.item() < -1e5
    post = posterior(log_init, log_trans, obs_ll)
    assert post.log_z.item() == pytest.approx(log_z.item(), rel=1e-10)
    np.testing.assert_allclose(post.smoothed.sum(-1).numpy(), 1.0, atol=1e-9)


def test_scaled_tree_equals_the_log_space_tree_over_a_huge_dynamic_range():
    """log Z's tree multiplies scaled probability matrices; against a tree of log-space products (what
    ``last_filtered`` and 0.4.0's log Z use) on days whose regimes differ by up to 2,000 nats (a crash day under a
    calm regime's Gaussian), its value, gradient (the marginals) and the penalties' second derivative agree."""

    from regime_dmm.inference.exact import _chain_log_z, _tree_product

    def log_space(alpha0: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(alpha0[..., :, None] + _tree_product(mats), dim=(-2, -1))

    torch.manual_seed(4)
    k, steps = 4, 777
    log_init = torch.randn(3, k, dtype=torch.float64).log_softmax(-1).requires_grad_()
    log_trans = (3 * torch.randn(3, steps, k, k, dtype=torch.float64)).log_softmax(-1).requires_grad_()
    spread = torch.tensor([1.0, 50.0, 2000.0], dtype=torch.float64)[:, None, None]
    obs = (spread * torch.randn(3, steps, k, dtype=torch.float64)).requires_grad_()
    results = []
    for chain in (_chain_log_z, log_space):
        log_z = chain(log_init + obs[..., 0, :], log_trans[..., 1:, :, :] + obs[..., 1:, None, :])
        (gamma,) = torch.autograd.grad(log_z.sum(), obs, create_graph=True)
        entropy = -(gamma * gamma.clamp(min=1e-30).log()).sum()
        second = torch.autograd.grad(log_z.sum() + (entropy - 0.7) ** 2, (log_init, log_trans, obs))
        results.append((log_z.detach(), gamma.detach(), [g.detach() for g in second]))
    (z1, g1, s1), (z2, g2, s2) = results
    assert torch.isfinite(z1).all() and math.isclose(float(z1[2]), float(z2[2]), rel_tol=1e-12)
    torch.testing.assert_close(z1, z2, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-9)
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


def test_scaled_tree_edge_cases_float32_and_an_impossible_day():
    """float32 (whose range ends at 1e-38) takes the log-space tree: a regime left with probability 1e-30 and days
    60 nats apart give the log-space value, not -inf; a day impossible under every regime gives log Z -inf with a
    finite (zero) gradient in float64."""
    from regime_dmm.inference.exact import _chain_log_z, _tree_product

    torch.manual_seed(7)
    k, steps = 3, 64
    trans = torch.full((k, k), 1e-30, dtype=torch.float32) + torch.eye(k, dtype=torch.float32)
    log_trans = (trans / trans.sum(-1, keepdim=True)).log().expand(1, steps, k, k)
    obs = 60 * torch.randn(1, steps, k, dtype=torch.float32)
    log_init = torch.full((1, k), -math.log(k), dtype=torch.float32)
    alpha0, mats = log_init + obs[..., 0, :], log_trans[..., 1:, :, :] + obs[..., 1:, None, :]
    expected = torch.logsumexp(alpha0.double()[..., :, None] + _tree_product(mats.double()), dim=(-2, -1))
    got = _chain_log_z(alpha0, mats)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-2)

    obs64 = torch.randn(2, 50, 4, dtype=torch.float64)
    obs64[1, 20] = -math.inf  # market 1, day 20: no regime can emit it
    obs64.requires_grad_()
    log_trans64 = torch.randn(2, 50, 4, 4, dtype=torch.float64).log_softmax(-1)
    log_init64 = torch.randn(2, 4, dtype=torch.float64).log_softmax(-1)
    log_z = log_normalizer(log_init64, log_trans64, obs64)
    assert math.isinf(float(log_z[1])) and float(log_z[1]) < 0 and math.isfinite(float(log_z[0]))
    (grad,) = torch.autograd.grad(log_z.sum(), obs64)  # the impossible market's -inf included
    assert torch.isfinite(grad).all() and float(grad[1].abs().sum()) == 0.0
