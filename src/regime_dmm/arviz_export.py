"""Export a fitted model to an ArviZ :class:`~arviz.InferenceData` (ArviZ 0.23, not 1.x).

>>> from regime_dmm.arviz_export import to_inference_data, save_netcdf
>>> idata = to_inference_data(fit, num_samples=200, seed=0)
>>> az.loo(idata), az.summary(idata, var_names=["return_sd"])
>>> save_netcdf(idata, "out/posterior.nc")

Groups (``chain`` is always a single chain):

* ``posterior``: per draw of the global parameters, the exact regime posterior computed at
  those values: ``transition_matrix`` (market, regime, regime_to; the average over days of the
  time-varying matrices, as in :class:`~regime_dmm.results.MarketResult`),
  ``base_transition_matrix`` (before covariate adjustments), ``initial_distribution``
  (market, regime), ``return_mean`` and ``return_sd`` (market, regime; input units, base
  emission before the emission network's daily shifts; a Student-t's standard deviation, not its
  scale), ``return_df`` (market; Student-t emissions only) and ``smoothed_probs`` (market, date,
  regime). ``date`` is the union of the
  markets' dates; a market has NaN on dates where it has no data.
  With the ``map`` guide, in relaxed mode or in classic mode there is one draw (a point
  estimate, see ``posterior.attrs["note"]``); with the ``normal`` guide, ``num_samples`` draws
  from the guide. (Relaxed mode: ``smoothed_probs`` is the exact posterior at the MAP globals,
  not the inference network's marginals that the fit's results report.)
  Network weights are point estimates in every case.
* ``observed_data``: ``returns`` (market, date) in input units and, when the fit built it,
  ``vol`` (market, date): the log realised volatility feature in input units.
* ``posterior_predictive``: ``returns`` (chain, draw, market, date): per draw a regime per day
  from that draw's smoothed probabilities, then a return from that regime's emission on that
  day (Gaussian or Student-t, including the emission network's shift), in input units.
* ``log_likelihood``: ``returns`` (chain, draw, obs): the exact one-step-ahead predictive log
  density ``log p(x_t | x_{1:t-1})`` of each market-day in input units, so ``az.loo`` and
  ``az.waic`` work. ``obs`` enumerates the observed (market, date) pairs (market by market,
  dates in order; masked days, without an observation, are left out), with coordinates
  ``obs_market`` and ``obs_date``; summed over one market it is that market's log-likelihood.
  When the model emits the volatility feature too, the density is the joint one of (return, vol).

The Pyro param store and the global torch RNG are left as they were.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from ._version import __version__
from .atomic import atomic_write
from .data.features import FeaturePipeline, Panel
from .fitted import FittedModel
from .inference import posterior as hmm_posterior
from .results import RegimeFit

if TYPE_CHECKING:  # pragma: no cover
    import arviz

__all__ = [
    "ExportError",
    "import_arviz",
    "load_netcdf",
    "netcdf_engine",
    "obs_index",
    "save_netcdf",
    "to_inference_data",
]


def import_arviz() -> Any:
    """``import arviz`` without its once-a-day notice about the 1.x migration (regime-dmm uses ArviZ 0.23)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        import arviz

    return arviz


class ExportError(RuntimeError):
    """The fit cannot be exported (no live model, or no NetCDF engine installed)."""


# ---------------------------------------------------------------------------------------
# public API


def to_inference_data(fit: RegimeFit, num_samples: int = 200, seed: int = 0) -> arviz.InferenceData:
    """ArviZ groups of a fitted model (see the module docstring for the contents).

    ``num_samples``: draws of the global parameters from the ``normal`` guide (ignored for a
    point estimate: ``map`` guide or classic mode, which give one draw). ``seed`` seeds the
    guide draws and the posterior-predictive draws; the global RNG state is restored.
    """
    az = import_arviz()
    if fit.fitted is None:
        raise ExportError("the fit has no fitted model: refit it or reload it with regime_dmm.load_fit")
    num_samples = int(num_samples)
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    fitted = fit.fitted
    panel, config = fitted.panel, fitted.config
    regimes = list(fit.regimes)
    markets = list(panel.markets)
    draws = fitted.draws(num_samples, seed=int(seed))
    note = fitted.describe_draws(len(draws))
    per_draw = _evaluate_draws(fitted, draws)
    shift_t = fitted.emission_shift()
    shift = None if shift_t is None else shift_t.double().numpy()

    dates = _union_dates(panel)
    positions = [dates.get_indexer(_naive(s.dates)) for s in panel.series]
    rng = np.random.default_rng([int(seed), 20240917])
    pipe = fitted.pipeline
    post = _posterior_group(per_draw, pipe, panel, positions, len(dates))
    predictive = _predictive_group(per_draw, shift, pipe, panel, positions, len(dates), rng)
    loglik, obs_market, obs_date = _log_likelihood_group(per_draw, pipe, panel)

    coords = {"market": markets, "regime": regimes, "regime_to": regimes, "date": dates.values}
    attrs = {
        "package": "regime_dmm",
        "package_version": __version__,
        "regimes": list(regimes),
        "guide": fitted.guide.kind,
        "seed": int(seed),
        "num_draws": len(draws),
        "emission": config.model.emission,
        "emitted_features": ",".join(config.model.features),
        "units": "input units (the data's log returns); transition rows: from, columns: to",
        "note": note,
    }
    posterior_ds = xr.Dataset(
        {
            "transition_matrix": (("chain", "draw", "market", "regime", "regime_to"), post["transition"]),
            "base_transition_matrix": (("chain", "draw", "market", "regime", "regime_to"), post["base"]),
            "initial_distribution": (("chain", "draw", "market", "regime"), post["initial"]),
            "return_mean": (("chain", "draw", "market", "regime"), post["return_mean"]),
            "return_sd": (("chain", "draw", "market", "regime"), post["return_sd"]),
            "smoothed_probs": (("chain", "draw", "market", "date", "regime"), post["smoothed"]),
            **({"return_df": (("chain", "draw", "market"), post["df"])} if "df" in post else {}),
        },
        coords={"chain": [0], "draw": np.arange(len(draws)), **coords},
        attrs=dict(attrs),
    )
    observed = {"returns": (("market", "date"), _observed(pipe, panel, positions, len(dates), "return"))}
    if all("vol" in s.feature_names for s in panel.series) and panel.series:
        observed["vol"] = (("market", "date"), _observed(pipe, panel, positions, len(dates), "vol"))
    observed_ds = xr.Dataset(observed, coords={"market": markets, "date": dates.values}, attrs=dict(attrs))
    predictive_ds = xr.Dataset(
        {"returns": (("chain", "draw", "market", "date"), predictive)},
        coords={"chain": [0], "draw": np.arange(len(draws)), "market": markets, "date": dates.values},
        attrs=dict(attrs),
    )
    loglik_ds = xr.Dataset(
        {"returns": (("chain", "draw", "obs"), loglik)},
        coords={
            "chain": [0],
            "draw": np.arange(len(draws)),
            "obs": np.arange(loglik.shape[-1]),
            "obs_market": ("obs", obs_market),
            "obs_date": ("obs", obs_date),
        },
        attrs=dict(attrs),
    )
    return az.InferenceData(
        attrs=dict(attrs),
        posterior=posterior_ds,
        posterior_predictive=predictive_ds,
        log_likelihood=loglik_ds,
        observed_data=observed_ds,
    )


def netcdf_engine() -> str:
    """The NetCDF engine ArviZ can write groups with here: ``h5netcdf`` or ``netcdf4``."""
    for module, engine in (("h5netcdf", "h5netcdf"), ("netCDF4", "netcdf4")):
        if importlib.util.find_spec(module) is not None:
            return engine
    raise ExportError("no NetCDF-4 engine is installed: pip install h5netcdf (or netCDF4)")


def save_netcdf(idata: arviz.InferenceData, path: str | Path) -> Path:
    """Write ``idata`` to ``path`` (NetCDF-4, one group per ArviZ group; parent folders created)."""
    engine = netcdf_engine()
    # Written next to the target and renamed: atomic, and works while a reader holds the old file.
    return atomic_write(path, lambda tmp: idata.to_netcdf(str(tmp), engine=engine))


def load_netcdf(path: str | Path) -> arviz.InferenceData:
    """Read what :func:`save_netcdf` wrote (eagerly: the file is closed on return)."""
    az = import_arviz()
    with az.rc_context({"data.load": "eager"}):  # read everything and close the file
        return az.from_netcdf(str(path), engine=netcdf_engine())


def obs_index(idata: arviz.InferenceData, market: str) -> np.ndarray:
    """Positions along ``obs`` (log_likelihood) of ``market``'s days."""
    return np.flatnonzero(np.asarray(idata["log_likelihood"]["obs_market"].values).astype(str) == str(market))


# ---------------------------------------------------------------------------------------
# draws of the global parameters

_ROWS_PER_CHUNK = 100_000  # (series x days) per batched forward-backward: bounds the scan's memory


def _evaluate_draws(fitted: FittedModel, draws: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """Potentials, smoothed probabilities and one-step predictive densities at every draw.

    A point estimate's single draw is the fitted model's own (cached) posterior; several draws
    are evaluated batched over draws, in chunks.
    """
    if fitted.guide.is_point_estimate:
        pot, post = fitted.posterior()
        return [{"pot": pot, "g": pot.values, "smoothed": post.smoothed, "log_predictive": post.log_predictive}]
    per_draw: list[dict[str, Any]] = []
    for draw in draws:
        pot = fitted.potentials(values=draw)
        per_draw.append({"pot": pot, "g": pot.values})
    m_n, steps = per_draw[0]["pot"].obs_ll.shape[:2]
    chunk = max(1, _ROWS_PER_CHUNK // max(m_n * steps, 1))
    for start in range(0, len(per_draw), chunk):
        part = per_draw[start : start + chunk]
        post = hmm_posterior(
            torch.cat([ev["pot"].log_init for ev in part]),
            torch.cat([ev["pot"].log_trans.expand(m_n, steps, -1, -1) for ev in part]),
            torch.cat([ev["pot"].obs_ll for ev in part]),
        )
        smoothed, predictive = post.smoothed, post.log_predictive
        for i, ev in enumerate(part):
            ev["smoothed"] = smoothed[i * m_n : (i + 1) * m_n]
            ev["log_predictive"] = predictive[i * m_n : (i + 1) * m_n]
    return per_draw


# ---------------------------------------------------------------------------------------
# groups


def _naive(dates) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(dates)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.astype("datetime64[ns]")


def _union_dates(panel) -> pd.DatetimeIndex:
    dates = pd.DatetimeIndex([], dtype="datetime64[ns]")
    for s in panel.series:
        dates = dates.union(_naive(s.dates))
    return pd.DatetimeIndex(dates.sort_values().unique()).astype("datetime64[ns]").rename("date")


def _posterior_group(
    per_draw: list[dict], pipe: FeaturePipeline, panel: Panel, positions: list[np.ndarray], num_dates: int
) -> dict[str, np.ndarray]:
    s_n, m_n = len(per_draw), panel.num_markets
    k = per_draw[0]["pot"].log_init.shape[-1]
    out = {
        "transition": np.empty((1, s_n, m_n, k, k)),
        "base": np.empty((1, s_n, m_n, k, k)),
        "initial": np.empty((1, s_n, m_n, k)),
        "return_mean": np.empty((1, s_n, m_n, k)),
        "return_sd": np.empty((1, s_n, m_n, k)),
        "smoothed": np.full((1, s_n, m_n, num_dates, k), np.nan),
    }
    has_df = "df" in per_draw[0]["g"]
    if has_df:
        out["df"] = np.empty((1, s_n, m_n))
    for d, ev in enumerate(per_draw):
        pot, g = ev["pot"], ev["g"]
        smoothed = ev["smoothed"].double().numpy()
        loc = pot.emission_loc.double().numpy()
        scale = pot.emission_scale.double().numpy()
        for m, series in enumerate(panel.series):
            steps = series.length
            log_trans = pot.log_trans[m, :steps].double().numpy()
            trans = np.exp(log_trans[1:]).mean(0) if steps > 1 else np.exp(log_trans[0])
            out["transition"][0, d, m] = trans / trans.sum(-1, keepdims=True)
            out["base"][0, d, m] = g["transition"][m].double().numpy()
            out["initial"][0, d, m] = g["initial"][m].double().numpy()
            out["return_mean"][0, d, m] = pipe.to_input_units(series.name, 0, loc[m, :, 0])
            sd = pipe.scale_to_input_units(series.name, 0, scale[m, :, 0])
            out["smoothed"][0, d, m, positions[m]] = smoothed[m, :steps]
            if has_df:  # the Student-t's sd: its scale x sqrt(df / (df - 2))
                df = 2.0 + float(g["df"][m])
                out["df"][0, d, m] = df
                sd = sd * np.sqrt(df / (df - 2.0))
            out["return_sd"][0, d, m] = sd
    return out


def _observed(
    pipe: FeaturePipeline, panel: Panel, positions: list[np.ndarray], num_dates: int, feature: str
) -> np.ndarray:
    out = np.full((panel.num_markets, num_dates), np.nan)
    for m, s in enumerate(panel.series):
        if feature == "return":
            out[m, positions[m]] = np.asarray(s.returns, dtype=float)
        else:
            i = s.feature_names.index(feature)
            values = pipe.to_input_units(s.name, feature, s.features[:, i])
            out[m, positions[m]] = np.where(s.observed, values, np.nan)
    return out


def _predictive_group(
    per_draw: list[dict],
    shift: np.ndarray | None,
    pipe: FeaturePipeline,
    panel: Panel,
    positions: list[np.ndarray],
    num_dates: int,
    rng: np.random.Generator,
) -> np.ndarray:
    s_n, m_n = len(per_draw), panel.num_markets
    out = np.full((1, s_n, m_n, num_dates), np.nan)
    for d, ev in enumerate(per_draw):
        pot, g = ev["pot"], ev["g"]
        smoothed = ev["smoothed"].double().numpy()
        loc = pot.emission_loc[..., 0].double().numpy()  # (M, K)
        scale = pot.emission_scale[..., 0].double().numpy()
        for m, series in enumerate(panel.series):
            steps = series.length
            probs = np.clip(smoothed[m, :steps], 0.0, None)
            cum = np.cumsum(probs, axis=-1)
            u = rng.random(steps) * cum[:, -1]
            z = np.minimum((cum <= u[:, None]).sum(-1), probs.shape[-1] - 1)  # (T,)
            day_loc = loc[m][z]
            if shift is not None:
                day_loc = day_loc + shift[m, np.arange(steps), z]
            if "df" in g:
                noise = rng.standard_t(2.0 + float(g["df"][m]), size=steps)
            else:
                noise = rng.standard_normal(steps)
            normalised = day_loc * np.sqrt(series.span) + scale[m][z] * noise  # a return over n days
            out[0, d, m, positions[m]] = pipe.returns_to_input_units(series, normalised)
    return out


def _log_likelihood_group(
    per_draw: list[dict], pipe: FeaturePipeline, panel: Panel
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per observed day (masked days have no observation), the one-step predictive log density in input units."""
    counts = [s.num_observed for s in panel.series]
    out = np.empty((1, len(per_draw), int(sum(counts))))
    for d, ev in enumerate(per_draw):
        pred = ev["log_predictive"].double().numpy()
        start = 0
        for m, series in enumerate(panel.series):
            obs = series.observed
            out[0, d, start : start + counts[m]] = (pred[m, : series.length] - pipe.log_jacobian_days(series))[obs]
            start += counts[m]
    obs_market = np.array([s.name for s in panel.series for _ in range(s.num_observed)], dtype=str)
    obs_date = np.concatenate(
        [_naive(s.dates[s.observed]).values for s in panel.series] or [np.array([], "datetime64[ns]")]
    )
    return out, obs_market, obs_date
