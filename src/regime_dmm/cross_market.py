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
  A best lag whose 90 % interval is wider than ``max_lag`` days (half the window or more) is not told
  from noise: ``resolved`` is False, and the plot marks no best lag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.lib.stride_tricks import sliding_window_view

from .plots import regime_colours
from .results import MarketResult, RegimeFit

__all__ = ["STRESS_REGIMES", "cross_market", "plot_cross_market"]

#: Regimes whose probabilities make the stress probability (those of the fit that exist).
STRESS_REGIMES = ("volatile", "panic")

#: Bootstrap resamples are correlated in chunks of about this many values (resamples x days): a chunk's arrays stay
#: in cache, and memory is bounded whatever ``n_boot``.
_BOOT_CHUNK = 1 << 16


def _stress(m: MarketResult, regimes: Sequence[str], stress: Sequence[str]) -> np.ndarray:
    index = [regimes.index(r) for r in stress if r in regimes] or [len(regimes) - 1]  # default: the top regime
    return np.asarray(m.smoothed, dtype=float)[:, index].sum(-1)


def _xcorr(a: np.ndarray, b: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """``corr(a_t, b_{t+lag})`` for each lag: the Pearson correlation on the overlapping part of the two series
    (``a[:n - lag]`` with ``b[lag:]`` for ``lag >= 0``, ``a[-lag:]`` with ``b[:n + lag]`` otherwise), NaN where
    that part is shorter than 3 days or one side of it is constant (all its values equal).

    ``a, b``: ``(..., n)``, any leading (batch) shape, a series along the last axis (the bootstrap passes its
    ``(n_boot, n)`` resamples at once); ``lags``: integers, ``|lag| < n``. Returns ``(..., len(lags))``.

    Vectorised, no loop over the lags. Every window holds the series' *core*, all but its first and last
    ``E = max |lag|`` days; a window's sum (and sum of squares) is the core's plus those of the edge days it
    keeps, cumulative sums over the edges from the core outwards. Each series is first centred on its core's
    mean, so a window's centred sum is that of a few edge days and its variance no cancellation of large sums
    (with ``n >= 4 E``, at least a third of its centred sum of squares). The cross products at every lag are one
    ``np.correlate`` per series against the other zero-padded. A series shorter than ``4 E`` days, whose
    windows share too little, goes window by window (:func:`_xcorr_windows`). The result equals
    ``np.corrcoef`` of each window to rounding (~1e-15), clipped to ``[-1, 1]`` like it.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    lags = np.asarray(lags, dtype=np.int64)
    n, batch = a.shape[-1], a.shape[:-1]
    if lags.size == 0:
        return np.zeros(batch + (0,))
    # a's window leaves out `drop_a` days at its start and `drop_b` at its end; b's the other way round
    drop_a, drop_b = np.maximum(-lags, 0), np.maximum(lags, 0)
    length = n - np.abs(lags)
    edge = int(np.abs(lags).max())
    if edge == 0 or n < 4 * edge:
        return _xcorr_windows(a, b, lags)

    def window_sums(
        x: np.ndarray, start: np.ndarray, end: np.ndarray, square: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per lag, the sum of ``x`` (``(..., n)``; of its squares if ``square``; ``(..., n - 1)`` booleans: the
        count of True) less its first ``start`` and last ``end`` values, ``(..., lags)``; and the core's."""
        core = x[..., edge : x.shape[-1] - edge]
        if x.dtype == bool:
            total = np.count_nonzero(core, axis=-1)[..., None]
        elif square:
            total = np.einsum("...t,...t->...", core, core)[..., None]
        else:
            total = core.sum(-1, keepdims=True)
        ends = np.stack([x[..., edge - 1 :: -1], x[..., x.shape[-1] - edge :]])  # outwards from the core
        ends = ends * ends if square else ends
        outward = np.zeros(ends.shape[:-1] + (edge + 1,), dtype=total.dtype)
        np.cumsum(ends, axis=-1, out=outward[..., 1:])
        return total + outward[0][..., edge - start] + outward[1][..., edge - end], total

    core = slice(edge, n - edge)
    mean_a, mean_b = a[..., core].mean(-1, keepdims=True), b[..., core].mean(-1, keepdims=True)
    ac, bc = a - mean_a, b - mean_b
    sum_a, sum_b = window_sums(ac, drop_a, drop_b)[0], window_sums(bc, drop_b, drop_a)[0]
    square_a, core_a = window_sums(ac, drop_a, drop_b, square=True)
    square_b, core_b = window_sums(bc, drop_b, drop_a, square=True)
    var_a, var_b = square_a - sum_a * sum_a / length, square_b - sum_b * sum_b / length
    # cross products: padded[..., j] = bc[..., j + low] (0 outside the series), so that
    # np.correlate(padded, ac, "valid")[k] = sum_t ac[t] * bc[t + low + k], the window's at lag low + k
    low, width = int(lags.min()), int(lags.max() - lags.min()) + 1
    padded = np.zeros(batch + (n + width - 1,))
    first, stop = max(-low, 0), min(n - low, n + width - 1)
    padded[..., first:stop] = bc[..., first + low : stop + low]
    rows_a, rows_b = ac.reshape(-1, n), padded.reshape(-1, n + width - 1)
    every = np.stack([np.correlate(pb, pa, "valid") for pa, pb in zip(rows_a, rows_b)]).reshape(batch + (width,))
    cov = every[..., lags - low] - sum_a * sum_b / length
    # Constant windows give NaN, and so, like np.std, does a variance that rounds to 0 (squares that underflow).
    # A constant window has a constant core, whose centred values are then 0 to rounding; only when a core
    # comes that close are the changes between consecutive values inside each window counted.
    varies = (length > 2) & (var_a > 0) & (var_b > 0)
    flat_a, flat_b = core_a <= (n - 2 * edge) * (1e-9 * mean_a) ** 2, core_b <= (n - 2 * edge) * (1e-9 * mean_b) ** 2
    if flat_a.any() or flat_b.any():
        changes_a, changes_b = a[..., 1:] != a[..., :-1], b[..., 1:] != b[..., :-1]
        varies &= (window_sums(changes_a, drop_a, drop_b)[0] > 0) & (window_sums(changes_b, drop_b, drop_a)[0] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cov / np.sqrt(var_a * var_b)
    return np.where(varies, np.clip(r, -1.0, 1.0), np.nan)


def _xcorr_windows(a: np.ndarray, b: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """:func:`_xcorr` window by window (vectorised over the leading axes): each window centred on its own mean."""
    n = a.shape[-1]
    out = np.full(a.shape[:-1] + (len(lags),), np.nan)
    for i, lag in enumerate(lags.tolist()):
        x, y = (a[..., : n - lag], b[..., lag:]) if lag >= 0 else (a[..., -lag:], b[..., : n + lag])
        if x.shape[-1] <= 2:
            continue
        xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
        var_x, var_y = np.einsum("...t,...t->...", xc, xc), np.einsum("...t,...t->...", yc, yc)
        varies = (x.max(-1) > x.min(-1)) & (y.max(-1) > y.min(-1)) & (var_x > 0) & (var_y > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.einsum("...t,...t->...", xc, yc) / np.sqrt(var_x * var_y)
        out[..., i] = np.where(varies, np.clip(r, -1.0, 1.0), np.nan)
    return out


def _block_bootstrap_lags(
    a: np.ndarray, b: np.ndarray, lags: np.ndarray, block: int, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """The best lag (``argmax`` of :func:`_xcorr`) of each of ``n_boot`` moving-block bootstrap resamples of the
    paired series ``a, b`` (``(n,)`` each; Kunsch 1989): each resample is ``ceil(n / block)`` blocks of
    ``block`` consecutive days, their starts uniform on ``0 .. n - block``, laid end to end and cut to ``n``
    days, the same days for both series. Resamples whose correlations are all NaN are left out.

    The starts are drawn one resample at a time (``rng.integers`` once per resample, in order: seeded runs
    reproduce), then all resamples are correlated at once, in chunks of a bounded size.
    """
    n = len(a)
    high, blocks = n - block + 1, int(np.ceil(n / block))
    if n_boot <= 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.stack([rng.integers(0, high, size=blocks) for _ in range(n_boot)])
    windows_a, windows_b = sliding_window_view(a, block), sliding_window_view(b, block)  # [s]: the block at s
    chunk = max(1, _BOOT_CHUNK // n)
    best = []
    for first in range(0, n_boot, chunk):
        rows = starts[first : first + chunk]
        resampled_a = windows_a[rows].reshape(len(rows), blocks * block)[:, :n]
        resampled_b = windows_b[rows].reshape(len(rows), blocks * block)[:, :n]
        c = _xcorr(resampled_a, resampled_b, lags)
        finite = np.isfinite(c)
        keep = finite.any(-1)
        best.append(lags[np.argmax(np.where(finite, c, -np.inf)[keep], axis=-1)])  # nanargmax: first of ties
    return np.concatenate(best)


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
        "resolved": False,
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
    boot = _block_bootstrap_lags(sa, sb, lags, block, n_boot, rng)
    if boot.size:
        lo, hi = np.percentile(boot, [5, 95])
        lead["interval90"] = [int(np.floor(lo)), int(np.ceil(hi))]
        # a peak whose interval covers half the window or more is not a lead anyone can act on
        lead["resolved"] = bool(lead["interval90"][1] - lead["interval90"][0] <= max_lag)
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
    in shared days, positive when the first market leads, ``interval90``, ``resolved`` (the interval is at most
    ``max_lag`` wide), ``correlation``, ``correlation_by_lag``, ``events``, ``median_event_lag``). Empty for a
    single market.
    Seeded (``seed``): the same fit gives the same intervals.
    """
    rng = np.random.default_rng(seed)
    regimes = list(fit.regimes)
    out = []
    for i, a in enumerate(fit.markets):
        for b in fit.markets[i + 1 :]:
            out.append(_pair(a, b, regimes, stress, max_lag, n_boot, rng))
    return out


def _sd_labels(fit: RegimeFit, market: str, regimes: list[str]) -> list[str]:
    """``name\nsd`` per regime of ``market``: the names shown (:meth:`RegimeFit.display_names`: relative to each
    market's own volatility, or shared) and the daily return sd in input units, in %, on one scale for all
    markets (no sd where it is not finite or not known)."""
    names = fit.display_names().get(market, list(regimes)) if fit.markets else list(regimes)
    sd = np.asarray(fit.market(market).emission.get("return_sd", [np.nan] * len(names)), dtype=float)
    return [f"{name}\n{100 * v:.2g}%" if np.isfinite(v) else name for name, v in zip(names, sd)]


def plot_cross_market(fit: RegimeFit, pairs: list[dict[str, Any]] | None = None) -> Figure:
    """Per pair of markets: the co-occurrence heatmap (share of shared days; each regime's daily sd in input units
    beside its name, as the names are relative to each market) and the cross-correlation of their stress
    probabilities against the lag, with the best lag and its 90 % interval."""
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
        # each regime's daily sd in input units beside its name: the names are each market's own (issue #20)
        ax_heat.set_xticks(range(len(regimes)), _sd_labels(fit, pair["second"], regimes), fontsize=8)
        ax_heat.set_yticks(range(len(regimes)), _sd_labels(fit, pair["first"], regimes), fontsize=8)
        ax_heat.set_xlabel(f"{pair['second']} (regime, daily sd)")
        ax_heat.set_ylabel(f"{pair['first']} (regime, daily sd)")
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
        if lead.get("resolved"):
            ax_lag.axvline(lead["best_lag"], color="black", linewidth=0.8, label=f"best lag {lead['best_lag']} days")
        else:  # the peak is not told from noise: no line that reads as a finding
            ax_lag.plot([], [], " ", label="no clear lead: the 90 % interval spans half the window or more")
        ax_lag.axvline(0, color="0.6", linewidth=0.6, linestyle=":")
        ax_lag.set_xlabel(f"lag (shared days): > 0 when {pair['first']} leads")
        ax_lag.set_ylabel("correlation of stress probabilities")
        ax_lag.set_title(
            f"stress ({' + '.join(pair['stress_regimes'])}): {pair['first']} vs {pair['second']}", fontsize=10
        )
        ax_lag.legend(fontsize=8, loc="lower right")
        ax_lag.grid(alpha=0.3)
    return fig
