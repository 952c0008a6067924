"""Restarts: train one model from several starting points and keep the best.

Restarts run one after another. Each restart seeds the random generators from
``(training.seed, restart)``, takes its starting values from the variant (a warm start from
a maximum-likelihood HMM, jittered per restart), re-initialises the model's networks, builds a
fresh guide and trains; the restart with the best score is kept. With a checkpoint callback,
the whole run state (finished restarts, the best so far, the restart in progress with its
optimiser and random state) is saved every ``checkpoint_every`` epochs and at the end of each
restart, so an interrupted run continues to the same result as an uninterrupted one.

The model is built once per run; the guide once per restart.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyro
import torch

from ..config import FitConfig
from ..data.features import FeatureSpec, ModelData, Panel
from ..errors import TrainingError
from ..guides.base import RegimeGuide
from ..models.base import RegimeModel
from .hooks import FitInterrupted, StopControl, TrainingHooks
from .run_state import BestRestart, InProgress, RestartRecord, RunState
from .svi import LoopState, clear_parameters, materialise, restore_parameters, snapshot_parameters
from .variants import Variant

__all__ = ["FitInterrupted", "StopControl", "TrainedRun", "run_restarts"]


def _both(first: Callable[[Any], None], then: Callable[[Any], None] | None) -> Callable[[Any], None]:
    """``first(x)``, then the caller's own ``then(x)`` when it gave one (a caller's epoch callback is kept)."""
    if then is None:
        return first

    def both(x: Any) -> None:
        first(x)
        then(x)

    return both


@dataclass
class TrainedRun:
    """The model and the last guide of a run (their parameters are the last restart's) and the run's state."""

    model: RegimeModel
    guide: RegimeGuide
    state: RunState


def run_restarts(
    variant: Variant,
    config: FitConfig,
    spec: FeatureSpec,
    panel: Panel,
    data: ModelData,
    *,
    dtype: torch.dtype,
    state: RunState | None = None,
    hooks: TrainingHooks | None = None,
    warm_params: dict[str, torch.Tensor] | None = None,
) -> TrainedRun:
    """Train ``config.training.restarts`` restarts (those not finished in ``state``) and keep the best.

    ``warm_params``: parameters of an earlier fit of the same model on the same markets (name ->
    unconstrained tensor, as :meth:`~regime_dmm.fitted.FittedModel.parameters` gives): restart 0
    starts from them instead of the classic HMM's warm start (a walk-forward refit). Raises
    :class:`CheckpointError` when their names or shapes do not fit the model.

    ``hooks`` (:class:`~.hooks.TrainingHooks`): ``hooks.save()`` persists ``state`` (every
    ``hooks.checkpoint_every`` epochs, after each restart and on a stop request); the stop requests are polled
    after every epoch: when one arrives the state is saved and :class:`FitInterrupted` raised; outside the
    epochs ``hooks.stop`` raises at once. Raises :class:`TrainingError` when every restart fails.
    """
    hooks = hooks or TrainingHooks()
    tc = config.training
    state = state if state is not None else RunState()
    print_ = hooks.say
    save = hooks.save
    markets = list(panel.markets)
    model = variant.build_model(config, spec, panel, dtype)
    guide = None
    done = state.finished()
    for restart in range(tc.restarts):
        if restart in done:
            continue
        clear_parameters()
        pyro.set_rng_seed(tc.seed * 1009 + restart)
        rng = np.random.default_rng([tc.seed, restart])
        current = state.current if state.current is not None and state.current.restart == restart else None
        warm = current is None and warm_params is not None and restart == 0
        if warm:
            reference, values = None, variant.placeholder_values(panel, config, dtype)
        elif current is None:
            hooks.phase(f"warm-starting restart {restart}")
            start = variant.starting_values(panel, data, config, rng, dtype)
            reference = None if start.reference_usage is None else start.reference_usage.tolist()
            values = start.values
        else:  # the checkpoint holds the parameters and the warm start's reference usage
            reference, values = current.reference_usage, variant.placeholder_values(panel, config, dtype)
        clear_parameters()
        model.reset_parameters()
        guide = variant.build_guide(model, config, values, dtype)
        loop = None
        if current is not None:
            materialise(model, guide, data)
            restore_parameters(current.params)
            torch.set_rng_state(current.torch_rng)
            loop = current.loop
            print_(f"[restart {restart}] resumed after epoch {loop.epoch}")
        elif warm:
            assert warm_params is not None
            materialise(model, guide, data)
            restore_parameters(warm_params)
            print_(f"[restart {restart}] starts from the given parameters")

        def on_epoch(loop_state: LoopState, restart: int = restart, reference: Any = reference) -> None:
            halt = hooks.stopping()
            if save is not None and (halt or loop_state.epoch % hooks.checkpoint_every == 0):
                state.current = InProgress(restart, loop_state, snapshot_parameters(), torch.get_rng_state(), reference)
                save()
            if halt:
                raise FitInterrupted(f"stopped at restart {restart}, epoch {loop_state.epoch}")

        hooks.phase(f"training restart {restart}")
        stop, restart_hooks = hooks.stop, replace(hooks, on_epoch=_both(on_epoch, hooks.on_epoch))
        try:
            with stop.graceful() if stop is not None and variant.polls_stop else nullcontext():
                outcome = variant.train(
                    model, guide, data, config, markets, restart=restart, loop=loop, hooks=restart_hooks
                )
        except TrainingError as exc:
            print_(f"[restart {restart}] failed: {exc}")
            state.completed.append(RestartRecord(restart, {"restart": restart, "status": "failed", "reason": str(exc)}))
            state.current = None
            if save is not None:
                save()
            continue
        summary = {
            "restart": restart,
            "status": "ok",
            "final_loss": round(outcome.final_loss, 6),
            "log_likelihood_normalised": round(outcome.history[-1]["log_likelihood"], 6),
            "epochs": outcome.epochs_run,
            "stopped_early": outcome.stopped_early,
        }
        state.completed.append(RestartRecord(restart, summary, outcome.history, outcome.faults, reference))
        score = variant.restart_score(outcome)
        if state.best is None or score < state.best.score:
            state.best = BestRestart(restart, score, snapshot_parameters())
        state.current = None
        if save is not None:
            save()
    if state.best is None:
        raise TrainingError("every restart failed: " + "; ".join(str(r.summary.get("reason")) for r in state.completed))
    if guide is None:  # every restart was finished before a resume: build the last one's guide to hold the best
        guide = variant.build_guide(model, config, variant.placeholder_values(panel, config, dtype), dtype)
    return TrainedRun(model, guide, state)
