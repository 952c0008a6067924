"""Nowcasts: the filtered regime probabilities of new days, without refitting.

New days are appended to each market's fitted series; the features of the extended series
are built exactly as for the fit, but normalised with the ORIGINAL per-market statistics
(``fit.panel.series[m].feature_mean / feature_std``, never re-estimated), so the fitted days
keep exactly their fitted features. The fitted model's potentials (same parameters) are
evaluated on the extended series and the exact forward filter gives
``p(z_t | x_1..x_t)`` for every new day ``t``.

* :func:`update_filter` - the filtered probabilities of each market's new last day;
* :func:`nowcast` - a table of the filtered probabilities of every new day;
* :func:`forecast_table` - regime probabilities h = 1..H days ahead, per market;
* :func:`extend_panel`, :func:`evaluate_panel` - the building blocks (also used by
  :mod:`regime_dmm.selection` to score held-out days).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine

from .data import features as _features
from .data import load_prices, make_panel
from .data.features import MarketSeries, Panel, rolling_log_rms
from .errors import DataError, RegimeDMMError
from .guides import point_estimate
from .inference import HMMPosterior, posterior
from .inference import forecast as forecast_probs
from .models import ModelData, Potentials
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

NewData = str | Path | pd.DataFrame

_SEPARATORS = (",", ";", "\t", "|")


@dataclass
class NowcastResult:
    """Filtered probabilities after appending new days.

    ``frame``: date, market, regime (most probable), prob_<name> per regime, one row per new day.
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
            frames.append(_prob_frame(fit.regimes, s.name, s.dates[n_old:], probs))
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
    """
    panel = _require_panel(fit)
    frame = _load_new_data(panel, new_data)
    value_column = frame.attrs["value_column"]
    vol_window = fit.config.model.vol_window
    series, fitted = [], []
    for s in panel.series:
        fitted.append(s.length)
        rows = frame[frame["market"] == s.name]
        new_dates, new_values = _new_rows(s, rows, value_column)
        if len(new_dates) == 0:
            series.append(s)
            continue
        if s.prices is not None:
            new_returns = np.diff(np.log(np.concatenate([[s.prices[-1]], new_values])))
            prices = np.concatenate([s.prices, new_values])
        else:
            new_returns = new_values
            prices = None
        returns = np.concatenate([s.returns, new_returns])
        dates = s.dates.append(pd.DatetimeIndex(new_dates)).astype("datetime64[ns]")
        features = _features_like(s, returns, vol_window)
        series.append(MarketSeries(
            name=s.name, dates=dates, returns=returns, prices=prices, features=features,
            feature_names=s.feature_names, feature_mean=s.feature_mean, feature_std=s.feature_std,
        ))
    return make_panel(series, dtype=panel.x.dtype), fitted


def evaluate_panel(fit: RegimeFit, panel: Panel) -> tuple[Potentials, HMMPosterior]:
    """The fitted model's potentials on ``panel`` (same parameters) and their exact posterior.

    ``posterior.log_predictive`` holds the one-step-ahead log densities in normalised units
    (subtract ``log(feature_std)`` of the emitted features per day for input units).
    """
    potentials, _ = potentials_and_trace(fit, panel)
    return potentials, posterior(potentials.log_init, potentials.log_trans, potentials.obs_ll)


def potentials_and_trace(fit: RegimeFit, panel: Panel):
    """``(Potentials, trace)`` of ``fit.model.log_potentials`` at the fit's point estimates on ``panel``."""
    if fit.model is None or fit.guide is None or fit.param_state is None:
        raise RegimeDMMError("this fit has no live model (reload it with regime_dmm.persistence.load_fit)")
    config = fit.config
    dtype = getattr(torch, config.training.dtype)
    data = ModelData.from_panel(panel, config.model.history, dtype, emitted=config.model.features)
    with fitted_parameters(fit), torch.no_grad():
        globals_ = point_estimate(fit.guide, data)
        trace = poutine.trace(poutine.condition(fit.model.log_potentials, data=globals_)).get_trace(data)
    value = trace.nodes["_RETURN"]["value"]
    return type(value)(*(t.detach() for t in value)), trace


@contextlib.contextmanager
def fitted_parameters(fit: RegimeFit):
    """Pyro's parameter store holds exactly ``fit``'s parameters inside; restored afterwards."""
    store = pyro.get_param_store()
    saved = store.get_state()
    store.clear()
    store.set_state(fit.param_state)
    try:
        yield
    finally:
        store.clear()
        store.set_state(saved)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _require_panel(fit: RegimeFit) -> Panel:
    if fit.panel is None:
        raise RegimeDMMError("this fit has no data panel (reload it with regime_dmm.persistence.load_fit)")
    return fit.panel


def _prob_frame(regimes, market: str, dates: pd.DatetimeIndex, probs: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"date": pd.DatetimeIndex(dates).strftime("%Y-%m-%d"), "market": market})
    frame["regime"] = [regimes[k] for k in probs.argmax(-1)]
    for k, name in enumerate(regimes):
        frame[f"prob_{name}"] = probs[:, k]
    return frame


def _features_like(s: MarketSeries, returns: np.ndarray, vol_window: int) -> np.ndarray:
    """Features of the extended returns as ``build_features`` makes them, with ``s``'s statistics."""
    eps = getattr(_features, "_VOL_EPS_FRACTION", 1e-3) * float(np.std(s.returns))  # the fitted series' eps
    columns = []
    for name in s.feature_names:
        if name == "return":
            columns.append(returns)
        elif name == "vol":
            columns.append(rolling_log_rms(returns, vol_window, eps))
        else:  # pragma: no cover - build_features knows no other feature
            raise RegimeDMMError(f"cannot rebuild feature {name!r} for new days")
    raw = np.stack(columns, axis=1).astype(np.float64)
    features = np.ascontiguousarray((raw - s.feature_mean) / s.feature_std, dtype=np.float64)
    old = features[: s.length]
    if not np.allclose(old, s.features, rtol=1e-9, atol=1e-9):  # guard against a changed feature definition
        raise RegimeDMMError(f"market '{s.name}': the fitted features could not be reproduced for the update")
    features[: s.length] = s.features  # bit-identical fitted part
    return features


def _new_rows(s: MarketSeries, rows: pd.DataFrame, value_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a market's rows against the fitted series; return the dates and values after its last day."""
    last = s.dates[-1]
    dates = pd.DatetimeIndex(rows["date"])
    values = rows[value_column].to_numpy(dtype=np.float64)
    after = np.asarray(dates > last)
    old_dates, old_values = dates[~after], values[~after]
    if len(old_dates):
        fitted = s.prices if value_column == "price" else s.returns
        pos = s.dates.get_indexer(old_dates)
        for date, value, p in zip(old_dates, old_values, pos):
            if p < 0:
                if value_column == "price" and date < s.dates[0]:
                    continue  # the price before the first return (not kept by the fit)
                raise DataError(
                    f"market '{s.name}': date {date.date()} is not after the last fitted date {last.date()} "
                    "(and is not a fitted day): new days must come after it"
                )
            if not np.isclose(value, fitted[p], rtol=1e-9, atol=1e-12):
                raise DataError(
                    f"market '{s.name}', date {date.date()}: {value_column} {value!r} differs from the fitted "
                    f"data ({fitted[p]!r}); new days must come after the last fitted date {last.date()}"
                )
    return np.asarray(dates[after]), values[after]


def _load_new_data(panel: Panel, source: NewData) -> pd.DataFrame:
    """Validate the new rows with :func:`load_prices`, with each market's fitted series as context.

    The fitted days of the markets present are added (unless the new data give those days
    themselves), so that a single new day is a valid series; error messages name the rows
    of ``source`` (they come first).
    """
    table, label = _text_table(source)
    fitted = {s.name: s for s in panel.series}
    value_column = next(c for c in ("price", "return") if c in table.columns)
    expected = "price" if panel.series[0].prices is not None else "return"
    if value_column != expected:
        raise DataError(f"{label}: the new data give {value_column}s, the fit was made on {expected}s")
    unknown = [m for m in pd.unique(table["market"]) if m and m not in fitted]
    if unknown:
        raise DataError(f"{label}: unknown market {unknown[0]!r}; the fit has markets {list(fitted)}")
    parsed = pd.to_datetime(table["date"], errors="coerce", format="mixed")
    context = []
    for name in [m for m in pd.unique(table["market"]) if m in fitted]:
        s = fitted[name]
        given = set(pd.DatetimeIndex(parsed[table["market"] == name].dropna()).normalize())
        keep = ~s.dates.isin(list(given))
        values = (s.prices if expected == "price" else s.returns)[keep]
        context.append(pd.DataFrame({"date": s.dates[keep].strftime("%Y-%m-%d"), "market": name,
                                     expected: [repr(float(v)) for v in values]}))
    combined = pd.concat([table, *context], ignore_index=True)
    try:
        return load_prices(combined, min_observations=1)
    except DataError as exc:
        raise DataError(str(exc).replace("input DataFrame", label)) from None


def _text_table(source: NewData) -> tuple[pd.DataFrame, str]:
    """``source`` as a table of text columns date, market and price or return."""
    if isinstance(source, pd.DataFrame):
        raw, label = source, "new data"
    elif isinstance(source, (str, Path)):
        raw, label = _read_text_csv(Path(source)), str(source)
    else:
        raise DataError(f"new data must be a CSV path or a DataFrame, got {type(source).__name__}")
    columns = {str(c).strip().lower(): c for c in raw.columns}
    values = [c for c in ("price", "return") if c in columns]
    if "date" not in columns or "market" not in columns or len(values) != 1:
        load_prices(source, min_observations=1)  # raises its precise message about the columns
        raise DataError(f"{label}: expected the columns date, market and one of price / return")
    return pd.DataFrame({
        "date": _as_text(raw[columns["date"]]),
        "market": _as_text(raw[columns["market"]]),
        values[0]: _as_text(raw[columns[values[0]]]),
    }), label


def _read_text_csv(path: Path) -> pd.DataFrame:
    try:
        text = path.read_bytes().decode("utf-8-sig")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError("empty")
        sep = next((c for c in _SEPARATORS if c in lines[0]), ",")
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception:  # missing, empty, not UTF-8, malformed: the loader names the problem
        load_prices(path, min_observations=1)
        raise DataError(f"{path}: cannot read the new data") from None


def _as_text(column: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(column):
        return column.dt.strftime("%Y-%m-%d").fillna("").reset_index(drop=True)

    def one(value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        if isinstance(value, (float, np.floating)):
            return repr(float(value))
        return str(value).strip()

    return column.map(one).astype(object).reset_index(drop=True)
