"""Choosing K: held-out one-step-ahead likelihood, BIC, parameter counts, `regime-dmm select`."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from regime_dmm import FitConfig, fit
from regime_dmm.cli import main, parse_regimes
from regime_dmm.data import MarketSpec, simulate_markets
from regime_dmm.errors import ConfigError
from regime_dmm.selection import COLUMNS, plot_selection, score_fit, select_regimes

DAYS = 1500  # prices per market; the last 20 % of the returns are held out
CLASSIC = FitConfig().replace(model={"classic": True}, training={"restarts": 1})


pytestmark = pytest.mark.usefixtures("one_thread")


def _two_regimes(days: int = DAYS, seed: int = 1) -> pd.DataFrame:
    spec = MarketSpec(
        name="a",
        start="2015-01-02",
        freq="B",
        usage=(0.6, 0.4),
        leave_rates=(0.02, 0.03),
        means=(0.0, 0.0),
        sds=(0.005, 0.03),
    )
    return simulate_markets([spec], seed=seed, n_days=days, regimes=("calm", "volatile")).frame


def _three_regimes(days: int = DAYS, seed: int = 2) -> pd.DataFrame:
    spec = MarketSpec(
        name="b",
        start="2015-01-02",
        freq="B",
        usage=(0.4, 0.35, 0.25),
        leave_rates=(0.03, 0.04, 0.05),
        means=(0.0, 0.0, 0.0),
        sds=(0.004, 0.016, 0.06),
    )
    return simulate_markets([spec], seed=seed, n_days=days, regimes=("calm", "volatile", "panic")).frame


@pytest.fixture(scope="module")
def two_regime_table():
    return select_regimes(_two_regimes(), ks=[3, 2], config=CLASSIC, workers=1)


def test_two_regime_data_choose_two(two_regime_table):
    table = two_regime_table
    assert list(table.columns) == COLUMNS
    assert list(table["heldout_loglik"]) == sorted(table["heldout_loglik"], reverse=True)
    by_k = table.set_index("K")
    # A third regime may match the held-out days about as well, never clearly better.
    assert table["K"].iloc[0] == 2 or by_k.loc[3, "heldout_loglik"] - by_k.loc[2, "heldout_loglik"] < 1.0
    assert by_k.loc[2, "bic"] < by_k.loc[3, "bic"]
    # Classic, one market: initial K-1, transition K(K-1), means K, sds K.
    assert by_k.loc[2, "n_params"] == 1 + 2 + 2 + 2
    assert by_k.loc[3, "n_params"] == 2 + 6 + 3 + 3
    n_returns = DAYS - 1
    assert (by_k["heldout_days"] == n_returns - math.floor(0.8 * n_returns)).all()
    assert (by_k["train_days"] == math.floor(0.8 * n_returns)).all()
    assert by_k["waic"].isna().all() and any("waic" in note for note in table.attrs["notes"])
    assert (by_k["fit_seconds"] > 0).all()
    assert isinstance(plot_selection(table), Figure)


def test_heldout_score_is_the_forward_filtered_predictive_likelihood(two_regime_table):
    full = _two_regimes()
    n_train = math.floor(0.8 * (DAYS - 1))
    config = CLASSIC.replace(model={"num_regimes": 2})
    result = fit(full.iloc[: n_train + 1], config)
    row = score_fit(result, full)
    assert row["train_loglik"] == pytest.approx(result.log_likelihood, abs=1e-6)
    expected = two_regime_table.set_index("K").loc[2]
    assert row["heldout_loglik"] == pytest.approx(expected["heldout_loglik"], abs=1e-6)
    # By hand: the filter carried forward from the training period, log p(r_t | r_<t) summed.
    m = result.markets[0]
    mean, sd = np.array(m.emission["return_mean"]), np.array(m.emission["return_sd"])
    p, total = m.filtered[-1], 0.0
    for r in np.diff(np.log(full["price"].to_numpy()))[n_train:]:
        joint = (p @ m.base_transition) * np.exp(-0.5 * ((r - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
        total += math.log(joint.sum())
        p = joint / joint.sum()
    assert row["heldout_loglik"] == pytest.approx(total, abs=1e-6)


def test_three_regime_data_choose_three():
    table = select_regimes(_three_regimes(), ks=[2, 3], config=CLASSIC, workers=1)
    by_k = table.set_index("K")
    assert table["K"].iloc[0] == 3
    assert by_k.loc[3, "heldout_loglik"] - by_k.loc[2, "heldout_loglik"] > 5.0
    assert by_k.loc[3, "bic"] < by_k.loc[2, "bic"]
    assert bool(by_k.loc[3, "chosen"]) and not bool(by_k.loc[2, "chosen"])
    assert by_k.loc[3, "heldout_se"] == 0.0 and by_k.loc[2, "heldout_se"] > 0


def test_bad_arguments():
    with pytest.raises(ConfigError, match=">= 2"):
        select_regimes(_two_regimes(100), ks=[1, 2], config=CLASSIC)
    with pytest.raises(ConfigError, match="holdout"):
        select_regimes(_two_regimes(100), ks=[2], config=CLASSIC, holdout=1.5)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="workers"):
            select_regimes(_two_regimes(100), ks=[2], config=CLASSIC, workers=bad)
    assert parse_regimes("2..4") == [2, 3, 4]
    assert parse_regimes("3, 2,3") == [3, 2]
    for bad in ("4..2", "x", "1,2", ""):
        with pytest.raises(ConfigError):
            parse_regimes(bad)


def test_cli_select(tmp_path, capsys):
    data = tmp_path / "prices.csv"
    _two_regimes(days=200, seed=4)[["date", "market", "price"]].to_csv(data, index=False, date_format="%Y-%m-%d")
    out = tmp_path / "sel"
    args = [
        "select",
        "--data",
        str(data),
        "--classic",
        "--regimes",
        "2..3",
        "--restarts",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "heldout_loglik" in printed and "best by held-out log-likelihood" in printed
    table = pd.read_csv(out / "selection.csv")
    assert sorted(table["K"]) == [2, 3] and {"heldout_loglik", "bic", "n_params"} <= set(table.columns)
    assert (out / "selection.png").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # An existing, non-empty folder is refused (and kept) without --overwrite; bad --regimes exit 2.
    assert main(args) == 2
    assert "overwrite" in capsys.readouterr().err
    assert (out / "selection.csv").exists()
    assert main(["select", "--data", str(data), "--regimes", "3..2", "--out", str(tmp_path / "x")]) == 2
    assert (
        main(["select", "--data", str(tmp_path / "missing.csv"), "--regimes", "2", "--out", str(tmp_path / "y")]) == 2
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_fits_in_worker_processes_give_the_table_of_one_process(monkeypatch):
    """The K fitted side by side in spawned processes (one torch thread each) give the same rows as the fits one
    after another in this process with two threads (the DMM, the default model): same held-out and training
    scores, BIC, choice and order."""
    config = FitConfig().replace(training={"epochs": 40, "anneal_epochs": 10})
    data = _two_regimes(days=500)
    monkeypatch.setenv("REGIME_DMM_THREADS", "2")  # the one-process side at the single-fit default
    serial = select_regimes(data, ks=[3, 2], config=config, workers=1)
    monkeypatch.setenv("REGIME_DMM_THREADS", "1")
    parallel = select_regimes(data, ks=[3, 2], config=config, workers=2)
    assert list(parallel.columns) == COLUMNS
    pd.testing.assert_frame_equal(
        parallel.drop(columns="fit_seconds"), serial.drop(columns="fit_seconds"), check_exact=True
    )
    assert (parallel["fit_seconds"] > 0).all()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_ends_the_worker_processes_and_writes_nothing(tmp_path, sig, code):
    """A terminal's Ctrl-C reaches the whole process group: the workers ignore it (no traceback from each), the
    parent stops them, exits 130, leaves no worker behind and writes no output folder. A SIGTERM to the parent
    alone (a scheduler's stop) does the same with exit 143."""
    out = tmp_path / "sel"
    proc = subprocess.Popen(
        [sys.executable, "-m", "regime_dmm.cli", "select", "--regimes", "2..5", "--workers", "2", "--out", str(out)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: list[str] = []
    while len(workers) < 2 and proc.poll() is None:  # the fits' processes
        time.sleep(0.2)
        found = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
        workers = found.stdout.split()
    assert proc.poll() is None, "select ended before its workers started"
    time.sleep(2.0)  # into the workers' imports or fits
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    if sig == signal.SIGINT:
        assert "interrupted" in stderr
    end = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < end:
        time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "worker processes outlived select"
    assert not out.exists()


def test_default_workers_give_each_fit_two_cores(monkeypatch):
    """The command line's default (workers=None): one process per two cores, at most one per K - on 2 cores one
    process (a fit there runs best on two threads); on 16 cores, five K at once."""
    from regime_dmm import selection

    monkeypatch.setattr(selection, "available_cores", lambda: 2)
    assert selection._check_workers(None, 5) == 1
    monkeypatch.setattr(selection, "available_cores", lambda: 16)
    assert selection._check_workers(None, 5) == 5 and selection._check_workers(None, 3) == 3
    monkeypatch.setattr(selection, "available_cores", lambda: 1)
    assert selection._check_workers(None, 5) == 1
    assert selection._check_workers(2, 5) == 2 and selection._check_workers(8, 3) == 3
