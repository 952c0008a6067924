"""Saving and loading a fit: ``model.pt`` (and ``summary.json``, ``history.csv``) <-> :class:`RegimeFit`.

``model.pt`` holds tensors and plain data only (read with ``torch.load(weights_only=True)``):
the package version, the configuration, the feature pipeline with its fitted statistics, the
data's identity (path, fingerprint) and the parameters. :func:`load_fit` rebuilds the
:class:`~regime_dmm.fitted.FittedModel` with the same constructor a fit uses, so the reloaded
fit's regimes, summary and forecasts equal the original's, without refitting.

The data come from the caller, else from the CSV path stored in the checkpoint, else (a fit
on the embedded simulated data) from the simulator with the stored seed. The data's
fingerprint (markets, dates, features) must equal the one stored: other data raise
:class:`~regime_dmm.errors.CheckpointError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ._version import __version__
from .checkpoints import read_checkpoint
from .config import FitConfig
from .cross_market import cross_market
from .data.features import FeaturePipeline
from .data.sources import DataSource, load_source
from .errors import CheckpointError, RegimeDMMError
from .fitted import FittedModel
from .regime_checks import check_regimes
from .results import RegimeFit, compute_results
from .training.variants import variant_for

__all__ = ["MODEL_FILE", "MODEL_FORMAT", "load_checkpoint", "load_fit", "model_payload"]

MODEL_FILE = "model.pt"
MODEL_FORMAT = "regime-dmm-checkpoint/2"


def model_payload(fit: RegimeFit) -> dict[str, Any]:
    """The contents of ``model.pt``: tensors and plain data only (``torch.load(weights_only=True)`` reads it)."""
    fitted = fit.require_fitted()
    return {
        "format": MODEL_FORMAT,
        "package_version": __version__,
        "config": fit.config.to_dict(),
        "regimes": list(fit.regimes),
        "markets": [m.name for m in fit.markets],
        "seed": fit.seed,
        "data": {"path": fit.data_path, "simulated": fit.simulated, "fingerprint": fit.data_fingerprint},
        "features": fitted.pipeline.to_dict(),
        "params": fitted.parameters(),
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a model checkpoint safely (no code execution); :class:`CheckpointError` for anything else."""
    return read_checkpoint(path, MODEL_FORMAT, "model checkpoint", required=("config", "params"))


def load_fit(out_dir: str | Path, data: DataSource = None) -> RegimeFit:
    """Rebuild the fit saved in ``out_dir`` (by ``regime-dmm fit`` / :func:`~regime_dmm.outputs.write_outputs`).

    ``data``: the data the fit was made on (CSV path or long DataFrame); default: the CSV path
    stored in the checkpoint, or the embedded simulation for a fit on simulated data.
    Raises :class:`CheckpointError` when the folder holds no readable fit or the data differ,
    :class:`~regime_dmm.errors.DataError` for unusable data.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise CheckpointError(f"no fit folder at {out_dir} (write one with: regime-dmm fit --out {out_dir})")
    path = out_dir / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{out_dir} holds no saved fit: {path} not found")
    payload = load_checkpoint(path)
    for key in ("config", "data", "params", "features"):
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
        config = FitConfig.from_dict(payload["config"], origin=f"{path} (stored configuration)")
        config = variant_for(config).resolve_config(config)
    except RegimeDMMError as exc:
        raise CheckpointError(f"{path}: the stored configuration is not valid: {exc}") from None
    if list(payload.get("regimes", config.model.names())) != list(config.model.names()):
        raise CheckpointError(f"{path}: stored regimes {payload.get('regimes')} do not match its configuration")
    try:
        pipeline = FeaturePipeline.from_dict(payload["features"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed feature pipeline ({type(exc).__name__}: {exc})") from None

    summary = _read_summary(out_dir / "summary.json")
    explicit = data is not None
    if not explicit:
        if stored.get("path"):
            data = stored["path"]
            for one in [stored["path"]] if isinstance(stored["path"], str) else list(stored["path"]):
                if not Path(one).is_file():
                    raise CheckpointError(
                        f"the data the fit in {out_dir} was made on ({one}) no longer exist: pass them with "
                        "--data / data="
                    )
        elif not stored.get("simulated"):
            raise CheckpointError(
                f"the fit in {out_dir} was made on a DataFrame: pass the same data to load it (--data / data=)"
            )
    loaded = load_source(data, min_observations=config.training.min_observations, seed=config.training.seed)
    fitted_markets = list(payload.get("markets", pipeline.statistics))
    where = f"the data given ({loaded.label})" if explicit else f"the data at {loaded.label}"
    differ = CheckpointError(
        f"{where} differ from the data the fit in {out_dir} was made on "
        f"(markets, dates or values changed; fitted markets: {', '.join(fitted_markets)})"
    )
    if list(pd.unique(loaded.frame["market"])) != fitted_markets:
        raise differ
    panel = pipeline.transform(loaded.frame)
    fingerprint = panel.fingerprint()
    if stored.get("fingerprint") and fingerprint != stored["fingerprint"]:
        raise differ

    dtype = getattr(torch, config.training.dtype)
    fitted = FittedModel.build(config, pipeline, panel, params, dtype)
    restarts = list(summary.get("restarts") or [])
    result = RegimeFit(
        config=config,
        regimes=config.model.names(),
        markets=compute_results(fitted, config.model.names()),
        history=_read_history(out_dir / "history.csv"),
        restarts=restarts,
        seed=config.training.seed,
        data_source=summary["data"] if not explicit and summary.get("data") else loaded.label,
        simulated=loaded.simulated,
        faults=list(summary.get("faults") or []),
        truth=loaded.truth,
        data_path=loaded.path if explicit else stored.get("path"),
        data_fingerprint=fingerprint,
        num_parameters=fitted.num_parameters(),
        collapse=list(summary.get("collapse") or []),  # the fit's own checks (they need its training run)
        data_warnings=[entry for s in panel.series for entry in s.report],
        fitted=fitted,
    )
    result.pooling = fitted.pooling(result.regimes)
    result.cross_market = cross_market(result, seed=config.training.seed)
    result.regime_warnings = check_regimes(result, fitted.scale_floors())
    return result


def _read_summary(path: Path) -> dict[str, Any]:
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
