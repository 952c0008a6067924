"""Pyro guides: point-estimate and mean-field guides for the global parameters, and the
relaxed DMM's amortised inference network."""

from .globals import make_guide, point_estimate
from .inference_network import inference_marginals, make_relaxed_guide

__all__ = ["inference_marginals", "make_guide", "make_relaxed_guide", "point_estimate"]
