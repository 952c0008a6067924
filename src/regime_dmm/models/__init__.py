"""Pyro models of regime-switching markets.

* :class:`ExactRegimeDMM` - Deep Markov Model, regimes marginalised exactly (default).
* :class:`ClassicMarkovSwitching` - maximum-likelihood Markov-switching model (``--classic``).
"""

from .base import AnnealState, ModelData, Potentials, RegimeModel
from .classic import ClassicMarkovSwitching
from .exact_dmm import ExactRegimeDMM

__all__ = ["AnnealState", "ClassicMarkovSwitching", "ExactRegimeDMM", "ModelData", "Potentials", "RegimeModel"]
