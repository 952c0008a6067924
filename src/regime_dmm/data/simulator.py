"""Seeded simulator of the embedded default data set.

Two markets, each a Gaussian hidden Markov model on daily log returns with four
regimes ``("calm", "neutral", "volatile", "panic")`` (volatility strictly
increasing in that order):

* ``traditional_cre``: business days from 2015-01-02, long-run regime usage
  about 70/20/8/2 %;
* ``tokenized_reit``: every calendar day (traded on-chain 7 days a week) from
  2019-06-01 (listed four years after ``traditional_cre``), usage about 35/45/15/5 % and
  roughly 12x the return volatility; about a third of its days see no trade (the price repeats
  the last traded one while the latent price moves on, as thinly traded property tokens do), and
  one day in 250 is a jump day (an extra move of four times the day's regime sd).

Transition matrices are built as ``P = diag(1 - lam) + lam[:, None] * pi[None, :]``
with per-regime leave rates ``lam`` and ``pi ∝ u * lam``, whose stationary
distribution is exactly the target usage ``u``; the first regime is drawn from it.
Prices start at 100 and follow ``p_t = p_{t-1} * exp(r_t)``. Shocks are Gaussian, or
Student-t with ``df`` degrees of freedom scaled to unit variance (``shocks="studentt:5"``), so
that heavy-tailed data with known regimes can be simulated.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from regime_dmm.errors import ConfigError

__all__ = [
    "REGIMES",
    "MarketSpec",
    "DEFAULT_SPECS",
    "SimulatedData",
    "transition_matrix",
    "simulate_markets",
    "simulate_default",
    "write_csv",
]

#: Regime names, in order of increasing volatility.
REGIMES: tuple[str, ...] = ("calm", "neutral", "volatile", "panic")

#: Price of every market on its first date.
START_PRICE = 100.0


@dataclass(frozen=True)
class MarketSpec:
    """Parameters of one simulated market (``K`` regimes).

    Attributes
    ----------
    name: market name.
    start: first date (anything :func:`pandas.Timestamp` accepts).
    freq: ``"B"`` (business days) or ``"D"`` (every calendar day).
    usage: ``(K,)`` target long-run share of days in each regime (sums to 1).
    leave_rates: ``(K,)`` per-day probability of leaving each regime, in (0, 1];
        the expected stay is about ``1 / leave_rate`` days.
    means: ``(K,)`` mean daily log return in each regime.
    sds: ``(K,)`` standard deviation of the daily log return, strictly increasing.
    no_trade_share: share of days without a trade: the price repeats the last traded one (the
        latent price moves on; the next trade shows the multi-day return).
    jump_prob: per-day probability of a jump day: the return gets an extra
        ``N(0, (jump_scale * sd)^2)`` of the day's regime sd.
    jump_scale: see ``jump_prob``.
    """

    name: str
    start: str
    freq: str
    usage: tuple[float, ...]
    leave_rates: tuple[float, ...]
    means: tuple[float, ...]
    sds: tuple[float, ...]
    no_trade_share: float = 0.0
    jump_prob: float = 0.0
    jump_scale: float = 4.0


#: The two markets of the embedded default data set.
DEFAULT_SPECS: tuple[MarketSpec, ...] = (
    MarketSpec(
        name="traditional_cre",
        start="2015-01-02",
        freq="B",
        usage=(0.70, 0.20, 0.08, 0.02),
        leave_rates=(0.04, 0.06, 0.10, 0.15),
        means=(0.0004, 0.0001, -0.0006, -0.003),
        sds=(0.005, 0.011, 0.022, 0.045),
    ),
    MarketSpec(
        name="tokenized_reit",
        start="2019-06-01",
        freq="D",
        usage=(0.35, 0.45, 0.15, 0.05),
        leave_rates=(0.06, 0.05, 0.10, 0.15),
        means=(0.006, 0.002, -0.008, -0.03),
        sds=(0.05, 0.10, 0.20, 0.40),
        no_trade_share=1 / 3,
        jump_prob=0.004,
        jump_scale=4.0,
    ),
)


@dataclass
class SimulatedData:
    """Output of the simulator.

    Attributes
    ----------
    frame:
        Long DataFrame ``date`` (datetime64[ns]), ``market`` (str), ``price``
        (float64): the input format of :func:`~regime_dmm.data.loader.load_prices`.
        ``n_days`` rows per market.
    regimes:
        Regime names (``K``).
    true_regimes:
        Per market, ``(n_days - 1,)`` int regime index of each return date
        (the dates of ``frame`` for that market without the first one).
    params:
        Per market, numpy arrays ``initial`` ``(K,)``, ``transition`` ``(K, K)``,
        ``mean`` ``(K,)`` and ``sd`` ``(K,)`` in daily log-return units; with Student-t shocks also
        ``df`` (a 0-d array: the shocks' degrees of freedom).
    traded:
        Per market, ``(n_days - 1,)`` bool: a trade on that return date (False: the price
        repeats the last traded one).
    """

    frame: pd.DataFrame
    regimes: tuple[str, ...]
    true_regimes: dict[str, np.ndarray]
    params: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    traded: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def markets(self) -> tuple[str, ...]:
        """Market names in frame order."""
        return tuple(self.true_regimes)

    def truth_frame(self) -> pd.DataFrame:
        """The true regimes as a long table: ``date`` (datetime64, each return date), ``market``, ``regime`` (name);
        what ``regime-dmm simulate --truth`` writes and ``regime-dmm calibrate --truth`` reads."""
        rows = []
        for market, states in self.true_regimes.items():
            dates = self.frame.loc[self.frame["market"] == market, "date"].iloc[1:]
            names = [self.regimes[k] for k in states]
            rows.append(pd.DataFrame({"date": pd.to_datetime(dates).values, "market": market, "regime": names}))
        return pd.concat(rows, ignore_index=True)


# ---------------------------------------------------------------------------
# Markov chain helpers
# ---------------------------------------------------------------------------


def transition_matrix(usage: Sequence[float], leave_rates: Sequence[float]) -> np.ndarray:
    """Transition matrix with stationary distribution exactly ``usage``.

    ``P = diag(1 - lam) + lam[:, None] * pi[None, :]`` with ``pi ∝ usage * lam``.
    Leaving regime ``k`` (probability ``lam_k``) re-draws the regime from ``pi``
    (possibly ``k`` again). Then ``u P = u - u*lam + (u . lam) pi = u``.

    Returns ``(K, K)``, rows summing to 1.
    """
    u = np.asarray(usage, dtype=np.float64)
    lam = np.asarray(leave_rates, dtype=np.float64)
    pi = u * lam
    pi = pi / pi.sum()
    return np.diag(1.0 - lam) + lam[:, None] * pi[None, :]


def _as_spec(spec: MarketSpec | Mapping[str, Any], K: int) -> MarketSpec:
    """Accept a :class:`MarketSpec` or a mapping of its fields; validate it."""
    if isinstance(spec, Mapping):
        try:
            spec = MarketSpec(**spec)
        except TypeError as exc:
            raise ConfigError(f"bad market spec {spec!r}: {exc}") from exc
    name = spec.name
    if spec.freq not in ("B", "D"):
        raise ConfigError(f"market '{name}': freq must be 'B' or 'D', got {spec.freq!r}")
    try:
        pd.Timestamp(spec.start)
    except Exception as exc:
        raise ConfigError(f"market '{name}': cannot parse start date {spec.start!r}") from exc
    arrays = {key: np.asarray(getattr(spec, key), dtype=np.float64) for key in ("usage", "leave_rates", "means", "sds")}
    for key, arr in arrays.items():
        if arr.shape != (K,) or not np.all(np.isfinite(arr)):
            raise ConfigError(f"market '{name}': {key} must be {K} finite numbers, got {getattr(spec, key)!r}")
    u, lam, sd = arrays["usage"], arrays["leave_rates"], arrays["sds"]
    if np.any(u <= 0) or abs(u.sum() - 1.0) > 1e-6:
        raise ConfigError(f"market '{name}': usage must be positive and sum to 1, got {tuple(u)}")
    if np.any(lam <= 0) or np.any(lam > 1):
        raise ConfigError(f"market '{name}': leave_rates must lie in (0, 1], got {tuple(lam)}")
    if np.any(sd <= 0) or np.any(np.diff(sd) <= 0):
        raise ConfigError(f"market '{name}': sds must be positive and strictly increasing, got {tuple(sd)}")
    if not 0 <= spec.no_trade_share < 1:
        raise ConfigError(f"market '{name}': no_trade_share must lie in [0, 1), got {spec.no_trade_share!r}")
    if not 0 <= spec.jump_prob <= 1 or spec.jump_scale < 0:
        raise ConfigError(f"market '{name}': jump_prob must lie in [0, 1] and jump_scale be >= 0")
    return spec


def _sample_chain(rng: np.random.Generator, initial: np.ndarray, P: np.ndarray, n: int) -> np.ndarray:
    """Sample ``n`` regime indices of a Markov chain; returns ``(n,)`` int64."""
    cum_p = np.cumsum(P, axis=1)
    cum_p[:, -1] = 1.0
    cum_init = np.cumsum(initial)
    cum_init[-1] = 1.0
    uniforms = rng.random(n)
    z = np.empty(n, dtype=np.int64)
    state = int(np.searchsorted(cum_init, uniforms[0], side="right"))
    z[0] = state
    rows = [row for row in cum_p]  # per-row views, avoids re-indexing in the loop
    for t in range(1, n):
        state = int(np.searchsorted(rows[state], uniforms[t], side="right"))
        z[t] = state
    return z


# ---------------------------------------------------------------------------
# simulation
# ---------------------------------------------------------------------------


def simulate_markets(
    specs: Sequence[MarketSpec | Mapping[str, Any]],
    seed: int = 0,
    n_days: int = 2501,
    regimes: Sequence[str] = REGIMES,
    shocks: str = "gaussian",
) -> SimulatedData:
    """Simulate several markets, each a hidden Markov model of daily log returns.

    Parameters
    ----------
    specs:
        One :class:`MarketSpec` (or mapping of its fields) per market.
    seed:
        Seed of :func:`numpy.random.default_rng`; the same seed gives identical output.
    n_days:
        Number of prices per market (``n_days - 1`` returns), ``>= 2``.
    regimes:
        Regime names (``K``); every spec gives ``K`` values per parameter.
    shocks:
        ``"gaussian"`` or ``"studentt:DF"`` (Student-t shocks with ``DF > 2`` degrees of freedom,
        scaled to unit variance, so a regime's sd is still ``sds``).

    Returns
    -------
    SimulatedData

    Raises
    ------
    ConfigError
        For a bad spec, ``n_days`` or ``shocks``.
    """
    if isinstance(n_days, bool) or not isinstance(n_days, numbers.Integral) or n_days < 2:
        raise ConfigError(f"n_days must be an integer >= 2, got {n_days!r}")
    regimes = tuple(regimes)
    K = len(regimes)
    checked = [_as_spec(s, K) for s in specs]
    if not checked:
        raise ConfigError("simulate_markets needs at least one market spec")
    names = [s.name for s in checked]
    if len(set(names)) != len(names):
        raise ConfigError(f"market names must be unique, got {names}")

    shock_df = _parse_shocks(shocks)
    rng = np.random.default_rng(seed)
    frames = []
    traded_days: dict[str, np.ndarray] = {}
    true_regimes: dict[str, np.ndarray] = {}
    params: dict[str, dict[str, np.ndarray]] = {}
    for spec in checked:
        P = transition_matrix(spec.usage, spec.leave_rates)
        initial = np.asarray(spec.usage, dtype=np.float64)
        initial = initial / initial.sum()
        mean = np.asarray(spec.means, dtype=np.float64)
        sd = np.asarray(spec.sds, dtype=np.float64)

        n_returns = n_days - 1
        z = _sample_chain(rng, initial, P, n_returns)
        returns = mean[z] + sd[z] * _shocks(rng, n_returns, shock_df)
        if spec.jump_prob > 0:
            jump = rng.random(n_returns) < spec.jump_prob
            returns = returns + jump * spec.jump_scale * sd[z] * rng.standard_normal(n_returns)
        log_prices = np.log(START_PRICE) + np.concatenate([[0.0], np.cumsum(returns)])
        prices = np.exp(log_prices)
        prices[0] = START_PRICE
        traded = np.ones(n_returns, dtype=bool)
        if spec.no_trade_share > 0:
            traded = rng.random(n_returns) >= spec.no_trade_share
            last = np.maximum.accumulate(np.where(np.concatenate([[True], traded]), np.arange(n_days), 0))
            prices = prices[last]  # a day without a trade shows the last traded price

        try:
            if spec.freq == "B":
                dates = pd.bdate_range(start=spec.start, periods=n_days)
            else:
                dates = pd.date_range(start=spec.start, periods=n_days, freq="D")
        except Exception as exc:  # out of the datetime64[ns] range
            raise ConfigError(f"market '{spec.name}': cannot build {n_days} dates from {spec.start}: {exc}") from exc

        frames.append(
            pd.DataFrame(
                {
                    "date": dates.astype("datetime64[ns]"),
                    "market": spec.name,
                    "price": prices,
                }
            )
        )
        true_regimes[spec.name] = z
        params[spec.name] = {"initial": initial, "transition": P, "mean": mean, "sd": sd}
        if shock_df is not None:
            params[spec.name]["df"] = np.asarray(shock_df, dtype=np.float64)
        traded_days[spec.name] = traded

    frame = pd.concat(frames, ignore_index=True)
    frame["market"] = frame["market"].astype(str)
    frame.attrs["value_column"] = "price"
    return SimulatedData(frame=frame, regimes=regimes, true_regimes=true_regimes, params=params, traded=traded_days)


def _parse_shocks(shocks: str) -> float | None:
    """``"gaussian"`` -> None; ``"studentt:DF"`` -> DF (> 2, for a finite variance)."""
    text = str(shocks).strip().lower()
    if text == "gaussian":
        return None
    if text.startswith("studentt:"):
        try:
            df = float(text.split(":", 1)[1])
        except ValueError:
            df = float("nan")
        if df > 2:
            return df
    raise ConfigError(f"shocks must be 'gaussian' or 'studentt:DF' with DF > 2, got {shocks!r}")


def _shocks(rng: np.random.Generator, n: int, df: float | None) -> np.ndarray:
    """Unit-variance shocks: standard normal, or Student-t(df) scaled by sqrt((df - 2) / df)."""
    if df is None:
        return rng.standard_normal(n)
    return rng.standard_t(df, size=n) * np.sqrt((df - 2.0) / df)


def simulate_default(
    seed: int = 0,
    n_days: int = 2501,
    *,
    shocks: str = "gaussian",
    no_trade_share: float | None = None,
    jump_prob: float | None = None,
) -> SimulatedData:
    """The embedded default data set: :data:`DEFAULT_SPECS` simulated with ``seed``.

    ``n_days`` prices (``n_days - 1`` returns) per market; 2,500 returns by default. ``shocks``:
    see :func:`simulate_markets`; ``no_trade_share`` and ``jump_prob`` replace the tokenized
    market's (0 and 0 give the clean series of regime-dmm 0.1).
    """
    specs = []
    for spec in DEFAULT_SPECS:
        if spec.no_trade_share or spec.jump_prob:  # the tokenized market
            spec = dataclasses.replace(
                spec,
                no_trade_share=spec.no_trade_share if no_trade_share is None else float(no_trade_share),
                jump_prob=spec.jump_prob if jump_prob is None else float(jump_prob),
            )
        specs.append(spec)
    return simulate_markets(specs, seed=seed, n_days=n_days, shocks=shocks)


def write_csv(data: SimulatedData, path: str | Path) -> Path:
    """Write ``data.frame`` as a ``date,market,price`` CSV (dates as YYYY-MM-DD).

    Prices are written at full precision so the file reloads to the same returns.
    Parent folders are created. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data.frame[["date", "market", "price"]].to_csv(path, index=False, date_format="%Y-%m-%d")
    return path
