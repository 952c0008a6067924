"""The thread policy (regime_dmm.threads): fixed counts, the environment variable, and the default
count shared among the fits running on the machine (a registry of locked files)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import regime_dmm as rd
from regime_dmm.errors import ConfigError
from regime_dmm.threads import FitRegistry, available_cores, refresh_threads, resolve_threads, using_threads

from helpers import two_regime_market


def test_threads_policy_and_fit_threads_are_restored(monkeypatch):
    monkeypatch.delenv("REGIME_DMM_THREADS", raising=False)
    assert resolve_threads(None) == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setenv("REGIME_DMM_THREADS", "1")
    assert resolve_threads(None) == 1
    assert resolve_threads(3) == 3 and resolve_threads(np.int64(2)) == 2
    monkeypatch.setenv("REGIME_DMM_THREADS", "many")
    with pytest.raises(ConfigError, match="REGIME_DMM_THREADS"):
        resolve_threads(None)
    with pytest.raises(ConfigError):
        resolve_threads(0)
    before = torch.get_num_threads()
    with using_threads(1 if before != 1 else 2) as n:
        assert torch.get_num_threads() == n != before
    assert torch.get_num_threads() == before
    # a fit runs with the count it is given and gives the caller's back
    seen: list[int] = []
    monkeypatch.delenv("REGIME_DMM_THREADS")
    rd.fit(
        two_regime_market(200, seed=3),
        rd.FitConfig().replace(model={"num_regimes": 2}, training={"epochs": 3, "restarts": 1}),
        threads=1,
        log=lambda _line: seen.append(torch.get_num_threads()),
    )
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


def test_registry_counts_live_fits_only(tmp_path):
    registry = FitRegistry(tmp_path)
    assert registry.count() == 1  # nobody registered: this fit alone
    mine = registry.enter()
    assert mine is not None
    other = FitRegistry(tmp_path)  # another fit (a lock on another open file counts even in this process)
    assert other.enter() is not None
    assert registry.count() == 2
    other.leave()
    assert registry.count() == 1
    # a fit that died without leaving is not counted, and its file goes
    code = "import os; from regime_dmm.threads import FitRegistry; FitRegistry(os.environ['D']).enter(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, D=str(tmp_path)), check=True)
    assert len(list(tmp_path.glob("*.lock"))) == 2
    assert registry.count() == 1
    assert len(list(tmp_path.glob("*.lock"))) == 1
    registry.leave(mine)
    assert not list(tmp_path.glob("*.lock"))


def test_default_policy_shares_the_cores_among_running_fits(tmp_path, monkeypatch):
    monkeypatch.delenv("REGIME_DMM_THREADS", raising=False)
    registry = FitRegistry(tmp_path)
    before = torch.get_num_threads()
    alone = max(1, min(2, available_cores()))
    with using_threads(None, registry=registry) as n:
        assert n == alone == torch.get_num_threads()
        other = FitRegistry(tmp_path)
        other.enter()  # a second fit starts
        monkeypatch.setattr("regime_dmm.threads.RECOUNT_SECONDS", 0.0)
        refresh_threads()
        assert torch.get_num_threads() == max(1, min(2, available_cores() // 2))
        other.leave()  # and ends
        refresh_threads()
        assert torch.get_num_threads() == alone
    assert torch.get_num_threads() == before
    assert not list(tmp_path.glob("*.lock"))
    # a fixed count registers (others count it) but does not move, even alone on the machine
    with using_threads(1, registry=registry):
        other = FitRegistry(tmp_path)
        token = other.enter()
        assert token is not None and other.count() == 2  # the fixed-count fit is counted by the others
        other.leave(token)
        refresh_threads()
        assert torch.get_num_threads() == 1  # the default policy would take min(2, cores) here


def test_the_thread_count_does_not_change_the_result():
    """A default-policy fit may move between 1 and 2 threads as other fits start and end: the regimes it
    finds must not depend on it (on the embedded default data too: README, Threads)."""
    frame = two_regime_market(400, seed=5)
    config = rd.FitConfig().replace(model={"num_regimes": 2}, training={"epochs": 20, "restarts": 1})
    one = rd.fit(frame, config, threads=1)
    two = rd.fit(frame, config, threads=2)
    pd.testing.assert_frame_equal(one.regimes_frame(), two.regimes_frame(), check_exact=True)
    assert one.log_likelihood == two.log_likelihood
