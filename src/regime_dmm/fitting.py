"""``fit``: prices in, exact regimes out. Data -> features -> model/guide -> SVI -> results.

Restarts run one after another from data-driven, jittered starting values; the restart
with the best final objective is kept. With a checkpoint path the whole run state
(finished restarts, the best so far, the restart in progress with its optimiser and
RNG state) is written atomically every ``checkpoint_every`` epochs, and
:func:`resume_fit` continues it to the same result as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import Trace_ELBO

from ._version import __version__
from .checkpoints import atomic_save, read_checkpoint
from .config import FitConfig
from .data import build_features, load_prices, make_panel, simulate_default
from .errors import CheckpointError, RegimeDMMError, TrainingError
from .guides import inference_marginals, make_guide, make_relaxed_guide, point_estimate
from .models import AnnealState, ClassicMarkovSwitching, ExactRegimeDMM, ModelData, RelaxedRegimeDMM
from .models.init_values import initial_values, warm_start
from .results import RegimeFit, compute_results
from .training.annealing import default_schedules
from .training.collapse import classic_usage, detect_collapse, format_collapse, posterior_entropy, reference_usage
from .training.svi import LoopState, train_lbfgs, train_svi

DataSource = str | Path | pd.DataFrame | None
RESUME_FORMAT = "regime-dmm-resume/1"


class FitInterrupted(RegimeDMMError):
    """Training was stopped on request (SIGINT/SIGTERM); a checkpoint was saved."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


def effective_config(config: FitConfig) -> FitConfig:
    """Classic mode pins the model to a plain Markov-switching regression of the return."""
    if not config.model.classic:
        return config.validate()
    model = dataclasses.replace(
        config.model, features=("return",), normalise=False, covariate_transitions=False,
        emission_network=False, emission="gaussian",
    )
    return dataclasses.replace(config, model=model).validate()


def prepare(data: DataSource, config: FitConfig, seed: int):
    """Load (or simulate) the data and build the per-market features."""
    truth = None
    if data is None:
        truth = simulate_default(seed=seed)
        frame = load_prices(truth.frame, min_observations=config.training.min_observations)
        source, simulated = "simulated (embedded default: traditional_cre, tokenized_reit)", True
    else:
        frame = load_prices(data, min_observations=config.training.min_observations)
        source = str(data) if not isinstance(data, pd.DataFrame) else "DataFrame"
        simulated = False
    features = ("return",) if config.model.classic else ("return", "vol")  # networks see both
    series = build_features(frame, vol_window=config.model.vol_window, features=features, normalise=config.model.normalise)
    return make_panel(series), source, simulated, truth


def fingerprint(panel) -> str:
    """Hash of the data a fit saw (markets, dates, features)."""
    h = hashlib.sha256()
    for s in panel.series:
        h.update(s.name.encode())
        h.update(np.asarray(s.dates.asi8).tobytes())
        h.update(np.ascontiguousarray(s.features).tobytes())
    return h.hexdigest()


def build_model(config: FitConfig, panel, init_values: dict[str, torch.Tensor], dtype: torch.dtype):
    if config.model.classic:
        return ClassicMarkovSwitching(config, panel.num_markets, init_values)
    if config.training.inference == "relaxed":
        return RelaxedRegimeDMM(config, panel.num_markets, len(config.model.features)).to(dtype)
    return ExactRegimeDMM(config, panel.num_markets, len(config.model.features)).to(dtype)


def build_guide(model, config: FitConfig, init_values: dict[str, torch.Tensor]):
    """Relaxed mode: MAP globals + the inference network (``training.guide`` is not used there)."""
    if isinstance(model, RelaxedRegimeDMM):
        return make_relaxed_guide(model, init_values)
    return make_guide(model, config.training.guide, init_values)


def _materialise(model, guide, data: ModelData) -> None:
    """Run model and guide once so that every parameter exists in the param store."""
    with torch.no_grad():
        if isinstance(model, ClassicMarkovSwitching):
            model.log_potentials(data)
        else:
            Trace_ELBO().differentiable_loss(model.model, guide, data, AnnealState())


def _snapshot() -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def _restore(values: dict[str, torch.Tensor]) -> None:
    store = dict(pyro.get_param_store().named_parameters())
    missing = set(store) ^ set(values)
    if missing:
        raise CheckpointError(f"checkpoint parameters do not match the model: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, p in store.items():
            if p.shape != values[name].shape:
                raise CheckpointError(f"checkpoint parameter {name} has shape {tuple(values[name].shape)}, "
                                      f"the model expects {tuple(p.shape)}")
            p.copy_(values[name])


def fit(
    data: DataSource = None,
    config: FitConfig | None = None,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    stop_requested: Callable[[], bool] | None = None,
    _resume: dict | None = None,
) -> RegimeFit:
    """Fit the regime model to ``data`` (a CSV path or long DataFrame; None = embedded default).

    ``checkpoint``: file to keep the run state in (every ``checkpoint_every`` epochs, at
    the end of each restart, and when ``stop_requested()`` turns true, which then raises
    :class:`FitInterrupted`).
    """
    config = effective_config(config or FitConfig())
    tc = config.training
    seed = tc.seed
    panel, source, simulated, truth = prepare(data, config, seed)
    print_ = log or (lambda _msg: None)
    dtype = getattr(torch, tc.dtype)
    model_data = ModelData.from_panel(panel, config.model.history, dtype, emitted=config.model.features)
    schedules = default_schedules(config)
    data_hash = fingerprint(panel)
    run = {"completed": [], "best": None, "current": None}
    if _resume is not None:
        if _resume["data"]["fingerprint"] != data_hash:
            raise CheckpointError("the data differ from the data the checkpointed run was fitted on")
        run = _resume["run"]
    checkpoint = Path(checkpoint) if checkpoint else None
    data_path = None if data is None or isinstance(data, pd.DataFrame) else str(Path(data).resolve())

    def save() -> None:
        if checkpoint is not None:
            atomic_save({
                "format": RESUME_FORMAT, "package_version": __version__, "config": config.to_dict(),
                "data": {"path": data_path, "simulated": simulated, "fingerprint": data_hash}, "run": run,
            }, checkpoint)

    done = {entry["restart"] for entry in run["completed"]}
    for restart in range(tc.restarts):
        if restart in done:
            continue
        pyro.clear_param_store()
        pyro.set_rng_seed(seed * 1009 + restart)
        rng = np.random.default_rng([seed, restart])
        current = run["current"] if run["current"] and run["current"]["restart"] == restart else None
        reference = None  # usage of the warm start's HMM: the collapse checks' reference
        if config.model.classic or current is not None:
            init = initial_values(panel, config, rng, dtype)  # resumed: values come from the checkpoint
        else:  # start the DMM from a maximum-likelihood HMM of the returns
            init = warm_start(panel, model_data, config, rng, dtype)
            reference = classic_usage(panel, model_data, config, init).tolist()
            pyro.clear_param_store()
        model = build_model(config, panel, init, dtype)
        guide = build_guide(model, config, init)
        loop = None
        if current is not None:
            _materialise(model, guide, model_data)
            _restore(current["params"])
            torch.set_rng_state(current["torch_rng"])
            loop = LoopState(**current["loop"])
            print_(f"[restart {restart}] resumed after epoch {loop.epoch}")

        def on_epoch(state: LoopState, restart=restart) -> None:
            stop = stop_requested is not None and stop_requested()
            if checkpoint is not None and (stop or state.epoch % checkpoint_every == 0):
                run["current"] = {"restart": restart, "loop": state.to_dict(), "params": _snapshot(),
                                  "torch_rng": torch.get_rng_state()}
                save()
            if stop:
                raise FitInterrupted(f"stopped at restart {restart}, epoch {state.epoch}", checkpoint)

        try:
            if config.model.classic:
                outcome = train_lbfgs(model, model_data, restart=restart)
            else:
                outcome = train_svi(
                    model, guide, model_data, config, schedules, list(panel.markets),
                    restart=restart, log=log, progress=progress, loop=loop, on_epoch=on_epoch,
                )
        except TrainingError as exc:
            print_(f"[restart {restart}] failed: {exc}")
            run["completed"].append({"restart": restart, "summary": {"restart": restart, "status": "failed",
                                                                     "reason": str(exc)}, "history": [], "faults": []})
            run["current"] = None
            save()
            continue
        summary = {
            "restart": restart, "status": "ok", "final_loss": round(outcome.final_loss, 6),
            "log_likelihood_normalised": round(outcome.history[-1]["log_likelihood"], 6),
            "epochs": outcome.epochs_run, "stopped_early": outcome.stopped_early,
        }
        run["completed"].append({"restart": restart, "summary": summary, "history": outcome.history,
                                 "faults": outcome.faults, "reference_usage": reference})
        # Relaxed mode ranks restarts by the exact log-likelihood at their final parameters: its
        # loss is a one-sample ELBO estimate, too noisy (hundreds of nats) to tell restarts apart.
        score = -outcome.history[-1]["log_likelihood"] if tc.inference == "relaxed" else outcome.final_loss
        if run["best"] is None or score < run["best"]["loss"]:
            run["best"] = {"restart": restart, "loss": score, "params": _snapshot()}
        run["current"] = None
        save()
    if run["best"] is None:
        raise TrainingError("every restart failed: " + "; ".join(e["summary"]["reason"] for e in run["completed"]))
    result = _finish(config, panel, model_data, run, dtype, source, simulated, truth, print_)
    result.data_path, result.data_fingerprint = data_path, data_hash
    return result


def _finish(config, panel, model_data, run, dtype, source, simulated, truth, print_) -> RegimeFit:
    """Rebuild the best restart's model and guide and compute the exact posterior.

    Relaxed mode: ``smoothed`` (and usage) are the inference network's marginals; the rest
    (filtered, Viterbi, transitions, likelihood) is exact at the learned parameters.
    Both modes end with the collapse checks (log warnings and ``RegimeFit.collapse``).
    """
    best = run["best"]
    reference = None
    if not config.model.classic:
        entry = next(e for e in run["completed"] if e["restart"] == best["restart"])
        reference = entry.get("reference_usage")
        if reference is None:  # the best restart was resumed mid-way: redo its (deterministic) warm start
            reference = reference_usage(panel, model_data, config, dtype, best["restart"])
        reference = np.asarray(reference, dtype=float)
    pyro.clear_param_store()
    init = initial_values(panel, config, np.random.default_rng([config.training.seed, best["restart"]]), dtype)
    model = build_model(config, panel, init, dtype)
    guide = build_guide(model, config, init)
    _materialise(model, guide, model_data)
    _restore(best["params"])
    globals_ = point_estimate(guide, model_data)
    smoothed = inference_marginals(model, model_data, globals_) if isinstance(model, RelaxedRegimeDMM) else None
    markets = compute_results(model, globals_, model_data, panel, config.model.names(), smoothed=smoothed)
    completed = sorted(run["completed"], key=lambda e: e["restart"])
    restarts = [dict(e["summary"], best=e["restart"] == best["restart"]) for e in completed]
    histories = [pd.DataFrame(e["history"]) for e in completed if e["history"]]
    faults = [f for e in completed for f in e["faults"]]
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    print_(f"best restart: {best['restart']} (log-likelihood {sum(m.log_likelihood for m in markets):.3f})")
    tc = config.training
    best_history = [row for e in completed if e["restart"] == best["restart"] for row in e["history"]]
    usage = np.stack([m.usage for m in markets])
    collapse = detect_collapse(
        usage, [posterior_entropy(m.smoothed) for m in markets], best_history, config.model.num_regimes,
        reference_usage=usage if reference is None else reference,
        after_warmup_epoch=int((tc.warmup_fraction + tc.ramp_fraction) * tc.epochs),
        markets=[m.name for m in markets], num_days=int(model_data.mask.sum()),
    )
    for line in format_collapse(collapse):
        print_(line)
    return RegimeFit(
        config=config, regimes=config.model.names(), markets=markets, history=history, restarts=restarts,
        seed=config.training.seed, data_source=source, simulated=simulated, faults=faults, truth=truth,
        model=model, guide=guide, panel=panel, param_state=pyro.get_param_store().get_state(), collapse=collapse,
    )


def load_resume_state(path: str | Path) -> dict:
    """Read a run checkpoint with ``weights_only=True``; clear errors for anything else."""
    return read_checkpoint(path, RESUME_FORMAT, "run checkpoint", required=("config", "data", "run"))


def resume_fit(path: str | Path, data: DataSource = None, **kwargs) -> RegimeFit:
    """Continue the run checkpointed at ``path`` (same config; data from the checkpoint unless given)."""
    payload = load_resume_state(path)
    config = FitConfig.from_dict(payload["config"])
    if data is None and not payload["data"]["simulated"]:
        data = payload["data"]["path"]
        if data is None:
            raise CheckpointError("the checkpointed run was fitted on a DataFrame: pass the same data to resume")
    kwargs.setdefault("checkpoint", path)
    return fit(data, config, _resume=payload, **kwargs)
