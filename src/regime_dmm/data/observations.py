"""Each market's days: its calendar, which days hold a real observation, and what each return spans.

Real price series are not clean daily series (the tokenized-markets issue): tokens and thin
stocks repeat the last price on days without a trade, exchanges close for holidays and
outages, tokens trade 7 days a week while REIT ETFs trade on business days, and a mistyped
price shows up as a huge move reversed the next day. :func:`market_days` turns one market's
rows into its day grid:

* **calendar** (``rules.calendar``, default ``auto``): ``periodic`` when rows are typically more
  than 3 days apart at regular steps (weekly or monthly data: each row is one period; 80 % of the
  steps within a day, or 15 %, of the typical one), else ``daily`` when at
  least 5 % of the real observations fall on a Saturday or Sunday, else ``business`` (Monday to
  Friday). The grid runs over every day of that calendar from the first row to the last
  (``periodic``: over the rows' dates).
* **no-trade days** (``rules.stale``, default ``mask``): a row with ``volume`` or ``trades`` 0
  (when the source gives one of them) or repeating both the price and the volume of the previous
  row (forward-filled), otherwise a price exactly equal to the previous row's
  (for return input: a return of exactly 0), is a day without a trade: the day stays on the grid
  but is *masked* (no emission), and the return at the next real observation is the multi-day
  return since the last real one. For a traded asset an exact repeat of the price is almost never
  a real zero return. ``stale: keep`` reads such days as zero returns instead. A volume column
  that is zero while the price keeps moving (an index without recorded volume) is not used.
* **gaps**: on a ``business`` calendar a run of missing days no longer than ``rules.max_gap``
  (default 5) is a closed market (holidays): those days are left out of the grid. A 7-day
  (``daily``) market has no holidays: its missing days stay on the grid, masked. A run longer than
  ``max_gap`` is kept as masked days and reported. Either way the next return is a multi-day return.
  The value on a row is the change since the previous row: for price input that is exact; a
  ``return`` column is read the same way (a return after missing days covers them; after
  zero-return no-trade days, their zeros are added to it).
* **bad ticks** (``rules.bad_ticks``, default ``mask``): a move of more than 10 robust standard
  deviations of the 20 real returns on each side, and by a factor of more than three, that the
  next day reverses to within a fifth is a likely typo (a misplaced decimal point, a price in
  cents); a genuine crash and rebound of a volatile token (the simulator's panic regime moves
  -73 % and back) is not; it is reported by date and, with ``mask``, the price is treated as missing (``warn``:
  kept; ``error``: refused).

Every kept day gets ``span``, the number of grid days its return covers (1 on an ordinary day).
The model scales a regime's return mean by ``span`` and its standard deviation by
``sqrt(span)`` (a random walk in calendar time). Report entries (gaps, no-trade runs of 20 days
or more (``stale_span``, a dead feed), one ``no_trade_days`` entry per market when at least 5 % of
its days are masked no-trade days, bad ticks, an unused volume column) are dictionaries
``{market, kind, start, end, days, detail}``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import DataError

__all__ = ["CALENDARS", "MarketDays", "market_days"]

#: Calendars a market can have.
CALENDARS = ("business", "daily", "periodic")

_WEEKEND_SHARE = 0.05  # share of real observations on weekends above which a market trades 7 days a week
_STALE_SPAN_REPORT = 20  # no-trade runs at least this long are reported one by one (a dead feed)
_NO_TRADE_SUMMARY = 0.05  # share of masked no-trade days above which the market gets one summary entry
_BAD_TICK_SDS = 10.0  # robust standard deviations of the neighbouring days
_BAD_TICK_MIN = float(np.log(3.0))  # a factor of three, up or down, in one day
_BAD_TICK_REVERSAL = 0.2
_BAD_TICK_NEIGHBOURS = 20  # real returns on each side that set the local scale


@dataclass
class MarketDays:
    """One market's day grid (``T`` days).

    ``dates (T,)``; ``observed (T,)`` bool, a real observation; ``span (T,)`` int, grid days the
    day's return covers (1 on masked days); ``returns (T,)`` in input units, NaN where not
    observed; ``prices (T,)`` the last price known that day (None for return input);
    ``calendar``; ``report`` the entries described in the module docstring.
    """

    name: str
    calendar: str
    dates: pd.DatetimeIndex
    observed: np.ndarray
    span: np.ndarray
    returns: np.ndarray
    prices: np.ndarray | None
    report: list[dict[str, Any]] = field(default_factory=list)


def _entry(market: str, kind: str, start: pd.Timestamp, end: pd.Timestamp, days: int, detail: str) -> dict[str, Any]:
    return {
        "market": market,
        "kind": kind,
        "start": start.strftime("%Y-%m-%d"),
        "end": end.strftime("%Y-%m-%d"),
        "days": int(days),
        "detail": detail,
    }


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of True in ``flags``."""
    padded = np.concatenate([[False], flags.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _no_trade(
    name: str,
    values: np.ndarray,
    value_column: str,
    volume: np.ndarray | None,
    report: list[dict[str, Any]],
    dates: pd.DatetimeIndex,
    use_volume: bool | None = None,
) -> np.ndarray:
    """Rows without a trade (see the module docstring); row 0 of a price series is its base.

    ``use_volume``: None decides from the rows whether the volume column is recorded; True / False
    keep a fitted market's decision (new days appended).
    """
    n = len(values)
    unchanged = np.zeros(n, dtype=bool)
    if value_column == "price":
        unchanged[1:] = values[1:] == values[:-1]
    else:
        unchanged = values == 0.0
    if volume is None:
        return unchanged
    zero = volume == 0  # NaN (unknown) compares False
    if value_column == "price":
        zero[0] = False
    moving = zero & ~unchanged
    if use_volume is None:
        use_volume = not moving.sum() > 0.1 * n  # zero volume on many days the price moved: not recorded
    if not use_volume:
        report.append(
            _entry(
                name,
                "volume_not_used",
                dates[0],
                dates[-1],
                int(zero.sum()),
                f"volume is 0 on {int(zero.sum())} rows but the price moves on {int(moving.sum())} of "
                "them (volume not recorded?): no-trade days are found from repeated prices instead",
            )
        )
        return unchanged
    known = ~np.isnan(volume)
    # a row repeating both the price and the volume of the previous one was forward-filled (a weekend
    # written onto a 7-day calendar, volume and all): no trade either
    copied = np.zeros(n, dtype=bool)
    copied[1:] = unchanged[1:] & (volume[1:] == volume[:-1])
    return np.where(known, zero | copied, unchanged)


def _robust_scale(r: np.ndarray) -> float:
    r = r[np.isfinite(r)]
    if r.size == 0:
        return 0.0
    mad = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    return mad if mad > 0 else float(np.std(r))


def market_days(
    name: str,
    dates: pd.DatetimeIndex,
    values: np.ndarray,
    value_column: str,
    rules: DataConfig,
    *,
    volume: np.ndarray | None = None,
    calendar: str | None = None,
    fitted_until: pd.Timestamp | None = None,
    fitted_bad_ticks: Collection[str] = (),
    use_volume: bool | None = None,
) -> MarketDays:
    """The day grid of one market from its rows (sorted by date; see the module docstring).

    ``values``: prices or returns; ``volume``: the ``volume`` (or ``trades``) column, NaN where
    unknown. When new days are appended to a fitted market, the fitted part must come out as it was:
    ``calendar`` is the fitted calendar, days up to ``fitted_until`` are bad ticks exactly when their
    date (``YYYY-MM-DD``) is in ``fitted_bad_ticks`` (only later days are checked), and
    ``use_volume`` keeps the fitted decision on the volume column.
    Raises :class:`DataError` for a bad tick with ``bad_ticks="error"`` or a market left without a
    return.
    """
    dates = pd.DatetimeIndex(dates).astype("datetime64[ns]")
    values = np.asarray(values, dtype=np.float64)
    report: list[dict[str, Any]] = []
    n = len(values)
    real = np.ones(n, dtype=bool)
    if rules.stale == "mask":
        real &= ~_no_trade(name, values, value_column, volume, report, dates, use_volume)
    if value_column == "price":
        real[0] = True  # the base price
        logp = np.log(values)

    def real_returns(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the real returns and the returns since the previous real row."""
        idx = np.flatnonzero(flags)
        if value_column == "price":
            return idx[1:], logp[idx[1:]] - logp[idx[:-1]]
        sums = np.cumsum(values)  # only used across masked rows; a single-row return is taken as given
        prev = np.concatenate([[-1], idx[:-1]])
        out = np.where(idx - prev == 1, values[idx], sums[idx] - np.where(prev >= 0, sums[np.maximum(prev, 0)], 0.0))
        return idx, out

    rows, r = real_returns(real)
    if r.size > 2:
        bad = []
        for j in np.flatnonzero(np.abs(r[:-1]) > _BAD_TICK_MIN).tolist():
            if fitted_until is not None and dates[rows[j]] <= fitted_until:  # the fitted part: as it was
                if dates[rows[j]].strftime("%Y-%m-%d") in fitted_bad_ticks:
                    bad.append(j)
                continue
            a, b = r[j], r[j + 1]
            if not (np.sign(a) == -np.sign(b) and abs(a + b) < _BAD_TICK_REVERSAL * abs(a)):
                continue
            lo, hi = max(0, j - _BAD_TICK_NEIGHBOURS), min(r.size, j + 2 + _BAD_TICK_NEIGHBOURS)
            neighbours = np.concatenate([r[lo:j], r[j + 2 : hi]])
            if abs(a) > _BAD_TICK_SDS * _robust_scale(neighbours):
                bad.append(j)
        for j in bad:
            day = dates[rows[j]]
            if fitted_until is not None and day <= fitted_until:  # reported and handled when it was fitted
                real[rows[j]] = rules.bad_ticks != "mask"
                continue
            detail = f"a {r[j]:+.1%} move (log) reversed the next day ({r[j + 1]:+.1%}): likely a bad tick"
            if rules.bad_ticks == "error":
                raise DataError(
                    f"market '{name}', date {day.date()}: {detail}; fix the price, or set "
                    "data.bad_ticks to mask (treat it as missing) or warn (keep it)"
                )
            action = "treated as missing" if rules.bad_ticks == "mask" else "kept (data.bad_ticks: warn)"
            report.append(_entry(name, "bad_tick", day, day, 1, f"{detail}; {action}"))
            if rules.bad_ticks == "mask":
                real[rows[j]] = False
        if bad and rules.bad_ticks == "mask":
            rows, r = real_returns(real)
    if r.size == 0:
        raise DataError(f"market '{name}': no return left once the days without a trade are set aside")

    # Calendar and grid.
    if calendar is None:
        calendar = rules.calendar if rules.calendar != "auto" else _infer_calendar(dates[real])
    first, last = dates[0], dates[-1]
    if calendar == "periodic":
        grid = dates
    else:
        grid = pd.date_range(first, last, freq="D") if calendar == "daily" else pd.bdate_range(first, last)
        grid = grid.union(dates[real]).astype("datetime64[ns]")  # a real trade on a closed day keeps its day
    position = grid.get_indexer(dates)  # -1: a row on a day outside the calendar (weekend forward-fill)
    has_row = np.zeros(len(grid), dtype=bool)
    has_row[position[position >= 0]] = True
    keep = np.ones(len(grid), dtype=bool)
    for start, end in _runs(~has_row):
        if end - start <= rules.max_gap:
            # a closed market (holidays): not a day of this market; a 7-day market has no holidays, so
            # there the days stay, masked, and the next return spans them
            keep[start:end] = calendar == "daily"
        else:
            report.append(
                _entry(
                    name,
                    "gap",
                    grid[start],
                    grid[end - 1],
                    end - start,
                    f"no data for {end - start} {calendar} days: masked, and the next return is a multi-day return",
                )
            )
    index = np.cumsum(keep) - 1  # position of each grid day among the kept ones
    kept = grid[keep]
    t_all = len(kept)
    real_pos = index[position[rows]]  # kept positions of the real returns
    if value_column == "price":
        base = index[position[0]]
        start_at = base + 1  # the grid of returns starts the day after the base price
        prev = np.concatenate([[base], real_pos[:-1]])
    else:
        start_at = 0
        prev = np.concatenate([[-1], real_pos[:-1]])
    span_obs = real_pos - prev
    t = t_all - start_at
    observed = np.zeros(t, dtype=bool)
    span = np.ones(t, dtype=np.int64)
    returns = np.full(t, np.nan)
    observed[real_pos - start_at] = True
    span[real_pos - start_at] = span_obs
    returns[real_pos - start_at] = r
    out_dates = pd.DatetimeIndex(kept[start_at:])
    prices = None
    if value_column == "price":
        level = np.full(t_all, np.nan)
        ok = position >= 0
        level[index[position[ok & real]]] = values[ok & real]
        prices = pd.Series(level).ffill().to_numpy()[start_at:]
    masked_rows = np.zeros(t_all, dtype=bool)
    masked_rows[index[position[(position >= 0) & ~real]]] = True
    masked_days = masked_rows[start_at:]
    if t and masked_days.mean() >= _NO_TRADE_SUMMARY:
        report.append(
            _entry(
                name,
                "no_trade_days",
                out_dates[0],
                out_dates[-1],
                int(masked_days.sum()),
                f"{int(masked_days.sum())} of {t} {calendar} days ({masked_days.mean():.0%}) have no trade "
                "(volume or trades 0, or the last price repeated): masked, not read as zero returns "
                "(data.stale: keep reads repeated prices as zeros)",
            )
        )
    for s, e in _runs(masked_days):
        if e - s >= _STALE_SPAN_REPORT:
            report.append(
                _entry(
                    name,
                    "stale_span",
                    out_dates[s],
                    out_dates[e - 1],
                    e - s,
                    f"the price does not change for {e - s} {calendar} days (no trades, or a dead feed): "
                    "masked, not read as zero returns",
                )
            )
    return MarketDays(name, calendar, out_dates, observed, span, returns, prices, report)


def _infer_calendar(real_dates: pd.DatetimeIndex) -> str:
    if len(real_dates) == 0:
        return "business"
    if len(real_dates) > 2:
        spacing = np.diff(real_dates.asi8) / 86_400e9
        typical = float(np.median(spacing))
        # weekly or monthly rows come at regular steps; a thin token's trades do not
        if typical > 3 and np.mean(np.abs(spacing - typical) <= max(1.0, 0.15 * typical)) >= 0.8:
            return "periodic"
    weekend = np.asarray(real_dates.day_of_week >= 5)
    return "daily" if weekend.mean() >= _WEEKEND_SHARE else "business"
