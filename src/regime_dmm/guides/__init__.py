"""Pyro guides: point-estimate and mean-field guides for the global parameters, the classic
model's point masses, and the relaxed DMM's structured inference network.

All offer ``guide(data, ctx)``, ``point_estimate``, ``read_out``, ``is_point_estimate``,
``regime_marginals`` and ``describe_draws`` (see :mod:`.globals`).
"""

from .base import GlobalsPosterior, RegimeGuide, Values
from .globals import GlobalsGuide, PointGuide
from .inference_network import InferenceNetwork, RelaxedGuide, inference_marginals

__all__ = [
    "GlobalsGuide",
    "GlobalsPosterior",
    "InferenceNetwork",
    "PointGuide",
    "RegimeGuide",
    "RelaxedGuide",
    "Values",
    "inference_marginals",
]
