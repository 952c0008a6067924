"""Amortised inference network and guide of the relaxed-regime DMM.

q(z_s:e | x_s:e) = prod_t q(z_t | z_{t-1}, x_{t:e}) per window ``[s, e]``:

* a backward GRU over the window's observed features (``[x_t, |x_t|]``, reverse time, each
  window reversed within its own length so padded days never reach a real day) gives h_t,
  the summary of x_{t:e};
* an MLP on ``[h_t, z_{t-1}]`` gives the logits of q(z_t | ...) (``z_{s-1} = 0``: unknown);
* z_t ~ RelaxedOneHot(tau, logits) (straight-through when configured), tau = ``state.tau``.

Model-informed logits (default, ``model_informed=True``): the exact posterior factorises as
p(z_t | z_{t-1}, x_{t:T}) ∝ p(z_t | z_{t-1}) p(x_t | z_t) beta_t(z_t), so the logits are

    log(z_{t-1} @ A_t) + log p(x_t | z_t = k) + MLP([h_t, z_{t-1}])_k

with the model's own transition and emission terms at the current global values (gradient
stopped: q's parameters are the network's) and the network learning only the backward
message log beta_t. Its output layer starts at zero, so an untrained q is the model's
forward ("filtering") proposal instead of a uniform guess. Without these terms the network
has to learn volatility classification from returns alone. Measured on the default
simulation (seed 0), globals frozen at the warm start, 200 epochs (600 steps, lr 3e-3): q's
most probable regime matched the truth on 81 % / 74 % of the days (two markets) without
the model terms and 91 % / 84 % with them; the exact posterior: 93 % / 90 %.

The network is owned by the guide (:class:`RelaxedGuide`, ``guide.inference_net``) and
registered with ``pyro.module("inference_net", ...)``. The global parameters get a MAP point
estimate (:class:`AutoLaplaceApproximation`, as the exact mode's ``map`` guide, over the
model with only the global sites exposed).

:func:`inference_marginals` runs the network on each market's full series and returns
q's marginal regime probabilities, the relaxed mode's ``smoothed`` probabilities.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoLaplaceApproximation
from pyro.infer.autoguide.initialization import init_to_median, init_to_value
from torch import nn
from torch.distributions import register_kl

from ..data.features import ModelData
from ..models.base import RegimeModel, StepContext
from ..models.relaxed_dmm import (
    ModelTerms,
    RelaxedRegimeChain,
    RelaxedRegimeDMM,
    WindowRegimeDistribution,
    gather_windows,
    kl_weight,
    relaxed_step,
    stack_steps,
)
from .base import GlobalsPosterior
from .globals import sample_site_values

__all__ = ["InferenceNetwork", "RelaxedGuide", "StructuredRegimePosterior", "inference_marginals", "reverse_within"]

_NO_SAMPLE_SHAPE = torch.Size()


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse ``x (B, L, D)`` along time within each sequence's length; padding stays at the end."""
    steps = x.shape[-2]
    t = torch.arange(steps)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return torch.gather(x, -2, idx[..., None].expand_as(x))


class InferenceNetwork(nn.Module):
    """Backward GRU over ``[x, |x|]`` plus a combiner MLP on ``[h_t, z_{t-1}]`` -> logits ``(.., K)``."""

    def __init__(self, num_features: int, num_regimes: int, hidden: int):
        super().__init__()
        self.num_regimes = num_regimes
        self.gru = nn.GRU(2 * num_features, hidden, batch_first=True)
        first = nn.Linear(hidden + num_regimes, hidden)  # created before the output layer: the order of
        out = nn.Linear(hidden, num_regimes)  # random draws is part of a seeded fit's result
        self.combiner = nn.Sequential(first, nn.Tanh(), out)
        nn.init.zeros_(out.weight)  # start at the model's terms (or uniform without them)
        nn.init.zeros_(out.bias)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, L, F)``, prefix ``mask (B, L)`` -> ``h (B, L, H)``, h_t summarising x_{t:end}."""
        lengths = mask.sum(-1)
        feats = torch.cat([x, x.abs()], dim=-1) * mask[..., None].to(x.dtype)
        out, _ = self.gru(reverse_within(feats, lengths))
        return reverse_within(out, lengths)

    def logits(self, h: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
        """Logits ``(.., K)`` of q(z_t | z_{t-1}, x_{t:}) from ``h (.., H)`` and ``z_prev (.., K)``."""
        return self.combiner(torch.cat([h, z_prev], dim=-1))


class StructuredRegimePosterior(WindowRegimeDistribution):
    """q of a window's relaxed regimes: batch ``(B,)``, event ``(L, K)``; sampling is sequential."""

    arg_constraints = {}
    support = constraints.independent(constraints.simplex, 1)
    has_rsample = True

    def __init__(
        self,
        net: InferenceNetwork,
        h: torch.Tensor,
        tau,
        mask=None,
        straight_through=False,
        terms: ModelTerms | None = None,
        validate_args=False,
    ):
        self.net = net
        self.h = h  # (B, L, H)
        self.terms = terms
        self.tau = torch.as_tensor(tau, dtype=h.dtype)
        self.day_mask = mask if mask is not None else torch.ones(h.shape[:-1], dtype=torch.bool)  # (B, L)
        self.straight_through = straight_through
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(h.shape[:-2], torch.Size([h.shape[-2], net.num_regimes]), validate_args=validate_args)

    def rsample(self, sample_shape=_NO_SAMPLE_SHAPE):
        """One relaxed chain per window ``(B, L, K)``, drawn day by day (reparameterised)."""
        if sample_shape:
            raise NotImplementedError("StructuredRegimePosterior draws one chain per window")
        k = self.net.num_regimes
        z = self.h.new_zeros(self.h.shape[:-2] + (k,))
        values, softs, logits = [], [], []
        for t in range(self.h.shape[-2]):
            step = self.net.logits(self.h[..., t, :], z)
            if self.terms is not None:
                step = step + self.terms.step(t, z)
            z, soft = relaxed_step(self.tau, step, self.straight_through)
            values.append(z)
            softs.append(soft)
            logits.append(step)
        value = stack_steps(values, softs, self.straight_through)
        self._cache = (value, torch.stack(logits, dim=-2))
        return value

    def step_logits(self, value: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, K)`` of q(z_t | z_{t-1}, x_{t:}) along the chain ``value``."""
        if self._cache is not None and self._cache[0] is value:
            return self._cache[1]
        prev = torch.cat([torch.zeros_like(value[..., :1, :]), value[..., :-1, :]], dim=-2)
        logits = self.net.logits(self.h, prev)
        return logits if self.terms is None else logits + self.terms.along(value)


@register_kl(StructuredRegimePosterior, RelaxedRegimeChain)
def _kl_structured_chain(q: StructuredRegimePosterior, p: RelaxedRegimeChain) -> torch.Tensor:
    """KL of the regimes along q's sampled path, per window ``(B,)``: the chain rule
    KL(q || p) = E_q sum_t KL(q(z_t | z_{t-1}, x) || p(z_t | z_{t-1})), with each step's KL the
    exact one between the CATEGORICAL distributions of the two logits (as in the Gumbel-Softmax
    VAE), given the relaxed z_{t-1} that q drew. Relaxed densities are unbounded near the
    vertices, and their log-ratio is a KL estimate that the model can drive to -inf by
    sharpening its transitions (measured: the ELBO diverged); the categorical KL is >= 0 and
    has no sampling noise in z_t. Padded days contribute nothing.
    """
    if q._cache is None:  # no path sampled yet: let the ELBO fall back on sampling
        raise NotImplementedError
    value = q._cache[0]
    lq = torch.log_softmax(q.step_logits(value), dim=-1)
    lp = torch.log_softmax(p.step_logits(value), dim=-1)
    kl = (lq.exp() * (lq - lp)).sum(-1)
    return torch.where(q.day_mask, kl, torch.zeros_like(kl)).sum(-1)


def global_site_names(model: RegimeModel, dtype: torch.dtype) -> list[str]:
    """Names of the model's global sample sites (as drawn by ``sample_globals``; draws from the prior)."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model.sample_globals).get_trace(dtype)
    return [name for name, site in trace.nodes.items() if site["type"] == "sample"]


class RelaxedGuide:
    """MAP of the globals (AutoLaplaceApproximation) + the structured inference network.

    ``starting_values``: name -> constrained starting value of global sites; ``hidden_size``:
    the network's width; ``dtype``: the model's float type; ``model_informed``: add the model's
    own terms to q's logits (see the module docstring).
    """

    kind = "relaxed"
    is_point_estimate = True

    def __init__(
        self,
        model: RelaxedRegimeDMM,
        starting_values: dict[str, torch.Tensor] | None = None,
        *,
        hidden_size: int = 16,
        dtype: torch.dtype = torch.float64,
        model_informed: bool = True,
    ):
        self.model = model
        self.model_informed = model_informed
        self.inference_net = InferenceNetwork(model.dims.num_emitted, model.num_regimes, hidden_size).to(dtype)
        self.global_names = global_site_names(model, dtype)
        names = set(self.global_names)
        init = init_to_value(values=dict(starting_values or {}), fallback=init_to_median)
        blocked = poutine.block(model.model, expose_fn=lambda msg: msg.get("name") in names)
        self.globals_guide = AutoLaplaceApproximation(blocked, init_loc_fn=init)

    def __call__(self, data: ModelData, ctx: StepContext | None = None) -> Any:
        ctx = ctx if ctx is not None else StepContext()
        state = ctx.anneal
        values = self.globals_guide(data, ctx)
        model = self.model
        pyro.module("inference_net", self.inference_net)
        net = self.inference_net
        batch = ctx.batch if ctx.batch is not None else model.all_windows(data)
        w = gather_windows(data, batch)
        terms = model.model_terms(values, w) if self.model_informed else None
        q = StructuredRegimePosterior(
            net, net.encode(w.x, w.mask), state.tau, w.mask, model.hyper.straight_through, terms
        )
        with poutine.scale(scale=batch.scale), pyro.plate("windows", len(w.market), dim=-1), kl_weight(state.beta):
            z = pyro.sample("regimes", q)
        ctx.guide_regime_log_probs = torch.log_softmax(q.step_logits(z), dim=-1)
        return values

    def point_estimate(self, data: ModelData) -> dict[str, torch.Tensor]:
        """Point estimate (MAP) of every global site."""
        with torch.no_grad():
            return sample_site_values(poutine.trace(self.globals_guide).get_trace(data, StepContext()))

    def read_out(self, data: ModelData) -> GlobalsPosterior:
        """The MAP point estimate of the globals (the inference network keeps its weights in its module)."""
        return GlobalsPosterior(self.point_estimate(data))

    def regime_marginals(self, model: RegimeModel, data: ModelData, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """q's marginal regime probabilities ``(M, T, K)`` over each market's full series
        (:func:`inference_marginals`)."""
        assert isinstance(model, RelaxedRegimeDMM)
        return inference_marginals(self.inference_net, model, data, values, model_informed=self.model_informed)

    def describe_draws(self, num_draws: int) -> str:
        """What the single draw is, for the ArviZ export's ``note``."""
        return (
            "point estimate (MAP of the global parameters, relaxed mode) with one draw: no posterior "
            "uncertainty; smoothed_probs here are the exact posterior at those values, not the "
            "inference network's marginals reported in the fit's results"
        )


@torch.no_grad()
def inference_marginals(
    net: InferenceNetwork,
    model: RelaxedRegimeDMM,
    data: ModelData,
    globals_: dict[str, torch.Tensor] | None = None,
    *,
    tau: float | None = None,
    num_samples: int = 0,
    model_informed: bool = True,
) -> torch.Tensor:
    """q's marginal regime probabilities ``(M, T, K)`` over each market's FULL series (no windows).

    ``net`` is the guide's :class:`InferenceNetwork`, ``model`` the
    :class:`~regime_dmm.models.relaxed_dmm.RelaxedRegimeDMM`, ``globals_`` the global values for
    the model-informed terms (needed unless ``model_informed=False``). Default
    (``num_samples = 0``): the marginals of the discrete chain that q defines, propagated exactly,
    q(z_t) = sum_i q(z_{t-1} = i) q(z_t | z_{t-1} = e_i, x_{t:T}) (the tau -> 0 limit of the
    relaxed q, which is what the straight-through forward pass samples; deterministic). With
    ``num_samples > 0``: the average of that many relaxed chains drawn at temperature ``tau``
    (the final training temperature). Padded days hold junk. Raises ``ValueError`` when the
    global values or ``tau`` are missing.
    """
    h = net.encode(data.x, data.mask)  # (M, T, H)
    k = net.num_regimes
    terms = None
    if model_informed:
        if globals_ is None:
            raise ValueError("the model-informed q needs the global values")
        terms = model.full_terms(globals_, data)
    if num_samples > 0:
        if tau is None:
            raise ValueError("tau is needed to average relaxed samples")
        hs = h.repeat_interleave(num_samples, dim=0)
        rep = None if terms is None else ModelTerms(*(t.repeat_interleave(num_samples, dim=0) for t in terms))
        z = StructuredRegimePosterior(net, hs, tau, None, model.hyper.straight_through, rep).rsample()
        return z.reshape(h.shape[0], num_samples, *z.shape[1:]).mean(1)
    eye = torch.eye(k, dtype=h.dtype)
    steps = h.shape[-2]
    logits = net.logits(h[:, :, None, :].expand(-1, -1, k, -1), eye.expand(h.shape[0], steps, k, k))
    first = net.logits(h[:, 0], torch.zeros(h.shape[0], k, dtype=h.dtype))
    if terms is not None:  # rows i: log A_t[i, :] + log p(x_t | .)
        logits = logits + terms.trans.clamp(min=torch.finfo(h.dtype).tiny).log() + terms.obs_ll[:, :, None, :]
        first = first + terms.first_log + terms.obs_ll[:, 0]
    cond = torch.softmax(logits, dim=-1)  # (M, T, K, K)
    p = torch.softmax(first, dim=-1)
    out = [p]
    for t in range(1, steps):
        p = (p[:, None, :] @ cond[:, t]).squeeze(-2)
        out.append(p)
    return torch.stack(out, dim=-2)
