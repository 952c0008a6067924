"""Where a fit's data come from: a CSV file, a DataFrame, or the embedded simulation.

:func:`load_source` is the one entry point the fitting, loading and selection code use, so
that "no data given" means the same embedded default everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pandas as pd

from .loader import load_prices
from .simulator import SimulatedData, simulate_default

__all__ = ["DataSource", "EMBEDDED_LABEL", "LoadedData", "load_source"]

#: What the user may pass as data: a CSV path, a long DataFrame, or None for the embedded default.
DataSource: TypeAlias = str | Path | pd.DataFrame | None

#: How the embedded default is named in outputs.
EMBEDDED_LABEL = "simulated (embedded default: traditional_cre, tokenized_reit)"


@dataclass
class LoadedData:
    """A validated long table and where it came from.

    ``frame``: the :func:`~regime_dmm.data.load_prices` table; ``label``: the source as shown
    in outputs (the path as given, ``"DataFrame"`` or :data:`EMBEDDED_LABEL`); ``path``: the
    absolute CSV path (None for a DataFrame or the simulation); ``truth``: the simulation's
    true regimes and parameters (None for user data).
    """

    frame: pd.DataFrame
    label: str
    path: str | None
    truth: SimulatedData | None

    @property
    def simulated(self) -> bool:
        """True for the embedded simulation."""
        return self.truth is not None


def load_source(data: DataSource, *, min_observations: int, seed: int) -> LoadedData:
    """Load ``data`` (None: the embedded simulation with ``seed``) and validate it.

    Raises :class:`~regime_dmm.errors.DataError` naming the market, row and date of bad input.
    """
    if data is None:
        truth = simulate_default(seed=seed)
        return LoadedData(load_prices(truth.frame, min_observations=min_observations), EMBEDDED_LABEL, None, truth)
    frame = load_prices(data, min_observations=min_observations)
    if isinstance(data, pd.DataFrame):
        return LoadedData(frame, "DataFrame", None, None)
    return LoadedData(frame, str(data), str(Path(data).resolve()), None)
