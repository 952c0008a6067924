"""regime-dmm: market regimes with a Deep Markov Model in Pyro, regimes marginalised exactly.

>>> import regime_dmm as rd
>>> fit = rd.fit()                       # embedded simulated two-market data
>>> fit.regimes_frame().head()           # date, market, regime, prob_calm, ...
>>> fit.fitted.posterior()               # the fitted model: potentials and exact posterior
"""

from ._version import __version__
from .calibration import calibrate
from .config import FitConfig, ModelConfig, PenaltyConfig, TrainConfig
from .data import load_prices, simulate_default
from .errors import CheckpointError, ConfigError, DataError, RegimeDMMError, RegimeWarning, TrainingError
from .fitted import FittedModel
from .fitting import FitInterrupted, fit, resume_fit
from .persistence import load_fit
from .results import RegimeFit
from .sweep import sweep
from .update import update
from .walkforward import WalkForwardPlan, walk_forward

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FitConfig",
    "FitInterrupted",
    "FittedModel",
    "ModelConfig",
    "PenaltyConfig",
    "RegimeDMMError",
    "RegimeFit",
    "RegimeWarning",
    "TrainConfig",
    "TrainingError",
    "WalkForwardPlan",
    "__version__",
    "calibrate",
    "fit",
    "load_fit",
    "load_prices",
    "resume_fit",
    "simulate_default",
    "sweep",
    "update",
    "walk_forward",
]
