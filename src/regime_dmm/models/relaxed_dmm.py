"""The relaxed-regime Deep Markov Model: Gumbel-Softmax regimes, trained on sequence windows.

Same globals, networks and emissions as :class:`~regime_dmm.models.exact_dmm.ExactRegimeDMM`
(it is a subclass); only the regimes differ. Instead of being summed out, they are sampled
as relaxed one-hot vectors ``z_t`` on the simplex, per window of ``training.window_length``
days:

    z_s      ~ RelaxedOneHot(tau, p_s)        p_s = initial_m          if the window starts the series
                                              p_s = pi_m @ A_{m,s}     otherwise (pi_m stationary of A_m)
    z_t      ~ RelaxedOneHot(tau, log(z_{t-1} @ A_{m,t}))   t > s, A_{m,t} incl. the covariate network
    x_t      ~ Normal / StudentT(sum_k z_tk loc_mkt, sum_k z_tk scale_mk)

``tau`` is ``state.tau``. With ``training.straight_through`` the samples are exactly one-hot
in the forward pass (relaxed gradients backward; densities of the relaxed sample, as in
:class:`pyro.distributions.RelaxedOneHotCategoricalStraightThrough`).

Objective: the training loop uses a ``TraceMeanField_ELBO``:
the reconstruction is a one-sample estimate with the relaxed regimes, and the regime sites'
KL is the chain-rule KL along q's sampled path with each day's term the exact KL between
the categorical distributions of q's and the prior's logits (registered for the pair of
distributions in :mod:`regime_dmm.guides.inference_network`; the Gumbel-Softmax VAE's
choice). The relaxed densities' log-ratio (plain ``Trace_ELBO``) is unbounded below near
the simplex's vertices: with it the model sharpened its transitions until the "KL" reached
-30,000 nats and the regimes collapsed.

The regimes of a window are ONE sample site ``"regimes"`` (event shape ``(days, K)``, in a
plate of windows) whose ``log_prob`` sums the per-day terms of the chain over the window's
real days (padded days are masked inside the distribution), so the whole window is scored
in one vectorised call; only sampling is sequential. Regime sites are weighted by ``state.beta`` (the KL
annealing of Pyro's ``examples/dmm.py``; ``beta = 0`` masks them) in model and guide alike.

Minibatches: the training loop draws each epoch's batches with :func:`epoch_batches`: it
tiles every market's series into windows (with a random offset per epoch, so the cuts
move), shuffles them and splits them into batches of ``training.batch_windows``. One SVI
step per batch; the batch is ``ctx.batch`` of the :class:`~regime_dmm.models.base.StepContext`
that model and guide both receive, so they always see the same windows. The choice depends
only on ``(training.seed, restart, epoch)``: reproducible, and unchanged by a resume. Each
batch's likelihood and regime terms are multiplied by ``windows / batch size``, so a step's
ELBO is an unbiased estimate of the full-data ELBO.

Penalties (diversity, separation, entropy) are the same ``pyro.factor`` terms as in the
exact model, computed from the *guide's* per-day regime probabilities
``q(z_t | z_{t-1}, x_{t:})`` (the guide, which runs first, leaves them in
``ctx.guide_regime_log_probs``; a model run without a guide falls back to the prior's
probabilities).

Diagnostics use the exact model's keys; ``log_likelihood`` is the EXACT ``log Z`` of the
full data at the current global parameters (no gradient), so both modes are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions.utils import clamp_probs

from ..data.features import ModelData
from ..inference import log_normalizer, stationary_distribution
from .base import ModelDims, StepContext, add_penalty_factors
from .exact_dmm import ExactDMMHyper, ExactRegimeDMM
from .penalties import diversity_penalty, entropy_penalty, separation_penalty

__all__ = [
    "ModelTerms",
    "RelaxedDMMHyper",
    "RelaxedRegimeChain",
    "RelaxedRegimeDMM",
    "WindowBatch",
    "WindowRegimeDistribution",
    "Windows",
    "epoch_batches",
    "gather_windows",
    "kl_weight",
    "relaxed_step",
    "stack_steps",
    "tile_windows",
]

_NO_SAMPLE_SHAPE = torch.Size()


@dataclass(frozen=True)
class RelaxedDMMHyper(ExactDMMHyper):
    """Hyperparameters of :class:`RelaxedRegimeDMM`: those of the exact DMM, plus
    ``straight_through`` (one-hot regimes forward, relaxed gradients backward) and
    ``window_length`` (days per training window)."""

    straight_through: bool = False
    window_length: int = 64


@dataclass
class WindowBatch:
    """Windows of one SVI step: window ``i`` is days ``start[i] .. start[i] + length - 1`` of ``market[i]``."""

    market: torch.Tensor  # (B,) long
    start: torch.Tensor  # (B,) long
    length: int
    scale: float  # windows in the epoch / windows in this batch


@dataclass
class Windows:
    """The tensors of a :class:`WindowBatch`, gathered from :class:`ModelData`."""

    market: torch.Tensor  # (B,)
    start: torch.Tensor  # (B,)
    x: torch.Tensor  # (B, L, F), zero on padded days
    history: torch.Tensor  # (B, L, H)
    mask: torch.Tensor  # (B, L) bool, a prefix of each window: days of the series
    observed: torch.Tensor  # (B, L) bool, days with an emission (a subset of mask)
    span: torch.Tensor  # (B, L) days each return covers


def tile_windows(lengths, window_length: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows covering every day of every series once.

    With ``offset > 0`` the first window of a series is ``[0, offset)`` and the others start
    at ``offset + k * window_length``. Returns ``(market, start)`` arrays.
    """
    markets, starts = [], []
    for m, n in enumerate(np.asarray(lengths, dtype=int)):
        first = [0] if offset > 0 else []
        for s in first + list(range(offset, int(n), window_length)):
            markets.append(m)
            starts.append(s)
    return np.asarray(markets, dtype=np.int64), np.asarray(starts, dtype=np.int64)


def gather_windows(data: ModelData, batch: WindowBatch) -> Windows:
    """The tensors of ``batch``'s windows, gathered from ``data`` (days past a series' end masked)."""
    steps = data.x.shape[-2]
    t = batch.start[:, None] + torch.arange(batch.length)[None, :]  # (B, L)
    tc = t.clamp(max=steps - 1)
    m = batch.market[:, None].expand_as(t)
    mask = (t < data.lengths[batch.market][:, None]) & data.mask[m, tc]
    # a window's mask must be a prefix (padding at the end): true for end-padded panels
    mask = mask.to(torch.long).cumprod(-1).to(torch.bool)
    observed = data.emitting[m, tc] & mask
    x = data.x[m, tc] * mask[..., None].to(data.x.dtype)
    span = torch.where(mask, data.day_span[m, tc], torch.ones_like(data.day_span[m, tc]))
    return Windows(batch.market, batch.start, x, data.history[m, tc], mask, observed, span)


def epoch_batches(
    lengths, window_length: int, batch_windows: int, seed: int, restart: int, epoch: int
) -> list[WindowBatch]:
    """The batches of one epoch: every window once, shuffled; depends on (seed, restart, epoch) only."""
    rng = np.random.default_rng([seed, restart, epoch])
    offset = int(rng.integers(window_length))
    market, start = tile_windows(lengths, window_length, offset)
    order = rng.permutation(len(market))
    total = len(order)
    batches = []
    for lo in range(0, total, batch_windows):
        idx = order[lo : lo + batch_windows]
        batches.append(
            WindowBatch(torch.as_tensor(market[idx]), torch.as_tensor(start[idx]), window_length, total / len(idx))
        )
    return batches


class ModelTerms(NamedTuple):
    """The model's own terms of the model-informed q's logits, gradient stopped."""

    first_log: torch.Tensor  # (B, K) log p(z_s): the window's first day
    trans: torch.Tensor  # (B, L, K, K) p(z_t = j | z_{t-1} = i)
    obs_ll: torch.Tensor  # (B, L, K) log p(x_t | z_t = k)

    def step(self, t: int, z_prev: torch.Tensor) -> torch.Tensor:
        """Logit terms ``(B, K)`` of day ``t`` given the previous day's (relaxed) regime ``z_prev (B, K)``."""
        if t == 0:
            prior = self.first_log
        else:
            probs = (z_prev[..., None, :] @ self.trans[..., t, :, :]).squeeze(-2)
            prior = probs.clamp(min=torch.finfo(probs.dtype).tiny).log()
        return prior + self.obs_ll[..., t, :]

    def along(self, value: torch.Tensor) -> torch.Tensor:
        """All days at once along the chain ``value (B, L, K)``."""
        rest = (value[..., :-1, None, :] @ self.trans[..., 1:, :, :]).squeeze(-2)
        rest = rest.clamp(min=torch.finfo(rest.dtype).tiny).log()
        return torch.cat([self.first_log[..., None, :], rest], dim=-2) + self.obs_ll


def relaxed_step(tau: torch.Tensor, logits: torch.Tensor, straight_through: bool):
    """One relaxed one-hot draw: ``(value, soft)``; ``value`` is one-hot when ``straight_through``."""
    if straight_through:
        hard = dist.RelaxedOneHotCategoricalStraightThrough(tau, logits=logits).rsample()
        return hard, hard._unquantize
    soft = clamp_probs(dist.RelaxedOneHotCategorical(tau, logits=logits).rsample())
    return soft, soft


def stack_steps(values: list[torch.Tensor], softs: list[torch.Tensor], straight_through: bool) -> torch.Tensor:
    """``(B, K)`` per day -> ``(B, L, K)``; straight-through keeps the relaxed values for the densities."""
    value = torch.stack(values, dim=-2)
    if straight_through:
        value._unquantize = torch.stack(softs, dim=-2)  # type: ignore[attr-defined]  # as pyro does
    return value


def relaxed_log_prob(tau: torch.Tensor, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Per-day log density ``(B, L)`` of relaxed one-hot values (the relaxed value under straight-through)."""
    soft = getattr(value, "_unquantize", value)
    return dist.RelaxedOneHotCategorical(tau, logits=logits, validate_args=False).log_prob(clamp_probs(soft))


class WindowRegimeDistribution(TorchDistribution):
    """Shared by the prior and the guide of a window's relaxed regimes (batch ``(B,)``,
    event ``(L, K)``): subclasses give ``tau``, ``mask`` and ``step_logits(value)``."""

    def day_log_prob(self, value):
        """Per-day terms ``(B, L)``, zero on padded days."""
        lp = relaxed_log_prob(self.tau, self.step_logits(value), value)
        return torch.where(self.day_mask, lp, torch.zeros_like(lp))

    def log_prob(self, value):
        """Log density ``(B,)`` of the windows' chains: the sum of the per-day terms."""
        return self.day_log_prob(value).sum(-1)

    def expand(self, batch_shape, _instance=None):
        """Only the identity expansion is supported (one chain per window)."""
        if tuple(batch_shape) != tuple(self.batch_shape):
            raise NotImplementedError(f"{type(self).__name__} cannot be expanded")
        return self


class RelaxedRegimeChain(WindowRegimeDistribution):
    """Prior of a window's relaxed regimes: batch ``(B,)``, event ``(L, K)``; see module docstring."""

    arg_constraints = {}
    support = constraints.independent(constraints.simplex, 1)
    has_rsample = True

    def __init__(self, tau, first_probs, trans, mask, straight_through=False, validate_args=False):
        self.tau = torch.as_tensor(tau, dtype=trans.dtype)
        self.first_probs = first_probs  # (B, K)
        self.trans = trans  # (B, L, K, K) row-stochastic
        self.day_mask = mask  # (B, L) bool: real days
        self.straight_through = straight_through
        super().__init__(trans.shape[:-3], trans.shape[-3:-1], validate_args=validate_args)

    def step_logits(self, value: torch.Tensor) -> torch.Tensor:
        """``log(z_{t-1} @ A_t)`` for every day of ``value (B, L, K)`` (the first day: ``log p_s``)."""
        rest = (value[..., :-1, None, :] @ self.trans[..., 1:, :, :]).squeeze(-2)
        probs = torch.cat([self.first_probs[..., None, :], rest], dim=-2)
        return probs.clamp(min=torch.finfo(probs.dtype).tiny).log()

    def rsample(self, sample_shape=_NO_SAMPLE_SHAPE):
        """One relaxed chain per window ``(B, L, K)``, drawn day by day from the prior."""
        if sample_shape:
            raise NotImplementedError("RelaxedRegimeChain draws one chain per window")
        values: list[torch.Tensor] = []
        softs: list[torch.Tensor] = []
        probs = self.first_probs
        for t in range(self.trans.shape[-3]):
            if t > 0:
                probs = (values[-1][..., None, :] @ self.trans[..., t, :, :]).squeeze(-2)
            logits = probs.clamp(min=torch.finfo(probs.dtype).tiny).log()
            value, soft = relaxed_step(self.tau, logits, self.straight_through)
            values.append(value)
            softs.append(soft)
        return stack_steps(values, softs, self.straight_through)


class RelaxedRegimeDMM(ExactRegimeDMM):
    """Deep Markov Model with Gumbel-Softmax regimes (see module docstring)."""

    hyper: RelaxedDMMHyper

    def __init__(self, dims: ModelDims, hyper: RelaxedDMMHyper):
        super().__init__(dims, hyper)

    def all_windows(self, data: ModelData) -> WindowBatch:
        """Every window of every market at once (scale 1): the batch when ``ctx.batch`` is None."""
        length = self.hyper.window_length
        market, start = tile_windows(data.lengths.tolist(), length)
        return WindowBatch(torch.as_tensor(market), torch.as_tensor(start), length, 1.0)

    # ---- the model -----------------------------------------------------------------------
    def window_potentials(self, g: dict[str, torch.Tensor], w: Windows):
        """Transition matrices, first-day probabilities and emission parameters of the windows."""
        loc, scale = self.emission_base(g)  # (M, K, F)
        base = g["transition"][w.market]  # (B, K, K)
        log_a = base.clamp(min=1e-30).log()[:, None].expand(-1, w.mask.shape[-1], -1, -1)
        if self.transition_net is not None:
            log_a = torch.log_softmax(log_a + self.transition_net(w.history), dim=-1)
        trans = log_a.exp()
        init = g["initial"][w.market]
        mid = (stationary_distribution(base)[:, None, :] @ trans[:, 0]).squeeze(-2)
        first = torch.where((w.start == 0)[:, None], init, mid)
        loc_w = loc[w.market][:, None]  # (B, 1, K, F)
        if self.emission_net is not None:
            loc_w = loc_w + self.emission_net(w.history)
        if bool((w.span != 1).any()):  # a return over n days: its location times sqrt(n) (data.features)
            ret = loc_w[..., :1] * w.span.sqrt()[..., None, None]  # (B, L, K, 1)
            loc_w = torch.cat([ret, loc_w[..., 1:].expand(*ret.shape[:-1], -1)], dim=-1)
        scale_w = scale[w.market][:, None]
        return trans, first, loc_w, scale_w, loc, scale

    def regime_log_lik(self, g, x, loc, scale, market) -> torch.Tensor:
        """Per-regime emission log-likelihood ``(B, L, K)`` of ``x (B, L, F)``; ``loc (B, L|1, K, F)``."""
        x = x[..., None, :]
        if self.student_t:
            df = 2.0 + g["df"][market][:, None, None]
            ll = dist.StudentT(df, loc[..., 0], scale[..., 0]).log_prob(x[..., 0])
        else:
            ll = dist.Normal(loc[..., 0], scale[..., 0]).log_prob(x[..., 0])
        if loc.shape[-1] > 1:
            ll = ll + dist.Normal(loc[..., 1:], scale[..., 1:]).log_prob(x[..., 1:]).sum(-1)
        return ll

    @torch.no_grad()
    def model_terms(self, g: dict[str, torch.Tensor], w: Windows) -> ModelTerms:
        """The model's terms of the model-informed q on the windows ``w`` (no gradient)."""
        g = {k: v.detach() for k, v in g.items()}
        trans, first, loc_w, scale_w, _, _ = self.window_potentials(g, w)
        obs_ll = self.regime_log_lik(g, w.x, loc_w, scale_w, w.market) * w.observed[..., None].to(w.x.dtype)
        return ModelTerms(first.clamp(min=torch.finfo(first.dtype).tiny).log(), trans, obs_ll)

    @torch.no_grad()
    def full_terms(self, g: dict[str, torch.Tensor], data: ModelData) -> ModelTerms:
        """The same terms on every market's full series (days 0 .. T-1), from the exact potentials."""
        pot = ExactRegimeDMM.potentials(self, {k: v.detach() for k, v in g.items()}, data)
        return ModelTerms(pot.log_init, pot.log_trans.exp(), pot.obs_ll)

    def emission_dist(self, g, z, loc_w, scale_w, market):
        """Emission distributions of the windows given relaxed regimes ``z (B, L, K)``: (return, rest or None)."""
        loc_mix = (z[..., None] * loc_w).sum(-2)  # (B, L, F)
        scale_mix = (z[..., None] * scale_w).sum(-2)
        if self.student_t:
            df = 2.0 + g["df"][market][:, None, None]
            if loc_mix.shape[-1] > 1:
                ret = dist.StudentT(df, loc_mix[..., :1], scale_mix[..., :1]).to_event(1)
                rest = dist.Normal(loc_mix[..., 1:], scale_mix[..., 1:]).to_event(1)
                return ret, rest
            return dist.StudentT(df, loc_mix, scale_mix).to_event(1), None
        return dist.Normal(loc_mix, scale_mix).to_event(1), None

    def model(self, data: ModelData, ctx: StepContext | None = None) -> None:
        """The Pyro model of the windows of ``ctx.batch`` (see the module docstring).

        Writes the step's diagnostics into ``ctx.diagnostics``: they add ``present (M,)``, the
        markets the batch holds (``usage`` and ``entropy`` of the others are placeholders).
        """
        ctx = ctx if ctx is not None else StepContext()
        state = ctx.anneal
        dtype = data.x.dtype
        batch = ctx.batch if ctx.batch is not None else self.all_windows(data)
        w = gather_windows(data, batch)
        self.register_networks()
        g = self.sample_globals(dtype)
        trans, first, loc_w, scale_w, loc, scale = self.window_potentials(g, w)
        self.floor_prior(scale)
        self.separation_prior(g)
        prior = RelaxedRegimeChain(state.tau, first, trans, w.mask, self.hyper.straight_through)
        with poutine.scale(scale=batch.scale), pyro.plate("windows", len(w.market), dim=-1):
            with kl_weight(state.beta):
                z = pyro.sample("regimes", prior)
            ret_dist, rest_dist = self.emission_dist(g, z, loc_w, scale_w, w.market)
            if rest_dist is None:
                pyro.sample("obs", ret_dist.mask(w.observed).to_event(1), obs=w.x)
            else:
                pyro.sample("obs", ret_dist.mask(w.observed).to_event(1), obs=w.x[..., :1])
                pyro.sample("obs_rest", rest_dist.mask(w.observed).to_event(1), obs=w.x[..., 1:])
        # ---- penalties from the guide's regime probabilities -------------------------------
        q_log_probs, ctx.guide_regime_log_probs = ctx.guide_regime_log_probs, None
        q_probs = prior.step_logits(z).exp() if q_log_probs is None else q_log_probs.exp()
        weights = state.penalties
        usage, entropy, present = self._batch_usage(q_probs, w, data.x.shape[0])
        usage_pen = torch.where(present[:, None], usage, torch.zeros_like(usage))
        entropy_pen = torch.where(present, entropy, torch.full_like(entropy, weights.entropy_target))
        penalties = {
            "diversity": diversity_penalty(usage_pen, weights.diversity_weight, weights.diversity_threshold),
            "separation": separation_penalty(loc, scale, weights.separation_weight, weights.separation_scale),
            "entropy": entropy_penalty(entropy_pen, weights.entropy_weight, weights.entropy_target),
            # The rarity penalty needs a regime's usage over all days (the exact posterior's); a batch of
            # windows has no panic day often enough to make it noise here.
            "rarity": torch.zeros((), dtype=dtype),
        }
        add_penalty_factors(penalties)
        # ---- diagnostics --------------------------------------------------------------------
        with torch.no_grad():
            maskf = w.mask.to(dtype)
            obs_ll = ret_dist.log_prob(w.x[..., : ret_dist.event_shape[0]])
            if rest_dist is not None:
                obs_ll = obs_ll + rest_dist.log_prob(w.x[..., 1:])
            recon = batch.scale * (obs_ll * w.observed.to(dtype)).sum()
            if q_log_probs is not None:  # the regime sites' KL as the ELBO computes it
                p_log_probs = torch.log_softmax(prior.step_logits(z), dim=-1)
                kl_t = (q_probs * (q_log_probs - p_log_probs)).sum(-1)
                kl = batch.scale * (kl_t * maskf).sum()
            else:
                kl = torch.zeros((), dtype=dtype)
            ctx.diagnostics = {
                "log_likelihood": self.exact_log_likelihood(g, data),
                "recon": recon,
                "kl": kl,
                "entropy": entropy.detach(),
                "usage": usage.detach(),
                "present": present,
                "diversity": penalties["diversity"].detach(),
                "separation": penalties["separation"].detach(),
                "entropy_penalty": penalties["entropy"].detach(),
                "rarity": penalties["rarity"].detach(),
            }

    def _batch_usage(self, probs: torch.Tensor, w: Windows, num_markets: int):
        """Per-market usage ``(M, K)``, mean entropy ``(M,)`` over the batch's real days, and which markets it has."""
        maskf = w.mask.to(probs.dtype)
        onehot = torch.nn.functional.one_hot(w.market, num_markets).to(probs.dtype)  # (B, M)
        days = onehot.T @ maskf.sum(-1)  # (M,)
        present = days > 0
        per_window = (probs * maskf[..., None]).sum(-2)  # (B, K)
        usage = (onehot.T @ per_window) / days.clamp(min=1)[:, None]
        ent_t = -(probs * probs.clamp(min=1e-30).log()).sum(-1)  # (B, L)
        entropy = (onehot.T @ (ent_t * maskf).sum(-1)) / days.clamp(min=1)
        return usage, entropy, present

    def exact_log_likelihood(self, g: dict[str, torch.Tensor], data: ModelData) -> torch.Tensor:
        """Exact ``log Z`` ``(M,)`` of the full data at the globals ``g`` (no gradient, no sites)."""
        with torch.no_grad():
            pot = ExactRegimeDMM.potentials(self, {k: v.detach() for k, v in g.items()}, data)
            return log_normalizer(pot.log_init, pot.log_trans, pot.obs_ll)


class kl_weight:
    """``poutine.scale(beta)`` for ``beta > 0``; ``beta = 0`` masks the sites (scale must be positive)."""

    def __init__(self, beta: float):
        beta = float(beta)
        self._inner = poutine.scale(scale=beta) if beta > 0 else poutine.mask(mask=False)

    def __enter__(self):
        return self._inner.__enter__()

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)
