"""What every regime model shares: sizes, log-potentials, the annealing state, one step's context,
and the exact-likelihood objective.

A model variant (exact DMM, classic, relaxed DMM) is a :class:`RegimeModel` built as
``Variant(dims, hyper)``: the sizes from the feature pipeline (:class:`ModelDims`) and its own
explicit hyperparameters. It writes ``sample_globals`` (its global parameters as Pyro sample
sites), ``potentials(values, data)`` (initial, transition and per-day emission log-likelihoods at
given values: a plain function) and ``log_potentials(data)`` (the globals sampled, then ``potentials``);
this base class turns log-potentials into the ``pyro.factor`` terms of the objective with the
exact posterior of :mod:`regime_dmm.inference`.

Model and guide are called as ``model(data, ctx)`` / ``guide(data, ctx)``: everything that
changes from step to step (the annealing values, the minibatch) and what a step reports
(the diagnostics) travels in the explicit :class:`StepContext`, as ``annealing_factor`` does in
Pyro's ``examples/dmm.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyro
import torch
from pyro.nn import PyroModule

from ..config import PenaltyConfig
from ..data.features import ModelData
from ..inference import log_normalizer
from .penalties import diversity_penalty, entropy_penalty, rarity_penalty, separation_penalty

__all__ = ["AnnealState", "ModelDims", "Potentials", "RegimeModel", "StepContext", "no_penalties"]


@dataclass(frozen=True)
class ModelDims:
    """Sizes of a model, read from the feature pipeline and the data.

    ``num_markets`` M, ``num_regimes`` K, ``num_emitted`` F (emitted features; the return is
    first), ``history_size`` H (width of the networks' input: features x lags).
    """

    num_markets: int
    num_regimes: int
    num_emitted: int
    history_size: int


class Potentials(NamedTuple):
    """Log-potentials of the regime chain (see :mod:`regime_dmm.inference`) and the values behind them."""

    log_init: torch.Tensor  # (M, K)
    log_trans: torch.Tensor  # (M, T, K, K)
    obs_ll: torch.Tensor  # (M, T, K), zero on padded steps
    emission_loc: torch.Tensor  # (M, K, F) base emission locations (normalised units)
    emission_scale: torch.Tensor  # (M, K, F) base emission scales
    values: dict[str, torch.Tensor]  # the global parameters used (constrained values)

    def detached(self) -> Potentials:
        """The same potentials cut from the autograd graph."""
        return Potentials(
            self.log_init.detach(),
            self.log_trans.detach(),
            self.obs_ll.detach(),
            self.emission_loc.detach(),
            self.emission_scale.detach(),
            {k: v.detach() for k, v in self.values.items()},
        )


def no_penalties() -> PenaltyConfig:
    """Penalty weights all zero (thresholds and targets at their defaults)."""
    return PenaltyConfig(diversity_weight=0.0, separation_weight=0.0, entropy_weight=0.0)


@dataclass
class AnnealState:
    """Values the annealing schedules set at the start of each epoch (plain floats)."""

    beta: float = 1.0  # weight of the regime KL (1 = exact marginal likelihood)
    tau: float = 1.0  # temperature of relaxed regimes (unused by exact models)
    penalties: PenaltyConfig = field(default_factory=no_penalties)


@dataclass
class StepContext:
    """The explicit second argument of every model and guide call.

    Inputs: ``anneal`` (beta, tau, penalty weights) and ``batch`` (the relaxed model's minibatch
    of windows; None = every window). Outputs, written during the step: ``guide_regime_log_probs``
    (the relaxed guide's per-day regime log-probabilities ``(B, L, K)``, read by the model's
    penalties; the guide runs first) and ``diagnostics`` (the model's terms for the history:
    log-likelihood, reconstruction, KL, entropy, usage, penalties, and ``present (M,)``, the
    markets the step saw; usage and entropy of the others are placeholders).
    """

    anneal: AnnealState = field(default_factory=AnnealState)
    batch: Any = None
    guide_regime_log_probs: torch.Tensor | None = None
    diagnostics: dict[str, torch.Tensor] | None = None


class RegimeModel(PyroModule):
    """Base class of the model variants: ``model(data, ctx)`` adds the exact likelihood and penalties.

    Subclasses set ``dims`` and implement :meth:`sample_globals`, :meth:`potentials` and :meth:`log_potentials`.
    """

    dims: ModelDims

    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims

    @property
    def num_regimes(self) -> int:
        """K."""
        return self.dims.num_regimes

    def sample_globals(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """The global parameters as Pyro sample sites (name -> constrained value)."""
        raise NotImplementedError

    def log_potentials(self, data: ModelData) -> Potentials:  # pragma: no cover - abstract
        """Sample the globals and return the log-potentials of ``data`` (shapes in :class:`Potentials`)."""
        raise NotImplementedError

    def potentials(self, g: dict[str, torch.Tensor], data: ModelData) -> Potentials:  # pragma: no cover - abstract
        """The log-potentials of ``data`` at the globals ``g`` (name -> constrained value) and the networks'
        current weights: a plain function of values (dynamax's style), no Pyro site, no parameter store.
        :meth:`log_potentials` samples the globals and calls it."""
        raise NotImplementedError

    def networks(self) -> list[torch.nn.Module]:
        """The model's neural networks (none by default)."""
        return []

    def reset_parameters(self) -> None:
        """Re-initialise the networks as at construction: the same random draws in the same order, in
        torch's default float32 (as a freshly built network), then cast back to the model's dtype.
        The parameter objects stay the same."""
        for net in self.networks():
            dtype = next(net.parameters()).dtype
            net.float()
            _reset(net)
            net.to(dtype)

    def emission_shift(self, data: ModelData) -> torch.Tensor | None:
        """Daily shifts ``(M, T, K)`` of the regimes' return locations (normalised units), or None."""
        return None

    def scale_floor(self) -> tuple[float, ...] | None:
        """Per market, the lowest return sd the guard lets a regime have (the return feature's units), or None."""
        return None

    def evaluate(self, data: ModelData, state: AnnealState | None = None) -> tuple[torch.Tensor, dict, dict]:
        """The objective's terms without registering them: ``(objective, penalties, diagnostics)``.

        ``objective`` is the beta-weighted ELBO of the regimes (``log Z`` at beta = 1);
        ``penalties`` maps a name to its (differentiable) value in nats.
        """
        state = state or AnnealState()
        pot = self.log_potentials(data)
        weights = state.penalties
        with torch.enable_grad():
            obs_ll = pot.obs_ll if pot.obs_ll.requires_grad else pot.obs_ll.detach().requires_grad_()
            log_z = log_normalizer(pot.log_init, pot.log_trans, obs_ll)
            needs_graph = torch.is_grad_enabled() and (
                weights.diversity_weight > 0 or weights.entropy_weight > 0 or weights.rarity_weight > 0
            )
            # Smoothed marginals are d log Z / d obs_ll (differentiable when a penalty needs them).
            (gamma,) = torch.autograd.grad(
                log_z.sum(),
                obs_ll,
                retain_graph=True,
                create_graph=needs_graph and pot.obs_ll.requires_grad,
            )
        mask = data.mask.to(gamma.dtype)
        steps = mask.sum(-1).clamp(min=1)
        recon = (gamma.detach() * pot.obs_ll).sum()
        # beta-weighted ELBO with q = the exact posterior: value Recon - beta * KL; at beta = 1
        # it is log Z and its gradient is exactly grad log Z (Fisher's identity).
        beta = float(state.beta)
        objective = log_z.sum() if beta == 1.0 else beta * log_z.sum() + (1.0 - beta) * recon
        usage = (gamma * mask[..., None]).sum(-2) / steps[..., None]  # (M, K)
        entropy_t = -(gamma * gamma.clamp(min=1e-30).log()).sum(-1)
        entropy = (entropy_t * mask).sum(-1) / steps  # (M,)
        penalties = {
            "diversity": diversity_penalty(usage, weights.diversity_weight, weights.diversity_threshold),
            "separation": separation_penalty(
                pot.emission_loc, pot.emission_scale, weights.separation_weight, weights.separation_scale
            ),
            "entropy": entropy_penalty(entropy, weights.entropy_weight, weights.entropy_target),
            "rarity": rarity_penalty(usage, weights.rarity_weight, rarity_threshold(steps, weights.rarity_threshold)),
        }
        diagnostics = {
            "log_likelihood": log_z.detach(),
            "recon": recon.detach(),
            "kl": (recon - log_z.sum()).detach(),
            "entropy": entropy.detach(),
            "usage": usage.detach(),
            "present": torch.ones(usage.shape[0], dtype=torch.bool),  # every market is in every step
            "diversity": penalties["diversity"].detach(),
            "separation": penalties["separation"].detach(),
            "entropy_penalty": penalties["entropy"].detach(),
            "rarity": penalties["rarity"].detach(),
        }
        return objective, penalties, diagnostics

    def model(self, data: ModelData, ctx: StepContext | None = None) -> None:
        """The Pyro model: globals as sample sites, the regimes summed out in a factor.

        Writes the step's diagnostics into ``ctx.diagnostics``.
        """
        ctx = ctx if ctx is not None else StepContext()
        objective, penalties, diagnostics = self.evaluate(data, ctx.anneal)
        pyro.factor("log_likelihood", objective)
        add_penalty_factors(penalties)
        ctx.diagnostics = diagnostics


def rarity_threshold(days: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per market, the share of days below which a regime is rare: ``max(threshold, 5 / days)``."""
    return (5.0 / days.clamp(min=1)).clamp(min=threshold)


def add_penalty_factors(penalties: dict[str, torch.Tensor]) -> None:
    """One ``pyro.factor`` per penalty that is switched on (value subtracted from the objective)."""
    for name, value in penalties.items():
        if value.requires_grad or float(value) != 0.0:
            pyro.factor(f"{name}_penalty", -value)


def _reset(module: torch.nn.Module) -> None:
    """``reset_parameters`` of every submodule, in registration order (the order of construction)."""
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset) and sub is not module:
            reset()
    after = getattr(module, "after_reset", None)
    if callable(after):
        after()
