"""Tests of regime_dmm.data.simulator: reproducibility, regime usage, volatility, round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from regime_dmm.data import (
    DEFAULT_SPECS,
    REGIMES,
    build_features,
    load_prices,
    simulate_default,
    simulate_markets,
    transition_matrix,
    write_csv,
)
from regime_dmm.errors import ConfigError
from regime_dmm.inference import stationary_distribution

TARGET_USAGE = {
    "traditional_cre": np.array([0.70, 0.20, 0.08, 0.02]),
    "tokenized_reit": np.array([0.35, 0.45, 0.15, 0.05]),
}


@pytest.fixture(scope="module")
def default():
    return simulate_default()


@pytest.fixture(scope="module")
def clean():
    """The default markets with a trade every day and no jumps (regime-dmm 0.1's simulator)."""
    return simulate_default(no_trade_share=0, jump_prob=0)


@pytest.fixture(scope="module")
def long_run():
    return simulate_default(seed=7, n_days=50_001)


def returns_of(frame: pd.DataFrame, market: str) -> np.ndarray:
    return np.diff(np.log(frame.loc[frame["market"] == market, "price"].to_numpy()))


def test_default_shape_and_calendar(default):
    f = default.frame
    assert list(f.columns) == ["date", "market", "price"]
    assert default.regimes == REGIMES == ("calm", "neutral", "volatile", "panic")
    assert list(pd.unique(f["market"])) == ["traditional_cre", "tokenized_reit"]
    trad = f[f["market"] == "traditional_cre"]
    tok = f[f["market"] == "tokenized_reit"]
    assert len(trad) == len(tok) == 2501
    assert trad["date"].iloc[0] == pd.Timestamp("2015-01-02")
    assert tok["date"].iloc[0] == pd.Timestamp("2019-06-01")
    assert trad["date"].dt.day_of_week.max() <= 4  # business days only
    assert set(tok["date"].dt.day_of_week) == set(range(7))  # every day
    assert (tok["date"].diff().dropna() == pd.Timedelta(days=1)).all()
    assert trad["price"].iloc[0] == tok["price"].iloc[0] == 100.0
    for z in default.true_regimes.values():
        assert z.shape == (2500,)
        assert z.min() >= 0 and z.max() < 4


def test_prices_follow_returns(clean):
    for market in clean.markets:
        r = returns_of(clean.frame, market)
        p = clean.params[market]
        z = clean.true_regimes[market]
        # standardised residuals under the true regimes look standard normal
        e = (r - p["mean"][z]) / p["sd"][z]
        assert abs(e.mean()) < 0.1 and abs(e.std() - 1) < 0.1


def test_same_seed_same_output_different_seed_differs():
    a = simulate_default(seed=3, n_days=300)
    b = simulate_default(seed=3, n_days=300)
    c = simulate_default(seed=4, n_days=300)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    for m in a.markets:
        np.testing.assert_array_equal(a.true_regimes[m], b.true_regimes[m])
    assert not np.allclose(a.frame["price"], c.frame["price"])


def test_transition_matrices(default):
    for market, p in default.params.items():
        P = p["transition"]
        assert P.shape == (4, 4)
        assert np.all(P >= 0)
        np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(stationary_distribution(P), TARGET_USAGE[market], atol=1e-10)
        np.testing.assert_allclose(TARGET_USAGE[market] @ P, TARGET_USAGE[market], atol=1e-12)
        np.testing.assert_allclose(p["initial"], TARGET_USAGE[market], atol=1e-12)
        assert np.all(np.diag(P) > 0.5)  # diagonal dominant
        durations = 1.0 / (1.0 - np.diag(P))
        assert 10 <= durations[0] <= 60 and 4 <= durations[3] <= 10


def test_transition_matrix_formula_any_target():
    rng = np.random.default_rng(0)
    for _ in range(5):
        u = rng.dirichlet(np.ones(5))
        lam = rng.uniform(0.01, 1.0, size=5)
        P = transition_matrix(u, lam)
        np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(stationary_distribution(P), u, atol=1e-10)


def test_sd_ordering_and_means(default):
    for p in default.params.values():
        assert np.all(np.diff(p["sd"]) > 0)
        assert p["mean"][0] > 0 > p["mean"][3]


def test_empirical_usage_close_to_targets(long_run):
    for market, target in TARGET_USAGE.items():
        usage = np.bincount(long_run.true_regimes[market], minlength=4) / 50_000
        np.testing.assert_allclose(usage, target, atol=0.03)


@pytest.mark.parametrize("fixture", ["default", "long_run"])
def test_volatility_ratio(request, fixture):
    data = request.getfixturevalue(fixture)
    ratio = returns_of(data.frame, "tokenized_reit").std() / returns_of(data.frame, "traditional_cre").std()
    assert 10 < ratio < 14


def test_round_trip_through_csv(clean, tmp_path):
    path = write_csv(clean, tmp_path / "sub" / "default.csv")
    assert path.read_text().splitlines()[1].startswith("2015-01-02,traditional_cre,100.0")
    df = load_prices(path)
    pd.testing.assert_frame_equal(df, clean.frame, check_exact=False, rtol=1e-14)
    series = build_features(df)
    for s in series:
        assert s.length == 2500
        np.testing.assert_allclose(s.returns, returns_of(clean.frame, s.name), rtol=1e-9, atol=1e-15)
        dates = clean.frame.loc[clean.frame["market"] == s.name, "date"].iloc[1:]
        assert s.dates.equals(pd.DatetimeIndex(dates))


def test_tokenized_market_has_no_trade_days_jumps_and_a_later_listing(default, clean):
    tok = default.frame[default.frame["market"] == "tokenized_reit"]
    trad = default.frame[default.frame["market"] == "traditional_cre"]
    assert tok["date"].min() > trad["date"].min() + pd.Timedelta(days=365)  # listed years later
    traded = default.traded["tokenized_reit"]
    assert 0.30 < 1 - traded.mean() < 0.37  # about a third of the days without a trade
    prices = tok["price"].to_numpy()
    np.testing.assert_array_equal(prices[1:][~traded], prices[:-1][~traded])  # the last traded price repeats
    assert (prices[1:][traded] != prices[:-1][traded]).all()
    assert default.traded["traditional_cre"].all()
    # the traditional market is exactly the clean one; the token's latent path is too (prices on trade days)
    pd.testing.assert_frame_equal(trad, clean.frame[clean.frame["market"] == "traditional_cre"])
    latent = clean.frame.loc[clean.frame["market"] == "tokenized_reit", "price"].to_numpy()[1:]
    jumps = np.abs(np.log(prices[1:][traded] / latent[traded]))  # jumps are the only difference
    assert (jumps > 1e-12).any() and np.isfinite(jumps).all()


@pytest.mark.parametrize("df", [4.0, 8.0])
def test_student_t_shocks_keep_the_regime_sds_and_have_heavy_tails(df):
    sim = simulate_default(seed=2, n_days=20_001, shocks=f"studentt:{df}", no_trade_share=0, jump_prob=0)
    for market in sim.markets:
        r = returns_of(sim.frame, market)
        p, z = sim.params[market], sim.true_regimes[market]
        e = (r - p["mean"][z]) / p["sd"][z]
        assert abs(e.std() - 1) < 0.08
        kurtosis = float(np.mean(e**4) / np.mean(e**2) ** 2)
        assert kurtosis > 3.5  # a Gaussian has 3
    with pytest.raises(ConfigError, match="shocks"):
        simulate_default(shocks="studentt:2")


def test_generic_specs_and_validation():
    spec = dict(
        name="x",
        start="2020-01-01",
        freq="D",
        usage=(0.5, 0.5),
        leave_rates=(0.2, 0.3),
        means=(0.0, 0.0),
        sds=(0.01, 0.02),
    )
    data = simulate_markets([spec], seed=1, n_days=50, regimes=("low", "high"))
    assert data.regimes == ("low", "high")
    assert len(data.frame) == 50 and data.true_regimes["x"].shape == (49,)
    with pytest.raises(ValueError, match="sds"):
        simulate_markets([{**spec, "sds": (0.02, 0.01)}], regimes=("low", "high"))
    with pytest.raises(ValueError, match="freq"):
        simulate_markets([{**spec, "freq": "H"}], regimes=("low", "high"))
    with pytest.raises(ValueError, match="n_days"):
        simulate_default(n_days=1)
    assert [s.name for s in DEFAULT_SPECS] == ["traditional_cre", "tokenized_reit"]


def test_student_t_oracle_uses_the_shock_law():
    """With Student-t shocks the truth records ``df``, and the oracle scores days with the t density: it
    beats a Gaussian oracle of the same means and sds on heavy-tailed data (one outlier is not a regime)."""
    from regime_dmm.evaluation import oracle_states

    sim = simulate_default(seed=5, shocks="studentt:3", no_trade_share=0, jump_prob=0)
    market = "traditional_cre"
    params = sim.params[market]
    assert float(params["df"]) == 3.0
    returns = np.diff(np.log(sim.frame.loc[sim.frame["market"] == market, "price"].to_numpy()))
    truth = sim.true_regimes[market]
    with_t = (oracle_states(returns, params) == truth).mean()
    gaussian = (oracle_states(returns, {k: v for k, v in params.items() if k != "df"}) == truth).mean()
    assert with_t > gaussian + 0.01, (with_t, gaussian)
    assert "df" not in simulate_default(seed=5).params[market]
