"""Data layer: loading and validating price series, features and the panel, simulator.

* :func:`load_prices` reads a long ``date,market,price|return`` CSV or DataFrame and
  raises :class:`~regime_dmm.errors.DataError` on anything unusable.
* :func:`build_features` / :func:`make_panel` turn it into per-market feature arrays
  and padded ``(M, T_max, F)`` tensors.
* :func:`simulate_default` generates the embedded two-market default data set with
  known regimes.
"""

from regime_dmm.data.features import (
    FEATURE_NAMES,
    MarketSeries,
    Panel,
    build_features,
    make_panel,
    rolling_log_rms,
    scale_to_input_units,
    to_input_units,
)
from regime_dmm.data.loader import load_prices
from regime_dmm.data.simulator import (
    DEFAULT_SPECS,
    REGIMES,
    MarketSpec,
    SimulatedData,
    simulate_default,
    simulate_markets,
    stationary_distribution,
    transition_matrix,
    write_csv,
)

__all__ = [
    "DEFAULT_SPECS",
    "FEATURE_NAMES",
    "REGIMES",
    "MarketSeries",
    "MarketSpec",
    "Panel",
    "SimulatedData",
    "build_features",
    "load_prices",
    "make_panel",
    "rolling_log_rms",
    "scale_to_input_units",
    "simulate_default",
    "simulate_markets",
    "stationary_distribution",
    "to_input_units",
    "transition_matrix",
    "write_csv",
]
