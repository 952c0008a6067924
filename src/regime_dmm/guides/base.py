"""The interface every guide offers (a :class:`typing.Protocol`: guides need not inherit from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.distributions import biject_to
from torch.distributions.constraints import Constraint

from ..data.features import ModelData
from ..models.base import RegimeModel, StepContext

__all__ = ["GlobalsPosterior", "RegimeGuide", "Values"]

#: Global parameter values: site name -> constrained value.
Values = dict[str, torch.Tensor]


@dataclass(frozen=True)
class GlobalsPosterior:
    """What a trained guide says about the global parameters, as plain tensors (no Pyro parameter store).

    ``point``: site name -> constrained point estimate (the mode for MAP and point-mass guides, the median
    for the mean-field normal guide). ``normal``: for the normal guide, site name -> ``(loc, scale,
    support)``, the mean-field normal's location and scale in the unconstrained space (the shape of
    ``biject_to(support).inv`` of the value) and the site's support; None for a point estimate.
    A draw is ``biject_to(support)(loc + scale * eps)``, ``eps ~ N(0, 1)``, as Pyro's ``AutoNormal`` samples.
    """

    point: Values
    normal: dict[str, tuple[torch.Tensor, torch.Tensor, Constraint]] | None = None

    @property
    def is_point_estimate(self) -> bool:
        """True when every draw is the point estimate."""
        return self.normal is None

    def draw(self) -> Values:
        """One draw of every global site (constrained values), from torch's global random state; the
        point estimate (copied) for a point estimate."""
        if self.normal is None:
            return {name: value.clone() for name, value in self.point.items()}
        return {
            name: biject_to(support)(loc + scale * torch.randn_like(loc))
            for name, (loc, scale, support) in self.normal.items()
        }


class RegimeGuide(Protocol):
    """A Pyro guide of a regime model's global parameters, with the queries a fitted model asks.

    ``kind``: ``"map"``, ``"normal"``, ``"classic"`` or ``"relaxed"``; ``is_point_estimate``: True
    when its :class:`GlobalsPosterior` always draws the point estimate.
    """

    kind: str

    @property
    def is_point_estimate(self) -> bool:
        """True when the guide's :class:`GlobalsPosterior` always draws the point estimate."""
        ...

    def __call__(self, data: ModelData, ctx: StepContext | None = None) -> Any:
        """The Pyro guide (same arguments as the model)."""
        ...

    def point_estimate(self, data: ModelData) -> Values:
        """Point estimate of every global site."""
        ...

    def read_out(self, data: ModelData) -> GlobalsPosterior:
        """The point estimate and, where the guide has one, its distribution of the globals, as plain
        tensors (called once, with the guide's parameters in Pyro's store)."""
        ...

    def regime_marginals(self, model: RegimeModel, data: ModelData, values: Values) -> torch.Tensor | None:
        """The guide's own regime marginals ``(M, T, K)``, or None when the exact posterior is meant."""
        ...

    def describe_draws(self, num_draws: int) -> str:
        """What :meth:`GlobalsPosterior.draw` returns, in words."""
        ...
