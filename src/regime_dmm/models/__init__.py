"""Pyro models of regime-switching markets, one variant per module, all built as ``Model(dims, hyper)``.

* :class:`ExactRegimeDMM` - Deep Markov Model, regimes marginalised exactly (default).
* :class:`RelaxedRegimeDMM` - Gumbel-Softmax regimes, trained with an inference network (``--inference relaxed``).
* :class:`ClassicMarkovSwitching` - maximum-likelihood Markov-switching model (``--classic``).

Shared pieces: :class:`ModelDims`, :class:`Potentials`, :class:`AnnealState`, :class:`StepContext`
(:mod:`.base`), the anti-collapse penalties (:mod:`.penalties`) and the networks (:mod:`.networks`).
"""

from .base import AnnealState, ModelDims, Potentials, RegimeModel, StepContext, no_penalties
from .classic import ClassicHyper, ClassicMarkovSwitching
from .exact_dmm import ExactDMMHyper, ExactRegimeDMM
from .relaxed_dmm import RelaxedDMMHyper, RelaxedRegimeDMM

__all__ = [
    "AnnealState",
    "ClassicHyper",
    "ClassicMarkovSwitching",
    "ExactDMMHyper",
    "ExactRegimeDMM",
    "ModelDims",
    "Potentials",
    "RegimeModel",
    "RelaxedDMMHyper",
    "RelaxedRegimeDMM",
    "StepContext",
    "no_penalties",
]
