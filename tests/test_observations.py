"""Markets as they trade: days without a trade, calendars, gaps, bad ticks, listings, input shapes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import regime_dmm as rd
from regime_dmm.config import DataConfig
from regime_dmm.data import MarketSpec, build_features, load_prices, simulate_markets
from regime_dmm.errors import DataError
from regime_dmm.inference import posterior
from regime_dmm.nowcast import nowcast
from regime_dmm.outputs import write_outputs

from brute_force import brute_force

pytestmark = pytest.mark.usefixtures("one_thread")

TWO = ("calm", "volatile")
CLASSIC2 = rd.FitConfig().replace(model={"classic": True, "num_regimes": 2}, training={"restarts": 2})


def two_regime_prices(
    seed: int = 1, days: int = 1200, freq: str = "B", name: str = "m", start: str = "2015-01-02"
) -> pd.DataFrame:
    spec = MarketSpec(
        name=name,
        start=start,
        freq=freq,
        usage=(0.6, 0.4),
        leave_rates=(0.02, 0.03),
        means=(0.0003, -0.0005),
        sds=(0.006, 0.024),
    )
    return simulate_markets([spec], seed=seed, n_days=days, regimes=TWO).frame


def with_stale_days(frame: pd.DataFrame, seed: int = 0, share: float = 0.1, block: tuple[int, int] = (500, 530)):
    """The prices with ``share`` of the days scattered and the days ``block`` repeating the previous price."""
    out = frame.copy()
    rng = np.random.default_rng(seed)
    stale = rng.random(len(out)) < share
    stale[0] = False
    stale[block[0] : block[1]] = True
    prices = out["price"].to_numpy().copy()
    for i in np.flatnonzero(stale):
        prices[i] = prices[i - 1]
    out["price"] = prices
    return out, stale


# --- no-trade days ---------------------------------------------------------------------------------


def test_no_trade_days_are_masked_and_the_next_return_spans_them():
    clean = two_regime_prices(days=80)
    frame, stale = with_stale_days(clean, share=0.0, block=(10, 14))  # rows 10..13 repeat row 9's price
    (s,) = build_features(load_prices(frame))
    # s.dates start at row 1 (row 0 is the base price): rows 10..13 are days 9..12, row 14 is day 13
    assert s.length == len(frame) - 1 and s.num_observed == len(frame) - 1 - 4
    assert not s.observed[9:13].any() and s.observed[13] and s.span[13] == 5
    p = frame["price"].to_numpy()
    assert s.returns[13] == pytest.approx(np.log(p[14]) - np.log(p[9]))  # the multi-day return
    assert np.isnan(s.returns[9:13]).all() and (s.features[9:13, 0] == 0).all()
    kept = build_features(load_prices(frame), rules=DataConfig(stale="keep"))[0]
    assert kept.observed.all() and (kept.returns[9:13] == 0).all()  # data.stale: keep reads zero returns


def test_scattered_zero_days_and_a_frozen_block_get_no_regime_of_their_own():
    clean = two_regime_prices(seed=3, days=1500)
    frame, stale = with_stale_days(clean, seed=1, share=0.1, block=(600, 630))
    masked = rd.fit(frame, CLASSIC2)
    removed = rd.fit(frame[~stale].reset_index(drop=True), CLASSIC2)

    def sd(fit):
        return np.asarray(fit.market("m").emission["return_sd"])

    # masked: the regimes of the series with those days removed (within 15 %), near the truth (0.006, 0.024)
    np.testing.assert_allclose(sd(masked), sd(removed), rtol=0.15)
    np.testing.assert_allclose(sd(masked), [0.006, 0.024], rtol=0.2)
    # even with a regime to spare, none goes to "nothing happened" days
    assert sd(rd.fit(frame, CLASSIC2.replace(model={"num_regimes": 3})))[0] > 0.5 * 0.006
    assert [w["kind"] for w in masked.data_warnings] == ["no_trade_days", "stale_span"]
    summary, warning = masked.data_warnings
    assert summary["days"] == stale.sum()  # one line for the scattered days
    assert warning["days"] == 30 and warning["start"] == frame["date"].iloc[600].strftime("%Y-%m-%d")
    frame_out = masked.regimes_frame()
    assert len(frame_out) == len(frame) - 1  # a regime for every day, the masked ones too
    assert frame_out["observed"].sum() == (~stale[1:]).sum()


def test_masking_drops_exactly_the_masked_days_emission_and_spans_the_next_return():
    clean = two_regime_prices(seed=5, days=200)
    frame, stale = with_stale_days(clean, share=0.1, block=(50, 54))
    fit = rd.fit(frame, CLASSIC2.replace(training={"restarts": 1}))
    fitted = fit.fitted
    pot, post = fitted.posterior()
    s = fitted.panel.series[0]
    obs_ll = pot.obs_ll[0, : s.length].numpy()
    assert (obs_ll[~s.observed] == 0).all() and (obs_ll[s.observed] != 0).all()
    # by hand: a return over n days is N(n mu_k, n sd_k^2) in input units
    mean = np.asarray(fit.market("m").emission["return_mean"])
    sd = np.asarray(fit.market("m").emission["return_sd"])
    n = s.span[s.observed][:, None].astype(float)
    r = s.returns[s.observed][:, None]
    by_hand = -0.5 * ((r - n * mean) / (np.sqrt(n) * sd)) ** 2 - np.log(np.sqrt(2 * np.pi * n) * sd)
    jacobian = fitted.pipeline.log_jacobian_days(s)[s.observed][:, None]
    np.testing.assert_allclose(obs_ll[s.observed] - jacobian, by_hand, rtol=1e-9, atol=1e-9)
    # the chain runs through the masked days: the exact likelihood is the sum over paths (brute force)
    t = 9
    log_z, smoothed, _ = brute_force(pot.log_init[0].numpy(), pot.log_trans[0, :t].numpy(), obs_ll[:t])
    short = posterior(pot.log_init[:1], pot.log_trans[:1, :t], pot.obs_ll[:1, :t])
    assert float(short.log_z[0]) == pytest.approx(log_z, abs=1e-9)
    np.testing.assert_allclose(short.smoothed[0].numpy(), smoothed, atol=1e-9)
    assert float(post.log_z[0]) - fitted.pipeline.log_jacobian(s) == pytest.approx(fit.log_likelihood, abs=1e-9)


def test_volume_or_trades_mark_no_trade_days():
    frame = two_regime_prices(days=120)
    frame["volume"] = 1000.0
    frame.loc[[20, 21, 60], "volume"] = 0.0  # no trade, although the (adjusted) price moved
    (s,) = build_features(load_prices(frame))
    assert not s.observed[[19, 20, 59]].any() and s.num_observed == len(frame) - 1 - 3
    index = frame.copy()
    index["volume"] = 0.0  # an index whose volume is not recorded: the column is not used
    (t,) = build_features(load_prices(index))
    assert t.observed.all() and [e["kind"] for e in t.report] == ["volume_not_used"]


# --- calendars, gaps, listings ---------------------------------------------------------------------


def test_a_two_week_gap_is_reported_and_spanned():
    frame = two_regime_prices(days=400)
    gap = frame.index[(frame.index >= 200) & (frame.index < 210)]  # 10 business days
    cut = frame.drop(index=gap).reset_index(drop=True)
    (s,) = build_features(load_prices(cut))
    (warning,) = [e for e in s.report if e["kind"] == "gap"]
    assert warning["days"] == 10
    assert warning["start"] == frame["date"].iloc[200].strftime("%Y-%m-%d")
    assert warning["end"] == frame["date"].iloc[209].strftime("%Y-%m-%d")
    after = s.dates.get_loc(frame["date"].iloc[210])
    assert s.span[after] == 11 and not s.observed[after - 10 : after].any()
    p = frame["price"].to_numpy()
    assert s.returns[after] == pytest.approx(np.log(p[210] / p[199]))
    # a short gap (a holiday) is a closed market: dropped from the calendar, not spanned
    holiday = frame.drop(index=[300]).reset_index(drop=True)
    (h,) = build_features(load_prices(holiday))
    assert h.observed.all() and (h.span == 1).all() and not h.report


def test_two_calendars_a_later_listing_and_the_cross_market_view(tmp_path):
    reit = two_regime_prices(seed=2, days=900, freq="B", name="reit", start="2016-01-04")
    token = two_regime_prices(seed=4, days=700, freq="D", name="token", start="2017-06-01")
    frame = pd.concat([reit, token]).sample(frac=1.0, random_state=0)  # shuffled rows
    fit = rd.fit(frame, CLASSIC2)
    assert fit.market("reit").calendar == "business" and fit.market("token").calendar == "daily"
    assert (fit.market("token").dates.day_of_week >= 5).any() and (fit.market("reit").dates.day_of_week < 5).all()
    (pair,) = fit.cross_market
    assert {pair["first"], pair["second"]} == {"reit", "token"}
    shared = fit.market("reit").dates.intersection(fit.market("token").dates)
    assert pair["shared_days"] == len(shared) and pair["first_date"] == "2017-06-02"
    counts = np.asarray(pair["cooccurrence_counts"])
    assert counts.sum() == len(shared) and counts.shape == (2, 2)
    lead = pair["lead_lag"]
    assert lead["best_lag"] is not None and lead["interval90"][0] <= lead["best_lag"] <= lead["interval90"][1]
    out = write_outputs(fit, tmp_path / "run", plots=True, num_samples=2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["markets"]["token"]["calendar"] == "daily" and summary["cross_market"][0]["shared_days"] > 0
    assert (out / "cross_market.png").stat().st_size > 0


def test_lead_lag_finds_a_known_delay():
    """The second market lives the first's regimes 5 days later: its stress follows by about 5 days."""
    spec = MarketSpec(
        name="x",
        start="2015-01-02",
        freq="B",
        usage=(0.6, 0.4),
        leave_rates=(0.06, 0.09),
        means=(0.0, 0.0),
        sds=(0.006, 0.024),
    )
    z = simulate_markets([spec], seed=6, n_days=1501, regimes=TWO).true_regimes["x"]
    rng = np.random.default_rng(0)
    sds = np.array([0.006, 0.024])
    dates = pd.bdate_range("2015-01-05", periods=len(z))
    delayed = np.concatenate([z[:5], z[:-5]])
    frame = pd.concat(
        [
            pd.DataFrame({"date": dates, "market": "lead", "return": sds[z] * rng.standard_normal(len(z))}),
            pd.DataFrame({"date": dates, "market": "lag", "return": sds[delayed] * rng.standard_normal(len(z))}),
        ]
    )
    fit = rd.fit(frame, CLASSIC2)
    (pair,) = fit.cross_market
    assert pair["first"] == "lead" and 3 <= pair["lead_lag"]["best_lag"] <= 7
    assert pair["lead_lag"]["interval90"][0] > 0  # the lead is significant


# --- bad ticks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mask", "warn", "error"])
def test_bad_tick_is_reported_by_date_and_handled_as_configured(mode):
    frame = two_regime_prices(days=300)
    frame.loc[150, "price"] *= 100  # a price typed x100
    day = frame["date"].iloc[150].date()
    rules = DataConfig(bad_ticks=mode)
    if mode == "error":
        with pytest.raises(DataError, match=f"market 'm', date {day}.*bad tick"):
            build_features(load_prices(frame), rules=rules)
        return
    (s,) = build_features(load_prices(frame), rules=rules)
    (warning,) = s.report
    assert warning["kind"] == "bad_tick" and warning["start"] == str(day)
    if mode == "mask":
        assert not s.observed[149] and s.span[150] == 2 and np.nanmax(np.abs(s.returns)) < 1.0
    else:
        assert s.observed.all() and np.nanmax(np.abs(s.returns)) > 4.0


# --- nowcasts over masked days ---------------------------------------------------------------------


def test_nowcast_runs_through_new_days_without_a_trade():
    frame, stale = with_stale_days(two_regime_prices(days=260), share=0.0, block=(230, 236))
    fit = rd.fit(frame.iloc[:200], CLASSIC2.replace(training={"restarts": 1}))
    table = nowcast(fit, frame.iloc[200:])
    assert len(table) == 60 and (table["observed"] == 0).sum() == 6
    probs = table.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)


# --- input shapes ----------------------------------------------------------------------------------


def test_vendor_exports_several_files_wide_tables_and_klines(tmp_path):
    a = two_regime_prices(seed=1, days=120)
    vendor = pd.DataFrame(
        {
            "Date": a["date"].dt.strftime("%Y-%m-%d"),
            "Open": a["price"],
            "High": a["price"],
            "Low": a["price"],
            "Close": a["price"] * 1.1,
            "Adj Close": a["price"],
            "Volume": 500,
        }
    )
    vendor.to_csv(tmp_path / "VNQ.csv", index=False)
    b = two_regime_prices(seed=2, days=120, freq="D", name="tok")
    kline = pd.DataFrame(
        {
            "open_time": b["date"].dt.strftime("%Y-%m-%d 00:00:00+00:00"),
            "open": b["price"],
            "close": b["price"],
            "volume": 3.5,
            "trades": 12,
            "open_time ": "",
        }
    )
    kline.to_csv(tmp_path / "TOKUSDT.csv", index=False)
    both = load_prices([tmp_path / "VNQ.csv", tmp_path / "TOKUSDT.csv"])
    assert list(pd.unique(both["market"])) == ["VNQ", "TOKUSDT"]
    shapes = " | ".join(both.attrs["shapes"])
    assert "vendor export" in shapes and "'Adj Close'" in shapes and "kline export" in shapes
    np.testing.assert_allclose(both.loc[both["market"] == "VNQ", "price"], a["price"])  # the adjusted close
    assert (both["trades"].dropna() == 12).all()
    wide = pd.DataFrame({"date": a["date"], "VNQ": a["price"], "IYR": a["price"] * 2})
    wide.loc[:9, "IYR"] = np.nan  # listed later
    wide.to_csv(tmp_path / "wide.csv", index=False)
    w = load_prices(tmp_path / "wide.csv")
    assert "wide table" in w.attrs["shapes"][0] and w.groupby("market").size().to_dict() == {"VNQ": 120, "IYR": 110}
    # the bad-input rules name the row, market and date in every shape
    vendor.loc[5, "Adj Close"] = -1.0
    vendor.to_csv(tmp_path / "BAD.csv", index=False)
    with pytest.raises(DataError, match=r"BAD.csv, row 6, market 'BAD', date .*price must be positive"):
        load_prices(tmp_path / "BAD.csv")
    with pytest.raises(DataError, match="market 'VNQ' appears in"):
        load_prices([tmp_path / "VNQ.csv", tmp_path / "VNQ.csv"])
    fit = rd.fit([str(tmp_path / "VNQ.csv"), str(tmp_path / "TOKUSDT.csv")], CLASSIC2.replace(training={"restarts": 1}))
    assert [m.name for m in fit.markets] == ["VNQ", "TOKUSDT"]
    assert fit.market("TOKUSDT").calendar == "daily"


def test_a_long_table_may_name_its_columns_symbol_and_close(tmp_path):
    a = two_regime_prices(days=60)
    frame = pd.DataFrame(
        {
            "Symbol": "X",
            "Date": a["date"].dt.strftime("%b %d, %Y"),
            "Close**": a["price"],
            "Volume": [f"{v:,}" for v in range(1000, 1060)],
        }
    )
    frame.to_csv(tmp_path / "x.csv", index=False)
    table = load_prices(tmp_path / "x.csv")
    assert set(table["market"]) == {"X"} and table["volume"].iloc[0] == 1000.0
    assert torch.tensor(table["price"].to_numpy()).allclose(torch.tensor(a["price"].to_numpy()))
