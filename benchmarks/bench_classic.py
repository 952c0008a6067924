"""Classic mode of regime_dmm against statsmodels and hmmlearn on S&P 500 daily returns.

The data are the S&P 500 daily log returns in percent, ``100 * diff(log(Adj Close))`` of
``arch.data.sp500.load()``, from 1999-01-05 to 2018-12-31 (T = 5030). For each K the
same model, a Gaussian Markov-switching model of the return with a switching mean and
variance, is fitted by

* regime_dmm classic mode (``model.classic=True``): exact log-likelihood maximised by
  L-BFGS, free initial distribution, best of ``--restarts`` restarts;
* statsmodels ``MarkovRegression(r, k_regimes=K, switching_variance=True)`` (EM then
  BFGS; steady-state initial distribution), ``search_reps=20`` random starts for K >= 3;
* hmmlearn ``GaussianHMM(covariance_type="diag", n_iter=1000, tol=1e-8)`` (Baum-Welch,
  free initial distribution), best of ``--hmmlearn-seeds`` seeds.

It prints one row per tool and K: fit time and log-likelihood (nats, returns in percent).
Then it checks that the likelihoods are the same function: hmmlearn's fitted K=2
parameters are evaluated with ``regime_dmm.inference.log_normalizer`` and compared to
hmmlearn's ``score``; and regime_dmm's fitted parameters are scored by hmmlearn.

    python benchmarks/bench_classic.py --k 2 3 4
    python benchmarks/bench_classic.py --k 4 --restarts 20 --hmmlearn-seeds 100 --tools regime_dmm hmmlearn
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import pandas as pd
import torch

import regime_dmm as rd
from regime_dmm.inference import log_normalizer

try:  # the same machine-load report as bench_speed (run as a script from any directory)
    from bench_speed import OthersMonitor, _print_load
except ImportError:  # pragma: no cover
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_speed import OthersMonitor, _print_load

START, END = "1999-01-05", "2018-12-31"

# Reference figures measured earlier (listed in benchmarks/README.md); absent = not measured.
REFERENCE = {
    ("statsmodels", 2): -7132.67,
    ("statsmodels", 3): -6901.51,
    ("hmmlearn", 2): -7131.65,
    ("hmmlearn", 3): -6900.74,
    ("hmmlearn", 4): -6854.89,  # best of 10 seeds; best of 100 seeds: -6852.48
}
BEST_KNOWN = {4: -6852.48}


def load_sp500() -> pd.Series:
    from arch.data import sp500

    prices = sp500.load()["Adj Close"]
    returns = 100.0 * np.log(prices).diff().dropna()
    return returns.loc[START:END]


def fit_regime_dmm(returns: pd.Series, k: int, restarts: int, seed: int):
    frame = pd.DataFrame({"date": returns.index, "market": "sp500", "return": returns.to_numpy()})
    # The peers fit plain maximum likelihood on every return as given: so does regime-dmm here (no
    # degenerate-regime guard, exact zeros read as returns, no bad-tick masking).
    cfg = rd.FitConfig().replace(
        model={"classic": True, "num_regimes": k, "min_scale": 0.0},
        training={"restarts": restarts, "seed": seed},
        data={"stale": "keep", "bad_ticks": "warn"},
    )
    start = time.perf_counter()
    fit = rd.fit(frame, config=cfg)
    elapsed = time.perf_counter() - start
    lls = [r.get("log_likelihood_normalised") for r in fit.restarts if r.get("status") == "ok"]
    failed = sum(r.get("status") != "ok" for r in fit.restarts)
    return fit, elapsed, lls, failed


def fit_statsmodels(returns: pd.Series, k: int, search_reps: int, seed: int):
    import statsmodels.api as sm

    np.random.seed(seed)  # noqa: NPY002 - statsmodels' search_reps draws its random starts from the global state
    model = sm.tsa.MarkovRegression(returns.to_numpy(), k_regimes=k, switching_variance=True)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit(search_reps=search_reps) if search_reps else model.fit()
    elapsed = time.perf_counter() - start
    messages = sorted({type(w.message).__name__ for w in caught})
    return result, elapsed, messages


def fit_hmmlearn(returns: pd.Series, k: int, seeds: int):
    from hmmlearn.hmm import GaussianHMM

    x = returns.to_numpy()[:, None]
    best, best_score, scores = None, -np.inf, []
    start = time.perf_counter()
    for seed in range(seeds):
        model = GaussianHMM(n_components=k, covariance_type="diag", n_iter=1000, tol=1e-8, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x)
        score = model.score(x)
        scores.append(score)
        if score > best_score:
            best, best_score = model, score
    elapsed = time.perf_counter() - start
    return best, best_score, elapsed, scores


def gaussian_log_z(returns: np.ndarray, startprob, transmat, means, sds) -> float:
    """log p(r_{1:T}) of a Gaussian HMM via regime_dmm.inference.log_normalizer (float64)."""
    r = torch.tensor(np.array(returns, dtype=np.float64))
    steps, k = r.shape[0], len(means)
    log_init = torch.as_tensor(np.asarray(startprob), dtype=torch.float64).clamp(min=1e-300).log()[None]
    log_a = torch.as_tensor(np.asarray(transmat), dtype=torch.float64).clamp(min=1e-300).log()
    log_trans = log_a[None, None].expand(1, steps, k, k)
    obs_ll = torch.distributions.Normal(
        torch.as_tensor(np.asarray(means), dtype=torch.float64), torch.as_tensor(np.asarray(sds), dtype=torch.float64)
    ).log_prob(r[:, None])[None]
    with torch.no_grad():
        return float(log_normalizer(log_init, log_trans, obs_ll)[0])


def hmmlearn_params(model):
    sds = np.sqrt(np.asarray(model.covars_).reshape(model.n_components, -1)[:, 0])
    return model.startprob_, model.transmat_, model.means_[:, 0], sds


def score_with_hmmlearn(returns: np.ndarray, market) -> float:
    """hmmlearn's score of regime_dmm's fitted parameters (one market)."""
    from hmmlearn.hmm import GaussianHMM

    k = len(market.initial)
    model = GaussianHMM(n_components=k, covariance_type="diag", init_params="", params="")
    init = np.clip(np.asarray(market.initial, dtype=float), 0, None)
    trans = np.clip(np.asarray(market.transition, dtype=float), 0, None)
    model.startprob_ = init / init.sum()
    model.transmat_ = trans / trans.sum(1, keepdims=True)
    model.means_ = np.asarray(market.emission["return_mean"], dtype=float)[:, None]
    model.covars_ = (np.asarray(market.emission["return_sd"], dtype=float) ** 2)[:, None]
    return float(model.score(returns[:, None]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3, 4], help="numbers of regimes")
    parser.add_argument("--restarts", type=int, default=10, help="regime_dmm restarts")
    parser.add_argument("--hmmlearn-seeds", type=int, default=10, help="hmmlearn: best of this many seeds")
    parser.add_argument("--search-reps", type=int, default=20, help="statsmodels search_reps for K >= 3")
    parser.add_argument("--seed", type=int, default=0, help="regime_dmm training.seed and numpy seed of statsmodels")
    parser.add_argument(
        "--tools",
        nargs="+",
        default=["regime_dmm", "statsmodels", "hmmlearn"],
        choices=["regime_dmm", "statsmodels", "hmmlearn"],
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default, one per core)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    returns = load_sp500()
    r = returns.to_numpy()
    print(
        f"S&P 500 daily log returns in percent, {returns.index[0].date()}..{returns.index[-1].date()}, "
        f"T={len(r)}, mean {r.mean():.4f}, sd {r.std():.4f}"
    )
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; regime_dmm {rd.__version__}; "
        f"{os.cpu_count()} CPUs"
    )
    _print_load("at start")
    print()

    rows = []
    fits: dict[int, object] = {}
    hmm_models: dict[int, object] = {}
    for k in args.k:
        if "regime_dmm" in args.tools:
            monitor = OthersMonitor()
            fit, elapsed, lls, failed = fit_regime_dmm(returns, k, args.restarts, args.seed)
            others = monitor.share()
            fits[k] = fit
            best = fit.log_likelihood
            near = sum(ll is not None and ll > best - 0.1 for ll in lls)
            note = f"{args.restarts} restarts, {near} within 0.1 of best"
            if failed:
                note += f", {failed} failed"
            rows.append(("regime_dmm classic", k, elapsed, best, note, others))
            print(
                f"[regime_dmm K={k}] {elapsed:.1f} s, log-likelihood {best:.3f}; per restart: "
                f"{', '.join(f'{ll:.2f}' for ll in lls)}",
                flush=True,
            )
        if "statsmodels" in args.tools:
            reps = args.search_reps if k >= 3 else 0
            monitor = OthersMonitor()
            try:
                result, elapsed, messages = fit_statsmodels(returns, k, reps, args.seed)
                note = f"search_reps={reps}" + (f"; warnings: {', '.join(messages)}" if messages else "")
                rows.append(("statsmodels", k, elapsed, float(result.llf), note, monitor.share()))
                print(f"[statsmodels K={k}] {elapsed:.1f} s, log-likelihood {result.llf:.3f}", flush=True)
            except Exception as exc:  # report, keep going
                rows.append(
                    ("statsmodels", k, float("nan"), float("nan"), f"failed: {type(exc).__name__}: {exc}", None)
                )
                print(f"[statsmodels K={k}] failed: {exc}", flush=True)
        if "hmmlearn" in args.tools:
            monitor = OthersMonitor()
            model, best, elapsed, scores = fit_hmmlearn(returns, k, args.hmmlearn_seeds)
            hmm_models[k] = model
            near = sum(s > best - 0.1 for s in scores)
            rows.append(
                (
                    "hmmlearn",
                    k,
                    elapsed,
                    best,
                    f"best of {args.hmmlearn_seeds} seeds, {near} within 0.1 of best",
                    monitor.share(),
                )
            )
            print(f"[hmmlearn K={k}] {elapsed:.1f} s, best log-likelihood {best:.3f}", flush=True)

    print()
    header = (
        f"{'tool':<20s} {'K':>2s} {'fit time s':>11s} {'log-likelihood':>15s} {'reference':>10s} {'others%':>7s}  notes"
    )
    print(header)
    print("-" * (len(header) + 30))
    for tool, k, elapsed, ll, note, others in rows:
        ref = REFERENCE.get((tool, k))
        ref_s = f"{ref:.2f}" if ref is not None else "-"
        others_s = f"{100 * others:.0f}" if others is not None else "-"
        print(f"{tool:<20s} {k:>2d} {elapsed:>11.2f} {ll:>15.3f} {ref_s:>10s} {others_s:>7s}  {note}")
    print("others% = share of the CPUs used by other processes during the fit; above ~5 the time is inflated")
    for k, value in BEST_KNOWN.items():
        if k in args.k:
            print(f"(best known K={k}: {value:.2f}, hmmlearn best of 100 seeds)")
    print()

    print("Same parameters, two implementations of the likelihood:")
    if 2 in hmm_models:
        model = hmm_models[2]
        ours = gaussian_log_z(r, *hmmlearn_params(model))
        theirs = float(model.score(r[:, None]))
        print(
            f"  hmmlearn K=2 params: hmmlearn score {theirs:.6f}, regime_dmm log_normalizer {ours:.6f}, "
            f"|diff| {abs(ours - theirs):.3e}"
        )
    else:
        print("  (hmmlearn K=2 not fitted: run with --k 2 and --tools hmmlearn for the check)")
    for k, fit in fits.items():
        market = fit.markets[0]
        theirs = score_with_hmmlearn(r, market)
        print(
            f"  regime_dmm K={k} params: regime_dmm log-likelihood {market.log_likelihood:.6f}, "
            f"hmmlearn score {theirs:.6f}, |diff| {abs(market.log_likelihood - theirs):.3e}"
        )
    _print_load("at end")


if __name__ == "__main__":
    main()
