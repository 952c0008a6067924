"""The vectorised cross-market lead/lag (regime_dmm.cross_market) against straightforward loops: the
cross-correlation at each lag against ``np.corrcoef`` on each window, and the moving-block bootstrap's
intervals against the per-resample loop it replaced (same seed, same draws, same intervals)."""

from __future__ import annotations

import numpy as np
import pandas as pd

import regime_dmm.cross_market as cross_market_module
from regime_dmm.config import FitConfig
from regime_dmm.cross_market import STRESS_REGIMES, _block_bootstrap_lags, _xcorr, cross_market
from regime_dmm.results import MarketResult, RegimeFit

REGIMES = ("calm", "normal", "volatile", "panic")


def reference_xcorr(a: np.ndarray, b: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """One ``np.corrcoef`` per lag on the overlapping part (the implementation before vectorising)."""
    out = np.full(len(lags), np.nan)
    n = len(a)
    for i, lag in enumerate(lags):
        x, y = (a[: n - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: n + lag])
        if len(x) > 2 and x.std() > 0 and y.std() > 0:
            out[i] = float(np.corrcoef(x, y)[0, 1])
    return out


def reference_bootstrap(a: np.ndarray, b: np.ndarray, lags: np.ndarray, block: int, n_boot: int, rng) -> list[int]:
    """The moving-block bootstrap as one loop over the resamples (the implementation before vectorising)."""
    n = len(a)
    boot = []
    for _ in range(n_boot):
        starts = rng.integers(0, n - block + 1, size=int(np.ceil(n / block)))
        idx = np.concatenate([np.arange(s, s + block) for s in starts])[:n]
        c = reference_xcorr(a[idx], b[idx], lags)
        if np.isfinite(c).any():
            boot.append(int(lags[int(np.nanargmax(c))]))
    return boot


def persistent(rng: np.random.Generator, n: int, stay: float = 0.95) -> np.ndarray:
    """A smoothed-probability-like series in (0, 1): a persistent two-state path, blurred and noisy."""
    z = np.empty(n)
    z[0] = 0.0
    for t in range(1, n):
        z[t] = z[t - 1] if rng.random() < stay else 1.0 - z[t - 1]
    x = np.convolve(z, np.ones(5) / 5, mode="same") + 0.1 * rng.standard_normal(n)
    return 1.0 / (1.0 + np.exp(-4.0 * (x - 0.5)))


def assert_same(new: np.ndarray, ref: np.ndarray) -> None:
    assert new.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(new), np.isnan(ref))
    np.testing.assert_allclose(new[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=0, atol=1e-12)


def test_xcorr_equals_a_corrcoef_per_lag_including_constant_windows():
    rng = np.random.default_rng(0)
    n, lags = 200, np.arange(-30, 31)
    cases = [(rng.standard_normal(n), rng.standard_normal(n)), (persistent(rng, n), persistent(rng, n))]
    a, b = persistent(rng, n), persistent(rng, n)
    b[1:] = 0.6 * b[1:] + 0.4 * a[:-1]  # b follows a by a day
    cases.append((a, b))
    # constant but for the last 10 days (a) and the first 5 (b): a's windows at lags >= 10 and b's at lags >= 5
    # leave those days out and are constant; reversed (the next case), a's at lags <= -10
    a, b = np.zeros(n), np.full(n, 0.25)
    a[-10:], b[:5] = rng.random(10), rng.random(5)
    cases.append((a, b))
    cases.append((a[::-1].copy(), rng.random(n)))
    # calm but for the last 20 days (a) and the first 15 (b): the windows without them vary a millionth as much
    # as the series (the cancellation that centring on the whole series' mean would suffer)
    a, b = 1e-6 * rng.random(n), 1e-6 * rng.random(n)
    a[-20:], b[:15] = 0.9 + 0.1 * rng.random(20), 0.95
    cases.append((a, b))
    cases.append((np.ones(n), rng.random(n)))  # constant throughout: all NaN
    for a, b in cases:
        assert_same(_xcorr(a, b, lags), reference_xcorr(a, b, lags))
    a, b = cases[3]
    assert np.isnan(_xcorr(a, b, lags)[lags >= 5]).all() and np.isfinite(_xcorr(a, b, lags)[lags < 5]).all()
    assert np.isnan(_xcorr(*cases[-1], lags)).all()
    # any lags, in any order; windows of fewer than 3 days are NaN
    odd = np.array([7, -3, 0, 12, -12, 1])
    assert_same(_xcorr(*cases[1], odd), reference_xcorr(*cases[1], odd))
    short = rng.random(6), rng.random(6)
    assert_same(_xcorr(*short, np.arange(-5, 6)), reference_xcorr(*short, np.arange(-5, 6)))
    assert np.isnan(_xcorr(*short, np.array([-5, -4, 4, 5]))).all()
    a, b = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]), rng.random(7)  # a core of one day
    assert_same(_xcorr(a, b, np.arange(-3, 4)), reference_xcorr(a, b, np.arange(-3, 4)))
    # a batch of series (the bootstrap's resamples) along the leading axis, row by row the same
    a, b = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
    batch = _xcorr(a, b, lags)
    assert batch.shape == (len(cases), len(lags))
    for row, (x, y) in zip(batch, cases):
        assert_same(row, reference_xcorr(x, y, lags))


def test_xcorr_equals_a_corrcoef_per_lag_on_random_cases():
    """Short and long series, lags up to the length (the window-by-window path) or a quarter of it (the
    cumulative one), values with ties, runs of zeros and a tiny-variance stretch beside large values."""
    rng = np.random.default_rng(2)
    for _ in range(300):
        n = int(rng.integers(2, 150))
        if rng.random() < 0.5:
            lags = rng.integers(-(n - 1), n, size=int(rng.integers(1, 8)))
        else:
            lags = np.arange(-(m := int(rng.integers(0, max(1, n // 4)))), m + 1)
        kind = int(rng.integers(4))
        pair = []
        for _ in range(2):
            if kind == 0:
                x = rng.standard_normal(n)
            elif kind == 1:
                x = rng.integers(0, 3, n).astype(float)
            elif kind == 2:
                x = np.round(rng.random(n), 1) * (rng.random(n) < 0.2)
            else:
                x = 1e-7 * rng.random(n)
                x[-int(rng.integers(1, n + 1)) :] += 1.0
            pair.append(x)
        assert_same(_xcorr(pair[0], pair[1], lags), reference_xcorr(pair[0], pair[1], lags))


def test_block_bootstrap_draws_the_same_resamples_as_the_loop(monkeypatch):
    rng = np.random.default_rng(1)
    n, lags = 300, np.arange(-10, 11)
    a = persistent(rng, n)
    b = np.concatenate([a[:3], a[:-3]]) * 0.7 + 0.3 * persistent(rng, n)  # b follows a by 3 days
    r_new, r_ref = np.random.default_rng(7), np.random.default_rng(7)
    new = _block_bootstrap_lags(a, b, lags, 20, 60, r_new)
    assert new.tolist() == reference_bootstrap(a, b, lags, 20, 60, r_ref)
    assert r_new.integers(1 << 40) == r_ref.integers(1 << 40)  # the generator is left where the loop left it
    assert _block_bootstrap_lags(a, b, lags, 20, 0, r_new).size == 0
    monkeypatch.setattr(cross_market_module, "_BOOT_CHUNK", 7 * n)  # resamples 7 at a time: the same
    r_new, r_ref = np.random.default_rng(8), np.random.default_rng(8)
    assert _block_bootstrap_lags(a, b, lags, 20, 30, r_new).tolist() == reference_bootstrap(a, b, lags, 20, 30, r_ref)


def market(name: str, dates: pd.DatetimeIndex, stress: np.ndarray, rng: np.random.Generator) -> MarketResult:
    """A MarketResult with the smoothed probabilities that carry the given stress probability."""
    t = len(dates)
    calm = rng.random(t)
    p = np.stack([calm * (1 - stress) * 0.5, (1 - calm) * (1 - stress) * 0.5, stress * 0.7, stress * 0.3], 1)
    p[:, 0] += 0.5 * (1 - stress)
    k = len(REGIMES)
    return MarketResult(
        name=name,
        dates=dates,
        prices=None,
        returns=np.zeros(t),
        smoothed=p,
        filtered=p,
        viterbi=p.argmax(-1),
        transition=np.eye(k),
        base_transition=np.eye(k),
        initial=np.full(k, 1 / k),
        usage=p.mean(0),
        expected_duration=np.ones(k),
        emission={},
        log_likelihood=0.0,
        log_likelihood_normalised=0.0,
    )


def test_cross_market_intervals_equal_the_loop_for_a_seed():
    """Three markets (three pairs, one generator across them), one on a 7-day calendar: the intervals and
    correlations of the vectorised report are the loop's, pair after pair."""
    rng = np.random.default_rng(3)
    base = persistent(rng, 420)
    markets = [
        market("lead", pd.bdate_range("2020-01-01", periods=400), base[20:], rng),
        market("lag", pd.bdate_range("2020-01-01", periods=400), 0.8 * base[16:-4] + 0.2 * rng.random(400), rng),
        market("token", pd.date_range("2019-12-01", periods=560, freq="D"), persistent(rng, 560), rng),
    ]
    fit = RegimeFit(FitConfig(), REGIMES, markets, pd.DataFrame(), [], 0, "synthetic")
    max_lag, n_boot, seed = 8, 40, 5
    pairs = cross_market(fit, max_lag=max_lag, n_boot=n_boot, seed=seed)
    ref_rng = np.random.default_rng(seed)
    lags = np.arange(-max_lag, max_lag + 1)
    for pair, (i, j) in zip(pairs, [(0, 1), (0, 2), (1, 2)]):
        a, b = markets[i], markets[j]
        shared = a.dates.intersection(b.dates)
        sa = a.smoothed[a.dates.get_indexer(shared)][:, 2:].sum(-1)
        sb = b.smoothed[b.dates.get_indexer(shared)][:, 2:].sum(-1)
        corr = reference_xcorr(sa, sb, lags)
        lead = pair["lead_lag"]
        assert pair["stress_regimes"] == list(STRESS_REGIMES) and pair["shared_days"] == len(shared)
        assert lead["correlation_by_lag"] == [round(float(c), 6) for c in corr]
        assert lead["best_lag"] == int(lags[np.nanargmax(corr)])
        boot = reference_bootstrap(sa, sb, lags, min(2 * max_lag, len(shared) // 4), n_boot, ref_rng)
        lo, hi = np.percentile(boot, [5, 95])
        assert lead["interval90"] == [int(np.floor(lo)), int(np.ceil(hi))]
    assert pairs[0]["lead_lag"]["best_lag"] == 4
    assert pairs == cross_market(fit, max_lag=max_lag, n_boot=n_boot, seed=seed)  # seeded


def test_a_lead_is_marked_only_when_its_interval_is_narrow():
    """A clear 4-day lead is resolved and marked; two unrelated markets' peak is not told from noise: no best-lag
    line on the plot, ``resolved`` False."""
    from regime_dmm.cross_market import plot_cross_market

    rng = np.random.default_rng(11)
    base = persistent(rng, 420)
    dates = pd.bdate_range("2020-01-01", periods=400)
    markets = [
        market("lead", dates, base[20:], rng),
        market("lag", dates, 0.8 * base[16:-4] + 0.2 * rng.random(400), rng),
        market("other", dates, persistent(np.random.default_rng(99), 400), rng),
    ]
    fit = RegimeFit(FitConfig(), REGIMES, markets, pd.DataFrame(), [], 0, "synthetic")
    pairs = cross_market(fit, max_lag=8, n_boot=60, seed=2)
    clear = pairs[0]["lead_lag"]
    assert clear["best_lag"] == 4 and clear["resolved"]
    assert clear["interval90"][1] - clear["interval90"][0] <= 8
    noise = [p["lead_lag"] for p in pairs[1:]]
    assert any(not lead["resolved"] for lead in noise), noise
    for lead in noise:
        assert lead["resolved"] == (lead["interval90"][1] - lead["interval90"][0] <= 8)
    fig = plot_cross_market(fit, pairs)
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert sum(label.startswith("best lag") for label in labels) == sum(p["lead_lag"]["resolved"] for p in pairs)
    assert any(label.startswith("no clear lead") for label in labels)
