"""Nowcasts: the filtered regime probabilities of new days, without refitting.

New days are appended to each market's fitted series by the fit's feature pipeline
(:meth:`~regime_dmm.data.FeaturePipeline.extend`): the features of the extended series are
built exactly as for the fit, normalised with the FITTED per-market statistics (never
re-estimated), so the fitted days keep exactly their fitted features. The fitted model's
potentials (same parameters) are evaluated on the extended series and the exact forward
filter gives ``p(z_t | x_1..x_t)`` for every new day ``t``.

* :func:`update_filter` - the filtered probabilities of each market's new last day;
* :func:`nowcast` - a table of the filtered probabilities of every new day;
* :func:`forecast_table` - regime probabilities h = 1..H days ahead, per market;
* :func:`extend_panel`, :func:`evaluate_panel` - the building blocks (also used by
  :mod:`regime_dmm.selection` to score held-out days).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd

from .data.features import Panel
from .data.loader import read_prices
from .errors import DataError, RegimeDMMError
from .inference import HMMPosterior
from .inference import forecast as forecast_probs
from .models.base import Potentials
from .results import RegimeFit

__all__ = [
    "NowcastResult",
    "evaluate_panel",
    "extend_panel",
    "filter_update",
    "forecast_table",
    "nowcast",
    "update_filter",
]

NewData: TypeAlias = str | Path | pd.DataFrame


@dataclass
class NowcastResult:
    """Filtered probabilities after appending new days.

    ``frame``: date, market, regime (most probable), prob_<name> per regime, observed (0 on a new day
    without a trade, whose regime the chain carries through), one row per new day.
    ``last``: market -> ``(K,)`` filtered probabilities of its (new) last day (every fitted market;
    a market without new days keeps its fitted last day).
    ``last_date``: market -> that day.
    ``new_days``: market -> number of days appended.
    """

    frame: pd.DataFrame
    last: dict[str, np.ndarray]
    last_date: dict[str, pd.Timestamp]
    new_days: dict[str, int]


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def update_filter(fit: RegimeFit, new_data: NewData) -> dict[str, np.ndarray]:
    """Filtered regime probabilities ``(K,)`` of each market's new last day, without refitting.

    ``new_data``: a long CSV / DataFrame (date, market, price|return, as the fit's data) with
    days after each market's last fitted date; rows of fitted days may be included (they must
    equal the fitted data). Markets without new rows keep their fitted last-day probabilities.
    """
    return filter_update(fit, new_data).last


def nowcast(fit: RegimeFit, new_data: NewData) -> pd.DataFrame:
    """Filtered probabilities of every new day: date, market, regime, prob_<name> per regime."""
    return filter_update(fit, new_data).frame


def filter_update(fit: RegimeFit, new_data: NewData) -> NowcastResult:
    """Both results of a filter update in one pass (see :func:`update_filter` and :func:`nowcast`)."""
    panel, fitted_lengths = extend_panel(fit, new_data)
    if all(s.length == n for s, n in zip(panel.series, fitted_lengths)):
        last_dates = ", ".join(f"{s.name} {s.dates[-1].date()}" for s in panel.series)
        raise DataError(f"the new data hold no day after the last fitted dates ({last_dates})")
    _, post = evaluate_panel(fit, panel)
    filtered = post.filtered.numpy()
    frames, last, last_date, new_days = [], {}, {}, {}
    for m, (s, n_old) in enumerate(zip(panel.series, fitted_lengths)):
        probs = filtered[m, n_old : s.length]
        new_days[s.name] = s.length - n_old
        last[s.name] = filtered[m, s.length - 1].copy()
        last_date[s.name] = s.dates[-1]
        if len(probs):
            frames.append(_prob_frame(fit.regimes, s.name, s.dates[n_old:], probs, s.observed[n_old:]))
    frame = pd.concat(frames, ignore_index=True)
    return NowcastResult(frame=frame, last=last, last_date=last_date, new_days=new_days)


def forecast_table(fit: RegimeFit, horizon: int, state: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Regime probabilities h = 1..horizon days ahead of each market: market, horizon, prob_<name>.

    From the fit's filtered last day (as :meth:`RegimeFit.forecast`), or from ``state``
    (market -> filtered probabilities, e.g. :func:`update_filter`'s result), with each
    market's fitted transition matrix.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise RegimeDMMError(f"the horizon must be a whole number of days >= 1, got {horizon!r}")
    frames = []
    for m in fit.markets:
        start = m.current_probs if state is None or m.name not in state else np.asarray(state[m.name], float)
        probs = forecast_probs(start, m.transition, int(horizon))
        frame = pd.DataFrame({"market": m.name, "horizon": np.arange(1, int(horizon) + 1)})
        for k, name in enumerate(fit.regimes):
            frame[f"prob_{name}"] = probs[:, k]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------


def extend_panel(fit: RegimeFit, new_data: NewData) -> tuple[Panel, list[int]]:
    """The fit's panel with the new days appended, features normalised with the fitted statistics.

    Returns the extended panel (markets in the fit's order) and each market's number of
    fitted days (the new days of market ``m`` are positions ``fitted[m]:`` of its series).
    Raises :class:`DataError` for unusable new data (naming the row, market and date).
    """
    fitted = fit.require_fitted()
    if not isinstance(new_data, (str, Path, pd.DataFrame)):
        raise DataError(f"new data must be a CSV path or a DataFrame, got {type(new_data).__name__}")
    table = read_prices(new_data, label="new data" if isinstance(new_data, pd.DataFrame) else None)
    return fitted.pipeline.extend(fitted.panel, table)


def evaluate_panel(fit: RegimeFit, panel: Panel) -> tuple[Potentials, HMMPosterior]:
    """The fitted model's potentials on ``panel`` (same parameters) and their exact posterior.

    ``posterior.log_predictive`` holds the one-step-ahead log densities in normalised units
    (subtract the pipeline's :meth:`~regime_dmm.data.FeaturePipeline.log_jacobian` per day for input units).
    """
    fitted = fit.require_fitted()
    return fitted.posterior(fitted.model_data(panel))


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _prob_frame(regimes, market: str, dates: pd.DatetimeIndex, probs: np.ndarray, observed: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"date": pd.DatetimeIndex(dates).strftime("%Y-%m-%d"), "market": market})
    frame["regime"] = [regimes[k] for k in probs.argmax(-1)]
    for k, name in enumerate(regimes):
        frame[f"prob_{name}"] = probs[:, k]
    frame["observed"] = np.asarray(observed, dtype=np.int64)
    return frame
