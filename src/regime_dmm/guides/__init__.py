"""Pyro guides: point-estimate and mean-field guides for the global parameters."""

from .globals import make_guide, point_estimate

__all__ = ["make_guide", "point_estimate"]
