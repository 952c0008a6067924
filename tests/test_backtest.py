"""The strategy check on walk-forward regimes (regime_dmm.backtest, ``regime-dmm backtest``): figures
computed by hand on small tables, and the command line on a real walk-forward output."""

import numpy as np
import pandas as pd
import pytest

from regime_dmm.backtest import StrategySpec, backtest, persistence
from regime_dmm.cli import main
from regime_dmm.errors import DataError

from helpers import two_regime_market

DATES = pd.bdate_range("2021-01-04", periods=6)
PRICES = pd.DataFrame({"date": DATES, "market": "m", "price": [100.0, 110.0, 99.0, 99.0, 108.9, 119.79]})


def walkforward(stress: list[float]) -> pd.DataFrame:
    """A walk-forward table for the last five dates with the given p(volatile) (two regimes)."""
    stress_ = np.asarray(stress)
    return pd.DataFrame(
        {
            "date": DATES[1:].strftime("%Y-%m-%d"),
            "market": "m",
            "regime": np.where(stress_ > 0.5, "volatile", "calm"),
            "filtered_calm": 1 - stress_,
            "filtered_volatile": stress_,
            "fit_date": "2021-01-01",
            "observed": 1,
        }
    )


def test_long_cash_returns_by_hand():
    metrics, daily = backtest(walkforward([0.1, 0.9, 0.9, 0.2, 0.1]), PRICES, StrategySpec(risk_off=("volatile",)))
    simple = np.array([0.10, -0.10, 0.0, 0.10, 0.10])
    # decisions (hold when p <= 0.5), known at each close: 1 0 0 1 1. With the default 1-day delay the
    # decision of day t sets the position of day t + 2: 1 1 1 0 0 (the first two days held)
    position = np.array([1, 1, 1, 0, 0.0])
    cost = np.array([0, 0, 0, 0.001, 0])  # 10 bp on each change
    strategy = position * simple - cost
    frame = daily["m"]
    np.testing.assert_allclose(frame["return"], simple, atol=1e-12)
    np.testing.assert_array_equal(frame["position"], position)
    np.testing.assert_allclose(frame["long_cash"], np.cumprod(1 + strategy), atol=1e-12)
    row = metrics.set_index("strategy").loc["long_cash"]
    per_year = 4 / ((DATES[-1] - DATES[1]).days / 365.25)  # 4 intervals between the 5 days (7 calendar days)
    assert row["annual_return"] == pytest.approx(np.prod(1 + strategy) ** (per_year / 5) - 1)
    equity = np.cumprod(1 + strategy)
    assert row["max_drawdown"] == pytest.approx(1 - equity[3] / equity[0])  # 1.1 -> 0.99 -> 0.98901 (the cost)
    assert row["turnover_per_year"] == pytest.approx(1 * per_year / 5)
    bh = metrics.set_index("strategy").loc["buy_and_hold"]
    assert bh["max_drawdown"] == pytest.approx(0.1) and bh["turnover_per_year"] == 0
    assert bh["sharpe"] == pytest.approx(simple.mean() / simple.std(ddof=1) * np.sqrt(per_year))


def test_a_signal_that_foresees_the_next_day_avoids_every_loss_only_without_delay():
    """The stress of day t flags the loss of day t + 1 (returns 0.1, -0.1, 0, 0.1, 0.1): traded at day t's
    close (delay 0) the loss is avoided; the decision never earns the return it was computed from."""
    foresight = walkforward([0.9, 0.1, 0.1, 0.1, 0.1])
    spec = StrategySpec(risk_off=("volatile",), cost_bps=0, delay=0)
    metrics, daily = backtest(foresight, PRICES, spec)
    np.testing.assert_array_equal(daily["m"]["position"], [1, 0, 1, 1, 1])
    assert metrics.set_index("strategy").loc["long_cash", "max_drawdown"] == 0
    late, _ = backtest(foresight, PRICES, StrategySpec(risk_off=("volatile",), cost_bps=0, delay=1))
    assert late.set_index("strategy").loc["long_cash", "max_drawdown"] == pytest.approx(0.1)


def test_a_masked_day_moves_no_position():
    table = walkforward([0.1, 0.9, 0.1, 0.1, 0.1])
    table.loc[1, "observed"] = 0  # a likely bad tick: its stress is not acted on
    _, daily = backtest(table, PRICES, StrategySpec(risk_off=("volatile",), delay=0))
    np.testing.assert_array_equal(daily["m"]["position"], [1, 1, 1, 1, 1])


def test_persistence_counts_shifts_per_year_and_mean_duration():
    assert persistence(["a", "a", "b", "b", "b", "a"], years=0.5) == (4.0, 2.0)
    shifts, duration = persistence(["a"] * 10, years=1.0)
    assert shifts == 0 and duration == 10


def test_settings_that_do_not_fit_are_named():
    with pytest.raises(DataError, match="not among the regimes calm, volatile"):
        backtest(walkforward([0.1] * 5), PRICES, StrategySpec(risk_off=("panic",)))
    with pytest.raises(DataError, match="threshold"):
        backtest(walkforward([0.1] * 5), PRICES, StrategySpec(risk_off=("volatile",), threshold=1.5))
    with pytest.raises(DataError, match="market 'm' of the walk-forward table is not in the price data"):
        backtest(walkforward([0.1] * 5), PRICES.assign(market="x"), StrategySpec(risk_off=("volatile",)))
    with pytest.raises(DataError, match="no rows"):
        backtest(walkforward([0.1] * 5).iloc[:0], PRICES, StrategySpec(risk_off=("volatile",)))
    with pytest.raises(DataError, match="too few for annual figures"):
        backtest(walkforward([0.1] * 5).iloc[:1], PRICES, StrategySpec(risk_off=("volatile",)))


def test_command_line_backtests_a_walkforward_output(tmp_path, capsys):
    csv = tmp_path / "a.csv"
    frame = two_regime_market(220, seed=8, means=(0.0005, -0.002), sds=(0.006, 0.025))
    frame[["date", "market", "price"]].assign(rf=2.5).to_csv(csv, index=False, date_format="%Y-%m-%d")
    out = tmp_path / "wf"
    wf = ["walkforward", "--data", str(csv), "--classic", "--regimes", "2", "--restarts", "1", "--quiet"]
    assert main([*wf, "--refit-every", "60", "--start", "2020-06-01", "--out", str(out)]) == 0
    assert main(["backtest", str(out), "--risk-off", "volatile"]) == 0
    metrics = pd.read_csv(out / "backtest.csv")
    assert metrics["strategy"].tolist() == ["long_cash", "buy_and_hold"]
    assert (metrics["days"] == len(pd.read_csv(out / "walkforward.csv"))).all()
    # the refits' relabelled days (walkforward_refits.csv), pooled over the refits, beside each strategy
    refits = pd.read_csv(out / "walkforward_refits.csv")
    assert len(refits) >= 1
    pooled = refits["relabelled_days"].sum() / refits["overlap_days"].sum()
    assert metrics["relabelled_share"].tolist() == pytest.approx([pooled, pooled], abs=1e-6)
    assert (out / "backtest.png").stat().st_size > 0
    assert main(["backtest", str(out), "--risk-off", "volatile", "--risk-free-column", "rf"]) == 0
    with_rf = pd.read_csv(out / "backtest.csv").set_index("strategy")
    assert with_rf.loc["long_cash", "annual_return"] > metrics.set_index("strategy").loc["long_cash", "annual_return"]
    assert with_rf.loc["buy_and_hold", "sharpe"] < metrics.set_index("strategy").loc["buy_and_hold", "sharpe"]
    capsys.readouterr()
    assert main(["backtest", str(out), "--risk-off", "panic"]) == 2
    assert "not among the regimes" in capsys.readouterr().err
    assert main(["backtest", str(tmp_path / "nothing")]) == 2


def test_cash_earns_the_risk_free_rate_and_sharpe_is_in_excess_of_it():
    per_year = 4 / ((DATES[-1] - DATES[1]).days / 365.25)
    rate = pd.Series([4.0, 6.0], index=pd.to_datetime(["2020-12-31", "2021-01-07"]))  # carried forward
    metrics, daily = backtest(
        walkforward([0.1, 0.9, 0.9, 0.2, 0.1]), PRICES, StrategySpec(risk_off=("volatile",)), rate
    )
    rf = np.array([4.0, 4.0, 6.0, 6.0, 6.0]) / 100 / per_year  # 2021-01-05..2021-01-11
    simple = np.array([0.10, -0.10, 0.0, 0.10, 0.10])
    position = np.array([1, 1, 1, 0, 0.0])
    cost = np.array([0, 0, 0, 0.001, 0])
    strategy = position * simple - cost + (1 - position) * rf
    np.testing.assert_allclose(daily["m"]["long_cash"], np.cumprod(1 + strategy), atol=1e-12)
    bh = metrics.set_index("strategy").loc["buy_and_hold"]
    excess = simple - rf
    assert bh["sharpe"] == pytest.approx(excess.mean() / excess.std(ddof=1) * np.sqrt(per_year))
    with pytest.raises(DataError, match="no risk-free rate on or before 2021-01-05"):
        backtest(walkforward([0.1] * 5), PRICES, StrategySpec(risk_off=("volatile",)), rate.iloc[1:])
