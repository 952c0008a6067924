"""Data layer: loading and validating price series, the feature pipeline and the panel, simulator.

* :func:`load_prices` reads a long ``date,market,price|return`` CSV or DataFrame and
  raises :class:`~regime_dmm.errors.DataError` on anything unusable; :func:`load_source`
  adds the embedded default when no data are given.
* :class:`FeaturePipeline` makes every feature: fitted per-market statistics, the padded
  :class:`Panel`, the :class:`ModelData` tensors a model reads, new days, input units.
* :func:`simulate_default` generates the embedded two-market default data set with
  known regimes.
"""

from regime_dmm.data.features import (
    FEATURE_NAMES,
    FeaturePipeline,
    FeatureSpec,
    MarketSeries,
    MarketStatistics,
    ModelData,
    Panel,
    build_features,
    lagged_history,
    make_panel,
    rolling_log_rms,
)
from regime_dmm.data.loader import load_prices, read_prices
from regime_dmm.data.simulator import (
    DEFAULT_SPECS,
    REGIMES,
    MarketSpec,
    SimulatedData,
    simulate_default,
    simulate_markets,
    transition_matrix,
    write_csv,
)
from regime_dmm.data.sources import EMBEDDED_LABEL, DataSource, LoadedData, load_source

__all__ = [
    "DEFAULT_SPECS",
    "EMBEDDED_LABEL",
    "FEATURE_NAMES",
    "REGIMES",
    "DataSource",
    "FeaturePipeline",
    "FeatureSpec",
    "LoadedData",
    "MarketSeries",
    "MarketSpec",
    "MarketStatistics",
    "ModelData",
    "Panel",
    "SimulatedData",
    "build_features",
    "lagged_history",
    "load_prices",
    "load_source",
    "make_panel",
    "read_prices",
    "rolling_log_rms",
    "simulate_default",
    "simulate_markets",
    "transition_matrix",
    "write_csv",
]
