"""The registry of model variants: one place that knows what each mode means.

A mode (``exact``, ``relaxed``, ``classic``) maps to a :class:`Variant` that says which
features the model sees, how its model and guide are built, where a restart starts, how it
is trained (optimiser and objective) and how restarts are ranked. Everything else in the
package asks the variant (or the model and guide it built) instead of testing the mode.

* ``exact``: :class:`~regime_dmm.models.ExactRegimeDMM`, MAP or mean-field guide, warm start
  from a maximum-likelihood HMM, ClippedAdam on ``Trace_ELBO`` (with the MAP guide and
  ``training.optimizer: lbfgs``: through the annealing, then L-BFGS on the final objective).
* ``relaxed``: :class:`~regime_dmm.models.RelaxedRegimeDMM` and its structured inference
  network, the same warm start, ClippedAdam on ``TraceMeanField_ELBO`` over minibatches of windows.
* ``classic``: :class:`~regime_dmm.models.ClassicMarkovSwitching`, point masses, data-driven
  starting values, L-BFGS then EM (maximum likelihood).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ..config import FitConfig
from ..data.features import FeatureSpec, ModelData, Panel
from ..errors import ConfigError
from ..guides import GlobalsGuide, PointGuide, RegimeGuide, RelaxedGuide
from ..models import (
    ClassicHyper,
    ClassicMarkovSwitching,
    ExactDMMHyper,
    ExactRegimeDMM,
    ModelDims,
    RegimeModel,
    RelaxedDMMHyper,
    RelaxedRegimeDMM,
)
from ..models.relaxed_dmm import epoch_batches
from .annealing import Schedule, default_schedules
from .hooks import TrainingHooks
from .starting_values import (
    WarmStart,
    initial_values,
    redo_rare_regimes,
    robust_floor,
    scale_ceiling,
    scale_floor,
    warm_start,
)
from .svi import LoopState, TrainOutcome, train_lbfgs, train_svi

__all__ = ["ClassicVariant", "ExactVariant", "RelaxedVariant", "VARIANTS", "Variant", "mode_of", "variant_for"]


class Variant:
    """What one mode is made of; subclasses fill in the parts (see the module docstring)."""

    name: str = ""
    #: Whether training polls for stop requests after every epoch (SVI); else a stop interrupts it at once.
    polls_stop: bool = True

    def resolve_config(self, config: FitConfig) -> FitConfig:
        """The configuration this mode actually uses (validated)."""
        return config.validate()

    def feature_spec(self, config: FitConfig) -> FeatureSpec:
        """Features built per day and emitted: the networks see the return and the realised volatility."""
        mc = config.model
        return FeatureSpec(("return", "vol"), tuple(mc.features), mc.vol_window, mc.normalise, mc.history, config.data)

    def dims(self, config: FitConfig, spec: FeatureSpec, panel: Panel) -> ModelDims:
        """The model's sizes."""
        return ModelDims(panel.num_markets, config.model.num_regimes, spec.num_emitted, spec.history_size)

    def build_model(self, config: FitConfig, spec: FeatureSpec, panel: Panel, dtype: torch.dtype) -> RegimeModel:
        """The model (its networks initialised from torch's global random state)."""
        raise NotImplementedError

    def build_guide(
        self, model: RegimeModel, config: FitConfig, values: dict[str, torch.Tensor], dtype: torch.dtype
    ) -> RegimeGuide:
        """The guide, starting at ``values`` (name -> constrained starting value)."""
        raise NotImplementedError

    def starting_values(
        self, panel: Panel, data: ModelData, config: FitConfig, rng: np.random.Generator, dtype: torch.dtype
    ) -> WarmStart:
        """Where a restart starts (``rng`` gives its jitter)."""
        return warm_start(panel, data, config.model, rng, dtype)

    def placeholder_values(self, panel: Panel, config: FitConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Values of the right shapes for a guide whose parameters will be overwritten (a loaded fit)."""
        return initial_values(panel, config.model, np.random.default_rng([config.training.seed, 0]), dtype)

    def schedules(self, config: FitConfig) -> list[Schedule]:
        """The annealing schedules of training."""
        return default_schedules(config)

    def elbo(self) -> Trace_ELBO:
        """The training objective."""
        return Trace_ELBO(num_particles=1)

    def batches(self, data: ModelData, config: FitConfig, restart: int) -> Callable[[int], list[Any]] | None:
        """The minibatches of each epoch (None: one full-data step per epoch)."""
        return None

    def train(
        self,
        model: RegimeModel,
        guide: RegimeGuide,
        data: ModelData,
        config: FitConfig,
        markets: Sequence[str],
        *,
        restart: int,
        loop: LoopState | None,
        hooks: TrainingHooks,
    ) -> TrainOutcome:
        """Train one restart by SVI with :meth:`elbo` over :meth:`batches` (raises
        :class:`~regime_dmm.errors.TrainingError` when it cannot)."""
        return train_svi(
            model,
            guide,
            data,
            config.training,
            self.schedules(config),
            markets,
            elbo=self.elbo(),
            batches=self.batches(data, config, restart),
            restart=restart,
            loop=loop,
            hooks=hooks,
            refine_after=config.annealing_epochs(True) if self.refines(config) else None,
            schedule_epochs=config.schedule_epochs(self.refines(config)),
        )

    def refines(self, config: FitConfig) -> bool:
        """Whether training ends in L-BFGS on the final objective (``training.optimizer: lbfgs`` with a
        deterministic objective: exact regimes and the map guide)."""
        return False

    def restart_score(self, outcome: TrainOutcome) -> float:
        """Lower is better: the final objective."""
        return outcome.final_loss


class ExactVariant(Variant):
    """Regimes summed out exactly (the default)."""

    name = "exact"

    def hyper(self, config: FitConfig, panel: Panel) -> ExactDMMHyper:
        """The model section as the DMM's hyperparameters (the scale floor from the data)."""
        mc = config.model
        return ExactDMMHyper(
            mc.prior_weights(),
            mc.stickiness,
            mc.emission,
            mc.hidden_size,
            mc.covariate_transitions,
            mc.emission_network,
            mc.network_prior_scale,
            robust_floor(panel, mc.min_scale),
            mc.pooling,
            math.log(mc.min_ratio) if mc.min_ratio > 1 else 0.0,
        )

    def build_model(self, config: FitConfig, spec: FeatureSpec, panel: Panel, dtype: torch.dtype) -> RegimeModel:
        """The exact DMM in ``dtype``."""
        return ExactRegimeDMM(self.dims(config, spec, panel), self.hyper(config, panel)).to(dtype)

    def build_guide(
        self, model: RegimeModel, config: FitConfig, values: dict[str, torch.Tensor], dtype: torch.dtype
    ) -> RegimeGuide:
        """The ``training.guide`` guide of the globals (map or normal)."""
        assert isinstance(model, ExactRegimeDMM)
        return GlobalsGuide(model, config.training.guide, model.ladder_starting_values(values))

    def refines(self, config: FitConfig) -> bool:
        """L-BFGS after the annealing phase with the map guide (a deterministic objective) and ``optimizer: lbfgs``."""
        return config.training.optimizer == "lbfgs" and config.training.guide == "map"


class RelaxedVariant(ExactVariant):
    """Gumbel-Softmax regimes with an inference network (the hand-rolled DMM, instrumented)."""

    name = "relaxed"

    def build_model(self, config: FitConfig, spec: FeatureSpec, panel: Panel, dtype: torch.dtype) -> RegimeModel:
        """The relaxed DMM in ``dtype``."""
        hyper = RelaxedDMMHyper(
            **dataclasses.asdict(self.hyper(config, panel)),
            straight_through=config.training.straight_through,
            window_length=config.training.window_length,
        )
        return RelaxedRegimeDMM(self.dims(config, spec, panel), hyper).to(dtype)

    def build_guide(
        self, model: RegimeModel, config: FitConfig, values: dict[str, torch.Tensor], dtype: torch.dtype
    ) -> RegimeGuide:
        """MAP globals and the inference network (``training.guide`` does not apply)."""
        assert isinstance(model, RelaxedRegimeDMM)
        values = model.ladder_starting_values(values)
        return RelaxedGuide(model, values, hidden_size=config.model.hidden_size, dtype=dtype)

    def refines(self, config: FitConfig) -> bool:
        """Never: the relaxed objective is a one-sample ELBO estimate over minibatches (Adam throughout)."""
        return False

    def elbo(self) -> Trace_ELBO:
        """``TraceMeanField_ELBO``: the regime sites' KL is the registered chain-rule categorical KL."""
        return TraceMeanField_ELBO(num_particles=1)

    def batches(self, data: ModelData, config: FitConfig, restart: int) -> Callable[[int], list[Any]] | None:
        """Shuffled windows of every series (:func:`~regime_dmm.models.relaxed_dmm.epoch_batches`)."""
        tc = config.training
        lengths = data.lengths.tolist()

        def of_epoch(epoch: int) -> list[Any]:
            return epoch_batches(lengths, tc.window_length, tc.batch_windows, tc.seed, restart, epoch)

        return of_epoch

    def restart_score(self, outcome: TrainOutcome) -> float:
        """Minus the exact log-likelihood at the final parameters: the relaxed loss is a one-sample
        ELBO estimate, too noisy (hundreds of nats) to tell restarts apart."""
        return -outcome.history[-1]["log_likelihood"]


class ClassicVariant(Variant):
    """The maximum-likelihood Gaussian Markov-switching model of the return."""

    name = "classic"
    polls_stop = False

    def resolve_config(self, config: FitConfig) -> FitConfig:
        """Classic mode pins the model to a plain Markov-switching regression of the return."""
        model = dataclasses.replace(
            config.model,
            features=("return",),
            normalise=False,
            covariate_transitions=False,
            emission_network=False,
            emission="gaussian",
            pooling="none",  # maximum likelihood per market: no shared ladder, no separation prior
            min_ratio=0.0,
        )
        return dataclasses.replace(config, model=model).validate()

    def feature_spec(self, config: FitConfig) -> FeatureSpec:
        """The return only, in input units."""
        mc = config.model
        return FeatureSpec(("return",), ("return",), mc.vol_window, False, mc.history, config.data)

    def build_model(self, config: FitConfig, spec: FeatureSpec, panel: Panel, dtype: torch.dtype) -> RegimeModel:
        """The classic model with each market's scale floor (:func:`~.starting_values.scale_floor`)."""
        hyper = ClassicHyper(scale_floor(panel), robust_floor(panel, config.model.min_scale), scale_ceiling(panel))
        return ClassicMarkovSwitching(self.dims(config, spec, panel), hyper)

    def build_guide(
        self, model: RegimeModel, config: FitConfig, values: dict[str, torch.Tensor], dtype: torch.dtype
    ) -> RegimeGuide:
        """Point masses at ``pyro.param`` values (maximum likelihood)."""
        assert isinstance(model, ClassicMarkovSwitching)
        return PointGuide(model, values)

    def starting_values(
        self, panel: Panel, data: ModelData, config: FitConfig, rng: np.random.Generator, dtype: torch.dtype
    ) -> WarmStart:
        """Data-driven values (no warm start: the classic model is what the warm start fits)."""
        return WarmStart(initial_values(panel, config.model, rng, dtype))

    def train(
        self,
        model: RegimeModel,
        guide: RegimeGuide,
        data: ModelData,
        config: FitConfig,
        markets: Sequence[str],
        *,
        restart: int,
        loop: LoopState | None,
        hooks: TrainingHooks,
    ) -> TrainOutcome:
        """L-BFGS then EM (no epochs, no schedules); with ``model.min_scale`` > 0, a fit that left a regime
        of a handful of days is redone from the same start by MAP EM (:func:`~.starting_values.redo_rare_regimes`)."""
        assert isinstance(model, ClassicMarkovSwitching) and isinstance(guide, PointGuide)
        start = {name: value.clone() for name, value in guide.point_estimate().items()}

        def guard() -> None:
            if config.model.min_scale > 0:
                redo_rare_regimes(model, guide, data, start)

        return train_lbfgs(model, guide, data, restart=restart, after=guard)


#: mode -> variant.
VARIANTS: dict[str, Variant] = {v.name: v for v in (ExactVariant(), RelaxedVariant(), ClassicVariant())}


def mode_of(config: FitConfig) -> str:
    """``"classic"`` when ``model.classic`` is set, else ``training.inference`` (``exact`` / ``relaxed``)."""
    return "classic" if config.model.classic else config.training.inference


def variant_for(config: FitConfig) -> Variant:
    """The variant of ``config``'s mode; :class:`ConfigError` for an unknown one."""
    mode = mode_of(config)
    if mode not in VARIANTS:
        raise ConfigError(f"unknown mode {mode!r}: training.inference must be one of exact, relaxed")
    return VARIANTS[mode]
