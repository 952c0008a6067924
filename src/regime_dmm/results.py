"""The results of a fit: plain data that the CLI, the plots and the exports all read.

:class:`RegimeFit` holds, per market (:class:`MarketResult`), the smoothed and filtered regime
marginals, the Viterbi path, transition matrix, usage, expected durations and emissions in
input units (statsmodels' regime-switching results are the model for what a user expects),
and the training record. :func:`compute_results` derives them from a
:class:`~regime_dmm.fitted.FittedModel`, which :attr:`RegimeFit.fitted` keeps for further
questions (nowcasts, held-out scores, posterior draws).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .config import FitConfig
from .data.simulator import SimulatedData
from .errors import RegimeDMMError
from .fitted import FittedModel
from .inference import forecast as forecast_probs
from .inference import stationary_distribution, viterbi
from .naming import RELATIVE_NOTE, shared_ladder, shared_names, sum_by_name

__all__ = ["NEVER_LEFT_SAMPLES", "MarketResult", "RegimeFit", "compute_results", "emission_overlap"]


@dataclass
class MarketResult:
    """One market's regimes and parameters (``T`` days, ``K`` regimes; input units unless said)."""

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
    observed: np.ndarray | None = None  # (T,) bool: a real observation (else masked: no trade, a gap, a bad tick)
    span: np.ndarray | None = None  # (T,) days each return covers
    calendar: str = "business"

    def __post_init__(self) -> None:
        if self.observed is None:
            self.observed = np.ones(len(self.dates), dtype=bool)
        if self.span is None:
            self.span = np.ones(len(self.dates), dtype=np.int64)

    @property
    def current_probs(self) -> np.ndarray:
        """``(K,)`` filtered probabilities of the last day: the regime now."""
        return self.filtered[-1]

    def overlap(self, regimes: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Per pair of adjacent regimes ``"a|b"``: the Bhattacharyya coefficient and the Hellinger distance
        between their return distributions (Gaussians of the fitted mean and sd; 1 and 0: the same)."""
        mean, sd = self.emission["return_mean"], self.emission["return_sd"]
        out = {}
        for k in range(len(regimes) - 1):
            bc, h = emission_overlap(mean[k], sd[k], mean[k + 1], sd[k + 1])
            out[f"{regimes[k]}|{regimes[k + 1]}"] = {"bhattacharyya": round(bc, 6), "hellinger": round(h, 6)}
        return out

    def shifts_per_year(self, path: str = "smoothed") -> float:
        """Regime shifts per calendar year along ``path``: changes of its regime from one day to the next, divided
        by the years from the first to the last date (365.25 days each); 0.0 for one day.

        ``path``: ``"smoothed"`` (the most probable regime given every day, p(z_t | x_1..x_T): it sees later
        days), ``"filtered"`` (the most probable regime given the days up to t, p(z_t | x_1..x_t): what could
        have been read on the day, at the fitted parameters) or ``"viterbi"`` (the most probable joint path;
        Viterbi 1967). Raises ``ValueError`` for another path."""
        if path == "smoothed":
            labels = self.smoothed.argmax(-1)
        elif path == "filtered":
            labels = self.filtered.argmax(-1)
        elif path == "viterbi":
            labels = np.asarray(self.viterbi)
        else:
            raise ValueError(f"path must be smoothed, filtered or viterbi, got {path!r}")
        shifts = int(np.count_nonzero(labels[1:] != labels[:-1]))
        years = (self.dates[-1] - self.dates[0]).days / 365.25
        return shifts / years if years > 0 else 0.0

    def durations(self) -> list[float | None]:
        """Expected durations (days), None for a regime never left in the sample (beyond ten samples)."""
        limit = NEVER_LEFT_SAMPLES * len(self.dates)
        return [None if d > limit else float(d) for d in self.expected_duration]


@dataclass
class RegimeFit:
    """A fit's results (plain data) and the :class:`~regime_dmm.fitted.FittedModel` they came from."""

    config: FitConfig
    regimes: tuple[str, ...]
    markets: list[MarketResult]
    history: pd.DataFrame
    restarts: list[dict]
    seed: int
    data_source: str
    simulated: bool = False
    faults: list[dict] = field(default_factory=list)
    truth: SimulatedData | None = None  # when fitted on the embedded simulation
    data_path: str | list[str] | None = None  # absolute path(s) of the CSV(s) (None: simulated or a DataFrame)
    data_fingerprint: str = ""  # hash of the markets, dates and features the fit saw
    num_parameters: int = 0  # free parameters of the model (FittedModel.num_parameters)
    # Posterior-collapse warnings (regime_dmm.training.collapse); empty when healthy.
    collapse: list[dict] = field(default_factory=list)
    # Data-quality reports (gaps, no-trade spans, bad ticks, ...: regime_dmm.data.observations).
    data_warnings: list[dict] = field(default_factory=list)
    # Co-occurrence and lead/lag of each pair of markets (regime_dmm.cross_market); empty for one market.
    cross_market: list[dict] = field(default_factory=list)
    # Can the data tell the regimes apart (regime_dmm.regime_checks)? Empty when they can.
    regime_warnings: list[dict] = field(default_factory=list)
    # How the markets share the regime ladder (FittedModel.pooling); {} when not recorded.
    pooling: dict = field(default_factory=dict)
    # The fitted model, for further inference (nowcasts, held-out scores, draws); not serialised.
    fitted: FittedModel | None = None

    @property
    def log_likelihood(self) -> float:
        """Total log-likelihood in nats, input units (normalisation accounted for)."""
        return float(sum(m.log_likelihood for m in self.markets))

    def market(self, name: str) -> MarketResult:
        """The :class:`MarketResult` of ``name``; ``KeyError`` naming the markets otherwise."""
        for m in self.markets:
            if m.name == name:
                return m
        raise KeyError(f"no market {name!r}; markets: {[m.name for m in self.markets]}")

    def require_fitted(self) -> FittedModel:
        """The fitted model; :class:`~regime_dmm.errors.RegimeDMMError` when this result has none."""
        if self.fitted is None:
            raise RegimeDMMError("this fit has no fitted model (reload it with regime_dmm.load_fit)")
        return self.fitted

    def shared_names(self) -> dict[str, list[str]] | None:
        """Each market's regimes named on one volatility ladder for all markets (:mod:`regime_dmm.naming`): market
        -> K names in the order of :attr:`regimes`; None when the daily sds are not finite (a Student-t with
        df <= 2 has none) or not increasing."""
        try:
            return shared_names({m.name: m.emission["return_sd"] for m in self.markets}, self.regimes)
        except ValueError:
            return None

    def display_names(self) -> dict[str, list[str]]:
        """The names shown for each market's regimes: the shared ones under ``model.naming: shared`` (when they
        exist), else :attr:`regimes` (relative to each market's own volatility)."""
        shared = self.shared_names() if self.config.model.naming == "shared" else None
        return shared if shared is not None else {m.name: list(self.regimes) for m in self.markets}

    def shared_probabilities(self, market: str, probs: np.ndarray) -> tuple[list[str], np.ndarray] | None:
        """``probs (..., K)`` over ``market``'s regimes summed by shared name: ``(names, (..., N))`` with the N names
        the market uses on the shared ladder, least volatile first (a name given to two regimes carries both
        probabilities); None without a shared ladder (:meth:`shared_names`)."""
        shared = self.shared_names()
        return None if shared is None else sum_by_name(shared[market], self.regimes, probs)

    def regimes_frame(self) -> pd.DataFrame:
        """Long table, one row per day of each market's grid: date, market, regime (most probable smoothed),
        prob_<name> per regime (smoothed, p(z_t = k | all days)), viterbi, observed (1: a real
        observation; 0: a masked day, whose regime comes from its neighbours), then filtered_<name> per
        regime: p(z_t = k | days up to t) at the fitted parameters (the forward recursion; the
        parameters themselves were fitted on all days - walk-forward refits remove that too), and
        shared_regime: the name on the volatility ladder shared by all markets (:mod:`regime_dmm.naming`) whose
        regimes' smoothed probabilities sum highest (empty when there is no shared ladder). The prob/filtered
        columns are keyed by the relative names; under ``model.naming: shared`` ``regime`` is ``shared_regime``
        and ``viterbi`` the path's shared names."""
        frames = []
        shared = self.shared_names()
        applied = shared is not None and self.config.model.naming == "shared"
        for m in self.markets:
            frame = pd.DataFrame({"date": m.dates.strftime("%Y-%m-%d"), "market": m.name})
            shared_regime: list[str] | str = ""
            if shared is not None:  # the shared name whose regimes are likeliest together
                used, summed = sum_by_name(shared[m.name], self.regimes, m.smoothed)
                shared_regime = [used[k] for k in summed.argmax(-1)]
            frame["regime"] = shared_regime if applied else [self.regimes[k] for k in m.smoothed.argmax(-1)]
            for k, name in enumerate(self.regimes):
                frame[f"prob_{name}"] = m.smoothed[:, k]
            path_names = shared[m.name] if shared is not None and applied else self.regimes
            frame["viterbi"] = [path_names[k] for k in m.viterbi]
            frame["observed"] = np.asarray(m.observed, dtype=np.int64)
            for k, name in enumerate(self.regimes):
                frame[f"filtered_{name}"] = m.filtered[:, k]
            frame["shared_regime"] = shared_regime
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def forecast(self, market: str, horizon: int) -> pd.DataFrame:
        """Regime probabilities 1..horizon days after the last day, from the filtered state."""
        m = self.market(market)
        probs = forecast_probs(m.current_probs, m.transition, horizon)
        return pd.DataFrame(probs, columns=list(self.regimes), index=pd.RangeIndex(1, horizon + 1, name="horizon"))

    def objective_is_exact(self) -> bool:
        """True when the restarts' final objectives are exact and comparable to the nat (exact inference
        with the MAP guide, or the classic mode); a relaxed ELBO or a normal guide's is a noisy estimate."""
        cfg = self.config
        return cfg.model.classic or (cfg.training.inference == "exact" and cfg.training.guide == "map")

    def restarts_within_1_nat(self) -> int | None:
        """Restarts that ended within 1 nat of the kept one (:func:`restarts_within`); None when the objective
        is not exact (:meth:`objective_is_exact`) or nothing was recorded."""
        return restarts_within(self.restarts, 1.0) if self.objective_is_exact() else None

    def summary(self) -> dict[str, Any]:
        """Plain-data summary (the contents of ``summary.json``)."""
        markets = {}
        shared = self.shared_names()
        applied = shared is not None and self.config.model.naming == "shared"
        for m in self.markets:
            now = None if shared is None else sum_by_name(shared[m.name], self.regimes, m.current_probs)
            markets[m.name] = {
                "daily_sd": dict(zip(self.regimes, _round(m.emission["return_sd"]))),
                "shared_name": None if shared is None else dict(zip(self.regimes, shared[m.name])),
                "usage": dict(zip(self.regimes, _round(m.usage))),
                "transition_matrix": _round(m.transition),
                "base_transition_matrix": _round(m.base_transition),
                "stationary_distribution": dict(zip(self.regimes, _round(stationary_distribution(m.transition)))),
                "expected_duration": {
                    r: None if d is None else v
                    for r, d, v in zip(self.regimes, m.durations(), _round(m.expected_duration))
                },
                "emission": {k: dict(zip(self.regimes, _round(v))) for k, v in m.emission.items()},
                "current_regime": now[0][int(now[1].argmax())]
                if now is not None and applied
                else self.regimes[int(m.current_probs.argmax())],
                "current_probabilities": dict(zip(self.regimes, _round(m.current_probs))),
                "current_probabilities_shared": None if now is None else dict(zip(now[0], _round(now[1]))),
                "first_date": m.dates[0].strftime("%Y-%m-%d"),
                "last_date": m.dates[-1].strftime("%Y-%m-%d"),
                "num_days": int(len(m.dates)),
                "log_likelihood": round(m.log_likelihood, 6),
                "calendar": m.calendar,
                "observed_days": int(np.asarray(m.observed).sum()),
                "overlap": m.overlap(self.regimes),
                "never_left": [r for r, d in zip(self.regimes, m.durations()) if d is None],
                "shifts_per_year": round(m.shifts_per_year(), 6),
                "shifts_per_year_filtered": round(m.shifts_per_year("filtered"), 6),
                "shifts_per_year_viterbi": round(m.shifts_per_year("viterbi"), 6),
            }
        try:
            ladder = _round(shared_ladder({m.name: m.emission["return_sd"] for m in self.markets}))
        except ValueError:
            ladder = None
        if applied:
            note = (
                "current_regime and regimes.csv's regime and viterbi use the shared names: each regime named by its "
                "daily sd on one ladder for all markets (shared_ladder, input units)"
            )
        elif self.config.model.naming == "shared":
            note = "model.naming is shared, but the daily sds are not finite or not increasing (no ladder): "
            note += RELATIVE_NOTE
        else:
            note = RELATIVE_NOTE
        return {
            "regimes": list(self.regimes),
            "naming": {
                "mode": self.config.model.naming,
                "applied": "shared" if applied else "relative",
                "note": note,
                "shared_ladder": None if ladder is None else dict(zip(self.regimes, ladder)),
            },
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
            "data_warnings": self.data_warnings,
            "cross_market": self.cross_market,
            "regime_warnings": self.regime_warnings,
            "pooling": self.pooling,
            "restarts_within_1_nat": self.restarts_within_1_nat(),
        }


def restarts_within(restarts: list[dict], nats: float) -> int | None:
    """How many finished restarts ended within ``nats`` of the kept one's objective (``final_loss``, the
    negative log posterior in nats, normalised units; the kept restart counts); None when not recorded.
    Few of many: the optimum is hard to find, and more restarts may find a better one. Meaningful for
    deterministic objectives only (see :meth:`RegimeFit.objective_is_exact`)."""
    losses = [r["final_loss"] for r in restarts if r.get("status") == "ok" and "final_loss" in r]
    kept = [r["final_loss"] for r in restarts if r.get("best") and "final_loss" in r]
    if not kept:
        return None
    return sum(1 for loss in losses if loss - kept[0] <= nats)


#: An expected duration longer than this many samples is reported as "never left in the sample".
NEVER_LEFT_SAMPLES = 10.0


def emission_overlap(mean1: float, sd1: float, mean2: float, sd2: float) -> tuple[float, float]:
    """``(Bhattacharyya coefficient, Hellinger distance)`` between N(mean1, sd1^2) and N(mean2, sd2^2).

    ``BC = exp(-D_B)``, ``D_B = (m1 - m2)^2 / (4 (v1 + v2)) + log((v1 + v2) / (2 s1 s2)) / 2``,
    ``H = sqrt(1 - BC)`` (Bhattacharyya 1943).
    """
    v1, v2 = sd1**2, sd2**2
    distance = (mean1 - mean2) ** 2 / (4.0 * (v1 + v2)) + 0.5 * math.log((v1 + v2) / (2.0 * sd1 * sd2))
    bc = math.exp(-distance)
    return bc, math.sqrt(max(0.0, 1.0 - bc))


def _round(values, digits: int = 6):
    arr = np.asarray(values, dtype=float)
    return np.round(arr, digits).tolist()


def compute_results(fitted: FittedModel, regimes: tuple[str, ...]) -> list[MarketResult]:
    """Each market's results from the fitted model, in float64 numpy.

    Smoothed marginals (and the usage derived from them) are :meth:`FittedModel.smoothed`: the
    exact posterior, or the relaxed mode's inference network's marginals. Filtered marginals,
    Viterbi path, transition matrices, emissions and log-likelihood are the exact computations
    at the point estimate in every mode.
    """
    pot, post = fitted.posterior()
    source = fitted.smoothed().to(post.smoothed.dtype)
    g = pot.values
    out = []
    for m, series in enumerate(fitted.panel.series):
        steps = series.length
        smoothed_m = source[m, :steps].numpy()
        filtered = post.filtered[m, :steps].numpy()
        log_trans = pot.log_trans[m, :steps].numpy()
        path = viterbi(pot.log_init[m].numpy(), log_trans, pot.obs_ll[m, :steps].numpy())
        trans = np.exp(log_trans[1:]).mean(0) if steps > 1 else np.exp(log_trans[0])
        trans = trans / trans.sum(-1, keepdims=True)
        log_z = float(post.log_z[m])
        log_jac = fitted.pipeline.log_jacobian(series)
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
                base_transition=g["transition"][m].numpy().copy(),
                initial=g["initial"][m].numpy().copy(),
                usage=smoothed_m.mean(0),
                expected_duration=1.0 / np.clip(1.0 - np.diag(trans), 1e-12, None),
                emission=emission_input_units(fitted, m, pot.emission_loc[m].numpy(), pot.emission_scale[m].numpy(), g),
                log_likelihood=log_z - log_jac,
                log_likelihood_normalised=log_z,
                observed=series.observed.copy(),
                span=series.span.copy(),
                calendar=series.calendar,
            )
        )
    return out


def emission_input_units(
    fitted: FittedModel, m: int, loc: np.ndarray, scale: np.ndarray, g: dict[str, Any]
) -> dict[str, list[float]]:
    """Market ``m``'s base emissions in input units: return mean and sd per regime, the typical
    realised volatility when it is emitted, and with Student-t emissions their degrees of freedom and
    scale (``return_sd`` is then the t's standard deviation, ``scale * sqrt(df / (df - 2))``).

    ``loc, scale (K, F)`` in normalised units; ``g`` the global values (for ``df``).
    """
    name = fitted.panel.series[m].name
    pipe = fitted.pipeline
    em = {
        "return_mean": pipe.to_input_units(name, 0, loc[:, 0]).tolist(),
        "return_sd": pipe.scale_to_input_units(name, 0, scale[:, 0]).tolist(),
    }
    if loc.shape[1] > 1:
        em["typical_realised_vol"] = np.exp(pipe.to_input_units(name, 1, loc[:, 1])).tolist()
    if "df" in g:  # Student-t: return_sd is the sd, scale x sqrt(df / (df - 2)); return_scale the t scale
        df = float(2.0 + g["df"][m])
        em["return_df"] = [df] * loc.shape[0]
        em["return_scale"] = em["return_sd"]
        em["return_sd"] = (np.asarray(em["return_scale"]) * math.sqrt(df / (df - 2.0))).tolist()
    return em
