"""Daily updates of a saved fit: the filtered regime of each new day, without refitting.

A quant who reads regimes every day appends the new closes to the price file (or keeps them in a
file of their own) and runs ``regime-dmm update DIR --data FILE``. This module

* loads the fit saved in ``DIR`` (from the rows of ``FILE`` up to each market's last fitted day when
  the file holds them - the usual case, a price file that grows by a row a day - else from the data
  the fit was made on);
* filters each day of ``FILE`` after the last day known in ``DIR`` with the saved parameters, from the rows
  up to that day alone (:func:`~regime_dmm.nowcast.extend_panel`: the new days' features use the fitted
  normalisation; the exact forward filter gives ``p(z_t | x_1..x_t)``; a bad tick, which the next day's
  reversal reveals, cannot change a day already filtered) - the probabilities a walk-forward run gives
  those days with the same parameters;
* adds them to ``DIR/updates.csv``, written at once; the rows earlier updates wrote are kept as they are, and
  a day among them whose close the data now give otherwise is an error naming market, date and both values
  (nothing is written);
* reports per market the regime now (the most probable filtered regime of its last day) with its
  probability, the days it has lasted (on the filtered path), the regime of the day before, and
  whether the regime changed since the last day known before this update (the fit's last day, or
  the last day of the previous update).

``regime-dmm update`` exits with :data:`CHANGED_EXIT_CODE` (3) when any market's regime changed, 0
when none did, 2 on bad input: a scheduler can alert on it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_write_text, folder_lock
from .data.loader import read_prices
from .errors import CheckpointError, DataError
from .inference import last_filtered, posterior
from .nowcast import NewData, extend_panel
from .persistence import MODEL_FILE, load_fit
from .results import RegimeFit
from .walkforward import PARTS, PLAN_FILE, WALKFORWARD_FILE, filter_days, last_refit

__all__ = ["CHANGED_EXIT_CODE", "UPDATES_FILE", "MarketUpdate", "UpdateResult", "describe", "update"]

#: The file of filtered days an update writes into the fit's folder.
UPDATES_FILE = "updates.csv"
#: ``regime-dmm update``'s exit code when at least one market changed regime (0: none did; 2: bad input).
CHANGED_EXIT_CODE = 3


@dataclass(frozen=True)
class MarketUpdate:
    """One market after an update.

    ``date``: its last day; ``regime``: the most probable filtered regime that day, with
    ``probability``; ``probabilities``: every regime's filtered probability that day;
    ``days_in_regime``: rows (trading days of its calendar) since the filtered path entered that regime,
    the last day included, ``regime_since`` the first of them; ``previous_regime``: the filtered regime of
    the day before ``date``; ``known_date``/``known_regime``: the last day known before this update (the
    fit's last day, or the previous update's) and its filtered regime; ``changed``: ``regime`` differs
    from ``known_regime``; ``new_days``: days this update appended since ``known_date`` (0: none).
    """

    market: str
    date: str
    regime: str
    probability: float
    probabilities: dict[str, float]
    days_in_regime: int
    regime_since: str
    previous_regime: str | None
    known_date: str
    known_regime: str
    changed: bool
    new_days: int

    def to_json(self) -> str:
        """One JSON line (the fields above; probabilities rounded to 6 decimals)."""
        return json.dumps(asdict(self), sort_keys=False)


@dataclass
class UpdateResult:
    """What :func:`update` found: one :class:`MarketUpdate` per fitted market (the fit's order) and
    ``frame``, the filtered days since the fit (the contents of ``updates.csv``: date, market, regime,
    prob_<name> per regime, observed, and the input's price or return that day, empty on a day without a row)."""

    markets: list[MarketUpdate]
    frame: pd.DataFrame

    @property
    def changed(self) -> bool:
        """Whether any market's regime changed since the last known day."""
        return any(m.changed for m in self.markets)


def update(fit_dir: str | Path, data: NewData, *, write: bool = True) -> UpdateResult:
    """Filter the days of ``data`` after the last day known in ``fit_dir`` (a saved fit or a walk-forward run) and
    (``write``) add them to ``fit_dir/updates.csv`` (see the module docstring).

    ``data``: a long CSV path or DataFrame in the fit's input format (date, market, price|return). For a fit: the
    new days and, optionally, the fitted ones (they must repeat the fitted values). For a walk-forward folder: the
    run's file with the new days appended (the rows the run read must come again). A walk-forward folder's new
    days are filtered with its last refit's parameters, as the run filters the days until its next refit.

    Raises :class:`~regime_dmm.errors.CheckpointError` (no readable fit or walk-forward in ``fit_dir``),
    :class:`~regime_dmm.errors.DataError` (no day after the fit, a market not in the fit, a fitted day or a day an
    earlier update wrote changed, a gap after a market's last known day longer than ``data.max_gap``).
    """
    out = Path(fit_dir)
    if not (out / PARTS / PLAN_FILE).is_file() and not (out / MODEL_FILE).is_file():
        raise CheckpointError(
            f"{out} holds no saved fit ({MODEL_FILE} not found) and no walk-forward run: write one with regime-dmm fit"
        )
    with folder_lock(out, "update"):  # not beside a walk-forward continuing in this folder, nor another update
        return _update(out, data, write)


def _update(out: Path, data: NewData, write: bool) -> UpdateResult:
    """:func:`update` inside the folder's lock (``out`` holds a walk-forward run or a saved fit)."""
    table = read_prices(data, label=None if isinstance(data, (str, Path)) else "new data")
    walk = (out / PARTS / PLAN_FILE).is_file()
    source = _walk_forward_source(out, table) if walk else _fit_source(out, table)
    names, value_column = source.names, table.attrs["value_column"]
    previous = _previous_updates(out / UPDATES_FILE, source.base_dates)
    if previous is not None:
        _check_closes(previous, table, value_column, out / UPDATES_FILE)
    known = {m: _known_date(m, source.base_dates[m], previous) for m in source.base_dates}
    for market, date in known.items():
        _check_gap(market, source.calendars[market], source.max_gap, table, date)
    if not (table["date"] > table["market"].map(source.base_dates)).any():
        last_dates = ", ".join(f"{m} {d.date()}" for m, d in source.base_dates.items())
        raise DataError(f"the data hold no day after the last fitted dates ({last_dates}): nothing to update")
    new = source.filter_new(table, known)  # date, market, regime, prob_<name>..., observed
    given = table[["date", "market", value_column]].assign(date=table["date"].dt.strftime("%Y-%m-%d"))
    new = new.merge(given, on=["date", "market"], how="left")  # the close filtered (empty: no row that day)
    text = new.to_csv(index=False, float_format="%.6f", lineterminator="\n")
    rows = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    if previous is not None:
        rows = pd.concat([previous[[c for c in rows.columns if c in previous.columns]], rows], ignore_index=True)
    order = {m: i for i, m in enumerate(source.base_dates)}
    rows = rows.sort_values(["market", "date"], key=lambda c: c.map(order) if c.name == "market" else c, kind="stable")
    rows = rows.reset_index(drop=True)
    markets = []
    for market, (dates, probs) in source.paths.items():
        mine = rows[rows["market"] == market]
        all_dates = dates.append(pd.DatetimeIndex(pd.to_datetime(mine["date"])))
        all_probs = np.concatenate([probs, mine[[f"prob_{n}" for n in names]].to_numpy(float)])
        at = int(all_dates.searchsorted(known[market]))
        markets.append(_market_update(market, all_dates, all_probs, names, min(at, len(all_dates) - 1)))
    if write:
        atomic_write_text(out / UPDATES_FILE, rows.to_csv(index=False, lineterminator="\n"))
    frame = rows.copy()
    for column in [c for c in frame.columns if c.startswith("prob_")] + [value_column]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return UpdateResult(markets=markets, frame=frame)


@dataclass
class _Source:
    """What an update starts from: ``paths``: per market the filtered path known before any update (dates, ``(T,
    K)`` probabilities); ``base_dates``: its last day per market (fit order); ``filter_new(table,
    known)``: the filtered rows of each market's days after ``known[market]``, each from the rows up to it."""

    names: tuple[str, ...]
    paths: dict[str, tuple[pd.DatetimeIndex, np.ndarray]]
    base_dates: dict[str, pd.Timestamp]
    calendars: dict[str, str]
    max_gap: int
    filter_new: Callable[[pd.DataFrame, dict[str, pd.Timestamp]], pd.DataFrame]


def _market_update(
    market: str, dates: pd.DatetimeIndex, probs: np.ndarray, names: tuple[str, ...], known: int
) -> MarketUpdate:
    """The report of one market (see :class:`MarketUpdate`) from its filtered path (``dates (T,)``, ``probs (T,
    K)``); ``known``: the index of its last known day."""
    labels = probs.argmax(-1)
    last = len(dates) - 1
    run = last
    while run > 0 and labels[run - 1] == labels[last]:
        run -= 1
    return MarketUpdate(
        market=market,
        date=dates[last].strftime("%Y-%m-%d"),
        regime=names[int(labels[last])],
        probability=round(float(probs[last, labels[last]]), 6),
        probabilities={n: round(float(p), 6) for n, p in zip(names, probs[last])},
        days_in_regime=last - run + 1,
        regime_since=dates[run].strftime("%Y-%m-%d"),
        previous_regime=names[int(labels[last - 1])] if last > 0 else None,
        known_date=dates[known].strftime("%Y-%m-%d"),
        known_regime=names[int(labels[known])],
        changed=bool(labels[last] != labels[known]),
        new_days=last - known,
    )


def _fit_source(out: Path, table: pd.DataFrame) -> _Source:
    """A saved fit: its filtered path over the fitted days (one pass at the fitted parameters), and new days each
    filtered on the fitted days and the new rows up to it."""
    fit = _load(out, table)
    fitted = fit.require_fitted()
    names = fit.regimes
    _, post = fitted.posterior()
    filtered = post.filtered.numpy()
    panel = fitted.panel
    paths = {s.name: (s.dates, filtered[m, : s.length]) for m, s in enumerate(panel.series)}
    base = {s.name: s.dates[-1] for s in panel.series}

    def filter_new(rows: pd.DataFrame, known: dict[str, pd.Timestamp]) -> pd.DataFrame:
        # One pass over every row gives each day the filter of the rows up to it, but for a day masked as a bad
        # tick: only the next day's reversal revealed it, so on its own day it stood as observed. Those days (rare)
        # are filtered again from the rows up to them alone.
        extended, lengths = extend_panel(fit, rows)
        pot = fitted.potentials(fitted.model_data(extended))
        probs = posterior(pot.log_init, pot.log_trans, pot.obs_ll).filtered.numpy()
        records, again = [], set()
        for m, s in enumerate(extended.series):
            ticks = {pd.Timestamp(e["start"]) for e in s.report if e["kind"] == "bad_tick"}
            for t in range(lengths[m], s.length):
                day = s.dates[t]
                if day <= known[s.name]:
                    continue
                if day in ticks:
                    again.add((s.name, day))
                    continue
                records.append(_record(s.name, day, probs[m, t], s.observed[t], names))
        for market, day in sorted(again, key=lambda item: item[1]):
            upto = rows[rows["date"] <= day]
            upto.attrs = dict(rows.attrs)
            alone, _ = extend_panel(fit, upto)
            pot = fitted.potentials(fitted.model_data(alone))
            m = alone.markets.index(market)
            s = alone.series[m]
            one = (pot.log_init[m : m + 1], pot.log_trans[m : m + 1, : s.length], pot.obs_ll[m : m + 1, : s.length])
            records.append(_record(market, day, last_filtered(*one)[0].exp().numpy(), s.observed[-1], names))
        return _records_frame(records, names)  # the caller orders the rows

    calendars = {s.name: s.calendar for s in panel.series}
    return _Source(names, paths, base, calendars, fit.config.data.max_gap, filter_new)


def _walk_forward_source(out: Path, table: pd.DataFrame) -> _Source:
    """A walk-forward folder: ``walkforward.csv``'s filtered days, then new days filtered with the last refit's
    parameters (as :func:`~regime_dmm.walkforward.walk_forward` filters a refit's days)."""
    try:
        fitted, low, fit_date, until, config = last_refit(out, table)
    except DataError as exc:
        raise DataError(
            f"{exc}; an update of a walk-forward folder needs the run's file with the new days appended"
        ) from None
    names = config.model.names()
    done = pd.read_csv(out / WALKFORWARD_FILE, dtype={"date": str, "market": str, "fit_date": str})
    if len(done) and pd.Timestamp(done["date"].max()) != until:
        raise CheckpointError(
            f"{out}: walkforward.csv ends on {done['date'].max()}, its last refit on {until.date()}: the run was "
            "interrupted; rerun regime-dmm walkforward to finish it first"
        )
    columns = [f"filtered_{n}" for n in names]
    paths, base = {}, {}
    for series in fitted.panel.series:
        mine = done[done["market"] == series.name]
        dates = pd.DatetimeIndex(pd.to_datetime(mine["date"]))
        paths[series.name] = (dates, mine[columns].to_numpy(float))
        base[series.name] = dates[-1] if len(dates) else until

    def filter_new(rows: pd.DataFrame, known: dict[str, pd.Timestamp]) -> pd.DataFrame:
        dates = pd.DatetimeIndex(np.unique(rows["date"].to_numpy()))
        start = int(dates.searchsorted(min(known.values())))
        block = filter_days(fitted, rows, low, dates, start, dates[-1], names, fit_date, None)
        block = block[pd.to_datetime(block["date"]) > block["market"].map(known)]
        out_rows = block.rename(columns={f"filtered_{n}": f"prob_{n}" for n in names})
        return out_rows[["date", "market", "regime", *[f"prob_{n}" for n in names], "observed"]]

    calendars = {s.name: s.calendar for s in fitted.panel.series}
    return _Source(names, paths, base, calendars, config.data.max_gap, filter_new)


def _record(market: str, day: pd.Timestamp, probs: np.ndarray, observed: bool, names: tuple[str, ...]) -> dict:
    record = {"date": pd.Timestamp(day).strftime("%Y-%m-%d"), "market": market, "regime": names[int(probs.argmax())]}
    record.update({f"prob_{n}": float(p) for n, p in zip(names, probs)})
    record["observed"] = int(observed)
    return record


def _records_frame(records: list[dict], names: tuple[str, ...]) -> pd.DataFrame:
    columns = ["date", "market", "regime", *[f"prob_{n}" for n in names], "observed"]
    return pd.DataFrame.from_records(records, columns=columns)


def _known_date(market: str, base: pd.Timestamp, previous: pd.DataFrame | None) -> pd.Timestamp:
    """The last day of ``market`` known before this update: its base day, or the last day an earlier update wrote."""
    if previous is None:
        return base
    done = previous.loc[previous["market"] == market, "date"]
    return max(base, pd.Timestamp(done.max())) if len(done) else base


def _load(out: Path, table: pd.DataFrame) -> RegimeFit:
    """The saved fit, from the rows of ``table`` up to each market's last fitted day when ``table`` starts at or
    before the fitted first days, else (or when those rows are not the fitted data) from the fit's own data."""
    summary_path = out / "summary.json"
    try:
        markets = json.loads(summary_path.read_text(encoding="utf-8"))["markets"]
        spans = {name: (pd.Timestamp(m["first_date"]), pd.Timestamp(m["last_date"])) for name, m in markets.items()}
    except (OSError, ValueError, KeyError, TypeError):
        spans = {}
    covered = bool(spans) and all(
        ((table["market"] == name) & (table["date"] <= first)).any() for name, (first, _) in spans.items()
    )
    if covered:
        # the fitted rows, markets in the fit's order (a file may list them in another)
        prefix = pd.concat(
            [table[(table["market"] == name) & (table["date"] <= last)] for name, (_, last) in spans.items()]
        )
        prefix.attrs = dict(table.attrs)
        try:
            return load_fit(out, data=prefix)
        except CheckpointError:
            pass  # the fitted days differ: load from the fit's own data, and extend_panel names the day that changed
    try:
        return load_fit(out)
    except CheckpointError as exc:
        if not covered:
            raise
        raise DataError(
            f"the rows of the data up to the fitted last days differ from the data the fit in {out} was made on "
            f"(a revised or inserted row?), and that data cannot be read to say where ({exc}): refit"
        ) from None


def _check_gap(market: str, calendar: str, max_gap: int, table: pd.DataFrame, known: pd.Timestamp) -> None:
    """:class:`DataError` when the market's first row after ``known`` (its last known day) comes after more missing
    days than ``max_gap`` (on the market's calendar: business days, or every day; weekly or monthly data, the
    ``periodic`` calendar, have no missing days to count)."""
    later = table.loc[(table["market"] == market) & (table["date"] > known), "date"]
    if later.empty or calendar not in ("business", "daily"):
        return
    nxt = pd.Timestamp(later.min())
    grid = pd.bdate_range(known, nxt) if calendar == "business" else pd.date_range(known, nxt)
    missing = len(grid) - 2
    if missing > max_gap:
        raise DataError(
            f"market '{market}': {missing} days are missing between {known.date()} and {nxt.date()}, more than "
            f"data.max_gap ({max_gap}): the filter would guess through the gap; add the missing rows or refit"
        )


def _previous_updates(path: Path, base: dict[str, pd.Timestamp]) -> pd.DataFrame | None:
    """The rows earlier updates wrote (as text), without those at or before their market's base day (a walk-forward
    run continued since has them in walkforward.csv), or None."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problem = type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ({problem}): remove it to start the updates again") from None
    if not {"date", "market", "observed"} <= set(frame.columns):
        raise CheckpointError(f"{path}: not an updates file (no date, market and observed columns)")
    after = pd.to_datetime(frame["date"]) > frame["market"].map(base)
    frame = frame[after.fillna(False).to_numpy(dtype=bool)].reset_index(drop=True)
    return frame if len(frame) else None


def _check_closes(previous: pd.DataFrame, table: pd.DataFrame, value_column: str, path: Path) -> None:
    """:class:`DataError` naming market, date and both values when a day an earlier update wrote has another close
    in the data now, or none (a row written with its close must find it again)."""
    if value_column not in previous.columns:
        return
    given = table[["date", "market", value_column]].assign(date=table["date"].dt.strftime("%Y-%m-%d"))
    merged = previous[["date", "market", value_column]].merge(
        given, on=["date", "market"], how="left", suffixes=("_was", "_now")
    )
    for _, row in merged.iterrows():
        was, now = row[f"{value_column}_was"], row[f"{value_column}_now"]
        if was == "":
            continue  # a day without a row (no trade, a gap): nothing to compare
        if pd.isna(now):
            raise DataError(
                f"market '{row['market']}', date {row['date']}: {path.name} holds this day's {value_column} but the "
                "data no longer do; nothing written"
            )
        if f"{float(now):.6f}" != was:
            raise DataError(
                f"market '{row['market']}', date {row['date']}: {value_column} was {was} in {path.name}, now "
                f"{float(now):.6f} (a revised close?); nothing written: refit, or remove {path.name} to start the "
                "updates again"
            )


def describe(result: UpdateResult) -> str:
    """The report ``regime-dmm update`` prints: one line per market (regime now, its probability, how long it
    has lasted, the day before, whether it changed)."""
    lines = []
    for m in result.markets:
        change = (
            f"CHANGED from {m.known_regime} (on {m.known_date})"
            if m.changed
            else f"unchanged since {m.known_date}"
            if m.new_days
            else "no new day"
        )
        yesterday = "" if m.previous_regime is None else f"; the day before: {m.previous_regime}"
        lasted = f"{m.days_in_regime} day{'s' if m.days_in_regime != 1 else ''} (since {m.regime_since})"
        prob = "nan" if math.isnan(m.probability) else f"{m.probability:.3f}"
        lines.append(f"{m.market} {m.date}: {m.regime} (p = {prob}) for {lasted}{yesterday}; {change}")
    return "\n".join(lines)
