"""The fitted model: one object that every consumer of a fit asks.

:class:`FittedModel` holds the configuration, the feature pipeline, the data it was fitted
on, the model, the guide and its own parameters (in the spirit of
``pyro.contrib.forecast.Forecaster`` and dynamax's parameter containers). ``fit`` builds it
once from the kept restart; loading a saved fit builds it with the same constructor. Results,
nowcasts, forecasts, model selection, the ArviZ export and the plots call its methods and
never touch Pyro's global parameter store or ``poutine`` themselves:

* :meth:`point_estimate` - the global parameters' point estimate;
* :meth:`draws` - draws of the global parameters (the point estimate for a point-mass guide);
* :meth:`potentials` - log-potentials of any data at the point estimate or at given values;
* :meth:`posterior` - those potentials with their exact posterior (cached for the fitted data);
* :meth:`smoothed` - the regime marginals the fit reports (the relaxed mode: its inference network's);
* :meth:`num_parameters` - the number of free parameters (for BIC and the summary);
* :meth:`pooling` - the shared regime ladder and the learned degree of pooling across markets.

Its parameters live in the object as plain values (dynamax's style): the guide's point estimate and,
for the normal guide, each global site's loc and scale (:class:`~regime_dmm.guides.GlobalsPosterior`);
the networks' weights in the model's and guide's own modules; and the unconstrained tensors a
checkpoint saves. They are read out of Pyro's parameter store once, at construction, in an isolated
store (:func:`~regime_dmm.training.svi.isolated_parameters`); after that no query touches the store, so
several fits live side by side in one session and a query costs only its arithmetic.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints

from .config import FitConfig
from .data.features import FeaturePipeline, ModelData, Panel
from .guides.base import GlobalsPosterior, RegimeGuide
from .inference import HMMPosterior, posterior
from .models.base import Potentials, RegimeModel
from .training.svi import isolated_parameters, materialise, restore_parameters
from .training.variants import Variant, variant_for

__all__ = ["FittedModel"]

Values = dict[str, torch.Tensor]


class FittedModel:
    """A trained regime model with its configuration, features, data and parameters.

    Parameters
    ----------
    variant, config:
        The mode's :class:`~regime_dmm.training.variants.Variant` and the resolved configuration.
    pipeline, panel, data:
        The fitted :class:`FeaturePipeline`, the :class:`Panel` it was fitted on and its
        :class:`ModelData` tensors.
    model, guide:
        The model and a guide of the right structure (their parameter values are replaced).
    params:
        The parameters to hold (name -> unconstrained tensor, as in Pyro's param store).

    Raises :class:`~regime_dmm.errors.CheckpointError` when ``params`` do not fit the model.
    """

    def __init__(
        self,
        variant: Variant,
        config: FitConfig,
        pipeline: FeaturePipeline,
        panel: Panel,
        data: ModelData,
        model: RegimeModel,
        guide: RegimeGuide,
        params: dict[str, torch.Tensor],
    ):
        self.variant = variant
        self.config = config
        self.pipeline = pipeline
        self.panel = panel
        self.data = data
        self.model = model
        self.guide = guide
        self.dtype = data.x.dtype
        with isolated_parameters():
            materialise(model, guide, data)
            restore_parameters(params)  # the networks' modules now hold the fitted weights
            read = guide.read_out(data)
        # copies: a guide's traced values can share memory with its parameters, which an optimiser moves in place
        self._globals = GlobalsPosterior({k: v.detach().clone() for k, v in read.point.items()}, read.normal)
        self._params = {name: value.detach().clone() for name, value in params.items()}
        self._evaluation: tuple[Potentials, HMMPosterior] | None = None

    @classmethod
    def build(
        cls,
        config: FitConfig,
        pipeline: FeaturePipeline,
        panel: Panel,
        params: dict[str, torch.Tensor],
        dtype: torch.dtype,
    ) -> FittedModel:
        """A fitted model from saved parameters: the variant builds model and guide, then :meth:`__init__`."""
        variant = variant_for(config)
        model = variant.build_model(config, pipeline.spec, panel, dtype)
        guide = variant.build_guide(model, config, variant.placeholder_values(panel, config, dtype), dtype)
        return cls(variant, config, pipeline, panel, pipeline.model_data(panel, dtype), model, guide, params)

    # ---- parameters ----------------------------------------------------------------------------
    def parameters(self) -> dict[str, torch.Tensor]:
        """A copy of the parameters (name -> unconstrained tensor, as in Pyro's param store), for checkpoints."""
        return {name: value.clone() for name, value in self._params.items()}

    def point_estimate(self) -> Values:
        """Point estimate of the global parameters (name -> constrained value; a copy)."""
        return {name: value.clone() for name, value in self._globals.point.items()}

    def draws(self, num_draws: int, seed: int = 0) -> list[Values]:
        """``num_draws`` draws of the global parameters from the guide, or ``[point estimate]`` for a
        point-mass guide. Seeded; torch's global random state is left as it was."""
        if self._globals.is_point_estimate:
            return [self.point_estimate()]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return [self._globals.draw() for _ in range(int(num_draws))]

    def describe_draws(self, num_draws: int) -> str:
        """What :meth:`draws` returns, in words."""
        return str(self.guide.describe_draws(num_draws))

    # ---- potentials and posteriors -----------------------------------------------------------------
    def model_data(self, panel: Panel) -> ModelData:
        """The model's tensors of another panel (e.g. the fitted one extended with new days)."""
        return self.pipeline.model_data(panel, self.dtype)

    def potentials(self, data: ModelData | None = None, values: Values | None = None) -> Potentials:
        """Log-potentials of ``data`` (default: the fitted data) at ``values`` (default: the point estimate)."""
        data = self.data if data is None else data
        values = self.point_estimate() if values is None else values
        with torch.no_grad():
            return self.model.potentials(values, data).detached()

    def posterior(self, data: ModelData | None = None, values: Values | None = None) -> tuple[Potentials, HMMPosterior]:
        """``(potentials, exact posterior)`` of ``data`` at ``values``; computed once for the fitted data
        at the point estimate."""
        if data is None and values is None:
            if self._evaluation is None:
                pot = self.potentials()
                self._evaluation = (pot, posterior(pot.log_init, pot.log_trans, pot.obs_ll))
            return self._evaluation
        pot = self.potentials(data, values)
        return pot, posterior(pot.log_init, pot.log_trans, pot.obs_ll)

    def smoothed(self) -> torch.Tensor:
        """The smoothed regime probabilities ``(M, T, K)`` the fit reports: the exact posterior's, or
        the guide's own marginals where it has them (the relaxed mode's inference network)."""
        own = self.guide.regime_marginals(self.model, self.data, self.point_estimate())
        return self.posterior()[1].smoothed if own is None else own.detach()

    def emission_shift(self, data: ModelData | None = None) -> torch.Tensor | None:
        """The emission network's daily shifts ``(M, T, K)`` of the return location (normalised), or None."""
        with torch.no_grad():
            return self.model.emission_shift(self.data if data is None else data)

    def scale_floors(self) -> dict[str, float] | None:
        """Per market, the lowest return sd the guard lets a regime have, in input units (None: no guard)."""
        floor = self.model.scale_floor()
        if floor is None:
            return None
        return {
            s.name: float(self.pipeline.scale_to_input_units(s.name, "return", f))
            for s, f in zip(self.panel.series, floor)
        }

    def pooling(self, regimes: tuple[str, ...]) -> dict[str, Any]:
        """How the markets share the meaning of the regimes (``model.pooling``), for ``summary.json``.

        ``mode``: the pooling in effect (``none`` for one market or the classic mode). When pooled:
        ``ladder`` - the shared volatility ratio of each adjacent pair ``"a|b"`` (``exp`` of the shared
        log-scale step) and the shared mean return of each regime (normalised units); ``scale`` (partial
        pooling only) - the learned pooling scales: ``log_step_sd``, the sd of the log of a market's
        log-scale step about the shared step's log (0.3: a market's step is the shared one times or divided
        by about 1.35), and ``mean_sd``, the sd of a market's regime means about the shared ones (normalised
        units). Near 0 the markets share one ladder; large, each has its own.
        """
        mode = getattr(self.model, "pooling", "none")
        out: dict[str, Any] = {"mode": mode}
        if mode == "none":
            return out
        values = self.point_estimate()
        ratios = values["ladder_steps"].exp().tolist()
        out["ladder"] = {
            "volatility_ratio": {f"{a}|{b}": round(r, 6) for a, b, r in zip(regimes, regimes[1:], ratios)},
            "mean_return_normalised": {r: round(v, 6) for r, v in zip(regimes, values["ladder_loc"].tolist())},
        }
        if "pooling_scale" in values:
            tau = values["pooling_scale"].tolist()
            out["scale"] = {"log_step_sd": round(tau[0], 6), "mean_sd": round(tau[1], 6)}
        return out

    def num_parameters(self) -> int:
        """Free parameters of the model (all markets): a simplex of K entries counts K - 1.

        Counts the model's global sites (initial K-1 and transition K(K-1) per market, emission
        parameters) and network weights; the guide's variational parameters are not counted.
        """
        with torch.no_grad():
            trace = poutine.trace(poutine.condition(self.model.sample_globals, data=self.point_estimate())).get_trace(
                self.dtype
            )
        total = sum(int(w.numel()) for net in self.model.networks() for w in net.parameters())
        nodes: dict[str, Any] = dict(trace.nodes)
        for name, site in nodes.items():
            if site["type"] != "sample" or name.startswith("_") or isinstance(site["fn"], dist.Unit):
                continue
            base = site["fn"].support
            while hasattr(base, "base_constraint"):
                base = base.base_constraint
            value = site["value"]
            n = int(value.numel())
            if base is constraints.simplex and value.dim() >= 1 and value.shape[-1] > 0:
                n = n // value.shape[-1] * (value.shape[-1] - 1)
            total += n
        return total
