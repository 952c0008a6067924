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

Objective: the training loop uses :meth:`RelaxedRegimeDMM.make_elbo`, a ``TraceMeanField_ELBO``:
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

Minibatches: the training loop calls :meth:`RelaxedRegimeDMM.epoch_batches` at the start of
every epoch; it tiles every market's series into windows (with a random offset per epoch,
so the cuts move), shuffles them and splits them into batches of ``training.batch_windows``.
One SVI step per batch; the batch in use is ``model.batch`` and the guide reads it from
there, so model and guide always see the same windows. The choice depends only on
``(training.seed, restart, epoch)``: reproducible, and unchanged by a resume. Each batch's
likelihood and regime terms are multiplied by ``windows / batch size``, so a step's ELBO is
an unbiased estimate of the full-data ELBO.

Penalties (diversity, separation, entropy) are the same ``pyro.factor`` terms as in the
exact model, computed from the *guide's* per-day regime probabilities
``q(z_t | z_{t-1}, x_{t:})`` (the guide leaves them in ``model.context``; a model run
without a guide falls back to the prior's probabilities).

Diagnostics use the exact model's keys; ``log_likelihood`` is the EXACT ``log Z`` of the
full data at the current global parameters (no gradient), so both modes are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer import TraceMeanField_ELBO
from torch.distributions.utils import clamp_probs

from ..config import FitConfig
from ..inference import log_normalizer
from ..training.penalties import diversity_penalty, entropy_penalty, separation_penalty
from .base import AnnealState, ModelData
from .exact_dmm import ExactRegimeDMM


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
    mask: torch.Tensor  # (B, L) bool, a prefix of each window


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
    steps = data.x.shape[-2]
    t = batch.start[:, None] + torch.arange(batch.length)[None, :]  # (B, L)
    tc = t.clamp(max=steps - 1)
    m = batch.market[:, None].expand_as(t)
    mask = (t < data.lengths[batch.market][:, None]) & data.mask[m, tc]
    # a window's mask must be a prefix (padding at the end): true for end-padded panels
    mask = mask.to(torch.long).cumprod(-1).to(torch.bool)
    x = data.x[m, tc] * mask[..., None].to(data.x.dtype)
    return Windows(batch.market, batch.start, x, data.history[m, tc], mask)


def stationary(trans: torch.Tensor, squarings: int = 10) -> torch.Tensor:
    """Stationary distribution ``(..., K)`` of row-stochastic ``(..., K, K)`` by repeated squaring (differentiable)."""
    p = trans
    for _ in range(squarings):
        p = p @ p
    row = p[..., 0, :]
    return row / row.sum(-1, keepdim=True)


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
        value._unquantize = torch.stack(softs, dim=-2)
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
        return torch.where(self.mask, lp, torch.zeros_like(lp))

    def log_prob(self, value):
        return self.day_log_prob(value).sum(-1)

    def expand(self, batch_shape, _instance=None):
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
        self.mask = mask  # (B, L) bool: real days
        self.straight_through = straight_through
        super().__init__(trans.shape[:-3], trans.shape[-3:-1], validate_args=validate_args)

    def step_logits(self, value: torch.Tensor) -> torch.Tensor:
        """``log(z_{t-1} @ A_t)`` for every day of ``value (B, L, K)`` (the first day: ``log p_s``)."""
        rest = (value[..., :-1, None, :] @ self.trans[..., 1:, :, :]).squeeze(-2)
        probs = torch.cat([self.first_probs[..., None, :], rest], dim=-2)
        return probs.clamp(min=torch.finfo(probs.dtype).tiny).log()

    def rsample(self, sample_shape=torch.Size()):
        if sample_shape:
            raise NotImplementedError("RelaxedRegimeChain draws one chain per window")
        values, softs = [], []
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

    def __init__(self, config: FitConfig, num_markets: int, num_features: int):
        super().__init__(config, num_markets, num_features)
        from ..guides.inference_network import InferenceNetwork

        self.inference_net = InferenceNetwork(num_features, self.num_regimes, config.model.hidden_size)
        self.batch: WindowBatch | None = None
        self.context: dict = {}  # the guide's per-day regime probabilities of the current step
        self._usage_cache: torch.Tensor | None = None
        self._entropy_cache: torch.Tensor | None = None

    # ---- minibatches ---------------------------------------------------------------------
    def epoch_batches(self, data: ModelData, epoch: int, restart: int = 0) -> list[WindowBatch]:
        """The batches of one epoch: every window once, shuffled; depends on (seed, restart, epoch) only."""
        tc = self.config.training
        self.context.clear()
        self._usage_cache = self._entropy_cache = None  # diagnostics carry over within an epoch only
        rng = np.random.default_rng([tc.seed, restart, epoch])
        offset = int(rng.integers(tc.window_length))
        market, start = tile_windows(data.lengths.tolist(), tc.window_length, offset)
        order = rng.permutation(len(market))
        total = len(order)
        batches = []
        for lo in range(0, total, tc.batch_windows):
            idx = order[lo: lo + tc.batch_windows]
            batches.append(WindowBatch(torch.as_tensor(market[idx]), torch.as_tensor(start[idx]),
                                       tc.window_length, total / len(idx)))
        return batches

    def current_batch(self, data: ModelData) -> WindowBatch:
        """``self.batch`` when the training loop set one, else every window at once (scale 1)."""
        if self.batch is not None:
            return self.batch
        market, start = tile_windows(data.lengths.tolist(), self.config.training.window_length)
        return WindowBatch(torch.as_tensor(market), torch.as_tensor(start), self.config.training.window_length, 1.0)

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
        mid = (stationary(base)[:, None, :] @ trans[:, 0]).squeeze(-2)
        first = torch.where((w.start == 0)[:, None], init, mid)
        loc_w = loc[w.market][:, None]  # (B, 1, K, F)
        if self.emission_net is not None:
            loc_w = loc_w + self.emission_net(w.history)
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
    def model_terms(self, g: dict[str, torch.Tensor], w: Windows):
        """The model's terms of the model-informed q on the windows ``w`` (no gradient)."""
        from ..guides.inference_network import ModelTerms

        g = {k: v.detach() for k, v in g.items()}
        trans, first, loc_w, scale_w, _, _ = self.window_potentials(g, w)
        obs_ll = self.regime_log_lik(g, w.x, loc_w, scale_w, w.market) * w.mask[..., None].to(w.x.dtype)
        return ModelTerms(first.clamp(min=torch.finfo(first.dtype).tiny).log(), trans, obs_ll)

    @torch.no_grad()
    def full_terms(self, g: dict[str, torch.Tensor], data: ModelData):
        """The same terms on every market's full series (days 0 .. T-1), from the exact potentials."""
        from ..guides.inference_network import ModelTerms

        values = {k: v.detach() for k, v in g.items()}
        with poutine.block():
            pot = poutine.condition(partial(ExactRegimeDMM.log_potentials, self), data=values)(data)
        return ModelTerms(pot.log_init, pot.log_trans.exp(), pot.obs_ll)

    def emission_dist(self, g, z, loc_w, scale_w, market):
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

    def model(self, data: ModelData, state: AnnealState | None = None) -> dict:
        state = state or AnnealState()
        dtype = data.x.dtype
        batch = self.current_batch(data)
        w = gather_windows(data, batch)
        self.register_networks()
        g = self.sample_globals(dtype)
        trans, first, loc_w, scale_w, loc, scale = self.window_potentials(g, w)
        prior = RelaxedRegimeChain(state.tau, first, trans, w.mask, self.config.training.straight_through)
        with poutine.scale(scale=batch.scale), pyro.plate("windows", len(w.market), dim=-1):
            with kl_weight(state.beta):
                z = pyro.sample("regimes", prior)
            ret_dist, rest_dist = self.emission_dist(g, z, loc_w, scale_w, w.market)
            if rest_dist is None:
                pyro.sample("obs", ret_dist.mask(w.mask).to_event(1), obs=w.x)
            else:
                pyro.sample("obs", ret_dist.mask(w.mask).to_event(1), obs=w.x[..., :1])
                pyro.sample("obs_rest", rest_dist.mask(w.mask).to_event(1), obs=w.x[..., 1:])
        # ---- penalties from the guide's regime probabilities -------------------------------
        q_log_probs = self.context.pop("q_log_probs", None)
        q_probs = prior.step_logits(z).exp() if q_log_probs is None else q_log_probs.exp()
        weights = state.penalties
        usage, entropy, present = self._batch_usage(q_probs, w, data.x.shape[0])
        usage_pen = torch.where(present[:, None], usage, torch.zeros_like(usage))
        entropy_pen = torch.where(present, entropy, torch.full_like(entropy, weights.entropy_target))
        penalties = {
            "diversity": diversity_penalty(usage_pen, weights.diversity, weights.diversity_threshold),
            "separation": separation_penalty(loc, scale, weights.separation, weights.separation_scale),
            "entropy": entropy_penalty(entropy_pen, weights.entropy, weights.entropy_target),
        }
        for name, value in penalties.items():
            if value.requires_grad or float(value) != 0.0:
                pyro.factor(f"{name}_penalty", -value)
        # ---- diagnostics --------------------------------------------------------------------
        with torch.no_grad():
            maskf = w.mask.to(dtype)
            obs_ll = ret_dist.log_prob(w.x[..., : ret_dist.event_shape[0]])
            if rest_dist is not None:
                obs_ll = obs_ll + rest_dist.log_prob(w.x[..., 1:])
            recon = batch.scale * (obs_ll * maskf).sum()
            if q_log_probs is not None:  # the regime sites' KL as the ELBO computes it (see make_elbo)
                p_log_probs = torch.log_softmax(prior.step_logits(z), dim=-1)
                kl_t = (q_probs * (q_log_probs - p_log_probs)).sum(-1)
                kl = batch.scale * (kl_t * maskf).sum()
            else:
                kl = torch.zeros((), dtype=dtype)
            usage_d, entropy_d = self._carry(usage.detach(), entropy.detach(), present)
            self.last_diagnostics = {
                "log_likelihood": self.exact_log_likelihood(g, data),
                "recon": recon,
                "kl": kl,
                "entropy": entropy_d,
                "usage": usage_d,
                "diversity": penalties["diversity"].detach(),
                "separation": penalties["separation"].detach(),
                "entropy_penalty": penalties["entropy"].detach(),
            }
        return self.last_diagnostics

    def make_elbo(self):
        """The ELBO the training loop uses: :class:`TraceMeanField_ELBO`, which takes the regime
        sites' KL from the registered chain-rule categorical KL (guides/inference_network.py)."""
        return TraceMeanField_ELBO(num_particles=1)

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

    def _carry(self, usage, entropy, present):
        """Markets missing from a batch keep their last values (diagnostics only)."""
        k = usage.shape[-1]
        if self._usage_cache is None or self._usage_cache.shape != usage.shape:
            self._usage_cache = torch.full_like(usage, 1.0 / k)
            self._entropy_cache = torch.full_like(entropy, float(np.log(k)))
        self._usage_cache = torch.where(present[:, None], usage, self._usage_cache)
        self._entropy_cache = torch.where(present, entropy, self._entropy_cache)
        return self._usage_cache.clone(), self._entropy_cache.clone()

    def exact_log_likelihood(self, g: dict[str, torch.Tensor], data: ModelData) -> torch.Tensor:
        """Exact ``log Z`` ``(M,)`` of the full data at the globals ``g`` (no gradient, no sites)."""
        values = {k: v.detach() for k, v in g.items()}
        with torch.no_grad(), poutine.block():
            pot = poutine.condition(partial(ExactRegimeDMM.log_potentials, self), data=values)(data)
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
