"""Where a fit's data come from: a CSV file, a DataFrame, or the embedded simulation.

:func:`load_source` is the one entry point the fitting, loading and selection code use, so
that "no data given" means the same embedded default everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pandas as pd

from .loader import load_prices
from .simulator import SimulatedData, simulate_default

__all__ = ["DataSource", "EMBEDDED_LABEL", "LoadedData", "load_source"]

#: What the user may pass as data: a CSV path, a DataFrame, several of them, or None for the embedded default.
DataSource: TypeAlias = str | Path | pd.DataFrame | Sequence[str | Path | pd.DataFrame] | None

#: How the embedded default is named in outputs.
EMBEDDED_LABEL = "simulated (embedded default: traditional_cre, tokenized_reit)"


@dataclass
class LoadedData:
    """A validated long table and where it came from.

    ``frame``: the :func:`~regime_dmm.data.load_prices` table; ``label``: the source as shown
    in outputs (the path as given, ``"DataFrame"`` or :data:`EMBEDDED_LABEL`; several joined by
    commas); ``path``: the absolute CSV path, or the list of them for several files (None when a
    DataFrame or the simulation is among the sources); ``truth``: the simulation's true regimes
    and parameters (None for user data); ``shapes``: the shape the loader recognised in each source.
    """

    frame: pd.DataFrame
    label: str
    path: str | list[str] | None
    truth: SimulatedData | None

    @property
    def shapes(self) -> list[str]:
        """What the loader recognised in each source (``"<source>: <shape>"``)."""
        return list(self.frame.attrs.get("shapes", []))

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
    if isinstance(data, (str, Path)):
        return LoadedData(frame, str(data), str(Path(data).resolve()), None)
    items = list(data)
    label = ", ".join("DataFrame" if isinstance(d, pd.DataFrame) else str(d) for d in items)
    paths = None if any(isinstance(d, pd.DataFrame) for d in items) else [str(Path(d).resolve()) for d in items]
    return LoadedData(frame, label, paths, None)
