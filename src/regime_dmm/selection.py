"""Choosing the number of regimes K by held-out one-step-ahead predictive likelihood.

For each K the model is fitted (restarts included) on the first ``1 - holdout`` of every
market's days. The fitted model (same parameters, features normalised with the TRAINING
statistics) is then evaluated on the full series and the exact filter, run forward from the
start of the training period, gives ``log p(x_t | x_1..x_{t-1})`` for every held-out day; their
sum, in input units, is the held-out log-likelihood. BIC on the training part is reported
beside it.

Held-out sums of a few hundred days differ by noise of a few nats between neighbouring K, so the
table also gives, for every K, the standard error of its held-out log-likelihood's difference to the
best K's, and marks as ``chosen`` the smallest K within one such standard error of the best. This is
a variant of the one-standard-error rule (Hastie, Tibshirani and Friedman, "The Elements of
Statistical Learning", 2nd ed., section 7.10): the error is that of the paired difference over the
held-out days, by batch means over blocks of 20 days since regimes make neighbouring days
dependent. On data with one regime it picks the smallest K asked for instead of a K = 3 that wins
by less than a nat.

WAIC / LOO need draws from the posterior of the global parameters; the fits here are point
estimates (MAP / maximum likelihood), so those columns are left NaN (see ``table.attrs["notes"]``).

The fits of the K are independent, so with ``workers`` > 1 they run side by side in spawned processes
(:mod:`regime_dmm.processes`), each with ``cores // workers`` torch threads (overriding
``REGIME_DMM_THREADS``), the largest K first (it takes longest). A fit's result does not depend on its thread
count, so the table is the one a single process gives (tested). ``workers=None`` (the command line's default)
gives one process per two cores, at most one per K: a single fit runs best on two threads
(:data:`~regime_dmm.threads.SINGLE_FIT_THREADS`), and on the 2-core machine two one-thread processes were
no faster than one two-thread process - 20.1 s against 25.1 s in one run, 36.1 s against 26.2 s in another
(each process also pays about 3 s to start Python and torch; README, Measured) - so there it fits in one
process; machines with more cores fit several K at once. The Python default is ``workers=1``: spawned
processes import the caller's ``__main__`` again, which a script without an ``if __name__ == "__main__":``
guard does not survive.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .config import FitConfig
from .data.sources import DataSource, load_source
from .errors import ConfigError, DataError, TrainingError
from .fitting import fit
from .nowcast import evaluate_panel, extend_panel
from .processes import run_in_processes
from .results import RegimeFit
from .threads import SINGLE_FIT_THREADS, available_cores

__all__ = ["COLUMNS", "bic", "plot_selection", "score_fit", "select_regimes", "training_part"]

COLUMNS = [
    "K",
    "heldout_loglik",
    "heldout_per_day",
    "train_loglik",
    "bic",
    "n_params",
    "fit_seconds",
    "waic",
    "loo",
    "heldout_days",
    "train_days",
    "note",
    "heldout_se",
    "chosen",
]

#: Days per block in the batch-means standard error of a held-out difference.
SE_BLOCK_DAYS = 20

BIC_NOTE = "bic: lower is better, on the training days; shown beside the choice, which is by held-out log-likelihood"
WAIC_NOTE = "waic/loo: not computed (the fits are point estimates; WAIC and LOO need posterior draws)"


def select_regimes(
    data: DataSource,
    ks: Iterable[int] = range(2, 7),
    config: FitConfig | None = None,
    holdout: float = 0.2,
    log: Callable[[str], None] | None = None,
    workers: int | None = 1,
) -> pd.DataFrame:
    """Fit K = each of ``ks`` on the first ``1 - holdout`` of each market's days; score the rest.

    ``data``: CSV path or long DataFrame (None: the embedded simulated data, with the
    config's seed). Returns one row per K, best held-out log-likelihood first, with columns
    K, heldout_loglik (nats, input units, all markets), heldout_per_day, train_loglik,
    bic (``-2 train_loglik + n_params log(train_days)``), n_params, fit_seconds, waic, loo
    (NaN: see ``attrs["notes"]``), heldout_days, train_days, note (why a K failed), heldout_se
    (paired standard error of the difference to the best K, nats) and chosen (True on the smallest K
    within one standard error of the best: the K to use).

    ``workers``: processes that fit the K side by side (1, the default: every fit in this process, with its
    training log passed to ``log``; None: one per two cores, at most one per K; see the module docstring: a
    script needs the ``__main__`` guard then). ``fit_seconds`` is each fit's own wall time in its process.

    Raises :class:`ConfigError` (bad ``ks``, ``holdout`` or ``workers``), :class:`DataError` (a market with
    too few days for the split), :class:`TrainingError` when every K failed, and, with ``workers`` > 1,
    :class:`~regime_dmm.processes.ProcessDied` when a fit's process dies (the other fits are stopped).
    """
    config = config or FitConfig()
    ks = _check_ks(ks)
    if not isinstance(holdout, (int, float)) or isinstance(holdout, bool) or not 0 < holdout < 1:
        raise ConfigError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    workers = _check_workers(workers, len(ks))
    print_ = log or (lambda _msg: None)
    full = load_source(data, min_observations=config.training.min_observations, seed=config.training.seed).frame
    train = training_part(full, holdout, config.training.min_observations)
    share = f"the first {1 - holdout:.0%} of each market's days"

    if workers == 1:
        rows = []
        for k in ks:
            print_(f"[select] K = {k}: fitting on {share}")
            rows.append(_report(_fit_and_score(train, full, config.with_num_regimes(k), log, None), print_))
    else:
        threads = max(1, available_cores() // workers)
        print_(
            f"[select] K = {', '.join(map(str, ks))}: fitting on {share} in {workers} processes "
            f"({threads} torch thread{'s' if threads > 1 else ''} each)"
        )
        rows = _fit_in_processes(train, full, config, ks, workers, threads, print_)
    if all(r.get("note") for r in rows):
        raise TrainingError("every K failed: " + "; ".join(f"K={r['K']}: {r['note']}" for r in rows))
    _one_standard_error(rows)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table["chosen"] = table["chosen"].fillna(False).astype(bool)
    table["note"] = table["note"].fillna("")
    table = table.sort_values("heldout_loglik", ascending=False, na_position="last", kind="stable")
    table = table.reset_index(drop=True)
    table.attrs["notes"] = [BIC_NOTE, WAIC_NOTE]
    table.attrs["holdout"] = holdout
    return table


def score_fit(fit: RegimeFit, full_data: DataSource) -> dict[str, Any]:
    """Held-out and training scores of ``fit`` (made on a prefix of ``full_data``) on ``full_data``.

    Log-likelihoods in nats, input units; BIC with :meth:`~regime_dmm.fitted.FittedModel.num_parameters`;
    ``heldout_by_day``: the one-step predictive log density of each held-out observed day (markets in
    order), in the pipeline's units, for paired comparisons between fits with the same pipeline.
    """
    fitted = fit.require_fitted()
    panel, lengths = extend_panel(fit, full_data)
    _, post = evaluate_panel(fit, panel)
    log_pred = post.log_predictive.numpy()
    heldout = train = 0.0
    heldout_days = train_days = 0
    pipe = fitted.pipeline
    days = []
    for m, (s, n_train) in enumerate(zip(panel.series, lengths)):
        # masked days predict nothing (their density is 1); log-Jacobians take the scores to input units
        train += float(log_pred[m, :n_train].sum()) - pipe.log_jacobian(s, 0, n_train)
        heldout += float(log_pred[m, n_train : s.length].sum()) - pipe.log_jacobian(s, n_train, s.length)
        days.append(log_pred[m, n_train : s.length][s.observed[n_train:]])
        train_days += int(s.observed[:n_train].sum())
        heldout_days += int(s.observed[n_train:].sum())
    n_params = fit.num_parameters
    return {
        "heldout_loglik": heldout,
        "heldout_per_day": heldout / max(heldout_days, 1),
        "train_loglik": train,
        "bic": bic(train, n_params, train_days),
        "n_params": n_params,
        "waic": float("nan"),
        "loo": float("nan"),
        "heldout_days": heldout_days,
        "train_days": train_days,
        # per held-out observed day, in the pipeline's units (the Jacobian is the same for every K)
        "heldout_by_day": np.concatenate(days) if days else np.zeros(0),
    }


def bic(log_likelihood: float, num_parameters: int, days: int) -> float:
    """Bayesian information criterion ``-2 log_likelihood + num_parameters * log(days)`` (nats; lower is
    better; Schwarz 1978, "Estimating the dimension of a model"); ``days`` below 1 count as 1."""
    return -2.0 * log_likelihood + num_parameters * math.log(max(days, 1))


def _one_standard_error(rows: list[dict[str, Any]]) -> None:
    """Add ``heldout_se`` and ``chosen`` to the rows in place (see the module docstring)."""
    scored = [r for r in rows if "heldout_by_day" in r and np.isfinite(r["heldout_loglik"])]
    if not scored:
        return
    best = max(scored, key=lambda r: r["heldout_loglik"])
    for r in scored:
        r["heldout_se"] = _batch_means_se(best["heldout_by_day"] - r["heldout_by_day"])
    within = [r for r in scored if r["heldout_loglik"] >= best["heldout_loglik"] - r["heldout_se"]]
    min(within, key=lambda r: r["K"])["chosen"] = True
    for r in scored:
        r.pop("heldout_by_day")


def _batch_means_se(diff: np.ndarray, block: int = SE_BLOCK_DAYS) -> float:
    """Standard error of ``diff.sum()`` by batch means over blocks of ``block`` consecutive days (the
    days are autocorrelated under persistent regimes); day by day when fewer than 5 blocks fit."""
    n = diff.size
    if n < 2:
        return 0.0
    blocks = n // block
    if blocks < 5:
        return float(np.std(diff, ddof=1) * np.sqrt(n))
    sums = diff[: blocks * block].reshape(blocks, block).sum(1)
    return float(np.std(sums, ddof=1) * np.sqrt(blocks) * n / (blocks * block))


def plot_selection(table: pd.DataFrame) -> Figure:
    """Held-out log-likelihood per day and BIC against K (a :class:`matplotlib.figure.Figure`)."""
    ordered = table.sort_values("K")
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_held, ax_bic = fig.subplots(1, 2)
    ok = ordered["heldout_per_day"].notna()
    ax_held.plot(ordered["K"][ok], ordered["heldout_per_day"][ok], "o-", color="tab:blue")
    if ok.any():
        best = ordered.loc[ordered["heldout_loglik"].idxmax()]
        ax_held.plot(
            [best["K"]],
            [best["heldout_per_day"]],
            "o",
            ms=12,
            mfc="none",
            mec="tab:red",
            label=f"best: K = {int(best['K'])}",
        )
        ax_held.legend(fontsize=8)
    ax_held.set_xlabel("regimes K")
    ax_held.set_ylabel("held-out log-likelihood per day (nats)")
    ax_held.set_title("one-step-ahead predictive, held-out days (higher is better)", fontsize=10)
    ok = ordered["bic"].notna()
    ax_bic.plot(ordered["K"][ok], ordered["bic"][ok], "s-", color="tab:green")
    ax_bic.set_xlabel("regimes K")
    ax_bic.set_ylabel("BIC (training days)")
    ax_bic.set_title("BIC on the training part (lower is better)", fontsize=10)
    for ax in (ax_held, ax_bic):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _fit_and_score(
    train: pd.DataFrame,
    full: pd.DataFrame,
    config: FitConfig,
    log: Callable[[str], None] | None,
    threads: int | None,
) -> dict[str, Any]:
    """One K: its fit on ``train`` scored on ``full`` (a row of the table), or a row whose note says why the
    fit failed (:class:`TrainingError`; other errors propagate)."""
    k = config.model.num_regimes
    start = time.perf_counter()
    try:
        result = fit(train, config, log=log, warn=False, threads=threads)
    except TrainingError as exc:
        return {"K": k, "fit_seconds": round(time.perf_counter() - start, 3), "note": f"failed: {exc}"}
    seconds = time.perf_counter() - start
    row = score_fit(result, full)
    row.update(K=k, fit_seconds=round(seconds, 3), note="")
    return row


def _report(row: dict[str, Any], print_: Callable[[str], None]) -> dict[str, Any]:
    """Print one K's result line; returns ``row``."""
    if row["note"]:
        print_(f"[select] K = {row['K']}: {row['note']}")
    else:
        print_(
            f"[select] K = {row['K']}: held-out log-likelihood {row['heldout_loglik']:.3f} "
            f"({row['heldout_per_day']:.4f} per day), BIC {row['bic']:.1f}, fit {row['fit_seconds']:.1f} s"
        )
    return row


def _fit_in_processes(
    train: pd.DataFrame,
    full: pd.DataFrame,
    config: FitConfig,
    ks: list[int],
    workers: int,
    threads: int,
    print_: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The rows of ``ks`` fitted in ``workers`` spawned processes at a time (:func:`~regime_dmm.processes.
    run_in_processes`), largest K first (the longest fits start first), returned in the order of ``ks``. A
    process that dies is a :class:`~regime_dmm.processes.ProcessDied` naming its K; on any error or interrupt
    the running fits are killed."""
    calls = [
        (k, _fit_and_score, (train, full, config.with_num_regimes(k), None, threads)) for k in sorted(ks, reverse=True)
    ]
    rows = run_in_processes(calls, workers, on_result=lambda _k, row: _report(row, print_))
    return [rows[k] for k in ks]


def _check_workers(workers: int | None, num_ks: int) -> int:
    """The number of processes: ``workers``, or (None) one per :data:`~regime_dmm.threads.SINGLE_FIT_THREADS`
    cores (:func:`~regime_dmm.threads.available_cores`: the CPU affinity, not a container's CPU quota), at most
    ``num_ks``: each fit keeps the two threads a single fit runs best on, so a 2-core machine fits in one process;
    :class:`ConfigError` when it is not an integer >= 1."""
    if workers is None:
        return max(1, min(available_cores() // SINGLE_FIT_THREADS, num_ks))
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    return min(int(workers), num_ks)


def _check_ks(ks: Iterable[int]) -> list[int]:
    try:
        values = list(ks)
    except TypeError:
        raise ConfigError(f"ks must be a list of numbers of regimes, got {ks!r}") from None
    if not values:
        raise ConfigError("ks must name at least one number of regimes")
    out = []
    for k in values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ConfigError(f"every number of regimes must be an integer >= 2, got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    return out


def training_part(full: pd.DataFrame, holdout: float, min_observations: int) -> pd.DataFrame:
    """The first ``1 - holdout`` of each market's returns (price input: one more row, the base price).

    ``full``: a :func:`~regime_dmm.data.load_prices` table. Raises :class:`DataError` naming the market
    when it leaves fewer than ``min_observations`` training days or no held-out day."""
    value_column = full.attrs["value_column"]
    parts = []
    for market, group in full.groupby("market", sort=False):
        n_returns = len(group) - 1 if value_column == "price" else len(group)
        n_train = int(math.floor((1.0 - holdout) * n_returns))
        if n_train < min_observations or n_returns - n_train < 1:
            raise DataError(
                f"market '{market}': {n_returns} returns leave {n_train} training days with holdout {holdout}; "
                f"at least {min_observations} training days and 1 held-out day are needed"
            )
        parts.append(group.iloc[: n_train + (1 if value_column == "price" else 0)])
    train = pd.concat(parts, ignore_index=True)
    train.attrs["value_column"] = value_column
    return train
