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
with :func:`to_input_units` and :func:`scale_to_input_units`.
"""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from regime_dmm.errors import ConfigError, DataError

__all__ = [
    "FEATURE_NAMES",
    "MarketSeries",
    "Panel",
    "build_features",
    "make_panel",
    "rolling_log_rms",
    "to_input_units",
    "scale_to_input_units",
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


def build_features(
    df: pd.DataFrame,
    *,
    vol_window: int = 10,
    features: Sequence[str] = ("return", "vol"),
    normalise: bool = True,
) -> list[MarketSeries]:
    """Compute per-market features from a table returned by :func:`load_prices`.

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
    """
    if isinstance(vol_window, bool) or not isinstance(vol_window, numbers.Integral):
        raise ConfigError(f"vol_window must be an integer number of days, got {vol_window!r}")
    if vol_window < 1:
        raise ConfigError(f"vol_window must be at least 1 day, got {vol_window}")
    names = _check_features(features)
    missing = [c for c in ("date", "market") if c not in df.columns]
    if missing:
        raise DataError(f"build_features: DataFrame lacks column(s) {missing}; use load_prices first")
    value_column = _value_column(df)

    out: list[MarketSeries] = []
    for market in pd.unique(df["market"]):
        group = df[df["market"] == market].sort_values("date", kind="stable")
        dates = pd.DatetimeIndex(group["date"]).astype("datetime64[ns]")
        values = group[value_column].to_numpy(dtype=np.float64)
        name = str(market)
        if value_column == "price":
            if values.shape[0] < 2:
                raise DataError(f"market '{name}' has fewer than 2 prices, so no returns")
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise DataError(f"market '{name}': prices must be finite and positive")
            returns = np.diff(np.log(values))
            prices: np.ndarray | None = values[1:].copy()
            dates = dates[1:]
        else:
            if values.shape[0] < 1:
                raise DataError(f"market '{name}' has no returns")
            if not np.all(np.isfinite(values)):
                raise DataError(f"market '{name}': returns must be finite")
            returns = values.copy()
            prices = None

        sd = float(np.std(returns))
        if sd == 0.0:
            raise DataError(f"market '{name}' is a constant series (all returns equal)")

        columns = []
        for feature in names:
            if feature == "return":
                columns.append(returns)
            else:  # "vol"
                columns.append(rolling_log_rms(returns, vol_window, _VOL_EPS_FRACTION * sd))
        raw = np.stack(columns, axis=1).astype(np.float64)  # (T, F)

        if normalise:
            mean = raw.mean(axis=0)
            std = raw.std(axis=0)
            # A feature constant over the market (possible for 'vol') is only centred.
            std = np.where(std > 0, std, 1.0)
            feats = (raw - mean) / std
        else:
            mean = np.zeros(raw.shape[1])
            std = np.ones(raw.shape[1])
            feats = raw

        out.append(
            MarketSeries(
                name=name,
                dates=dates,
                returns=returns,
                prices=prices,
                features=np.ascontiguousarray(feats, dtype=np.float64),
                feature_names=names,
                feature_mean=mean.astype(np.float64),
                feature_std=std.astype(np.float64),
            )
        )
    return out


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
            raise DataError(
                f"market '{s.name}' has features {s.feature_names}, but '{series[0].name}' has {names}"
            )
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


def to_input_units(series: MarketSeries, feature_index: int | str, values: Any) -> Any:
    """Map normalised values of one feature back to input units: ``values * std + mean``.

    ``values`` may be a number, numpy array or torch tensor (the type is kept);
    ``feature_index`` is an index or a feature name.
    """
    i = _feature_index(series, feature_index)
    return _as_array(values) * float(series.feature_std[i]) + float(series.feature_mean[i])


def scale_to_input_units(series: MarketSeries, feature_index: int | str, scales: Any) -> Any:
    """Map a scale (standard deviation) of one feature back to input units: ``scales * std``."""
    i = _feature_index(series, feature_index)
    return _as_array(scales) * float(series.feature_std[i])
