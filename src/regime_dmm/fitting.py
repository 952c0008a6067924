"""``fit``: prices in, regimes out. Data -> features -> model/guide -> training -> fitted model -> results.

The data are loaded (or simulated) and validated once, the feature pipeline is fitted once,
the model's tensors are built once; :func:`~regime_dmm.training.restarts.run_restarts` trains
the restarts and keeps the best; the :class:`~regime_dmm.fitted.FittedModel` is built once
from the kept restart, and the results and collapse checks are read from it. With a checkpoint
path the run state is saved as it goes (:class:`~regime_dmm.training.run_state.RunCheckpoint`),
and :func:`resume_fit` continues an interrupted run to the same result.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import FitConfig
from .cross_market import cross_market
from .data.features import FeaturePipeline
from .data.sources import DataSource, LoadedData, load_source
from .errors import CheckpointError, RegimeWarning
from .fitted import FittedModel
from .regime_checks import check_regimes, format_regime_warnings
from .results import RegimeFit, compute_results
from .threads import using_threads
from .training.collapse import detect_collapse, format_collapse, posterior_entropy
from .training.hooks import FitInterrupted, StopControl, TrainingHooks
from .training.restarts import run_restarts
from .training.run_state import DataIdentity, RunCheckpoint, RunState
from .training.variants import variant_for

__all__ = [
    "FitInterrupted",
    "StopControl",
    "fit",
    "format_data_warnings",
    "warning_lines",
    "load_resume_state",
    "prepare",
    "resume_fit",
]


def prepare(data: DataSource, config: FitConfig) -> tuple[FitConfig, LoadedData, FeaturePipeline]:
    """The resolved configuration, the loaded data and the feature pipeline fitted on them."""
    config = variant_for(config).resolve_config(config)
    variant = variant_for(config)
    loaded = load_source(data, min_observations=config.training.min_observations, seed=config.training.seed)
    pipeline = FeaturePipeline.fit(
        loaded.frame, variant.feature_spec(config), min_observations=config.training.min_observations
    )
    return config, loaded, pipeline


def fit(
    data: DataSource = None,
    config: FitConfig | None = None,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    stop_requested: Callable[[], bool] | None = None,
    stop: StopControl | None = None,
    initial_params: dict[str, torch.Tensor] | None = None,
    threads: int | None = None,
    warn: bool = True,
    _resume: RunCheckpoint | None = None,
) -> RegimeFit:
    """Fit the regime model to ``data`` (a CSV path or long DataFrame; None = embedded default).

    ``config``: the :class:`FitConfig` (default settings when None). ``log``: receives the training
    log lines; ``progress``: a progress bar per restart. ``checkpoint``: file to keep the run state in
    (every ``checkpoint_every`` epochs, at the end of each restart, and when ``stop_requested()``
    turns true, which then raises :class:`FitInterrupted`). ``stop``: a
    :class:`~regime_dmm.training.restarts.StopControl` whose handler is installed for SIGINT/SIGTERM
    (the command line's): a stop is then honoured at once in every phase. ``initial_params``: the
    parameters of an earlier fit of the same configuration on the same markets
    (:meth:`FittedModel.parameters`): the first restart starts from them (walk-forward refits).
    ``threads``: torch intra-op threads during the fit (None: the measured default of
    :mod:`regime_dmm.threads`; sweeps use 1); the caller's count is restored afterwards.
    ``warn``: issue each of the fit's findings (data quality, regime checks, collapse) as a
    :class:`~regime_dmm.errors.RegimeWarning` through :mod:`warnings` (they are in ``summary()`` either way;
    walk-forward refits, sweeps and ``select`` pass False and report them their own way).

    Raises :class:`~regime_dmm.errors.DataError` (bad data, naming market, row and date),
    :class:`~regime_dmm.errors.ConfigError`, :class:`~regime_dmm.errors.TrainingError` (every
    restart failed) and :class:`~regime_dmm.errors.CheckpointError` (a resume on other data).
    """
    with using_threads(threads):  # the caller's count is restored afterwards
        if stop is not None:
            stop.phase = "loading the data"
        config, loaded, pipeline = prepare(data, config or FitConfig())
        variant = variant_for(config)
        tc = config.training
        print_ = log or (lambda _msg: None)
        dtype = getattr(torch, tc.dtype)
        if not loaded.simulated:
            for shape in loaded.shapes:
                print_(f"data: {shape}")
        panel = pipeline.transform(loaded.frame)
        for s in panel.series:
            print_(f"data: {s.name}: {s.calendar} calendar, {s.length} days, {s.num_observed} observed")
        data_warnings = [entry for s in panel.series for entry in s.report]
        for line in format_data_warnings(data_warnings):
            print_(line)
        model_data = pipeline.model_data(panel, dtype)
        identity = DataIdentity(loaded.path, loaded.simulated, panel.fingerprint())
        state = RunState()
        if _resume is not None:
            if _resume.data.fingerprint != identity.fingerprint:
                raise CheckpointError("the data differ from the data the checkpointed run was fitted on")
            state = _resume.run
        path = Path(checkpoint) if checkpoint else None

        def save() -> None:
            if path is not None:
                RunCheckpoint(config.to_dict(), identity, state).save(path)

        hooks = TrainingHooks(
            log=log,
            progress=progress,
            stop=stop,
            stop_requested=stop_requested,
            save=save if path is not None else None,
            checkpoint_every=checkpoint_every,
        )
        try:
            run = run_restarts(
                variant,
                config,
                pipeline.spec,
                panel,
                model_data,
                dtype=dtype,
                state=state,
                hooks=hooks,
                warm_params=initial_params,
            )
        except FitInterrupted as exc:
            exc.checkpoint = path
            raise
        assert run.state.best is not None
        best = run.state.best
        if stop is not None:
            stop.phase = "computing the regimes of the kept restart"
        fitted = FittedModel(variant, config, pipeline, panel, model_data, run.model, run.guide, best.params)
        markets = compute_results(fitted, config.model.names())
        completed = sorted(run.state.completed, key=lambda e: e.restart)
        histories = [pd.DataFrame(e.history) for e in completed if e.history]
        history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
        print_(f"best restart: {best.restart} (log-likelihood {sum(m.log_likelihood for m in markets):.3f})")
        kept = run.state.record(best.restart)
        usage = np.stack([m.usage for m in markets])
        reference = usage if kept.reference_usage is None else np.asarray(kept.reference_usage, dtype=float)
        collapse = detect_collapse(
            usage,
            [posterior_entropy(m.smoothed) for m in markets],
            kept.history,
            config.model.num_regimes,
            reference_usage=reference,
            after_warmup_epoch=config.annealing_epochs(variant.refines(config)),
            markets=[m.name for m in markets],
            num_days=int(model_data.mask.sum()),
        )
        for line in format_collapse(collapse):
            print_(line)
        result = RegimeFit(
            config=config,
            regimes=config.model.names(),
            markets=markets,
            history=history,
            restarts=[dict(e.summary, best=e.restart == best.restart) for e in completed],
            seed=tc.seed,
            data_source=loaded.label,
            simulated=loaded.simulated,
            faults=[f for e in completed for f in e.faults],
            truth=loaded.truth,
            data_path=loaded.path,
            data_fingerprint=identity.fingerprint,
            num_parameters=fitted.num_parameters(),
            collapse=collapse,
            data_warnings=data_warnings,
            fitted=fitted,
        )
        result.pooling = fitted.pooling(result.regimes)
        result.cross_market = cross_market(result, seed=tc.seed)
        result.regime_warnings = check_regimes(result, fitted.scale_floors())
        for line in format_regime_warnings(result.regime_warnings):
            print_(line)
        if warn:
            for line in warning_lines(result):  # what the command line prints, for Python callers
                warnings.warn(line.removeprefix("WARNING "), RegimeWarning, stacklevel=2)
        return result


def warning_lines(result: RegimeFit) -> list[str]:
    """The fit's own warnings, one ``WARNING ...`` line each: data quality, regimes the data cannot tell apart,
    collapse."""
    return (
        format_data_warnings(result.data_warnings)
        + format_regime_warnings(result.regime_warnings)
        + format_collapse(result.collapse)
    )


def format_data_warnings(entries: list[dict[str, Any]]) -> list[str]:
    """One ``WARNING data: ...`` line per data-quality entry (market, dates, what was done)."""
    out = []
    for e in entries:
        when = e["start"] if e["start"] == e["end"] else f"{e['start']}..{e['end']}"
        out.append(f"WARNING data: {e['market']}: {e['kind']} {when}: {e['detail']}")
    return out


def load_resume_state(path: str | Path) -> RunCheckpoint:
    """Read a run checkpoint with ``weights_only=True``; :class:`CheckpointError` for anything else."""
    return RunCheckpoint.load(path)


def resume_fit(path: str | Path, data: DataSource = None, **kwargs: Any) -> RegimeFit:
    """Continue the run checkpointed at ``path`` (same configuration; data from the checkpoint unless given).

    Keyword arguments are those of :func:`fit`. Raises :class:`CheckpointError` for a bad
    checkpoint or other data.
    """
    saved = load_resume_state(path)
    config = FitConfig.from_dict(saved.config)
    if data is None and not saved.data.simulated:
        data = saved.data.path
        if data is None:
            raise CheckpointError("the checkpointed run was fitted on a DataFrame: pass the same data to resume")
    kwargs.setdefault("checkpoint", path)
    return fit(data, config, _resume=saved, **kwargs)
