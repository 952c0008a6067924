"""The "deep" parts of the Deep Markov Model: small networks of the observed history.

Both networks see ``history`` ``(M, T, F * L)``: the L previous days of the (normalised)
features, zero before the first day. Their output layers start at zero, so an untrained
model is a plain hidden Markov model and the networks only add what the data supports.
"""

from __future__ import annotations

import torch
from torch import nn


def lagged_history(x: torch.Tensor, lags: int) -> torch.Tensor:
    """``(M, T, F) -> (M, T, F * lags)``: x_{t-1}, ..., x_{t-lags}, zero-padded at the start."""
    steps = x.shape[-2]
    cols = []
    for lag in range(1, lags + 1):
        shifted = torch.zeros_like(x)
        if lag < steps:
            shifted[..., lag:, :] = x[..., :-lag, :]
        cols.append(shifted)
    return torch.cat(cols, dim=-1)


def _trunk(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh())


def _zero_linear(inputs: int, outputs: int) -> nn.Linear:
    layer = nn.Linear(inputs, outputs)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class TransitionNet(nn.Module):
    """Adjustments ``(M, T, K, K)`` to the transition logits from the recent history."""

    def __init__(self, history_size: int, num_regimes: int, hidden: int):
        super().__init__()
        self.num_regimes = num_regimes
        self.trunk = _trunk(history_size, hidden)
        self.head = _zero_linear(hidden, num_regimes * num_regimes)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        out = self.head(self.trunk(history))
        return out.reshape(history.shape[:-1] + (self.num_regimes, self.num_regimes))


class EmissionNet(nn.Module):
    """Regime-conditioned shifts ``(M, T, K, F)`` of the emission locations from the history.

    The scales are left to the regimes: a network that rescaled every regime from recent
    volatility would explain volatility clustering by itself and leave the regimes idle.
    """

    def __init__(self, history_size: int, num_regimes: int, num_features: int, hidden: int):
        super().__init__()
        self.num_regimes = num_regimes
        self.num_features = num_features
        self.trunk = _trunk(history_size, hidden)
        self.loc_head = _zero_linear(hidden, num_regimes * num_features)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        loc = self.loc_head(self.trunk(history))
        return loc.reshape(history.shape[:-1] + (self.num_regimes, self.num_features))
