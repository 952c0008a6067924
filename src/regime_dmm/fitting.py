"""``fit``: prices in, exact regimes out. Data -> features -> model/guide -> SVI -> results."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyro
import torch

from .config import FitConfig
from .data import build_features, load_prices, make_panel, simulate_default
from .errors import TrainingError
from .guides import make_guide, point_estimate
from .models import ClassicMarkovSwitching, ExactRegimeDMM, ModelData
from .models.init_values import initial_values, warm_start
from .results import RegimeFit, compute_results
from .training.annealing import default_schedules
from .training.svi import train_lbfgs, train_svi

DataSource = str | Path | pd.DataFrame | None


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
        frame, source, simulated = load_prices(truth.frame, min_observations=config.training.min_observations), "simulated (embedded default: traditional_cre, tokenized_reit)", True
    else:
        frame = load_prices(data, min_observations=config.training.min_observations)
        source = str(data) if not isinstance(data, pd.DataFrame) else "DataFrame"
        simulated = False
    features = ("return",) if config.model.classic else ("return", "vol")  # networks see both
    series = build_features(frame, vol_window=config.model.vol_window, features=features, normalise=config.model.normalise)
    return make_panel(series), source, simulated, truth


def build_model(config: FitConfig, panel, init_values: dict[str, torch.Tensor], dtype: torch.dtype):
    if config.model.classic:
        return ClassicMarkovSwitching(config, panel.num_markets, init_values)
    return ExactRegimeDMM(config, panel.num_markets, len(config.model.features)).to(dtype)


def fit(
    data: DataSource = None,
    config: FitConfig | None = None,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> RegimeFit:
    """Fit the regime model to ``data`` (a CSV path or long DataFrame; None = embedded default).

    Runs ``config.training.restarts`` restarts from data-driven, jittered starting values
    and keeps the one with the best final objective.
    """
    config = effective_config(config or FitConfig())
    tc = config.training
    seed = tc.seed
    panel, source, simulated, truth = prepare(data, config, seed)
    dtype = getattr(torch, tc.dtype)
    model_data = ModelData.from_panel(panel, config.model.history, dtype, emitted=config.model.features)
    schedules = default_schedules(config)
    best = None
    restarts: list[dict] = []
    histories: list[pd.DataFrame] = []
    all_faults: list[dict] = []
    for restart in range(tc.restarts):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed * 1009 + restart)
        rng = np.random.default_rng([seed, restart])
        if config.model.classic:
            init = initial_values(panel, config, rng, dtype)
        else:  # start the DMM from a maximum-likelihood HMM of the returns
            init = warm_start(panel, model_data, config, rng, dtype)
            pyro.clear_param_store()
        model = build_model(config, panel, init, dtype)
        guide = make_guide(model, tc.guide, init)
        try:
            if config.model.classic:
                outcome = train_lbfgs(model, model_data, restart=restart)
            else:
                outcome = train_svi(
                    model, guide, model_data, config, schedules, list(panel.markets),
                    restart=restart, log=log, progress=progress,
                )
        except TrainingError as exc:
            restarts.append({"restart": restart, "status": "failed", "reason": str(exc)})
            if log:
                log(f"[restart {restart}] failed: {exc}")
            continue
        all_faults.extend(outcome.faults)
        final_ll = outcome.history[-1]["log_likelihood"]
        restarts.append({
            "restart": restart, "status": "ok", "final_loss": round(outcome.final_loss, 6),
            "log_likelihood_normalised": round(final_ll, 6), "epochs": outcome.epochs_run,
            "stopped_early": outcome.stopped_early,
        })
        histories.append(pd.DataFrame(outcome.history))
        if best is None or outcome.final_loss < best[0]:
            best = (outcome.final_loss, restart, model, guide, pyro.get_param_store().get_state())
    if best is None:
        raise TrainingError("every restart failed: " + "; ".join(r["reason"] for r in restarts))
    _, best_restart, model, guide, state = best
    pyro.get_param_store().set_state(state)
    for r in restarts:
        r["best"] = r["restart"] == best_restart
    globals_ = point_estimate(guide, model_data)
    markets = compute_results(model, globals_, model_data, panel, config.model.names())
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    if log:
        log(f"best restart: {best_restart} (log-likelihood {sum(m.log_likelihood for m in markets):.3f})")
    return RegimeFit(
        config=config, regimes=config.model.names(), markets=markets, history=history, restarts=restarts,
        seed=seed, data_source=source, simulated=simulated, faults=all_faults, truth=truth,
        model=model, guide=guide, panel=panel, param_state=state,
    )


