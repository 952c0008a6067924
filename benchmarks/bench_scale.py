"""Scale limits: fit 20 markets x 10,000 days and report wall time and peak memory.

    python benchmarks/bench_scale.py [--markets 20] [--days 10000] [--epochs 300] [--restarts 1]

Peak memory is the process's maximum resident set size (``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import regime_dmm as rd
from regime_dmm.data import DEFAULT_SPECS, simulate_markets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=20)
    parser.add_argument("--days", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--restarts", type=int, default=1)
    args = parser.parse_args()
    specs = []
    for i in range(args.markets):
        base = DEFAULT_SPECS[i % 2]
        specs.append({**base.__dict__, "name": f"{base.name}_{i:02d}"})
    sim = simulate_markets(specs, seed=0, n_days=args.days + 1)
    config = rd.FitConfig().replace(training={"epochs": args.epochs, "restarts": args.restarts})
    start = time.perf_counter()
    fit = rd.fit(sim.frame, config)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    acc = np.mean([(m.smoothed.argmax(-1) == sim.true_regimes[m.name]).mean() for m in fit.markets])
    print(f"{args.markets} markets x {args.days} days, K=4, {args.epochs} epochs, {args.restarts} restart(s)")
    print(
        f"wall time {wall:.1f} s, peak memory {peak_mib:.0f} MiB, log-likelihood {fit.log_likelihood:.1f}, "
        f"finite: {np.isfinite(fit.log_likelihood)}, mean accuracy vs truth {acc:.3f}"
    )


if __name__ == "__main__":
    main()
