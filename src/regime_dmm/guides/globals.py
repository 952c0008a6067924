"""Guides for the continuous global parameters of the exact models.

The regimes themselves need no guide: they are summed out exactly. What remains are
the globals (initial distributions, transition matrices, emission parameters):

* ``map`` (default): a point estimate, the posterior mode *in the unconstrained space*
  (:class:`pyro.infer.autoguide.AutoLaplaceApproximation`). Unlike a mode on the simplex,
  it stays finite under Dirichlet weights below 1 (the default panic weight is 0.5), and
  its Hessian gives a Laplace approximation for posterior draws.
* ``normal``: a mean-field normal in the unconstrained space (:class:`AutoNormal`).

Network weights are ``pyro.module`` parameters (point estimates) in both.
"""

from __future__ import annotations

from typing import Callable

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoLaplaceApproximation, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median, init_to_value

from ..models.base import RegimeModel
from ..models.classic import ClassicMarkovSwitching, empty_guide


def make_guide(model: RegimeModel, kind: str, init_values: dict[str, torch.Tensor]) -> Callable:
    if isinstance(model, ClassicMarkovSwitching):
        return empty_guide
    init = init_to_value(values=init_values, fallback=init_to_median)
    if kind == "map":
        return AutoLaplaceApproximation(model.model, init_loc_fn=init)
    if kind == "normal":
        return AutoNormal(model.model, init_loc_fn=init, init_scale=0.02)
    raise ValueError(f"unknown guide {kind!r}: use 'map' or 'normal'")


def point_estimate(guide: Callable, data, state=None) -> dict[str, torch.Tensor]:
    """The guide's point estimate of every global site (the median of its distribution)."""
    if guide is empty_guide:
        return {}
    with torch.no_grad():
        if isinstance(guide, AutoLaplaceApproximation):  # a Delta at the mode: trace it
            nodes = poutine.trace(guide).get_trace(data, state).nodes
            return {k: v["value"].detach() for k, v in nodes.items()
                    if v["type"] == "sample" and not k.startswith("_")}
        return {k: v.detach() for k, v in guide.median(data, state).items()}
