"""Forecasts and nowcasts: h-step regime probabilities, refit-free filter updates, `regime-dmm forecast`."""

import numpy as np
import pandas as pd
import pytest
import torch

from regime_dmm import FitConfig, fit
from regime_dmm.cli import main
from regime_dmm.data import (
    MarketSpec,
    ModelData,
    lagged_history,
    make_panel,
    rolling_log_rms,
    simulate_default,
    simulate_markets,
)
from regime_dmm.data.features import MarketSeries
from regime_dmm.errors import DataError
from regime_dmm.inference import posterior, stationary_distribution
from regime_dmm.nowcast import filter_update, forecast_table, nowcast, update_filter
from regime_dmm.outputs import write_outputs

from helpers import head as _head
from helpers import write_csv_frame

FIT_DAYS = 200  # prices per market the fits see; the rest are "new"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dmm():
    """A small DMM (return + vol features, networks) fitted on the first FIT_DAYS of two markets."""
    full = simulate_default(seed=5, n_days=FIT_DAYS + 25, no_trade_share=0, jump_prob=0).frame  # every day a trade
    config = FitConfig().replace(model={"num_regimes": 3}, training={"epochs": 5, "restarts": 1})
    return fit(_head(full, FIT_DAYS), config), full


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    """A classic 2-regime fit on a CSV (raw returns, no normalisation), saved for the CLI."""
    root = tmp_path_factory.mktemp("forecast")
    spec = MarketSpec(
        name="a",
        start="2020-01-01",
        freq="B",
        usage=(0.6, 0.4),
        leave_rates=(0.05, 0.08),
        means=(0.0005, -0.001),
        sds=(0.005, 0.025),
    )
    full = simulate_markets([spec], seed=3, n_days=FIT_DAYS + 15, regimes=("calm", "volatile")).frame
    write_csv_frame(_head(full, FIT_DAYS), root / "fit.csv")
    write_csv_frame(full.iloc[FIT_DAYS:], root / "new.csv")
    config = FitConfig().replace(model={"num_regimes": 2, "classic": True}, training={"restarts": 1})
    result = fit(root / "fit.csv", config)
    write_outputs(result, root / "run", plots=False)
    return result, full, root


def test_forecast_starts_at_filtered_times_p_and_converges_to_stationary(dmm):
    result, _ = dmm
    for m in result.markets:
        probs = result.forecast(m.name, 2000).to_numpy()
        np.testing.assert_allclose(probs[0], m.filtered[-1] @ m.transition, atol=1e-12)
        np.testing.assert_allclose(probs[1], m.filtered[-1] @ m.transition @ m.transition, atol=1e-12)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
        np.testing.assert_allclose(probs[-1], stationary_distribution(m.transition), atol=1e-6)
        gap = np.abs(probs - stationary_distribution(m.transition)).sum(1)
        assert gap[-1] <= gap[0] + 1e-12
    table = forecast_table(result, 4)
    assert list(table.columns) == ["market", "horizon", "prob_calm", "prob_volatile", "prob_panic"]
    one = table[table["market"] == result.markets[0].name].drop(columns=["market", "horizon"]).to_numpy()
    np.testing.assert_allclose(one, result.forecast(result.markets[0].name, 4).to_numpy())


def _direct_filter(result, full: pd.DataFrame) -> list[np.ndarray]:
    """Independent check: features of the full series built by hand, the fitted model's exact filter on them."""
    config = result.config
    series = []
    for s in result.fitted.panel.series:
        prices = full.loc[full["market"] == s.name, "price"].to_numpy()
        dates = pd.DatetimeIndex(full.loc[full["market"] == s.name, "date"])[1:]
        returns = np.diff(np.log(prices))
        eps = 1e-3 * np.std(returns[: s.length])  # the fitted series' vol eps
        raw = np.stack([returns, rolling_log_rms(returns, config.model.vol_window, eps)], axis=1)
        feats = (raw - s.feature_mean) / s.feature_std  # the TRAINING normalisation
        series.append(
            MarketSeries(s.name, dates, returns, prices[1:], feats, s.feature_names, s.feature_mean, s.feature_std)
        )
    panel = make_panel(series)
    data = ModelData(
        x=panel.x[..., :1],
        mask=panel.mask,
        history=lagged_history(panel.x, config.model.history),
        lengths=panel.lengths,
    )
    fitted = result.fitted
    with torch.no_grad():  # the fitted parameters, evaluated here without FittedModel.posterior
        pot = fitted.model.potentials(fitted.point_estimate(), data)
    filtered = posterior(pot.log_init, pot.log_trans, pot.obs_ll).filtered.numpy()
    return [filtered[m, : s.length] for m, s in enumerate(series)]


def test_nowcast_equals_the_filter_on_the_extended_series(dmm):
    result, full = dmm
    update = filter_update(result, full)  # old rows included
    direct = _direct_filter(result, full)
    assert update.new_days == {m.name: 25 for m in result.markets}
    for m, expected in zip(result.markets, direct):
        n_old = len(m.dates)
        np.testing.assert_allclose(expected[:n_old], m.filtered, atol=1e-9)  # the fitted days are unchanged
        rows = update.frame[update.frame["market"] == m.name]
        assert list(rows["date"]) == list(
            pd.DatetimeIndex(full.loc[full["market"] == m.name, "date"])[FIT_DAYS:].strftime("%Y-%m-%d")
        )
        got = rows[[f"prob_{r}" for r in result.regimes]].to_numpy()
        np.testing.assert_allclose(got, expected[n_old:], atol=1e-9)
        np.testing.assert_allclose(update.last[m.name], expected[-1], atol=1e-9)
    # Only the new rows, in a different order: the same answer.
    only_new = full.groupby("market", sort=False).tail(25).iloc[::-1]
    np.testing.assert_allclose(
        nowcast(result, only_new).filter(like="prob_").to_numpy(),
        update.frame.filter(like="prob_").to_numpy(),
        atol=1e-12,
    )
    last = update_filter(result, only_new)
    assert set(last) == {m.name for m in result.markets}


def test_nowcast_matches_a_hand_written_forward_filter(classic):
    result, full, _ = classic
    m = result.markets[0]
    new = full.iloc[FIT_DAYS:]
    got = nowcast(result, new)[["prob_calm", "prob_volatile"]].to_numpy()
    # Classic mode: constant transition matrix, Gaussian emissions of the raw return.
    P = m.base_transition
    mean, sd = np.array(m.emission["return_mean"]), np.array(m.emission["return_sd"])
    returns = np.diff(np.log(full["price"].to_numpy()))[FIT_DAYS - 1 :]
    p = m.filtered[-1]
    for t, r in enumerate(returns):
        lik = np.exp(-0.5 * ((r - mean) / sd) ** 2) / sd
        p = (p @ P) * lik
        p = p / p.sum()
        np.testing.assert_allclose(got[t], p, atol=1e-9)


def test_single_new_day_and_bad_new_data(classic):
    result, full, _ = classic
    one = full.iloc[[FIT_DAYS]]
    frame = nowcast(result, one)
    assert len(frame) == 1 and frame["date"].iloc[0] == full["date"].iloc[FIT_DAYS].strftime("%Y-%m-%d")
    last_fitted = result.markets[0].dates[-1]
    with pytest.raises(DataError, match="unknown market 'b'"):
        nowcast(result, one.assign(market="b"))
    with pytest.raises(
        DataError, match=r"market 'a'.*2020-01-04.*not after the last fitted date " + str(last_fitted.date())
    ):
        nowcast(result, one.assign(date=pd.Timestamp("2020-01-04")))  # a Saturday inside the fitted range
    changed = full.iloc[[FIT_DAYS - 1, FIT_DAYS]].copy()
    changed.loc[changed.index[0], "price"] *= 1.01
    with pytest.raises(DataError, match=f"date {last_fitted.date()}.*differs"):
        nowcast(result, changed)
    with pytest.raises(DataError, match="no day after"):
        nowcast(result, full.iloc[FIT_DAYS - 5 : FIT_DAYS])
    with pytest.raises(DataError, match="returns"):
        nowcast(result, pd.DataFrame({"date": ["2031-01-01"], "market": ["a"], "return": [0.01]}))


def test_cli_forecast_and_nowcast(classic, capsys):
    result, _, root = classic
    run = root / "run"
    assert main(["forecast", str(run), "--horizon", "6"]) == 0
    table = pd.read_csv(run / "forecast.csv")
    assert list(table.columns) == ["market", "horizon", "prob_calm", "prob_volatile"]
    assert list(table["horizon"]) == [1, 2, 3, 4, 5, 6]
    m = result.markets[0]
    np.testing.assert_allclose(table.iloc[0, 2:].to_numpy(float), m.filtered[-1] @ m.transition, atol=1e-6)
    assert "h days after" in capsys.readouterr().out

    assert main(["forecast", str(run), "--horizon", "3", "--new-data", str(root / "new.csv")]) == 0
    state = update_filter(result, root / "new.csv")["a"]
    table = pd.read_csv(run / "forecast.csv")
    np.testing.assert_allclose(table.iloc[0, 2:].to_numpy(float), state @ m.transition, atol=1e-6)
    assert len(pd.read_csv(run / "nowcast.csv")) == 15
    assert not [p for p in run.iterdir() if p.name.startswith(".")]

    capsys.readouterr()
    assert main(["forecast", str(root / "missing"), "--horizon", "3"]) == 2
    assert main(["forecast", str(run), "--horizon", "0"]) == 2
    bad = root / "bad.csv"
    bad.write_text("date,market,price\n2031-01-01,zzz,1.0\n")
    assert main(["forecast", str(run), "--new-data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "zzz" in err
