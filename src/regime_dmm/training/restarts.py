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

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch

from ..config import FitConfig
from ..data.features import FeatureSpec, ModelData, Panel
from ..errors import RegimeDMMError, TrainingError
from ..guides.base import RegimeGuide
from ..models.base import RegimeModel
from .run_state import BestRestart, InProgress, RestartRecord, RunState
from .svi import LoopState, clear_parameters, materialise, restore_parameters, snapshot_parameters
from .variants import Variant

__all__ = ["FitInterrupted", "StopControl", "TrainedRun", "run_restarts"]


class FitInterrupted(RegimeDMMError):
    """Training was stopped on request (SIGINT/SIGTERM); a checkpoint was saved when one was asked for."""

    def __init__(self, message: str, checkpoint: Any = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class StopControl:
    """Stop requests (SIGINT/SIGTERM) honoured within moments in every phase of a fit.

    Install :meth:`handler` as the signal handler. Inside :meth:`graceful` (the SVI epochs, which
    end in well under a second and checkpoint as they stop) a signal only sets :attr:`signal`, and
    the training loop stops at the end of the epoch with a checkpoint. Anywhere else (loading, the
    warm start, L-BFGS and EM, the posterior, writing outputs) the handler raises
    :class:`FitInterrupted` at once, naming :attr:`phase`; outputs are written all or nothing.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.phase = "starting"
        self._graceful = 0

    def requested(self) -> bool:
        """True once a stop was asked for."""
        return self.signal is not None

    @contextmanager
    def graceful(self) -> Iterator[None]:
        """A block that polls :meth:`requested` itself (and checkpoints before stopping)."""
        self._graceful += 1
        try:
            yield
        finally:
            self._graceful -= 1
        if self.signal is not None and not self._graceful:  # arrived after the block's last poll
            raise FitInterrupted(f"stopped while {self.phase}")

    def handler(self, signum: int, _frame: Any) -> None:
        """The signal handler (see the class docstring)."""
        self.signal = signum
        if not self._graceful:
            raise FitInterrupted(f"stopped while {self.phase}")


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
    save: Callable[[], None] | None = None,
    checkpoint_every: int = 50,
    stop_requested: Callable[[], bool] | None = None,
    stop: StopControl | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    warm_params: dict[str, torch.Tensor] | None = None,
) -> TrainedRun:
    """Train ``config.training.restarts`` restarts (those not finished in ``state``) and keep the best.

    ``warm_params``: parameters of an earlier fit of the same model on the same markets (name ->
    unconstrained tensor, as :meth:`~regime_dmm.fitted.FittedModel.parameters` gives): restart 0
    starts from them instead of the classic HMM's warm start (a walk-forward refit). Raises
    :class:`CheckpointError` when their names or shapes do not fit the model.

    ``save()`` persists ``state`` (called every ``checkpoint_every`` epochs, after each restart and on
    a stop request). ``stop_requested()`` (and ``stop``, a :class:`StopControl` whose handler is
    installed for SIGINT/SIGTERM) is polled after every epoch: when it turns true the state is saved
    and :class:`FitInterrupted` raised; outside the epochs ``stop`` raises at once. Raises
    :class:`TrainingError` when every restart fails.
    """

    def stopping() -> bool:
        return (stop_requested is not None and stop_requested()) or (stop is not None and stop.requested())

    def phase(text: str) -> None:
        if stop is not None:
            stop.phase = text

    tc = config.training
    state = state if state is not None else RunState()
    print_ = log or (lambda _msg: None)
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
            phase(f"warm-starting restart {restart}")
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
            halt = stopping()
            if save is not None and (halt or loop_state.epoch % checkpoint_every == 0):
                state.current = InProgress(restart, loop_state, snapshot_parameters(), torch.get_rng_state(), reference)
                save()
            if halt:
                raise FitInterrupted(f"stopped at restart {restart}, epoch {loop_state.epoch}")

        phase(f"training restart {restart}")
        try:
            with stop.graceful() if stop is not None and variant.polls_stop else nullcontext():
                outcome = variant.train(
                    model,
                    guide,
                    data,
                    config,
                    markets,
                    restart=restart,
                    log=log,
                    progress=progress,
                    loop=loop,
                    on_epoch=on_epoch,
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
