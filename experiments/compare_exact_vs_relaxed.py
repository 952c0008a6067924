"""Exact vs relaxed regimes on the simulated two-market data, over several seeds.

    nice python experiments/compare_exact_vs_relaxed.py --out runs/compare_exact_vs_relaxed

Per seed, ``regime_dmm.simulate_default(seed)`` is fitted once in each mode of the YAML
(``--config``, default: the YAML beside this file). Per mode and market:

* ``accuracy``: share of days whose most probable (smoothed) regime is the true one;
* ``oracle_accuracy``: the same for forward-backward with the TRUE parameters (Gaussian
  emissions with the simulator's means/sds, its transition matrix and initial
  distribution), the best any method can do; ``ratio = accuracy / oracle_accuracy``;
* ``usage_err``: max over regimes of |fitted usage - true usage (share of true days)|;
* ``trans_err``: mean absolute error of the K x K transition matrix (the average of the
  fitted per-day matrices) against the simulator's;
* ``log_lik``: final exact log-likelihood, input units (the model's, at its parameters);
* ``collapse``: the collapse warnings of the fit (kinds), ``wall_s``: seconds per fit.

Writes ``runs.csv`` (one row per seed, mode, market), ``summary.csv`` and ``summary.md``
(mean ± sd over seeds) into ``--out`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

import regime_dmm as rd
from regime_dmm.evaluation import oracle_states

METRICS = ["accuracy", "oracle_accuracy", "ratio", "usage_err", "trans_err", "log_lik", "wall_s"]


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for section, values in (extra or {}).items():
        out.setdefault(section, {}).update(values or {})
    return out


def evaluate(fit: rd.RegimeFit, sim, mode: str, seed: int, wall: float) -> list[dict]:
    rows = []
    k = len(fit.regimes)
    for m in fit.markets:
        true = sim.true_regimes[m.name]
        params = sim.params[m.name]
        acc = float((m.smoothed.argmax(-1) == true).mean())
        oracle = float((oracle_states(m.returns, params) == true).mean())
        true_usage = np.bincount(true, minlength=k) / len(true)
        kinds = sorted({c["kind"] for c in fit.collapse if c["market"] in (m.name, "all")})
        row = {
            "seed": seed,
            "mode": mode,
            "market": m.name,
            "accuracy": acc,
            "oracle_accuracy": oracle,
            "ratio": acc / oracle,
            "usage_err": float(np.abs(m.usage - true_usage).max()),
            "trans_err": float(np.abs(m.transition - params["transition"]).mean()),
            "log_lik": float(m.log_likelihood),
            "collapse": ";".join(kinds) if kinds else "-",
            "wall_s": wall,
        }
        for j, name in enumerate(fit.regimes):
            row[f"usage_{name}"] = float(m.usage[j])
            row[f"true_usage_{name}"] = float(true_usage[j])
        rows.append(row)
    return rows


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (mode, market), g in runs.groupby(["mode", "market"], sort=False):
        row = {"mode": mode, "market": market, "seeds": len(g)}
        for col in METRICS:
            row[col] = f"{g[col].mean():.3f} ± {g[col].std(ddof=1) if len(g) > 1 else 0.0:.3f}"
            if col in ("log_lik", "wall_s"):
                row[col] = f"{g[col].mean():.1f} ± {g[col].std(ddof=1) if len(g) > 1 else 0.0:.1f}"
        flagged = g[g["collapse"] != "-"]
        row["collapse"] = f"{len(flagged)}/{len(g)}" + (
            f" ({'; '.join(sorted(set(flagged['collapse'])))})" if len(flagged) else ""
        )
        out.append(row)
    return pd.DataFrame(out)


def to_markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).with_suffix(".yaml")))
    parser.add_argument("--out", default="runs/compare_exact_vs_relaxed")
    parser.add_argument("--seeds", type=int, nargs="*", help="override the YAML's seeds")
    parser.add_argument("--modes", nargs="*", help="run only these modes")
    parser.add_argument("--epochs", type=int, help="override training.epochs (quick runs)")
    parser.add_argument("--restarts", type=int, help="override training.restarts")
    parser.add_argument("--verbose", action="store_true", help="print the training log")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.config).read_text())
    seeds = args.seeds if args.seeds else spec["seeds"]
    modes = {
        name: merge(spec.get("common", {}), extra)
        for name, extra in spec["modes"].items()
        if not args.modes or name in args.modes
    }
    torch.set_num_threads(int(spec.get("threads", 1)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:
        sim = rd.simulate_default(seed, n_days=int(spec.get("n_days", 2501)))
        for mode, sections in modes.items():
            sections = merge(sections, {"training": {"seed": seed}})
            if args.epochs:
                sections["training"]["epochs"] = args.epochs
            if args.restarts:
                sections["training"]["restarts"] = args.restarts
            config = rd.FitConfig.from_dict(sections)
            start = time.perf_counter()
            fit = rd.fit(sim.frame, config, log=print if args.verbose else None)
            wall = time.perf_counter() - start
            new = evaluate(fit, sim, mode, seed, wall)
            rows.extend(new)
            for r in new:
                print(
                    f"seed {seed} {mode:>8} {r['market']:<16} acc {r['accuracy']:.3f} "
                    f"(oracle {r['oracle_accuracy']:.3f},"
                    f" ratio {r['ratio']:.3f}) usage_err {r['usage_err']:.3f} trans_err {r['trans_err']:.4f}"
                    f" loglik {r['log_lik']:.1f} collapse {r['collapse']} {wall:.0f}s",
                    flush=True,
                )
            pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    runs = pd.DataFrame(rows)
    table = summarise(runs)
    table.to_csv(out / "summary.csv", index=False)
    text = to_markdown(table)
    (out / "summary.md").write_text(text + "\n", encoding="utf-8")
    print()
    print(text)


if __name__ == "__main__":
    main()
