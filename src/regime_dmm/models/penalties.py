"""Anti-collapse penalties, in nats, subtracted from the objective as ``pyro.factor`` terms.

* diversity: ``w * sum_m sum_k relu(u_mk - c) / (1 - c)``; zero while no regime's usage
  ``u`` exceeds the threshold ``c`` (0.5), 0.12 at 80 % usage with ``w = 0.2``.
* separation: ``w * sum_m mean_{k<l} exp(-d_mkl^2 / (2 s^2))`` where ``d`` is the distance
  between regimes k and l in (mean return, log return scale), normalised units: regimes
  with alike emissions cost up to ``w``; well separated ones cost nothing.
* entropy: ``w * sum_m (H_m - target)^2`` with ``H_m`` the mean posterior entropy (nats)
  of market m's regimes.
* rarity: ``w * sum_m sum_k relu(c_m - u_mk) / c_m`` with ``c_m = max(threshold, 5 / T_m)``: a
  regime used on fewer than a handful of days costs up to ``w`` (zero for every healthy regime).
* scale floor (a prior, not a configurable penalty): ``sum_m relu(log f_m - log sigma_m1)^2 / (2 * 0.05^2)``,
  a steep wall below the lowest regime sd a market may have (zero above it).

Usage and entropy come from the exact posterior (the relaxed model: the guide's regime
probabilities), so the penalties are differentiable through the forward-backward recursions.
The weights are a :class:`~regime_dmm.config.PenaltyConfig`.
"""

from __future__ import annotations

import torch

__all__ = ["diversity_penalty", "entropy_penalty", "rarity_penalty", "scale_floor_penalty", "separation_penalty"]

_FLOOR_WIDTH = 0.05  # log-scale width of the wall below the scale floor


def diversity_penalty(usage: torch.Tensor, weight: float, threshold: float = 0.5) -> torch.Tensor:
    """``usage (M, K)`` -> scalar."""
    excess = torch.relu(usage - threshold) / (1.0 - threshold)
    return weight * excess.sum()


def separation_penalty(loc: torch.Tensor, scale: torch.Tensor, weight: float, length: float = 0.5) -> torch.Tensor:
    """``loc, scale (M, K, F)`` (feature 0 is the return) -> scalar."""
    point = torch.stack([loc[..., 0], scale[..., 0].log()], dim=-1)  # (M, K, 2)
    k = point.shape[-2]
    d2 = (point[..., :, None, :] - point[..., None, :, :]).pow(2).sum(-1)  # (M, K, K)
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
    alike = torch.exp(-d2[..., upper] / (2.0 * length**2))  # (M, pairs)
    return weight * alike.mean(-1).sum()


def entropy_penalty(entropy: torch.Tensor, weight: float, target: float = 0.7) -> torch.Tensor:
    """``entropy (M,)`` mean posterior entropy per market -> scalar."""
    return weight * (entropy - target).pow(2).sum()


def rarity_penalty(usage: torch.Tensor, weight: float, threshold: torch.Tensor) -> torch.Tensor:
    """``usage (M, K)``, ``threshold (M,)`` (share of days) -> scalar; zero while every regime is used enough."""
    short = torch.relu(threshold[:, None] - usage) / threshold[:, None]
    return weight * short.sum()


def scale_floor_penalty(calm_scale: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """``calm_scale (M,)`` (the lowest regime sd of each market), ``floor (M,)`` -> scalar (nats)."""
    below = torch.relu(floor.log() - calm_scale.log())
    return (below / _FLOOR_WIDTH).pow(2).sum() / 2.0
