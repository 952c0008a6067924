"""Pyro models of regime-switching markets.

* :class:`ExactRegimeDMM` - Deep Markov Model, regimes marginalised exactly (default).
* :class:`RelaxedRegimeDMM` - Gumbel-Softmax regimes and an inference network (``--inference relaxed``).
* :class:`ClassicMarkovSwitching` - maximum-likelihood Markov-switching model (``--classic``).
"""

from .base import AnnealState, ModelData, Potentials, RegimeModel
from .classic import ClassicMarkovSwitching
from .exact_dmm import ExactRegimeDMM
from .relaxed_dmm import RelaxedRegimeDMM

__all__ = ["AnnealState", "ClassicMarkovSwitching", "ExactRegimeDMM", "ModelData", "Potentials", "RegimeModel", "RelaxedRegimeDMM"]
