"""End to end: regimes of simulated two-market data against the truth and the oracle.

The oracle is forward-backward with the TRUE parameters (the best any method can do).
"""

import numpy as np
import pytest

import regime_dmm as rd
from regime_dmm.evaluation import oracle_states

pytestmark = pytest.mark.slow  # end-to-end fits


@pytest.fixture(scope="module")
def default_fit():
    cfg = rd.FitConfig().replace(training={"restarts": 1, "seed": 0})
    return rd.fit(None, cfg)


def test_named_regime_accuracy_is_near_the_oracle(default_fit):
    truth = default_fit.truth
    for m in default_fit.markets:
        true = truth.true_regimes[m.name]
        assert len(true) == len(m.returns)
        ours = (m.smoothed.argmax(-1) == true).mean()
        best = (oracle_states(m.returns, truth.params[m.name]) == true).mean()
        assert ours >= 0.9 * best, (m.name, ours, best)
        assert (m.usage > 0.01).all(), (m.name, m.usage)  # all four regimes in use
        assert set(np.unique(m.smoothed.argmax(-1))) == {0, 1, 2, 3}


def test_usage_and_durations_close_to_truth(default_fit):
    truth = default_fit.truth
    for m in default_fit.markets:
        true = truth.true_regimes[m.name]
        true_usage = np.bincount(true, minlength=4) / len(true)
        assert np.abs(m.usage - true_usage).max() < 0.08, (m.name, m.usage, true_usage)
        true_diag = np.diag(truth.params[m.name]["transition"])
        assert np.abs(np.diag(m.transition) - true_diag)[:3].max() < 0.1


def test_same_seed_same_result():
    cfg = rd.FitConfig().replace(training={"restarts": 1, "epochs": 20})
    data = rd.simulate_default(1, n_days=300).frame
    a = rd.fit(data, cfg).regimes_frame()
    b = rd.fit(data, cfg).regimes_frame()
    assert a.equals(b)


# --- issue #9: the names come out right on seeds where 0.2.0's fit did not ---------------------------

#: Simulator seeds of the default data (Gaussian shocks). 0.2.0's defaults (``model: {pooling: none,
#: min_ratio: 0, emission: gaussian}``, 3 restarts) reached, as named accuracy / oracle, traditional_cre
#: 1.001 and tokenized_reit 0.946 on seed 0, 1.002 and 0.976 on seed 3, and **0.634** and 0.950 on seed 6
#: (calm split in two, volatile merged with panic), measured with
#: ``python benchmarks/bench_recovery.py --seeds 5 --first-seed 2 --shocks gaussian --config <that>.yaml``
#: (seeds 2-6) and ``--seeds 2`` (seeds 0-1). The test fits with one restart, to stay quick.
SEMANTIC_SEEDS = [0, 3, 6]


@pytest.mark.parametrize("seed", SEMANTIC_SEEDS)
def test_named_regimes_near_the_oracle_in_both_markets(seed):
    sim = rd.simulate_default(seed)
    fit = rd.fit(sim.frame, rd.FitConfig().replace(training={"restarts": 1}), threads=1)
    for m in fit.markets:
        truth = sim.true_regimes[m.name]
        observed = np.asarray(m.observed, dtype=bool)
        ours = (m.smoothed.argmax(-1) == truth)[observed].mean()
        best = (oracle_states(m.returns, sim.params[m.name], m.span) == truth)[observed].mean()
        assert ours >= 0.9 * best, (seed, m.name, ours, best)
