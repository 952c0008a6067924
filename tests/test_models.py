"""Model structure: ordering by construction, penalties as factors, classic = established MLE."""

import numpy as np
import pandas as pd
import pytest
import torch
from pyro import poutine

import regime_dmm as rd
from regime_dmm.config import PenaltyConfig
from regime_dmm.data import load_prices, simulate_markets
from regime_dmm.inference import log_normalizer
from regime_dmm.models import AnnealState, StepContext

from helpers import model_and_data


def small_frame(seed=3, n_days=400):
    spec = dict(
        name="m",
        start="2020-01-01",
        freq="B",
        usage=(0.7, 0.3),
        leave_rates=(0.03, 0.07),
        means=(0.0, 0.0),
        sds=(0.01, 0.03),
    )
    return simulate_markets([spec], seed=seed, n_days=n_days, regimes=("calm", "volatile"))


def test_regimes_are_ordered_by_volatility_for_any_parameters():
    cfg = rd.FitConfig()
    model, data, _ = model_and_data(cfg, rd.simulate_default(0, n_days=200).frame)
    for seed in range(5):
        torch.manual_seed(seed)
        with poutine.trace():
            pot = model.log_potentials(data)  # globals drawn from the prior
        scales = pot.emission_scale[..., 0]
        assert (scales.diff(dim=-1) > 0).all()


def test_penalties_enter_the_model_as_factors():
    cfg = rd.FitConfig()
    model, data, _ = model_and_data(cfg, rd.simulate_default(0, n_days=200).frame)
    state = AnnealState(penalties=PenaltyConfig(diversity_weight=0.2, separation_weight=0.1, entropy_weight=0.5))
    ctx = StepContext(anneal=state)
    torch.manual_seed(0)
    trace = poutine.trace(model.model).get_trace(data, ctx)
    for name in ("log_likelihood", "separation_penalty", "entropy_penalty"):
        assert name in trace.nodes
    assert trace.nodes["entropy_penalty"]["fn"].log_factor.item() == pytest.approx(
        -ctx.diagnostics["entropy_penalty"].item()
    )


def test_classic_matches_hmmlearn_and_statsmodels():
    hmmlearn = pytest.importorskip("hmmlearn.hmm")
    sm = pytest.importorskip("statsmodels.api")
    sim = small_frame()
    frame = load_prices(sim.frame)
    r = np.diff(np.log(frame["price"].to_numpy())) * 100  # percent, like the baselines
    df = pd.DataFrame({"date": frame["date"].iloc[1:].to_numpy(), "market": "m", "return": r})
    cfg = rd.FitConfig().replace(model={"classic": True, "num_regimes": 2}, training={"restarts": 3})
    fit = rd.fit(df, cfg)
    ours = fit.log_likelihood
    # hmmlearn, best of several seeds (free initial distribution, like classic mode)
    best = -np.inf
    for seed in range(5):
        h = hmmlearn.GaussianHMM(n_components=2, covariance_type="diag", n_iter=1000, tol=1e-10, random_state=seed)
        h.fit(r[:, None])
        best = max(best, h.score(r[:, None]))
    assert ours >= best - 1e-3
    assert ours == pytest.approx(best, abs=0.05)
    # statsmodels uses the stationary initial distribution: within about a nat
    res = sm.tsa.MarkovRegression(r, k_regimes=2, switching_variance=True).fit(disp=False)
    assert abs(ours - res.llf) < 1.5
    # the same parameters give the same likelihood as hmmlearn's to 1e-8
    obs_ll = torch.distributions.Normal(
        torch.tensor(h.means_[:, 0]), torch.tensor(np.sqrt(h.covars_[:, 0, 0]))
    ).log_prob(torch.tensor(r)[:, None])
    log_trans = torch.tensor(np.log(h.transmat_)).expand(len(r), 2, 2)
    ll = log_normalizer(torch.tensor(np.log(h.startprob_ + 1e-300))[None], log_trans[None], obs_ll[None]).item()
    assert ll == pytest.approx(h.score(r[:, None]), abs=1e-6)
    # reported emission is in the units given, calm first
    em = fit.summary()["markets"]["m"]["emission"]["return_sd"]
    assert em["calm"] < em["volatile"]
    assert em["calm"] == pytest.approx(1.0, rel=0.25) and em["volatile"] == pytest.approx(3.0, rel=0.25)
