"""Filtered regime probabilities (``filtered_<name>`` in regimes.csv): p(z_t | days up to t) at the fitted
parameters. Checked against a forward recursion written here in numpy, and for look-ahead: the filtered
probabilities of a day do not change when the days after it are removed."""

import math

import numpy as np
import pandas as pd
import pytest

from regime_dmm import FitConfig, fit
from regime_dmm.data import read_prices, simulate_default

from helpers import two_regime_market

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classic():
    """A classic two-regime fit of one simulated market (homogeneous transition matrix)."""
    frame = two_regime_market(400, seed=11)
    config = FitConfig().replace(model={"num_regimes": 2, "classic": True}, training={"restarts": 1})
    return fit(frame, config)


@pytest.fixture(scope="module")
def dmm():
    """A short default-mode fit (transition network fed the past days, no-trade days masked)."""
    frame = simulate_default(seed=4, n_days=260, jump_prob=0).frame
    config = FitConfig().replace(model={"num_regimes": 3}, training={"epochs": 8, "restarts": 1})
    return fit(frame, config), frame


def forward(initial, transition, loglik):
    """p(z_t | x_1..x_t) by the textbook forward recursion (Rabiner 1989), normalised every day."""
    out = np.empty_like(loglik)
    prior = initial
    for t in range(len(loglik)):
        joint = prior * np.exp(loglik[t] - loglik[t].max())
        out[t] = joint / joint.sum()
        prior = out[t] @ transition
    return out


def test_filtered_columns_are_the_forward_recursion_at_the_fitted_parameters(classic):
    m = classic.markets[0]
    mean, sd = np.asarray(m.emission["return_mean"]), np.asarray(m.emission["return_sd"])
    span = m.span.astype(float)[:, None]
    r = np.nan_to_num(m.returns)[:, None]
    scale = sd * np.sqrt(span)
    loglik = -0.5 * ((r - mean * span) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi)
    loglik[~m.observed] = 0.0  # a masked day emits nothing
    expected = forward(m.initial, m.transition, loglik)
    table = classic.regimes_frame()
    got = table[[f"filtered_{r}" for r in classic.regimes]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-8)
    # the last day's filtered and smoothed probabilities agree (no later day to learn from): the regime now
    np.testing.assert_allclose(got[-1], table[[f"prob_{r}" for r in classic.regimes]].to_numpy()[-1], atol=1e-10)
    np.testing.assert_allclose(got[-1], m.current_probs, atol=1e-12)
    # and they are not the smoothed ones earlier on
    assert np.abs(got - table[[f"prob_{r}" for r in classic.regimes]].to_numpy()).max() > 0.05


@pytest.mark.parametrize("cut", ["2015-06-30", "2019-09-10", "2020-01-15"])
def test_filtered_probabilities_of_a_day_do_not_see_later_days(dmm, cut):
    result, frame = dmm
    fitted = result.require_fitted()
    before = frame[pd.to_datetime(frame["date"]) <= pd.Timestamp(cut)]
    panel = fitted.pipeline.transform(read_prices(before))
    _, post = fitted.posterior(fitted.model_data(panel))
    for i, series in enumerate(panel.series):
        full = result.market(series.name)
        assert series.length > 20 and (full.dates[: series.length] == series.dates).all()
        np.testing.assert_array_equal(post.filtered[i, : series.length].numpy(), full.filtered[: series.length])
