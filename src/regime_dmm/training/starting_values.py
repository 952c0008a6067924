"""Data-driven starting values of a restart, and the warm start from a maximum-likelihood HMM.

:func:`initial_values`: days of each market are ranked by their recent volatility and cut into
K groups at the cumulative shares of the regime prior (jittered per restart); each group's
moments give a regime's starting emission parameters. The ordering constraint then starts
where the data puts it, which is what makes restarts converge fast and to persistent regimes.

:func:`warm_start`: a maximum-likelihood Gaussian HMM of the (normalised) returns, fitted from
those values, starts the DMM's globals; it also gives the reference usage the collapse checks
compare the DMM with. Both come back together in one :class:`WarmStart`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine

from ..config import ModelConfig
from ..data.features import ModelData, Panel
from ..guides.globals import PointGuide
from ..inference import posterior
from ..models.base import ModelDims
from ..models.classic import ClassicHyper, ClassicMarkovSwitching
from .svi import train_lbfgs

__all__ = ["WarmStart", "initial_values", "scale_floor", "warm_start"]

Values = dict[str, torch.Tensor]


@dataclass
class WarmStart:
    """Starting values of a restart (name -> constrained value, every global site) and, after a
    warm start, the usage ``(M, K)`` of the maximum-likelihood HMM it came from (else None)."""

    values: Values
    reference_usage: np.ndarray | None = None


def scale_floor(panel: Panel) -> tuple[float, ...]:
    """Per market, the classic model's lowest regime standard deviation: sqrt(1e-3) x the sd of the
    return feature (hmmlearn's ``min_covar`` in spirit: variance >= 1e-3 x the market's variance)."""
    return tuple(float(np.sqrt(1e-3) * s.features[:, 0].std() + 1e-12) for s in panel.series)


def initial_values(panel: Panel, model: ModelConfig, rng: np.random.Generator, dtype: torch.dtype) -> Values:
    """Starting values of every global of the DMM and classic models (see the module docstring).

    Shapes per market m of M: ``initial (M, K)``, ``transition (M, K, K)``, ``ret_loc (M, K)``,
    ``ret_scale_base (M,)``, ``ret_scale_steps (M, K-1)``, ``vol_loc_base (M,)``,
    ``vol_loc_steps (M, K-1)``, ``vol_scale (M, K)``; normalised units (input units in classic mode).
    """
    k = model.num_regimes
    prior = np.asarray(model.prior_weights(), dtype=float)
    out: dict[str, list] = {
        key: []
        for key in (
            "initial",
            "transition",
            "ret_loc",
            "ret_scale_base",
            "ret_scale_steps",
            "vol_loc_base",
            "vol_loc_steps",
            "vol_scale",
        )
    }
    for series in panel.series:
        ret = series.features[:, 0]
        if series.features.shape[1] > 1:
            level = series.features[:, 1]
        else:  # rolling RMS of the return as the ranking key
            window = max(2, model.vol_window)
            sq = np.convolve(ret**2, np.ones(window) / window, mode="same")
            level = np.log(np.sqrt(sq) + 1e-12)
        shares = rng.dirichlet(2.0 * prior)
        cuts = np.quantile(level, np.clip(np.cumsum(shares / shares.sum())[:-1], 0.02, 0.98))
        group = np.searchsorted(cuts, level)
        locs, scales, vlocs, vscales = [], [], [], []
        for j in range(k):
            sel = group == j
            if sel.sum() < 3:
                sel = np.ones_like(sel)
            locs.append(ret[sel].mean())
            scales.append(ret[sel].std() + 1e-6)
            vlocs.append(level[sel].mean())
            vscales.append(level[sel].std() + 0.1)
        log_scales = np.log(scales)
        steps = np.maximum(np.diff(log_scales), 0.1)
        vsteps = np.maximum(np.diff(vlocs), 0.1)
        stay = rng.uniform(0.85, 0.97)
        trans = np.full((k, k), (1 - stay) / (k - 1))
        np.fill_diagonal(trans, stay)
        out["initial"].append(np.full(k, 1.0 / k))
        out["transition"].append(trans)
        out["ret_loc"].append(locs)
        out["ret_scale_base"].append(scales[0])
        out["ret_scale_steps"].append(steps)
        out["vol_loc_base"].append(vlocs[0])
        out["vol_loc_steps"].append(vsteps)
        out["vol_scale"].append(vscales)
    return {key: torch.tensor(np.asarray(val, dtype=float), dtype=dtype) for key, val in out.items()}


def warm_start(
    panel: Panel, data: ModelData, model: ModelConfig, rng: np.random.Generator, dtype: torch.dtype
) -> WarmStart:
    """Starting values from a maximum-likelihood Gaussian HMM of the (normalised) returns.

    The classic model is fitted by L-BFGS (then EM) from :func:`initial_values`; its parameters
    start the DMM's globals, and its posterior weights the moments of the volatility feature.
    Uses Pyro's global param store (the classic parameters are left in it).
    """
    values = initial_values(panel, model, rng, dtype)
    floor = scale_floor(panel)
    dims = ModelDims(panel.num_markets, model.num_regimes, 1, data.history.shape[-1])
    classic = ClassicMarkovSwitching(dims, ClassicHyper(floor))
    guide = PointGuide(classic, values)
    returns_only = data.returns_only()
    train_lbfgs(classic, guide, returns_only, max_iter=200)
    with torch.no_grad():
        g = {k: v.clone() for k, v in guide.point_estimate().items()}
        pot = poutine.condition(classic.log_potentials, data=g)(returns_only)
        gamma = posterior(pot.log_init.detach(), pot.log_trans.detach(), pot.obs_ll.detach()).smoothed
    mask = data.mask.to(gamma.dtype)[..., None]
    reference = ((gamma * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
    values.update(g)
    values["ret_scale_base"] = g["ret_scale_base"] + torch.tensor(floor, dtype=dtype)  # the DMM has no floor
    if panel.num_features > 1:
        vol = panel.x[..., 1].to(dtype)
        weight = gamma * data.mask[..., None].to(dtype)
        total = weight.sum(1).clamp(min=1e-6)
        level = (weight * vol[..., None]).sum(1) / total
        spread = ((weight * (vol[..., None] - level[:, None, :]) ** 2).sum(1) / total).sqrt()
        values["vol_loc_base"] = level[:, 0]
        values["vol_loc_steps"] = torch.diff(level, dim=-1).clamp(min=0.05)
        values["vol_scale"] = spread.clamp(min=0.1)
    values["initial"] = (values["initial"] + 0.05) / (1 + 0.05 * model.num_regimes)
    values["transition"] = (values["transition"] + 0.01) / (1 + 0.01 * model.num_regimes)
    return WarmStart(values, reference)
