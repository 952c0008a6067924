"""Regimes across markets: how often they coincide, and which market's stress comes first.

For every pair of markets, on the dates both have (a 7-day token and a business-day REIT share
the business days of their common range):

* **co-occurrence**: counts and shares of each (regime of the first market, regime of the
  second) pair of most probable smoothed regimes, and the probability of each regime of the
  second market given the first's;
* **lead / lag**: the cross-correlation of the two markets' *stress probabilities* (the smoothed
  probability of the stress regimes, ``volatile`` and ``panic`` by default) at lags of
  ``-max_lag .. max_lag`` shared days. A positive best lag ``L`` means the first market's stress
  leads the second's by ``L`` days. Its uncertainty is a 90 % interval from a moving-block
  bootstrap of the shared days (blocks of ``2 * max_lag`` days keep the persistence of regimes;
  Kunsch 1989, "The jackknife and the bootstrap for general stationary observations").
  Alongside: for each entry of the second market into stress, the lag to the nearest entry of the
  first market within ``max_lag`` days (median and count), an event view of the same question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .plots import regime_colours
from .results import MarketResult, RegimeFit

__all__ = ["STRESS_REGIMES", "cross_market", "plot_cross_market"]

#: Regimes whose probabilities make the stress probability (those of the fit that exist).
STRESS_REGIMES = ("volatile", "panic")


def _stress(m: MarketResult, regimes: Sequence[str], stress: Sequence[str]) -> np.ndarray:
    index = [regimes.index(r) for r in stress if r in regimes] or [len(regimes) - 1]  # default: the top regime
    return np.asarray(m.smoothed, dtype=float)[:, index].sum(-1)


def _xcorr(a: np.ndarray, b: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """``corr(a_t, b_{t+lag})`` for each lag (NaN where a series is constant)."""
    out = np.full(len(lags), np.nan)
    n = len(a)
    for i, lag in enumerate(lags):
        x, y = (a[: n - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: n + lag])
        if len(x) > 2 and x.std() > 0 and y.std() > 0:
            out[i] = float(np.corrcoef(x, y)[0, 1])
    return out


def _entries(flag: np.ndarray) -> np.ndarray:
    """Positions where ``flag`` turns on."""
    return np.flatnonzero(flag[1:] & ~flag[:-1]) + 1


def _pair(
    a: MarketResult,
    b: MarketResult,
    regimes: Sequence[str],
    stress: Sequence[str],
    max_lag: int,
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    shared = a.dates.intersection(b.dates)
    ia, ib = a.dates.get_indexer(shared), b.dates.get_indexer(shared)
    k = len(regimes)
    za, zb = a.smoothed.argmax(-1)[ia], b.smoothed.argmax(-1)[ib]
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (za, zb), 1)
    out: dict[str, Any] = {
        "first": a.name,
        "second": b.name,
        "shared_days": int(len(shared)),
        "first_date": shared[0].strftime("%Y-%m-%d") if len(shared) else None,
        "last_date": shared[-1].strftime("%Y-%m-%d") if len(shared) else None,
        "cooccurrence_counts": counts.tolist(),
        "cooccurrence_share": np.round(counts / max(len(shared), 1), 6).tolist(),
        "second_given_first": np.round(counts / np.maximum(counts.sum(1, keepdims=True), 1), 6).tolist(),
        "stress_regimes": [r for r in stress if r in regimes] or [regimes[-1]],
    }
    lead: dict[str, Any] = {
        "max_lag": max_lag,
        "best_lag": None,
        "interval90": None,
        "correlation": None,
        "correlation_at_0": None,
        "events": 0,
        "median_event_lag": None,
    }
    out["lead_lag"] = lead
    n = len(shared)
    if n < 4 * max_lag + 10:
        lead["note"] = f"too few shared days ({n}) for lags up to {max_lag}"
        return out
    sa, sb = _stress(a, regimes, stress)[ia], _stress(b, regimes, stress)[ib]
    lags = np.arange(-max_lag, max_lag + 1)
    corr = _xcorr(sa, sb, lags)
    lead["correlation_by_lag"] = [None if not np.isfinite(c) else round(float(c), 6) for c in corr]
    if not np.isfinite(corr).any():
        lead["note"] = "a stress probability is constant on the shared days"
        return out
    best = int(lags[int(np.nanargmax(corr))])
    lead.update(
        best_lag=best,
        correlation=round(float(np.nanmax(corr)), 6),
        correlation_at_0=None if not np.isfinite(corr[max_lag]) else round(float(corr[max_lag]), 6),
    )
    block = min(2 * max_lag, n // 4)
    boot = []
    for _ in range(n_boot):
        starts = rng.integers(0, n - block + 1, size=int(np.ceil(n / block)))
        idx = np.concatenate([np.arange(s, s + block) for s in starts])[:n]
        c = _xcorr(sa[idx], sb[idx], lags)
        if np.isfinite(c).any():
            boot.append(int(lags[int(np.nanargmax(c))]))
    if boot:
        lo, hi = np.percentile(boot, [5, 95])
        lead["interval90"] = [int(np.floor(lo)), int(np.ceil(hi))]
    ea, eb = _entries(sa > 0.5), _entries(sb > 0.5)
    event_lags = []
    for e in eb:
        if ea.size:
            d = e - ea  # > 0: the first market entered before the second
            near = d[np.abs(d) <= max_lag]
            if near.size:
                event_lags.append(int(near[np.argmin(np.abs(near))]))
    lead["events"] = len(event_lags)
    lead["median_event_lag"] = float(np.median(event_lags)) if event_lags else None
    return out


def cross_market(
    fit: RegimeFit, *, max_lag: int = 30, stress: Sequence[str] = STRESS_REGIMES, n_boot: int = 200, seed: int = 0
) -> list[dict[str, Any]]:
    """The co-occurrence and lead/lag of every pair of the fit's markets (see the module docstring).

    Returns one plain-data entry per pair (the first market before the second in the fit's order):
    ``shared_days``, ``cooccurrence_counts`` / ``cooccurrence_share`` / ``second_given_first``
    (``K x K``: rows the first market's regimes, columns the second's) and ``lead_lag`` (``best_lag``
    in shared days, positive when the first market leads, ``interval90``, ``correlation``,
    ``correlation_by_lag``, ``events``, ``median_event_lag``). Empty for a single market.
    Seeded (``seed``): the same fit gives the same intervals.
    """
    rng = np.random.default_rng(seed)
    regimes = list(fit.regimes)
    out = []
    for i, a in enumerate(fit.markets):
        for b in fit.markets[i + 1 :]:
            out.append(_pair(a, b, regimes, stress, max_lag, n_boot, rng))
    return out


def plot_cross_market(fit: RegimeFit, pairs: list[dict[str, Any]] | None = None) -> Figure:
    """Per pair of markets: the co-occurrence heatmap (share of shared days) and the cross-correlation of
    their stress probabilities against the lag, with the best lag and its 90 % interval."""
    pairs = cross_market(fit) if pairs is None else pairs
    regimes = list(fit.regimes)
    n = max(len(pairs), 1)
    fig = Figure(figsize=(12, 4.2 * n), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False)
    if not pairs:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "one market: nothing to compare", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
    colour = regime_colours(regimes)[-1]
    for row, pair in zip(axes, pairs):
        ax_heat, ax_lag = row
        share = np.asarray(pair["cooccurrence_share"], dtype=float)
        ax_heat.imshow(share, cmap="Blues", vmin=0.0, vmax=max(float(share.max()), 1e-9))
        for i in range(len(regimes)):
            for j in range(len(regimes)):
                ax_heat.text(
                    j,
                    i,
                    f"{share[i, j]:.1%}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.6 * share.max() else "black",
                )
        ax_heat.set_xticks(range(len(regimes)), regimes)
        ax_heat.set_yticks(range(len(regimes)), regimes)
        ax_heat.set_xlabel(pair["second"])
        ax_heat.set_ylabel(pair["first"])
        ax_heat.set_title(f"regimes on the {pair['shared_days']} shared days (share of days)", fontsize=10)
        lead = pair["lead_lag"]
        corr = lead.get("correlation_by_lag")
        if corr is None:
            ax_lag.text(0.5, 0.5, lead.get("note", "no lead/lag"), ha="center", va="center", transform=ax_lag.transAxes)
            continue
        lags = np.arange(-lead["max_lag"], lead["max_lag"] + 1)
        values = np.array([np.nan if c is None else c for c in corr], dtype=float)
        ax_lag.plot(lags, values, color=colour)
        if lead["interval90"] is not None:
            ax_lag.axvspan(
                lead["interval90"][0],
                lead["interval90"][1],
                color=colour,
                alpha=0.15,
                label=f"90 % interval {lead['interval90']}",
            )
        ax_lag.axvline(lead["best_lag"], color="black", linewidth=0.8, label=f"best lag {lead['best_lag']} days")
        ax_lag.axvline(0, color="0.6", linewidth=0.6, linestyle=":")
        ax_lag.set_xlabel(f"lag (shared days): > 0 when {pair['first']} leads")
        ax_lag.set_ylabel("correlation of stress probabilities")
        ax_lag.set_title(
            f"stress ({' + '.join(pair['stress_regimes'])}): {pair['first']} vs {pair['second']}", fontsize=10
        )
        ax_lag.legend(fontsize=8, loc="lower right")
        ax_lag.grid(alpha=0.3)
    return fig
