"""Posterior-uncertainty plots of an exported fit (:func:`regime_dmm.arviz_export.to_inference_data`).

Like :mod:`regime_dmm.plots`, every ``plot_*`` function returns a fresh
:class:`matplotlib.figure.Figure` made without pyplot (no ``plt.show``, nothing left in
pyplot's registry), with the same regime colours (:func:`regime_dmm.plots.regime_colours`).

>>> from regime_dmm.arviz_export import to_inference_data
>>> from regime_dmm import posterior_plots
>>> idata = to_inference_data(fit)      # a fit with the "normal" guide gives posterior draws
>>> posterior_plots.save_posterior_plots(idata, "out")

With a point estimate (``map`` guide, classic mode) there is one draw: the bands and
intervals collapse to the estimate and the plots say so.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.dates as mdates
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .arviz_export import import_arviz
from .plots import regime_colours

if TYPE_CHECKING:  # pragma: no cover
    import arviz

__all__ = [
    "hdi_bounds",
    "plot_probability_hdi",
    "plot_transition_uncertainty",
    "plot_ppc",
    "plot_volatility_forest",
    "save_posterior_plots",
]

_DPI = 110


# ---------------------------------------------------------------------------------------
# helpers


def hdi_bounds(samples: np.ndarray, hdi_prob: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Highest-density interval along axis 0 (ArviZ's algorithm for unimodal HDIs, vectorised):
    the narrowest window of sorted draws holding ``floor(hdi_prob * n)`` steps. Returns
    ``(lower, upper)`` with the remaining shape. One draw gives ``lower == upper``."""
    if not 0.0 < hdi_prob < 1.0:
        raise ValueError(f"hdi_prob must be in (0, 1), got {hdi_prob}")
    ary = np.sort(np.asarray(samples, dtype=float), axis=0)
    n = ary.shape[0]
    if n == 0:
        raise ValueError("no draws")
    inc = int(np.floor(hdi_prob * n))
    width = ary[inc:] - ary[: n - inc]
    start = np.argmin(width, axis=0)[None]
    lower = np.take_along_axis(ary, start, axis=0)[0]
    upper = np.take_along_axis(ary, start + inc, axis=0)[0]
    return lower, upper


def _draws(da) -> np.ndarray:
    """``(chain, draw, ...)`` DataArray -> ``(chain * draw, ...)`` array."""
    values = np.asarray(da.transpose("chain", "draw", ...).values, dtype=float)
    return values.reshape((-1,) + values.shape[2:])


def _market_names(idata) -> list[str]:
    return [str(m) for m in idata["posterior"]["market"].values]


def _regime_names(idata) -> list[str]:
    return [str(r) for r in idata["posterior"]["regime"].values]


def _pick_market(idata, market: str | int) -> str:
    names = _market_names(idata)
    if isinstance(market, (int, np.integer)) and not isinstance(market, bool):
        return names[int(market)]
    if str(market) not in names:
        raise KeyError(f"no market {market!r}; markets: {names}")
    return str(market)


def _num_draws(idata) -> int:
    post = idata["posterior"]
    return int(post.sizes["chain"] * post.sizes["draw"])


def _draws_label(n: int) -> str:
    return "point estimate (one draw): no uncertainty band" if n == 1 else f"{n} posterior draws"


def _empty_panel(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _market_days(idata, market: str) -> np.ndarray:
    """Boolean mask over ``date`` of the days the market has data."""
    if "observed_data" in idata.groups() and "returns" in idata["observed_data"]:
        return np.isfinite(np.asarray(idata["observed_data"]["returns"].sel(market=market).values, dtype=float))
    sp = idata["posterior"]["smoothed_probs"].sel(market=market).isel(chain=0, draw=0)
    return np.isfinite(np.asarray(sp.values, dtype=float)).all(-1)


# ---------------------------------------------------------------------------------------
# plots


def plot_probability_hdi(idata: arviz.InferenceData, market: str | int, hdi_prob: float = 0.9) -> Figure:
    """One axis per regime: the posterior mean smoothed probability of that regime over the
    market's dates, with the ``hdi_prob`` HDI across draws as a band."""
    name = _pick_market(idata, market)
    regimes = _regime_names(idata)
    colours = regime_colours(regimes)
    days = _market_days(idata, name)
    dates = np.asarray(idata["posterior"]["date"].values)[days]
    probs = _draws(idata["posterior"]["smoothed_probs"].sel(market=name))[:, days, :]  # (S, T, K)
    n = probs.shape[0]
    k = len(regimes)
    fig = Figure(figsize=(12, 1.6 * k + 1.2), layout="constrained")
    axes = fig.subplots(k, 1, sharex=True, squeeze=False)[:, 0]
    if dates.size == 0:
        for ax in axes:
            _empty_panel(ax, f"{name}: no data")
        return fig
    mean = probs.mean(0)
    lower, upper = hdi_bounds(probs, hdi_prob)
    for j, (ax, regime, colour) in enumerate(zip(axes, regimes, colours)):
        if n > 1:
            ax.fill_between(
                dates, lower[:, j], upper[:, j], color=colour, alpha=0.3, linewidth=0, label=f"{hdi_prob:.0%} HDI"
            )
        ax.plot(dates, mean[:, j], color=colour, linewidth=0.9, label="posterior mean" if n > 1 else "estimate")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"p({regime})")
        ax.grid(alpha=0.25, linewidth=0.5)
        ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=2)
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    band = f"posterior mean and {hdi_prob:.0%} HDI, {_draws_label(n)}" if n > 1 else _draws_label(n)
    fig.suptitle(f"{name}: smoothed regime probabilities ({band})", fontsize=11)
    return fig


def plot_transition_uncertainty(idata: arviz.InferenceData, var_name: str = "transition_matrix") -> Figure:
    """Per market a heatmap of the posterior mean transition matrix (rows: from, columns: to),
    each cell annotated ``mean ± sd`` across draws (the value alone for one draw, a MAP fit: it has no sd to
    show). ``var_name`` may be
    ``"base_transition_matrix"`` (before covariate adjustments)."""
    regimes = _regime_names(idata)
    markets = _market_names(idata)
    k = len(regimes)
    n_m = max(len(markets), 1)
    side = max(3.8, 1.05 * k + 1.6)
    fig = Figure(figsize=(side * n_m + 0.8, side + 0.5), layout="constrained")
    axes = fig.subplots(1, n_m, squeeze=False)[0]
    cmap = colormaps["Blues"]
    image = None
    n = _num_draws(idata)
    for ax, market in zip(axes, markets):
        values = _draws(idata["posterior"][var_name].sel(market=market))  # (S, K, K)
        mean, sd = values.mean(0), values.std(0)
        image = ax.imshow(mean, cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal")
        for i in range(k):
            for j in range(k):
                v = mean[i, j]
                ax.text(
                    j,
                    i,
                    f"{v:.3f}\n± {sd[i, j]:.3f}" if n > 1 else f"{v:.3f}",  # one draw has no sd to show
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if v > 0.55 else "black",
                )
        ax.set_xticks(range(k), regimes, rotation=30, ha="right")
        ax.set_yticks(range(k), regimes)
        ax.set_xlabel("to")
        ax.set_ylabel("from")
        ax.set_title(market, fontsize=10)
        ax.tick_params(length=0)
    if not markets:
        _empty_panel(axes[0], "no markets")
    elif image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="posterior mean probability")
    what = "Transition matrices" if var_name == "transition_matrix" else var_name.replace("_", " ")
    detail = f"posterior mean ± sd over {n} draws" if n > 1 else "point estimate (MAP: no posterior spread)"
    fig.suptitle(f"{what}: {detail}", fontsize=11)
    return fig


def plot_ppc(idata: arviz.InferenceData, num_pp_samples: int = 50, seed: int = 0) -> Figure:
    """Posterior predictive check of the daily return distribution, one axis per market:
    the observed returns' density (black, over a histogram) against the densities of
    ``num_pp_samples`` posterior-predictive draws (thin lines) and of all draws pooled (dashed)."""
    kde = import_arviz().kde

    markets = _market_names(idata)
    n_m = max(len(markets), 1)
    cols = min(n_m, 3)
    rows = int(np.ceil(n_m / cols))
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    rng = np.random.default_rng(seed)
    pred_colour, obs_colour = "#1f77b4", "black"
    for ax, market in zip(axes, markets):
        observed = np.asarray(idata["observed_data"]["returns"].sel(market=market).values, dtype=float)
        days = np.isfinite(observed)
        observed = observed[days]
        predicted = _draws(idata["posterior_predictive"]["returns"].sel(market=market))[:, days]  # (S, T)
        if observed.size < 2:
            _empty_panel(ax, f"{market}: too few days")
            continue
        lo, hi = np.quantile(observed, [0.001, 0.999])
        pad = 0.25 * (hi - lo) if hi > lo else 1e-3
        lo, hi = lo - pad, hi + pad
        ax.hist(observed, bins=60, range=(lo, hi), density=True, color="0.85", edgecolor="none")
        chosen = rng.choice(predicted.shape[0], size=min(num_pp_samples, predicted.shape[0]), replace=False)
        for s in chosen:
            draw = predicted[s][np.isfinite(predicted[s])]
            if draw.size > 1 and np.ptp(draw) > 0:
                grid, pdf = kde(draw)
                ax.plot(grid, pdf, color=pred_colour, alpha=0.15 if len(chosen) > 1 else 0.8, linewidth=0.8)
        pooled = predicted[np.isfinite(predicted)]
        if pooled.size > 1 and np.ptp(pooled) > 0:
            grid, pdf = kde(pooled)
            ax.plot(grid, pdf, color="#ff7f0e", linestyle="--", linewidth=1.4)
        grid, pdf = kde(observed)
        ax.plot(grid, pdf, color=obs_colour, linewidth=1.6)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("daily log return (input units)")
        ax.set_ylabel("density")
        ax.set_title(market, fontsize=10)
        ax.grid(alpha=0.25, linewidth=0.5)
    for ax in axes[len(markets) :]:
        if markets:
            ax.set_visible(False)
        else:
            _empty_panel(ax, "no markets")
    handles = [
        Patch(facecolor="0.85", label="observed (histogram)"),
        Line2D([], [], color=obs_colour, linewidth=1.6, label="observed (KDE)"),
        Line2D([], [], color=pred_colour, alpha=0.6, linewidth=0.8, label="posterior predictive draws"),
        Line2D([], [], color="#ff7f0e", linestyle="--", linewidth=1.4, label="posterior predictive (pooled)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False, fontsize=9)
    n = _num_draws(idata)
    detail = f"{n} draws" if n > 1 else "one draw at the point estimate"
    fig.suptitle(f"Posterior predictive check of daily returns ({detail})", fontsize=11)
    return fig


def plot_volatility_forest(idata: arviz.InferenceData, hdi_prob: float = 0.9) -> Figure:
    """Forest plot of each regime's return volatility (``return_sd``, per day, input units) in
    every market: posterior median and ``hdi_prob`` HDI on a log x axis (markets differ ~12x)."""
    regimes = _regime_names(idata)
    markets = _market_names(idata)
    colours = regime_colours(regimes)
    k = len(regimes)
    n = _num_draws(idata)
    rows = len(markets) * (k + 1)
    fig = Figure(figsize=(8.5, 0.32 * max(rows, 4) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    if not markets:
        _empty_panel(ax, "no markets")
        return fig
    ticks, labels = [], []
    for mi, market in enumerate(markets):
        values = _draws(idata["posterior"]["return_sd"].sel(market=market))  # (S, K)
        median = np.median(values, axis=0)
        lower, upper = hdi_bounds(values, hdi_prob)
        base = -mi * (k + 1)
        for j in range(k):
            y = base - j
            ax.hlines(y, lower[j], upper[j], color=colours[j], linewidth=2.2)
            ax.plot(median[j], y, "o", color=colours[j], markersize=5, markeredgecolor="black", markeredgewidth=0.5)
            ticks.append(y)
            labels.append(f"{market}: {regimes[j]}")
        if mi:
            ax.axhline(base + 1, color="0.7", linewidth=0.6)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("return sd per day (input units, log scale)")
    ax.grid(axis="x", which="both", alpha=0.25, linewidth=0.5)
    ax.set_ylim(min(ticks) - 0.7, max(ticks) + 0.7)
    handles = [Line2D([], [], color=c, marker="o", linewidth=2.2, label=r) for r, c in zip(regimes, colours)]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False, title="regime")
    interval = f"median and {hdi_prob:.0%} HDI, {n} draws" if n > 1 else _draws_label(n)
    fig.suptitle(f"Regime return volatility ({interval})", fontsize=11)
    return fig


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "market"


def save_posterior_plots(
    idata: arviz.InferenceData, out_dir: str | Path, *, hdi_prob: float = 0.9, dpi: int = _DPI
) -> list[Path]:
    """Write ``probability_hdi_<market>.png`` (one per market), ``transition_uncertainty.png``,
    ``ppc.png`` and ``volatility_forest.png`` into ``out_dir`` (created if missing); return
    their paths in that order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    makers: list[tuple[str, Callable[[], Figure]]] = [
        (f"probability_hdi_{_file_part(m)}.png", functools.partial(plot_probability_hdi, idata, m, hdi_prob))
        for m in _market_names(idata)
    ]
    makers += [
        ("transition_uncertainty.png", functools.partial(plot_transition_uncertainty, idata)),
        ("ppc.png", functools.partial(plot_ppc, idata)),
        ("volatility_forest.png", functools.partial(plot_volatility_forest, idata, hdi_prob)),
    ]
    paths = []
    for name, make in makers:
        fig = make()
        path = out / name
        try:
            fig.savefig(path, dpi=dpi, facecolor="white")
        finally:
            fig.clear()
        paths.append(path)
    return paths
