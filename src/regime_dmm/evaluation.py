"""Scoring regimes against the truth of simulated data.

The reference is the *oracle*: forward-backward with the TRUE parameters of the
simulation, the best any method can do from the returns.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm
from scipy.stats import t as student_t

from .inference import posterior

__all__ = ["named_accuracy", "oracle_states"]


def oracle_states(returns: np.ndarray, params: dict, span: np.ndarray | None = None) -> np.ndarray:
    """Most probable regime per day under the true HMM ``params`` (initial, transition, mean, sd; and ``df``
    when the shocks are Student-t: unit-variance t shocks, as :func:`~regime_dmm.data.simulate_markets` draws).

    ``returns (T,)``: NaN on masked days (no observation: the chain runs through them);
    ``span (T,)``: days each return covers (default 1): a regime's mean scales with it and its
    sd with its square root, as in the model.
    """
    returns = np.asarray(returns, dtype=float)
    k = len(params["sd"])
    n = np.ones_like(returns) if span is None else np.asarray(span, dtype=float)
    observed = np.isfinite(returns)
    x = np.where(observed, returns, 0.0)[:, None]
    loc, sd = params["mean"][None] * n[:, None], params["sd"][None] * np.sqrt(n)[:, None]
    if "df" in params:  # a multi-day sum of t shocks is not t: approximated by one t of the summed variance
        df = float(params["df"])
        ll = student_t.logpdf(x, df, loc, sd * np.sqrt((df - 2.0) / df))
    else:
        ll = norm.logpdf(x, loc, sd)
    ll = np.where(observed[:, None], ll, 0.0)
    steps = len(returns)
    log_trans = torch.tensor(np.log(params["transition"])).expand(steps, k, k)
    post = posterior(torch.tensor(np.log(params["initial"]))[None], log_trans[None], torch.tensor(ll)[None])
    return post.smoothed[0].numpy().argmax(-1)


def named_accuracy(probs: np.ndarray, truth: np.ndarray, observed: np.ndarray | None = None) -> float:
    """Share of days (the observed ones, when ``observed`` is given) whose most probable regime (by index,
    i.e. by name) is the true one."""
    hit = np.asarray(probs).argmax(-1) == np.asarray(truth)
    return float(hit.mean() if observed is None else hit[np.asarray(observed, dtype=bool)].mean())
