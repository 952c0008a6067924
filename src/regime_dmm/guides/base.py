"""The interface every guide offers (a :class:`typing.Protocol`: guides need not inherit from it)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..data.features import ModelData
from ..models.base import RegimeModel, StepContext

__all__ = ["RegimeGuide", "Values"]

#: Global parameter values: site name -> constrained value.
Values = dict[str, torch.Tensor]


class RegimeGuide(Protocol):
    """A Pyro guide of a regime model's global parameters, with the queries a fitted model asks.

    ``kind``: ``"map"``, ``"normal"``, ``"classic"`` or ``"relaxed"``; ``is_point_estimate``: True
    when :meth:`draw` always returns the point estimate.
    """

    kind: str

    @property
    def is_point_estimate(self) -> bool:
        """True when :meth:`draw` always returns the point estimate."""
        ...

    def __call__(self, data: ModelData, ctx: StepContext | None = None) -> Any:
        """The Pyro guide (same arguments as the model)."""
        ...

    def point_estimate(self, data: ModelData) -> Values:
        """Point estimate of every global site."""
        ...

    def draw(self, data: ModelData) -> Values:
        """One draw of every global site."""
        ...

    def regime_marginals(self, model: RegimeModel, data: ModelData, values: Values) -> torch.Tensor | None:
        """The guide's own regime marginals ``(M, T, K)``, or None when the exact posterior is meant."""
        ...

    def describe_draws(self, num_draws: int) -> str:
        """What :meth:`draw` returns, in words."""
        ...
