"""``regime-dmm sweep`` / ``rd.sweep``: the tasks, their rows, failures, resume, interrupts, lost workers,
and equality with the same fits run one by one with ``regime-dmm fit``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import distributed
import numpy as np
import pandas as pd
import pytest

import regime_dmm as rd
from regime_dmm.cli import main
from regime_dmm.errors import ConfigError, DataError
from regime_dmm.sweep import SWEEP_COLUMNS, best_k_table, plan_sweep, run_task, sweep

from helpers import process_alive, two_regime_market, write_csv_frame

EPOCHS = 8
CONFIG = rd.FitConfig().replace(training={"epochs": EPOCHS, "restarts": 1})


def markets(days: int = 260) -> pd.DataFrame:
    """Three good two-regime markets a, b, c and a constant one, ``flat`` (its fits must fail)."""
    frames = []
    for seed, name in enumerate("abc"):
        f = two_regime_market(days, seed=10 + seed)
        frames.append(f.assign(market=name))
    flat = frames[0].assign(market="flat", price=100.0)
    frame = pd.concat(frames + [flat], ignore_index=True)
    return frame[["date", "market", "price"]]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny sweep of the issue (3 markets x 2 K x 2 seeds, few epochs) plus a failing market, run on a
    2-process LocalCluster; returns (table, out folder, data frame)."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    frame = markets()
    table = sweep(frame, out=out, ks=[2, 3], seeds=[0, 1], configs={"tiny": CONFIG}, workers=2, plots=False)
    return table, out, frame


def test_plan_is_the_cartesian_product_with_readable_unique_ids():
    frame = markets()
    tasks = plan_sweep(frame, ks=[2, 3], seeds=[0, 1], configs={"tiny": CONFIG})
    assert len(tasks) == 4 * 2 * 2
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert tasks[0].task_id == "a-K2-s0-tiny"
    assert {(t.num_regimes, t.seed) for t in tasks if t.markets == ("b",)} == {(2, 0), (2, 1), (3, 0), (3, 1)}
    cfg = rd.FitConfig.from_dict(tasks[-1].config)
    assert (cfg.model.num_regimes, cfg.training.seed, cfg.training.epochs) == (3, 1, EPOCHS)
    joint = plan_sweep(frame, groups={"ab": ["a", "b"]})
    assert [t.markets for t in joint] == [("a", "b")]
    assert plan_sweep(frame, groups="joint")[0].markets == ("a", "b", "c", "flat")
    # the key follows the data: another price in market a changes a's key, not b's
    moved = frame.copy()
    moved.loc[moved.index[5], "price"] *= 1.01
    before = {t.task_id: t.key for t in tasks}
    after = {t.task_id: t.key for t in plan_sweep(moved, ks=[2, 3], seeds=[0, 1], configs={"tiny": CONFIG})}
    assert before["a-K2-s0-tiny"] != after["a-K2-s0-tiny"] and before["b-K2-s0-tiny"] == after["b-K2-s0-tiny"]


def test_plan_refuses_bad_options():
    frame = markets()
    with pytest.raises(DataError, match="no market 'zzz'"):
        plan_sweep(frame, groups={"g": ["a", "zzz"]})
    with pytest.raises(ConfigError, match=">= 2"):
        plan_sweep(frame, ks=[1, 2])
    with pytest.raises(ConfigError, match="share the id"):
        plan_sweep(frame, groups={"a b": ["a"], "a/b": ["b"]})
    with pytest.raises(ConfigError, match="holdout"):
        plan_sweep(frame, holdout=1.0)


def test_tiny_sweep_rows_outputs_and_a_failing_market(swept):
    table, out, _ = swept
    assert list(table.columns) == SWEEP_COLUMNS
    assert len(table) == 16
    good = table[table["markets"] != "flat"]
    assert (good["status"] == "ok").all(), good[["task_id", "error"]]
    bad = table[table["markets"] == "flat"]
    assert (bad["status"] == "failed").all()
    assert bad["error"].str.contains("DataError").all() and bad["error"].str.contains("flat").all()
    # every good row is complete; the held-out days are the last 20 % of each market's 259 returns
    for column in ("log_likelihood", "heldout_loglik", "bic", "shifts_per_year", "wall_seconds", "peak_rss_mb"):
        assert np.isfinite(good[column].astype(float)).all(), column
    assert (good["heldout_days"] == 259 - int(0.8 * 259)).all()
    assert (good["epochs"] >= 1).all() and (good["epochs"] <= EPOCHS).all()
    assert good["worker"].str.startswith("tcp://").all()
    usage = json.loads(good.iloc[0]["usage"])
    assert set(usage) == {"a"} and sum(usage["a"].values()) == pytest.approx(1.0, abs=1e-5)
    # both workers were used, and the files are there
    assert good["worker"].nunique() == 2
    assert (out / "sweep.csv").is_file() and (out / "best_k.csv").is_file()
    for task_id in good["task_id"]:
        assert (out / "fits" / task_id / "regimes.csv").is_file()
        assert (out / "tasks" / f"{task_id}.json").is_file()
    best = pd.read_csv(out / "best_k.csv")
    assert sorted(best["markets"]) == ["a", "b", "c"]
    assert set(best["best_K"]) <= {2, 3} and (best["criterion"] == "heldout_loglik").all()


def test_resume_skips_finished_tasks_and_reruns_the_rest(swept, tmp_path):
    table, out, frame = swept
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    # copy the records of the finished run, minus one good task
    (resumed / "tasks").mkdir()
    dropped = "b-K3-s1-tiny"
    for path in (out / "tasks").iterdir():
        if path.stem != dropped:
            (resumed / "tasks" / path.name).write_text(path.read_text())
    lines: list[str] = []
    again = sweep(
        frame,
        out=resumed,
        ks=[2, 3],
        seeds=[0, 1],
        configs={"tiny": CONFIG},
        workers=1,
        outputs=False,
        log=lines.append,
    )
    assert any("11 of 16 tasks already finished" in line for line in lines), lines
    ran = [line for line in lines if line.startswith("[sweep] ") and ": ok in" in line or "FAILED" in line]
    assert sorted(line.split(":")[0].removeprefix("[sweep] ") for line in ran) == sorted(
        [dropped] + [f"flat-K{k}-s{s}-tiny" for k in (2, 3) for s in (0, 1)]
    )
    # the rerun task gives the same row (same seed, same data: same result)
    a = table.set_index("task_id").loc[dropped]
    b = again.set_index("task_id").loc[dropped]
    assert b["log_likelihood"] == pytest.approx(a["log_likelihood"], abs=1e-9)
    assert b["heldout_loglik"] == pytest.approx(a["heldout_loglik"], abs=1e-9)


def test_a_sweep_task_equals_the_same_fit_run_by_regime_dmm_fit(tmp_path, capsys):
    frame = markets()
    csv = tmp_path / "prices.csv"
    write_csv_frame(frame[frame["market"] == "c"], csv)
    table = sweep(str(csv), out=tmp_path / "sw", ks=[2], seeds=[3], configs={"tiny": CONFIG}, holdout=0, workers=1)
    row = table.iloc[0]
    assert row["status"] == "ok" and np.isnan(row["heldout_loglik"])
    code = main(
        ["fit", "--data", str(csv), "--regimes", "2", "--seed", "3", "--epochs", str(EPOCHS), "--restarts", "1"]
        + ["--threads", "1", "--out", str(tmp_path / "fit"), "--no-plots", "--quiet"]
    )
    assert code == 0
    summary = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert row["log_likelihood"] == pytest.approx(summary["log_likelihood"], abs=1e-5)
    ours = pd.read_csv(tmp_path / "sw" / "fits" / row["task_id"] / "regimes.csv")
    theirs = pd.read_csv(tmp_path / "fit" / "regimes.csv")
    pd.testing.assert_frame_equal(ours, theirs)
    assert row["shifts_per_year"] == pytest.approx(summary["markets"]["c"]["shifts_per_year"], abs=1e-5)
    for path in ("filtered", "viterbi"):  # issue #19: the day-by-day and Viterbi paths' shifts too
        key = f"shifts_per_year_{path}"
        assert row[key] == pytest.approx(summary["markets"]["c"][key], abs=1e-5)
    # the fit's regime warnings, as summary.json has them (issue #20: the sweep table carries them too)
    expected = "; ".join(f"{w['market']}: {w['kind']}({','.join(w['regimes'])})" for w in summary["regime_warnings"])
    assert row["regime_warnings"] == expected
    capsys.readouterr()


def test_a_task_row_carries_the_fits_regime_warnings():
    frame = markets(days=150)  # 150 observed days cannot carry four regimes: a few_days finding at least
    task = next(t for t in plan_sweep(frame, ks=[4], configs={"tiny": CONFIG}) if t.markets == ("a",))
    row = run_task(task, frame[frame["market"] == "a"], 0.0, None, False)
    assert row["status"] == "ok", row["error"]
    findings = row["regime_warnings"].split("; ")
    assert "a: few_days(calm,neutral,volatile,panic)" in findings
    assert all(f.startswith("a: ") for f in findings)


def test_run_task_records_a_failure_instead_of_raising():
    frame = markets()
    task = next(t for t in plan_sweep(frame, configs={"tiny": CONFIG}) if t.markets == ("flat",))
    row = run_task(task, frame[frame["market"] == "flat"], 0.2, None, False)
    assert row["status"] == "failed" and "constant series" in row["error"] and row["worker"] == "local"


def test_best_k_averages_the_seeds_and_falls_back_to_bic():
    table = pd.DataFrame(
        {
            "markets": ["a"] * 4,
            "config": ["x"] * 4,
            "K": [2, 2, 3, 3],
            "status": ["ok"] * 4,
            "heldout_loglik": [10.0, 12.0, 14.0, 7.0],  # means: K=2 11, K=3 10.5
            "bic": [5.0, 5.0, 1.0, 2.0],
        }
    )
    best = best_k_table(table)
    assert best.loc[0, "best_K"] == 2 and best.loc[0, "score"] == 11.0 and best.loc[0, "seeds"] == 2
    best = best_k_table(table.assign(heldout_loglik=np.nan))
    assert best.loc[0, "best_K"] == 3 and best.loc[0, "criterion"] == "bic"


def test_a_lost_worker_task_is_retried_once(tmp_path):
    """The local cluster retries a task whose worker process died once, and only once."""
    from regime_dmm.sweep import _client

    marker = tmp_path / "died-once"

    def dies_once(path: str) -> int:
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return 7

    def always_dies() -> int:
        os._exit(1)

    with _client(distributed, 1, None) as client:
        assert client.submit(dies_once, str(marker), pure=False).result(timeout=120) == 7
        with pytest.raises(distributed.KilledWorker):
            client.submit(always_dies, pure=False).result(timeout=120)


def test_missing_dask_is_named_with_the_install_command(monkeypatch, tmp_path, capsys):
    import builtins

    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    assert main(["sweep", "--out", str(tmp_path / "s")]) == 2
    assert "pip install 'regime-dmm[dask]'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_cli_refuses_a_foreign_folder_and_bad_ranges(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["sweep", "--out", str(foreign)]) == 2
    assert "holds no sweep" in capsys.readouterr().err
    assert main(["sweep", "--seeds", "3..1", "--out", str(tmp_path / "x")]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["sweep", "--group", "novalue", "--out", str(tmp_path / "x")]) == 2
    assert "NAME=MARKET1,MARKET2" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and not (tmp_path / "x").exists()


def _running_sweep(tmp_path, out, workers: int, new_session: bool = False) -> subprocess.Popen:
    """``regime-dmm sweep`` of 36 small tasks in a subprocess, returned once its first task has finished."""
    frame = markets(days=400)
    csv = tmp_path / "prices.csv"
    write_csv_frame(frame[frame["market"] != "flat"], csv)
    cmd = [sys.executable, "-m", "regime_dmm.cli", "sweep", "--data", str(csv), "--regimes", "2..4", "--seeds", "0..3"]
    cmd += ["--epochs", "30", "--restarts", "1", "--workers", str(workers), "--out", str(out), "--no-outputs"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(cmd, text=True, start_new_session=new_session, **pipes)
    deadline = time.monotonic() + 240
    while not any((out / "tasks").glob("*.json")):  # the first task has finished
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no task finished in 240 s"
        time.sleep(0.2)
    return proc


@pytest.mark.slow
@pytest.mark.skipif(sys.platform.startswith("linux"), reason="on Linux the process-group test below covers it")
def test_ctrl_c_keeps_the_finished_tasks_and_exits_130(tmp_path):
    out = tmp_path / "sw"
    proc = _running_sweep(tmp_path, out, workers=1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 3 * 3 * 4
    assert (table["status"] == "ok").sum() >= 1
    assert (table["status"] == "cancelled").sum() >= 1
    assert set(table["status"]) <= {"ok", "cancelled"}


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}/task") else []:
            try:
                with open(f"/proc/{parent}/task/{task}/children", encoding="ascii") as fh:
                    children = [int(c) for c in fh.read().split()]
            except OSError:
                continue
            for child in children:
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
def test_ctrl_c_in_a_terminal_stops_the_workers_through_the_parent(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the local workers ignore it (no worker traceback), the
    sweep stops them itself, exits 130 and leaves no worker process behind."""
    out = tmp_path / "sw"
    proc = _running_sweep(tmp_path, out, workers=2, new_session=True)
    workers = _descendants(proc.pid)
    assert workers, "no worker process found"
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "KeyboardInterrupt" not in stderr and "Traceback" not in stderr, stderr
    end = time.monotonic() + 30
    while any(process_alive(p) for p in workers) and time.monotonic() < end:
        time.sleep(0.2)
    assert not [p for p in workers if process_alive(p)], "worker processes outlived the sweep"
    assert "interrupted" in stderr
    table = pd.read_csv(out / "sweep.csv")  # the finished tasks kept, the others cancelled
    assert len(table) == 3 * 3 * 4 and (table["status"] == "ok").sum() >= 1
    assert (table["status"] == "cancelled").sum() >= 1 and set(table["status"]) <= {"ok", "cancelled"}


def test_shifts_per_year_counts_changes_of_the_most_probable_regime():
    from regime_dmm.results import MarketResult

    dates = pd.date_range("2020-01-01", periods=366, freq="D")  # 365 days: one year and a bit
    labels = np.zeros(366, dtype=int)
    labels[100:200] = 1  # two shifts
    smoothed = np.eye(2)[labels]
    m = MarketResult(
        name="a",
        dates=dates,
        prices=None,
        returns=np.zeros(366),
        smoothed=smoothed,
        filtered=smoothed,
        viterbi=labels,
        transition=np.eye(2),
        base_transition=np.eye(2),
        initial=np.ones(2) / 2,
        usage=smoothed.mean(0),
        expected_duration=np.ones(2),
        emission={},
        log_likelihood=0.0,
        log_likelihood_normalised=0.0,
    )
    assert m.shifts_per_year() == pytest.approx(2 / (365 / 365.25))
    # the filtered path (what could be read day by day) and the Viterbi path are counted on their own labels
    flicker = labels.copy()
    flicker[[10, 20, 30]] = 1  # three one-day visits: six more shifts
    m.filtered = np.eye(2)[flicker]
    m.viterbi = np.where(np.arange(366) < 300, 0, 1)  # one shift
    assert m.shifts_per_year("filtered") == pytest.approx(8 / (365 / 365.25))
    assert m.shifts_per_year("viterbi") == pytest.approx(1 / (365 / 365.25))
    assert m.shifts_per_year() == pytest.approx(2 / (365 / 365.25))
    with pytest.raises(ValueError, match="path"):
        m.shifts_per_year("forecast")


def test_cli_sweep_config_variants_failed_tasks_and_option_errors(tmp_path, capsys):
    """Two configuration files (identical contents: both tasks must still run), a market that fails (exit 1),
    and the options that exclude each other."""
    frame = markets(days=200)
    csv = tmp_path / "prices.csv"
    write_csv_frame(frame[frame["market"].isin(["a", "flat"])], csv)
    for name in ("first", "second"):
        (tmp_path / f"{name}.yaml").write_text("training:\n  epochs: 3\n  restarts: 1\n")
    out = tmp_path / "sw"
    args = ["sweep", "--data", str(csv), "--regimes", "2", "--workers", "1", "--no-outputs", "--quiet"]
    code = main(args + ["--config", str(tmp_path / "first.yaml"), str(tmp_path / "second.yaml"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1  # a task failed
    assert "FAILED flat-K2-s0-first" in printed and "constant series" in printed
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["task_id"]) == ["a-K2-s0-first", "a-K2-s0-second", "flat-K2-s0-first", "flat-K2-s0-second"]
    assert list(table["status"]) == ["ok", "ok", "failed", "failed"]
    assert table.loc[0, "log_likelihood"] == pytest.approx(table.loc[1, "log_likelihood"], abs=1e-9)
    assert not (out / "fits").exists()  # --no-outputs
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "first.yaml").write_text("training:\n  epochs: 3\n")
    clash = ["--config", str(tmp_path / "first.yaml"), str(tmp_path / "other" / "first.yaml")]
    assert main(args + clash + ["--out", str(tmp_path / "x")]) == 2
    assert "two configuration files are named 'first'" in capsys.readouterr().err
    assert main(args + ["--joint", "--group", "g=a", "--out", str(tmp_path / "x")]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_existing_scheduler_with_one_thread_workers_only(tmp_path):
    frame = markets(days=200)
    one = frame[frame["market"] == "a"]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as c:
        with pytest.raises(ConfigError, match="--nthreads 1"):
            sweep(one, out=tmp_path / "refused", configs={"tiny": CONFIG}, scheduler=c.scheduler_address)
    assert not (tmp_path / "refused").exists()  # nothing written on a failed start
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        table = sweep(one, out=tmp_path / "remote", ks=[2], configs={"tiny": CONFIG}, scheduler=c.scheduler_address)
    assert list(table["status"]) == ["ok"] and (tmp_path / "remote" / "fits" / "a-K2-s0-tiny" / "regimes.csv").is_file()
    with pytest.raises(ConfigError, match="workers"):
        sweep(one, out=tmp_path / "zero", workers=0)
    assert not (tmp_path / "zero").exists()


def test_a_stop_reports_the_tasks_still_running_on_a_remote_cluster(tmp_path):
    """Dask cannot stop a running task: cancelled on a scheduler the sweep does not own, a running task is
    reported as still running there; the queued ones as cancelled before they finished."""
    frame = markets(days=200)
    one = frame[frame["market"] == "a"]
    lines: list[str] = []

    def stop_after_the_first(line: str) -> None:
        lines.append(line)
        if ": ok in" in line:
            time.sleep(1.0)  # the single worker has taken the next task by now
            raise KeyboardInterrupt

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        with pytest.raises(rd.sweep.__globals__["SweepInterrupted"]) as caught:
            sweep(one, out=tmp_path / "remote", ks=[2, 3], seeds=[0, 1, 2], configs={"tiny": CONFIG},
                  scheduler=c.scheduler_address, outputs=False, log=stop_after_the_first)  # fmt: skip
    table = caught.value.table
    cancelled = table[table["status"] == "cancelled"]
    running = cancelled[cancelled["error"].str.contains("running on a remote worker")]
    assert (table["status"] == "ok").sum() >= 1 and len(running) == 1, table[["task_id", "status", "error"]]
    assert (cancelled["error"].str.contains("cancelled before it finished")).sum() == len(cancelled) - 1
    assert "1 cancelled ones still run to their end on the cluster's workers" in str(caught.value)


def test_a_stop_while_a_result_is_read_stops_the_sweep_and_fails_no_task(tmp_path):
    """The stop handler raises where the parent happens to be; inside ``future.result()`` that is not the
    task's failure (it was recorded as ``failed: FitInterrupted`` and the sweep ran on to exit 1)."""
    from regime_dmm.sweep import TASKS_FOLDER, _run
    from regime_dmm.training.restarts import FitInterrupted

    frame = markets()
    todo = [t for t in plan_sweep(frame, configs={"tiny": CONFIG}) if t.markets != ("flat",)]

    class Future:
        def __init__(self, key):
            self.key = key

        def result(self):
            raise FitInterrupted("stopped while starting")  # what the handler raises mid-call

    class Client:
        cancelled: list = []

        def submit(self, *_args, key, **_kwargs):
            return Future(key)

        def cancel(self, futures):
            Client.cancelled += futures

    (tmp_path / TASKS_FOLDER).mkdir()
    rows: dict = {}
    with pytest.raises(FitInterrupted):
        fake = SimpleNamespace(as_completed=iter, KilledWorker=distributed.KilledWorker)
        _run(fake, Client(), todo, frame, 0.2, tmp_path, False, False, rows, lambda _m: None, False)
    assert {r["status"] for r in rows.values()} == {"cancelled"} and len(rows) == len(todo)
    assert len(Client.cancelled) == len(todo) and not list((tmp_path / TASKS_FOLDER).iterdir())
