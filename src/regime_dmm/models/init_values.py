"""Data-driven starting values for the global parameters of a restart.

Days of each market are ranked by their recent volatility and cut into K groups at the
cumulative shares of the regime prior (jittered per restart); each group's moments give
a regime's starting emission parameters. The ordering constraint then starts where the
data puts it, which is what makes restarts converge fast and to persistent regimes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import FitConfig
from ..data.features import Panel


def initial_values(panel: Panel, config: FitConfig, rng: np.random.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    mc = config.model
    k = mc.num_regimes
    prior = np.asarray(mc.prior_weights(), dtype=float)
    out: dict[str, list] = {key: [] for key in (
        "initial", "transition", "ret_loc", "ret_scale_base", "ret_scale_steps",
        "vol_loc_base", "vol_loc_steps", "vol_scale", "ret_scale_floor")}
    for series in panel.series:
        ret = series.features[:, 0]
        if series.features.shape[1] > 1:
            level = series.features[:, 1]
        else:  # rolling RMS of the return as the ranking key
            window = max(2, mc.vol_window)
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
        # Like hmmlearn's min_covar: a regime may not shrink onto a handful of identical days
        # (the Gaussian likelihood is unbounded there); variance >= 1e-3 x the market's variance.
        out["ret_scale_floor"].append(np.sqrt(1e-3) * ret.std() + 1e-12)
        out["ret_scale_steps"].append(steps)
        out["vol_loc_base"].append(vlocs[0])
        out["vol_loc_steps"].append(vsteps)
        out["vol_scale"].append(vscales)
    return {key: torch.tensor(np.asarray(val, dtype=float), dtype=dtype) for key, val in out.items()}


def warm_start(panel: Panel, data, config: FitConfig, rng: np.random.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Starting values from a maximum-likelihood Gaussian HMM of the (normalised) returns.

    The classic model is fitted by L-BFGS from :func:`initial_values`; its parameters
    start the DMM's globals, and its posterior weights the moments of the volatility
    feature. Uses (and leaves behind) parameters in Pyro's global param store.
    """
    from ..inference import posterior
    from ..training.svi import train_lbfgs
    from .base import ModelData
    from .classic import ClassicMarkovSwitching

    values = initial_values(panel, config, rng, dtype)
    classic = ClassicMarkovSwitching(config, panel.num_markets, values)
    returns_only = ModelData(data.x[..., :1], data.mask, data.history, data.lengths)
    train_lbfgs(classic, returns_only, max_iter=200)
    with torch.no_grad():
        g = {k: v.detach().clone() for k, v in classic.sample_globals(dtype).items()}
        pot = classic.log_potentials(returns_only)
        gamma = posterior(pot.log_init.detach(), pot.log_trans.detach(), pot.obs_ll.detach()).smoothed
    values.update(g)
    values["ret_scale_base"] = g["ret_scale_base"] + values["ret_scale_floor"]  # the DMM has no floor
    if panel.num_features > 1:
        vol = panel.x[..., 1].to(dtype)
        weight = gamma * data.mask[..., None].to(dtype)
        total = weight.sum(1).clamp(min=1e-6)
        level = (weight * vol[..., None]).sum(1) / total
        spread = ((weight * (vol[..., None] - level[:, None, :]) ** 2).sum(1) / total).sqrt()
        values["vol_loc_base"] = level[:, 0]
        values["vol_loc_steps"] = torch.diff(level, dim=-1).clamp(min=0.05)
        values["vol_scale"] = spread.clamp(min=0.1)
    values["initial"] = (values["initial"] + 0.05) / (1 + 0.05 * config.model.num_regimes)
    values["transition"] = (values["transition"] + 0.01) / (1 + 0.01 * config.model.num_regimes)
    return values
