"""Classic mode: a maximum-likelihood Markov-switching model of the return alone.

The model of statsmodels' ``MarkovRegression(switching_variance=True)`` and hmmlearn's
``GaussianHMM`` with a free initial distribution: per market and regime a mean and a
standard deviation of the return, in the units given (no normalisation, no networks,
flat priors, no penalties). Parameters are plain ``pyro.param`` s, so the objective is the
exact log-likelihood; the standard deviations are ordered (cumulative positive steps), so
regime 0 is always the calmest.
"""

from __future__ import annotations

import pyro
import torch
from pyro.distributions import constraints

from ..config import FitConfig
from .base import ModelData, Potentials, RegimeModel


class ClassicMarkovSwitching(RegimeModel):
    def __init__(self, config: FitConfig, num_markets: int, init_values: dict[str, torch.Tensor]):
        super().__init__()
        self.config = config
        self.num_markets = num_markets
        self.num_regimes = config.model.num_regimes
        self.num_features = 1
        self.init_values = init_values
        self.scale_floor = init_values["ret_scale_floor"]  # (M,) lower bound of the calm sd

    def sample_globals(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        iv = {k: v.to(dtype) for k, v in self.init_values.items()}
        return {
            "initial": pyro.param("classic.initial", iv["initial"], constraint=constraints.simplex),
            "transition": pyro.param("classic.transition", iv["transition"], constraint=constraints.simplex),
            "ret_loc": pyro.param("classic.ret_loc", iv["ret_loc"]),
            "ret_scale_base": pyro.param("classic.ret_scale_base", iv["ret_scale_base"], constraint=constraints.positive),
            "ret_scale_steps": pyro.param(
                "classic.ret_scale_steps", iv["ret_scale_steps"], constraint=constraints.positive
            ),
        }

    def emission_base(self, g: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        zero = torch.zeros_like(g["ret_scale_base"])[..., None]
        base = self.scale_floor.to(g["ret_scale_base"].dtype) + g["ret_scale_base"]  # sd of the calm regime
        scale = base[..., None] * torch.exp(torch.cumsum(torch.cat([zero, g["ret_scale_steps"]], -1), -1))
        return g["ret_loc"][..., None], scale[..., None]

    def log_potentials(self, data: ModelData) -> Potentials:
        g = self.sample_globals(data.x.dtype)
        loc, scale = self.emission_base(g)
        steps = data.x.shape[-2]
        log_a = g["transition"].clamp(min=1e-300).log()[..., None, :, :].expand(-1, steps, -1, -1)
        obs_ll = torch.distributions.Normal(loc[..., None, :, 0], scale[..., None, :, 0]).log_prob(data.x[..., :1])
        obs_ll = obs_ll * data.mask[..., None].to(obs_ll.dtype)
        return Potentials(g["initial"].clamp(min=1e-300).log(), log_a, obs_ll, loc, scale)


def empty_guide(*args, **kwargs) -> None:
    """Classic mode has no latent sites: the parameters are point estimates."""
