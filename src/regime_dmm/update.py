"""Daily updates of a saved fit: the filtered regime of each new day, without refitting.

A quant who reads regimes every day appends the new closes to the price file (or keeps them in a
file of their own) and runs ``regime-dmm update DIR --data FILE``. This module

* loads the fit saved in ``DIR`` (from the rows of ``FILE`` up to each market's last fitted day when
  the file holds them - the usual case, a price file that grows by a row a day - else from the data
  the fit was made on);
* appends the days of ``FILE`` after each market's last fitted day and filters them with the fitted
  parameters (:func:`~regime_dmm.nowcast.extend_panel`: the features of the new days use the fitted
  normalisation; the exact forward filter gives ``p(z_t | x_1..x_t)``, no look-ahead) - the same
  probabilities a walk-forward run gives those days with the same parameters;
* writes every filtered day since the fit to ``DIR/updates.csv`` at once (rows an earlier update
  wrote must come out the same: a revised close is an error naming market, date and both values,
  and nothing is written);
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_write_text
from .data.loader import read_prices
from .errors import CheckpointError, DataError
from .nowcast import NewData, evaluate_panel, extend_panel
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
    """Filter the days of ``data`` after the fit (or walk-forward run) saved in ``fit_dir`` and (``write``) append
    them to ``fit_dir/updates.csv`` (see the module docstring).

    ``data``: a long CSV path or DataFrame in the fit's input format (date, market, price|return), with
    the new days and, optionally, the fitted ones (they must repeat the fitted values). A walk-forward folder's
    new days (after its last date) are filtered with its last refit's parameters, as its later days were; the
    report's path is ``walkforward.csv``'s filtered regimes followed by the new days'.

    Raises :class:`~regime_dmm.errors.CheckpointError` (no readable fit or walk-forward in ``fit_dir``),
    :class:`~regime_dmm.errors.DataError` (no day after the fit, a market not in the fit, a fitted day
    changed, a day the previous update wrote changed, a gap after a market's last known day longer than
    the fit's ``data.max_gap``).
    """
    out = Path(fit_dir)
    label = None if isinstance(data, (str, Path)) else "new data"
    if (out / PARTS / PLAN_FILE).is_file():
        table = read_prices(data, label=label)
        names, paths, max_gap = _walk_forward_paths(out, table)
    elif (out / MODEL_FILE).is_file():
        table = read_prices(data, label=label)
        names, paths, max_gap = _fit_paths(out, table)
    else:
        raise CheckpointError(
            f"{out} holds no saved fit ({MODEL_FILE} not found) and no walk-forward run: write one with regime-dmm fit"
        )
    if all(p.length == p.base for p in paths):
        last_dates = ", ".join(f"{p.market} {p.dates[-1].date()}" for p in paths)
        raise DataError(f"the data hold no day after the last fitted dates ({last_dates}): nothing to update")
    value_column = table.attrs["value_column"]
    previous = _previous_updates(out / UPDATES_FILE)
    frames, markets = [], []
    for path in paths:
        known = path.base - 1
        if previous is not None:
            done = previous.loc[previous["market"] == path.market, "date"]
            if len(done):
                known = max(known, int(path.dates.searchsorted(pd.Timestamp(done.iloc[-1]))))
                known = min(known, path.length - 1)
        _check_gap(path.market, path.calendar, max_gap, table, path.dates[known])
        markets.append(_market_update(path, names, known))
        if path.length > path.base:
            new = slice(path.base, path.length)
            frame = pd.DataFrame({"date": path.dates[new].strftime("%Y-%m-%d"), "market": path.market})
            frame["regime"] = [names[int(k)] for k in path.probs[new].argmax(-1)]
            for k, name in enumerate(names):
                frame[f"prob_{name}"] = path.probs[new, k]
            frame["observed"] = np.asarray(path.observed[new], dtype=np.int64)
            given = table.loc[table["market"] == path.market, ["date", value_column]]
            given = given.assign(date=given["date"].dt.strftime("%Y-%m-%d"))
            frames.append(frame.merge(given, on="date", how="left"))  # the close filtered (empty: no row that day)
    frame = pd.concat(frames, ignore_index=True)
    text = frame.to_csv(index=False, float_format="%.6f", lineterminator="\n")
    if previous is not None:
        _check_unchanged(previous, pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False), out / UPDATES_FILE)
    if write:
        atomic_write_text(out / UPDATES_FILE, text)
    return UpdateResult(markets=markets, frame=frame)


@dataclass
class _Path:
    """One market's filtered path: ``dates (T,)``, ``probs (T, K)``, ``observed (T,)``; its first ``base`` days
    were known before this update (fitted, or in ``walkforward.csv``); ``calendar``: business or daily."""

    market: str
    dates: pd.DatetimeIndex
    probs: np.ndarray
    observed: np.ndarray
    base: int
    calendar: str

    @property
    def length(self) -> int:
        return len(self.dates)


def _market_update(path: _Path, names: tuple[str, ...], known: int) -> MarketUpdate:
    """The report of one market (see :class:`MarketUpdate`); ``known``: the index of its last known day."""
    labels = path.probs.argmax(-1)
    last = path.length - 1
    run = last
    while run > 0 and labels[run - 1] == labels[last]:
        run -= 1
    return MarketUpdate(
        market=path.market,
        date=path.dates[last].strftime("%Y-%m-%d"),
        regime=names[int(labels[last])],
        probability=round(float(path.probs[last, labels[last]]), 6),
        probabilities={n: round(float(p), 6) for n, p in zip(names, path.probs[last])},
        days_in_regime=last - run + 1,
        regime_since=path.dates[run].strftime("%Y-%m-%d"),
        previous_regime=names[int(labels[last - 1])] if last > 0 else None,
        known_date=path.dates[known].strftime("%Y-%m-%d"),
        known_regime=names[int(labels[known])],
        changed=bool(labels[last] != labels[known]),
        new_days=last - known,
    )


def _fit_paths(out: Path, table: pd.DataFrame) -> tuple[tuple[str, ...], list[_Path], int]:
    """A saved fit's markets: the fitted days and the new ones, filtered in one pass at the fitted parameters."""
    fit = _load(out, table)
    panel, fitted_lengths = extend_panel(fit, table)
    _, post = evaluate_panel(fit, panel)
    filtered = post.filtered.numpy()
    paths = [
        _Path(s.name, s.dates, filtered[m, : s.length], np.asarray(s.observed), n, s.calendar)
        for m, (s, n) in enumerate(zip(panel.series, fitted_lengths))
    ]
    return fit.regimes, paths, fit.config.data.max_gap


def _walk_forward_paths(out: Path, table: pd.DataFrame) -> tuple[tuple[str, ...], list[_Path], int]:
    """A walk-forward folder's markets: ``walkforward.csv``'s filtered days, then the new days filtered with the
    last refit's parameters (as :func:`~regime_dmm.walkforward.walk_forward` filters a refit's days)."""
    fitted, low, fit_date, until, config = last_refit(out, table)
    names = config.model.names()
    dates = pd.DatetimeIndex(np.unique(table["date"].to_numpy()))
    new = filter_days(fitted, table, low, dates, int(dates.searchsorted(until)), dates[-1], names, fit_date, None)
    done = pd.read_csv(out / WALKFORWARD_FILE, dtype={"date": str, "market": str, "fit_date": str})
    columns = [f"filtered_{n}" for n in names]
    paths = []
    for series in fitted.panel.series:
        before = done[done["market"] == series.name]
        after = new[new["market"] == series.name]
        both = pd.concat([before, after], ignore_index=True)
        paths.append(
            _Path(
                series.name,
                pd.DatetimeIndex(pd.to_datetime(both["date"])),
                both[columns].to_numpy(float),
                both["observed"].to_numpy(bool),
                len(before),
                series.calendar,
            )
        )
    return names, paths, config.data.max_gap


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
    days than ``max_gap`` (on the market's calendar: business days, or every day)."""
    later = table.loc[(table["market"] == market) & (table["date"] > known), "date"]
    if later.empty:
        return
    nxt = pd.Timestamp(later.min())
    grid = pd.bdate_range(known, nxt) if calendar == "business" else pd.date_range(known, nxt)
    missing = len(grid) - 2
    if missing > max_gap:
        raise DataError(
            f"market '{market}': {missing} days are missing between {known.date()} and {nxt.date()}, more than "
            f"data.max_gap ({max_gap}): the filter would guess through the gap; add the missing rows or refit"
        )


def _previous_updates(path: Path) -> pd.DataFrame | None:
    """The rows an earlier update wrote (as text), or None."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problem = type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ({problem}): remove it to start the updates again") from None
    if not {"date", "market"} <= set(frame.columns):
        raise CheckpointError(f"{path}: not an updates file (no date and market columns)")
    return frame


def _check_unchanged(previous: pd.DataFrame, now: pd.DataFrame, path: Path) -> None:
    """:class:`DataError` naming market, date and both values when a row an earlier update wrote comes out otherwise."""
    merged = previous.merge(now, on=["date", "market"], how="left", suffixes=("_was", "_now"), indicator=True)
    gone = merged[merged["_merge"] == "left_only"]
    if len(gone):
        row = gone.iloc[0]
        raise DataError(
            f"market '{row['market']}', date {row['date']}: {path.name} holds this day but the data no longer do; "
            "nothing written"
        )
    # the input's value (price or return) first: a revised close is named itself, not the first regime it moved
    columns = [c for c in previous.columns if c not in ("date", "market") and f"{c}_now" in merged]
    columns.sort(key=lambda c: c not in ("price", "return"))
    for column in columns:
        differ = merged[f"{column}_was"] != merged[f"{column}_now"]
        if differ.any():
            row = merged[differ].sort_values("date").iloc[0]
            raise DataError(
                f"market '{row['market']}', date {row['date']}: {column} was {row[f'{column}_was']} in {path.name}, "
                f"now {row[f'{column}_now']} (a revised close?); nothing written: refit, or remove "
                f"{path.name} to start the updates again"
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
