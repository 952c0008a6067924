"""Configuration of a fit: model, penalties, training. Plain dataclasses, YAML in and out.

Every option has a default that works on the embedded data; a YAML file may set any
subset, in sections ``model``, ``penalties``, ``training``, ``data`` (unknown keys are refused
with the closest valid name), and the CLI flags override both.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["DEFAULT_NAMES", "DEFAULT_PRIOR", "DataConfig", "FitConfig", "ModelConfig", "PenaltyConfig", "TrainConfig"]

DEFAULT_NAMES = {
    2: ("calm", "volatile"),
    3: ("calm", "volatile", "panic"),
    4: ("calm", "neutral", "volatile", "panic"),
}
DEFAULT_PRIOR = {"calm": 2.0, "neutral": 2.0, "volatile": 1.0, "panic": 0.5}


@dataclass
class ModelConfig:
    """What the model is. Regimes are ordered from least to most volatile."""

    num_regimes: int = 4
    regime_names: tuple[str, ...] | None = None  # default: calm/neutral/volatile/panic for K=4
    classic: bool = False  # plain Gaussian Markov-switching model of the return (MLE)
    # "studentt" (default: heavy tails, so that one large day is not a regime visit; chosen by held-out
    # likelihood, see the README) or "gaussian". The warm start then fits Student-t HMMs too (see
    # training.starting_values.warm_start).
    emission: str = "studentt"
    # Emitted features. The networks always see the lagged return and realised volatility;
    # emitting "vol" too is an option (it lowers accuracy on the embedded data: see README).
    features: tuple[str, ...] = ("return",)
    vol_window: int = 10  # days in the realised-volatility feature
    normalise: bool = True  # z-score each feature per market (statistics are kept)
    history: int = 5  # lagged days fed to the networks
    hidden_size: int = 16
    covariate_transitions: bool = True  # transition logits adjusted by a network of history
    emission_network: bool = True  # regime emission locations shifted by a network of history
    network_prior_scale: float = 0.1  # sd of the Gaussian prior on network weights (0 = none)
    regime_prior: tuple[float, ...] | None = None  # Dirichlet weights; default calm 2, neutral 2, volatile 1, panic 0.5
    stickiness: float = 10.0  # extra Dirichlet weight on the diagonal of the transition matrix
    # Guard against degenerate regimes: the calmest regime's sd may not fall below this fraction of the
    # market's robust sd (1.4826 x the median absolute deviation of its daily returns), and a warm start
    # that leaves a regime of a handful of days is redone with a prior on the regime means.
    # 0 turns the guard off (the behaviour of regime-dmm 0.1).
    min_scale: float = 0.25
    # Separated regimes: the sd of each regime's return is at least min_ratio times the next calmer one's
    # (a steep prior wall on the ordered log-scale steps; 0 or 1 = no wall). 1.5 is where the overlap check
    # (regime_checks) calls two regimes of equal mean hard to tell apart: Hellinger distance 0.2.
    min_ratio: float = 1.5
    # Shared regime semantics across markets (exact and relaxed modes, two or more markets): each market keeps
    # its scale, transition matrix and usage; the ladder of volatility ratios between adjacent regimes and the
    # regimes' mean returns (normalised units) are "none": free per market, "partial": drawn around a shared
    # ladder with a learned spread (hierarchical prior), or "full": one ladder for every market.
    pooling: str = "partial"
    # How regimes are named across markets (regime_dmm.naming): "relative" (default): by each market's own
    # volatility order; "shared": on one ladder of daily return sds in input units for all markets, so that
    # "panic" in a REIT index and in a token are moves of about the same size. The fit is the same either way.
    naming: str = "relative"

    def names(self) -> tuple[str, ...]:
        """The ``K`` regime names, calmest first (defaults: calm/volatile, calm/volatile/panic,
        calm/neutral/volatile/panic, else ``regime_0..``)."""
        if self.regime_names is not None:
            return tuple(self.regime_names)
        if self.num_regimes in DEFAULT_NAMES:
            return DEFAULT_NAMES[self.num_regimes]
        return tuple(f"regime_{k}" for k in range(self.num_regimes))

    def prior_weights(self) -> tuple[float, ...]:
        """The ``K`` Dirichlet weights of the regime prior (calm 2, neutral 2, volatile 1, panic 0.5 by name;
        else a linear ramp from 2 down to 0.5)."""
        if self.regime_prior is not None:
            return tuple(float(w) for w in self.regime_prior)
        names = self.names()
        if all(n in DEFAULT_PRIOR for n in names):
            return tuple(DEFAULT_PRIOR[n] for n in names)
        step = 1.5 / max(self.num_regimes - 1, 1)
        return tuple(2.0 - step * k for k in range(self.num_regimes))


@dataclass
class PenaltyConfig:
    """Weights of the anti-collapse penalties (``pyro.factor`` terms, in nats).

    The one penalty-weights type: the configuration section ``penalties`` and the weights the
    annealing schedules switch on in :class:`~regime_dmm.models.base.AnnealState` (see
    :mod:`regime_dmm.models.penalties` for the formulas).
    """

    diversity_weight: float = 0.2
    diversity_threshold: float = 0.5  # no penalty while no regime exceeds this usage
    separation_weight: float = 0.1
    separation_scale: float = 0.5  # distance (normalised units) at which alike-ness fades
    entropy_weight: float = 0.5
    entropy_target: float = 0.7  # nats
    # A regime used on fewer than max(rarity_threshold, 5 / days) of a market's days costs up to
    # rarity_weight nats (a regime may not shrink onto a handful of days). Exact inference only: it
    # needs a regime's usage over all days.
    rarity_weight: float = 5.0
    rarity_threshold: float = 0.01


@dataclass
class TrainConfig:
    """How the model is trained."""

    inference: str = "exact"  # "exact" (regimes marginalised) or "relaxed" (Gumbel-Softmax)
    guide: str = "map"  # "map" (MAP of the globals) or "normal" (mean-field normal)
    # "lbfgs" (default): Adam through the annealing warm-up and ramp, then full-batch L-BFGS (strong Wolfe) on
    # the final objective, one iteration an epoch, stopped when it stops improving. It needs a deterministic
    # objective: exact inference with the map guide; elsewhere (normal guide, relaxed) Adam is used throughout.
    # "adam": ClippedAdam for every epoch (regime-dmm 0.3's training).
    optimizer: str = "lbfgs"
    epochs: int = 300  # at most, per restart (with lbfgs: the annealing's Adam epochs plus the L-BFGS iterations)
    # With optimizer lbfgs: the Adam epochs over which the warm-up and the ramp run (in the ratio
    # warmup_fraction : ramp_fraction; at most their share of the epochs); every later epoch is one L-BFGS
    # iteration on the final objective.
    anneal_epochs: int = 30
    lr: float = 1e-3
    clip_norm: float = 5.0
    # With optimizer lbfgs each restart runs to its optimum: on the embedded default three restarts end within
    # 0.42 nats of each other (0.3.0's Adam: 30.6 nats apart; README, Training), so one is the default; more
    # explore other warm starts.
    restarts: int = 1
    seed: int = 0
    warmup_fraction: float = 0.2  # beta = 0 for this share of the epochs (lbfgs: of the anneal_epochs' span)
    ramp_fraction: float = 0.2  # then a linear ramp to 1 over this share
    tau_start: float = 1.0
    tau_floor: float = 0.5
    patience: int = 30  # early stopping: epochs without relative improvement > tolerance
    tolerance: float = 1e-5
    min_observations: int = 30
    dtype: str = "float64"
    # relaxed inference only:
    window_length: int = 64  # days per training window (minibatches of sequence windows)
    batch_windows: int = 32  # windows per SVI step
    straight_through: bool = False  # hard one-hot forward, relaxed gradients backward


@dataclass
class DataConfig:
    """How each market's rows become days (see :mod:`regime_dmm.data.observations`).

    ``stale``: ``mask`` (default) reads a day without a trade - ``volume``/``trades`` 0, else a price
    exactly equal to the previous one - as missing, and the next return as a multi-day return;
    ``keep`` reads it as a zero return. ``max_gap``: the longest run of missing calendar days read
    as a closed market (holidays); longer runs are masked days and reported. ``bad_ticks``: a huge
    move reversed the next day is ``mask``-ed (default), only reported (``warn``) or refused
    (``error``). ``calendar``: ``auto`` (inferred per market), ``business``, ``daily`` or ``periodic``
    (each row one period: weekly or monthly data).
    """

    stale: str = "mask"
    max_gap: int = 5
    bad_ticks: str = "mask"
    calendar: str = "auto"

    def validate(self) -> DataConfig:
        """``self`` when every option is valid; else :class:`ConfigError` naming it."""
        if self.stale not in ("mask", "keep"):
            raise ConfigError(f"data.stale must be mask or keep, got {self.stale!r}")
        if self.bad_ticks not in ("warn", "mask", "error"):
            raise ConfigError(f"data.bad_ticks must be warn, mask or error, got {self.bad_ticks!r}")
        if self.calendar not in ("auto", "business", "daily", "periodic"):
            raise ConfigError(f"data.calendar must be auto, business, daily or periodic, got {self.calendar!r}")
        if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, int) or self.max_gap < 0:
            raise ConfigError(f"data.max_gap must be a whole number of days >= 0, got {self.max_gap!r}")
        return self


@dataclass
class FitConfig:
    """The whole configuration of a fit: sections ``model``, ``penalties`` and ``training``.

    Build it from a YAML file (:meth:`from_yaml`), a mapping (:meth:`from_dict`) or change a few
    options of a copy (:meth:`replace`); :meth:`validate` raises :class:`ConfigError` naming
    the first bad option.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    penalties: PenaltyConfig = field(default_factory=PenaltyConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def annealing_epochs(self, refine: bool) -> int:
        """The epochs after which training is on the final objective (beta = 1): the ``warmup_fraction +
        ramp_fraction`` share of ``training.epochs``, or, when training ends in L-BFGS (``refine``),
        ``training.anneal_epochs``, but no more than that share (a short run still ends in L-BFGS)."""
        t = self.training
        share = int((t.warmup_fraction + t.ramp_fraction) * t.epochs)
        return min(t.anneal_epochs, share) if refine else share

    def schedule_epochs(self, refine: bool) -> int:
        """The number of epochs the annealing schedules' fractions refer to: ``training.epochs``, or with
        L-BFGS refinement the span in which the warm-up and ramp fill exactly ``training.anneal_epochs``."""
        t = self.training
        share = t.warmup_fraction + t.ramp_fraction
        if not refine or share <= 0:
            return t.epochs
        return max(1, round(self.annealing_epochs(True) / share))

    def validate(self) -> FitConfig:
        """``self`` when every option is in range; else :class:`ConfigError` naming the option."""
        m, p, t = self.model, self.penalties, self.training
        checks = [
            (m.num_regimes >= 2, f"model.num_regimes must be >= 2, got {m.num_regimes}"),
            (
                len(m.names()) == m.num_regimes,
                f"model.regime_names has {len(m.names())} names for {m.num_regimes} regimes",
            ),
            (len(set(m.names())) == m.num_regimes, "model.regime_names must be distinct"),
            (
                len(m.prior_weights()) == m.num_regimes,
                f"model.regime_prior has {len(m.prior_weights())} weights for {m.num_regimes} regimes",
            ),
            (all(w > 0 for w in m.prior_weights()), "model.regime_prior weights must be > 0"),
            (
                m.emission in ("gaussian", "studentt"),
                f"model.emission must be gaussian or studentt, got {m.emission!r}",
            ),
            (
                set(m.features) <= {"return", "vol"} and "return" in m.features,
                f"model.features must contain 'return' and may contain 'vol', got {list(m.features)}",
            ),
            (m.vol_window >= 1, f"model.vol_window must be >= 1, got {m.vol_window}"),
            (m.history >= 1, f"model.history must be >= 1, got {m.history}"),
            (m.stickiness >= 0, f"model.stickiness must be >= 0, got {m.stickiness}"),
            (0 <= m.min_scale < 1, f"model.min_scale must be in [0, 1), got {m.min_scale}"),
            (
                m.min_ratio == 0 or 1 <= m.min_ratio <= 10,
                f"model.min_ratio must be 0 (off) or in [1, 10], got {m.min_ratio}",
            ),
            (
                m.naming in ("relative", "shared"),
                f"model.naming must be relative or shared, got {m.naming!r}",
            ),
            (
                m.pooling in ("none", "partial", "full"),
                f"model.pooling must be none, partial or full, got {m.pooling!r}",
            ),
            (
                m.pooling == "none" or m.normalise,
                "model.pooling ties regime means in normalised units: it needs model.normalise: true "
                "(or set model.pooling: none)",
            ),
            (
                not (m.pooling == "full" and t.inference == "relaxed"),
                "model.pooling: full is not available with training.inference: relaxed (use partial or none)",
            ),
            (
                0 <= p.rarity_threshold < 0.5,
                f"penalties.rarity_threshold must be in [0, 0.5), got {p.rarity_threshold}",
            ),
            (t.inference in ("exact", "relaxed"), f"training.inference must be exact or relaxed, got {t.inference!r}"),
            (t.guide in ("map", "normal"), f"training.guide must be map or normal, got {t.guide!r}"),
            (t.optimizer in ("lbfgs", "adam"), f"training.optimizer must be lbfgs or adam, got {t.optimizer!r}"),
            (t.epochs >= 1, f"training.epochs must be >= 1, got {t.epochs}"),
            (t.anneal_epochs >= 0, f"training.anneal_epochs must be >= 0, got {t.anneal_epochs}"),
            (t.lr > 0, f"training.lr must be > 0, got {t.lr}"),
            (t.restarts >= 1, f"training.restarts must be >= 1, got {t.restarts}"),
            (0 <= t.warmup_fraction < 1, "training.warmup_fraction must be in [0, 1)"),
            (0 <= t.ramp_fraction <= 1, "training.ramp_fraction must be in [0, 1]"),
            (t.tau_start >= t.tau_floor > 0, "training.tau_floor must be in (0, tau_start]"),
            (t.dtype in ("float32", "float64"), f"training.dtype must be float32 or float64, got {t.dtype!r}"),
            (t.window_length >= 2, f"training.window_length must be >= 2, got {t.window_length}"),
            (t.batch_windows >= 1, f"training.batch_windows must be >= 1, got {t.batch_windows}"),
            (0 < p.diversity_threshold < 1, "penalties.diversity_threshold must be in (0, 1)"),
            (
                min(p.diversity_weight, p.separation_weight, p.entropy_weight, p.rarity_weight) >= 0,
                "penalty weights must be >= 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.data.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples): what ``summary.json`` and the checkpoints store."""
        out = dataclasses.asdict(self)
        for section in out.values():
            for key, value in section.items():
                if isinstance(value, tuple):
                    section[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, origin: str = "configuration") -> FitConfig:
        """Build and validate from a mapping of sections; unknown sections and options raise
        :class:`ConfigError` with the closest valid name (``origin`` names the source in messages)."""
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a mapping with sections model/penalties/training/data")
        sections = {"model": ModelConfig, "penalties": PenaltyConfig, "training": TrainConfig, "data": DataConfig}
        built = {}
        for name in data:
            if name not in sections:
                raise ConfigError(f"{origin}: unknown section {name!r}{_hint(name, sections)}")
        for name, klass in sections.items():
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: section {name!r} must be a mapping")
            known = {f.name for f in dataclasses.fields(klass)}
            for key in values:
                if key not in known:
                    raise ConfigError(f"{origin}: unknown option {name}.{key}{_hint(key, known)}")
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            built[name] = klass(**kwargs)
        return cls(**built).validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> FitConfig:
        """Read a YAML file (any subset of the sections); :class:`ConfigError` if missing or invalid."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        return cls.from_dict(data, origin=str(path))

    def with_num_regimes(self, num_regimes: int) -> FitConfig:
        """A copy with ``num_regimes`` regimes; regime names and prior weights of another length are dropped
        (the defaults for ``num_regimes`` replace them). Raises :class:`ConfigError` for ``num_regimes < 2``."""
        model: dict[str, Any] = {"num_regimes": num_regimes}
        if self.model.regime_names is not None and len(self.model.regime_names) != num_regimes:
            model["regime_names"] = None
        if self.model.regime_prior is not None and len(self.model.regime_prior) != num_regimes:
            model["regime_prior"] = None
        return self.replace(model=model)

    def replace(self, **sections: dict[str, Any]) -> FitConfig:
        """A copy with some options changed, e.g. ``cfg.replace(training={"epochs": 50})``."""
        data = self.to_dict()
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return FitConfig.from_dict(data)


def _hint(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(options))})"
