"""Are the probabilities calibrated? The one-step-ahead predictive returns and, with known regimes, the regime
probabilities, scored against what happened.

**Predictive returns** (every market, every observed day). The predictive distribution of day ``t``'s
return given the days before is the regime mixture

    p(x_t | x_1..x_{t-1}) = sum_k w_tk f_k(x_t),   w_tk = sum_i p(z_{t-1} = i | x_1..x_{t-1}) A_t[i, k],

with ``f_k`` the regime's return emission that day (Gaussian or Student-t; the emission network's shift and a
multi-day return's scaling included). Its probability integral transform ``u_t = sum_k w_tk F_k(x_t)`` is
uniform when the forecasts are calibrated (Dawid 1984, "Statistical theory: the prequential approach";
Diebold, Gunther and Tay 1998, "Evaluating density forecasts", International Economic Review 39). Reported
per market: the Kolmogorov-Smirnov distance of the ``u_t`` from uniform, the coverage of the central 50 %
and 90 % predictive intervals (the share of days with ``u_t`` in [0.25, 0.75] and [0.05, 0.95]), and the
realised-to-predicted variance ratio ``sum (x_t - mean_t)^2 / sum var_t`` (1 when the predictive spread is
right; above 1: too narrow). All in normalised units, which leave ``u_t`` and the ratio unchanged.

* a **walk-forward** folder: each day's predictive uses the refit made before it (parameters and
  normalisation from earlier days only, as ``walkforward.csv``'s filtered probabilities) - an out-of-sample
  check. One pass per refit over the rows up to the last day it serves: the one look-ahead is that a
  bad tick, recognised by the next day's reversal, is left out of the score;
* a **fit** folder: the fitted parameters, which saw every day (in-sample; the report says so).

**Regime probabilities** (``truth``: the true regimes, e.g. ``regime-dmm simulate --truth``). The filtered
probabilities (``walkforward.csv``'s, or ``regimes.csv``'s ``filtered_<name>``) and the h-day forecasts
``p(z_{t+h} | x_1..x_t)`` (the filtered ones times the fit's mean transition matrix to the power ``h``),
against the true regime: the Brier score ``mean_t sum_k (p_tk - 1[z_t = k])^2`` (Brier 1950; 0 is perfect,
a constant 1/K forecast scores 1 - 1/K) and a reliability diagram: the probabilities of every regime pooled,
cut into ten bins, each bin's mean forecast against the share of its days on which that regime was true.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy import stats

from .atomic import staged_files
from .checkpoints import read_checkpoint
from .data.features import Panel
from .data.sources import DataSource, load_source
from .errors import CheckpointError, DataError, RegimeDMMError
from .fitted import FittedModel
from .inference import forecast as forecast_probs
from .persistence import MODEL_FILE, load_fit
from .walkforward import (
    DATA_FILE,
    PART_FORMAT,
    PART_KEYS,
    PARTS,
    PLAN_FILE,
    WALKFORWARD_FILE,
    rebuild_refit,
    rows_between,
    run_configuration,
    window_start,
)

__all__ = [
    "CALIBRATION_DAYS_FILE",
    "CALIBRATION_FILE",
    "CALIBRATION_PLOT",
    "Calibration",
    "calibrate",
    "one_step_predictive",
    "plot_calibration",
    "regime_scores",
    "write_calibration",
]

CALIBRATION_FILE = "calibration.csv"
CALIBRATION_DAYS_FILE = "calibration_days.csv"
CALIBRATION_PLOT = "calibration.png"
#: Forecast horizons (days) of the regime-probability scores, beside the filtered probabilities (h = 0).
HORIZONS = (1, 5, 20)
BINS = 10


@dataclass
class Calibration:
    """A calibration report.

    ``days``: one row per scored day: ``date, market, pit, in50, in90, sq_error, variance`` (normalised units).
    ``table``: one row per market: ``market, days, ks_distance, coverage50, coverage90, variance_ratio`` and,
    with the true regimes, ``brier_h0`` (filtered) and ``brier_h<h>`` per horizon. ``reliability``: with the
    true regimes, ``horizon, bin, forecast, observed, count`` (pooled over markets and regimes), else None.
    ``kind``: ``"walk-forward"`` (out of sample) or ``"fit"`` (in sample).
    """

    days: pd.DataFrame
    table: pd.DataFrame
    kind: str
    reliability: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


def one_step_predictive(fitted: FittedModel, panel: Panel | None = None) -> dict[str, np.ndarray]:
    """The one-step-ahead predictive distribution of each day's return on ``panel`` (None: the fitted days, whose
    posterior the fitted model has already) at the fitted parameters.

    Returns arrays ``(M, T)`` (normalised units; days past a market's length are NaN): ``pit`` (the predictive
    CDF at the realised return), ``mean``, ``variance`` and ``x`` (the realised return), and ``observed (M, T)``
    bool. Raises :class:`~regime_dmm.errors.RegimeDMMError` for the relaxed mode (its regimes are not
    marginalised exactly).
    """
    if fitted.config.training.inference != "exact" and not fitted.config.model.classic:
        raise RegimeDMMError("calibration needs exact regimes (training.inference: exact, or classic mode)")
    data = fitted.data if panel is None else fitted.model_data(panel)
    pot, post = fitted.posterior() if panel is None else fitted.posterior(data)
    values = fitted.point_estimate()
    shift = fitted.emission_shift(data)
    log_f = post.log_filtered.double()  # (M, T, K)
    log_trans = pot.log_trans.double()
    prior = torch.logsumexp(log_f[:, :-1, :, None] + log_trans[:, 1:], dim=-2)  # p(z_t | x_<t), t >= 1
    weights = torch.cat([pot.log_init.double()[:, None, :], prior], dim=1).exp().numpy()  # (M, T, K)
    loc = pot.emission_loc[..., 0].double().numpy()[:, None, :]  # (M, 1, K)
    if shift is not None:
        loc = loc + shift.double().numpy()
    root = np.sqrt(data.day_span.double().numpy())[..., None]
    loc = loc * root  # a return over n days: its location scales by sqrt(n) in normalised units
    scale = np.broadcast_to(pot.emission_scale[..., 0].double().numpy()[:, None, :], loc.shape)
    x = data.x[..., 0].double().numpy()
    if "df" in values:  # the exact DMM's Student-t emissions: degrees of freedom 2 + df
        df = (2.0 + values["df"].double().numpy())[:, None, None]
        cdf = stats.t.cdf((x[..., None] - loc) / scale, df)
        var_k = scale**2 * df / (df - 2.0)
    else:
        cdf = stats.norm.cdf((x[..., None] - loc) / scale)
        var_k = scale**2
    mean = (weights * loc).sum(-1)
    variance = (weights * (var_k + loc**2)).sum(-1) - mean**2
    observed = data.emitting.numpy().copy()
    out = {"pit": (weights * cdf).sum(-1), "mean": mean, "variance": variance, "x": x}
    for key in out:
        out[key] = np.where(observed, out[key], np.nan)
    out["observed"] = observed
    out["transition"] = np.exp(log_trans.numpy())  # (M, T, K, K), the per-day matrices (forecasts use their mean)
    return out


def calibrate(
    folder: str | Path, truth: str | Path | pd.DataFrame | None = None, data: DataSource = None
) -> Calibration:
    """The calibration report of a walk-forward or fit folder (see the module docstring).

    ``data``: for a fit folder, the data it was made on (default: as :func:`~regime_dmm.load_fit` finds them;
    a walk-forward folder keeps its rows). ``truth``: the true regimes (a CSV or DataFrame: date, market,
    regime, named as the fit's regimes); a fit of the embedded simulated data has them already.

    Raises :class:`CheckpointError` (no walk-forward or fit in ``folder``), :class:`DataError` (the truth names
    unknown regimes), :class:`RegimeDMMError` (a relaxed-mode fit).
    """
    folder = Path(folder)
    if (folder / PARTS / PLAN_FILE).is_file():
        kind, days, probs, transitions, regimes = "walk-forward", *_walk_forward_days(folder)
        notes = ["out of sample: each day scored with the refit made before it"]
    elif (folder / MODEL_FILE).is_file():
        kind, days, probs, transitions, regimes, embedded = "fit", *_fit_days(folder, data)
        notes = ["in sample: the fitted parameters saw every day scored"]
        if truth is None and embedded is not None:
            truth = embedded
    else:
        raise CheckpointError(f"{folder} holds neither a walk-forward run nor a saved fit")
    table = _predictive_table(days)
    reliability = None
    if truth is not None:
        scores, reliability = regime_scores(probs, transitions, _read_truth(truth, regimes), regimes)
        table = table.merge(scores, on="market", how="left")
    return Calibration(days=days, table=table, kind=kind, reliability=reliability, notes=notes)


def regime_scores(
    probs: pd.DataFrame,
    transitions: dict[str, np.ndarray],
    truth: pd.DataFrame,
    regimes: Sequence[str],
    horizons: Sequence[int] = HORIZONS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Brier scores per market and the pooled reliability diagram of the filtered probabilities (``probs``: date,
    market, ``filtered_<name>``) and their h-day forecasts (``transitions``: market -> ``(K, K)`` or, per row of
    ``probs``, ``(N, K, K)``), against ``truth`` (date, market, regime). Returns ``(scores, reliability)``:
    ``market, brier_h0, brier_h<h>...`` and ``horizon, bin, forecast, observed, count``."""
    names = list(regimes)
    columns = [f"filtered_{n}" for n in names]
    truth = truth.assign(date=pd.to_datetime(truth["date"]))
    rows = []
    pooled: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {h: ([], []) for h in (0, *horizons)}
    for market, group in probs.groupby("market", sort=False):
        group = group.sort_values("date")
        true = truth[truth["market"] == market].set_index("date")["regime"]
        dates = pd.to_datetime(group["date"])
        p = group[columns].to_numpy(float)
        matrices = np.asarray(transitions[market])
        if matrices.ndim == 2:
            matrices = np.broadcast_to(matrices, (len(p), *matrices.shape))
        row: dict[str, Any] = {"market": market}
        for h in (0, *horizons):
            ahead = [forecast_probs(q, a, h)[-1] for q, a in zip(p, matrices, strict=True)] if h else []
            forecast = np.stack(ahead) if h else p
            # the forecast made on row i is for row i + h (the market's h-th next day)
            target = pd.DatetimeIndex(list(dates[h:]) + [pd.NaT] * h) if h else pd.DatetimeIndex(dates)
            labels = true.reindex(target).to_numpy()
            keep = pd.notna(labels)
            if not keep.any():
                row[f"brier_h{h}"] = np.nan
                continue
            onehot = (np.asarray(labels[keep])[:, None] == np.asarray(names)[None, :]).astype(float)
            row[f"brier_h{h}"] = float(((forecast[keep] - onehot) ** 2).sum(-1).mean())
            pooled[h][0].append(forecast[keep].ravel())
            pooled[h][1].append(onehot.ravel())
        rows.append(row)
    bins = []
    for h, (forecasts, outcomes) in pooled.items():
        if not forecasts:
            continue
        f, o = np.concatenate(forecasts), np.concatenate(outcomes)
        index = np.minimum((f * BINS).astype(int), BINS - 1)
        for b in range(BINS):
            sel = index == b
            if sel.any():
                bins.append(
                    {
                        "horizon": h,
                        "bin": b,
                        "forecast": f[sel].mean(),
                        "observed": o[sel].mean(),
                        "count": int(sel.sum()),
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(bins, columns=["horizon", "bin", "forecast", "observed", "count"])


def write_calibration(cal: Calibration, folder: str | Path) -> list[str]:
    """``calibration.csv`` (the table), ``calibration_days.csv`` (the scored days) and ``calibration.png`` into
    ``folder``, each written whole. Returns the file names."""
    with staged_files(folder) as tmp:
        cal.table.to_csv(tmp / CALIBRATION_FILE, index=False, float_format="%.6f")
        cal.days.to_csv(tmp / CALIBRATION_DAYS_FILE, index=False, float_format="%.6f")
        fig = plot_calibration(cal)
        try:
            fig.savefig(tmp / CALIBRATION_PLOT, dpi=110, facecolor="white")
        finally:
            fig.clear()
    return [CALIBRATION_FILE, CALIBRATION_DAYS_FILE, CALIBRATION_PLOT]


def plot_calibration(cal: Calibration) -> Figure:
    """Per market the histogram of the PIT values (flat when calibrated, with the 90 % band of a uniform sample of
    that size) and, with the true regimes, the reliability diagram (on the diagonal when calibrated)."""
    markets = list(cal.table["market"])
    panels = len(markets) + (cal.reliability is not None)
    fig = Figure(figsize=(4.2 * max(panels, 1), 3.6), layout="constrained")
    axes = fig.subplots(1, max(panels, 1), squeeze=False)[0]
    for ax, market in zip(axes, markets):
        pit = cal.days.loc[cal.days["market"] == market, "pit"].to_numpy(float)
        row = cal.table.set_index("market").loc[market]
        ax.hist(pit, bins=BINS, range=(0, 1), density=True, color="tab:blue", alpha=0.7)
        n = max(len(pit), 1)
        band = stats.binom.ppf([0.05, 0.95], n, 1 / BINS) / n * BINS  # a uniform sample's bin heights, 90 %
        ax.axhspan(band[0], band[1], color="0.8", alpha=0.6, label="90 % band of a calibrated forecast")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("PIT of the one-step predictive return")
        ax.set_title(
            f"{market}: KS {row['ks_distance']:.3f}, 90 % cover {row['coverage90']:.2f}\n"
            f"variance ratio {row['variance_ratio']:.2f} ({len(pit)} days)",
            fontsize=9,
        )
        ax.legend(fontsize=7, loc="lower center")
    if cal.reliability is not None:
        ax = axes[-1]
        for h, group in cal.reliability.groupby("horizon"):
            label = "filtered" if h == 0 else f"{h}-day forecast"
            ax.plot(group["forecast"], group["observed"], marker="o", markersize=3, label=label)
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("forecast probability of a regime")
        ax.set_ylabel("share of days in that regime")
        ax.set_title("reliability (all markets and regimes)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Calibration ({cal.kind}; {'; '.join(cal.notes)})", fontsize=10)
    return fig


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _predictive_table(days: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for market, group in days.groupby("market", sort=False):
        pit = group["pit"].to_numpy(float)
        rows.append(
            {
                "market": market,
                "days": len(pit),
                "ks_distance": float(stats.kstest(pit, "uniform").statistic) if len(pit) else np.nan,
                "coverage50": float(group["in50"].mean()),
                "coverage90": float(group["in90"].mean()),
                "variance_ratio": float(group["sq_error"].sum() / group["variance"].sum()),
            }
        )
    return pd.DataFrame(rows)


def _day_rows(panel: Panel, pred: dict[str, np.ndarray], keep: list[np.ndarray]) -> pd.DataFrame:
    """The scored days (``keep[m]``: bool over market m's days) as rows of ``Calibration.days``."""
    frames = []
    for m, series in enumerate(panel.series):
        sel = keep[m] & pred["observed"][m, : series.length]
        pit = pred["pit"][m, : series.length][sel]
        frames.append(
            pd.DataFrame(
                {
                    "date": series.dates[sel].strftime("%Y-%m-%d"),
                    "market": series.name,
                    "pit": pit,
                    "in50": (pit >= 0.25) & (pit <= 0.75),
                    "in90": (pit >= 0.05) & (pit <= 0.95),
                    "sq_error": (pred["x"][m, : series.length][sel] - pred["mean"][m, : series.length][sel]) ** 2,
                    "variance": pred["variance"][m, : series.length][sel],
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _fit_days(
    folder: Path, data: DataSource
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray], tuple[str, ...], Any]:
    fit = load_fit(folder, data=data)
    fitted = fit.require_fitted()
    panel = fitted.panel
    pred = one_step_predictive(fitted)  # the fitted days: the posterior load_fit computed
    days = _day_rows(panel, pred, [np.ones(s.length, dtype=bool) for s in panel.series])
    frame = fit.regimes_frame()
    probs = frame[["date", "market", *[f"filtered_{n}" for n in fit.regimes]]]
    transitions = {m.name: m.transition for m in fit.markets}
    embedded = None
    if fit.truth is not None:
        embedded = fit.truth.truth_frame()
    return days, probs, transitions, fit.regimes, embedded


def _walk_forward_days(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray], tuple[str, ...]]:
    parts = folder / PARTS
    plan, config = run_configuration(folder)
    if not (parts / DATA_FILE).is_file() or not (folder / WALKFORWARD_FILE).is_file():
        raise CheckpointError(f"{folder}: the walk-forward run is not finished (no {WALKFORWARD_FILE} or {DATA_FILE})")
    frame = load_source(parts / DATA_FILE, min_observations=1, seed=config.training.seed).frame
    window = plan["plan"]["window"]
    regimes = config.model.names()
    table = pd.read_csv(folder / WALKFORWARD_FILE, dtype={"date": str, "market": str, "fit_date": str})
    dates = pd.DatetimeIndex(np.unique(frame["date"].to_numpy()))
    day_frames: list[pd.DataFrame] = []
    matrices: dict[str, list[np.ndarray]] = {}
    for path in sorted(parts.glob("[0-9][0-9][0-9][0-9].pt")):
        saved = read_checkpoint(path, PART_FORMAT, "walk-forward refit", PART_KEYS)
        fit_date, until = pd.Timestamp(saved["fit_date"]), pd.Timestamp(saved["until"])
        block = table[table["fit_date"] == saved["fit_date"]]
        if block.empty:
            continue
        low = window_start(dates, int(dates.searchsorted(fit_date)), window)
        fitted = rebuild_refit(saved, frame, low, fit_date, config)
        rows = rows_between(frame, low, until)
        scored = rows[rows["market"].isin(list(saved["markets"]))]
        scored.attrs = dict(frame.attrs)
        panel = fitted.pipeline.transform(scored)
        pred = one_step_predictive(fitted, panel)
        keep = [np.asarray(s.dates > fit_date) for s in panel.series]
        day_frames.append(_day_rows(panel, pred, keep))
        mean_transition = {s.name: pred["transition"][m, 1 : s.length].mean(0) for m, s in enumerate(panel.series)}
        for market, group in block.groupby("market"):
            matrices.setdefault(market, []).extend([mean_transition[market]] * len(group))
    days = pd.concat(day_frames, ignore_index=True) if day_frames else pd.DataFrame()
    if days.empty:
        raise CheckpointError(f"{folder}: no refit of the walk-forward run could be read")
    probs = table.sort_values(["fit_date"], kind="stable")
    ordered = pd.concat([g for _, g in probs.groupby("market", sort=False)], ignore_index=True)
    transitions = {m: np.stack(v) for m, v in matrices.items()}
    return days, ordered, transitions, regimes


def _read_truth(truth: str | Path | pd.DataFrame, regimes: Sequence[str]) -> pd.DataFrame:
    """The true regimes as ``date`` (datetime64), ``market``, ``regime``; :class:`DataError` naming the file, or the
    row, market and date, of what cannot be read."""
    label = "the true regimes" if isinstance(truth, pd.DataFrame) else f"the true regimes ({truth})"
    try:
        frame = truth if isinstance(truth, pd.DataFrame) else pd.read_csv(truth, dtype={"market": str, "regime": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{label}: cannot be read ({type(exc).__name__}: {exc})") from None
    missing = {"date", "market", "regime"} - set(frame.columns)
    if missing:
        raise DataError(f"{label} need columns date, market, regime; missing {sorted(missing)}")
    dates = pd.to_datetime(frame["date"], errors="coerce")
    for row in np.flatnonzero(dates.isna().to_numpy())[:1]:
        market = frame["market"].iloc[row]
        raise DataError(f"{label}, row {row + 2} (market '{market}'): date {frame['date'].iloc[row]!r} is not a date")
    unknown = ~frame["regime"].isin(list(regimes))
    for row in np.flatnonzero(unknown.to_numpy())[:1]:
        raise DataError(
            f"{label}, row {row + 2} (market '{frame['market'].iloc[row]}', date {dates.iloc[row].date()}): regime "
            f"{frame['regime'].iloc[row]!r} is not one of the fit's regimes {list(regimes)}"
        )
    frame = frame.assign(date=dates)
    return frame[["date", "market", "regime"]]
