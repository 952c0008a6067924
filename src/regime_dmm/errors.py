"""Error types raised by regime-dmm.

Every error a user can cause (bad data, bad configuration, a bad checkpoint) is a
subclass of :class:`RegimeDMMError`; the CLI turns these into a one-line message and
exit code 2. Anything else escaping is a bug.
"""

__all__ = [
    "QUIET_MODULES",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "RegimeDMMError",
    "RegimeWarning",
    "TrainingError",
]

#: Libraries whose warnings (deprecations, migration notices, NaN notes the fit handles itself) are kept off the
#: terminal, by the command line and by the processes it starts: the package's own warnings are its
#: ``WARNING ...`` lines (:class:`RegimeWarning`).
QUIET_MODULES = r"(arviz|xarray|pyro|torch|matplotlib|pandas|numpy|scipy|h5netcdf|h5py|tqdm)(\..*)?"


class RegimeDMMError(Exception):
    """Base class of the package's own, user-facing errors."""


class DataError(RegimeDMMError, ValueError):
    """The input data is unusable; the message names the market, row or date."""


class ConfigError(RegimeDMMError, ValueError):
    """A configuration value is missing, misspelt or out of range."""


class CheckpointError(RegimeDMMError):
    """A model file is missing, truncated, tampered with or not ours."""


class TrainingError(RegimeDMMError, RuntimeError):
    """Training could not produce a sound model (for example repeated non-finite losses)."""


class RegimeWarning(UserWarning):
    """A finding of a fit that its results should be read with (data quality, regimes the data cannot tell
    apart, collapse): :func:`regime_dmm.fit` issues one per finding through :mod:`warnings`, the command line
    prints them as ``WARNING ...`` lines, and ``summary.json`` keeps them. Silence them with
    ``warnings.simplefilter("ignore", rd.RegimeWarning)``."""
