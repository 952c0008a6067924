"""Loading a saved fit: ``model.pt`` (and ``summary.json``, ``history.csv``) back into a :class:`RegimeFit`.

:func:`load_fit` rebuilds the model and guide exactly as :func:`regime_dmm.fitting.fit` does
at the end of a run (:func:`rebuild_fit`, the steps of ``fitting._finish``: build the model and
guide, run them once so every parameter exists, copy the saved parameters in, compute the exact
posterior),
so the reloaded fit's regimes, summary and forecasts equal the original's, without refitting.

The data come from the caller, else from the CSV path stored in the checkpoint, else (a fit
on the embedded simulated data) from the simulator with the stored seed. The data's
fingerprint (markets, dates, features) must equal the one stored: other data raise
:class:`~regime_dmm.errors.CheckpointError`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch

from . import fitting
from .config import FitConfig
from .errors import CheckpointError, RegimeDMMError
from .fitting import effective_config, fingerprint, prepare
from .guides import inference_marginals, point_estimate
from .models import ModelData, RelaxedRegimeDMM
from .models.init_values import initial_values
from .outputs import CHECKPOINT_NAME, load_checkpoint
from .results import RegimeFit, compute_results

__all__ = ["load_fit", "rebuild_fit"]

DataSource = str | Path | pd.DataFrame | None


def load_fit(out_dir: str | Path, data: DataSource = None) -> RegimeFit:
    """Rebuild the fit saved in ``out_dir`` (by ``regime-dmm fit`` / :func:`~regime_dmm.outputs.write_outputs`).

    ``data``: the data the fit was made on (CSV path or long DataFrame); default: the CSV path
    stored in the checkpoint, or the embedded simulation for a fit on simulated data.
    Raises :class:`CheckpointError` when the folder holds no readable fit or the data differ.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise CheckpointError(f"no fit folder at {out_dir} (write one with: regime-dmm fit --out {out_dir})")
    path = out_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{out_dir} holds no saved fit: {path} not found")
    payload = load_checkpoint(path)
    for key in ("config", "data", "params"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint is missing {key!r}")
    stored = payload["data"]
    params = payload["params"]
    if not isinstance(stored, dict) or not isinstance(params, dict) or not params:
        raise CheckpointError(f"{path}: checkpoint holds no fitted parameters")
    bad = [name for name, value in params.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: parameter {bad[0]!r} is not a tensor")
    try:
        config = effective_config(FitConfig.from_dict(payload["config"], origin=f"{path} (stored configuration)"))
    except RegimeDMMError as exc:
        raise CheckpointError(f"{path}: the stored configuration is not valid: {exc}") from None
    if list(payload.get("regimes", config.model.names())) != list(config.model.names()):
        raise CheckpointError(f"{path}: stored regimes {payload.get('regimes')} do not match its configuration")

    summary = _read_summary(out_dir / "summary.json")
    explicit = data is not None
    if not explicit:
        if stored.get("path"):
            data = stored["path"]
            if not Path(data).is_file():
                raise CheckpointError(
                    f"the data the fit in {out_dir} was made on ({data}) no longer exist: pass them with --data / data="
                )
        elif not stored.get("simulated"):
            raise CheckpointError(
                f"the fit in {out_dir} was made on a DataFrame: pass the same data to load it (--data / data=)"
            )
    seed = config.training.seed
    panel, source, simulated, truth = prepare(data, config, seed)
    data_hash = fingerprint(panel)
    if stored.get("fingerprint") and data_hash != stored["fingerprint"]:
        where = f"the data given ({source})" if explicit else f"the data at {source}"
        raise CheckpointError(
            f"{where} differ from the data the fit in {out_dir} was made on "
            f"(markets, dates or values changed; fitted markets: {', '.join(payload.get('markets', []))})"
        )
    if list(payload.get("markets", panel.markets)) != list(panel.markets):
        raise CheckpointError(f"the data have markets {list(panel.markets)}, the fit {payload.get('markets')}")

    dtype = getattr(torch, config.training.dtype)
    restarts = list(summary.get("restarts") or [])
    best = next((int(r["restart"]) for r in restarts if isinstance(r, dict) and r.get("best")), 0)
    result = rebuild_fit(config, panel, params, dtype=dtype, restart=best, source=source, simulated=simulated,
                         truth=truth)

    result.restarts = restarts
    result.faults = list(summary.get("faults") or [])
    if not explicit and summary.get("data"):
        result.data_source = summary["data"]
    if explicit:
        result.data_path = None if isinstance(data, pd.DataFrame) else str(Path(data).resolve())
    else:
        result.data_path = stored.get("path")
    result.data_fingerprint = data_hash
    result.history = _read_history(out_dir / "history.csv")
    if "collapse" in summary and hasattr(result, "collapse"):
        result.collapse = list(summary.get("collapse") or [])  # the fit's own checks (they need its training run)
    return result


def rebuild_fit(config: FitConfig, panel, params: dict[str, torch.Tensor], *, dtype: torch.dtype,
                restart: int = 0, source: str = "", simulated: bool = False, truth=None) -> RegimeFit:
    """A :class:`RegimeFit` from saved parameters: the steps of :func:`regime_dmm.fitting._finish`.

    Build the model and guide (starting values only shape the parameters, which are then
    overwritten), run them once so that every parameter exists, copy ``params`` (unconstrained
    values, as in the param store) in, and compute the exact posterior quantities. Replaces
    Pyro's global parameter store, as a fit does. Training records (history, restarts,
    faults, collapse checks) are left empty: :func:`load_fit` reads them from the folder.
    """
    model_data = ModelData.from_panel(panel, config.model.history, dtype, emitted=config.model.features)
    pyro.clear_param_store()
    init = initial_values(panel, config, np.random.default_rng([config.training.seed, restart]), dtype)
    model = fitting.build_model(config, panel, init, dtype)
    guide = fitting.build_guide(model, config, init)
    fitting._materialise(model, guide, model_data)
    fitting._restore(params)
    globals_ = point_estimate(guide, model_data)
    # relaxed mode: smoothed = the inference network's marginals, as in the fit
    smoothed = inference_marginals(model, model_data, globals_) if isinstance(model, RelaxedRegimeDMM) else None
    markets = compute_results(model, globals_, model_data, panel, config.model.names(), smoothed=smoothed)
    return RegimeFit(
        config=config, regimes=config.model.names(), markets=markets, history=pd.DataFrame(), restarts=[],
        seed=config.training.seed, data_source=source, simulated=simulated, faults=[], truth=truth,
        model=model, guide=guide, panel=panel, param_state=pyro.get_param_store().get_state(),
    )


def _read_summary(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _read_history(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError, UnicodeDecodeError):
        return pd.DataFrame()
