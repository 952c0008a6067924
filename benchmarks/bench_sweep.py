"""Sweep and thread benchmark of regime_dmm (issue #11).

(a) **A single fit and threads**: ``rd.fit()`` on the embedded default data (2 markets x 2,500 days,
    K = 4, the default configuration), each in a fresh process: alone, then two identical fits started
    together (side by side), for each thread policy of ``--policies``: a fixed count
    (``REGIME_DMM_THREADS``) or ``default`` (the package's: 2 threads shared among the fits running).
    Slowdown ratio = the slower side-by-side fit's wall time / the same policy's fit alone.
(b) **A sweep**: ``--markets`` simulated business-day markets x ``--days`` returns, K = 4, each
    market its own fit (``regime_dmm.sweep``, held-out 20 %), on a LocalCluster of 1 and then 2 worker
    processes: wall time, tasks per minute, scaling ratio (1-worker wall / 2-worker wall), peak
    resident memory per worker, and whether the two runs gave the same rows.

Run it alone on an idle machine (timings depend on everything else running):

    python benchmarks/bench_sweep.py                                   # (a) and (b), 200 markets
    python benchmarks/bench_sweep.py --markets 8 --epochs 100          # a shorter (b)
    python benchmarks/bench_sweep.py --single-only                     # only (a)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import regime_dmm as rd
from regime_dmm.data import MarketSpec, simulate_markets
from regime_dmm.sweep import sweep

FIT_SCRIPT = (
    "import json, time, torch, regime_dmm as rd; t = time.perf_counter(); f = rd.fit(); "
    "print(json.dumps({'seconds': time.perf_counter() - t, 'loglik': f.log_likelihood, "
    "'threads': torch.get_num_threads()}))"
)


def fit_processes(count: int, threads: str) -> list[dict]:
    """Start ``count`` default fits at once, each in its own process, with the thread policy ``threads``
    ("default": the package's; "N": ``REGIME_DMM_THREADS=N``); their results."""
    env = dict(os.environ)
    env.pop("REGIME_DMM_THREADS", None)
    if threads != "default":
        env["REGIME_DMM_THREADS"] = threads
    procs = [
        subprocess.Popen([sys.executable, "-c", FIT_SCRIPT], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a fit process failed with exit code {p.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def bench_single(policies: list[str]) -> dict:
    print("(a) the default fit (rd.fit(), embedded data), each in a fresh process")
    result = {}
    for policy in policies:
        alone = fit_processes(1, policy)[0]
        side = fit_processes(2, policy)
        worst = max(r["seconds"] for r in side)
        both = ", ".join(f"{r['seconds']:.1f}" for r in side)
        result[policy] = {"alone": alone["seconds"], "side_by_side": worst, "loglik": alone["loglik"]}
        print(
            f"  threads {policy}: alone {alone['seconds']:.1f} s (log-likelihood {alone['loglik']:.3f}); "
            f"two side by side {both} s; slowdown {worst / alone['seconds']:.2f}x (target <= 2.2x)",
            flush=True,
        )
    return result


def markets(count: int, days: int, seed: int) -> pd.DataFrame:
    """``count`` four-regime business-day markets whose volatilities differ (scale 0.5x..2x)."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(count):
        scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        specs.append(
            MarketSpec(
                name=f"m{i:03d}",
                start="2015-01-01",
                freq="B",
                usage=(0.45, 0.3, 0.18, 0.07),
                leave_rates=(0.01, 0.02, 0.04, 0.1),
                means=(0.0006, 0.0002, -0.0004, -0.002),
                sds=tuple(scale * s for s in (0.006, 0.011, 0.02, 0.04)),
            )
        )
    return simulate_markets(specs, seed=seed, n_days=days + 1).frame


def bench_sweep(args) -> None:
    frame = markets(args.markets, args.days, args.seed)
    base = rd.FitConfig()
    args.epochs = base.training.epochs if args.epochs is None else args.epochs
    args.restarts = base.training.restarts if args.restarts is None else args.restarts
    config = base.replace(training={"epochs": args.epochs, "restarts": args.restarts})
    print(
        f"\n(b) sweep: {args.markets} markets x {args.days} days, K = 4, each market its own fit, "
        f"{args.epochs} epochs x {args.restarts} restarts, held-out 20 %, --no-outputs"
    )
    tables = {}
    walls = {}
    for workers in args.workers:
        out = Path(tempfile.mkdtemp(prefix=f"bench_sweep_{workers}_"))
        start = time.perf_counter()
        table = sweep(frame, out=out, ks=[4], seeds=[0], configs={"default": config}, outputs=False, workers=workers)
        wall = time.perf_counter() - start
        shutil.rmtree(out, ignore_errors=True)
        ok = int((table["status"] == "ok").sum())
        rss = table.groupby("worker")["peak_rss_mb"].max()
        walls[workers] = wall
        tables[workers] = table
        print(
            f"  {workers} worker(s): wall {wall:.1f} s (cluster start included), {len(table)} tasks ({ok} ok), "
            f"{len(table) / wall * 60:.1f} tasks/min; task seconds median {table['wall_seconds'].median():.1f}; "
            f"peak RSS per worker {', '.join(f'{v:.0f}' for v in rss)} MB"
        )
    if 1 in walls and 2 in walls:
        print(f"  scaling ratio 1 -> 2 workers: {walls[1] / walls[2]:.2f} (target >= 1.8)")
        a, b = tables[1].set_index("task_id"), tables[2].set_index("task_id")
        same = np.allclose(a["log_likelihood"], b.loc[a.index, "log_likelihood"], rtol=0, atol=1e-9)
        print(f"  same log-likelihoods with 1 and 2 workers: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=200)
    parser.add_argument("--days", type=int, default=2500)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per restart (default: the package's)")
    parser.add_argument("--restarts", type=int, default=None, help="restarts per fit (default: the package's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--policies",
        nargs="+",
        default=["1", "2", "default"],
        help="thread policies of (a): a fixed count, or 'default' (the package's: 2 shared among running fits)",
    )
    parser.add_argument("--single-only", action="store_true", help="only (a)")
    parser.add_argument("--sweep-only", action="store_true", help="only (b)")
    args = parser.parse_args()
    print(
        f"regime_dmm {rd.__version__}; python {platform.python_version()}; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if not args.sweep_only:
        bench_single(args.policies)
    if not args.single_only:
        bench_sweep(args)


if __name__ == "__main__":
    main()
