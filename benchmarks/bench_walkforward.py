"""Walk-forward regimes on the S&P 500 (arch.data, 1999-2018): regime-dmm vs the statistical jump model
(jumpmodels) vs a rolling hmmlearn HMM, on the same days, with the same costs and delay.

Each method refits every ``--refit-every`` business days on the data available then and gives each
later day a regime from data up to that day only:

* **regime-dmm**: :func:`regime_dmm.walk_forward` (exact DMM, ``--regimes`` regimes, expanding window),
  risk-off = the most volatile regime (K = 2) or the two most volatile (K > 2); filtered probability
  > 0.5 -> cash.
* **jumpmodels** ``JumpModel`` (2 states) with online prediction (``predict_online``), on the feature
  recipe of Shu, Yu and Mulvey (2024, "Downside risk reduction using regime-switching signals: a
  statistical jump model approach"): log EWM downside deviation (halflife 10), EWM Sortino ratios
  (halflives 20 and 60), standardised and clipped at 3 sd on each training window. The jump penalty
  is chosen on the validation years (``--validation``, before the test years) by the Sharpe ratio of
  the same long/cash rule, never on the test years. Risk-off = the state with the lower cumulative
  return (jumpmodels' ``sort_by="cumret"``).
* **hmmlearn** ``GaussianHMM`` (2 states) on the daily log returns, refitted on a rolling window
  (``--hmm-window`` days), filtered forward through the block; risk-off = the higher-variance state.

All three go through :func:`regime_dmm.backtest.backtest` (one-way cost ``--cost-bps``, delay
``--delay``), on the test days only. Prints one table (Sharpe, maximum drawdown, turnover, shifts
per year, wall time) and writes it to ``--out`` as CSV. Needs ``pip install jumpmodels hmmlearn arch``
(the ``compare`` extra).

    python benchmarks/bench_walkforward.py --out runs/bench_walkforward
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import regime_dmm as rd
from regime_dmm.backtest import StrategySpec, backtest
from regime_dmm.inference import posterior

warnings.filterwarnings("ignore")


def sp500() -> pd.DataFrame:
    from arch.data import sp500 as data

    close = data.load()["Adj Close"]
    return pd.DataFrame({"date": pd.DatetimeIndex(close.index), "market": "sp500", "price": close.to_numpy()})


def labels_table(dates, stress: np.ndarray, fit_dates, names=("calm", "volatile")) -> pd.DataFrame:
    """A walk-forward-shaped table from a risk-off probability (or 0/1 label) per day."""
    stress = np.asarray(stress, dtype=float)
    return pd.DataFrame(
        {
            "date": pd.DatetimeIndex(dates).strftime("%Y-%m-%d"),
            "market": "sp500",
            "regime": np.where(stress > 0.5, names[1], names[0]),
            f"filtered_{names[0]}": 1.0 - stress,
            f"filtered_{names[1]}": stress,
            "fit_date": pd.DatetimeIndex(fit_dates).strftime("%Y-%m-%d"),
            "observed": 1,
        }
    )


def jump_features(ret: pd.Series) -> pd.DataFrame:
    neg = np.minimum(ret, 0.0)
    out = {}
    dd10 = np.sqrt(neg.pow(2).ewm(halflife=10).mean())
    out["log_dd_10"] = np.log(dd10)
    for hl in (20, 60):
        dd = np.sqrt(neg.pow(2).ewm(halflife=hl).mean())
        out[f"sortino_{hl}"] = ret.ewm(halflife=hl).mean() / dd
    # the first days have no downside yet (log 0): carried forward from the past, never back from the future
    return pd.DataFrame(out).replace([np.inf, -np.inf], np.nan).ffill().fillna(0.0)


def jump_walk(ret: pd.Series, feats: pd.DataFrame, first: int, last: int, every: int, penalty: float) -> tuple:
    from jumpmodels.jump import JumpModel
    from jumpmodels.preprocess import DataClipperStd, StandardScalerPD

    stress, fit_dates, days = [], [], []
    for pos in range(first, last, every):
        end = min(pos + every, last)
        clip, scale = DataClipperStd(mul=3.0), StandardScalerPD()
        train = scale.fit_transform(clip.fit_transform(feats.iloc[: pos + 1]))
        jm = JumpModel(n_components=2, jump_penalty=penalty, cont=False, random_state=0)
        jm.fit(train, ret.iloc[: pos + 1], sort_by="cumret")
        upto = scale.transform(clip.transform(feats.iloc[: end + 1]))
        online = np.asarray(jm.predict_online(upto))
        stress.extend((online[pos + 1 : end + 1] == 1).astype(float))  # state 1: the lower cumulative return
        fit_dates.extend([ret.index[pos]] * (end - pos))
        days.extend(ret.index[pos + 1 : end + 1])
    return days, np.asarray(stress), fit_dates


def hmm_walk(ret: pd.Series, first: int, last: int, every: int, window: int) -> tuple:
    from hmmlearn.hmm import GaussianHMM

    x = ret.to_numpy()[:, None] * 100
    stress, fit_dates, days = [], [], []
    for pos in range(first, last, every):
        end = min(pos + every, last)
        lo = max(1, pos + 1 - window)
        best = None
        for seed in range(5):
            model = GaussianHMM(2, covariance_type="diag", n_iter=200, random_state=seed).fit(x[lo : pos + 1])
            score = model.score(x[lo : pos + 1])
            if best is None or score > best[0]:
                best = (score, model)
        model = best[1]
        sd = np.sqrt(model.covars_.reshape(2, -1)[:, 0])
        mean = model.means_[:, 0]
        # forward filter from the window start to the block end: day t sees days <= t only
        obs = torch.as_tensor(x[lo : end + 1, 0], dtype=torch.float64)
        obs_ll = torch.distributions.Normal(torch.as_tensor(mean), torch.as_tensor(sd)).log_prob(obs[:, None])
        log_trans = torch.as_tensor(np.log(model.transmat_)).expand(len(obs), 2, 2)
        log_init = torch.as_tensor(np.log(model.startprob_))
        filt = posterior(log_init[None], log_trans[None], obs_ll[None]).filtered[0].numpy()  # the package's filter
        hi = int(np.argmax(sd))
        stress.extend(filt[pos + 1 - lo :, hi])
        fit_dates.extend([ret.index[pos]] * (end - pos))
        days.extend(ret.index[pos + 1 : end + 1])
    return days, np.asarray(stress), fit_dates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test-start", default="2007-01-03")
    parser.add_argument("--validation", default="2003-01-02", help="start of the validation years (to --test-start)")
    parser.add_argument("--refit-every", type=int, default=63)
    parser.add_argument("--refit-epochs", type=int, default=100)
    parser.add_argument("--regimes", type=int, default=2)
    parser.add_argument("--hmm-window", type=int, default=1000)
    parser.add_argument("--cost-bps", type=float, default=10.0)
    parser.add_argument("--delay", type=int, default=1)
    parser.add_argument("--penalties", type=float, nargs="+", default=[0.0, 10.0, 30.0, 50.0, 100.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_walkforward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prices = sp500()
    dates = pd.DatetimeIndex(prices["date"])
    ret = pd.Series(np.log(prices["price"]).diff().to_numpy(), index=dates).iloc[1:]
    spec = StrategySpec(risk_off=("volatile",), cost_bps=args.cost_bps, delay=args.delay)
    test_first = int(ret.index.searchsorted(pd.Timestamp(args.test_start)))
    val_first = int(ret.index.searchsorted(pd.Timestamp(args.validation)))
    rows = []

    def score(name, table, wall, note=""):
        metrics, _ = backtest(table, prices, spec)
        for _, m in metrics.iterrows():
            label = name if m["strategy"] == "long_cash" else "buy and hold"
            if label == "buy and hold" and any(r["method"] == label for r in rows):
                continue
            rows.append(
                {
                    "method": label,
                    "annual_return": m["annual_return"],
                    "sharpe": m["sharpe"],
                    "max_drawdown": m["max_drawdown"],
                    "turnover_per_year": m["turnover_per_year"] if label != "buy and hold" else 0.0,
                    "shifts_per_year": m["shifts_per_year"] if label != "buy and hold" else 0.0,
                    "days": m["days"],
                    "wall_s": wall if label != "buy and hold" else float("nan"),
                    "note": note if label != "buy and hold" else "",
                }
            )

    # jumpmodels: the penalty chosen on the validation years, then the test years
    feats = jump_features(ret)
    t0 = time.perf_counter()
    sharpe = {}
    for lam in args.penalties:
        days, stress, fits = jump_walk(ret, feats, val_first, test_first, args.refit_every, lam)
        metrics, _ = backtest(labels_table(days, stress, fits), prices, spec)
        sharpe[lam] = float(metrics.loc[metrics["strategy"] == "long_cash", "sharpe"].iloc[0])
    lam = max(sharpe, key=lambda k: (sharpe[k], k))
    days, stress, fits = jump_walk(ret, feats, test_first - 1, len(ret) - 1, args.refit_every, lam)
    score("jumpmodels JumpModel", labels_table(days, stress, fits), time.perf_counter() - t0, f"jump penalty {lam:g}")
    print(f"jumpmodels: validation Sharpe by penalty {sharpe}; chosen {lam:g}", flush=True)

    t0 = time.perf_counter()
    days, stress, fits = hmm_walk(ret, test_first - 1, len(ret) - 1, args.refit_every, args.hmm_window)
    score("hmmlearn GaussianHMM (rolling)", labels_table(days, stress, fits), time.perf_counter() - t0)
    print("hmmlearn done", flush=True)

    t0 = time.perf_counter()
    config = rd.FitConfig().replace(model={"num_regimes": args.regimes})
    plan = rd.WalkForwardPlan(
        refit_every=args.refit_every, start=str(ret.index[test_first - 1].date()), refit_epochs=args.refit_epochs
    )
    table = rd.walk_forward(prices, config, plan=plan, out=Path(args.out) / "regime_dmm", progress=True)
    refits = table.attrs["refits"]  # issue #19: how many of the days two refits both saw the later one renames
    pooled = refits["relabelled_days"].sum() / max(int(refits["overlap_days"].sum()), 1)
    print(
        f"regime-dmm relabelled days per refit: median {refits['relabelled_share'].median():.1%}, "
        f"largest {refits['relabelled_share'].max():.1%}, pooled {pooled:.1%} over {len(refits)} refits",
        flush=True,
    )
    names = config.model.names()
    risk = [f"filtered_{n}" for n in names[1:]] if args.regimes == 2 else [f"filtered_{n}" for n in names[-2:]]
    score(
        f"regime-dmm walk_forward (K = {args.regimes})",
        labels_table(table["date"], table[risk].sum(1).to_numpy(), table["fit_date"]),
        time.perf_counter() - t0,
        f"risk-off: {', '.join(r.removeprefix('filtered_') for r in risk)}",
    )

    out = pd.DataFrame(rows)
    first_day, last_day = ret.index[test_first].date(), ret.index[-1].date()
    print(
        f"\nS&P 500, test days {first_day}..{last_day}, refit every {args.refit_every} days, "
        f"{args.cost_bps:g} bp one way, {args.delay}-day delay:"
    )
    print(out.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out.to_csv(Path(args.out) / "bench_walkforward.csv", index=False, float_format="%.6f")


if __name__ == "__main__":
    main()
