"""The "deep" parts of the Deep Markov Model: small networks of the observed history.

Both networks see ``history`` ``(M, T, H)``: the L previous days of the (normalised)
features, zero before the first day (:func:`regime_dmm.data.lagged_history`). Their output
layers start at zero, so an untrained model is a plain hidden Markov model and the networks
only add what the data supports.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EmissionNet", "TransitionNet"]


def _trunk(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh())


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class TransitionNet(nn.Module):
    """Adjustments ``(M, T, K, K)`` to the transition logits from the history ``(M, T, H)``."""

    def __init__(self, history_size: int, num_regimes: int, hidden: int):
        super().__init__()
        self.num_regimes = num_regimes
        self.trunk = _trunk(history_size, hidden)
        self.head = _zero(nn.Linear(hidden, num_regimes * num_regimes))

    def after_reset(self) -> None:
        """The output layer starts at zero (a plain HMM)."""
        _zero(self.head)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        out = self.head(self.trunk(history))
        return out.reshape(history.shape[:-1] + (self.num_regimes, self.num_regimes))


class EmissionNet(nn.Module):
    """Regime-conditioned shifts ``(M, T, K, F)`` of the emission locations from the history ``(M, T, H)``.

    The scales are left to the regimes: a network that rescaled every regime from recent
    volatility would explain volatility clustering by itself and leave the regimes idle.
    """

    def __init__(self, history_size: int, num_regimes: int, num_features: int, hidden: int):
        super().__init__()
        self.num_regimes = num_regimes
        self.num_features = num_features
        self.trunk = _trunk(history_size, hidden)
        self.loc_head = _zero(nn.Linear(hidden, num_regimes * num_features))

    def after_reset(self) -> None:
        """The output layer starts at zero (no shift)."""
        _zero(self.loc_head)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        loc = self.loc_head(self.trunk(history))
        return loc.reshape(history.shape[:-1] + (self.num_regimes, self.num_features))
