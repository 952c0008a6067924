"""Plots of a fitted :class:`~regime_dmm.results.RegimeFit` (matplotlib only) and text usage bars.

Every ``plot_*`` function builds and returns a fresh :class:`matplotlib.figure.Figure`
created without pyplot, so nothing here depends on an interactive backend, never calls
``plt.show`` and never touches pyplot's global figure registry: the caller owns the
figure (``fig.savefig(...)``; in a notebook it displays like any other figure).

>>> from regime_dmm import plots
>>> plots.save_all(fit, "out")            # regimes.png transitions.png usage.png training.png
>>> print(plots.usage_bars_text(fit))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:  # pragma: no cover
    from .results import MarketResult, RegimeFit

__all__ = [
    "REGIME_COLOURS",
    "regime_colours",
    "plot_regimes",
    "plot_transition_heatmaps",
    "plot_usage",
    "plot_training",
    "save_all",
    "usage_bars_text",
    "volatility_table_text",
]

#: Fixed colour of each default regime name (calm .. panic).
REGIME_COLOURS: dict[str, str] = {
    "calm": "#2ca02c",  # green
    "neutral": "#1f77b4",  # blue
    "volatile": "#ff7f0e",  # orange
    "panic": "#d62728",  # red
}

_DPI = 110
_SPAN_ALPHA = 0.18


def regime_colours(regimes: Sequence[str]) -> list:
    """One colour per regime: the fixed colours when every name is a default name,
    otherwise ``K`` colours from green (first, calmest) to red (last) of a colormap."""
    names = list(regimes)
    if names and all(n in REGIME_COLOURS for n in names):
        return [REGIME_COLOURS[n] for n in names]
    k = len(names)
    cmap = colormaps["RdYlGn_r"]
    if k <= 1:
        return [cmap(0.1)] * k
    return [cmap(0.1 + 0.8 * i / (k - 1)) for i in range(k)]


# ---------------------------------------------------------------------------------------
# helpers


def _select_markets(fit: RegimeFit, market) -> list[MarketResult]:
    if market is None:
        return list(fit.markets)
    if isinstance(market, str):
        return [fit.market(market)]
    if isinstance(market, (int, np.integer)):
        return [fit.markets[int(market)]]
    return [m for item in market for m in _select_markets(fit, item)]


def _date_nums(dates) -> np.ndarray:
    idx = pd.DatetimeIndex(dates)
    if idx.tz is not None:
        idx = idx.tz_localize(None)
    return np.asarray(mdates.date2num(idx.to_pydatetime()), dtype=float)


def _format_date_axis(ax) -> None:
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and (exclusive) end indices of runs of equal labels."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [labels.size]))
    return starts, ends


def _level_series(m: MarketResult) -> tuple[np.ndarray, str]:
    """The price, or the cumulative log return when the input gave returns."""
    n = len(m.dates)
    if m.prices is not None:
        values = np.asarray(m.prices, dtype=float).ravel()
        label = "price"
    else:
        values = np.nancumsum(np.asarray(m.returns, dtype=float).ravel())  # masked days add nothing
        label = "cumulative log return"
    if values.size > n:  # align on the last days should the lengths ever differ
        values = values[-n:]
    elif values.size < n:
        values = np.concatenate((np.full(n - values.size, np.nan), values))
    return values, label


def _empty_panel(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------------------
# plots


def plot_regimes(
    fit: RegimeFit, market: str | int | Sequence[str] | None = None, probabilities: str = "smoothed"
) -> Figure:
    """Per market two stacked panels sharing the date axis.

    Top: the price (or the cumulative log return when the input gave returns), with the
    background shaded by the most probable regime (one span per run of days in the same
    regime). Bottom: the regime probabilities as a stacked area. ``probabilities``:
    ``"smoothed"`` (p(z_t | all days): the best reading of the past) or ``"filtered"``
    (p(z_t | days up to t) at the fitted parameters: what could have been known on the day).
    ``market`` picks one market by name or index (or a list of them); ``None`` plots all.
    The figure has ``2 * number of markets`` axes. Raises ``ValueError`` for another
    ``probabilities``.
    """
    if probabilities not in ("smoothed", "filtered"):
        raise ValueError(f"probabilities must be 'smoothed' or 'filtered', got {probabilities!r}")
    markets = _select_markets(fit, market)
    regimes = list(fit.regimes)
    colours = regime_colours(regimes)
    n = max(len(markets), 1)
    fig = Figure(figsize=(12, 4.4 * n), layout="constrained")
    grid = fig.add_gridspec(2 * n, 1, height_ratios=[2.2, 1.0] * n)
    for i, m in enumerate(markets):
        ax_top = fig.add_subplot(grid[2 * i])
        ax_bot = fig.add_subplot(grid[2 * i + 1], sharex=ax_top)
        x = _date_nums(m.dates)
        if x.size == 0:
            _empty_panel(ax_top, f"{m.name}: no data")
            _empty_panel(ax_bot, "")
            continue
        values, label = _level_series(m)
        smoothed = np.asarray(m.smoothed if probabilities == "smoothed" else m.filtered, dtype=float)
        step = float(np.median(np.diff(x))) if x.size > 1 else 1.0
        edges = np.concatenate((x, [x[-1] + step]))

        # background: one axvspan per run of the most probable regime
        top_regime = smoothed.argmax(-1)
        starts, ends = _runs(top_regime)
        for s, e in zip(starts, ends):
            ax_top.axvspan(
                edges[s], edges[e], facecolor=colours[top_regime[s]], alpha=_SPAN_ALPHA, linewidth=0, zorder=0
            )
        ax_top.plot(x, values, color="black", linewidth=0.9, zorder=2)
        finite = values[np.isfinite(values)]
        if m.prices is not None and finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
            ax_top.set_yscale("log")  # prices over orders of magnitude
            label = "price (log scale)"
        ax_top.set_ylabel(label)
        ax_top.set_title(
            f"{m.name}: {label}, shaded by the most probable {probabilities} regime", loc="left", fontsize=10
        )
        ax_top.grid(alpha=0.25, linewidth=0.5)
        ax_top.tick_params(labelbottom=False)

        if x.size == 1:  # a single day: draw it as one step wide
            xs, probs = edges, np.repeat(smoothed, 2, axis=0)
        else:
            xs, probs = x, smoothed
        ax_bot.stackplot(xs, probs.T, colors=colours, labels=regimes, linewidth=0, alpha=0.85)
        ax_bot.set_ylim(0.0, 1.0)
        ax_bot.set_ylabel("p(regime)")
        ax_bot.set_xlim(edges[0], edges[-1])
        ax_bot.grid(alpha=0.25, linewidth=0.5)
        _format_date_axis(ax_bot)
    if not markets:
        _empty_panel(fig.add_subplot(grid[0]), "no markets")
    handles = [Patch(facecolor=c, label=r) for r, c in zip(regimes, colours)]
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncols=max(len(regimes), 1),
        frameon=False,
        title=f"regime ({probabilities} posterior)",
    )
    return fig


def plot_transition_heatmaps(fit: RegimeFit) -> Figure:
    """One annotated heatmap of the transition matrix per market (rows: from, columns: to)."""
    regimes = list(fit.regimes)
    k = len(regimes)
    n = max(len(fit.markets), 1)
    side = max(3.6, 0.85 * k + 1.6)
    fig = Figure(figsize=(side * n + 0.4, side + 0.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    cmap = colormaps["Blues"]
    for ax, m in zip(axes, fit.markets):
        trans = np.asarray(m.transition, dtype=float)
        ax.imshow(trans, cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal")
        for i in range(trans.shape[0]):
            for j in range(trans.shape[1]):
                v = trans[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9, color="white" if v > 0.55 else "black")
        ax.set_xticks(range(k), regimes, rotation=30, ha="right")
        ax.set_yticks(range(k), regimes)
        ax.set_xlabel("to")
        ax.set_ylabel("from")
        ax.set_title(m.name, fontsize=10)
        ax.tick_params(length=0)
    if not fit.markets:
        _empty_panel(axes[0], "no markets")
    fig.suptitle("Transition matrices", fontsize=11)
    return fig


def plot_usage(fit: RegimeFit) -> Figure:
    """Grouped bars: per market, one bar per regime with its usage (mean smoothed probability)."""
    regimes = list(fit.regimes)
    colours = regime_colours(regimes)
    k = max(len(regimes), 1)
    n = len(fit.markets)
    fig = Figure(figsize=(max(6.0, 1.1 * k * max(n, 1) + 2.0), 4.2), layout="constrained")
    ax = fig.add_subplot()
    if n == 0:
        _empty_panel(ax, "no markets")
        return fig
    width = 0.8 / k
    centres = np.arange(n, dtype=float)
    for j, (name, colour) in enumerate(zip(regimes, colours)):
        heights = np.array([float(np.asarray(m.usage)[j]) for m in fit.markets])
        pos = centres - 0.4 + width * (j + 0.5)
        bars = ax.bar(pos, heights, width=width * 0.95, color=colour, label=name)
        ax.bar_label(bars, labels=[f"{100 * h:.1f}%" for h in heights], fontsize=8, padding=2)
    ax.set_xticks(centres, [m.name for m in fit.markets])
    top = max(float(np.max([np.max(m.usage) for m in fit.markets])), 0.05)
    ax.set_ylim(0.0, min(1.0, top * 1.15 + 0.02))
    ax.set_ylabel("usage (mean smoothed probability)")
    ax.set_title("Regime usage per market", fontsize=11)
    ax.grid(axis="y", alpha=0.3, linewidth=0.5)
    ax.set_axisbelow(True)
    ax.legend(ncols=k, loc="upper right", frameon=False, fontsize=9)
    return fig


_TRAINING_PANELS = (
    ("loss", ("loss",)),
    ("reconstruction and KL", ("recon", "kl")),
    ("entropy, diversity, separation", ("entropy", "diversity", "separation")),
    ("annealing: beta and tau", ("beta", "tau")),
)
_LINESTYLES = ("-", "--", ":", "-.")


def plot_training(fit: RegimeFit) -> Figure:
    """Training curves from ``fit.history`` in a 2x2 grid.

    Panels: loss (one colour per restart); recon with KL on a second y axis (a twin axes,
    so the figure has five axes when both are recorded); entropy, diversity and separation;
    beta and tau (one colour per quantity, one line style per restart). A history with a
    single row (classic mode) is drawn as markers; an empty history gives four empty panels.
    """
    history = fit.history if isinstance(fit.history, pd.DataFrame) else pd.DataFrame(fit.history)
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    fig.suptitle("Training history", fontsize=11)
    if history is None or len(history) == 0:
        for ax, (title, _) in zip(axes, _TRAINING_PANELS):
            ax.set_title(title, fontsize=10)
            _empty_panel(ax, "no training history")
        return fig

    if "restart" in history.columns:
        groups = [(int(r), g) for r, g in history.groupby("restart", sort=True)]
    else:
        groups = [(0, history)]
    multi = len(groups) > 1
    colour_cycle = colormaps["tab10"]

    for ax, (title, columns) in zip(axes, _TRAINING_PANELS):
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        present = [c for c in columns if c in history.columns]
        # recon and KL differ by orders of magnitude: KL gets its own (right) axis
        twin = ax.twinx() if columns == ("recon", "kl") and len(present) == 2 else None
        drawn = False
        for g_i, (restart, group) in enumerate(groups):
            x = group["epoch"].to_numpy() if "epoch" in group.columns else np.arange(1, len(group) + 1)
            marker = "o" if len(group) <= 1 else None
            for c_i, column in enumerate(present):
                y = pd.to_numeric(group[column], errors="coerce").to_numpy(dtype=float)
                if not np.isfinite(y).any():
                    continue
                if len(columns) == 1:  # one quantity: colour per restart
                    colour, style = colour_cycle(g_i % 10), "-"
                    label = f"restart {restart}" if multi else column
                else:  # several quantities: colour per quantity, style per restart
                    colour, style = colour_cycle(c_i % 10), _LINESTYLES[g_i % len(_LINESTYLES)]
                    label = f"{column} (restart {restart})" if multi else column
                target = twin if (twin is not None and column == "kl") else ax
                target.plot(x, y, color=colour, linestyle=style, marker=marker, linewidth=1.2, label=label)
                drawn = True
        if not drawn:
            _empty_panel(ax, "not recorded")
            continue
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, linewidth=0.5)
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:
            ax.set_ylabel("recon", color=colour_cycle(0))
            twin.set_ylabel("kl", color=colour_cycle(1))
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        # on the twin, when there is one, so that the legend is drawn above every line
        (twin or ax).legend(handles, labels, fontsize=8, framealpha=0.8, edgecolor="none")
    return fig


def save_all(fit: RegimeFit, out_dir: str | Path, *, dpi: int = _DPI) -> list[Path]:
    """Write ``regimes.png`` (smoothed), ``regimes_filtered.png``, ``transitions.png``, ``usage.png``
    and ``training.png`` into ``out_dir`` (created if missing) and return their paths in that order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    makers = (
        ("regimes.png", plot_regimes),
        ("regimes_filtered.png", lambda f: plot_regimes(f, probabilities="filtered")),
        ("transitions.png", plot_transition_heatmaps),
        ("usage.png", plot_usage),
        ("training.png", plot_training),
    )
    paths = []
    for name, make in makers:
        fig = make(fit)
        path = out / name
        try:
            fig.savefig(path, dpi=dpi, facecolor="white")
        finally:
            fig.clear()  # figures made without pyplot: clearing releases them
        paths.append(path)
    return paths


def usage_bars_text(fit: RegimeFit, width: int = 30) -> str:
    """Text bars of regime usage per market for a terminal, e.g.::

    traditional_cre
      calm      █████████████████████░░░░░░░░░  70.1%
      neutral   █████░░░░░░░░░░░░░░░░░░░░░░░░░  15.7%
    """
    width = int(width)
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    regimes = list(fit.regimes)
    pad = max((len(r) for r in regimes), default=0)
    lines: list[str] = []
    for m in fit.markets:
        lines.append(m.name)
        usage = np.asarray(m.usage, dtype=float)
        for name, u in zip(regimes, usage):
            frac = float(np.clip(u, 0.0, 1.0)) if np.isfinite(u) else 0.0
            filled = int(round(frac * width))
            bar = "█" * filled + "░" * (width - filled)
            pct = f"{100.0 * u:5.1f}%" if np.isfinite(u) else "  n/a"
            lines.append(f"  {name:<{pad}}  {bar}  {pct}")
    return "\n".join(lines)


def volatility_table_text(fit: RegimeFit) -> str:
    """Each regime's daily return sd in the input's units, markets side by side (one row a market), e.g.::

        daily return sd by regime (input units; names are relative to each market's own volatility):
        market            calm      neutral   volatile  panic
        traditional_cre   0.00497   0.0108    0.0221    0.0447

    A market's names order its own regimes by volatility, so "volatile" in a token may be a smaller move than
    "neutral" in a REIT index (issue #20): this table shows it at a glance. With several markets, the names on
    one ladder for all markets (:mod:`regime_dmm.naming`) follow, one row a market, when any differs.
    """
    regimes = list(fit.regimes)
    shared = fit.shared_names()
    relative = fit.config.model.naming != "shared" or shared is None
    pad = max([len("market")] + [len(m.name) for m in fit.markets]) + 2
    cells = max([10] + [len(r) + 2 for r in regimes])
    head = "names are relative to each market's own volatility" if relative else "model.naming: shared"
    if relative and fit.config.model.naming == "shared":
        head += "; model.naming is shared, but the daily sds are not finite or not increasing: no shared ladder"
    lines = [
        f"daily return sd by regime (input units; {head}):",
        f"{'market':<{pad}}" + "".join(f"{r:<{cells}}" for r in regimes).rstrip(),
    ]
    for m in fit.markets:
        sd = np.asarray(m.emission["return_sd"], dtype=float)
        lines.append(f"{m.name:<{pad}}" + "".join(f"{v:<{cells}.3g}" for v in sd).rstrip())
    if shared is not None and len(fit.markets) > 1 and any(names != regimes for names in shared.values()):
        where = "the names shown" if not relative else "model.naming: shared, or --naming shared"
        lines.append(f"the same regimes named on one ladder of daily sds for all markets ({where}):")
        for m in fit.markets:
            lines.append(f"{m.name:<{pad}}" + "".join(f"{n:<{cells}}" for n in shared[m.name]).rstrip())
    return "\n".join(lines)
