"""The exact-regime Deep Markov Model.

Per market m (plate of M series, ragged lengths padded):

    p_m      ~ Dirichlet(a)                       initial regime distribution
    A_m[i]   ~ Dirichlet(a + s * e_i)             base transition matrix (sticky)
    sigma_m  = sigma_m1 * exp(cumsum(0, d_m2..d_mK)), d > 0    ordered return scales
    nu_m     = nu_m1 + cumsum(0, e_m2..e_mK),     e > 0        ordered volatility levels
    P(z_t = j | z_{t-1} = i, h_t) = softmax_j(log A_m[i, j] + TransitionNet(h_t)[i, j])
    x_t | z_t = k, h_t ~ Normal / StudentT(loc_mk + EmissionNet(h_t)_k, scale_mk)

with ``x_t = [return, log realised volatility]`` normalised per market and ``h_t`` the
L previous days. Regimes are summed out exactly (:mod:`regime_dmm.inference`), and are
ordered by volatility by construction: ``calm`` is always the least volatile regime.
The default regime prior ``a`` is calm 2, neutral 2, volatile 1, panic 0.5.

Shared regime semantics (``pooling``, two or more markets). The ladder of a market - its log-scale
steps ``d_m`` and its regime means ``loc_m`` in normalised units - is

* ``none``: ``d_mk ~ Gamma(2, 3)``, ``loc_mk ~ Normal(0, 1)``, free per market;
* ``partial`` (default): drawn around a shared ladder, ``d_mk ~ LogNormal(log D_k, tau_1)``,
  ``loc_mk ~ Normal(L_k, tau_2)`` with ``D_k ~ Gamma(2, 3)``, ``L_k ~ Normal(0, 1)`` and the pooling
  scales ``tau ~ LogNormal(log 0.3, 0.5)`` learned with the rest: a market with few panic days borrows
  the meaning of ``panic`` from the others (partial pooling: Gelman et al., "Bayesian Data Analysis",
  3rd ed., ch. 5). The log-normal prior on ``tau`` keeps the MAP estimate away from ``tau = 0``, where a
  hierarchical density is unbounded (Chung et al. 2013, "A nondegenerate penalized likelihood
  estimator for variance parameters in multilevel models");
* ``full``: ``d_m = D``, ``loc_m = L`` for every market.

Separated regimes (``min_step = log(min_ratio)`` > 0): every step ``d_mk`` gets a steep wall below
``min_step``, ``-((min_step - d)_+ / 0.05)^2 / 2`` nats, so adjacent regimes differ by at least about
that volatility ratio (see ``model.min_ratio``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

from ..data.features import ModelData
from .base import ModelDims, Potentials, RegimeModel
from .networks import EmissionNet, TransitionNet
from .penalties import scale_floor_penalty

__all__ = ["POOLING_SCALE_PRIOR", "ExactDMMHyper", "ExactRegimeDMM", "ordered_levels", "separation_wall"]

#: Median and log-sd of the LogNormal prior on the pooling scales ``tau`` (scale steps, means).
POOLING_SCALE_PRIOR = (0.3, 0.5)
#: Width (in log-ratio units) of the wall below the smallest allowed step between adjacent regimes' log sds.
SEPARATION_WIDTH = 0.05


def separation_wall(steps: torch.Tensor, min_step: float) -> torch.Tensor:
    """``steps (..., K-1)`` log-scale steps -> scalar nats: ``sum ((min_step - steps)_+ / 0.05)^2 / 2``."""
    below = torch.relu(min_step - steps)
    return (below / SEPARATION_WIDTH).pow(2).sum() / 2.0


@dataclass(frozen=True)
class ExactDMMHyper:
    """Hyperparameters of :class:`ExactRegimeDMM` (the ``model`` section of the configuration).

    ``regime_prior``: K Dirichlet weights; ``stickiness``: extra weight on the diagonal of each
    transition row; ``emission``: ``"gaussian"`` or ``"studentt"``; ``hidden_size``: the networks'
    width; ``covariate_transitions`` / ``emission_network``: whether each network is used;
    ``network_prior_scale``: sd of the Gaussian prior on the networks' weights (0 = none);
    ``scale_floor``: per market, the lowest sd the calmest regime's return may have (a steep prior
    wall, :func:`~regime_dmm.models.penalties.scale_floor_penalty`; None = none). ``pooling``: ``none``,
    ``partial`` or ``full`` (see the module docstring; one market is always ``none``). ``min_step``: the
    log of the smallest volatility ratio of adjacent regimes (0 = no wall).
    """

    regime_prior: tuple[float, ...]
    stickiness: float = 10.0
    emission: str = "gaussian"
    hidden_size: int = 16
    covariate_transitions: bool = True
    emission_network: bool = True
    network_prior_scale: float = 0.1
    scale_floor: tuple[float, ...] | None = None  # per market, the lowest sd of the return (normalised units)
    pooling: str = "none"
    min_step: float = 0.0


def ordered_levels(base: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``base (M,), steps (M, K-1) > 0`` -> increasing ``(M, K)``."""
    zero = torch.zeros_like(base)[..., None]
    return base[..., None] + torch.cumsum(torch.cat([zero, steps], dim=-1), dim=-1)


class ExactRegimeDMM(RegimeModel):
    """Deep Markov Model with exactly marginalised regimes (see module docstring)."""

    def __init__(self, dims: ModelDims, hyper: ExactDMMHyper):
        super().__init__(dims)
        self.hyper = hyper
        self.num_markets = dims.num_markets
        self.num_features = dims.num_emitted
        self.student_t = hyper.emission == "studentt"
        k, h = dims.num_regimes, hyper.hidden_size
        self.transition_net = TransitionNet(dims.history_size, k, h) if hyper.covariate_transitions else None
        self.emission_net = EmissionNet(dims.history_size, k, dims.num_emitted, h) if hyper.emission_network else None

    def networks(self) -> list[torch.nn.Module]:
        """The transition and emission networks that are switched on."""
        return [net for net in (self.transition_net, self.emission_net) if net is not None]

    def _prior_concentration(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        k, m = self.num_regimes, self.num_markets
        weights = torch.tensor(self.hyper.regime_prior, dtype=dtype)
        init_conc = weights.expand(m, k)
        trans_conc = weights + self.hyper.stickiness * torch.eye(k, dtype=dtype)
        return init_conc, trans_conc.expand(m, k, k)

    def sample_globals(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Initial distributions, transition matrices and emission parameters per market (sample sites)."""
        k, m = self.num_regimes, self.num_markets
        one = torch.ones((), dtype=dtype)
        init_conc, trans_conc = self._prior_concentration(dtype)
        g = {
            "initial": pyro.sample("initial", dist.Dirichlet(init_conc).to_event(1)),
            "transition": pyro.sample("transition", dist.Dirichlet(trans_conc).to_event(2)),
        }
        g.update(self.sample_return_emission(dtype))
        if self.num_features > 1:
            g["vol_loc_base"] = pyro.sample("vol_loc_base", dist.Normal(-1.0 * one, one).expand([m]).to_event(1))
            g["vol_loc_steps"] = pyro.sample(
                "vol_loc_steps", dist.Gamma(2.0 * one, 2.0 * one).expand([m, k - 1]).to_event(2)
            )
            g["vol_scale"] = pyro.sample("vol_scale", dist.LogNormal(-0.7 * one, one).expand([m, k]).to_event(2))
        if self.student_t:
            g["df"] = pyro.sample("df", dist.Gamma(2.0 * one, 0.1 * one).expand([m]).to_event(1))
        return g

    @property
    def pooling(self) -> str:
        """The pooling in effect: ``hyper.pooling``, or ``none`` for one market."""
        return self.hyper.pooling if self.num_markets > 1 else "none"

    def sample_return_emission(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The return's emission parameters of every market: ``ret_loc (M, K)``, ``ret_scale_base (M,)`` and
        ``ret_scale_steps (M, K-1)`` (normalised units), with the shared ladder ``ladder_loc (K,)``,
        ``ladder_steps (K-1,)`` and the pooling scales ``pooling_scale (2,)`` as sample sites when pooled
        (see the module docstring). Unpooled, the sites come in the order of regime-dmm 0.1 (a normal
        guide's draws depend on it)."""
        k, m = self.num_regimes, self.num_markets
        one = torch.ones((), dtype=dtype)
        step_prior = dist.Gamma(2.0 * one, 3.0 * one)

        def scale_base() -> torch.Tensor:
            return pyro.sample("ret_scale_base", dist.LogNormal(-0.5 * one, one).expand([m]).to_event(1))

        if self.pooling == "none":
            return {
                "ret_loc": pyro.sample("ret_loc", dist.Normal(0 * one, one).expand([m, k]).to_event(2)),
                "ret_scale_base": scale_base(),
                "ret_scale_steps": pyro.sample("ret_scale_steps", step_prior.expand([m, k - 1]).to_event(2)),
            }
        g = {
            "ladder_loc": pyro.sample("ladder_loc", dist.Normal(0 * one, one).expand([k]).to_event(1)),
            "ladder_steps": pyro.sample("ladder_steps", step_prior.expand([k - 1]).to_event(1)),
        }
        if self.pooling == "full":
            g = self.with_derived(g)
        else:
            median, spread = POOLING_SCALE_PRIOR
            tau = pyro.sample(
                "pooling_scale", dist.LogNormal(math.log(median) * one, spread * one).expand([2]).to_event(1)
            )
            g["pooling_scale"] = tau
            g["ret_loc"] = pyro.sample("ret_loc", dist.Normal(g["ladder_loc"], tau[1]).expand([m, k]).to_event(2))
            g["ret_scale_steps"] = pyro.sample(
                "ret_scale_steps", dist.LogNormal(g["ladder_steps"].log(), tau[0]).expand([m, k - 1]).to_event(2)
            )
        g["ret_scale_base"] = scale_base()
        return g

    def with_derived(self, g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``g`` with the values that are not sites of their own: under full pooling every market's
        ``ret_loc (M, K)`` and ``ret_scale_steps (M, K-1)`` are the shared ladder's (always derived from it,
        whatever ``g`` holds under those names)."""
        if self.pooling != "full":
            return g
        k, m = self.num_regimes, self.num_markets
        return dict(g, ret_loc=g["ladder_loc"].expand(m, k), ret_scale_steps=g["ladder_steps"].expand(m, k - 1))

    def ladder_starting_values(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``values`` (per-market starting values) with the shared ladder's sites added when pooled: the
        geometric mean of the markets' steps, the mean of their regime means and pooling scales at the
        prior's median."""
        if self.pooling == "none" or "ret_scale_steps" not in values:
            return values
        out = dict(values)
        out["ladder_steps"] = values["ret_scale_steps"].log().mean(0).exp()
        out["ladder_loc"] = values["ret_loc"].mean(0)
        if self.pooling == "partial":
            out["pooling_scale"] = torch.full((2,), POOLING_SCALE_PRIOR[0], dtype=values["ret_loc"].dtype)
        return out

    def separation_prior(self, g: dict[str, torch.Tensor]) -> None:
        """The wall below ``min_step`` on every market's log-scale steps, as a factor (no site without one)."""
        if self.hyper.min_step > 0:  # one ladder under full pooling: its wall counts once
            steps = g["ladder_steps"] if self.pooling == "full" else g["ret_scale_steps"]
            pyro.factor("separation_prior", -separation_wall(steps, self.hyper.min_step))

    def emission_base(self, g: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Base emission locations and scales ``(M, K, F)`` in normalised units."""
        ret_scale = g["ret_scale_base"][..., None] * torch.exp(
            torch.cumsum(torch.cat([torch.zeros_like(g["ret_scale_base"])[..., None], g["ret_scale_steps"]], -1), -1)
        )
        locs, scales = [g["ret_loc"]], [ret_scale]
        if self.num_features > 1:
            locs.append(ordered_levels(g["vol_loc_base"], g["vol_loc_steps"]))
            scales.append(g["vol_scale"])
        return torch.stack(locs, -1), torch.stack(scales, -1)

    def network_log_prior(self) -> torch.Tensor:
        """Gaussian prior on the networks' weights (MAP = weight decay), in nats.

        Without it, a transition network fed the last days' returns learns to flip the
        regime on every large move: higher likelihood, meaningless regimes.
        """
        scale = self.hyper.network_prior_scale
        total = torch.zeros(())
        for net in self.networks():
            if scale > 0:
                for w in net.parameters():
                    total = total - 0.5 * (w / scale).pow(2).sum()
        return total

    def register_networks(self) -> None:
        """Register the networks' weights with Pyro and add their Gaussian prior as a factor."""
        if self.transition_net is not None:
            pyro.module("transition_net", self.transition_net)
        if self.emission_net is not None:
            pyro.module("emission_net", self.emission_net)
        if self.transition_net is not None or self.emission_net is not None:
            pyro.factor("network_prior", self.network_log_prior())

    def scale_floor(self) -> tuple[float, ...] | None:
        """Per market, the lowest return sd of the calmest regime (normalised units), or None."""
        return self.hyper.scale_floor

    def floor_prior(self, scale: torch.Tensor) -> None:
        """The wall below each market's lowest return sd, as a factor (``scale (M, K, F)``); no site without a floor."""
        if self.hyper.scale_floor is not None:
            floor = torch.tensor(self.hyper.scale_floor, dtype=scale.dtype)
            pyro.factor("scale_floor_prior", -scale_floor_penalty(scale[:, 0, 0], floor))

    def emission_shift(self, data: ModelData) -> torch.Tensor | None:
        """The emission network's daily shifts ``(M, T, K)`` of the return location (normalised), or None."""
        if self.emission_net is None:
            return None
        return self.emission_net(data.history)[..., 0]

    def log_potentials(self, data: ModelData) -> Potentials:
        """Potentials of ``data`` at sampled globals (see the module docstring for the model), with the
        networks registered and the walls and the networks' weight prior added as factors."""
        self.register_networks()
        g = self.sample_globals(data.x.dtype)
        pot = self.potentials(g, data)
        self.floor_prior(pot.emission_scale)
        self.separation_prior(g)
        return pot

    def potentials(self, g: dict[str, torch.Tensor], data: ModelData) -> Potentials:
        """Potentials of ``data`` at the globals ``g`` (name -> constrained value) and the networks' current
        weights: a plain function, no Pyro site and no parameter store (shapes in :class:`Potentials`).
        Under full pooling ``g`` may hold the shared ladder's sites only (:meth:`with_derived`)."""
        g = self.with_derived(g)
        loc, scale = self.emission_base(g)
        log_a = g["transition"].clamp(min=1e-30).log()  # (M, K, K)
        steps = data.x.shape[-2]
        log_a = log_a[..., None, :, :].expand(-1, steps, -1, -1)
        if self.transition_net is not None:
            log_a = torch.log_softmax(log_a + self.transition_net(data.history), dim=-1)
        loc_t = loc[..., None, :, :]  # (M, 1, K, F)
        scale_t = scale[..., None, :, :]
        if self.emission_net is not None:
            loc_t = loc_t + self.emission_net(data.history)
        x = data.x[..., None, :]  # (M, T, 1, F)
        # A return over n days: per-day location times sqrt(n) in normalised units (see data.features).
        root = data.span_root
        ret_loc = loc_t[..., 0] if root is None else loc_t[..., 0] * root[..., None]
        if self.student_t:
            df = 2.0 + g["df"][..., None, None]
            ll_ret = dist.StudentT(df, ret_loc, scale_t[..., 0]).log_prob(x[..., 0])
        else:
            ll_ret = dist.Normal(ret_loc, scale_t[..., 0]).log_prob(x[..., 0])
        obs_ll = ll_ret
        if self.num_features > 1:
            obs_ll = obs_ll + dist.Normal(loc_t[..., 1:], scale_t[..., 1:]).log_prob(x[..., 1:]).sum(-1)
        obs_ll = obs_ll * data.emitting[..., None].to(obs_ll.dtype)  # masked and padded days emit nothing
        log_init = g["initial"].clamp(min=1e-30).log()
        return Potentials(log_init, log_a, obs_ll, loc, scale, g)
