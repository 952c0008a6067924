"""Exact inference core: log Z, filtered/smoothed/pairwise marginals, Viterbi, forecasts.

Pure tensor maths on log-potentials (after dynamax's ``hidden_markov_model/inference.py``):
it imports nothing else of the package, and every model, guide, trainer and consumer
calls it rather than re-implementing the recursions.
"""

from .exact import (
    ExpectedStatistics,
    HMMPosterior,
    expected_statistics,
    forecast,
    last_filtered,
    log_normalizer,
    posterior,
    stationary_distribution,
    viterbi,
)

__all__ = [
    "ExpectedStatistics",
    "expected_statistics",
    "HMMPosterior",
    "forecast",
    "last_filtered",
    "log_normalizer",
    "posterior",
    "stationary_distribution",
    "viterbi",
]
