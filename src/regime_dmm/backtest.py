"""A strategy check on walk-forward regimes: persistence, and a long/cash rule against buy-and-hold.

Per market, on the days of ``walkforward.csv`` (each a day the market has a row):

* **persistence**: regime shifts per year (changes of the most probable filtered regime) and the
  mean regime duration (days per run of one regime);
* **long/cash**: hold the market unless the filtered probability of the risk-off regimes
  (``risk_off``, default volatile and panic) exceeds ``threshold``. The decision of day t uses its
  filtered probability, known at day t's close; with ``delay`` 0 it is traded at that close and
  earns day t+1's return, with the default ``delay`` 1 a day later (the position of day t+2), and
  so on. On a masked day (``observed`` 0: no trade, a gap, a likely bad tick) the decision stays
  as it was, so a bad tick moves no position;
  and every change of position pays ``cost_bps`` basis points of the traded value one way. Cash
  earns the risk-free rate when one is given (an annual rate in percent per date, carried forward
  to days without a quote; simple, divided by the periods per year), else 0. Buy-and-hold over the
  same days is the baseline.

Figures per strategy: annualised return (geometric), annualised volatility, Sharpe ratio (mean
over sd of daily returns in excess of the risk-free rate, times the root of the periods per
year), maximum drawdown
(largest fall of the equity curve from a previous peak, as a fraction), turnover (sum of
absolute position changes per year) and the number of days. Periods per year come from the
market's own rows (about 252 for business days, 365 for a 7-day token). The statistics follow
the definitions of Bacon, *Practical Portfolio Performance Measurement and Attribution* (2nd ed.,
2008); the evaluation design follows the regime literature (e.g. Nystrup et al. 2018; Shu, Yu and
Mulvey, "Downside risk reduction using regime-switching signals: a statistical jump model
approach", 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .errors import DataError

__all__ = ["BACKTEST_FILE", "StrategySpec", "backtest", "persistence", "plot_equity", "read_risk_free"]

#: The metrics table's file name.
BACKTEST_FILE = "backtest.csv"


@dataclass(frozen=True)
class StrategySpec:
    """The long/cash rule: ``risk_off`` regime names, probability ``threshold`` in (0, 1), one-way
    ``cost_bps`` (>= 0) and execution ``delay`` in rows after the close of the decision day (>= 0)."""

    risk_off: tuple[str, ...] = ("volatile", "panic")
    threshold: float = 0.5
    cost_bps: float = 10.0
    delay: int = 1

    def check(self, regimes: Sequence[str]) -> None:
        """Raises :class:`DataError` naming the setting that does not fit ``regimes`` or its range."""
        unknown = [r for r in self.risk_off if r not in regimes]
        if unknown or not self.risk_off:
            raise DataError(f"--risk-off {','.join(self.risk_off)}: not among the regimes {', '.join(regimes)}")
        if not 0 < self.threshold < 1:
            raise DataError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.cost_bps < 0 or self.delay < 0:
            raise DataError(f"cost_bps and delay must be >= 0, got {self.cost_bps} and {self.delay}")


def persistence(regime: Sequence[str], years: float) -> tuple[float, float]:
    """``(shifts per year, mean duration in rows)`` of a regime sequence spanning ``years`` years."""
    labels = np.asarray(regime)
    if labels.size == 0:
        return float("nan"), float("nan")
    shifts = int(np.count_nonzero(labels[1:] != labels[:-1]))
    return shifts / max(years, 1e-9), labels.size / (shifts + 1)


def _metrics(returns: np.ndarray, position: np.ndarray, per_year: float, rf: np.ndarray) -> dict[str, float]:
    # n >= 2 (backtest refuses fewer days)
    equity = np.cumprod(1.0 + returns)
    n = returns.size
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    excess = returns - rf
    sd = float(excess.std(ddof=1))
    changes = np.abs(np.diff(position, prepend=position[0]))
    return {
        "annual_return": float(equity[-1] ** (per_year / n) - 1.0),
        "annual_volatility": float(returns.std(ddof=1)) * np.sqrt(per_year),
        "sharpe": float(excess.mean() / sd * np.sqrt(per_year)) if sd > 0 else float("nan"),
        "max_drawdown": float((1.0 - equity / peak).max()),
        "turnover_per_year": float(changes.sum() * per_year / n),
        "days": n,
    }


def backtest(
    walkforward: pd.DataFrame,
    prices: pd.DataFrame,
    spec: StrategySpec | None = None,
    risk_free: pd.Series | None = None,
    refits: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The metrics table and, per market, the daily frame (date, return, stress, position, strategy
    and buy-and-hold equity, regime).

    ``walkforward``: :func:`~regime_dmm.walk_forward`'s table; ``prices``: the long table it was
    made from (:func:`~regime_dmm.load_prices`: ``price`` or log ``return`` column); ``risk_free``:
    an annual rate in percent indexed by date (None: 0). Rows of the
    metrics table: per market ``strategy`` in (``long_cash``, ``buy_and_hold``) with the figures of
    the module docstring, ``shifts_per_year`` and ``mean_regime_duration`` (days), and, with ``refits`` (the
    walk-forward's ``walkforward_refits.csv``), ``relabelled_share``: the share of the days two consecutive refits
    both saw that the later one names differently, over all refits (NaN without it).
    Raises :class:`DataError` when a market of ``walkforward`` is missing from ``prices`` or a
    setting does not fit.
    """
    spec = spec or StrategySpec()
    if walkforward.empty:
        raise DataError("the walk-forward table has no rows: nothing to backtest")
    regimes = [c.removeprefix("filtered_") for c in walkforward.columns if c.startswith("filtered_")]
    spec.check(regimes)
    if risk_free is not None:
        risk_free = risk_free.sort_index()
    value = "price" if "price" in prices.columns else "return"
    rows, daily = [], {}
    for market, wf in walkforward.groupby("market", sort=False):
        source = prices[prices["market"] == market].sort_values("date")
        if source.empty:
            raise DataError(f"market '{market}' of the walk-forward table is not in the price data")
        if value == "price":
            log_ret = np.log(source["price"].to_numpy(dtype=float))
            step = pd.Series(np.diff(log_ret, prepend=np.nan), index=pd.DatetimeIndex(source["date"]))
        else:
            step = pd.Series(source["return"].to_numpy(dtype=float), index=pd.DatetimeIndex(source["date"]))
        dates = pd.DatetimeIndex(pd.to_datetime(wf["date"]))
        if len(dates) < 2:
            raise DataError(f"market '{market}': {len(dates)} walk-forward day(s): too few for annual figures")
        simple = np.expm1(step.reindex(dates).to_numpy())
        if np.isnan(simple).any():
            missing = dates[np.isnan(simple)][0].date()
            raise DataError(f"market '{market}': no return on {missing} in the price data")
        stress = wf[[f"filtered_{r}" for r in spec.risk_off]].to_numpy().sum(1)
        decision = (stress <= spec.threshold).astype(float)
        observed = wf["observed"].to_numpy().astype(bool) if "observed" in wf.columns else np.ones(len(wf), bool)
        for t in np.flatnonzero(~observed):  # a masked day decides nothing: the last decision stands
            decision[t] = decision[t - 1] if t > 0 else 1.0
        lag = spec.delay + 1  # decided at day t's close, first earns day t + 1 + delay
        position = np.concatenate([np.ones(lag), decision])[: len(decision)]
        cost = spec.cost_bps / 1e4 * np.abs(np.diff(position, prepend=1.0))
        years = (dates[-1] - dates[0]).days / 365.25
        per_year = (len(dates) - 1) / years  # days per year from the intervals between them
        rf = np.zeros(len(dates))
        if risk_free is not None:
            quoted = risk_free.reindex(dates, method="ffill").to_numpy(dtype=float)
            if np.isnan(quoted).any():
                first = dates[np.isnan(quoted)][0].date()
                raise DataError(f"market '{market}': no risk-free rate on or before {first}")
            rf = quoted / 100.0 / per_year
        strategy = position * simple + (1.0 - position) * rf - cost  # cash earns the risk-free rate
        shifts, duration = persistence(wf["regime"].to_numpy(), years)
        relabelled = float("nan")
        if refits is not None and (refits["market"].astype(str) == str(market)).any():
            mine = refits[refits["market"].astype(str) == str(market)]
            relabelled = float(mine["relabelled_days"].sum() / max(int(mine["overlap_days"].sum()), 1))
        for name, ret, pos in (("long_cash", strategy, position), ("buy_and_hold", simple, np.ones_like(simple))):
            rows.append(
                {
                    "market": market,
                    "strategy": name,
                    **_metrics(ret, pos, per_year, rf),
                    "shifts_per_year": shifts,
                    "mean_regime_duration": duration,
                    "relabelled_share": relabelled,
                }
            )
        daily[str(market)] = pd.DataFrame(
            {
                "date": dates,
                "return": simple,
                "stress": stress,
                "position": position,
                "long_cash": np.cumprod(1.0 + strategy),
                "buy_and_hold": np.cumprod(1.0 + simple),
                "regime": wf["regime"].to_numpy(),
            }
        )
    return pd.DataFrame(rows), daily


def plot_equity(daily: dict[str, pd.DataFrame], spec: StrategySpec) -> Figure:
    """Per market, the equity curves of long/cash and buy-and-hold (log scale), with the days the rule
    is out of the market (risk-off) shaded."""
    fig = Figure(figsize=(12, 3.6 * max(len(daily), 1)), layout="constrained")
    axes = fig.subplots(max(len(daily), 1), 1, squeeze=False)[:, 0]
    for ax, (market, frame) in zip(axes, daily.items()):
        x = frame["date"].to_numpy()
        ax.plot(x, frame["buy_and_hold"], color="black", linewidth=0.9, label="buy and hold")
        ax.plot(x, frame["long_cash"], color="tab:blue", linewidth=1.1, label="long/cash")
        out = frame["position"].to_numpy() < 0.5
        ax.fill_between(
            x, 0, 1, where=out, transform=ax.get_xaxis_transform(), color="tab:red", alpha=0.15, linewidth=0
        )
        ax.set_yscale("log")
        ax.set_title(
            f"{market}: out of the market (shaded) when p({' + '.join(spec.risk_off)}) > {spec.threshold:g}, "
            f"{spec.cost_bps:g} bp one way, {spec.delay}-day delay",
            loc="left",
            fontsize=10,
        )
        ax.set_ylabel("equity (1 before the first day)")
        ax.grid(alpha=0.25, linewidth=0.5)
        ax.legend(loc="upper left", frameon=False)
    return fig


def read_risk_free(paths: Sequence[str], column: str) -> pd.Series:
    """The annual risk-free rate in percent, by date, from the ``date`` and ``column`` columns of the CSV
    files ``paths`` (the first quote of each date). Raises :class:`DataError` naming the file when the
    column is missing or holds no number."""
    quotes = []
    for path in paths:
        try:
            frame = pd.read_csv(path, usecols=lambda c: c.strip().lower() in ("date", column.lower()))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the risk-free column {column!r} ({exc})") from None
        frame.columns = [c.strip().lower() for c in frame.columns]
        if column.lower() not in frame.columns or "date" not in frame.columns:
            raise DataError(f"{path}: no column {column!r} (and 'date') for the risk-free rate")
        rate = pd.to_numeric(frame[column.lower()], errors="coerce")
        quotes.append(pd.Series(rate.to_numpy(), index=pd.to_datetime(frame["date"], errors="coerce")))
    series = pd.concat(quotes).dropna()
    series = series[series.index.notna()]
    if series.empty:
        raise DataError(f"no number in the risk-free column {column!r} of {', '.join(paths)}")
    return series[~series.index.duplicated()].sort_index()
