"""Turn validated price/return tables into per-market feature arrays and a padded panel.

Shapes used throughout: ``M`` markets, ``T`` returns of one market, ``T_max`` the
longest market, ``F`` features.

Features (per market, per return date ``t``):

* ``return``: the daily log return ``r_t`` (``log(p_t / p_{t-1})`` for price input,
  as given for return input);
* ``vol``: ``log(sqrt(mean(r_{t-w+1..t}^2)) + eps)``, the log of the rolling
  root-mean-square return over the last ``w = vol_window`` days including ``t``
  (fewer at the start), with ``eps = 1e-3 * std(r)`` of that market so that runs
  of zero returns stay finite.

With ``normalise=True`` each feature is z-scored per market; the mean and
standard deviation are kept so model outputs can be mapped back to input units
(:meth:`FeaturePipeline.to_input_units`, :meth:`FeaturePipeline.scale_to_input_units`).

:class:`FeaturePipeline` is the one place where features are made: it is fitted once on
the training data (per-market statistics), turns tables into a :class:`Panel`, extends a
panel with new days using the fitted statistics (nowcasts, held-out scores), builds the
:class:`ModelData` tensors the models read (and tells them their sizes), maps values back
to input units and gives the log-Jacobian of the normalisation. It is saved with a fit.
"""

from __future__ import annotations

import difflib
import hashlib
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from regime_dmm.errors import ConfigError, DataError

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
    """Features of one market.

    Attributes
    ----------
    name:
        Market name.
    dates:
        ``(T,)`` dates of the returns (for price input the first price date is
        dropped).
    returns:
        ``(T,)`` raw daily log returns in input units.
    prices:
        ``(T,)`` price on each return date, or ``None`` for return input.
    features:
        ``(T, F)`` float64 features (z-scored when normalised).
    feature_names:
        ``F`` names, e.g. ``("return", "vol")``.
    feature_mean, feature_std:
        ``(F,)`` statistics used for normalisation (0 and 1 when not normalised);
        raw feature = ``features * feature_std + feature_mean``.
    """

    name: str
    dates: pd.DatetimeIndex
    returns: np.ndarray
    prices: np.ndarray | None
    features: np.ndarray
    feature_names: tuple[str, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray

    @property
    def length(self) -> int:
        """Number of return dates ``T``."""
        return int(self.returns.shape[0])

    @property
    def num_features(self) -> int:
        """Number of features ``F``."""
        return len(self.feature_names)

    def feature_index(self, feature: int | str) -> int:
        """Position of ``feature`` (a name or an index) in :attr:`feature_names`."""
        return _feature_index(self, feature)


@dataclass
class Panel:
    """Markets stacked into padded tensors, aligned by position (not by date).

    Attributes
    ----------
    series:
        The ``M`` :class:`MarketSeries`, in order.
    x:
        ``(M, T_max, F)`` features, zero-padded at the end of shorter markets.
    mask:
        ``(M, T_max)`` bool, True on real observations.
    lengths:
        ``(M,)`` long, number of real observations of each market.
    """

    series: list[MarketSeries]
    x: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor

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
        return kind
    present = [c for c in ("price", "return") if c in df.columns]
    if len(present) != 1:
        raise DataError(
            "build_features needs a DataFrame with exactly one of the columns 'price' or 'return' "
            f"(as returned by load_prices); found columns {list(df.columns)}"
        )
    return present[0]


def _market_returns(group: pd.DataFrame, name: str, value_column: str):
    """``(dates, returns, prices)`` of one market's rows (sorted by date) of a validated table."""
    dates = pd.DatetimeIndex(group["date"]).astype("datetime64[ns]")
    values = group[value_column].to_numpy(dtype=np.float64)
    if value_column == "price":
        if values.shape[0] < 2:
            raise DataError(f"market '{name}' has fewer than 2 prices, so no returns")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise DataError(f"market '{name}': prices must be finite and positive")
        return dates[1:], np.diff(np.log(values)), values[1:].copy()
    if values.shape[0] < 1:
        raise DataError(f"market '{name}' has no returns")
    if not np.all(np.isfinite(values)):
        raise DataError(f"market '{name}': returns must be finite")
    return dates, values.copy(), None


def _raw_features(returns: np.ndarray, names: tuple[str, ...], vol_window: int, vol_eps: float) -> np.ndarray:
    """Unnormalised features ``(T, F)`` of one market's returns."""
    columns = []
    for feature in names:
        if feature == "return":
            columns.append(returns)
        else:  # "vol"
            columns.append(rolling_log_rms(returns, vol_window, vol_eps))
    return np.stack(columns, axis=1).astype(np.float64)


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
        Days in the realised-volatility feature.
    normalise:
        Z-score each feature per market.
    lags:
        Previous days the networks see (``history_size = len(features) * lags``).
    """

    features: tuple[str, ...] = ("return", "vol")
    emitted: tuple[str, ...] = ("return",)
    vol_window: int = 10
    normalise: bool = True
    lags: int = 5

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

    ``mean``, ``std``: ``(F,)`` of the raw features (0 and 1 when not normalised);
    ``vol_eps``: the constant inside the realised-volatility log (``1e-3 * sd(returns)``).
    """

    mean: np.ndarray
    std: np.ndarray
    vol_eps: float


@dataclass
class ModelData:
    """The tensors a model reads, built once per data set by :meth:`FeaturePipeline.model_data`.

    Shapes: ``M`` markets, ``T`` the longest market (shorter ones zero-padded at the end).
    """

    x: torch.Tensor  # (M, T, F_emitted) emitted features, zero-padded
    mask: torch.Tensor  # (M, T) bool, True on real days
    history: torch.Tensor  # (M, T, F * lags) lagged features seen by the networks
    lengths: torch.Tensor  # (M,) long

    def returns_only(self) -> ModelData:
        """The same data with only the first emitted feature (the return) emitted."""
        return ModelData(self.x[..., :1], self.mask, self.history, self.lengths)

    def window(self, index) -> ModelData:
        """A subset of the markets (a minibatch), same padding."""
        return ModelData(self.x[index], self.mask[index], self.history[index], self.lengths[index])


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
    def fit(cls, df: pd.DataFrame, spec: FeatureSpec) -> FeaturePipeline:
        """Fit each market's statistics on ``df`` (a :func:`~regime_dmm.data.load_prices` table)."""
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
        )
        if not spec.emitted or not set(spec.emitted) <= set(spec.features):
            raise ConfigError(f"emitted features {spec.emitted} must be a non-empty subset of {spec.features}")
        statistics = {}
        for name, _dates, returns, _prices in _markets(df):
            sd = float(np.std(returns))
            if sd == 0.0:
                raise DataError(f"market '{name}' is a constant series (all returns equal)")
            eps = _VOL_EPS_FRACTION * sd
            raw = _raw_features(returns, spec.features, spec.vol_window, eps)
            if spec.normalise:
                mean = raw.mean(axis=0)
                std = raw.std(axis=0)
                # A feature constant over the market (possible for 'vol') is only centred.
                std = np.where(std > 0, std, 1.0)
            else:
                mean = np.zeros(raw.shape[1])
                std = np.ones(raw.shape[1])
            statistics[name] = MarketStatistics(mean.astype(np.float64), std.astype(np.float64), eps)
        return cls(spec, statistics)

    # ---- tables -> series and panels -------------------------------------------------------
    def series(
        self, name: str, dates: pd.DatetimeIndex, returns: np.ndarray, prices: np.ndarray | None
    ) -> MarketSeries:
        """One market's :class:`MarketSeries`, normalised with its fitted statistics."""
        stats = self._stats(name)
        raw = _raw_features(returns, self.spec.features, self.spec.vol_window, stats.vol_eps)
        feats = (raw - stats.mean) / stats.std if self.spec.normalise else raw
        return MarketSeries(
            name=name,
            dates=dates,
            returns=returns,
            prices=prices,
            features=np.ascontiguousarray(feats, dtype=np.float64),
            feature_names=self.spec.features,
            feature_mean=stats.mean,
            feature_std=stats.std,
        )

    def transform_series(self, df: pd.DataFrame) -> list[MarketSeries]:
        """Every market of ``df`` (fitted markets only) as a :class:`MarketSeries`, in ``df``'s order."""
        return [self.series(name, dates, returns, prices) for name, dates, returns, prices in _markets(df)]

    def transform(self, df: pd.DataFrame, dtype: torch.dtype = torch.float64) -> Panel:
        """The padded :class:`Panel` of ``df``'s markets."""
        return make_panel(self.transform_series(df), dtype=dtype)

    def extend(self, panel: Panel, new: pd.DataFrame) -> tuple[Panel, list[int]]:
        """``panel`` with the days of ``new`` after each market's last day appended.

        ``new`` is a validated table (:func:`~regime_dmm.data.loader.read_prices`) of the same
        kind (prices or returns) as the panel; rows of days already in the panel must repeat
        their values. The new days' features use the FITTED statistics, and the fitted days
        keep their features bit for bit. Returns the extended panel (markets in ``panel``'s
        order) and each market's number of days before the extension.
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
            rows = new[new["market"] == s.name]
            new_dates, new_values = _new_rows(s, rows, value_column)
            if len(new_dates) == 0:
                series.append(s)
                continue
            if s.prices is not None:
                new_returns = np.diff(np.log(np.concatenate([[s.prices[-1]], new_values])))
                prices = np.concatenate([s.prices, new_values])
            else:
                new_returns, prices = new_values, None
            returns = np.concatenate([s.returns, new_returns])
            dates = s.dates.append(pd.DatetimeIndex(new_dates)).astype("datetime64[ns]")
            extended = self.series(s.name, dates, returns, prices)
            if not np.allclose(extended.features[: s.length], s.features, rtol=1e-9, atol=1e-9):
                raise DataError(f"market '{s.name}': the fitted features could not be reproduced for the update")
            extended.features[: s.length] = s.features  # bit-identical fitted part
            series.append(extended)
        return make_panel(series, dtype=panel.x.dtype), lengths

    # ---- what the models read ---------------------------------------------------------------
    def model_data(self, panel: Panel, dtype: torch.dtype) -> ModelData:
        """The tensors of ``panel`` a model reads: emitted features, mask, lagged history, lengths."""
        full = panel.x.to(dtype)
        index = self.spec.emitted_index
        return ModelData(
            x=full[..., index], mask=panel.mask, history=lagged_history(full, self.spec.lags), lengths=panel.lengths
        )

    # ---- units ------------------------------------------------------------------------------
    def log_jacobian(self, market: str) -> float:
        """Per day, ``sum log(std)`` of the emitted features (nats): log-density in normalised units
        minus this is the log-density in input units."""
        return float(np.log(self._stats(market).std[: self.spec.num_emitted]).sum())

    def to_input_units(self, market: str, feature: int | str, values: Any) -> Any:
        """Normalised values of one feature in input units: ``values * std + mean``."""
        i = self._index(feature)
        stats = self._stats(market)
        return _as_array(values) * float(stats.std[i]) + float(stats.mean[i])

    def scale_to_input_units(self, market: str, feature: int | str, scales: Any) -> Any:
        """A normalised scale (standard deviation) of one feature in input units: ``scales * std``."""
        return _as_array(scales) * float(self._stats(market).std[self._index(feature)])

    # ---- saving -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists and floats) for a checkpoint; :meth:`from_dict` reads it back exactly."""
        return {
            "features": list(self.spec.features),
            "emitted": list(self.spec.emitted),
            "vol_window": self.spec.vol_window,
            "normalise": self.spec.normalise,
            "lags": self.spec.lags,
            "statistics": {
                name: {"mean": s.mean.tolist(), "std": s.std.tolist(), "vol_eps": float(s.vol_eps)}
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
        )
        stats = {
            str(name): MarketStatistics(
                np.asarray(s["mean"], dtype=np.float64), np.asarray(s["std"], dtype=np.float64), float(s["vol_eps"])
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


def _markets(df: pd.DataFrame):
    """``(name, dates, returns, prices)`` per market of a validated table, in order of appearance."""
    missing = [c for c in ("date", "market") if c not in df.columns]
    if missing:
        raise DataError(f"build_features: DataFrame lacks column(s) {missing}; use load_prices first")
    value_column = _value_column(df)
    for market in pd.unique(df["market"]):
        group = df[df["market"] == market].sort_values("date", kind="stable")
        name = str(market)
        yield (name, *_market_returns(group, name, value_column))


def _new_rows(s: MarketSeries, rows: pd.DataFrame, value_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a market's rows against its series; return the dates and values after its last day."""
    last = s.dates[-1]
    dates = pd.DatetimeIndex(rows["date"])
    values = rows[value_column].to_numpy(dtype=np.float64)
    after = np.asarray(dates > last)
    old_dates, old_values = dates[~after], values[~after]
    if len(old_dates):
        fitted = s.prices if value_column == "price" else s.returns
        assert fitted is not None
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


def build_features(
    df: pd.DataFrame,
    *,
    vol_window: int = 10,
    features: Sequence[str] = ("return", "vol"),
    normalise: bool = True,
) -> list[MarketSeries]:
    """Per-market features of a table returned by :func:`load_prices` (a :class:`FeaturePipeline`
    fitted on ``df`` and applied to it).

    Parameters
    ----------
    df:
        Long table with ``date``, ``market`` and ``price`` or ``return``
        (``df.attrs["value_column"]`` says which; otherwise the column present).
    vol_window:
        Rolling window (days) of the ``vol`` feature, ``>= 1``.
    features:
        Feature names, a non-empty subset of ``("return", "vol")`` in the
        order wanted.
    normalise:
        Z-score each feature per market (statistics kept on the series).

    Returns
    -------
    list[MarketSeries]
        One per market, in the order markets first appear in ``df``.

    Raises
    ------
    DataError, ConfigError
    """
    names = _check_features(features)
    spec = FeatureSpec(names, names, vol_window, normalise, 1)
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
        ``x`` ``(M, T_max, F)``, ``mask`` ``(M, T_max)`` bool, ``lengths`` ``(M,)`` long.
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
    for m, s in enumerate(series):
        x[m, : s.length] = torch.as_tensor(s.features, dtype=dtype)
        mask[m, : s.length] = True
    return Panel(series=series, x=x, mask=mask, lengths=torch.tensor(lengths, dtype=torch.long))


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
