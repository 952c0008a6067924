"""Turn validated price/return tables into per-market features on each market's day grid, and a padded panel.

Shapes used throughout: ``M`` markets, ``T`` days of one market's grid, ``T_max`` the
longest market, ``F`` features.

Each market's rows become its day grid first (:mod:`regime_dmm.data.observations`): its
calendar, which days hold a real observation (``observed``; days without a trade, long gaps
and bad ticks are masked) and how many days each return spans (``span``). Features, per
grid day ``t``:

* ``return``: the log return ``r_t`` (``log(p_t / p_prev)`` since the previous real
  observation for price input, as given for return input), normalised per day of its span:
  ``(r_t - span_t * mean) / (sqrt(span_t) * sd)``; 0 on masked days.
* ``vol``: ``log(sqrt(mean(y^2)) + eps)`` over the last ``w = vol_window`` observed
  daily-equivalent returns ``y = r / sqrt(span)`` (fewer at the start), with
  ``eps = 1e-3 * std(y)`` of that market so that runs of zero returns stay finite; masked days
  carry the last value. Z-scored over the observed days.

With ``normalise=True`` the statistics (``mean``, ``sd`` per day) are fitted per market and
kept so model outputs can be mapped back to input units
(:meth:`FeaturePipeline.to_input_units`, :meth:`FeaturePipeline.scale_to_input_units`); without,
``mean = 0`` and ``sd = 1``. On a clean series (every day observed, spans 1) these are the
plain z-scores of the returns.

:class:`FeaturePipeline` is the one place where features are made: it is fitted once on
the training data (per-market statistics and calendars), turns tables into a :class:`Panel`,
extends a panel with new days using the fitted statistics (nowcasts, held-out scores),
builds the :class:`ModelData` tensors the models read (and tells them their sizes), maps
values back to input units and gives the log-Jacobian of the normalisation. It is saved with a fit.
"""

from __future__ import annotations

import difflib
import hashlib
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from regime_dmm.errors import ConfigError, DataError

from ..config import DataConfig
from .observations import MarketDays, market_days

__all__ = [
    "FEATURE_NAMES",
    "FeaturePipeline",
    "FeatureSpec",
    "MarketSeries",
    "MarketStatistics",
    "ModelData",
    "Panel",
    "build_features",
    "lagged_history",
    "make_panel",
    "rolling_log_rms",
]

#: Feature names understood by :func:`build_features`.
FEATURE_NAMES: tuple[str, ...] = ("return", "vol")

# eps of the vol feature, relative to the market's return standard deviation.
_VOL_EPS_FRACTION = 1e-3


@dataclass
class MarketSeries:
    """Features of one market on its day grid.

    Attributes
    ----------
    name:
        Market name.
    dates:
        ``(T,)`` days of the market's grid (for price input the first price date is
        dropped: it has no return).
    returns:
        ``(T,)`` log returns in input units since the previous real observation; NaN on
        masked days.
    prices:
        ``(T,)`` last price known on each day, or ``None`` for return input.
    features:
        ``(T, F)`` float64 features (z-scored when normalised).
    feature_names:
        ``F`` names, e.g. ``("return", "vol")``.
    feature_mean, feature_std:
        ``(F,)`` statistics used for normalisation (0 and 1 when not normalised); a return
        of span ``n`` is normalised as ``(r - n * mean) / (sqrt(n) * std)``.
    observed:
        ``(T,)`` bool, a real observation (the others are masked: no emission).
    span:
        ``(T,)`` int, days each return covers (1 on masked days).
    calendar:
        ``"business"`` or ``"daily"``.
    report:
        Data-quality entries (gaps, no-trade spans, bad ticks; see :mod:`.observations`).
    source:
        The market's rows (``date``, the value column, ``volume`` where given), to extend it.
    """

    name: str
    dates: pd.DatetimeIndex
    returns: np.ndarray
    prices: np.ndarray | None
    features: np.ndarray
    feature_names: tuple[str, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    observed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    span: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    calendar: str = "business"
    report: list[dict[str, Any]] = field(default_factory=list)
    source: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.observed.shape != self.returns.shape:  # built by hand: every day observed, spans 1
            self.observed = np.isfinite(self.returns)
            self.span = np.ones(self.returns.shape, dtype=np.int64)

    @property
    def length(self) -> int:
        """Number of days ``T``."""
        return int(self.returns.shape[0])

    @property
    def num_observed(self) -> int:
        """Number of real observations."""
        return int(self.observed.sum())

    @property
    def num_features(self) -> int:
        """Number of features ``F``."""
        return len(self.feature_names)

    def feature_index(self, feature: int | str) -> int:
        """Position of ``feature`` (a name or an index) in :attr:`feature_names`."""
        return _feature_index(self, feature)

    def robust_return_scale(self) -> float:
        """1.4826 x the median absolute deviation of the return feature on observed days (its units:
        normalised, or input units per day when not normalised): the sd of an ordinary day, unmoved by
        a few extreme ones."""
        x = self.features[self.observed, self.feature_index("return")]
        if x.size == 0:
            return 0.0
        mad = 1.4826 * float(np.median(np.abs(x - np.median(x))))
        return mad if mad > 0 else float(np.std(x))


@dataclass
class Panel:
    """Markets stacked into padded tensors, aligned by position (not by date).

    Attributes
    ----------
    series:
        The ``M`` :class:`MarketSeries`, in order.
    x:
        ``(M, T_max, F)`` features, zero on masked and padded days.
    mask:
        ``(M, T_max)`` bool, True on the days of each market's grid (False on padding).
    lengths:
        ``(M,)`` long, number of days of each market.
    observed:
        ``(M, T_max)`` bool, True on real observations (a subset of ``mask``).
    span:
        ``(M, T_max)`` float, days each return covers (1 elsewhere).
    """

    series: list[MarketSeries]
    x: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    observed: torch.Tensor
    span: torch.Tensor

    @property
    def markets(self) -> tuple[str, ...]:
        """Market names, in panel order."""
        return tuple(s.name for s in self.series)

    @property
    def num_markets(self) -> int:
        """``M``."""
        return len(self.series)

    @property
    def num_features(self) -> int:
        """``F``."""
        return int(self.x.shape[-1])

    @property
    def max_length(self) -> int:
        """``T_max``."""
        return int(self.x.shape[1])

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature names (shared by all markets)."""
        return self.series[0].feature_names if self.series else ()

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the markets, dates and features: identifies the data a fit saw."""
        h = hashlib.sha256()
        for s in self.series:
            h.update(s.name.encode())
            h.update(np.asarray(s.dates.asi8).tobytes())
            h.update(np.ascontiguousarray(s.features).tobytes())
            if not s.observed.all() or (s.span != 1).any():
                h.update(np.ascontiguousarray(s.observed).tobytes())
                h.update(np.ascontiguousarray(s.span).tobytes())
        return h.hexdigest()


# ---------------------------------------------------------------------------
# building features
# ---------------------------------------------------------------------------


def _check_features(features: Sequence[str]) -> tuple[str, ...]:
    if isinstance(features, str):
        features = (features,)
    names = tuple(str(f).strip().lower() for f in features)
    if not names:
        raise ConfigError(f"features must name at least one of {FEATURE_NAMES}")
    for name in names:
        if name not in FEATURE_NAMES:
            close = difflib.get_close_matches(name, FEATURE_NAMES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown feature '{name}', expected some of {FEATURE_NAMES}{hint}")
    if len(set(names)) != len(names):
        raise ConfigError(f"features must not repeat a name, got {names}")
    return names


def rolling_log_rms(returns: np.ndarray, window: int, eps: float) -> np.ndarray:
    """``log(sqrt(mean(r[t-window+1 .. t]^2)) + eps)`` for each ``t``.

    The window is truncated at the start (``min_periods=1``). Computed exactly
    from sliding windows (no running-sum cancellation), so runs of zero returns
    give exactly ``log(eps)``.

    Parameters
    ----------
    returns: ``(T,)`` returns.
    window: window length ``>= 1``.
    eps: added to the root-mean-square before the log.

    Returns
    -------
    ``(T,)`` float64.
    """
    r2 = np.asarray(returns, dtype=np.float64) ** 2
    T = r2.shape[0]
    w = min(int(window), max(T, 1))
    padded = np.concatenate([np.zeros(w - 1), r2])
    sums = np.lib.stride_tricks.sliding_window_view(padded, w).sum(axis=1)
    counts = np.minimum(np.arange(1, T + 1), w)
    return np.log(np.sqrt(sums / counts) + eps)


def _value_column(df: pd.DataFrame) -> str:
    kind = df.attrs.get("value_column")
    if kind in ("price", "return"):
        if kind not in df.columns:
            raise DataError(f"df.attrs says value column '{kind}' but the DataFrame has no such column")
        return str(kind)
    present = [c for c in ("price", "return") if c in df.columns]
    if len(present) != 1:
        raise DataError(
            "build_features needs a DataFrame with exactly one of the columns 'price' or 'return' "
            f"(as returned by load_prices); found columns {list(df.columns)}"
        )
    return present[0]


def _market_rows(df: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame, str]]:
    """``(name, rows sorted by date, value column)`` per market of a validated table, in order of appearance."""
    missing = [c for c in ("date", "market") if c not in df.columns]
    if missing:
        raise DataError(f"build_features: DataFrame lacks column(s) {missing}; use load_prices first")
    value_column = _value_column(df)
    keep = ["date", value_column] + [c for c in ("volume", "trades") if c in df.columns]
    for market in pd.unique(df["market"]):
        group = df.loc[df["market"] == market, keep].sort_values("date", kind="stable").reset_index(drop=True)
        name = str(market)
        values = group[value_column].to_numpy(dtype=np.float64)
        if value_column == "price":
            if values.shape[0] < 2:
                raise DataError(f"market '{name}' has fewer than 2 prices, so no returns")
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise DataError(f"market '{name}': prices must be finite and positive")
        else:
            if values.shape[0] < 1:
                raise DataError(f"market '{name}' has no returns")
            if not np.all(np.isfinite(values)):
                raise DataError(f"market '{name}': returns must be finite")
        yield name, group, value_column


def _volume(rows: pd.DataFrame) -> np.ndarray | None:
    """The no-trade signal of a market's rows: ``trades`` where given, else ``volume`` (NaN: unknown)."""
    for column in ("trades", "volume"):
        if column in rows.columns and rows[column].notna().any():
            return rows[column].to_numpy(dtype=np.float64)
    return None


def _days(
    name: str,
    rows: pd.DataFrame,
    value_column: str,
    rules: DataConfig,
    calendar: str | None = None,
    fitted: MarketSeries | None = None,
) -> MarketDays:
    """``fitted``: the market as it was fitted, when new rows are appended (its part must not change)."""
    until = None if fitted is None or fitted.source is None else pd.Timestamp(fitted.source["date"].iloc[-1])
    report = [] if fitted is None else fitted.report
    return market_days(
        name,
        pd.DatetimeIndex(rows["date"]),
        rows[value_column].to_numpy(dtype=np.float64),
        value_column,
        rules,
        volume=_volume(rows),
        calendar=calendar,
        fitted_until=until,
        fitted_bad_ticks=frozenset(e["start"] for e in report if e["kind"] == "bad_tick"),
        use_volume=None if fitted is None else not any(e["kind"] == "volume_not_used" for e in report),
    )


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a model sees and how they are made.

    Attributes
    ----------
    features:
        Features built per day (the panel's ``F``; the networks' history is made of them).
    emitted:
        The subset the emissions model, in the panel's order (``ModelData.x``).
    vol_window:
        Observed days in the realised-volatility feature.
    normalise:
        Z-score each feature per market.
    lags:
        Previous days the networks see (``history_size = len(features) * lags``).
    rules:
        How rows become days (calendars, no-trade days, gaps, bad ticks).
    """

    features: tuple[str, ...] = ("return", "vol")
    emitted: tuple[str, ...] = ("return",)
    vol_window: int = 10
    normalise: bool = True
    lags: int = 5
    rules: DataConfig = field(default_factory=DataConfig)

    @property
    def num_emitted(self) -> int:
        """Number of emitted features."""
        return len(self.emitted)

    @property
    def history_size(self) -> int:
        """Width of the networks' input ``(F * lags)``."""
        return len(self.features) * self.lags

    @property
    def emitted_index(self) -> list[int]:
        """Positions of the emitted features among :attr:`features`."""
        return [i for i, name in enumerate(self.features) if name in self.emitted]


@dataclass(frozen=True)
class MarketStatistics:
    """Per-market statistics fitted on the training data.

    ``mean``, ``std``: ``(F,)`` per-day statistics of the features (0 and 1 when not normalised);
    ``vol_eps``: the constant inside the realised-volatility log (``1e-3 * sd(daily returns)``);
    ``calendar``: the market's calendar (kept when new days are appended).
    """

    mean: np.ndarray
    std: np.ndarray
    vol_eps: float
    calendar: str = "business"


@dataclass
class ModelData:
    """The tensors a model reads, built once per data set by :meth:`FeaturePipeline.model_data`.

    Shapes: ``M`` markets, ``T`` the longest market (shorter ones zero-padded at the end).
    """

    x: torch.Tensor  # (M, T, F_emitted) emitted features, zero on masked and padded days
    mask: torch.Tensor  # (M, T) bool, True on the days of each market's grid
    history: torch.Tensor  # (M, T, F * lags) lagged features seen by the networks
    lengths: torch.Tensor  # (M,) long
    observed: torch.Tensor | None = None  # (M, T) bool, real observations (default: mask)
    span: torch.Tensor | None = None  # (M, T) float, days each return covers (default: 1)
    markets: tuple[str, ...] = ()  # the M market names (for messages; empty when built by hand)

    def __post_init__(self) -> None:
        if self.observed is None:
            self.observed = self.mask
        if self.span is None:
            self.span = torch.ones(self.mask.shape, dtype=self.x.dtype)

    @property
    def emitting(self) -> torch.Tensor:
        """``(M, T)`` bool: the days whose emission counts (``observed``)."""
        assert self.observed is not None
        return self.observed

    @property
    def day_span(self) -> torch.Tensor:
        """``(M, T)`` float: ``span`` (days each return covers)."""
        assert self.span is not None
        return self.span

    @property
    def span_root(self) -> torch.Tensor | None:
        """``(M, T)``: ``sqrt(span)``, by which a return's location scales in normalised units; None when every
        return spans one day (the models then skip the scaling altogether)."""
        assert self.span is not None
        return None if bool((self.span == 1).all()) else self.span.sqrt()

    def returns_only(self) -> ModelData:
        """The same data with only the first emitted feature (the return) emitted."""
        return ModelData(self.x[..., :1], self.mask, self.history, self.lengths, self.observed, self.span, self.markets)


def lagged_history(x: torch.Tensor, lags: int) -> torch.Tensor:
    """``(M, T, F) -> (M, T, F * lags)``: x_{t-1}, ..., x_{t-lags}, zero-padded at the start."""
    steps = x.shape[-2]
    cols = []
    for lag in range(1, lags + 1):
        shifted = torch.zeros_like(x)
        if lag < steps:
            shifted[..., lag:, :] = x[..., :-lag, :]
        cols.append(shifted)
    return torch.cat(cols, dim=-1)


def _daily(days: MarketDays) -> tuple[np.ndarray, np.ndarray]:
    """Observed returns and their spans."""
    return days.returns[days.observed], days.span[days.observed].astype(np.float64)


def _raw_vol(days: MarketDays, vol_window: int, eps: float) -> np.ndarray:
    """The vol feature on every day: observed days from their daily-equivalent returns, masked days
    carrying the last value (the first observed one before any)."""
    r, n = _daily(days)
    y = r / np.sqrt(n)
    vol_obs = rolling_log_rms(y, vol_window, eps)
    if days.observed.all():
        return vol_obs
    out = np.full(days.observed.shape, np.nan)
    out[days.observed] = vol_obs
    return pd.Series(out).ffill().bfill().to_numpy()


@dataclass
class FeaturePipeline:
    """Features of a fit: the :class:`FeatureSpec` and each market's fitted :class:`MarketStatistics`.

    >>> pipeline = FeaturePipeline.fit(frame, FeatureSpec())    # statistics from the training data
    >>> panel = pipeline.transform(frame)                        # (M, T, F) panel
    >>> data = pipeline.model_data(panel, torch.float64)         # what the models read

    Raises :class:`~regime_dmm.errors.DataError` for unusable data and
    :class:`~regime_dmm.errors.ConfigError` for a bad specification.
    """

    spec: FeatureSpec
    statistics: dict[str, MarketStatistics] = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame, spec: FeatureSpec, *, min_observations: int = 1) -> FeaturePipeline:
        """Fit each market's statistics and calendar on ``df`` (a :func:`~regime_dmm.data.load_prices` table).

        Raises :class:`DataError` naming the market when it has fewer than ``min_observations`` real
        observations once its no-trade days, long gaps and bad ticks are masked, or a constant series.
        """
        if isinstance(spec.vol_window, bool) or not isinstance(spec.vol_window, numbers.Integral):
            raise ConfigError(f"vol_window must be an integer number of days, got {spec.vol_window!r}")
        if spec.vol_window < 1:
            raise ConfigError(f"vol_window must be at least 1 day, got {spec.vol_window}")
        spec = FeatureSpec(
            _check_features(spec.features),
            tuple(spec.emitted),
            int(spec.vol_window),
            bool(spec.normalise),
            int(spec.lags),
            spec.rules,
        )
        if not spec.emitted or not set(spec.emitted) <= set(spec.features):
            raise ConfigError(f"emitted features {spec.emitted} must be a non-empty subset of {spec.features}")
        statistics = {}
        for name, rows, value_column in _market_rows(df):
            days = _days(name, rows, value_column, spec.rules)
            traded = int(days.observed.sum())
            if traded < min_observations:
                raise DataError(
                    f"market '{name}': {traded} returns with a trade once days without one (repeated prices), long "
                    f"gaps and bad ticks are set aside; at least {min_observations} are needed "
                    "(training.min_observations; data.stale: keep reads repeated prices as zero returns)"
                )
            r, n = _daily(days)
            y = r / np.sqrt(n)
            sd = float(np.std(y))
            if sd == 0.0:
                raise DataError(f"market '{name}' is a constant series (all returns equal)")
            eps = _VOL_EPS_FRACTION * sd
            mean, std = np.zeros(len(spec.features)), np.ones(len(spec.features))
            if spec.normalise:
                vol = _raw_vol(days, spec.vol_window, eps)[days.observed]
                raw = np.stack([r if f == "return" else vol for f in spec.features], axis=1)
                if days.observed.all() and (n == 1.0).all():  # a clean series: the plain z-scores
                    mean, std = raw.mean(axis=0), raw.std(axis=0)
                else:  # per-day statistics of returns that span n days
                    mean, std = raw.mean(axis=0), raw.std(axis=0)
                    for i, feature in enumerate(spec.features):
                        if feature == "return":
                            mean[i] = r.sum() / n.sum()
                            std[i] = np.sqrt(np.mean((r - n * mean[i]) ** 2 / n))
                # A feature constant over the market (possible for 'vol') is only centred.
                std = np.where(std > 0, std, 1.0)
            statistics[name] = MarketStatistics(mean.astype(np.float64), std.astype(np.float64), eps, days.calendar)
        return cls(spec, statistics)

    # ---- tables -> series and panels -------------------------------------------------------
    def series(self, name: str, days: MarketDays, source: pd.DataFrame | None = None) -> MarketSeries:
        """One market's :class:`MarketSeries` from its day grid, normalised with its fitted statistics."""
        stats = self._stats(name)
        obs = days.observed
        n = days.span.astype(np.float64)
        feats = np.zeros((len(days.dates), len(self.spec.features)), dtype=np.float64)
        for i, feature in enumerate(self.spec.features):
            if feature == "return":
                r = np.where(obs, days.returns, 0.0)
                column = (r - n * stats.mean[i]) / (np.sqrt(n) * stats.std[i])
                feats[:, i] = np.where(obs, column, 0.0)
            else:
                feats[:, i] = (_raw_vol(days, self.spec.vol_window, stats.vol_eps) - stats.mean[i]) / stats.std[i]
        return MarketSeries(
            name=name,
            dates=days.dates,
            returns=days.returns,
            prices=days.prices,
            features=np.ascontiguousarray(feats),
            feature_names=self.spec.features,
            feature_mean=stats.mean,
            feature_std=stats.std,
            observed=days.observed,
            span=days.span,
            calendar=days.calendar,
            report=days.report,
            source=source,
        )

    def transform_series(self, df: pd.DataFrame) -> list[MarketSeries]:
        """Every market of ``df`` (fitted markets only) as a :class:`MarketSeries`, in ``df``'s order."""
        out = []
        for name, rows, value_column in _market_rows(df):
            days = _days(name, rows, value_column, self.spec.rules, calendar=self._stats(name).calendar)
            out.append(self.series(name, days, rows))
        return out

    def transform(self, df: pd.DataFrame, dtype: torch.dtype = torch.float64) -> Panel:
        """The padded :class:`Panel` of ``df``'s markets."""
        return make_panel(self.transform_series(df), dtype=dtype)

    def extend(self, panel: Panel, new: pd.DataFrame) -> tuple[Panel, list[int]]:
        """``panel`` with the days of ``new`` after each market's last day appended.

        ``new`` is a validated table (:func:`~regime_dmm.data.loader.read_prices`) of the same
        kind (prices or returns) as the panel; rows of days already in the panel must repeat
        their values. The new days' features use the FITTED statistics and calendar, only the
        new days are checked for bad ticks, and the fitted days keep their features bit for bit.
        Returns the extended panel (markets in ``panel``'s order) and each market's number of
        days before the extension.
        """
        value_column = new.attrs["value_column"]
        expected = "price" if panel.series[0].prices is not None else "return"
        label = new.attrs.get("label", "new data")
        if value_column != expected:
            raise DataError(f"{label}: the new data give {value_column}s, the fit was made on {expected}s")
        known = set(panel.markets)
        unknown = [m for m in pd.unique(new["market"]) if m not in known]
        if unknown:
            raise DataError(f"{label}: unknown market {unknown[0]!r}; the fit has markets {list(panel.markets)}")
        series, lengths = [], []
        for s in panel.series:
            lengths.append(s.length)
            if s.source is None:
                raise DataError(f"market '{s.name}': its rows were not kept, so new days cannot be appended")
            rows = new[new["market"] == s.name]
            fresh = _new_rows(s, rows, value_column)
            if len(fresh) == 0:
                series.append(s)
                continue
            combined = pd.concat([s.source, fresh], ignore_index=True)
            last = pd.Timestamp(s.source["date"].iloc[-1])
            days = _days(
                s.name,
                combined,
                value_column,
                self.spec.rules,
                calendar=self._stats(s.name).calendar,
                fitted=s,
            )
            extended = self.series(s.name, days, combined)
            same = (
                extended.length >= s.length
                and extended.dates[: s.length].equals(s.dates)
                and np.array_equal(extended.observed[: s.length], s.observed)
                and np.array_equal(extended.span[: s.length], s.span)
                and np.allclose(extended.features[: s.length], s.features, rtol=1e-9, atol=1e-9)
            )
            if not same:
                n = min(s.length, extended.length)
                differ = (
                    (extended.dates[:n] != s.dates[:n])
                    | (extended.observed[:n] != s.observed[:n])
                    | (extended.span[:n] != s.span[:n])
                )
                where = f" from {s.dates[int(np.argmax(differ))].date()}" if differ.any() else ""
                raise DataError(
                    f"market '{s.name}': the new rows change the fitted days{where} (an edited or inserted "
                    "earlier row?): append only rows after the fitted ones, or refit"
                )
            extended.features[: s.length] = s.features  # bit-identical fitted part
            extended.report = s.report + [e for e in extended.report if e["end"] > last.strftime("%Y-%m-%d")]
            series.append(extended)
        return make_panel(series, dtype=panel.x.dtype), lengths

    # ---- what the models read ---------------------------------------------------------------
    def model_data(self, panel: Panel, dtype: torch.dtype) -> ModelData:
        """The tensors of ``panel`` a model reads: emitted features, masks, spans, lagged history, lengths."""
        full = panel.x.to(dtype)
        index = self.spec.emitted_index
        return ModelData(
            x=full[..., index],
            mask=panel.mask,
            history=lagged_history(full, self.spec.lags),
            lengths=panel.lengths,
            observed=panel.observed,
            span=panel.span.to(dtype),
            markets=tuple(panel.markets),
        )

    # ---- units ------------------------------------------------------------------------------
    def log_jacobian(self, series: MarketSeries, start: int = 0, stop: int | None = None) -> float:
        """Nats to subtract from a log-density in normalised units, over days ``start:stop`` of
        ``series``, to have it in input units: per observed day ``sum log(std)`` of the emitted
        features plus ``0.5 log(span)`` for the return."""
        obs = series.observed[start:stop]
        per_day = float(np.log(self._stats(series.name).std[: self.spec.num_emitted]).sum())
        return int(obs.sum()) * per_day + 0.5 * float(np.log(series.span[start:stop][obs]).sum())

    def log_jacobian_days(self, series: MarketSeries) -> np.ndarray:
        """``(T,)``: :meth:`log_jacobian` of each day (0 on masked days)."""
        per_day = float(np.log(self._stats(series.name).std[: self.spec.num_emitted]).sum())
        return np.where(series.observed, per_day + 0.5 * np.log(series.span), 0.0)

    def to_input_units(self, market: str, feature: int | str, values: Any) -> Any:
        """Normalised values of one feature in input units (per day): ``values * std + mean``."""
        i = self._index(feature)
        stats = self._stats(market)
        return _as_array(values) * float(stats.std[i]) + float(stats.mean[i])

    def returns_to_input_units(self, series: MarketSeries, values: np.ndarray) -> np.ndarray:
        """Normalised returns ``(T,)`` of ``series``' days back in input units, each over its span ``n``:
        ``values * sqrt(n) * std + n * mean``; NaN on masked days."""
        stats = self._stats(series.name)
        i = self._index("return")
        n = series.span.astype(np.float64)
        out = np.asarray(values, dtype=np.float64) * np.sqrt(n) * float(stats.std[i]) + n * float(stats.mean[i])
        return np.where(series.observed, out, np.nan)

    def scale_to_input_units(self, market: str, feature: int | str, scales: Any) -> Any:
        """A normalised scale (standard deviation, per day) of one feature in input units: ``scales * std``."""
        return _as_array(scales) * float(self._stats(market).std[self._index(feature)])

    # ---- saving -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists and floats) for a checkpoint; :meth:`from_dict` reads it back exactly."""
        r = self.spec.rules
        return {
            "features": list(self.spec.features),
            "emitted": list(self.spec.emitted),
            "vol_window": self.spec.vol_window,
            "normalise": self.spec.normalise,
            "lags": self.spec.lags,
            "rules": {"stale": r.stale, "max_gap": r.max_gap, "bad_ticks": r.bad_ticks, "calendar": r.calendar},
            "statistics": {
                name: {
                    "mean": s.mean.tolist(),
                    "std": s.std.tolist(),
                    "vol_eps": float(s.vol_eps),
                    "calendar": s.calendar,
                }
                for name, s in self.statistics.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeaturePipeline:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError``/``ValueError`` on malformed input."""
        spec = FeatureSpec(
            tuple(data["features"]),
            tuple(data["emitted"]),
            int(data["vol_window"]),
            bool(data["normalise"]),
            int(data["lags"]),
            DataConfig(**data["rules"]).validate(),
        )
        stats = {
            str(name): MarketStatistics(
                np.asarray(s["mean"], dtype=np.float64),
                np.asarray(s["std"], dtype=np.float64),
                float(s["vol_eps"]),
                str(s["calendar"]),
            )
            for name, s in data["statistics"].items()
        }
        return cls(spec, stats)

    def _stats(self, market: str) -> MarketStatistics:
        try:
            return self.statistics[market]
        except KeyError:
            raise DataError(
                f"market '{market}' was not in the data the features were fitted on "
                f"(markets: {', '.join(self.statistics)})"
            ) from None

    def _index(self, feature: int | str) -> int:
        if isinstance(feature, str):
            if feature not in self.spec.features:
                raise KeyError(f"no feature '{feature}' (features: {self.spec.features})")
            return self.spec.features.index(feature)
        return int(feature)


def _new_rows(s: MarketSeries, rows: pd.DataFrame, value_column: str) -> pd.DataFrame:
    """A market's new rows after its last fitted row; rows of fitted days must repeat the fitted values."""
    assert s.source is not None
    last = pd.Timestamp(s.source["date"].iloc[-1])
    source = s.source.set_index("date")[value_column]
    dates = pd.DatetimeIndex(rows["date"])
    values = rows[value_column].to_numpy(dtype=np.float64)
    after = np.asarray(dates > last)
    earlier, earlier_values = dates[~after], values[~after]
    # every check at once (a daily update repeats thousands of fitted rows); the first failing row is named
    fitted_values = source.reindex(earlier).to_numpy(dtype=np.float64)
    unknown = ~earlier.isin(source.index)
    changed = ~unknown & ~np.isclose(earlier_values, fitted_values, rtol=1e-9, atol=1e-12)
    for i in np.flatnonzero(unknown | changed)[:1]:
        date, value, fitted = earlier[i], earlier_values[i], float(fitted_values[i])
        if unknown[i]:
            raise DataError(
                f"market '{s.name}': date {date.date()} is not after the last fitted date {last.date()} "
                "(and is not a fitted day): new days must come after it"
            )
        raise DataError(
            f"market '{s.name}', date {date.date()}: {value_column} {float(value)!r} differs from the fitted "
            f"data ({fitted!r}); new days must come after the last fitted date {last.date()}"
        )
    keep = list(s.source.columns)
    fresh = rows.loc[after].copy()
    for column in keep:
        if column not in fresh.columns:
            fresh[column] = np.nan
    return fresh[keep].sort_values("date", kind="stable")


def build_features(
    df: pd.DataFrame,
    *,
    vol_window: int = 10,
    features: Sequence[str] = ("return", "vol"),
    normalise: bool = True,
    rules: DataConfig | None = None,
) -> list[MarketSeries]:
    """Per-market features of a table returned by :func:`load_prices` (a :class:`FeaturePipeline`
    fitted on ``df`` and applied to it).

    Parameters
    ----------
    df:
        Long table with ``date``, ``market`` and ``price`` or ``return``
        (``df.attrs["value_column"]`` says which; otherwise the column present).
    vol_window:
        Rolling window (observed days) of the ``vol`` feature, ``>= 1``.
    features:
        Feature names, a non-empty subset of ``("return", "vol")`` in the
        order wanted.
    normalise:
        Z-score each feature per market (statistics kept on the series).
    rules:
        How rows become days (default :class:`~regime_dmm.config.DataConfig`).

    Returns
    -------
    list[MarketSeries]
        One per market, in the order markets first appear in ``df``.

    Raises
    ------
    DataError, ConfigError
    """
    names = _check_features(features)
    spec = FeatureSpec(names, names, vol_window, normalise, 1, rules or DataConfig())
    return FeaturePipeline.fit(df, spec).transform_series(df)


# ---------------------------------------------------------------------------
# panel
# ---------------------------------------------------------------------------


def make_panel(series: Sequence[MarketSeries], dtype: torch.dtype = torch.float64) -> Panel:
    """Stack markets into zero-padded tensors.

    Parameters
    ----------
    series:
        ``M >= 1`` market series with the same feature names.
    dtype:
        Floating dtype of ``x``.

    Returns
    -------
    Panel
        ``x`` ``(M, T_max, F)``, ``mask`` ``(M, T_max)`` bool, ``lengths`` ``(M,)`` long,
        ``observed`` ``(M, T_max)`` bool, ``span`` ``(M, T_max)`` float.
    """
    series = list(series)
    if not series:
        raise DataError("make_panel needs at least one market")
    names = series[0].feature_names
    for s in series[1:]:
        if s.feature_names != names:
            raise DataError(f"market '{s.name}' has features {s.feature_names}, but '{series[0].name}' has {names}")
    seen: set[str] = set()
    for s in series:
        if s.name in seen:
            raise DataError(f"market '{s.name}' appears twice in the panel")
        seen.add(s.name)
    lengths = [s.length for s in series]
    t_max = max(lengths)
    F = len(names)
    x = torch.zeros(len(series), t_max, F, dtype=dtype)
    mask = torch.zeros(len(series), t_max, dtype=torch.bool)
    observed = torch.zeros(len(series), t_max, dtype=torch.bool)
    span = torch.ones(len(series), t_max, dtype=dtype)
    for m, s in enumerate(series):
        x[m, : s.length] = torch.as_tensor(s.features, dtype=dtype)
        mask[m, : s.length] = True
        observed[m, : s.length] = torch.as_tensor(s.observed)
        span[m, : s.length] = torch.as_tensor(s.span, dtype=dtype)
    return Panel(
        series=series, x=x, mask=mask, lengths=torch.tensor(lengths, dtype=torch.long), observed=observed, span=span
    )


# ---------------------------------------------------------------------------
# mapping back to input units
# ---------------------------------------------------------------------------


def _feature_index(series: MarketSeries, feature: int | str) -> int:
    if isinstance(feature, str):
        try:
            return series.feature_names.index(feature)
        except ValueError:
            raise KeyError(
                f"market '{series.name}' has no feature '{feature}' (features: {series.feature_names})"
            ) from None
    index = int(feature)
    if not -len(series.feature_names) <= index < len(series.feature_names):
        raise IndexError(f"feature index {index} out of range for {series.feature_names}")
    return index


def _as_array(values: Any) -> Any:
    if isinstance(values, (torch.Tensor, np.ndarray, numbers.Number)):
        return values
    return np.asarray(values, dtype=np.float64)
