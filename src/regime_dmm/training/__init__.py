"""Training: starting values, the SVI and L-BFGS loops, annealing schedules, restarts, the registry
of model variants, the run state and collapse checks."""

from .restarts import FitInterrupted, TrainedRun, run_restarts
from .run_state import RunCheckpoint, RunState
from .variants import VARIANTS, Variant, mode_of, variant_for

__all__ = [
    "FitInterrupted",
    "RunCheckpoint",
    "RunState",
    "TrainedRun",
    "VARIANTS",
    "Variant",
    "mode_of",
    "run_restarts",
    "variant_for",
]
