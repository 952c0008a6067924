"""Sweeps: many fits - markets x numbers of regimes x seeds x configurations - as tasks on Dask distributed.

A research desk fits hundreds of assets, several K, several seeds and configuration variants, and
compares them. :func:`sweep` plans the cartesian product (:func:`plan_sweep`), sends each fit to a
Dask distributed cluster as one task (:func:`run_task`) and collects one row per task into
``sweep.csv``:

* **markets**: each market its own fit (default), named groups of markets fitted jointly
  (``groups={"cre": ["traditional_cre", "tokenized_reit"]}``), or all markets jointly;
* **scheduler**: a ``LocalCluster`` of ``workers`` processes with one thread each (default: one worker
  per core), or an existing cluster (``scheduler="tcp://host:port"``) whose workers run one thread each
  (``dask worker --nthreads 1``; others are refused: fits in one process share Pyro's parameter store).
  The tasks, rows and files are the same either way; with a remote cluster the output folder must be
  on a file system the workers share (or use ``outputs=False``);
* **held-out score**: with ``holdout > 0`` each task fits the first ``1 - holdout`` of each of its
  markets' days and scores the rest by the exact one-step-ahead predictive density, as
  :func:`~regime_dmm.selection.select_regimes` does (so the best K of a market by held-out score is
  read from the table: ``best_k.csv``); with ``holdout = 0`` each task is exactly
  ``regime-dmm fit --threads 1`` on its markets;
* **fault tolerance**: a task that fails (bad data in its market, non-finite training, ...) becomes a
  row with ``status = failed`` and its error, and the other tasks go on; a task whose worker process
  is lost is retried once on another (the local cluster's ``allowed-failures`` is 1; an existing
  scheduler uses its own ``distributed.scheduler.allowed-failures``);
* **resume**: every finished task's row is kept in ``DIR/tasks/<task_id>.json`` (atomically, by the
  client); rerunning the same sweep into the same folder skips the tasks recorded ``ok`` with the same
  key (a hash of the task's markets, data, K, seed, configuration and holdout), and reruns the rest;
* **interrupts**: Ctrl-C (or SIGTERM) cancels the pending tasks, keeps the finished ones, writes
  ``sweep.csv`` with the pending ones as ``cancelled`` and raises :class:`SweepInterrupted`
  (the command line exits 130 / 143);
* **threads**: every task fits with one torch thread and the local workers start with
  ``OMP_NUM_THREADS=1`` (:mod:`regime_dmm.threads`), so ``N`` workers use ``N`` cores without
  slowing each other down.

Dask distributed is an optional dependency (``pip install 'regime-dmm[dask]'``); :func:`sweep` raises
:class:`~regime_dmm.errors.ConfigError` saying so when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import resource
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._version import __version__
from .atomic import LOCK_FILE, atomic_write_text, folder_lock
from .config import FitConfig
from .data.loader import read_prices
from .data.simulator import simulate_default
from .data.sources import DataSource
from .errors import ConfigError, DataError, RegimeDMMError
from .fitting import FitInterrupted, fit
from .outputs import write_outputs
from .processes import sigint_ignored
from .selection import bic, score_fit, training_part
from .threads import WORKER_ENVIRONMENT, available_cores

__all__ = [
    "SWEEP_COLUMNS",
    "SweepInterrupted",
    "SweepTask",
    "best_k_table",
    "plan_sweep",
    "run_task",
    "sweep",
]

#: Columns of ``sweep.csv``, in order. Log-likelihoods in nats, input units; ``usage``: JSON
#: ``{market: {regime: share}}``; ``shifts_per_year``: the mean over the task's markets of the changes
#: of the most probable smoothed regime per calendar year (``shifts_per_year_filtered``: of the filtered one,
#: what could be read day by day; ``shifts_per_year_viterbi``: of the Viterbi path); ``epochs``: epochs run
#: over all restarts; ``peak_rss_mb``: the worker process's peak resident memory so far; ``regime_warnings``:
#: the fit's regime warnings, ``market: kind(regimes)`` joined by ``; `` (empty: none; see
#: :mod:`regime_dmm.regime_checks`).
SWEEP_COLUMNS = [
    "task_id",
    "markets",
    "K",
    "seed",
    "config",
    "status",
    "error",
    "log_likelihood",
    "heldout_loglik",
    "heldout_per_day",
    "bic",
    "n_params",
    "usage",
    "shifts_per_year",
    "regime_warnings",
    "epochs",
    "wall_seconds",
    "worker",
    "heldout_days",
    "train_days",
    "peak_rss_mb",
    "key",
    "shifts_per_year_filtered",
    "shifts_per_year_viterbi",
]

SWEEP_FILE = "sweep.csv"
BEST_K_FILE = "best_k.csv"
TASKS_FOLDER = "tasks"
FITS_FOLDER = "fits"
INSTALL_HINT = "regime-dmm sweep needs Dask distributed: pip install 'regime-dmm[dask]'"


class SweepInterrupted(RegimeDMMError):
    """The sweep was stopped (Ctrl-C / SIGTERM): ``table`` holds the finished rows and the cancelled ones."""

    def __init__(self, message: str, table: pd.DataFrame) -> None:
        super().__init__(message)
        self.table = table


@dataclass(frozen=True)
class SweepTask:
    """One fit of a sweep: ``markets`` (fitted jointly) with ``num_regimes`` regimes, ``seed`` and the
    configuration ``config`` (a :meth:`FitConfig.to_dict`, K and seed already set) named ``config_name``.

    ``task_id``: readable and unique within the sweep (``<markets>-K<K>-s<seed>-<config>``); ``key``: a
    hash of everything that decides the result (markets' rows, K, seed, configuration, holdout, package
    version), with which a rerun recognises a finished task.
    """

    task_id: str
    key: str
    markets: tuple[str, ...]
    label: str
    num_regimes: int
    seed: int
    config_name: str
    config: dict[str, Any]


def plan_sweep(
    frame: pd.DataFrame,
    *,
    ks: Iterable[int] = (4,),
    seeds: Iterable[int] = (0,),
    configs: Mapping[str, FitConfig] | None = None,
    groups: Mapping[str, Sequence[str]] | str = "each",
    holdout: float = 0.2,
) -> list[SweepTask]:
    """The tasks of a sweep: every (market group, K, seed, configuration), groups outermost.

    ``frame``: a :func:`~regime_dmm.data.read_prices` / ``load_prices`` table. ``groups``: ``"each"``
    (every market alone), ``"joint"`` (all markets in one fit) or ``{name: [market, ...]}``.
    ``configs``: ``{name: FitConfig}`` (default ``{"default": FitConfig()}``). Raises
    :class:`~regime_dmm.errors.ConfigError` for an unknown market, an empty group, a K < 2, a bad holdout
    or two tasks with the same id.
    """
    ks = _integers(ks, "regimes", minimum=2)
    seeds = _integers(seeds, "seeds", minimum=0)
    if not isinstance(holdout, (int, float)) or isinstance(holdout, bool) or not 0 <= holdout < 1:
        raise ConfigError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    configs = dict(configs) if configs else {"default": FitConfig()}
    markets = list(pd.unique(frame["market"]))
    resolved = _groups(groups, markets)
    tasks: list[SweepTask] = []
    seen: dict[str, SweepTask] = {}
    for label, members in resolved.items():
        rows = frame[frame["market"].isin(members)]
        data_hash = hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()).hexdigest()
        for k in ks:
            for seed in seeds:
                for name, base in configs.items():
                    config = base.with_num_regimes(k).replace(training={"seed": seed}).to_dict()
                    key = hashlib.sha256(
                        json.dumps(
                            [members, data_hash, config, holdout, __version__], sort_keys=True, default=str
                        ).encode()
                    ).hexdigest()[:16]
                    task_id = f"{_safe(label)}-K{k}-s{seed}-{_safe(name)}"
                    task = SweepTask(task_id, key, tuple(members), label, k, seed, name, config)
                    if task_id in seen:
                        raise ConfigError(
                            f"two sweep tasks would share the id {task_id!r} ({seen[task_id].label!r} and {label!r}, "
                            f"configs {seen[task_id].config_name!r} and {name!r}): rename a group or a config file"
                        )
                    seen[task_id] = task
                    tasks.append(task)
    return tasks


def run_task(task: SweepTask, frame: pd.DataFrame, holdout: float, fit_dir: str | None, plots: bool) -> dict[str, Any]:
    """Fit one task (in a Dask worker, or anywhere) and return its ``sweep.csv`` row as a dict.

    ``frame``: the rows of the task's markets (read_prices table); ``holdout``: share of each market's
    last days held out (0: fit everything); ``fit_dir``: folder for the usual fit outputs (None: none).
    Never raises for a failed fit: the row has ``status = "failed"`` and ``error`` says why (the
    exception's type and message). One torch thread (:mod:`regime_dmm.threads`).
    """
    start = time.perf_counter()
    row = dict(_row_head(task), worker=_worker_name())
    try:
        config = FitConfig.from_dict(task.config)
        full = frame.reset_index(drop=True)
        full.attrs = dict(frame.attrs)
        train = training_part(full, holdout, config.training.min_observations) if holdout > 0 else full
        result = fit(train, config, threads=1, warn=False)
        row.update(
            status="ok",
            error="",
            log_likelihood=result.log_likelihood,
            n_params=result.num_parameters,
            usage=json.dumps(
                {m.name: dict(zip(result.regimes, np.round(m.usage, 6).tolist())) for m in result.markets}
            ),
            shifts_per_year=float(np.mean([m.shifts_per_year() for m in result.markets])),
            shifts_per_year_filtered=float(np.mean([m.shifts_per_year("filtered") for m in result.markets])),
            shifts_per_year_viterbi=float(np.mean([m.shifts_per_year("viterbi") for m in result.markets])),
            regime_warnings="; ".join(
                f"{w['market']}: {w['kind']}({','.join(w['regimes'])})" for w in result.regime_warnings
            ),
            epochs=int(len(result.history)),
            train_days=int(sum(np.asarray(m.observed).sum() for m in result.markets)),
        )
        if holdout > 0:
            score = score_fit(result, full)
            row.update(
                heldout_loglik=score["heldout_loglik"],
                heldout_per_day=score["heldout_per_day"],
                bic=score["bic"],
                heldout_days=score["heldout_days"],
                train_days=score["train_days"],
            )
        else:
            row.update(bic=bic(result.log_likelihood, result.num_parameters, row["train_days"]))
        if fit_dir is not None:
            write_outputs(result, fit_dir, overwrite=True, plots=plots)
    except Exception as exc:  # a failed task is a row, never a failed sweep
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    row["wall_seconds"] = round(time.perf_counter() - start, 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    row["peak_rss_mb"] = round(peak / (1024.0**2 if sys.platform == "darwin" else 1024.0), 1)
    return row


def sweep(
    data: DataSource = None,
    *,
    out: str | Path,
    ks: Iterable[int] = (4,),
    seeds: Iterable[int] = (0,),
    configs: Mapping[str, FitConfig] | None = None,
    groups: Mapping[str, Sequence[str]] | str = "each",
    holdout: float = 0.2,
    outputs: bool = True,
    plots: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run a sweep (see the module docstring) into the folder ``out``; returns the ``sweep.csv`` table.

    ``data``: CSV path(s) or a long DataFrame (None: the embedded simulated default, seed 0).
    ``workers``: local worker processes (default: the cores available); ``scheduler``: the address of
    an existing Dask scheduler instead (``workers`` is then ignored). ``outputs``: write each task's
    fit outputs into ``out/fits/<task_id>/`` (``plots``: with the PNGs). Writes ``out/sweep.csv``
    (columns :data:`SWEEP_COLUMNS`, one row per task in plan order), ``out/best_k.csv``
    (:func:`best_k_table`) and ``out/tasks/<task_id>.json``.

    Raises :class:`~regime_dmm.errors.DataError` for rows no market could use (the file's own
    errors; a market's too-short or constant series fails only its tasks), :class:`ConfigError` for
    bad options or a missing Dask, :class:`RegimeDMMError` when ``out`` is a non-empty folder that is
    not a sweep's, and :class:`SweepInterrupted` on Ctrl-C / SIGTERM after saving what finished.
    """
    distributed = _import_distributed()
    print_ = log or (lambda _msg: None)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    out = Path(out).resolve()  # workers (remote ones too) get absolute paths
    _check_folder(out)
    if data is None:
        frame = read_prices(simulate_default(seed=0).frame, label="embedded simulated data")
    else:
        frame = read_prices(data)
    tasks = plan_sweep(frame, ks=ks, seeds=seeds, configs=configs, groups=groups, holdout=holdout)
    with folder_lock(out, "sweep"):  # a second sweep into this folder stops here, changing nothing
        records = out / TASKS_FOLDER  # created with the first finished task: a failed start leaves no folder
        done = {t.task_id: row for t in tasks if (row := _finished(records / f"{t.task_id}.json", t.key)) is not None}
        todo = [t for t in tasks if t.task_id not in done]
        if done:
            print_(f"[sweep] {len(done)} of {len(tasks)} tasks already finished in {out}: skipped")
        rows: dict[str, dict[str, Any]] = dict(done)
        if todo:
            with _client(distributed, workers, scheduler) as client:
                print_(f"[sweep] {len(todo)} tasks on {_describe(client)}")
                try:
                    _run(
                        distributed,
                        client,
                        todo,
                        frame,
                        holdout,
                        out,
                        outputs,
                        plots,
                        rows,
                        print_,
                        progress,
                        remote=scheduler is not None,
                    )
                except (KeyboardInterrupt, FitInterrupted):  # Ctrl-C; or a signal the CLI's StopControl received
                    for t in todo:
                        if t.task_id not in rows:
                            rows[t.task_id] = _cancelled(t)
                    table = _write_tables(out, tasks, rows)
                    finished = sum(1 for t in todo if rows[t.task_id]["status"] != "cancelled")
                    still = sum("remote worker" in str(rows[t.task_id].get("error", "")) for t in todo)
                    remote = f"; {still} cancelled ones still run to their end on the cluster's workers" * bool(still)
                    raise SweepInterrupted(
                        f"sweep stopped: {finished} of {len(todo)} new tasks finished and were kept{remote}; "
                        f"rerun the same command to do the rest",
                        table,
                    ) from None
        return _write_tables(out, tasks, rows)


def best_k_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per market group (one market unless grouped) and configuration, the best K: the highest held-out
    log-likelihood averaged over the seeds that finished ``ok`` (lowest mean BIC when nothing was held
    out); a K whose seeds partly failed is averaged over the others, see ``seeds``.

    Columns: markets, config, best_K, criterion (``heldout_loglik`` or ``bic``), score (its mean at
    best_K), seeds (finished seeds at best_K), and ``score_K<k>`` per K compared. Empty when no task
    finished.
    """
    ok = table[table["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=["markets", "config", "best_K", "criterion", "score", "seeds"])
    rows = []
    for (markets, config), group in ok.groupby(["markets", "config"], sort=False):
        held = group["heldout_loglik"].notna().any()
        criterion = "heldout_loglik" if held else "bic"
        means = group.groupby("K")[criterion].mean().dropna()  # over the seeds that finished
        best = int(means.idxmax() if held else means.idxmin())
        row = {
            "markets": markets,
            "config": config,
            "best_K": best,
            "criterion": criterion,
            "score": float(means[best]),
            "seeds": int((group["K"] == best).sum()),
        }
        row.update({f"score_K{int(k)}": float(v) for k, v in means.items()})
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return distributed


@contextmanager
def _client(distributed: Any, workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A Client of a new LocalCluster (closed afterwards) or of the existing ``scheduler``."""
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            # Pyro's parameter store is global to a process: two fits in threads of one worker would share it
            threads = {a: w.get("nthreads", 1) for a, w in client.scheduler_info().get("workers", {}).items()}
            threaded = {a: n for a, n in threads.items() if n != 1}
            if threaded:
                raise ConfigError(
                    f"the Dask workers at {scheduler} must run one task at a time (regime-dmm fits share "
                    f"Pyro's global parameter store within a process), but {', '.join(threaded)} have "
                    f"{sorted(set(threaded.values()))} threads: start them with 'dask worker --nthreads 1'"
                )
            yield client
        return
    import dask

    # a task whose worker dies is retried once; the worker processes start with one OpenMP/BLAS thread
    # the local workers start ignoring Ctrl-C: this process stops them (the cluster is closed on the way out)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), sigint_ignored():
        cluster = distributed.LocalCluster(
            n_workers=available_cores() if workers is None else workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env=dict(WORKER_ENVIRONMENT),
            silence_logs=50,
        )
    with cluster, distributed.Client(cluster) as client:
        yield client


def _describe(client: Any) -> str:
    info = client.scheduler_info()
    workers = info.get("workers", {})
    return f"{len(workers)} Dask worker(s) at {info.get('address', '?')}"


def _run(
    distributed: Any,
    client: Any,
    todo: list[SweepTask],
    frame: pd.DataFrame,
    holdout: float,
    out: Path,
    outputs: bool,
    plots: bool,
    rows: dict[str, dict[str, Any]],
    print_: Callable[[str], None],
    progress: bool,
    remote: bool = False,
) -> None:
    """Submit ``todo``; record each row as it finishes (in ``rows`` and ``out/tasks/<id>.json``). On a stop, every
    unfinished task is cancelled and recorded so (``remote``: on a cluster this sweep does not own, a task already
    running runs to its end there, which its row says)."""
    # Each task carries its markets' rows (a few hundred kB): tasks without dependencies are handed to
    # whichever worker is free, where scattered data would tie each task to the worker holding its rows.
    parts = {t.label: frame[frame["market"].isin(t.markets)] for t in todo}
    run = uuid.uuid4().hex  # Dask keys unique to this run: identical tasks (or another user's) never merge
    futures = {}
    for i, t in enumerate(todo):
        fit_dir = str(out / FITS_FOLDER / t.task_id) if outputs else None
        # one key prefix for all: Dask then sees one group of root tasks and queues them on the scheduler,
        # handing each to the next free worker (unique prefixes made it assign them all up front, unevenly)
        future = client.submit(run_task, t, parts[t.label], holdout, fit_dir, plots, key=f"regime_dmm_fit-{run}-{i}")
        futures[future] = t
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sweep", unit="task")
    try:
        for future in distributed.as_completed(list(futures)):
            task = futures[future]
            try:
                row = future.result()
            except (KeyboardInterrupt, FitInterrupted):  # a stop that arrived while the result was read: a stop,
                raise  # not this task's failure (it was recorded "failed", and the sweep ran on, exit 1)
            except distributed.KilledWorker as exc:
                row = _failed(task, f"KilledWorker: the task's worker was lost twice ({exc})")
            except Exception as exc:
                row = _failed(task, f"{type(exc).__name__}: {exc}")
            rows[task.task_id] = row
            atomic_write_text(out / TASKS_FOLDER / f"{task.task_id}.json", json.dumps(_plain(row), indent=1) + "\n")
            if bar is not None:
                bar.update(1)
            status = row["status"] if row["status"] != "failed" else f"FAILED ({row['error']})"
            print_(f"[sweep] {task.task_id}: {status} in {row.get('wall_seconds', float('nan')):.1f} s")
    except (KeyboardInterrupt, FitInterrupted):
        pending = {f.key: t for f, t in futures.items() if t.task_id not in rows}
        running = _running_keys(client) if remote else set()
        client.cancel([f for f, t in futures.items() if t.task_id not in rows])
        for key, t in pending.items():  # a Dask task cannot be stopped once it runs: say so where it runs on
            rows[t.task_id] = _cancelled(t, key in running)  # a cluster this sweep does not close
        raise
    finally:
        if bar is not None:
            bar.close()


def _finished(path: Path, key: str) -> dict[str, Any] | None:
    """The recorded row of a task finished ``ok`` with the same key, else None (then it is run again)."""
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(row, dict) or row.get("key") != key or row.get("status") != "ok":
        return None
    return row


def _row_head(task: SweepTask) -> dict[str, Any]:
    """The columns of a task's row that say which task it is."""
    return {
        "task_id": task.task_id,
        "markets": ";".join(task.markets),
        "K": task.num_regimes,
        "seed": task.seed,
        "config": task.config_name,
        "key": task.key,
    }


def _failed(task: SweepTask, error: str) -> dict[str, Any]:
    return dict(_row_head(task), status="failed", error=error)


def _cancelled(task: SweepTask, running_remotely: bool = False) -> dict[str, Any]:
    reason = (
        "cancelled while running on a remote worker: a Dask task cannot be stopped once it runs, so it runs to "
        "its end there and its result is discarded"
        if running_remotely
        else "cancelled before it finished"
    )
    return dict(_failed(task, reason), status="cancelled")


def _running_keys(client: Any) -> set[str]:
    """The keys the cluster's workers are executing now (asked of each worker: the scheduler's "processing" also
    counts the tasks queued on a worker); empty when they cannot be asked."""
    try:
        executing = client.run(_executing_keys)
    except Exception:  # a report, not a reason to fail the stop
        return set()
    return {key for keys in executing.values() for key in keys}


def _executing_keys(dask_worker: Any) -> list[str]:
    """On a worker: the keys of the tasks it is executing."""
    return [str(ts.key) for ts in dask_worker.state.executing]


def _write_tables(out: Path, tasks: list[SweepTask], rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """``sweep.csv`` (plan order) and ``best_k.csv``, each written atomically; returns the sweep table."""
    table = pd.DataFrame([rows[t.task_id] for t in tasks if t.task_id in rows]).reindex(columns=SWEEP_COLUMNS)
    table["error"] = table["error"].fillna("")
    atomic_write_text(out / SWEEP_FILE, table.to_csv(index=False, float_format="%.6f"))
    best = best_k_table(table)
    atomic_write_text(out / BEST_K_FILE, best.to_csv(index=False, float_format="%.6f"))
    table.attrs["best_k"] = best
    return table


def _check_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RegimeDMMError(f"output folder {out} is a file")
    is_sweep = (out / SWEEP_FILE).is_file() or any((out / TASKS_FOLDER).glob("*.json"))
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not is_sweep:
        raise RegimeDMMError(
            f"output folder {out} exists, is not empty and holds no sweep: use another --out "
            "(rerunning a sweep into its own folder resumes it)"
        )


def _groups(groups: Mapping[str, Sequence[str]] | str, markets: list[str]) -> dict[str, list[str]]:
    if groups == "each":
        return {m: [m] for m in markets}
    if groups == "joint":
        return {"all": list(markets)}
    if isinstance(groups, str) or not isinstance(groups, Mapping) or not groups:
        raise ConfigError(f"groups must be 'each', 'joint' or a mapping name -> markets, got {groups!r}")
    out = {}
    for name, members in groups.items():
        members = [members] if isinstance(members, str) else list(members)
        if not members:
            raise ConfigError(f"market group {name!r} is empty")
        unknown = [m for m in members if m not in markets]
        if unknown:
            raise DataError(
                f"market group {name!r}: no market {', '.join(map(repr, unknown))} in the data; markets: {markets}"
            )
        out[str(name)] = list(dict.fromkeys(members))
    return out


def _integers(values: Iterable[int], what: str, *, minimum: int) -> list[int]:
    try:
        items = list(values)
    except TypeError:
        raise ConfigError(f"{what} must be a list of integers, got {values!r}") from None
    if not items:
        raise ConfigError(f"{what}: at least one value is needed")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ConfigError(f"{what}: every value must be an integer >= {minimum}, got {v!r}")
    return list(dict.fromkeys(int(v) for v in items))


def _safe(text: str) -> str:
    """A file-name-safe form of a market, group or config name."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", str(text)).strip("._") or "_"


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out
