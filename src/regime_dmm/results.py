"""The fitted-model results object that the CLI, the plots and the exports all read.

:class:`RegimeFit` holds, per market, the exact smoothed and filtered regime marginals,
the Viterbi path, transition matrix, usage, expected durations and emissions in input
units (statsmodels' regime-switching results are the model for what a user expects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine

from .config import FitConfig
from .data.features import MarketSeries, Panel
from .inference import forecast as forecast_probs
from .inference import posterior, stationary_distribution, viterbi
from .models.base import ModelData, RegimeModel


@dataclass
class MarketResult:
    name: str
    dates: pd.DatetimeIndex
    prices: np.ndarray | None
    returns: np.ndarray
    smoothed: np.ndarray  # (T, K) p(z_t | all data); relaxed mode: the inference network's q(z_t)
    filtered: np.ndarray  # (T, K) p(z_t | data up to t)
    viterbi: np.ndarray  # (T,) most probable path
    transition: np.ndarray  # (K, K) average over days of the transition matrices used
    base_transition: np.ndarray  # (K, K) the matrix before covariate adjustments
    initial: np.ndarray  # (K,)
    usage: np.ndarray  # (K,) mean smoothed probability
    expected_duration: np.ndarray  # (K,) days, 1 / (1 - p_kk)
    emission: dict[str, list[float]]  # per regime, input units
    log_likelihood: float  # input units of the features
    log_likelihood_normalised: float

    @property
    def current_probs(self) -> np.ndarray:
        return self.filtered[-1]


@dataclass
class RegimeFit:
    config: FitConfig
    regimes: tuple[str, ...]
    markets: list[MarketResult]
    history: pd.DataFrame
    restarts: list[dict]
    seed: int
    data_source: str
    simulated: bool = False
    faults: list[dict] = field(default_factory=list)
    truth: Any = None  # SimulatedData when fitted on the embedded simulation
    data_path: str | None = None  # absolute path of the CSV (None: simulated or a DataFrame)
    data_fingerprint: str = ""  # hash of the markets, dates and features the fit saw
    # Live objects for further inference (not serialised):
    model: RegimeModel | None = None
    guide: Any = None
    panel: Panel | None = None
    param_state: dict | None = None
    # Posterior-collapse warnings (regime_dmm.training.collapse); empty when healthy.
    collapse: list[dict] = field(default_factory=list)

    @property
    def log_likelihood(self) -> float:
        return float(sum(m.log_likelihood for m in self.markets))

    @property
    def num_parameters(self) -> int:
        if not self.param_state:
            return 0
        return int(sum(v.numel() for v in self.param_state["params"].values()))

    def market(self, name: str) -> MarketResult:
        for m in self.markets:
            if m.name == name:
                return m
        raise KeyError(f"no market {name!r}; markets: {[m.name for m in self.markets]}")

    def regimes_frame(self) -> pd.DataFrame:
        """Long table: date, market, regime (most probable smoothed), prob_<name> per regime, viterbi."""
        frames = []
        for m in self.markets:
            frame = pd.DataFrame({"date": m.dates.strftime("%Y-%m-%d"), "market": m.name})
            frame["regime"] = [self.regimes[k] for k in m.smoothed.argmax(-1)]
            for k, name in enumerate(self.regimes):
                frame[f"prob_{name}"] = m.smoothed[:, k]
            frame["viterbi"] = [self.regimes[k] for k in m.viterbi]
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def forecast(self, market: str, horizon: int) -> pd.DataFrame:
        """Regime probabilities 1..horizon days after the last day, from the filtered state."""
        m = self.market(market)
        probs = forecast_probs(m.current_probs, m.transition, horizon)
        return pd.DataFrame(probs, columns=list(self.regimes), index=pd.RangeIndex(1, horizon + 1, name="horizon"))

    def summary(self) -> dict:
        """Plain-data summary (the contents of ``summary.json``)."""
        markets = {}
        for m in self.markets:
            markets[m.name] = {
                "usage": dict(zip(self.regimes, _round(m.usage))),
                "transition_matrix": _round(m.transition),
                "base_transition_matrix": _round(m.base_transition),
                "stationary_distribution": dict(zip(self.regimes, _round(stationary_distribution(m.transition)))),
                "expected_duration": dict(zip(self.regimes, _round(m.expected_duration))),
                "emission": {k: dict(zip(self.regimes, _round(v))) for k, v in m.emission.items()},
                "current_regime": self.regimes[int(m.current_probs.argmax())],
                "current_probabilities": dict(zip(self.regimes, _round(m.current_probs))),
                "first_date": m.dates[0].strftime("%Y-%m-%d"),
                "last_date": m.dates[-1].strftime("%Y-%m-%d"),
                "num_days": int(len(m.dates)),
                "log_likelihood": round(m.log_likelihood, 6),
            }
        return {
            "regimes": list(self.regimes),
            "markets": markets,
            "log_likelihood": round(self.log_likelihood, 6),
            "log_likelihood_normalised": round(sum(m.log_likelihood_normalised for m in self.markets), 6),
            "num_parameters": self.num_parameters,
            "data": self.data_source,
            "simulated": self.simulated,
            "seed": self.seed,
            "restarts": self.restarts,
            "faults": self.faults,
            "collapse": self.collapse,
            "settings": self.config.to_dict(),
        }


def _round(values, digits: int = 6):
    arr = np.asarray(values, dtype=float)
    return np.round(arr, digits).tolist()


def compute_results(
    model: RegimeModel, globals_: dict[str, torch.Tensor], data: ModelData, panel: Panel, regimes: tuple[str, ...],
    smoothed: torch.Tensor | None = None,
) -> list[MarketResult]:
    """Exact posterior quantities at the given global parameters, in float64.

    ``smoothed (M, T, K)`` replaces the exact smoothed marginals (and the usage derived from
    them): the relaxed mode passes its inference network's marginals. Filtered marginals,
    Viterbi path, transition matrices, emissions and log-likelihood stay the exact
    computations at the learned parameters in every mode.
    """
    with torch.no_grad():
        # One traced call: the return value is the potentials, the sites are the globals
        # (the trace also absorbs the model's pyro.factor sites).
        trace = poutine.trace(poutine.condition(model.log_potentials, data=globals_)).get_trace(data)
        pot = type(trace.nodes["_RETURN"]["value"])(*(t.detach() for t in trace.nodes["_RETURN"]["value"]))
        g = {k.split(".", 1)[-1]: v["value"].detach() for k, v in trace.nodes.items()
             if v["type"] == "param" or (v["type"] == "sample" and k in globals_)}
        post = posterior(pot.log_init, pot.log_trans, pot.obs_ll)
    out = []
    for m, series in enumerate(panel.series):
        steps = series.length
        source = post.smoothed if smoothed is None else smoothed.detach().to(post.smoothed.dtype)
        smoothed_m = source[m, :steps].numpy()
        filtered = post.filtered[m, :steps].numpy()
        log_trans = pot.log_trans[m, :steps].numpy()
        path = viterbi(pot.log_init[m].numpy(), log_trans, pot.obs_ll[m, :steps].numpy())
        trans = np.exp(log_trans[1:]).mean(0) if steps > 1 else np.exp(log_trans[0])
        trans = trans / trans.sum(-1, keepdims=True)
        base = g["transition"][m].numpy()
        log_z = float(post.log_z[m])
        log_jac = steps * float(np.log(series.feature_std[: pot.emission_loc.shape[-1]]).sum())
        out.append(
            MarketResult(
                name=series.name,
                dates=series.dates,
                prices=series.prices,
                returns=series.returns,
                smoothed=smoothed_m,
                filtered=filtered,
                viterbi=path,
                transition=trans,
                base_transition=base,
                initial=g["initial"][m].numpy(),
                usage=smoothed_m.mean(0),
                expected_duration=1.0 / np.clip(1.0 - np.diag(trans), 1e-12, None),
                emission=_emission_input_units(pot.emission_loc[m].numpy(), pot.emission_scale[m].numpy(), series, g, m),
                log_likelihood=log_z - log_jac,
                log_likelihood_normalised=log_z,
            )
        )
    return out


def _emission_input_units(loc, scale, series: MarketSeries, g, m) -> dict[str, list[float]]:
    mean, std = series.feature_mean, series.feature_std
    em = {
        "return_mean": (loc[:, 0] * std[0] + mean[0]).tolist(),
        "return_sd": (scale[:, 0] * std[0]).tolist(),
    }
    if loc.shape[1] > 1:
        em["typical_realised_vol"] = np.exp(loc[:, 1] * std[1] + mean[1]).tolist()
    if "df" in g:
        em["return_df"] = [float(2.0 + g["df"][m])] * loc.shape[0]
    return em


def current_param_state() -> dict:
    return pyro.get_param_store().get_state()
