"""Scoring regimes against the truth of simulated data.

The reference is the *oracle*: forward-backward with the TRUE parameters of the
simulation, the best any method can do from the returns.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm

from .inference import posterior

__all__ = ["named_accuracy", "oracle_states"]


def oracle_states(returns: np.ndarray, params: dict) -> np.ndarray:
    """Most probable regime per day under the true Gaussian HMM ``params`` (initial, transition, mean, sd)."""
    k = len(params["sd"])
    ll = norm.logpdf(np.asarray(returns)[:, None], params["mean"][None], params["sd"][None])
    steps = len(returns)
    log_trans = torch.tensor(np.log(params["transition"])).expand(steps, k, k)
    post = posterior(torch.tensor(np.log(params["initial"]))[None], log_trans[None], torch.tensor(ll)[None])
    return post.smoothed[0].numpy().argmax(-1)


def named_accuracy(probs: np.ndarray, truth: np.ndarray) -> float:
    """Share of days whose most probable regime (by index, i.e. by name) is the true one."""
    return float((np.asarray(probs).argmax(-1) == np.asarray(truth)).mean())
