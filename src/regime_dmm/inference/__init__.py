"""Exact inference core: log Z, filtered/smoothed/pairwise marginals, Viterbi, forecasts."""

from .exact import (
    HMMPosterior,
    brute_force,
    forecast,
    log_normalizer,
    posterior,
    stationary_distribution,
    viterbi,
)

__all__ = [
    "HMMPosterior",
    "brute_force",
    "forecast",
    "log_normalizer",
    "posterior",
    "stationary_distribution",
    "viterbi",
]
