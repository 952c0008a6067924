"""Guides for the continuous global parameters.

The regimes themselves need no guide in the exact models: they are summed out exactly.
What remains are the globals (initial distributions, transition matrices, emission
parameters):

* ``map`` (default): a point estimate, the posterior mode *in the unconstrained space*
  (:class:`pyro.infer.autoguide.AutoLaplaceApproximation`). Unlike a mode on the simplex,
  it stays finite under Dirichlet weights below 1 (the default panic weight is 0.5), and
  its Hessian gives a Laplace approximation for posterior draws.
* ``normal``: a mean-field normal in the unconstrained space (:class:`AutoNormal`).
* :class:`PointGuide` (classic mode): point masses at ``pyro.param`` values, i.e. maximum
  likelihood under the classic model's flat priors.

Network weights are ``pyro.module`` parameters (point estimates) in every case.

Every guide offers the same small interface: ``guide(data, ctx)`` (the Pyro guide),
``point_estimate(data)``, ``read_out(data)`` (the point estimate and, for the normal guide, its
distribution as plain tensors), ``is_point_estimate``, ``regime_marginals(...)`` (None: the exact posterior
gives the regimes) and ``describe_draws(n)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoLaplaceApproximation, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median, init_to_value

from ..data.features import ModelData
from ..models.base import RegimeModel, StepContext
from ..models.classic import ClassicMarkovSwitching
from .base import GlobalsPosterior, Values

__all__ = ["GlobalsGuide", "PointGuide", "sample_site_values"]


class GlobalsGuide:
    """MAP (``kind="map"``) or mean-field normal (``kind="normal"``) guide of a model's global sites.

    ``starting_values``: name -> constrained starting value of global sites (others start at
    the prior median). Raises ``ValueError`` for an unknown ``kind``.
    """

    def __init__(self, model: RegimeModel, kind: str, starting_values: Values):
        init = init_to_value(values=starting_values, fallback=init_to_median)
        self.kind = kind
        self.auto: AutoLaplaceApproximation | AutoNormal
        if kind == "map":
            self.auto = AutoLaplaceApproximation(model.model, init_loc_fn=init)
        elif kind == "normal":
            self.auto = AutoNormal(model.model, init_loc_fn=init, init_scale=0.02)
        else:
            raise ValueError(f"unknown guide {kind!r}: use 'map' or 'normal'")

    @property
    def is_point_estimate(self) -> bool:
        """True for the MAP guide (one draw: its mode)."""
        return self.kind == "map"

    def __call__(self, data: ModelData, ctx: StepContext | None = None) -> Any:
        return self.auto(data, ctx)

    def point_estimate(self, data: ModelData) -> Values:
        """The guide's point estimate of every global site: the mode (map) or median (normal)."""
        with torch.no_grad():
            if isinstance(self.auto, AutoLaplaceApproximation):  # a Delta at the mode: trace it
                return _sample_values(self.auto, data)
            return {k: v.detach() for k, v in self.auto.median(data, None).items()}

    def read_out(self, data: ModelData) -> GlobalsPosterior:
        """The point estimate and, for the normal guide, each site's unconstrained loc and scale with its
        support (:class:`~regime_dmm.guides.base.GlobalsPosterior`)."""
        point = self.point_estimate(data)
        if not isinstance(self.auto, AutoNormal):
            return GlobalsPosterior(point)
        auto = self.auto
        assert auto.prototype_trace is not None, "the guide has run (its parameters exist)"
        with torch.no_grad():
            normal = {}
            for name, site in auto.prototype_trace.iter_stochastic_nodes():
                loc, scale = auto._get_loc_and_scale(name)
                normal[name] = (loc.detach().clone(), scale.detach().clone(), site["fn"].support)
        return GlobalsPosterior(point, normal)

    def regime_marginals(self, model: RegimeModel, data: ModelData, values: Values) -> torch.Tensor | None:
        """None: the regimes' marginals are the exact posterior's."""
        return None

    def describe_draws(self, num_draws: int) -> str:
        """What the draws of :meth:`GlobalsPosterior.draw` are, for the ArviZ export's ``note``."""
        if self.is_point_estimate:
            return (
                "point estimate (MAP of the global parameters, map guide) with one draw: no posterior "
                "uncertainty; refit with the normal guide for posterior draws"
            )
        return (
            f"{num_draws} draws of the global parameters from the {self.kind} guide (variational posterior); "
            "network weights are fixed at their fitted values"
        )


class PointGuide:
    """Point masses at ``pyro.param`` values (``classic.<name>``): the classic model's maximum likelihood.

    ``starting_values``: name -> constrained starting value of every global of ``model``.
    """

    kind = "classic"
    is_point_estimate = True

    def __init__(self, model: ClassicMarkovSwitching, starting_values: Values):
        self.constraints = model.global_constraints()
        # copies: Pyro keeps a real-valued parameter's tensor itself, and the optimiser moves it in place
        self.starting_values = {name: starting_values[name].detach().clone() for name in self.constraints}

    def parameters(self) -> Values:
        """The current values (constrained), creating the parameters from the starting values."""
        return {
            name: pyro.param(self._name(name), self.starting_values[name], constraint=constraint)
            for name, constraint in self.constraints.items()
        }

    def unconstrained(self) -> list[torch.Tensor]:
        """The parameters' unconstrained tensors (what an optimiser moves), in creation order."""
        self.parameters()
        names = {self._name(name) for name in self.constraints}
        return [p for name, p in pyro.get_param_store().named_parameters() if name in names]

    def set_values(self, values: Values) -> None:
        """Set some parameters to the constrained ``values`` (name -> tensor), e.g. an EM update."""
        store = pyro.get_param_store()
        with torch.no_grad():
            for name, value in values.items():
                store[self._name(name)] = value.detach().clone()  # never the caller's tensor (moved in place)

    @staticmethod
    def _name(name: str) -> str:
        return f"classic.{name}"

    def __call__(self, data: ModelData | None = None, ctx: StepContext | None = None) -> Values:
        values = self.parameters()
        for name, value in values.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))
        return values

    def point_estimate(self, data: ModelData | None = None) -> Values:
        """The maximum-likelihood values."""
        with torch.no_grad():
            return {k: v.detach() for k, v in self.parameters().items()}

    def read_out(self, data: ModelData | None = None) -> GlobalsPosterior:
        """The maximum-likelihood values (a point estimate)."""
        return GlobalsPosterior(self.point_estimate())

    def regime_marginals(self, model: RegimeModel, data: ModelData, values: Values) -> torch.Tensor | None:
        """None: the regimes' marginals are the exact posterior's."""
        return None

    def describe_draws(self, num_draws: int) -> str:
        """What the single draw is, for the ArviZ export's ``note``."""
        return (
            "point estimate (maximum likelihood, classic mode; the MAP under flat priors) with one draw: "
            "no posterior uncertainty"
        )


def _sample_values(guide: Callable[..., Any], data: ModelData) -> Values:
    """The values of the (non-auxiliary) sample sites of one run of ``guide``."""
    return sample_site_values(poutine.trace(guide).get_trace(data, None))


def sample_site_values(trace: Any) -> Values:
    """Name -> detached value of every sample site of a Pyro trace whose name does not start with ``_``."""
    return {
        k: cast(torch.Tensor, v["value"]).detach()
        for k, v in trace.nodes.items()
        if v["type"] == "sample" and not k.startswith("_")
    }
