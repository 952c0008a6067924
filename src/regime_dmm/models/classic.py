"""Classic mode: a maximum-likelihood Markov-switching model of the return alone.

The model of statsmodels' ``MarkovRegression(switching_variance=True)`` and hmmlearn's
``GaussianHMM`` with a free initial distribution: per market and regime a mean and a
standard deviation of the return, in the units given (no normalisation, no networks,
flat priors, no penalties). The globals are sample sites with improper flat priors
(:class:`pyro.distributions.ImproperUniform`, log-density 0), so with a point-mass guide
(:class:`~regime_dmm.guides.globals.PointGuide`) the objective is the exact log-likelihood
and its optimum the maximum-likelihood estimate. The standard deviations are ordered
(cumulative positive steps above a floor), so regime 0 is always the calmest.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ..data.features import ModelData
from .base import ModelDims, Potentials, RegimeModel
from .penalties import scale_floor_penalty

__all__ = ["ClassicHyper", "ClassicMarkovSwitching"]


@dataclass(frozen=True)
class ClassicHyper:
    """Hyperparameters of :class:`ClassicMarkovSwitching`.

    ``scale_floor``: per market, the lowest standard deviation a regime may have (input
    units). Like hmmlearn's ``min_covar``: the Gaussian likelihood is unbounded on a regime
    that shrinks onto a few identical days. ``min_scale``: per market, a higher floor relative to
    the market's robust scale (``model.min_scale``), kept by a steep penalty in the optimiser and a
    clamp in EM, so that no regime is a handful of days with a scale far below the others
    (None = none). ``scale_ceiling``: per market, the highest standard deviation a regime may have:
    the root of the sum of squared returns, the sd of a regime that holds all of the market's
    variance in one day (a regime no day belongs to otherwise drifts to an infinite scale, where
    the likelihood is flat; None = none). ``min_step``: each regime's sd is at least ``exp(min_step)``
    times the next calmer one's (``ret_scale_steps`` are then the steps above ``min_step``); 0 in classic
    mode, ``log(model.min_ratio)`` in the exact DMM's warm start. ``shock_df``: per market, Student-t emissions
    with these fixed degrees of freedom and the regime's sd as their scale (the warm start of a Student-t
    DMM), else Gaussian (classic mode).
    """

    scale_floor: tuple[float, ...]
    min_scale: tuple[float, ...] | None = None
    scale_ceiling: tuple[float, ...] | None = None
    min_step: float = 0.0  # log of the smallest sd ratio of adjacent regimes (the DMM's warm start; 0 = none)
    shock_df: tuple[float, ...] | None = None  # per market, Student-t degrees of freedom (None = Gaussian)


class ClassicMarkovSwitching(RegimeModel):
    """Gaussian Markov-switching model of the return (see the module docstring)."""

    def __init__(self, dims: ModelDims, hyper: ClassicHyper):
        super().__init__(dims)
        self.hyper = hyper
        self.num_markets = dims.num_markets
        self.num_features = 1

    def global_constraints(self) -> dict[str, constraints.Constraint]:
        """Support of each global parameter, in the order the point guide creates them."""
        return {
            "initial": constraints.simplex,
            "transition": constraints.simplex,
            "ret_loc": constraints.real,
            "ret_scale_base": constraints.positive,
            "ret_scale_steps": constraints.positive,
        }

    def global_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each global parameter."""
        m, k = self.num_markets, self.num_regimes
        return {
            "initial": (m, k),
            "transition": (m, k, k),
            "ret_loc": (m, k),
            "ret_scale_base": (m,),
            "ret_scale_steps": (m, k - 1),
        }

    def sample_globals(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The globals as sample sites with flat priors (a guide or a condition gives their values)."""
        shapes = self.global_shapes()
        return {
            name: pyro.sample(name, dist.ImproperUniform(support, (), shapes[name]))
            for name, support in self.global_constraints().items()
        }

    def floor_penalty(self, scale: torch.Tensor) -> torch.Tensor:
        """The walls below ``min_scale`` and above ``scale_ceiling`` (nats; 0 between them or without
        them) for ``scale (M, K, 1)``."""
        total = torch.zeros((), dtype=scale.dtype)
        if self.hyper.min_scale is not None:
            total = total + scale_floor_penalty(scale[:, 0, 0], torch.tensor(self.hyper.min_scale, dtype=scale.dtype))
        if self.hyper.scale_ceiling is not None:  # the same wall, mirrored: -log scale above -log ceiling
            ceiling = torch.tensor(self.hyper.scale_ceiling, dtype=scale.dtype)
            total = total + scale_floor_penalty(1.0 / scale[:, -1, 0], 1.0 / ceiling)
        return total

    def scale_floor(self) -> tuple[float, ...] | None:
        """Per market, the guard's lowest return sd (input units), or None."""
        return self.hyper.min_scale

    def lowest_scale(self, dtype: torch.dtype) -> torch.Tensor:
        """``(M,)``: the lowest sd a regime may have (the higher of the two floors)."""
        floor = torch.tensor(self.hyper.scale_floor, dtype=dtype)
        if self.hyper.min_scale is not None:
            floor = floor.maximum(torch.tensor(self.hyper.min_scale, dtype=dtype))
        return floor

    def highest_scale(self, dtype: torch.dtype) -> torch.Tensor:
        """``(M,)``: the highest sd a regime may have (infinite without a ceiling)."""
        if self.hyper.scale_ceiling is None:
            return torch.full((self.num_markets,), torch.inf, dtype=dtype)
        return torch.tensor(self.hyper.scale_ceiling, dtype=dtype)

    def emission_base(self, g: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Locations and ordered scales ``(M, K, 1)`` of the return (input units)."""
        zero = torch.zeros_like(g["ret_scale_base"])[..., None]
        floor = torch.tensor(self.hyper.scale_floor, dtype=g["ret_scale_base"].dtype)
        base = floor + g["ret_scale_base"]  # sd of the calm regime
        steps = g["ret_scale_steps"] + self.hyper.min_step
        scale = base[..., None] * torch.exp(torch.cumsum(torch.cat([zero, steps], -1), -1))
        return g["ret_loc"][..., None], scale[..., None]

    def log_potentials(self, data: ModelData) -> Potentials:
        """Potentials of the return (the first emitted feature) at the sampled globals."""
        return self.potentials(self.sample_globals(data.x.dtype), data)

    def potentials(self, g: dict[str, torch.Tensor], data: ModelData) -> Potentials:
        """Potentials of the return at the globals ``g`` (name -> constrained value): a plain function, no
        Pyro site (shapes in :class:`~regime_dmm.models.base.Potentials`)."""
        loc, scale = self.emission_base(g)
        steps = data.x.shape[-2]
        log_a = g["transition"].clamp(min=1e-300).log()[..., None, :, :].expand(-1, steps, -1, -1)
        root = data.span_root  # a return over n days (data.features)
        ret_loc = loc[..., None, :, 0] if root is None else loc[..., None, :, 0] * root[..., None]
        if self.hyper.shock_df is None:
            obs_ll = torch.distributions.Normal(ret_loc, scale[..., None, :, 0]).log_prob(data.x[..., :1])
        else:
            df = torch.tensor(self.hyper.shock_df, dtype=scale.dtype)[:, None, None]
            obs_ll = torch.distributions.StudentT(df, ret_loc, scale[..., None, :, 0]).log_prob(data.x[..., :1])
        obs_ll = obs_ll * data.emitting[..., None].to(obs_ll.dtype)  # masked and padded days emit nothing
        return Potentials(g["initial"].clamp(min=1e-300).log(), log_a, obs_ll, loc, scale, g)
