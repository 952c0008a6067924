"""Are the probabilities calibrated? regime-dmm beside hmmlearn on simulated data with known regimes.

For each seed and shock law, the embedded simulation (``simulate_default``: a traditional and a tokenized
market, K = 4) is fitted by

* regime-dmm's default fit, scored by :func:`regime_dmm.calibration.calibrate` on its saved folder (the
  one-step predictive PIT of every observed day, in sample);
* hmmlearn ``GaussianHMM`` (K = 4, diagonal, best of ``--hmmlearn-starts`` seeds, 500 iterations, tol 1e-6),
  per market on its observed returns, states ordered by variance; its filtered probabilities and one-step
  predictive mixture computed with the fitted parameters by the same recursions.

Both are scored on the same days (each market's observed days): the Kolmogorov-Smirnov distance of the PIT from
uniform, the coverage of the 50 % and 90 % predictive intervals, the realised-to-predicted variance ratio, and
the Brier score of the filtered regime probabilities (``brier_h0``) and of their 5-day forecasts against the true
regimes. Means over seeds, per shock law, market and method.

    python benchmarks/bench_calibration.py --seeds 5                    # Student-t(4) shocks
    python benchmarks/bench_calibration.py --seeds 5 --shocks gaussian studentt:4

``--real FILE ...``: instead, a walk-forward of each real price file alone (default settings; refit every 63
dates on a rolling window of the last 2,520 dates, from 2015-01-02, or from the 500th date when that is later),
scored out of sample by ``rd.calibrate`` (no true regimes: the PIT figures only):

    python benchmarks/bench_calibration.py --real ../shared/realdata/{VNQ,IYR,MAYS,MDRR,GSPC,BTC-USD}.csv \
        ../shared/realdata/PAXGUSDT_binance_daily.csv
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_recovery import best_hmmlearn  # the same hmmlearn baseline (benchmarks/ is on the path as a script)
from scipy import stats

import regime_dmm as rd
from regime_dmm.calibration import calibrate, regime_scores
from regime_dmm.data import simulate_default
from regime_dmm.inference import posterior
from regime_dmm.outputs import write_outputs


def observed_probs(fit: rd.RegimeFit) -> pd.DataFrame:
    """The fit's filtered probabilities on each market's observed days (the days both methods are scored on)."""
    frame = fit.regimes_frame()
    frame = frame[frame["observed"] == 1]
    return frame[["date", "market", *[f"filtered_{n}" for n in fit.regimes]]]


def hmmlearn_scores(m, regimes, truth: pd.DataFrame, starts: int) -> dict:
    """hmmlearn's PIT figures and Brier scores for one market (see the module docstring)."""
    observed = np.asarray(m.observed, dtype=bool)
    x = np.asarray(m.returns, dtype=float)[observed]
    k = len(regimes)
    best = best_hmmlearn(x[:, None], k, starts)
    order = np.argsort(best.covars_.reshape(k, -1)[:, 0])
    mu = best.means_[order, 0]
    sd = np.sqrt(best.covars_.reshape(k, -1)[order, 0])
    a = best.transmat_[order][:, order]
    init = best.startprob_[order]
    ll = stats.norm.logpdf(x[:, None], mu, sd)
    log_trans = torch.tensor(np.log(np.maximum(a, 1e-300))).expand(len(x), k, k)[None]
    post = posterior(torch.tensor(np.log(np.maximum(init, 1e-300)))[None], log_trans, torch.tensor(ll)[None])
    filtered = post.filtered[0].numpy()
    weights = np.vstack([init, filtered[:-1] @ a])
    pit = (weights * stats.norm.cdf((x[:, None] - mu) / sd)).sum(-1)
    mean = (weights * mu).sum(-1)
    var = (weights * (sd**2 + mu**2)).sum(-1) - mean**2
    probs = pd.DataFrame({"date": m.dates[observed].strftime("%Y-%m-%d"), "market": m.name})
    for j, name in enumerate(regimes):
        probs[f"filtered_{name}"] = filtered[:, j]
    scores, _ = regime_scores(probs, {m.name: a}, truth, regimes, horizons=(5,))
    return {
        "ks_distance": float(stats.kstest(pit, "uniform").statistic),
        "coverage50": float(((pit >= 0.25) & (pit <= 0.75)).mean()),
        "coverage90": float(((pit >= 0.05) & (pit <= 0.95)).mean()),
        "variance_ratio": float(((x - mean) ** 2).sum() / var.sum()),
        "brier_h0": float(scores.loc[0, "brier_h0"]),
        "brier_h5": float(scores.loc[0, "brier_h5"]),
    }


def run(args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    for shocks in args.shocks:
        for seed in range(args.seeds):
            sim = simulate_default(seed, shocks=shocks)
            truth = sim.truth_frame()
            start = time.perf_counter()
            fit = rd.fit(sim.frame, warn=False)
            with tempfile.TemporaryDirectory() as tmp:
                write_outputs(fit, Path(tmp) / "fit", plots=False, posterior=False)
                report = calibrate(Path(tmp) / "fit", truth=truth, data=sim.frame)
            scores, _ = regime_scores(
                observed_probs(fit), {m.name: m.transition for m in fit.markets}, truth, fit.regimes, horizons=(5,)
            )
            ours = report.table.drop(columns=[c for c in report.table if c.startswith("brier")]).merge(scores)
            seconds = time.perf_counter() - start
            for m in fit.markets:
                row = ours[ours["market"] == m.name].iloc[0]
                mine = {c: float(row[c]) for c in ("ks_distance", "coverage50", "coverage90", "variance_ratio")}
                mine.update(brier_h0=float(row["brier_h0"]), brier_h5=float(row["brier_h5"]))
                theirs = hmmlearn_scores(m, fit.regimes, truth, args.hmmlearn_starts)
                for method, values in (("regime_dmm", mine), ("hmmlearn", theirs)):
                    rows.append({"shocks": shocks, "seed": seed, "market": m.name, "method": method, **values})
                print(
                    f"{shocks:>10} seed {seed} {m.name:>16}: regime-dmm KS {mine['ks_distance']:.3f} "
                    f"cover90 {mine['coverage90']:.3f} Brier {mine['brier_h0']:.3f} | hmmlearn KS "
                    f"{theirs['ks_distance']:.3f} cover90 {theirs['coverage90']:.3f} Brier {theirs['brier_h0']:.3f} "
                    f"({seconds:.1f} s)",
                    flush=True,
                )
    return pd.DataFrame(rows)


def run_real(files: list[str], out: Path) -> pd.DataFrame:
    """Walk-forward of each file alone, then its out-of-sample calibration (see the module docstring)."""
    rows = []
    for path in files:
        frame = rd.load_prices(path)
        dates = pd.DatetimeIndex(sorted(frame["date"].unique()))
        start = "2015-01-02" if len(dates) > 500 and dates[499] < pd.Timestamp("2015-01-02") else None
        plan = rd.WalkForwardPlan(refit_every=63, window=2520, start=start)
        folder = out / Path(path).stem
        began = time.perf_counter()
        rd.walk_forward(path, plan=plan, out=folder)
        report = calibrate(folder)
        seconds = time.perf_counter() - began
        for _, r in report.table.iterrows():
            rows.append({"file": Path(path).name, **r.to_dict(), "seconds": seconds})
            print(
                f"{Path(path).name}: {r['market']} {int(r['days'])} days, KS {r['ks_distance']:.3f}, cover50 "
                f"{r['coverage50']:.3f}, cover90 {r['coverage90']:.3f}, variance ratio {r['variance_ratio']:.2f} "
                f"({seconds:.0f} s)",
                flush=True,
            )
    return pd.DataFrame(rows)


def table(frame: pd.DataFrame) -> str:
    """Means over seeds as a markdown table."""
    columns = ["ks_distance", "coverage50", "coverage90", "variance_ratio", "brier_h0", "brier_h5"]
    means = frame.groupby(["shocks", "market", "method"], sort=False)[columns].mean().reset_index()
    lines = ["| shocks | market | method | " + " | ".join(columns) + " |", "|" + "---|" * (3 + len(columns))]
    for _, r in means.iterrows():
        values = " | ".join(f"{r[c]:.3f}" for c in columns)
        lines.append(f"| {r['shocks']} | {r['market']} | {r['method']} | {values} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shocks", nargs="+", default=["studentt:4"])
    parser.add_argument("--hmmlearn-starts", type=int, default=10)
    parser.add_argument("--real", nargs="+", metavar="FILE", help="walk-forward calibration of real price files")
    parser.add_argument("--out", default=None, help="with --real: where the walk-forward folders go (default: temp)")
    args = parser.parse_args()
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", rd.RegimeWarning)
    if args.real:
        with tempfile.TemporaryDirectory() as tmp:
            real = run_real(args.real, Path(args.out or tmp))
        columns = ["market", "days", "ks_distance", "coverage50", "coverage90", "variance_ratio", "seconds"]
        print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for _, r in real.iterrows():
            print(
                f"| {r['market']} | {int(r['days'])} | {r['ks_distance']:.3f} | {r['coverage50']:.3f} | "
                f"{r['coverage90']:.3f} | {r['variance_ratio']:.2f} | {r['seconds']:.0f} |"
            )
        return
    frame = run(args)
    print(f"\nmeans over {args.seeds} seeds (torch threads {torch.get_num_threads()}):")
    print(table(frame))


if __name__ == "__main__":
    main()
