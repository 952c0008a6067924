"""The training loop: SVI with ClippedAdam, then optionally L-BFGS; annealing callbacks, early stopping, history.

One loop serves every model and guide. Each epoch: the schedules set beta, tau and the
penalty weights; one step on the ELBO (full batch: the exact likelihood of every market;
given ``batches`` - the relaxed DMM's minibatches of windows - one step per minibatch, and
the epoch's loss and gradient norms are the means over its steps);
the model's diagnostics (reconstruction, KL, entropy, usage, penalties) and per-module
gradient norms go into the history. A step whose loss or gradient is not finite never
reaches the parameters: it is skipped, the learning rate halved, and the event logged;
``max_faults`` such steps in a row stop the fit with a :class:`TrainingError`.

With a deterministic objective (exact regimes, MAP guide) the epochs after the annealing are
iterations of full-batch L-BFGS (``refine_after``, ``training.optimizer: lbfgs``): one iteration an
epoch, its memory checkpointed with the rest, stopped when it stops improving. Its trial points
whose loss or gradient is not finite are backed off from; a step into non-finite parameters is
rolled back and the memory cleared, and counts as a fault like Adam's.

Classic mode (no latent sites, deterministic objective) is optimised by L-BFGS instead:
the maximum-likelihood estimate to machine precision in a few dozen iterations.

Pyro's global parameter store is the training loop's working memory, and this module (with the
guides, which create their parameters there) is the only one that touches it:
:func:`clear_parameters` before a restart, :func:`snapshot_parameters` and :func:`restore_parameters`
for the best restart and checkpoints, :func:`materialise` to create a guide's parameters without a
step, and :func:`isolated_parameters` for the one pass in which a fitted model reads its values out
(:class:`~regime_dmm.fitted.FittedModel` then holds plain tensors and never uses the store).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.optim.clipped_adam import ClippedAdam

from ..config import TrainConfig
from ..data.features import ModelData
from ..errors import CheckpointError, TrainingError
from ..guides.base import RegimeGuide
from ..guides.globals import PointGuide
from ..inference import log_normalizer
from ..models.base import AnnealState, RegimeModel, StepContext
from ..models.classic import ClassicMarkovSwitching
from ..threads import refresh_threads
from .annealing import Schedule
from .em import em_polish
from .hooks import TrainingHooks

__all__ = [
    "LoopState",
    "TrainOutcome",
    "clear_parameters",
    "format_epoch",
    "isolated_parameters",
    "materialise",
    "restore_parameters",
    "snapshot_parameters",
    "train_lbfgs",
    "train_svi",
]


def clear_parameters() -> None:
    """Empty Pyro's parameter store (before a restart builds its guide)."""
    pyro.clear_param_store()


def materialise(model: RegimeModel, guide: RegimeGuide, data: ModelData) -> None:
    """Run guide and model once (no gradient) so that every parameter exists in Pyro's param store."""
    with torch.no_grad():
        Trace_ELBO().differentiable_loss(model.model, guide, data, StepContext())


def snapshot_parameters() -> dict[str, torch.Tensor]:
    """A copy of every parameter in Pyro's param store (name -> unconstrained tensor)."""
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def restore_parameters(values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` (name -> unconstrained tensor) into the existing parameters of Pyro's param store,
    in place (a network registered with ``pyro.module`` gets them in its own weights).

    Raises :class:`CheckpointError` when the names or shapes differ from the store's.
    """
    store = dict(pyro.get_param_store().named_parameters())
    missing = set(store) ^ set(values)
    if missing:
        raise CheckpointError(f"checkpoint parameters do not match the model: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, p in store.items():
            if p.shape != values[name].shape:
                raise CheckpointError(
                    f"checkpoint parameter {name} has shape {tuple(values[name].shape)}, "
                    f"the model expects {tuple(p.shape)}"
                )
            p.copy_(values[name])


@contextmanager
def isolated_parameters() -> Iterator[None]:
    """Pyro's param store is empty inside the block, and holds what it held before afterwards (a fit
    read out in a session that trains another). ``set_state`` merges into the store, so it is cleared first."""
    store = pyro.get_param_store()
    saved = store.get_state()
    store.clear()
    try:
        yield
    finally:
        store.clear()
        store.set_state(saved)


@dataclass
class TrainOutcome:
    """What one restart's training produced: its history rows, final loss, epochs run, faults."""

    history: list[dict]
    final_loss: float
    epochs_run: int
    stopped_early: bool
    faults: list[dict] = field(default_factory=list)


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly where it stopped (checkpointed)."""

    lr: float
    epoch: int = 0  # last completed epoch
    best: float = math.inf
    since_best: int = 0
    consecutive_faults: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)
    optimizer: dict | None = None  # ClippedAdam state_dict
    lbfgs: dict | None = None  # the L-BFGS refinement's state_dict, once it has started
    stalls: int = 0  # L-BFGS iterations in a row whose line search found no finite step

    def to_dict(self) -> dict:
        """Plain data for a checkpoint (tensors and builtins only)."""
        return dict(self.__dict__)


def _module_of(name: str) -> str:
    if name.startswith("transition_net"):
        return "transition"
    if name.startswith("emission_net"):
        return "emission"
    if name.startswith("inference_net"):
        return "inference"
    return "globals"


def format_epoch(row: dict, num_epochs: int) -> str:
    """The two-line training log of one epoch's history row."""
    return (
        f"Epoch {row['epoch']}/{num_epochs} | Loss: {row['loss']:.2f} | Recon: {row['recon']:.2f}"
        f" | KL: {row['kl']:.2f} | per day: Recon {row['recon_per_day']:.4f}, KL {row['kl_per_day']:.4f}\n"
        f"    Ent: {row['entropy']:.3f} | Div: {row['diversity']:.4f} | Sep: {row['separation']:.4f}"
        f" | Beta: {row['beta']:.3f} | Tau: {row['tau']:.3f}"
    )


def train_svi(
    model: RegimeModel,
    guide: RegimeGuide,
    data: ModelData,
    training: TrainConfig,
    schedules: list[Schedule],
    markets: Sequence[str],
    *,
    schedule_epochs: int | None = None,
    elbo: Trace_ELBO,
    batches: Callable[[int], list[Any]] | None = None,
    restart: int = 0,
    max_faults: int = 5,
    loop: LoopState | None = None,
    hooks: TrainingHooks | None = None,
    refine_after: int | None = None,
) -> TrainOutcome:
    """Run SVI for ``training.epochs`` epochs (or until the loss plateaus) with ClippedAdam, then (``refine_after``)
    L-BFGS.

    ``elbo``: the objective (``Trace_ELBO`` for the exact models); ``batches(epoch)``: the
    minibatches of one epoch (None: one full-data step). ``loop`` continues a checkpointed run; ``hooks``
    (:class:`~.hooks.TrainingHooks`) give the log, the progress bar and ``on_epoch(loop)``, called after
    every completed epoch (checkpoints, interrupts). The schedules
    are called as ``schedule(epoch, schedule_epochs, state)`` (default ``training.epochs``).
    ``refine_after``: every epoch after this one is on the final objective (beta = 1) and is one iteration of
    full-batch L-BFGS with a strong-Wolfe line search (Nocedal and Wright 2006, "Numerical Optimization",
    alg. 7.5 and 3.5) instead of an Adam step, and training stops when the last :data:`CONVERGED_WINDOW`
    iterations together gained less than :data:`CONVERGED_GAIN` nats per observed market-day, or when two
    iterations in a row find no finite step (the parameters are kept); it needs a deterministic objective
    (exact regimes, MAP guide, full batch).
    Raises :class:`TrainingError` after ``max_faults`` consecutive non-finite steps.
    """
    hooks = hooks or TrainingHooks()
    loop = loop or LoopState(lr=training.lr)
    run = _Restart(model, guide, data, training, elbo, markets, restart, loop, hooks.log, max_faults)
    schedule_epochs = schedule_epochs or training.epochs
    log_every = max(1, training.epochs // 10)
    bar = _progress(training.epochs, restart, hooks.progress, initial=loop.epoch)
    for epoch in range(loop.epoch + 1, training.epochs + 1):
        if loop.stopped_early:
            break
        refresh_threads()  # this fit's share of the cores, as other fits start and end
        for schedule in schedules:
            schedule(epoch, schedule_epochs, run.state)
        steps = _EpochSteps()
        if refine_after is not None and epoch > refine_after:  # the final objective: L-BFGS to convergence
            run.lbfgs_epoch(epoch, steps)
        else:
            run.adam_epoch(epoch, batches(epoch) if batches is not None else [None], steps)
        if steps.losses:  # else every step of the epoch was skipped
            row = run.history_row(epoch, steps)
            loop.history.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.1f}", beta=f"{run.state.beta:.2f}")
            if hooks.log and (epoch % log_every == 0 or epoch == training.epochs):
                hooks.log(f"[restart {restart}] " + format_epoch(row, training.epochs))
            run.check_stop(epoch, row)
        loop.epoch = epoch
        _keep_optimizers(loop, run.adam, run.lbfgs)
        hooks.epoch_done(loop)
    if bar is not None:
        bar.close()
    if not loop.history:
        raise TrainingError(
            f"restart {restart}: no finite training step in the fit of {_names(data.markets)}: check the data's scale "
            "and training.lr"
        )
    return TrainOutcome(loop.history, loop.history[-1]["loss"], loop.epoch, loop.stopped_early, loop.faults)


@dataclass
class _EpochSteps:
    """What one epoch's finite steps gave: their losses and gradient norms, and the diagnostics (usage and entropy
    carried over the epoch's minibatches)."""

    losses: list[float] = field(default_factory=list)
    norms: list[dict[str, float]] = field(default_factory=list)
    diag: dict[str, Any] | None = None
    carried: tuple[torch.Tensor, torch.Tensor] | None = None  # minibatches: last usage of each market

    def add(self, loss: float, norms: dict[str, float], ctx: StepContext) -> None:
        self.losses.append(loss)
        self.norms.append(norms)
        assert ctx.diagnostics is not None, "the model must write its diagnostics into the step context"
        self.carried = _carry(self.carried, ctx.diagnostics)
        self.diag = dict(ctx.diagnostics, usage=self.carried[0].clone(), entropy=self.carried[1].clone())


class _Restart:
    """One restart's training: its model, guide, objective, annealing state and optimisers (Adam through the
    annealing, then L-BFGS), one epoch at a time (see :func:`train_svi`)."""

    def __init__(
        self,
        model: RegimeModel,
        guide: RegimeGuide,
        data: ModelData,
        training: TrainConfig,
        elbo: Trace_ELBO,
        markets: Sequence[str],
        restart: int,
        loop: LoopState,
        log: Callable[[str], None] | None,
        max_faults: int,
    ):
        self.model, self.guide, self.data, self.training, self.elbo = model, guide, data, training, elbo
        self.markets, self.restart, self.loop, self.log, self.max_faults = markets, restart, loop, log, max_faults
        self.state = AnnealState()
        self.observations = max(int(data.emitting.sum()), 1)  # observed market-days: the per-day log's divisor
        self.adam: ClippedAdam | None = None
        self.lbfgs: torch.optim.LBFGS | None = None
        self.seen: list[_Evaluation] = []  # the last L-BFGS iteration's evaluations
        self.params: dict[str, torch.Tensor] = {}

    def objective(self, batch: Any = None) -> tuple[torch.Tensor, StepContext]:
        return _objective(self.model, self.guide, self.data, self.elbo, self.state, batch)

    def fault(self, epoch: int, problem: str) -> None:
        _fault(self.loop, self.restart, epoch, problem, self.adam, self.log, self.max_faults, self.data.markets)

    def lbfgs_epoch(self, epoch: int, steps: _EpochSteps) -> None:
        """One L-BFGS iteration on the final objective (beta = 1)."""
        loop = self.loop
        self.state.beta = 1.0
        if not self.params:  # no Adam epoch ran (no warm-up): the parameters are created by one evaluation
            with torch.no_grad():
                self.objective()
            self.params = dict(pyro.get_param_store().named_parameters())
        if self.lbfgs is None:
            self.lbfgs = _lbfgs(list(self.params.values()), loop.lbfgs)
        problem, first, stalled = _lbfgs_iteration(
            self.lbfgs, self.params, self.objective, self.seen, self.data.markets
        )
        if problem is not None:
            _fault(loop, self.restart, epoch, problem, None, self.log, self.max_faults, self.data.markets)
            return
        assert first is not None
        steps.add(first.loss, first.norms, first.ctx)
        loop.consecutive_faults = 0
        if stalled:  # every trial of the line search failed: memory cleared; twice in a row, stop here
            loop.stalls += 1
            if self.log:
                self.log(f"[restart {self.restart}] epoch {epoch}: L-BFGS line search found no finite step")
        else:
            loop.stalls = 0

    def adam_epoch(self, epoch: int, batches: list[Any], steps: _EpochSteps) -> None:
        """One ClippedAdam step per minibatch (one full-data step without minibatches)."""
        loop = self.loop
        for batch in batches:
            loss, ctx = self.objective(batch)
            if self.adam is None:  # parameters exist once model and guide have run
                self.params = dict(pyro.get_param_store().named_parameters())
                self.adam = ClippedAdam(list(self.params.values()), lr=loop.lr, clip_norm=self.training.clip_norm)
                if loop.optimizer is not None:
                    self.adam.load_state_dict(loop.optimizer)
            self.adam.zero_grad()
            problem: str | None
            if not torch.isfinite(loss):
                problem = "loss" + _where(_loss_markets(ctx, self.data.markets))
            else:
                loss.backward()
                problem = _non_finite_gradient(self.params, self.data.markets)
            if problem is None:
                norms = _grad_norms(self.params)
                before = _snapshot(self.params)
                self.adam.step()
                problem = _rolled_back(self.params, before, self.data.markets)
            if problem is not None:
                self.fault(epoch, problem)
                continue
            loop.consecutive_faults = 0
            steps.add(float(loss.detach()), norms, ctx)

    def history_row(self, epoch: int, steps: _EpochSteps) -> dict[str, Any]:
        """The epoch's row of the training history."""
        diag = steps.diag
        assert diag is not None
        norms = steps.norms[0] if len(steps.norms) == 1 else _mean_norms(steps.norms)
        row: dict[str, Any] = {
            "restart": self.restart,
            "epoch": epoch,
            "loss": steps.losses[0] if len(steps.losses) == 1 else sum(steps.losses) / len(steps.losses),
            "log_likelihood": float(diag["log_likelihood"].sum()),
            "recon": float(diag["recon"]),
            "kl": float(diag["kl"]),
            "entropy": float(diag["entropy"].mean()),
            "diversity": float(diag["diversity"]),
            "separation": float(diag["separation"]),
            "entropy_penalty": float(diag["entropy_penalty"]),
            "beta": self.state.beta,
            "tau": self.state.tau,
            "lr": self.loop.lr,
            "optimizer": "lbfgs" if self.lbfgs is not None else "adam",
            **norms,
        }
        for m, name in enumerate(self.markets):
            for k, value in enumerate(diag["usage"][m].tolist()):
                row[f"usage[{name}][{k}]"] = value
        row.update(_per_day(row, self.observations), rarity=float(diag["rarity"]))
        return row

    def check_stop(self, epoch: int, row: dict[str, Any]) -> None:
        """Set ``loop.stopped_early`` when training is done: L-BFGS converged (the last iterations gained almost
        nothing) or stuck; or, under Adam on the final objective (beta = 1), a plateau of ``patience`` epochs."""
        loop, tc, restart = self.loop, self.training, self.restart
        if self.lbfgs is not None:
            refined = [r["loss"] for r in loop.history if r.get("optimizer") == "lbfgs"]
            window = refined[-CONVERGED_WINDOW - 1 :]
            if len(window) > CONVERGED_WINDOW and window[0] - window[-1] < CONVERGED_GAIN * self.observations:
                loop.stopped_early = True
                if self.log:
                    self.log(f"[restart {restart}] " + format_epoch(row, tc.epochs) + "\n    (L-BFGS converged)")
            elif loop.stalls >= 2:
                loop.stopped_early = True
                if self.log:
                    self.log(f"[restart {restart}] L-BFGS cannot move from epoch {epoch}'s parameters: kept")
        elif self.state.beta >= 1.0:
            ref = loop.best if math.isfinite(loop.best) else row["loss"]
            if row["loss"] < loop.best - tc.tolerance * abs(ref):
                loop.best, loop.since_best = row["loss"], 0
            else:
                loop.since_best += 1
                if loop.since_best >= tc.patience:
                    loop.stopped_early = True
                    if self.log:
                        self.log(
                            f"[restart {restart}] " + format_epoch(row, tc.epochs) + "\n    (plateau: stopped early)"
                        )


def train_lbfgs(
    model: ClassicMarkovSwitching,
    guide: PointGuide,
    data: ModelData,
    *,
    max_iter: int = 500,
    restart: int = 0,
    after: Callable[[], Any] | None = None,
    polish: bool = True,
) -> TrainOutcome:
    """Maximum likelihood for the classic model: L-BFGS on the guide's parameters, then an EM polish.

    ``guide`` is the model's :class:`~regime_dmm.guides.globals.PointGuide`; ``after()`` runs once
    the polish is done and may change the guide's values (the degenerate-regime guard); ``polish=False``
    leaves the EM polish to the caller (the Student-t warm start polishes once, after choosing the tails). Raises
    :class:`TrainingError` when the log-likelihood ends non-finite.
    """
    params = guide.unconstrained()
    optimizer = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    best: dict[str, Any] = {"loss": math.inf, "values": [p.detach().clone() for p in params]}

    def objective() -> torch.Tensor | None:
        """Negative log-likelihood plus the scale walls; None where a parameter is not finite (a
        line-search trial beyond what float64 holds)."""
        values = guide.parameters()
        if not all(bool(torch.isfinite(v).all()) for v in values.values()):
            return None
        pot = model.potentials(values, data)
        loss = -log_normalizer(pot.log_init, pot.log_trans, pot.obs_ll).sum()
        return loss + model.floor_penalty(pot.emission_scale)  # walls below and above the regime sds

    def closure():
        refresh_threads()
        optimizer.zero_grad()
        loss = objective()
        if loss is None:  # no loss there, no gradient: the line search backs off
            return torch.tensor(math.inf, dtype=params[0].dtype)
        loss.backward()
        value = float(loss.detach())
        if value < best["loss"]:  # NaN compares false: a step into NaN is never the best
            best["loss"], best["values"] = value, [p.detach().clone() for p in params]
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # the strong-Wolfe line search can end on a step into NaN or overflow
        final = objective()
        if final is None or not torch.isfinite(final):
            for p, value in zip(params, best["values"]):
                p.copy_(value)
    if polish:  # EM frees transition probabilities L-BFGS left stuck at zero
        em_polish(model, guide, data)
    if after is not None:
        after()
    _, _, diag = poutine.condition(model.evaluate, data=guide.point_estimate())(data, AnnealState())
    loss = -float(diag["log_likelihood"].sum())
    if not math.isfinite(loss):
        bad = [n for n, v in zip(data.markets, diag["log_likelihood"].tolist()) if not math.isfinite(v)]
        raise TrainingError(
            f"classic fit of {_names(bad or list(data.markets))} ended with a non-finite log-likelihood: check the "
            "data's scale"
        )
    row = {
        "restart": restart,
        "epoch": 1,
        "loss": loss,
        "log_likelihood": -loss,
        "recon": float(diag["recon"]),
        "kl": float(diag["kl"]),
        "entropy": float(diag["entropy"].mean()),
        "diversity": 0.0,
        "separation": 0.0,
        "entropy_penalty": 0.0,
        "beta": 1.0,
        "tau": 1.0,
        "lr": 1.0,
    }
    row.update(_per_day(row, max(int(data.emitting.sum()), 1)), rarity=0.0)
    return TrainOutcome([row], loss, 1, False)


#: L-BFGS refinement has converged when the last this many iterations together ...
CONVERGED_WINDOW = 10
#: ... gained less than this many nats per observed market-day (0.5 nats on the embedded default's 5,000).
CONVERGED_GAIN = 1e-4


def _objective(
    model: RegimeModel, guide: RegimeGuide, data: ModelData, elbo: Trace_ELBO, state: AnnealState, batch: Any = None
) -> tuple[torch.Tensor, StepContext]:
    """The loss of one step (``batch``: a minibatch, None for the full data) at the current parameters, with the
    step's context (diagnostics)."""
    ctx = StepContext(anneal=state, batch=batch)
    # A non-finite value must reach the loop's checks (a fault, logged with its market), not raise inside
    # Pyro, nor print Pyro's own "Encountered NaN" warning beside the loop's message (sweep workers' stderr).
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        return elbo.differentiable_loss(model.model, guide, data, ctx), ctx


def _lbfgs(params: list[torch.Tensor], saved: dict | None) -> torch.optim.LBFGS:
    """One L-BFGS iteration per ``step`` (an epoch), its memory carried from step to step (and checkpoints)."""
    lbfgs = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=1,
        max_eval=25,  # the line search's evaluations (the default, 5/4 of max_iter, would allow none)
        history_size=100,  # torch's default; 20 took 10-20 % more iterations to a worse end on five simulated sets
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    if saved is not None:
        lbfgs.load_state_dict(saved)
    return lbfgs


@dataclass
class _Evaluation:
    """One finite evaluation of the objective: where (the parameters, flattened), its loss, gradients,
    gradient norms and step context."""

    at: torch.Tensor
    loss: float
    grads: list[torch.Tensor | None]
    norms: dict[str, float]
    ctx: StepContext


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params.values()])


def _lbfgs_iteration(
    lbfgs: torch.optim.LBFGS,
    params: dict[str, torch.Tensor],
    evaluate: Callable[[], tuple[torch.Tensor, StepContext]],
    seen: list[_Evaluation],
    markets: tuple[str, ...] = (),
) -> tuple[str | None, _Evaluation | None, bool]:
    """One L-BFGS iteration. Returns ``(problem, first, stalled)``: ``first`` is the evaluation at the starting
    point (the epoch's row); ``problem`` names what was not finite there, or in the parameters after the step
    (then rolled back), else None; ``stalled``: a trial point failed and the parameters did not move.

    ``seen`` holds the finite evaluations of the previous iteration (replaced by this one's): the point the
    line search accepted was evaluated there, so the iteration's first evaluation is taken from it instead of
    being computed again (the objective is deterministic). A trial point whose loss or gradient is not finite
    counts as a loss far above the starting one with a zero gradient, so the line search backs off (an
    infinite value would make its interpolation NaN). After a rollback or a stall the L-BFGS memory is
    cleared: the next iteration starts again along the gradient with a short step."""
    evaluations: list[_Evaluation] = []
    failed: list[str] = []

    def closure() -> torch.Tensor:
        refresh_threads()
        at = _flat(params)
        for e in seen if not evaluations and not failed else []:
            if torch.equal(e.at, at):
                for p, g in zip(params.values(), e.grads):
                    p.grad = None if g is None else g.clone()
                evaluations.append(e)
                return torch.tensor(e.loss, dtype=at.dtype)
        lbfgs.zero_grad()
        loss, ctx = evaluate()
        if torch.isfinite(loss):
            loss.backward()
            problem = _non_finite_gradient(params, markets)
            if problem is None:
                grads = [None if p.grad is None else p.grad.detach().clone() for p in params.values()]
                evaluations.append(_Evaluation(at, float(loss.detach()), grads, _grad_norms(params), ctx))
                return loss.detach()
            failed.append(problem)
        else:
            failed.append("loss" + _where(_loss_markets(ctx, markets)))
        lbfgs.zero_grad()
        if not evaluations:  # the starting point itself: no step is taken from a zero gradient
            return torch.tensor(math.inf, dtype=at.dtype)
        start = evaluations[0].loss
        return torch.tensor(start + 1e6 * (1.0 + abs(start)), dtype=at.dtype)

    before = _snapshot(params)
    lbfgs.step(closure)
    seen[:] = evaluations
    if not evaluations or not torch.equal(evaluations[0].at, _flat(before)):
        lbfgs.state.clear()
        return (failed[0] if failed else "loss"), None, False
    first = evaluations[0]
    problem = _rolled_back(params, before, markets)
    if problem is not None:
        lbfgs.state.clear()
        return problem, None, False
    stalled = bool(failed) and all(torch.equal(p, before[n]) for n, p in params.items())
    if stalled:
        lbfgs.state.clear()
    return None, first, stalled


def _snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of the parameters' values, to roll back to."""
    return {n: p.detach().clone() for n, p in params.items()}


def _non_finite_gradient(params: dict[str, torch.Tensor], markets: tuple[str, ...] = ()) -> str | None:
    """``"gradient of a, b, c (market 'x')"`` naming (up to three) parameters whose gradient is not finite and the
    markets whose rows of them are (:func:`_rows_at_fault`), else None."""
    bad = [n for n, p in params.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if not bad:
        return None
    grads = [params[n].grad for n in bad]
    return "gradient of " + ", ".join(bad[:3]) + _where(_rows_at_fault([g for g in grads if g is not None], markets))


def _rolled_back(
    params: dict[str, torch.Tensor], before: dict[str, torch.Tensor], markets: tuple[str, ...] = ()
) -> str | None:
    """After a step: when a parameter is not finite, every parameter back to ``before`` and ``"parameter a, b
    (market 'x')"`` naming (up to three) of them and the markets whose rows are not finite; else None."""
    broken = [n for n, p in params.items() if not torch.isfinite(p).all()]
    if not broken:
        return None
    where = _where(_rows_at_fault([params[n].detach() for n in broken], markets))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(before[n])
    return "parameter " + ", ".join(broken[:3]) + where


def _rows_at_fault(tensors: list[torch.Tensor], markets: tuple[str, ...]) -> list[str]:
    """The markets whose rows are not finite in any of ``tensors`` whose first dimension is the M markets (the
    per-market globals); a network weight is no market's."""
    m, bad = len(markets), set()
    for t in tensors:
        if m and t.dim() >= 1 and t.shape[0] == m:
            rows = ~torch.isfinite(t.detach().reshape(m, -1)).all(-1)
            bad.update(rows.nonzero().flatten().tolist())
    return [markets[i] for i in sorted(bad)]


def _loss_markets(ctx: StepContext, markets: tuple[str, ...]) -> list[str]:
    """The markets whose log-likelihood in the step's diagnostics is not finite."""
    diag = ctx.diagnostics or {}
    value = diag.get("log_likelihood")
    if value is None or not markets or value.dim() != 1 or value.shape[0] != len(markets):
        return []
    return [markets[i] for i in (~torch.isfinite(value)).nonzero().flatten().tolist()]


def _names(markets: tuple[str, ...] | list[str]) -> str:
    """``market 'a'`` / ``markets 'a', 'b'`` (``the data`` when the names are unknown)."""
    if not markets:
        return "the data"
    return f"market{'s' if len(markets) > 1 else ''} " + ", ".join(f"'{n}'" for n in markets)


def _where(names: list[str]) -> str:
    """`` (market 'a')`` / `` (markets 'a', 'b')``, or nothing."""
    return f" ({_names(names)})" if names else ""


def _fault(
    loop: LoopState,
    restart: int,
    epoch: int,
    problem: str,
    optimizer: ClippedAdam | None,
    log: Callable[[str], None] | None,
    max_faults: int,
    markets: tuple[str, ...] = (),
) -> None:
    """Record a skipped step (Adam: the learning rate halved); :class:`TrainingError` after ``max_faults`` in a row,
    naming the markets at fault (or, when the problem is no one market's, every market of the fit)."""
    loop.consecutive_faults += 1
    if optimizer is not None:
        loop.lr /= 2.0
        for group in optimizer.param_groups:
            group["lr"] = loop.lr
        action = f"step skipped, lr -> {loop.lr:.3g}"
    else:
        action = "L-BFGS memory cleared" + (", step rolled back" if problem.startswith("parameter") else "")
    event = {"restart": restart, "epoch": epoch, "non_finite": problem, "action": action}
    loop.faults.append(event)
    if log:
        log(f"[restart {restart}] epoch {epoch}: non-finite {problem}; {action}")
    if loop.consecutive_faults >= max_faults:
        lower = " and lower training.lr" if optimizer is not None else " or train with training.optimizer: adam"
        scope = "" if "(market" in problem or not markets else f" in the fit of {_names(markets)}"
        raise TrainingError(
            f"restart {restart}: {loop.consecutive_faults} consecutive non-finite steps{scope} (last: {problem}) "
            f"at epoch {epoch}: check the scale of the data (normalisation on?){lower}"
        )


def _keep_optimizers(loop: LoopState, adam: ClippedAdam | None, lbfgs: torch.optim.LBFGS | None) -> None:
    """The optimisers' states into the loop state (what a checkpoint keeps)."""
    if adam is not None:
        loop.optimizer = adam.state_dict()
    if lbfgs is not None:
        loop.lbfgs = lbfgs.state_dict()


def _per_day(row: dict[str, Any], observations: int) -> dict[str, float]:
    """Reconstruction and KL per observed market-day (nats per day), as DMM training reports give them."""
    return {"recon_per_day": row["recon"] / observations, "kl_per_day": row["kl"] / observations}


def _carry(
    previous: tuple[torch.Tensor, torch.Tensor] | None, diag: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Usage and entropy per market over an epoch's minibatches: markets missing from a batch keep their
    last values (uniform usage and log K before their first batch). Diagnostics only."""
    usage, entropy, present = diag["usage"], diag["entropy"], diag["present"]
    if previous is None or previous[0].shape != usage.shape:
        k = usage.shape[-1]
        previous = (torch.full_like(usage, 1.0 / k), torch.full_like(entropy, math.log(k)))
    return (torch.where(present[:, None], usage, previous[0]), torch.where(present, entropy, previous[1]))


def _grad_norms(params: dict[str, torch.Tensor]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for name, p in params.items():
        if p.grad is None:
            continue
        group = "grad_norm_" + _module_of(name)
        sums[group] = sums.get(group, 0.0) + float(p.grad.pow(2).sum())
    out = {k: math.sqrt(v) for k, v in sums.items()}
    out["grad_norm"] = math.sqrt(sum(sums.values()))
    return out


def _mean_norms(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-epoch gradient norms of a multi-step epoch: the mean over its steps."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: sum(row.get(k, 0.0) for row in rows) / len(rows) for k in keys}


def _progress(total: int, restart: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"restart {restart}", leave=False, file=sys.stderr)
