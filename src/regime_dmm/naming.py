"""Regime names on one volatility scale for all markets (``model.naming: shared``).

A fit orders each market's regimes by that market's own volatility (the ladder is ordered by
construction), so its names are **relative**: "volatile" is the market's third-quietest regime. Across
markets of very different volatility - a REIT index against a tokenized property - that is the main trap of
a comparison: a token's "volatile" regime may move less than the index's "neutral" one (issue #20, found on
VNQ against PAXG).

**Shared** names put every market's regimes on one ladder in the input's units. The ladder's level of rank
``k`` is the geometric mean across markets of their ``k``-th regime's daily return sd,

    L_k = exp(mean_m log sd_mk),

and a regime is named after the level nearest to its own sd on the log scale (the cut between two names is
the geometric midpoint ``sqrt(L_k L_{k+1})``). A regime named higher is then more volatile, in input units,
than every regime named lower, in every market; a market may use a name twice (a token's two highest
regimes both "panic") and leave one unused (no "calm" in the token). With one market, or markets of the
same volatility, the shared names are the relative ones.

The fit itself does not change: naming is a reading of the fitted sds (``summary.json``'s ``daily_sd`` and
``shared_name``, ``regimes.csv``'s ``shared_regime``); ``model.naming: shared`` makes the shared name the one
the terminal, ``regimes.csv``'s ``regime`` and ``viterbi`` and ``summary.json``'s ``current_regime`` show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["NAMINGS", "RELATIVE_NOTE", "shared_ladder", "shared_names", "sum_by_name"]

#: The values of ``model.naming``.
NAMINGS = ("relative", "shared")

RELATIVE_NOTE = (
    "names are relative to each market's own volatility (a token's 'volatile' may move less than an index's "
    "'neutral'): compare the daily sds, or use model.naming: shared"
)


def shared_ladder(daily_sd: Mapping[str, Sequence[float]]) -> np.ndarray:
    """The shared ladder ``(K,)``: per rank, the geometric mean across markets of the regimes' daily return sd
    (input units). ``daily_sd``: market -> its K regimes' sds, least volatile first.

    Raises ``ValueError`` when there is no market, the markets have different K, an sd is not positive and
    finite, or a market's sds do not increase (a fit's ladder always does)."""
    if not daily_sd:
        raise ValueError("shared_ladder: no market")
    rows = [np.asarray(v, dtype=float) for v in daily_sd.values()]
    if len({r.shape for r in rows}) != 1 or rows[0].ndim != 1:
        raise ValueError(f"shared_ladder: every market needs the same number of regimes, got {[r.shape for r in rows]}")
    sds = np.stack(rows)
    if not (np.isfinite(sds).all() and (sds > 0).all()):
        bad = [m for m, r in zip(daily_sd, rows) if not (np.isfinite(r).all() and (r > 0).all())]
        raise ValueError(f"shared_ladder: daily sds must be positive and finite (markets {bad})")
    unordered = [m for m, r in zip(daily_sd, rows) if (np.diff(r) <= 0).any()]
    if unordered:
        raise ValueError(f"shared_ladder: each market's sds must increase, least volatile first (markets {unordered})")
    return np.exp(np.log(sds).mean(0))


def shared_names(daily_sd: Mapping[str, Sequence[float]], names: Sequence[str]) -> dict[str, list[str]]:
    """Each market's regimes named on the shared ladder (module docstring): market -> K names, in the order of
    ``daily_sd``'s regimes. ``names``: the K names, least volatile first. Raises ``ValueError`` as
    :func:`shared_ladder`, or when ``names`` does not have K entries."""
    ladder = shared_ladder(daily_sd)
    if len(names) != ladder.size:
        raise ValueError(f"shared_names: {len(names)} names for {ladder.size} regimes")
    cuts = np.sqrt(ladder[:-1] * ladder[1:])
    return {
        market: [names[int(np.searchsorted(cuts, sd, side="right"))] for sd in np.asarray(sds, dtype=float)]
        for market, sds in daily_sd.items()
    }


def sum_by_name(names: Sequence[str], order: Sequence[str], probs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``probs (..., K)`` over a market's K regimes summed by name: ``(used, (..., N))`` with the N names of
    ``order`` that ``names`` (each regime's shared name) uses, in that order; a name given to two regimes carries
    both probabilities."""
    used = [n for n in order if n in names]
    probs = np.asarray(probs, dtype=float)
    return used, np.stack([probs[..., [k for k, n in enumerate(names) if n == name]].sum(-1) for name in used], -1)
