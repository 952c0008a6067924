"""Command line: ``regime-dmm fit``, ``simulate``, ``select``, ``sweep``, ``forecast``, ``update``,
``walkforward``, ``backtest``, ``calibrate``, ``report``.

Errors the user can fix (bad data, bad configuration, an existing output folder) print
one line ``error: ...`` and exit with code 2; nothing is written in that case. ``update`` exits with 3
when a market's regime changed (0 when none did).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_write_text, staged_files, staging_folder
from .backtest import BACKTEST_FILE, StrategySpec, backtest, plot_equity, read_risk_free
from .calibration import calibrate, write_calibration
from .config import FitConfig
from .data import load_prices, simulate_default, write_csv
from .errors import QUIET_MODULES, ConfigError, RegimeDMMError, RegimeWarning
from .fitting import FitInterrupted, StopControl, fit, load_resume_state, resume_fit, warning_lines
from .nowcast import filter_update, forecast_table
from .outputs import write_outputs
from .persistence import load_fit
from .plots import save_all, usage_bars_text, volatility_table_text
from .selection import plot_selection, select_regimes
from .sweep import SweepInterrupted, sweep
from .update import CHANGED_EXIT_CODE, UPDATES_FILE, describe, update
from .walkforward import (
    DEFAULT_START_DATES,
    REFITS_FILE,
    WALKFORWARD_FILE,
    WalkForwardPlan,
    read_plan,
    walk_forward,
)

__all__ = ["main", "parse_integers", "parse_regimes"]

CHECKPOINT = "checkpoint.pt"
DATA_HELP = (
    "price CSV(s): long (date, market, price|return[, volume|trades]), a vendor export (Date, ..., Close, "
    "Adj Close, Volume; the market is named after the file), an exchange kline export, or a wide table (date "
    "+ one price column per market); several files are stacked"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regime-dmm", description="Market regimes with an exact-regime Deep Markov Model."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit the model and write regimes, summary, history, checkpoint and plots")
    fit.add_argument(
        "--data",
        nargs="+",
        metavar="FILE",
        help=DATA_HELP + " (default: embedded simulated data)",
    )
    fit.add_argument("--config", help="YAML file with sections model / penalties / training / data")
    fit.add_argument("--regimes", type=int, help="number of regimes K (default 4)")
    fit.add_argument("--seed", type=int, help="random seed (default 0)")
    fit.add_argument("--epochs", type=int, help="training epochs per restart (with L-BFGS: at most)")
    fit.add_argument("--restarts", type=int, help="restarts; the best objective is kept")
    fit.add_argument("--lr", type=float, help="learning rate of ClippedAdam (the annealing epochs under L-BFGS)")
    fit.add_argument(
        "--classic", action="store_true", help="maximum-likelihood Gaussian Markov-switching model of the return"
    )
    fit.add_argument("--emission", choices=["gaussian", "studentt"], help="emission distribution of the return")
    fit.add_argument(
        "--naming",
        choices=["relative", "shared"],
        help="regime names by each market's own volatility (relative, default) or on one ladder of daily sds for all "
        "markets (shared)",
    )
    fit.add_argument("--guide", choices=["map", "normal"], help="guide for the global parameters")
    fit.add_argument(
        "--inference",
        choices=["exact", "relaxed"],
        help="regimes summed out exactly (default) or relaxed (Gumbel-Softmax + inference network)",
    )
    fit.add_argument(
        "--straight-through",
        action="store_true",
        default=None,
        help="relaxed mode: one-hot regimes forward, relaxed gradients backward",
    )
    fit.add_argument("--tau-floor", type=float, help="relaxed mode: final temperature (default 0.5)")
    fit.add_argument("--out", default="regime_dmm_out", help="output folder (default: regime_dmm_out)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    fit.add_argument("--resume", metavar="DIR", help="continue the interrupted run whose output folder is DIR")
    fit.add_argument(
        "--checkpoint-every",
        type=int,
        default=50,
        metavar="N",
        help="write DIR/checkpoint.pt every N epochs (default 50)",
    )
    fit.add_argument(
        "--threads", type=int, help="torch threads (default: 2, or 1 on a one-core machine; see README: Threads)"
    )
    fit.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    fit.add_argument("--quiet", action="store_true", help="no per-epoch log and no progress bar")

    sim = sub.add_parser("simulate", help="write the embedded simulated data set as CSV (input format)")
    sim.add_argument("--out", required=True, help="CSV file to write")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--shocks",
        default="gaussian",
        metavar="gaussian|studentt:DF",
        help="the return shocks: gaussian (default) or Student-t with DF > 2 degrees of freedom, scaled to unit "
        "variance (heavy tails; each regime keeps its sd)",
    )
    sim.add_argument("--truth", help="optional CSV of the true regimes (date, market, regime)")

    sel = sub.add_parser("select", help="choose the number of regimes by held-out predictive likelihood (and BIC)")
    sel.add_argument(
        "--data",
        nargs="+",
        metavar="FILE",
        help=DATA_HELP + " (default: embedded simulated data)",
    )
    sel.add_argument("--config", help="YAML file with sections model / penalties / training / data")
    sel.add_argument(
        "--regimes", default="2..6", help="numbers of regimes to compare: A..B or a comma list (default 2..6)"
    )
    sel.add_argument(
        "--classic", action="store_true", help="maximum-likelihood Gaussian Markov-switching model of the return"
    )
    sel.add_argument("--seed", type=int, help="random seed (default 0)")
    sel.add_argument("--epochs", type=int, help="training epochs per restart")
    sel.add_argument("--restarts", type=int, help="restarts per K; the best objective is kept")
    sel.add_argument(
        "--holdout", type=float, default=0.2, help="share of each market's last days held out (default 0.2)"
    )
    sel.add_argument(
        "--workers",
        type=int,
        help="processes fitting the K side by side (default: one per two cores, at most one per K - one process "
        "on a 2-core machine; 1: one process, with each fit's training log)",
        default=None,
    )
    sel.add_argument("--out", default="regime_dmm_select", help="output folder (default: regime_dmm_select)")
    sel.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    sel.add_argument("--quiet", action="store_true", help="no per-epoch log")

    fc = sub.add_parser("forecast", help="regime probabilities h = 1..H days ahead from a saved fit")
    fc.add_argument("dir", metavar="DIR", help="output folder of 'regime-dmm fit'")
    fc.add_argument("--horizon", type=int, default=20, help="days ahead (default 20)")
    fc.add_argument(
        "--data",
        nargs="+",
        metavar="FILE",
        help="the data the fit was made on (default: the path stored in DIR/model.pt)",
    )
    fc.add_argument(
        "--new-data",
        metavar="FILE",
        help="CSV of days after the fitted ones: update the filter with them (no refit), then forecast",
    )

    up = sub.add_parser(
        "update",
        help="filter the new days of a price file with a saved fit (no refit): the regime now; exit 3 if it changed",
    )
    up.add_argument("dir", metavar="DIR", help="output folder of 'regime-dmm fit'")
    up.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="CSV with the days after the fit (the fit's file with rows appended, or the new rows alone)",
    )
    up.add_argument("--json", action="store_true", help="print one JSON line per market instead of the report")

    wf = sub.add_parser(
        "walkforward", help="refit every N days and filter each later day with data up to that day only"
    )
    wf.add_argument("--data", nargs="+", metavar="FILE", help=DATA_HELP + " (default: embedded simulated data)")
    wf.add_argument("--config", help="YAML file with sections model / penalties / training / data")
    wf.add_argument("--regimes", type=int, help="number of regimes K (default 4)")
    wf.add_argument("--seed", type=int, help="random seed (default 0)")
    wf.add_argument("--classic", action="store_true", help="classic Markov-switching model")
    wf.add_argument("--epochs", type=int, help="epochs of the first fit (default: the configuration's)")
    wf.add_argument("--restarts", type=int, help="restarts of the first fit")
    wf.add_argument("--refit-every", type=int, default=21, help="dates between refits (default 21)")
    wf.add_argument("--refit-epochs", type=int, default=100, help="epochs of each later refit (default 100)")
    wf.add_argument(
        "--window", default="expanding", help="'expanding' (default) or the number of dates each refit sees"
    )
    wf.add_argument("--start", help=f"first refit date (default: the {DEFAULT_START_DATES}th date of the data)")
    wf.add_argument(
        "--out",
        default="regime_dmm_walkforward",
        help="output folder; rerun into it to resume (default: regime_dmm_walkforward)",
    )
    wf.add_argument("--quiet", action="store_true", help="no progress bar, no per-refit line")

    bt = sub.add_parser("backtest", help="persistence and a long/cash strategy on a walk-forward output")
    bt.add_argument("dir", metavar="DIR", help="output folder of 'regime-dmm walkforward'")
    bt.add_argument("--data", nargs="+", metavar="FILE", help="the prices (default: the walk-forward's own data)")
    bt.add_argument("--risk-off", default="volatile,panic", help="regimes that take the strategy out (comma-separated)")
    bt.add_argument("--threshold", type=float, default=0.5, help="out when their filtered probability exceeds this")
    bt.add_argument("--cost-bps", type=float, default=10.0, help="one-way cost per position change, basis points")
    bt.add_argument(
        "--delay",
        type=int,
        default=1,
        help="days after the decision day's close before the trade (default 1; 0 = at that close)",
    )
    bt.add_argument(
        "--risk-free-column",
        metavar="NAME",
        help="column of the data file(s) with the annual risk-free rate in percent (default: 0)",
    )

    sw = sub.add_parser(
        "sweep", help="many fits (markets x K x seeds x configs) as tasks on Dask distributed; resumable"
    )
    sw.add_argument("--data", nargs="+", metavar="FILE", help=DATA_HELP + " (default: embedded simulated data)")
    sw.add_argument(
        "--config", nargs="+", metavar="YAML", help="configuration files, one variant each (default: the defaults)"
    )
    sw.add_argument("--regimes", default="4", help="numbers of regimes: A..B or a comma list (default 4)")
    sw.add_argument("--seeds", default="0", help="seeds: A..B or a comma list (default 0)")
    sw.add_argument(
        "--group",
        action="append",
        metavar="NAME=M1,M2",
        help="fit these markets jointly as one task group (repeatable; default: each market its own fit)",
    )
    sw.add_argument("--joint", action="store_true", help="fit all markets jointly (one group)")
    sw.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of each market's last days held out and scored (default 0.2; 0: fit all days)",
    )
    sw.add_argument("--classic", action="store_true", help="classic Markov-switching model")
    sw.add_argument("--emission", choices=["gaussian", "studentt"], help="emission distribution of the return")
    sw.add_argument("--epochs", type=int, help="training epochs per restart (default: the configuration's)")
    sw.add_argument("--restarts", type=int, help="restarts per fit (default: the configuration's)")
    sw.add_argument("--workers", type=int, help="local worker processes, one thread each (default: the cores)")
    sw.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786")
    sw.add_argument(
        "--out", default="regime_dmm_sweep", help="output folder; rerun into it to resume (default: regime_dmm_sweep)"
    )
    sw.add_argument("--no-outputs", action="store_true", help="only sweep.csv and best_k.csv, no fit folders")
    sw.add_argument("--no-plots", action="store_true", help="fit folders without the PNG plots")
    sw.add_argument("--quiet", action="store_true", help="no progress bar, no per-task line")

    cal = sub.add_parser(
        "calibrate",
        help="are the probabilities calibrated? PIT, interval coverage, variance ratio (and Brier with --truth)",
    )
    cal.add_argument("dir", metavar="DIR", help="output folder of 'regime-dmm walkforward' (out of sample) or 'fit'")
    cal.add_argument("--truth", metavar="FILE", help="CSV of the true regimes (date, market, regime): Brier scores")
    cal.add_argument(
        "--data", nargs="+", metavar="FILE", help="a fit folder's data (default: the path stored in DIR/model.pt)"
    )

    rep = sub.add_parser("report", help="rebuild the plots and summary.json of a saved fit")
    rep.add_argument("dir", metavar="DIR", help="output folder of 'regime-dmm fit'")
    rep.add_argument(
        "--data",
        nargs="+",
        metavar="FILE",
        help="the data the fit was made on (default: the path stored in DIR/model.pt)",
    )
    return parser


def _data(args) -> str | list[str] | None:
    """``--data``: None, one file, or several (stacked; a market may appear in only one of them)."""
    if not args.data:
        return None
    return args.data[0] if len(args.data) == 1 else list(args.data)


def _config(args, *, regimes: bool = True) -> FitConfig:
    """``--config`` (or the defaults) with the command's options on top; an option a command lacks is
    left alone. ``regimes``: whether ``--regimes`` is one K (``select`` compares several)."""
    config = FitConfig.from_yaml(args.config) if args.config else FitConfig()
    num_regimes = getattr(args, "regimes", None) if regimes else None
    if num_regimes is not None:
        config = config.with_num_regimes(num_regimes)
    model: dict[str, Any] = {}
    training: dict[str, Any] = {}
    if getattr(args, "classic", False):
        model["classic"] = True
    if getattr(args, "emission", None):
        model["emission"] = args.emission
    if getattr(args, "naming", None):
        model["naming"] = args.naming
    for key in ("seed", "epochs", "restarts", "lr", "guide", "inference", "straight_through", "tau_floor"):
        if getattr(args, key, None) is not None:
            training[key] = getattr(args, key)
    return config.replace(model=model, training=training)


@contextmanager
def _stopping_on_signals() -> Iterator[StopControl]:
    """A :class:`StopControl` whose handler receives SIGINT and SIGTERM inside the block; the previous
    handlers are put back afterwards."""
    stop = StopControl()
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupted(stop: StopControl, exc: FitInterrupted) -> int:
    """Say which signal stopped the run and return its exit code (128 + the signal number)."""
    signum = stop.signal or signal.SIGINT
    print(f"\ninterrupted ({signal.Signals(signum).name}): {exc}", file=sys.stderr)
    return 128 + int(signum)


def _print_matrix(names, matrix) -> str:
    width = max(len(n) for n in names) + 2
    lines = [" " * width + "".join(f"{n[:8]:>9}" for n in names)]
    for name, row in zip(names, np.asarray(matrix)):
        lines.append(f"{name:<{width}}" + "".join(f"{v:9.3f}" for v in row))
    return "\n".join(lines)


def cmd_fit(args) -> int:
    """``regime-dmm fit``: fit (or resume), print the summary, write the outputs; returns the exit code."""
    out = Path(args.resume or args.out)
    checkpoint = out / CHECKPOINT
    if args.resume:
        load_resume_state(checkpoint)  # fail early, with a clear message, on a bad checkpoint
    elif out.exists() and not args.overwrite and any(out.iterdir()):
        raise RegimeDMMError(f"output folder {out} exists and is not empty: use --overwrite or another --out")
    if args.checkpoint_every < 1:
        raise RegimeDMMError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    config = None if args.resume else _config(args)
    if args.data is None and not args.resume:
        print("data: embedded SIMULATED default (traditional_cre, tokenized_reit; true regimes known)")
    log = None if args.quiet else print
    with _stopping_on_signals() as stop:
        kwargs = dict(
            progress=not args.quiet and sys.stderr.isatty(),
            log=log,
            checkpoint=checkpoint,
            checkpoint_every=args.checkpoint_every,
            stop=stop,
            threads=args.threads,
        )
        try:
            if args.resume:
                result = resume_fit(checkpoint, data=_data(args), **kwargs)
            else:
                result = fit(_data(args), config, **kwargs)
            if args.quiet:  # the training log is off, the warnings are not
                for line in warning_lines(result):
                    print(line)
            print()
            print("Regime usage (smoothed posterior):")
            print(usage_bars_text(result))
            print()
            print(volatility_table_text(result))
            described = result.summary()  # once: the current regime (shown names) and the regimes never left
            summary, shared = described["markets"], described["naming"]["applied"] == "shared"
            if shared:
                print("(usage bars and transition matrices: each market's own regimes, named on its own ladder)")
            for m in result.markets:
                print(f"\nTransition matrix, {m.name} (rows: from, columns: to):")
                print(_print_matrix(result.regimes, m.transition))
                few = any(w["kind"] == "few_days" and w["market"] == m.name for w in result.regime_warnings)
                now = summary[m.name]["current_regime"]
                if shared:  # the shared name, with its regimes' probabilities summed
                    prob = summary[m.name]["current_probabilities_shared"][now]
                    top = int(m.current_probs.argmax())
                    own = f"; on its own ladder: {result.regimes[top]}, p = {m.current_probs.max():.2f}"
                else:
                    prob, own = float(m.current_probs.max()), ""
                print(
                    f"current regime ({m.dates[-1].date()}): {now} (p = {prob:.2f}{own}"
                    + ("; too few days for this many regimes: not to be trusted)" if few else ")")
                )
                print(
                    f"regime shifts per year: {m.shifts_per_year('filtered'):.1f} filtered (day by day, what could "
                    f"be traded), {m.shifts_per_year():.1f} smoothed (sees later days), "
                    f"{m.shifts_per_year('viterbi'):.1f} Viterbi"
                )
                never_left = summary[m.name]["never_left"]
                if never_left:
                    print(f"never left in the sample: {', '.join(never_left)} (no duration can be estimated)")
            for line in pooling_lines(result):
                print(line)
            print(f"\nlog-likelihood (input units): {result.log_likelihood:.3f}")
            stop.phase = "writing the outputs"
            write_outputs(result, out, overwrite=True, plots=not args.no_plots)
        except FitInterrupted as exc:
            code = _interrupted(stop, exc)
            if checkpoint.is_file():
                print(f"checkpoint saved in {checkpoint}; resume with: regime-dmm fit --resume {out}", file=sys.stderr)
            else:
                print("nothing was written", file=sys.stderr)
            return code
    print(
        f"wrote {out}/: regimes.csv summary.json history.csv model.pt posterior.nc"
        + ("" if args.no_plots else " *.png")
    )
    return 0


def cmd_walkforward(args) -> int:
    """``regime-dmm walkforward``: walk-forward filtered regimes into ``DIR/walkforward.csv`` (resumable)."""
    if args.window == "expanding":
        window = None
    else:
        try:
            window = int(args.window)
        except ValueError:
            raise RegimeDMMError(f"--window must be 'expanding' or a number of dates, got {args.window!r}") from None
    plan = WalkForwardPlan(
        refit_every=args.refit_every, window=window, start=args.start, refit_epochs=args.refit_epochs
    )
    config = _config(args)
    if args.data is None:
        print("data: embedded SIMULATED default (traditional_cre, tokenized_reit)")
    out = Path(args.out)
    with _stopping_on_signals() as stop:
        try:
            table = walk_forward(
                _data(args),
                config,
                plan=plan,
                out=out,
                progress=not args.quiet and sys.stderr.isatty(),
                log=None if args.quiet else print,
                stop=stop,
            )
        except FitInterrupted as exc:
            code = _interrupted(stop, exc)
            print(f"finished refits are kept in {out}; rerun the same command to resume", file=sys.stderr)
            return code
    print(f"wrote {out}/{WALKFORWARD_FILE}: {len(table)} rows, {table['fit_date'].nunique()} refits")
    _calibration_report(out, None, after=True)
    return 0


def _calibration_report(
    folder: Path, truth: str | None, data: str | list[str] | None = None, *, after: bool = False
) -> None:
    """Print the calibration table of ``folder`` and write its files. ``after``: the report follows a command that
    has written its own outputs (walkforward, backtest): a report that cannot be made is a note, not an error."""
    try:
        report = calibrate(folder, truth=truth, data=data)
    except RegimeDMMError as exc:
        if not after and "exact regimes" not in str(exc):
            raise
        print(f"no calibration report: {exc}")
        return
    print(f"\nCalibration ({report.kind}; {'; '.join(report.notes)}):")
    print(report.table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    names = write_calibration(report, folder)
    print(f"wrote {folder}/: {' '.join(names)}")


def cmd_calibrate(args) -> int:
    """``regime-dmm calibrate``: the calibration report of a walk-forward or fit folder."""
    _calibration_report(Path(args.dir), args.truth, _data(args))
    return 0


def cmd_backtest(args) -> int:
    """``regime-dmm backtest``: backtest.csv and backtest.png beside a walk-forward's walkforward.csv."""
    out = Path(args.dir)
    table_path = out / WALKFORWARD_FILE
    if not table_path.is_file():
        raise RegimeDMMError(f"{table_path} not found: run 'regime-dmm walkforward --out {out}' first")
    walkforward = pd.read_csv(table_path, dtype={"date": str, "fit_date": str, "market": str})
    # the prices: --data, else the walk-forward's own source (its CSV files, or the embedded simulation)
    source: dict[str, Any] = {"paths": list(args.data), "simulated": False} if args.data else read_plan(out)["source"]
    files = [source["paths"]] if isinstance(source["paths"], str) else list(source["paths"] or [])
    if source["simulated"]:
        prices = load_prices(simulate_default(seed=int(source["seed"])).frame)
    elif files:
        prices = load_prices(files)
    else:
        raise RegimeDMMError("the walk-forward ran on a DataFrame: give the prices with --data FILE")
    spec = StrategySpec(
        risk_off=tuple(r.strip() for r in args.risk_off.split(",") if r.strip()),
        threshold=args.threshold,
        cost_bps=args.cost_bps,
        delay=args.delay,
    )
    risk_free = None
    if args.risk_free_column:
        if not files:
            raise RegimeDMMError("--risk-free-column needs the data as CSV files (give --data FILE)")
        risk_free = read_risk_free(files, args.risk_free_column)
    refits_path = out / REFITS_FILE
    refits = pd.read_csv(refits_path, dtype={"market": str}) if refits_path.is_file() else None
    metrics, daily = backtest(walkforward, prices, spec, risk_free, refits)
    print(metrics.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    with staged_files(out) as tmp:
        metrics.to_csv(tmp / BACKTEST_FILE, index=False, float_format="%.6f")
        fig = plot_equity(daily, spec)
        try:
            fig.savefig(tmp / "backtest.png", dpi=110, facecolor="white")
        finally:
            fig.clear()
    print(f"wrote {out}/: {BACKTEST_FILE} backtest.png")
    _calibration_report(out, None, after=True)
    return 0


def pooling_lines(result) -> list[str]:
    """The printed summary's lines on the shared regime ladder and on the restarts."""
    out = []
    pooling = result.pooling
    if pooling.get("mode", "none") != "none":
        ladder = pooling["ladder"]["volatility_ratio"]
        ratios = ", ".join(f"{pair.replace('|', '/')} {r:.2f}" for pair, r in ladder.items())
        out.append(f"\nshared regime ladder ({pooling['mode']} pooling): volatility ratios {ratios}")
        if "scale" in pooling:
            scale = pooling["scale"]
            out.append(
                f"pooling scales (learned; 0 = one ladder for all markets): sd {scale['log_step_sd']:.3f} of the "
                f"log of each log volatility step, sd {scale['mean_sd']:.3f} of the regime means (normalised units)"
            )
    within = result.restarts_within_1_nat()
    if within is not None:
        done = sum(1 for r in result.restarts if r.get("status") == "ok")
        out.append(f"restarts within 1 nat of the kept one: {within} of {done}")
    return out


def cmd_simulate(args) -> int:
    """``regime-dmm simulate``: write the embedded simulated data (and optionally its true regimes) as CSV."""
    data = simulate_default(seed=args.seed, shocks=args.shocks)
    write_csv(data, args.out)
    if args.truth:
        truth = data.truth_frame()
        truth.assign(date=truth["date"].dt.strftime("%Y-%m-%d")).to_csv(args.truth, index=False)
    print(
        f"wrote {args.out} (simulated, seed {args.seed}, {args.shocks} shocks; markets: {', '.join(data.true_regimes)})"
    )
    return 0


def parse_regimes(text: str) -> list[int]:
    """``"2..6"`` -> [2, 3, 4, 5, 6]; ``"2,3,5"`` -> [2, 3, 5]; ``"3"`` -> [3]."""
    return parse_integers(text, "--regimes", "number of regimes", minimum=2)


def parse_integers(text: str, option: str, what: str, *, minimum: int) -> list[int]:
    """``"A..B"`` (A <= B) or a comma list of integers >= ``minimum``, without repeats; :class:`ConfigError`
    naming ``option`` otherwise."""
    spec = str(text).strip()
    try:
        if ".." in spec:
            low, high = (int(part) for part in spec.split("..", 1))
            if low > high:
                raise ValueError
            values = list(range(low, high + 1))
        else:
            values = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option}: expected A..B (A <= B) or a comma list such as 2,3,4, got {text!r}") from None
    if not values or min(values) < minimum:
        raise ConfigError(f"{option}: every {what} must be >= {minimum}, got {text!r}")
    return list(dict.fromkeys(values))


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` (128 + SIGTERM, the shell's convention), so that the
    code under it unwinds (and stops what it started) instead of dying at once."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def cmd_select(args) -> int:
    """``regime-dmm select``: compare numbers of regimes on held-out days; writes selection.csv and .png."""
    ks = parse_regimes(args.regimes)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (not args.overwrite and any(out.iterdir()))):
        raise RegimeDMMError(f"output folder {out} exists and is not empty: use --overwrite or another --out")
    config = _config(args, regimes=False)  # --regimes is the range of K compared
    if args.data is None:
        print("data: embedded SIMULATED default (traditional_cre, tokenized_reit)")
    with _sigterm_exits():  # a stop ends the worker processes too (select_regimes kills them on the way out)
        table = select_regimes(
            _data(args),
            ks=ks,
            config=config,
            holdout=args.holdout,
            log=None if args.quiet else print,
            workers=args.workers,
        )
    print(f"\nModel selection (held-out: last {args.holdout:.0%} of each market's days; best first):")
    shown = table.drop(columns=[c for c in ("waic", "loo") if table[c].isna().all()])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for note in table.attrs.get("notes", []):
        print(f"note: {note}")
    best = table.iloc[0]
    if np.isfinite(best["heldout_loglik"]):
        print(f"best by held-out log-likelihood: K = {int(best['K'])}")
    if table["chosen"].any():
        chosen = int(table.loc[table["chosen"], "K"].iloc[0])
        print(f"chosen: K = {chosen} (the smallest K within one standard error of the best)")
    with staging_folder(out) as tmp:
        table.to_csv(tmp / "selection.csv", index=False, float_format="%.6f")
        fig = plot_selection(table)
        try:
            fig.savefig(tmp / "selection.png", dpi=120, facecolor="white")
        finally:
            fig.clear()
    print(f"wrote {out}/: selection.csv selection.png")
    return 0


def cmd_sweep(args) -> int:
    """``regime-dmm sweep``: the fits of markets x K x seeds x configs on Dask; sweep.csv and best_k.csv."""
    ks = parse_regimes(args.regimes)
    seeds = parse_integers(args.seeds, "--seeds", "seed", minimum=0)
    configs = {}
    for path in args.config or [None]:
        ns = argparse.Namespace(**{**vars(args), "config": path, "regimes": None})
        name = "default" if path is None else Path(path).stem
        if name in configs:
            raise ConfigError(f"--config: two configuration files are named {name!r}; rename one")
        configs[name] = _config(ns)
    groups: dict[str, list[str]] | str = "joint" if args.joint else "each"
    if args.group:
        if args.joint:
            raise ConfigError("--group and --joint exclude each other")
        groups = {}
        for spec in args.group:
            name, sep, members = spec.partition("=")
            if not sep or not name.strip() or not members.strip():
                raise ConfigError(f"--group: expected NAME=MARKET1,MARKET2, got {spec!r}")
            groups[name.strip()] = [m.strip() for m in members.split(",") if m.strip()]
    if args.data is None:
        print("data: embedded SIMULATED default (traditional_cre, tokenized_reit)")
    with _stopping_on_signals() as stop:
        try:
            table = sweep(
                _data(args),
                out=args.out,
                ks=ks,
                seeds=seeds,
                configs=configs,
                groups=groups,
                holdout=args.holdout,
                outputs=not args.no_outputs,
                plots=not args.no_plots,
                workers=args.workers,
                scheduler=args.scheduler,
                log=None if args.quiet else print,
                progress=not args.quiet and sys.stderr.isatty(),
            )
        except SweepInterrupted as exc:
            print(f"\ninterrupted: {exc}", file=sys.stderr)
            print(f"kept: {args.out}/sweep.csv ({(exc.table['status'] == 'ok').sum()} tasks ok)", file=sys.stderr)
            return 128 + int(stop.signal or signal.SIGINT)
        except FitInterrupted as exc:  # before any task ran (starting the cluster): nothing was written
            return _interrupted(stop, exc)
    shown = table[["task_id", "status", "log_likelihood", "heldout_loglik", "bic", "shifts_per_year", "wall_seconds"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    failed = table[table["status"] != "ok"]
    for _, row in failed.iterrows():
        print(f"FAILED {row['task_id']}: {row['error']}")
    best = table.attrs["best_k"]
    if not best.empty:
        print("\nBest K per market group (" + ", ".join(sorted(set(best["criterion"]))) + ", mean over seeds):")
        print(best[["markets", "config", "best_K", "criterion", "score"]].to_string(index=False))
    print(f"wrote {args.out}/: sweep.csv best_k.csv tasks/" + ("" if args.no_outputs else " fits/"))
    return 0 if failed.empty else 1


def cmd_forecast(args) -> int:
    """``regime-dmm forecast``: regime probabilities ahead from a saved fit (after a nowcast with ``--new-data``)."""
    if args.horizon < 1:
        raise RegimeDMMError(f"--horizon must be >= 1 day, got {args.horizon}")
    out = Path(args.dir)
    fit = load_fit(out, data=_data(args))
    state, origin = None, {m.name: m.dates[-1] for m in fit.markets}
    if args.new_data:
        update = filter_update(fit, args.new_data)
        state, origin = update.last, update.last_date
        days = ", ".join(f"{name} +{n}" for name, n in update.new_days.items())
        print(f"filter updated with the new days ({days}); no refit")
    table = forecast_table(fit, args.horizon, state)
    for name, group in table.groupby("market", sort=False):
        print(f"\n{name}: regime probabilities h days after {origin[name].date()}")
        shown = group.drop(columns="market").rename(columns=lambda c: c.removeprefix("prob_"))
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    atomic_write_text(out / "forecast.csv", table.to_csv(index=False, float_format="%.6f"))
    written = "forecast.csv"
    if args.new_data:
        atomic_write_text(out / "nowcast.csv", update.frame.to_csv(index=False, float_format="%.6f"))
        written += " nowcast.csv"
    print(f"\nwrote {out}/: {written}")
    return 0


def cmd_update(args) -> int:
    """``regime-dmm update``: filter the new days with a saved fit, append them to DIR/updates.csv, report per
    market; exit :data:`~regime_dmm.update.CHANGED_EXIT_CODE` when a regime changed."""
    result = update(args.dir, args.data)
    if args.json:
        for market in result.markets:
            print(market.to_json())
    else:
        print(describe(result))
        print(f"wrote {args.dir}/{UPDATES_FILE} ({len(result.frame)} filtered days since the fit)")
    return CHANGED_EXIT_CODE if result.changed else 0


def cmd_report(args) -> int:
    """``regime-dmm report``: rebuild the plots and summary.json of a saved fit."""
    out = Path(args.dir)
    fit = load_fit(out, data=_data(args))
    with staged_files(out) as tmp:
        paths = save_all(fit, tmp)
        (tmp / "summary.json").write_text(json.dumps(fit.summary(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        names = [p.name for p in paths] + ["summary.json"]
    print(f"wrote {out}/: {' '.join(names)}")
    return 0


#: Subcommands whose ``--out`` names a folder they write into.
FOLDER_OUTPUTS = ("fit", "select", "walkforward", "sweep")


def _out_is_a_folder(args: argparse.Namespace) -> None:
    """:class:`RegimeDMMError` when a folder-writing subcommand's ``--out`` names an existing file (before any work)."""
    out = getattr(args, "out", None)
    if args.command in FOLDER_OUTPUTS and out is not None and Path(out).exists() and not Path(out).is_dir():
        raise RegimeDMMError(f"--out {out} is a file, not a folder: name a folder for the outputs")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``regime-dmm`` command; returns the exit code (2 for the package's own errors)."""
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore", module=QUIET_MODULES)
    warnings.simplefilter("ignore", RegimeWarning)  # printed as the package's own WARNING lines
    try:
        _out_is_a_folder(args)
        if args.command == "fit":
            return cmd_fit(args)
        if args.command == "select":
            return cmd_select(args)
        if args.command == "forecast":
            return cmd_forecast(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "update":
            return cmd_update(args)
        if args.command == "calibrate":
            return cmd_calibrate(args)
        if args.command == "walkforward":
            return cmd_walkforward(args)
        if args.command == "backtest":
            return cmd_backtest(args)
        if args.command == "sweep":
            return cmd_sweep(args)
        return cmd_simulate(args)
    except RegimeDMMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training: nothing to save
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
