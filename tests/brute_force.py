"""Brute-force enumeration of every regime path: the reference the exact-inference core is checked against.

Test helper only (K^T paths: tiny problems).
"""

from __future__ import annotations

import itertools

import numpy as np


def brute_force(log_init: np.ndarray, log_trans: np.ndarray, obs_ll: np.ndarray):
    """Enumerate all K^T paths of one series: ``(log Z, smoothed (T, K), most probable path (T,))``.

    Shapes: ``log_init (K,)``, ``log_trans (T, K, K)`` (entry 0 unused), ``obs_ll (T, K)``.
    """
    steps, k = obs_ll.shape
    paths = np.array(list(itertools.product(range(k), repeat=steps)))
    scores = log_init[paths[:, 0]] + obs_ll[np.arange(steps), paths].sum(1)
    for t in range(1, steps):
        scores = scores + log_trans[t, paths[:, t - 1], paths[:, t]]
    log_z = np.logaddexp.reduce(scores)
    weights = np.exp(scores - log_z)
    smoothed = np.zeros((steps, k))
    for t in range(steps):
        np.add.at(smoothed[t], paths[:, t], weights)
    return log_z, smoothed, paths[np.argmax(scores)]
