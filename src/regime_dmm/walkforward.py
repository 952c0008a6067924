"""Walk-forward regimes: refit every N days on the data available then, and give each later day the
filtered regime probabilities computed from that fit and the days up to it only.

For a refit date ``d_i`` the model is fitted on the rows dated ``<= d_i`` (all of them, or the last
``window`` dates); each date ``t`` in ``(d_i, d_{i+1}]`` then gets, per market with a row on ``t``,
``p(z_t | x_1..x_t)`` at those parameters, computed on the rows dated ``<= t`` alone (the day grid,
no-trade masks, gaps and bad-tick checks included: a bad tick is recognised by its reversal the
next day, so a filter that saw the next day would look ahead). Each refit after the first starts
from the previous one's parameters with ``refit_epochs`` epochs, one restart and ``anneal_epochs`` 0 (under
``training.optimizer: lbfgs`` with the map guide: L-BFGS from the first epoch; Adam's schedules are
unchanged); the first is a full
fit with the configuration's epochs and restarts. Refit dates count the dates of the data (the
union of the markets' dates) from ``start``, so appending later days to the input leaves every
earlier row unchanged.

This is the evaluation design of regime-switching strategies in the literature (for example
Nystrup, Madsen and Lindstrom, "Dynamic portfolio optimization across hidden market regimes",
Quantitative Finance 18, 2018, and the online prediction of the statistical jump model,
``jumpmodels``): parameters refitted on an expanding or rolling window, states filtered forward.

With ``out``, every refit leaves ``out/walkforward_parts/NNNN.csv`` (its days) and ``NNNN.pt`` (its
parameters and feature pipeline, tensors and plain data only) written atomically, and the rows the run
read are kept in ``out/walkforward_parts/data.csv``. A rerun into the same folder with the same settings
skips the finished refits, and ``out/walkforward.csv`` is written at the end. The data of a rerun may have
days appended (a daily run): the rows up to the last date of the earlier run must be the same (a revised
row is a :class:`~regime_dmm.errors.DataError` naming market, date and both values, before anything is
written); the days of the last refit's block that the earlier run could not see yet are filtered with that
refit's saved parameters (no refit), and only the refits the new days call for are run, so the table is the
one a single run on all the days gives.

**Stable names** (issue #19). A refit may move the ladder so that days the previous refit called ``calm``
are now ``neutral``. For every refit after the first, :func:`relabelled_days` compares the two refits'
regimes (the most probable smoothed regime of each observed day) on the days both saw, market by market;
the table is returned as ``table.attrs["refits"]`` and written to ``out/walkforward_refits.csv``, and the run
prints its median and largest share.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ._version import __version__
from .atomic import atomic_write_text, folder_lock
from .checkpoints import read_checkpoint, write_checkpoint
from .config import FitConfig
from .data.features import FeaturePipeline
from .data.sources import DataSource, load_source
from .errors import CheckpointError, ConfigError, DataError, RegimeWarning
from .fitted import FittedModel
from .fitting import fit
from .inference import last_filtered
from .training.restarts import FitInterrupted, StopControl
from .training.variants import variant_for

__all__ = [
    "DEFAULT_START_DATES",
    "PLAN_FILE",
    "WALKFORWARD_FILE",
    "WalkForwardPlan",
    "describe_plan",
    "filter_days",
    "last_refit",
    "read_plan",
    "rebuild_refit",
    "relabelled_days",
    "refit_regimes",
    "REFITS_FILE",
    "rows_between",
    "run_configuration",
    "window_start",
    "refit_dates",
    "walk_forward",
]

#: The output table's file name.
WALKFORWARD_FILE = "walkforward.csv"
#: The refits' companion table: one row per refit and market (:func:`relabelled_days`).
REFITS_FILE = "walkforward_refits.csv"
#: Its columns.
REFITS_COLUMNS = ["refit", "fit_date", "market", "overlap_days", "relabelled_days", "relabelled_share"]
#: Without ``start``, the first refit is on the 500th date of the data (about two years of business days);
#: a fixed count, so that appending days never moves it.
DEFAULT_START_DATES = 500
PARTS = "walkforward_parts"
#: The run's settings, data identity and source, inside ``out/walkforward_parts``.
PLAN_FILE = "plan.json"
#: The rows a run read (its input, as loaded), inside ``out/walkforward_parts``: a later run must repeat them.
DATA_FILE = "data.csv"
PART_FORMAT = "regime-dmm walk-forward refit/2"
#: What a refit's part file holds besides its format and version.
PART_KEYS = ("params", "markets", "fit_date", "until", "features")


@dataclass(frozen=True)
class WalkForwardPlan:
    """The settings of a walk-forward run (kept in ``out/walkforward_parts/plan.json``).

    ``refit_every``: dates between refits (>= 1); ``window``: ``None`` for an expanding window, else
    the number of dates each refit sees (> 30); ``start``: the first refit date (ISO), ``None`` for
    the :data:`DEFAULT_START_DATES`-th date; ``refit_epochs``: epochs of each refit after the first.
    """

    refit_every: int = 21
    window: int | None = None
    start: str | None = None
    refit_epochs: int = 100

    def check(self) -> None:
        """Raises :class:`ConfigError` naming the setting that is out of range."""
        if self.refit_every < 1:
            raise ConfigError(f"refit_every must be >= 1 day, got {self.refit_every}")
        if self.window is not None and self.window < 31:
            raise ConfigError(f"window must be 'expanding' or > 30 dates (a fit needs 30 returns), got {self.window}")
        if self.refit_epochs < 1:
            raise ConfigError(f"refit_epochs must be >= 1, got {self.refit_epochs}")


def _columns(names: tuple[str, ...]) -> list[str]:
    """The columns of ``walkforward.csv`` for regimes ``names``."""
    return ["date", "market", "regime", *[f"filtered_{n}" for n in names], "fit_date", "observed"]


def refit_dates(dates: pd.DatetimeIndex, plan: WalkForwardPlan) -> list[int]:
    """Positions in ``dates`` (the sorted union of the markets' dates) of the refits.

    Raises :class:`ConfigError` when ``plan.start`` is not a date or leaves no day to predict.
    """
    if plan.start is None:
        first = DEFAULT_START_DATES - 1
        if first >= len(dates) - 1:
            raise ConfigError(
                f"the data hold {len(dates)} dates: the default start (the {DEFAULT_START_DATES}th date) leaves no day "
                "to predict; give a start date"
            )
    else:
        try:
            when = pd.Timestamp(plan.start)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"start: cannot read {plan.start!r} as a date") from exc
        first = int(dates.searchsorted(when))
    if first >= len(dates) - 1:
        last = dates[-1].date() if len(dates) else "none"
        raise ConfigError(f"start {plan.start or first} leaves no day to predict (the last date is {last})")
    return list(range(first, len(dates) - 1, plan.refit_every))


def walk_forward(
    data: DataSource = None,
    config: FitConfig | None = None,
    *,
    plan: WalkForwardPlan | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    stop: StopControl | None = None,
) -> pd.DataFrame:
    """Walk-forward filtered regime probabilities (see the module docstring).

    ``data``: as :func:`~regime_dmm.fit` (None: the embedded default). ``config``: the fit's
    configuration. Returns one row per market and date after the first refit on which the market
    has a row: ``date, market, regime`` (the most probable filtered regime), ``filtered_<name>`` per
    regime, ``fit_date`` (the refit whose parameters were used: always before ``date``) and
    ``observed`` (0: a masked day - no trade, gap, bad tick - whose probabilities are the
    prediction from the days before). A market enters at the first refit at which it has
    ``training.min_observations`` rows in the window.

    Raises :class:`~regime_dmm.errors.DataError` (bad data), :class:`ConfigError` (settings),
    :class:`CheckpointError` (``out`` holds a run with other settings), :class:`DataError` (``out`` holds a run
    whose rows the data do not repeat: a revised, removed or inserted row before its last date; nothing is written),
    and what :func:`~regime_dmm.fit` raises for a refit.
    """
    config = config or FitConfig()
    plan = plan or WalkForwardPlan()
    plan.check()
    print_ = log or (lambda _msg: None)
    # the row checks only: a market may have too few rows for a fit until later refits
    loaded = load_source(data, min_observations=1, seed=config.training.seed)
    frame = loaded.frame
    dates = pd.DatetimeIndex(np.unique(frame["date"].to_numpy()))
    positions = refit_dates(dates, plan)
    source = {"paths": loaded.path, "simulated": loaded.simulated, "seed": config.training.seed}
    for line in describe_plan(dates, positions, plan):  # before any work: what the run will cost
        print_(line)
        if line.startswith("WARNING "):
            warnings.warn(line.removeprefix("WARNING "), RegimeWarning, stacklevel=2)
    if out is None:
        return _walk(frame, dates, positions, None, plan, config, source, progress, print_, stop)
    with folder_lock(out, "walk-forward"):  # a second run into this folder stops here, changing nothing
        return _walk(frame, dates, positions, Path(out), plan, config, source, progress, print_, stop)


def _walk(
    frame: pd.DataFrame,
    dates: pd.DatetimeIndex,
    positions: list[int],
    out: Path | None,
    plan: WalkForwardPlan,
    config: FitConfig,
    source: dict[str, Any],
    progress: bool,
    print_: Callable[[str], None],
    stop: StopControl | None,
) -> pd.DataFrame:
    """The refits and filters of :func:`walk_forward` (``out``: held by the caller's lock, or None)."""
    parts = _parts_folder(out, plan, config, frame, source)
    names = config.model.names()
    resolved = variant_for(config).resolve_config(config)
    bar = _progress(len(positions), progress)
    previous: dict[str, torch.Tensor] | None = None
    previous_markets: tuple[str, ...] = ()
    blocks: list[pd.DataFrame] = []
    refits: list[dict[str, Any]] = []  # each refit's date, markets and the regimes it gave (relabelled_days)
    started, refitted = time.perf_counter(), 0
    for i, pos in enumerate(positions):
        fit_date = dates[pos]
        until = dates[min(pos + plan.refit_every, len(dates) - 1)]
        part = None if parts is None else parts / f"{i:04d}"
        low = window_start(dates, pos, plan.window)
        if part is not None and part.with_suffix(".csv").is_file() and part.with_suffix(".pt").is_file():
            saved = read_checkpoint(part.with_suffix(".pt"), PART_FORMAT, "walk-forward refit", PART_KEYS)
            previous, previous_markets = saved["params"], tuple(saved["markets"])
            text_columns = {"date": str, "market": str, "regime": str, "fit_date": str}
            block = pd.read_csv(part.with_suffix(".csv"), dtype=text_columns, keep_default_na=False)
            seen = pd.Timestamp(saved["until"])
            # the rows the part's parameters file vouches for (a stop between writing its CSV and its .pt may have
            # left later rows in the CSV: they are filtered again below)
            block = block[pd.to_datetime(block["date"]) <= seen].reset_index(drop=True)
            if until > seen:  # days appended since: its block continues with its own parameters, no refit
                fitted = rebuild_refit(saved, frame, low, fit_date, resolved)
                more = filter_days(fitted, frame, low, dates, dates.searchsorted(seen), until, names, fit_date, stop)
                block = pd.concat([block, more], ignore_index=True)
                _write_part(part, block, previous, previous_markets, fit_date, until, saved["features"])
                print_(f"refit {i + 1}/{len(positions)} on {fit_date.date()}: {len(more)} rows added (no refit)")
            blocks.append(block)
            refits.append(_refit_record(dict(saved, fit_date=fit_date, low=low), frame, resolved, print_))
            bar.update(1)
            continue
        if stop is not None:
            stop.phase = f"walk-forward refit on {fit_date.date()}"
        train = rows_between(frame, low, fit_date)
        counts = train.groupby("market", sort=False).size()
        markets = tuple(m for m in counts.index if counts[m] > config.training.min_observations)
        result = None
        while markets and result is None:
            first = previous is None or markets != previous_markets
            # a refit starts at the previous optimum: under L-BFGS no annealing (beta = 0 would first pull it away)
            refit = {"epochs": plan.refit_epochs, "restarts": 1, "anneal_epochs": 0}
            cfg = config if first else config.replace(training=refit)
            try:
                result = fit(
                    train[train["market"].isin(markets)],
                    cfg,
                    initial_params=None if first else previous,
                    stop=stop,
                    warn=False,
                )
            except DataError as exc:  # a market not yet fit to fit (constant, too few traded days): left out
                named = [m for m in markets if f"'{m}'" in str(exc)]
                if not named:
                    raise
                print_(f"refit on {fit_date.date()}: {named[0]} left out ({exc})")
                markets = tuple(m for m in markets if m != named[0])
        if result is None:
            bar.update(1)
            continue
        fitted = result.require_fitted()
        block = filter_days(fitted, frame, low, dates, pos, until, names, fit_date, stop)
        previous, previous_markets = fitted.parameters(), markets
        if part is not None:
            _write_part(part, block, previous, markets, fit_date, until, fitted.pipeline.to_dict())
        blocks.append(block)
        refits.append({"fit_date": fit_date, "markets": markets, "regimes": _regimes(fitted)})
        refitted += 1
        spent = time.perf_counter() - started
        left = _duration(spent / refitted * (len(positions) - i - 1))
        print_(
            f"refit {i + 1}/{len(positions)} on {fit_date.date()}: {', '.join(markets)}; {len(block)} rows; "
            f"{spent:.0f} s so far, about {left} left"
        )
        bar.update(1)
    bar.close()
    columns = _columns(names)
    table = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=columns)
    table = table[columns].reset_index(drop=True)
    if out is not None:  # the table first: the refits' comparison below is a report on it
        text = table.to_csv(index=False, float_format="%.6f", lineterminator="\n")
        atomic_write_text(Path(out) / WALKFORWARD_FILE, text)
    if stop is not None:
        stop.phase = "comparing the refits' regimes"
    relabels = _relabel_table(refits)
    table.attrs["refits"] = relabels
    if len(relabels):
        sums = relabels.groupby("refit")[["relabelled_days", "overlap_days"]].sum()
        share = sums["relabelled_days"] / sums["overlap_days"].clip(lower=1)
        worst = int(share.idxmax())
        when = relabels.loc[relabels["refit"] == worst, "fit_date"].iloc[0]
        print_(
            f"names relabelled against the previous refit (share of the days both saw): median {share.median():.1%}, "
            f"largest {share.max():.1%} (refit {worst + 1} on {when})"
        )
    if out is not None:
        text = relabels.to_csv(index=False, float_format="%.6f", lineterminator="\n")
        atomic_write_text(Path(out) / REFITS_FILE, text)
    return table


def rebuild_refit(
    saved: dict[str, Any], frame: pd.DataFrame, low: pd.Timestamp | None, fit_date: pd.Timestamp, config: FitConfig
) -> FittedModel:
    """The fitted model of a refit from its part file's contents (``saved``: parameters, markets, feature pipeline)
    and the run's rows ``frame``, without fitting: the training rows (``low`` .. ``fit_date``, its markets) through
    its own pipeline, its parameters. ``config``: the run's configuration, resolved."""
    pipeline = FeaturePipeline.from_dict(saved["features"])
    train = rows_between(frame, low, fit_date)
    train = train[train["market"].isin(list(saved["markets"]))]
    train.attrs = dict(frame.attrs)
    panel = pipeline.transform(train)
    return FittedModel.build(config, pipeline, panel, saved["params"], getattr(torch, config.training.dtype))


def refit_regimes(info: dict[str, Any], frame: pd.DataFrame, config: FitConfig) -> dict[str, pd.Series]:
    """The regimes a refit gave: per market, the most probable smoothed regime (its index) of each observed day of
    its own training rows, at its own parameters and normalisation (:func:`rebuild_refit`: the rows it was fitted
    on, so every one of its markets is there). ``info``: the refit's ``params``, ``markets``, ``features``,
    ``fit_date`` and ``low`` (its window's first date, None: expanding). Raises what :func:`rebuild_refit` raises."""
    return _regimes(rebuild_refit(info, frame, info["low"], info["fit_date"], config))


def _regimes(fitted: FittedModel) -> dict[str, pd.Series]:
    """Per market of ``fitted``, the most probable smoothed regime of each observed day of its fitted rows (the
    fitted model's posterior, computed once and kept)."""
    _, post = fitted.posterior()
    smoothed = post.smoothed.numpy()
    return {
        s.name: pd.Series(smoothed[m, : s.length].argmax(-1), index=s.dates)[np.asarray(s.observed, dtype=bool)]
        for m, s in enumerate(fitted.panel.series)
    }


def relabelled_days(
    earlier: dict[str, Any], later: dict[str, Any], frame: pd.DataFrame, config: FitConfig, refit: int
) -> list[dict[str, Any]]:
    """How many of the days two refits both saw the later one names differently, per market they share.

    ``earlier`` / ``later``: as :func:`refit_regimes` takes them. A day both saw (in both refits' training rows) is
    relabelled when the two refits' regimes (:func:`refit_regimes`) differ. Returns one dict per market both
    fitted with ``refit`` (the later one's index), ``fit_date`` (ISO), ``market``, ``overlap_days``,
    ``relabelled_days`` and ``relabelled_share`` (NaN for no shared day)."""
    before = {"regimes": refit_regimes(earlier, frame, config)}
    after = {"fit_date": later["fit_date"], "markets": later["markets"], "regimes": refit_regimes(later, frame, config)}
    return _compare(before, after, refit)


def _compare(before: dict[str, Any], after: dict[str, Any], refit: int) -> list[dict[str, Any]]:
    """The rows of :func:`relabelled_days` from two refit records (``regimes``; the later one's ``fit_date`` and
    ``markets``)."""
    rows = []
    for market in [m for m in after["markets"] if m in before["regimes"] and m in after["regimes"]]:
        a, b = before["regimes"][market].align(after["regimes"][market], join="inner")
        changed = int((a != b).sum())
        rows.append(
            {
                "refit": refit,
                "fit_date": after["fit_date"].strftime("%Y-%m-%d"),
                "market": market,
                "overlap_days": int(len(a)),
                "relabelled_days": changed,
                "relabelled_share": changed / len(a) if len(a) else float("nan"),
            }
        )
    return rows


def _refit_record(
    info: dict[str, Any], frame: pd.DataFrame, config: FitConfig, print_: Callable[[str], None]
) -> dict[str, Any]:
    """The record of a refit kept from an earlier run (its part file's ``info``): its date, markets and regimes,
    rebuilt from its saved parameters. The comparison is a report on the run: a refit whose regimes cannot be
    rebuilt is named in the log and has none (left out of the comparison), never an error that would stop the
    run."""
    try:
        regimes = refit_regimes(info, frame, config)
    except Exception as exc:  # a diagnostic: say so and go on
        print_(f"refit on {info['fit_date'].date()}: its regimes could not be compared ({exc})")
        regimes = None
    return {"fit_date": info["fit_date"], "markets": tuple(info["markets"]), "regimes": regimes}


def _relabel_table(refits: list[dict[str, Any]]) -> pd.DataFrame:
    """The relabelled days of each refit against the one before (refit records: ``fit_date``, ``markets`` and
    ``regimes``, None where they could not be rebuilt)."""
    rows = [
        row
        for i in range(1, len(refits))
        if refits[i - 1]["regimes"] is not None and refits[i]["regimes"] is not None
        for row in _compare(refits[i - 1], refits[i], i)
    ]
    return pd.DataFrame(rows, columns=REFITS_COLUMNS)


def last_refit(
    out: str | Path, frame: pd.DataFrame
) -> tuple[FittedModel, pd.Timestamp | None, pd.Timestamp, pd.Timestamp, FitConfig]:
    """The last refit of the walk-forward run in ``out``, rebuilt (:func:`rebuild_refit`) on ``frame``, which must
    repeat the rows the run read (days may follow). Returns ``(fitted, low, fit_date, until, config)``: the first
    date of its window (None: expanding), its refit date, the last date the run filtered, the run's resolved
    configuration. Raises :class:`CheckpointError` (no finished refit), :class:`DataError` (a revised row)."""
    parts = Path(out) / PARTS
    plan, config = run_configuration(out)
    files = sorted(parts.glob("[0-9][0-9][0-9][0-9].pt"))
    if not files or not (parts / DATA_FILE).is_file():
        raise CheckpointError(f"{out} holds no finished walk-forward refit: run regime-dmm walkforward first")
    _same_prefix(parts / DATA_FILE, frame)
    saved = read_checkpoint(files[-1], PART_FORMAT, "walk-forward refit", PART_KEYS)
    fit_date, until = pd.Timestamp(saved["fit_date"]), pd.Timestamp(saved["until"])
    dates = pd.DatetimeIndex(np.unique(frame["date"].to_numpy()))
    low = window_start(dates, int(dates.searchsorted(fit_date)), plan["plan"].get("window"))
    return rebuild_refit(saved, frame, low, fit_date, config), low, fit_date, until, config


def run_configuration(out: str | Path) -> tuple[dict[str, Any], FitConfig]:
    """The ``plan.json`` of the walk-forward run in ``out`` and its configuration, resolved as its fits resolved it.
    Raises :class:`CheckpointError` when either is missing or unreadable."""
    plan = read_plan(out)
    origin = str(Path(out) / PARTS / PLAN_FILE)
    try:
        config = FitConfig.from_dict(plan["config"], origin=origin)
        window = plan["plan"]["window"]
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{origin}: no readable configuration ({exc})") from None
    if window is not None and not isinstance(window, int):
        raise CheckpointError(f"{origin}: the window is not a number of dates ({window!r})")
    return plan, variant_for(config).resolve_config(config)


#: A first fit on more dates than this (twenty years of business days) is reported before any work, with advice.
LONG_WINDOW = 5040


def describe_plan(dates: pd.DatetimeIndex, positions: list[int], plan: WalkForwardPlan) -> list[str]:
    """What a walk-forward will do, said before it starts: the refits (how many, from and to which date) and the
    dates the first and last fits see; a ``WARNING`` line when the first fit sees more than :data:`LONG_WINDOW`
    dates (an expanding window from a start far before the first refit: each refit costs a long fit)."""
    first, last = positions[0], positions[-1]
    seen_first = first + 1 if plan.window is None else min(first + 1, plan.window)
    seen_last = last + 1 if plan.window is None else min(last + 1, plan.window)
    window = f"the last {plan.window} dates" if plan.window else f"an expanding window from {dates[0].date()}"
    lines = [
        f"walk-forward: {len(positions)} refits every {plan.refit_every} dates from {dates[first].date()} to "
        f"{dates[last].date()}, each on {window}: the first fit sees {seen_first:,} dates, the last {seen_last:,}; "
        f"{len(dates) - first - 1:,} dates to filter"
    ]
    if seen_first > LONG_WINDOW:
        since = dates[max(0, first - seen_first + 1)].date()
        lines.append(
            f"WARNING walk-forward: the first fit sees {seen_first:,} dates (from {since}),"
            f" and each of the {len(positions)} refits sees as many or more: this takes long; --window 2520 (about ten "
            "years of business days) or a later data start keeps each fit short"
        )
    return lines


def _duration(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"3 h 5 min"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def window_start(dates: pd.DatetimeIndex, pos: int, window: int | None) -> pd.Timestamp | None:
    """The first date a refit at ``dates[pos]`` sees: None for an expanding window, else the ``window``-th date
    back (``pos`` included)."""
    return None if window is None else dates[max(0, pos - window + 1)]


def rows_between(frame: pd.DataFrame, low: pd.Timestamp | None, high: pd.Timestamp) -> pd.DataFrame:
    """The rows dated ``low`` (None: from the first) to ``high``, with ``frame``'s attributes."""
    keep = frame["date"] <= high
    if low is not None:
        keep &= frame["date"] >= low
    rows = frame[keep]
    rows.attrs = dict(frame.attrs)
    return rows


def filter_days(
    fitted: FittedModel,
    frame: pd.DataFrame,
    low: pd.Timestamp | None,
    dates: pd.DatetimeIndex,
    pos: int,
    until: pd.Timestamp,
    names: tuple[str, ...],
    fit_date: pd.Timestamp,
    stop: StopControl | None,
) -> pd.DataFrame:
    """The filtered probabilities of each date in ``(dates[pos], until]`` from the rows up to that date."""
    frame = frame[frame["market"].isin(set(fitted.panel.markets))]
    records: list[dict[str, Any]] = []
    for day in dates[pos + 1 :]:
        if day > until:
            break
        if stop is not None and stop.requested():
            raise FitInterrupted(f"stopped while filtering {day.date()}")
        rows = rows_between(frame, low, day)
        today = set(rows.loc[rows["date"] == day, "market"])
        if not today:
            continue
        panel = fitted.pipeline.transform(rows)
        pot = fitted.potentials(fitted.model_data(panel))
        for m, series in enumerate(panel.series):
            if series.name not in today or series.dates[-1] != day:
                continue
            steps = series.length
            log_probs = last_filtered(
                pot.log_init[m : m + 1], pot.log_trans[m : m + 1, :steps], pot.obs_ll[m : m + 1, :steps]
            )
            probs = log_probs[0].exp().numpy()
            record: dict[str, Any] = {
                "date": day.strftime("%Y-%m-%d"),
                "market": series.name,
                "regime": names[int(probs.argmax())],
            }
            record.update({f"filtered_{n}": float(p) for n, p in zip(names, probs)})
            record["fit_date"] = fit_date.strftime("%Y-%m-%d")
            record["observed"] = int(series.observed[-1])
            records.append(record)
    block = pd.DataFrame.from_records(records, columns=_columns(names))
    prob_columns = [f"filtered_{n}" for n in names]
    # as walkforward.csv holds them: a resumed run returns the same table
    block[prob_columns] = block[prob_columns].astype(float).round(6)
    return block


def _parts_folder(
    out: str | Path | None, plan: WalkForwardPlan, config: FitConfig, frame: pd.DataFrame, source: dict[str, Any]
) -> Path | None:
    """``out/walkforward_parts`` with its ``plan.json`` and ``data.csv``; other settings are refused, and so is
    data that does not repeat the rows an earlier run read (days may be appended)."""
    if out is None:
        return None
    parts = Path(out) / PARTS
    identity = {
        "package_version": __version__,
        "plan": asdict(plan),
        "config": config.to_dict(),
        "simulated": bool(source.get("simulated")),
    }
    # the source (paths, read by ``backtest``) is kept but not compared: a daily run may read a renamed file
    text = json.dumps({**identity, "source": source}, indent=2, sort_keys=True, default=str) + "\n"
    plan_file, data_file = parts / PLAN_FILE, parts / DATA_FILE
    rows = _data_text(frame)
    if plan_file.is_file():
        try:
            earlier = json.loads(plan_file.read_text(encoding="utf-8"))
            earlier.pop("source", None)
        except ValueError:
            earlier = None
        if earlier != json.loads(json.dumps(identity, default=str)):
            raise CheckpointError(
                f"{out} holds a walk-forward run with other settings (or of another package version): use another "
                "--out or remove it"
            )
        if not data_file.is_file():
            raise CheckpointError(f"{out} holds a walk-forward run without its {DATA_FILE}: use another --out")
        _same_prefix(data_file, frame)
    if not plan_file.is_file() or plan_file.read_text(encoding="utf-8") != text:
        atomic_write_text(plan_file, text)
    if not data_file.is_file() or data_file.read_text(encoding="utf-8") != rows:
        atomic_write_text(data_file, rows)
    return parts


def _data_text(frame: pd.DataFrame) -> str:
    """The rows as ``data.csv`` keeps them (every column, full precision)."""
    table = frame.reset_index(drop=True).copy()
    table["date"] = pd.DatetimeIndex(table["date"]).strftime("%Y-%m-%d")
    return table.to_csv(index=False, float_format="%.17g", lineterminator="\n")


def _same_prefix(data_file: Path, frame: pd.DataFrame) -> None:
    """:class:`DataError` naming market, date and both values when ``frame``'s rows up to the last date of the
    earlier run (``data_file``) are not that run's rows."""
    was = pd.read_csv(data_file, dtype=str, keep_default_na=False)
    now = pd.read_csv(io.StringIO(_data_text(frame)), dtype=str, keep_default_na=False)
    if list(now.columns) != list(was.columns):
        raise DataError(f"the data's columns {list(now.columns)} are not the earlier run's {list(was.columns)}")
    last = was["date"].max()
    now = now[now["date"] <= last]
    merged = was.merge(now, on=["market", "date"], how="outer", suffixes=("_was", "_now"), indicator=True)
    merged = merged.sort_values(["date", "market"], kind="stable")
    fix = "nothing written: use another --out for revised data"
    for _, row in merged[merged["_merge"] != "both"].head(1).iterrows():
        where = "no longer in the data" if row["_merge"] == "left_only" else "not in the data of the earlier run"
        raise DataError(f"market '{row['market']}', date {row['date']}: the row is {where} ({fix})")
    for column in [c for c in was.columns if c not in ("market", "date")]:
        differ = merged[f"{column}_was"] != merged[f"{column}_now"]
        for _, row in merged[differ].head(1).iterrows():
            raise DataError(
                f"market '{row['market']}', date {row['date']}: {column} was {row[f'{column}_was']} in the earlier "
                f"run, now {row[f'{column}_now']} (a revised close?); {fix}"
            )


def _write_part(
    part: Path,
    block: pd.DataFrame,
    params: dict[str, torch.Tensor],
    markets: tuple[str, ...],
    fit_date: pd.Timestamp,
    until: pd.Timestamp,
    features: dict[str, Any],
) -> None:
    text = block.to_csv(index=False, float_format="%.6f", lineterminator="\n")
    atomic_write_text(part.with_suffix(".csv"), text)
    payload = {
        "format": PART_FORMAT,
        "package_version": __version__,
        "params": params,
        "markets": list(markets),
        "fit_date": fit_date.strftime("%Y-%m-%d"),  # the refit's last training date
        "until": until.strftime("%Y-%m-%d"),  # the block's last date (a later run with more days continues it)
        "features": features,  # the refit's feature pipeline: its fitted normalisation
    }
    write_checkpoint(payload, part.with_suffix(".pt"))


def _progress(total: int, show: bool) -> Any:
    return tqdm(total=total, desc="walk-forward refits", unit="refit", disable=not show)


def read_plan(out: str | Path) -> dict[str, Any]:
    """The ``plan.json`` of a walk-forward output folder (settings, configuration, data identity and
    source). Raises :class:`CheckpointError` when it is missing or unreadable."""
    path = Path(out) / PARTS / PLAN_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a walk-forward run's plan ({type(exc).__name__})") from None
