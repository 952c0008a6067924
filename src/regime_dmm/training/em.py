"""Baum-Welch (EM) polish of the classic Markov-switching model.

L-BFGS on softmax/simplex parameters stalls where a transition probability is pushed
to (numerically) zero: its gradient vanishes with it, although the optimum may sit at a
small positive value (seen on the S&P 500 at K = 3 and 4, 0.02-0.05 nats short of
hmmlearn's best). EM has no such trap: from a matrix mixed with a little of the uniform
one, its closed-form updates move every entry to where the expected counts put it and
never decrease the likelihood (Rabiner 1989, "A tutorial on hidden Markov models", eq. 40a-c).
With Student-t emissions of fixed degrees of freedom (the warm start of a Student-t DMM) the location
and scale updates are the ECM steps of a t mixture: each day weighted by ``(df + 1) / (df + z^2)``, ``z``
its standardised residual under the regime (Peel and McLachlan 2000, "Robust mixture modelling using the
t distribution", Statistics and Computing 10).
"""

from __future__ import annotations

import torch

from ..data.features import ModelData
from ..guides.globals import PointGuide
from ..inference import ExpectedStatistics, expected_statistics
from ..models.classic import ClassicMarkovSwitching
from ..threads import refresh_threads

__all__ = ["classic_posterior", "em_map", "em_polish"]

_EMPTY_REGIME_DAYS = 1e-6  # expected days below which a regime gets no M-step update


def classic_posterior(model: ClassicMarkovSwitching, guide: PointGuide, data: ModelData) -> ExpectedStatistics:
    """The E-step at the guide's current parameters: log-likelihood, smoothed and pairwise marginals."""
    with torch.no_grad():
        pot = model.potentials(guide.point_estimate(), data)
    return expected_statistics(pot.log_init, pot.log_trans, pot.obs_ll)


def em_polish(
    model: ClassicMarkovSwitching,
    guide: PointGuide,
    data: ModelData,
    *,
    mix: float = 1e-3,
    max_iter: int = 300,
    tol: float = 1e-9,
) -> float:
    """Improve a fitted classic model in place (the guide's parameters); returns the final log-likelihood.

    The parameters change only if EM ends above the starting log-likelihood.
    """
    start = {n: v.clone() for n, v in guide.point_estimate().items()}
    best = float(classic_posterior(model, guide, data).log_z.sum())
    k = start["initial"].shape[-1]
    guide.set_values(
        {
            "initial": (1 - mix) * start["initial"] + mix / k,
            "transition": (1 - mix) * start["transition"] + mix / k,
        }
    )
    _em_steps(model, guide, data, max_iter=max_iter, tol=tol)
    final = float(classic_posterior(model, guide, data).log_z.sum())
    if final <= best:
        guide.set_values(start)
        return best
    return final


def em_map(
    model: ClassicMarkovSwitching,
    guide: PointGuide,
    data: ModelData,
    *,
    mean_prior_days: float,
    max_iter: int = 300,
    tol: float = 1e-9,
) -> None:
    """EM from the guide's values with a Normal prior on the regime means, centred on 0 (the market's mean
    in normalised units) and worth ``mean_prior_days`` days of data: the MAP estimate, in place.

    A regime made of a handful of days cannot sit on one extreme day's return: its mean shrinks by
    ``days / (days + mean_prior_days)``. Used when a maximum-likelihood fit left a regime that rare.
    """
    _em_steps(model, guide, data, max_iter=max_iter, tol=tol, mean_prior_days=mean_prior_days)


def separated(log_sd: torch.Tensor, weight: torch.Tensor, min_step: float, passes: int = 3) -> torch.Tensor:
    """``log_sd (M, K)`` increasing, ``weight (M, K)`` expected days -> log sds whose adjacent steps are at
    least ``min_step``: each pair too close is moved apart about its weighted mean, the better-supported
    regime moving less (an approximate M-step under the separation constraint; exact for one pair)."""
    if min_step <= 0:
        return log_sd
    out = log_sd.clone()
    w = weight.clamp(min=1e-9)
    for _ in range(passes):
        for k in range(1, out.shape[-1]):
            lo, hi = out[..., k - 1], out[..., k]
            short = (hi - lo) < min_step
            centre = (w[..., k - 1] * lo + w[..., k] * hi) / (w[..., k - 1] + w[..., k])
            share = w[..., k] / (w[..., k - 1] + w[..., k])
            out[..., k - 1] = torch.where(short, centre - min_step * share, lo)
            out[..., k] = torch.where(short, centre + min_step * (1 - share), hi)
    return out


def _em_steps(
    model: ClassicMarkovSwitching,
    guide: PointGuide,
    data: ModelData,
    *,
    max_iter: int,
    tol: float,
    mean_prior_days: float = 0.0,
) -> None:
    x = data.x[..., 0]
    mask = data.emitting.to(x.dtype)
    floor = torch.tensor(model.hyper.scale_floor, dtype=x.dtype)[:, None]  # the parameterisation's floor
    lowest = model.lowest_scale(x.dtype)[:, None]  # and the guard's, if higher
    highest = model.highest_scale(x.dtype)[:, None]
    root = data.span_root
    previous = -float("inf")
    for _ in range(max_iter):
        refresh_threads()
        with torch.no_grad():
            post = classic_posterior(model, guide, data)
            current = float(post.log_z.sum())
            # Maximum likelihood: EM never lowers the likelihood, so a step that gains less than tol ends it.
            # MAP: the likelihood alone may dip while the posterior rises: stop when it no longer moves.
            change = abs(current - previous) if mean_prior_days else current - previous
            if change < tol:
                break
            previous = current
            gamma = post.smoothed * mask[..., None]  # (M, T, K)
            prev_loc, prev_scale = model.emission_base(guide.point_estimate())
            moment = gamma  # the weights of the location and scale updates
            if model.hyper.shock_df is not None:  # Student-t: ECM, each day down-weighted by its outlyingness
                df = torch.tensor(model.hyper.shock_df, dtype=x.dtype)[:, None, None]
                centre = prev_loc[..., 0][:, None, :] * (1.0 if root is None else root[..., None])
                z2 = ((x[..., None] - centre) / prev_scale[..., 0][:, None, :]) ** 2
                moment = gamma * (df + 1.0) / (df + z2)
            pair = post.pairwise[:, 1:] * data.mask.to(x.dtype)[:, 1:, None, None]
            counts = pair.sum(1)  # (M, K, K)
            trans = counts / counts.sum(-1, keepdim=True).clamp(min=1e-300)
            weight = gamma.sum(1).clamp(min=1e-300)  # (M, K)
            if root is None:
                loc = (moment * x[..., None]).sum(1) / (moment.sum(1).clamp(min=1e-300) + mean_prior_days)
                var = (moment * (x[..., None] - loc[:, None, :]) ** 2).sum(1) / weight
            else:  # a return over n days has location sqrt(n) * loc in normalised units (data.features)
                days = (moment * (root**2)[..., None]).sum(1).clamp(min=1e-300)
                loc = (moment * (x * root)[..., None]).sum(1) / (days + mean_prior_days)
                var = (moment * (x[..., None] - root[..., None] * loc[:, None, :]) ** 2).sum(1) / weight
            # A regime no day belongs to (possible on a few hundred days) keeps its values: 0 / 0 is no update.
            empty = weight < _EMPTY_REGIME_DAYS
            loc = torch.where(empty, prev_loc[..., 0], loc)
            sd = torch.where(empty, prev_scale[..., 0], var.sqrt()).minimum(highest)
            sd, order = sd.maximum(lowest * (1 + 1e-9)).sort(dim=-1)  # keep calm first
            loc = loc.gather(-1, order)
            trans = trans.gather(-2, order[..., :, None].expand_as(trans)).gather(
                -1, order[..., None, :].expand_as(trans)
            )
            initial = post.smoothed[:, 0].gather(-1, order)
            log_sd = sd.log()
            if model.hyper.min_step > 0:  # the warm start's separation constraint (none in classic mode)
                log_sd = separated(log_sd, weight.gather(-1, order), model.hyper.min_step)
                log_sd = log_sd + torch.relu(lowest.log() - log_sd[..., :1])  # moved apart, still above the floor
                sd = log_sd.exp()
            steps = (log_sd[..., 1:] - log_sd[..., :-1] - model.hyper.min_step).clamp(min=1e-12)
            guide.set_values(
                {
                    "initial": initial.clamp(min=1e-300) / initial.clamp(min=1e-300).sum(-1, keepdim=True),
                    "transition": trans.clamp(min=1e-300) / trans.clamp(min=1e-300).sum(-1, keepdim=True),
                    "ret_loc": loc,
                    "ret_scale_base": (sd[..., 0] - floor[:, 0]).clamp(min=1e-12 * floor[:, 0]),
                    "ret_scale_steps": steps,
                }
            )
