"""Shared fixtures of the test suite.

* ``one_thread``: one torch intra-op thread for a module of small fits (on a busy 2-core machine
  two threads on tiny tensors are many times slower); opt in with
  ``pytestmark = pytest.mark.usefixtures("one_thread")`` (it sets ``REGIME_DMM_THREADS=1`` too, the
  count fits use).
* ``small_fit``: memoised small fits (one per distinct data and configuration in a session), so
  modules that need the same small fit share it.

Helpers used by several modules live in ``helpers.py`` (head, write_csv_frame, model_and_data)
and ``brute_force.py`` (the reference enumeration of every regime path).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import regime_dmm as rd


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    previous = os.environ.get("REGIME_DMM_THREADS")
    torch.set_num_threads(1)
    os.environ["REGIME_DMM_THREADS"] = "1"  # fits set their own thread count (regime_dmm.threads)
    yield
    torch.set_num_threads(threads)
    if previous is None:
        os.environ.pop("REGIME_DMM_THREADS", None)
    else:
        os.environ["REGIME_DMM_THREADS"] = previous


@pytest.fixture(scope="session")
def small_fit():
    """``small_fit(seed, days, **config_sections)``: ``rd.fit`` of ``simulate_default(seed, n_days=days)``
    with the configuration changes given, computed once per session for each distinct call."""
    cache: dict[str, rd.RegimeFit] = {}

    def get(seed: int, days: int, **sections) -> rd.RegimeFit:
        key = json.dumps([seed, days, sections], sort_keys=True)
        if key not in cache:
            frame = rd.simulate_default(seed, n_days=days).frame
            frame.attrs.clear()
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                cache[key] = rd.fit(frame, rd.FitConfig().replace(**sections))
            finally:
                torch.set_num_threads(threads)
        return cache[key]

    return get
