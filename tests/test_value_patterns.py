"""Property-based tests on value patterns (the inputs-from-the-field issue, item 1): price series
built from runs of equal prices, zero-return days, calendar gaps and single extreme days either
fit with finite results or fail with the package's own error - never a traceback.

``test_fuzz.py`` mutates CSV text; here every input is well-formed and the patterns are in the
values, where the field's failures were (a frozen feed giving NaN starting values, a crash day
pulling a regime onto the variance floor).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import regime_dmm as rd
from regime_dmm.errors import DataError

pytestmark = pytest.mark.slow

TINY = rd.FitConfig().replace(model={"num_regimes": 3}, training={"epochs": 3, "restarts": 1})

# One piece of a series: (kind, length, size). Kinds: ordinary days, a run of one repeated price,
# a run of missing calendar days (a gap), a single extreme day.
pieces = st.one_of(
    st.tuples(st.just("normal"), st.integers(5, 60), st.sampled_from([1e-4, 0.01, 0.05])),
    st.tuples(st.just("frozen"), st.integers(1, 120), st.just(0.0)),
    st.tuples(st.just("gap"), st.integers(1, 90), st.just(0.0)),
    st.tuples(st.just("extreme"), st.just(1), st.sampled_from([-2.0, -0.7, -0.35, 0.4, 1.5, 4.6])),
)


def build(pattern: list[tuple[str, int, float]], seed: int, as_returns: bool) -> pd.DataFrame:
    """A one-market long frame on business days from the pieces (log returns, price base 100)."""
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    present: list[bool] = []
    for kind, length, size in pattern:
        if kind == "normal":
            returns += list(rng.normal(0.0, size, length))
            present += [True] * length
        elif kind == "frozen":
            returns += [0.0] * length
            present += [True] * length
        elif kind == "gap":
            returns += list(rng.normal(0.0, 0.01, length))  # the market moves while no row is written
            present += [False] * length
        else:
            returns.append(size)
            present.append(True)
    r = np.asarray(returns)
    dates = pd.bdate_range("2010-01-04", periods=len(r) + 1)
    keep = np.concatenate([[True], np.asarray(present)])
    if as_returns:
        frame = pd.DataFrame({"date": dates[1:], "market": "m", "return": r})
        return frame[keep[1:]].reset_index(drop=True)
    prices = 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(r)]))
    frame = pd.DataFrame({"date": dates, "market": "m", "price": prices})
    return frame[keep].reset_index(drop=True)


def check(frame: pd.DataFrame, config: rd.FitConfig) -> None:
    try:
        fit = rd.fit(frame, config)
    except DataError as exc:  # a data problem, said as such (a TrainingError here would be a NaN path)
        assert "'m'" in str(exc) or not len(frame), str(exc)  # names the market
        return
    m = fit.markets[0]
    assert np.isfinite(fit.log_likelihood)
    assert np.allclose(m.smoothed.sum(-1), 1.0)
    assert np.all(np.isfinite(m.transition)) and np.all(np.isfinite(m.emission["return_sd"]))
    assert np.all(np.asarray(m.emission["return_sd"]) > 0)
    # masked days never hold a finite return, and every observed day does
    assert np.isfinite(m.returns[m.observed]).all() and np.isnan(m.returns[~m.observed]).all()


settings_ = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@settings_
@given(
    pattern=st.lists(pieces, min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
    as_returns=st.booleans(),
)
def test_value_patterns_fit_or_raise_the_package_error(pattern, seed, as_returns):
    check(build(pattern, seed, as_returns), TINY)


@settings_
@given(
    pattern=st.lists(pieces, min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
    as_returns=st.booleans(),
)
def test_value_patterns_in_classic_mode(pattern, seed, as_returns):
    check(build(pattern, seed, as_returns), TINY.replace(model={"classic": True}))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.lists(pieces, min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
    stale=st.sampled_from(["mask", "keep"]),
    bad_ticks=st.sampled_from(["mask", "warn"]),
)
def test_value_patterns_under_every_data_rule(pattern, seed, stale, bad_ticks):
    config = TINY.replace(data={"stale": stale, "bad_ticks": bad_ticks})
    check(build(pattern, seed, as_returns=False), config)
