"""Data-driven starting values of a restart, and the warm start from a maximum-likelihood HMM.

:func:`initial_values`: days of each market are ranked by their recent volatility and cut into
K groups at the cumulative shares of the regime prior (jittered per restart); each group's
moments give a regime's starting emission parameters. The ordering constraint then starts
where the data puts it, which is what makes restarts converge fast and to persistent regimes.

:func:`warm_start`: a maximum-likelihood HMM of the (normalised) returns - Gaussian, or with
Student-t emissions the likelier per market of a Gaussian-started and a Student-t-started ladder -
under the separation constraint, fitted from those values, starts the DMM's globals; it also gives
the reference usage the collapse checks compare the DMM with. Both come back together in one
:class:`WarmStart`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ModelConfig
from ..data.features import ModelData, Panel
from ..errors import DataError
from ..guides.globals import PointGuide
from ..inference import expected_statistics
from ..models.base import ModelDims, rarity_threshold
from ..models.classic import ClassicHyper, ClassicMarkovSwitching
from .em import em_map, em_polish
from .svi import train_lbfgs

__all__ = [
    "WarmStart",
    "initial_values",
    "redo_rare_regimes",
    "robust_floor",
    "scale_ceiling",
    "scale_floor",
    "warm_start",
]

Values = dict[str, torch.Tensor]

#: Degrees of freedom of the warm start's second HMM when ``model.emission`` is ``studentt``: heavy tails
#: (daily returns' conditional tails are typically t with 4 to 8 degrees of freedom), so that single large
#: days do not start regime visits ...
WARM_START_DF = 5.0
#: L-BFGS iterations of each warm-start HMM before EM takes over (0.3.0: 200, always reached; with 40 the
#: embedded default's warm starts end within 0.4 nats of 0.3.0's, on the same ladders, in a quarter of the time).
WARM_LBFGS_ITERATIONS = 40
#: The warm start's EMs after its L-BFGS (the Student-t ladder's polish and the rare-regime guard's MAP EM)
#: stop after this many iterations or a gain below this many nats: a start, not an answer. The Gaussian
#: ladder's polish inside ``train_lbfgs`` runs as classic mode's EM does (300 iterations or 1e-9 nats); the
#: guard's MAP EM did too until 0.6.0 (3.4 s of a 9.5 s K = 5 fit of the embedded default; 1.8 s now).
WARM_EM_ITERATIONS = 100
WARM_EM_TOLERANCE = 1e-3
#: ... after which each market's degrees of freedom are chosen on this grid by the HMM's log-likelihood (100:
#: all but Gaussian), so that Gaussian data start near-Gaussian and heavy-tailed data heavy-tailed.
DF_GRID = (3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 20.0, 40.0, 100.0)
#: A warm-start regime used on fewer than max(this share, 5 / days) of the days is rare ...
RARE_SHARE = 0.01
#: ... and the warm start is redone by EM with a prior on the regime means worth this many days.
MEAN_PRIOR_DAYS = 20.0


@dataclass
class WarmStart:
    """Starting values of a restart (name -> constrained value, every global site) and, after a
    warm start, the usage ``(M, K)`` and the log-likelihood ``(M,)`` (nats, normalised units) of the
    maximum-likelihood HMM it came from (else None)."""

    values: Values
    reference_usage: np.ndarray | None = None
    log_likelihood: np.ndarray | None = None


def scale_floor(panel: Panel) -> tuple[float, ...]:
    """Per market, the classic model's lowest regime standard deviation: sqrt(1e-3) x the sd of the
    return feature on observed days (hmmlearn's ``min_covar`` in spirit: variance >= 1e-3 x the
    market's variance)."""
    return tuple(float(np.sqrt(1e-3) * s.features[s.observed, 0].std() + 1e-12) for s in panel.series)


def scale_ceiling(panel: Panel) -> tuple[float, ...]:
    """Per market, the root of the sum of squares of the return feature: no regime that holds at least
    one day can have a larger sd (its variance is a weighted mean of squares), so a larger one marks a
    regime no day belongs to (see :class:`~regime_dmm.models.classic.ClassicHyper`)."""
    return tuple(float(np.sqrt(np.sum(s.features[:, 0] ** 2)) + 1e-12) for s in panel.series)


def robust_floor(panel: Panel, min_scale: float) -> tuple[float, ...] | None:
    """Per market, ``min_scale`` x the robust sd of its return feature: the lowest sd a regime may have
    (None when ``min_scale`` is 0)."""
    if min_scale <= 0:
        return None
    return tuple(float(min_scale * s.robust_return_scale()) for s in panel.series)


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
        # observed days only: a masked day's feature is a placeholder 0, not a quiet day
        ret = series.features[series.observed, 0]
        if series.features.shape[1] > 1:
            level = series.features[series.observed, 1]
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
    """Starting values from a maximum-likelihood HMM of the (normalised) returns (constrained as below).

    The classic model is fitted by L-BFGS (then EM) from :func:`initial_values`, with adjacent regimes'
    sds at least ``model.min_ratio`` apart (the DMM's separation prior, as a constraint) and, when the
    DMM's emissions are Student-t, Student-t emissions of :data:`WARM_START_DF` degrees of freedom, then of
    each market's best on :data:`DF_GRID` (polished by EM again); its parameters
    start the DMM's globals, and its posterior weights the moments of the volatility feature. When
    that maximum-likelihood fit leaves a regime used on a handful of days (typically one extreme
    day, modelled by a regime whose mean is that day's return), it is redone by EM with a prior on
    the regime means (:func:`~regime_dmm.training.em.em_map`), so the DMM does not start from a
    degenerate regime. With Student-t emissions two ladders are fitted per market - from a Gaussian HMM
    (which needs a regime for every cluster of extreme days, so it finds a rare panic regime) and from a
    Student-t(5) HMM (which does not split calm days around outliers) - each then at its market's best
    degrees of freedom, and each market keeps the likelier ladder without a rare regime. Uses Pyro's
    global param store (the last classic fit's parameters are left in it; restarts clear it).
    """
    min_step = math.log(model.min_ratio) if model.min_ratio > 1 else 0.0
    values = initial_values(panel, model, rng, dtype)
    floor = scale_floor(panel)
    dims = ModelDims(panel.num_markets, model.num_regimes, 1, data.history.shape[-1])
    hyper = ClassicHyper(floor, robust_floor(panel, model.min_scale), scale_ceiling(panel), min_step)
    returns_only = data.returns_only()

    def guard_em(classic: ClassicMarkovSwitching, guide: PointGuide) -> None:
        """The rare-regime guard's MAP EM (a prior on the regime means), stopped as the warm start's EMs are."""
        em_map(
            classic,
            guide,
            returns_only,
            mean_prior_days=MEAN_PRIOR_DAYS,
            max_iter=WARM_EM_ITERATIONS,
            tol=WARM_EM_TOLERANCE,
        )

    def fitted(shock_df: tuple[float, ...] | None) -> tuple[ClassicMarkovSwitching, _Fitted]:
        classic = ClassicMarkovSwitching(dims, dataclasses.replace(hyper, shock_df=shock_df))
        start = _above_min_step(values, min_step)
        guide = PointGuide(classic, start)
        guide.parameters()  # created (constrained) if absent; then set: an earlier fit's values may be there
        guide.set_values({k: v for k, v in start.items() if k in guide.constraints})
        studentt = model.emission == "studentt"
        # a start, not an answer: EM (below, or train_lbfgs's polish) finishes what L-BFGS begins
        train_lbfgs(classic, guide, returns_only, max_iter=WARM_LBFGS_ITERATIONS, polish=not studentt)
        state = _fitted_state(classic, guide, returns_only)
        guarded = model.min_scale > 0 and _has_rare_regime(state[2], data)
        if guarded:
            # a regime of a handful of days (one extreme day's return as its mean): start again, MAP
            again = _above_min_step(initial_values(panel, model, rng, dtype), min_step)
            guide.set_values({k: v for k, v in again.items() if k in state[0]})
            guard_em(classic, guide)
            state = _fitted_state(classic, guide, returns_only)
        if studentt:  # each market's own tails: the best df on a grid, then EM at it
            classic = _with_best_df(classic, guide, returns_only)
            if guarded:  # keep the prior on the means: plain EM would pull them back onto the extreme days
                guard_em(classic, guide)
            else:
                em_polish(classic, guide, returns_only, max_iter=WARM_EM_ITERATIONS, tol=WARM_EM_TOLERANCE)
            state = _fitted_state(classic, guide, returns_only)
        return classic, state

    shock_df = None
    classic, (g, gamma, reference, loglik) = fitted(None)
    if model.emission == "studentt":
        # two ladders per market - from a Gaussian HMM (which needs a regime for every cluster of extreme
        # days, so it finds a rare panic regime) and from a Student-t(5) HMM (which does not split calm
        # days around outliers) - each then fitted with its best tails; each market keeps the likelier
        first = classic
        second, (g2, gamma2, reference2, loglik2) = fitted((WARM_START_DF,) * panel.num_markets)
        # a ladder with a regime of a handful of days loses to one without (the guard's purpose)
        rare, rare2 = _rare_per_market(reference, data), _rare_per_market(reference2, data)
        take = torch.as_tensor(np.where(rare == rare2, loglik2 > loglik, rare & ~rare2))
        g = {k: torch.where(take.reshape(-1, *[1] * (v.dim() - 1)), g2[k], v) for k, v in g.items()}
        gamma = torch.where(take[:, None, None], gamma2, gamma)
        reference = np.where(take.numpy()[:, None], reference2, reference)
        loglik = np.where(take.numpy(), loglik2, loglik)
        assert first.hyper.shock_df is not None and second.hyper.shock_df is not None
        shock_df = tuple(b if t else a for a, b, t in zip(first.hyper.shock_df, second.hyper.shock_df, take.tolist()))
    values.update(g)
    values["ret_scale_steps"] = g["ret_scale_steps"] + min_step  # the classic model's steps are above min_step
    if shock_df is not None:  # the DMM's degrees of freedom are 2 + df
        values["df"] = torch.tensor(shock_df, dtype=dtype) - 2.0
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
    return WarmStart(_inside_supports(values, panel), reference, loglik)


def _with_best_df(classic: ClassicMarkovSwitching, guide: PointGuide, data: ModelData) -> ClassicMarkovSwitching:
    """The classic model with, per market, the degrees of freedom of :data:`DF_GRID` that give the highest
    log-likelihood, each scored with the regimes' sds kept (a t of ``df`` has scale ``sd * sqrt((df - 2) /
    df)``) and the other parameters at the guide's values; the guide is left at the chosen scales. A cheap
    profile of the tails (the EM that follows refits everything at the chosen df)."""

    def with_df(df: tuple[float, ...]) -> ClassicMarkovSwitching:
        return ClassicMarkovSwitching(classic.dims, dataclasses.replace(classic.hyper, shock_df=df))

    def sd_factor(df: np.ndarray) -> np.ndarray:  # scale / sd of a t (1 for a Gaussian, df = inf)
        return np.where(np.isinf(df), 1.0, np.sqrt((df - 2.0) / np.where(np.isinf(df), 1.0, df)))

    m = classic.num_markets
    base = guide.point_estimate()["ret_scale_base"].clone()
    floor = torch.tensor(classic.hyper.scale_floor, dtype=base.dtype)
    current = np.full(m, np.inf) if classic.hyper.shock_df is None else np.asarray(classic.hyper.shock_df)

    def rescaled(df: np.ndarray) -> Values:  # every regime's scale times the same factor: steps unchanged
        factor = torch.as_tensor(sd_factor(df) / sd_factor(current), dtype=base.dtype)
        return {"ret_scale_base": ((floor + base) * factor - floor).clamp(min=1e-12 * floor)}

    scores = []
    for df in DF_GRID:
        guide.set_values(rescaled(np.full(m, df)))
        scores.append(_fitted_state(with_df((df,) * m), guide, data)[3])
    chosen = np.asarray(DF_GRID)[np.asarray(scores).argmax(0)]
    guide.set_values(rescaled(chosen))
    return with_df(tuple(float(d) for d in chosen))


def _above_min_step(values: Values, min_step: float) -> Values:
    """Starting values in the classic model's convention: log-scale steps counted above ``min_step``."""
    if min_step <= 0:
        return values
    return dict(values, ret_scale_steps=(values["ret_scale_steps"] - min_step).clamp(min=0.05))


def redo_rare_regimes(classic: ClassicMarkovSwitching, guide: PointGuide, data: ModelData, start: Values) -> bool:
    """The classic mode's guard against a degenerate regime (``model.min_scale`` > 0).

    When the maximum-likelihood fit in ``guide`` left a regime on fewer than max(1 %, 5 / days) of
    a market's days (typically one extreme day, modelled by a regime whose mean is that day's return),
    refit from ``start`` (the restart's starting values) by EM with a prior on the regime means worth
    :data:`MEAN_PRIOR_DAYS` days (:func:`~regime_dmm.training.em.em_map`), in place. Returns True
    when it refitted.
    """
    _, _, usage, _ = _fitted_state(classic, guide, data)
    if not _has_rare_regime(usage, data):
        return False
    guide.set_values(start)
    em_map(classic, guide, data, mean_prior_days=MEAN_PRIOR_DAYS)
    return True


def _rare_per_market(usage: np.ndarray, data: ModelData) -> np.ndarray:
    """``(M,)`` bool: the market has a regime on fewer than max(1 %, 5 / days) of its days."""
    threshold = rarity_threshold(data.mask.sum(-1).to(torch.float64), RARE_SHARE).numpy()[:, None]
    return np.asarray((usage < threshold).any(-1))


def _has_rare_regime(usage: np.ndarray, data: ModelData) -> bool:
    return bool(_rare_per_market(usage, data).any())


_Fitted = tuple[Values, torch.Tensor, np.ndarray, np.ndarray]


def _fitted_state(
    classic: ClassicMarkovSwitching, guide: PointGuide, data: ModelData
) -> tuple[Values, torch.Tensor, np.ndarray, np.ndarray]:
    """The classic fit's values, its smoothed marginals ``(M, T, K)``, its usage ``(M, K)`` and its
    log-likelihood ``(M,)``."""
    with torch.no_grad():
        g = {k: v.clone() for k, v in guide.point_estimate().items()}
        pot = classic.potentials(g, data)
        post = expected_statistics(pot.log_init, pot.log_trans, pot.obs_ll)
    mask = data.mask.to(post.smoothed.dtype)[..., None]
    usage = (post.smoothed * mask).sum(1) / mask.sum(1).clamp(min=1)
    return g, post.smoothed, usage.numpy(), post.log_z.numpy()


def _inside_supports(values: Values, panel: Panel) -> Values:
    """The starting values strictly inside their supports, or :class:`DataError` naming the market.

    A maximum-likelihood HMM may drive a step between two regimes' scales to exactly 0 (two
    regimes alike), where the DMM's prior has no density; such steps start at 0.01 instead.
    """
    for name, value in values.items():
        bad = ~torch.isfinite(value).reshape(value.shape[0], -1).all(-1)
        if bad.any():
            market = panel.series[int(bad.nonzero()[0, 0])].name
            raise DataError(
                f"market '{market}': the starting values ({name}) are not finite: the returns may be degenerate "
                "(a constant stretch, a huge outlier); check the data warnings, or set data.bad_ticks: mask"
            )
    for name in ("ret_scale_steps", "vol_loc_steps", "ret_scale_base", "vol_scale"):
        if name in values:
            values[name] = values[name].clamp(min=0.01 if name.endswith("steps") else 1e-6)
    return values
