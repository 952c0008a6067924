"""What every regime model shares: the tensors it reads and the exact-likelihood site.

A model subclass writes ``log_potentials(data)`` (initial, transition and per-step
emission log-likelihoods, sampling its global parameters as Pyro sites) and
``emission_summary``; the base class turns log-potentials into the ``pyro.factor``
terms of the objective, with the exact posterior (:mod:`regime_dmm.inference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import torch
from pyro.nn import PyroModule

from ..data.features import Panel
from ..inference import log_normalizer
from ..training.penalties import PenaltyWeights, diversity_penalty, entropy_penalty, separation_penalty
from .networks import lagged_history


@dataclass
class ModelData:
    """Tensors a model reads, built once per fit from a :class:`Panel`."""

    x: torch.Tensor  # (M, T, F) emitted features, zero-padded
    mask: torch.Tensor  # (M, T) bool
    history: torch.Tensor  # (M, T, F_all * L) lagged features seen by the networks
    lengths: torch.Tensor  # (M,)

    @classmethod
    def from_panel(cls, panel: Panel, lags: int, dtype: torch.dtype, emitted: tuple[str, ...] | None = None) -> "ModelData":
        """``emitted`` names the features the emissions model (default all); the networks see all."""
        full = panel.x.to(dtype)
        names = panel.feature_names
        index = [i for i, name in enumerate(names) if emitted is None or name in emitted]
        return cls(x=full[..., index], mask=panel.mask, history=lagged_history(full, lags), lengths=panel.lengths)

    def window(self, index) -> "ModelData":
        """A subset of the markets (a minibatch), same padding."""
        return ModelData(self.x[index], self.mask[index], self.history[index], self.lengths[index])


class Potentials(NamedTuple):
    log_init: torch.Tensor  # (M, K)
    log_trans: torch.Tensor  # (M, T, K, K)
    obs_ll: torch.Tensor  # (M, T, K), zero on padded steps
    emission_loc: torch.Tensor  # (M, K, F) base emission locations (normalised units)
    emission_scale: torch.Tensor  # (M, K, F) base emission scales


@dataclass
class AnnealState:
    """Values the annealing callbacks set at the start of each epoch."""

    beta: float = 1.0  # weight of the regime KL (1 = exact marginal likelihood)
    tau: float = 1.0  # temperature of relaxed regimes (unused by exact models)
    penalties: PenaltyWeights = field(default_factory=PenaltyWeights)


class RegimeModel(PyroModule):
    """Base class: ``model(data, state)`` adds the exact likelihood and penalties."""

    num_regimes: int

    def log_potentials(self, data: ModelData) -> Potentials:  # pragma: no cover - abstract
        raise NotImplementedError

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
            needs_graph = torch.is_grad_enabled() and (weights.diversity > 0 or weights.entropy > 0)
            # Smoothed marginals are d log Z / d obs_ll (differentiable when a penalty needs them).
            (gamma,) = torch.autograd.grad(
                log_z.sum(), obs_ll, retain_graph=True,
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
            "diversity": diversity_penalty(usage, weights.diversity, weights.diversity_threshold),
            "separation": separation_penalty(
                pot.emission_loc, pot.emission_scale, weights.separation, weights.separation_scale
            ),
            "entropy": entropy_penalty(entropy, weights.entropy, weights.entropy_target),
        }
        diagnostics = {
            "log_likelihood": log_z.detach(),
            "recon": recon.detach(),
            "kl": (recon - log_z.sum()).detach(),
            "entropy": entropy.detach(),
            "usage": usage.detach(),
            "diversity": penalties["diversity"].detach(),
            "separation": penalties["separation"].detach(),
            "entropy_penalty": penalties["entropy"].detach(),
        }
        return objective, penalties, diagnostics

    def model(self, data: ModelData, state: AnnealState | None = None) -> dict:
        """The Pyro model: globals as sample sites, the regimes summed out in a factor."""
        objective, penalties, diagnostics = self.evaluate(data, state)
        pyro.factor("log_likelihood", objective)
        for name, value in penalties.items():
            if value.requires_grad or float(value) != 0.0:
                pyro.factor(f"{name}_penalty", -value)
        self.last_diagnostics = diagnostics
        return diagnostics
