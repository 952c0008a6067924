"""Speed of regime_dmm, beside a pinned earlier commit and hmmlearn, in one process on one machine.

(a) The default fit (``rd.fit()``: embedded simulated data, 2 markets x 2,500 days, K = 4): wall time and
    log-likelihood of this checkout; of ``--baseline`` (a commit, checked out in a temporary ``git worktree``
    and run in a subprocess with the same interpreter); and of hmmlearn's ``GaussianHMM`` (K = 4, diagonal,
    best of 10 seeds, 500 iterations, tol 1e-6) on each market's observed returns. Prints the ratio of this
    checkout's wall time to hmmlearn's.
(b) This checkout's default fit by phase: warm start (its L-BFGS, the df grid, EM), training (Adam epochs
    and L-BFGS iterations), results, and the outputs a CLI run adds (plots, ArviZ export, netCDF).
(c) A warm walk-forward refit: one market of 5,000 days fitted, then refitted on the same days and 20 more
    from the first fit's parameters as ``regime-dmm walkforward`` does (one restart, ``refit_epochs`` 100).
(d) ``select`` over K = 2..6 on the embedded default (``--select``).
(e) Scale (``--scale``): 32 markets x 2,500 days in one model and 1 market x 20,000 days, one restart each,
    wall time and peak memory, each in its own process.
(b2) The cross-market report at 2, 8 and 32 markets (copies of the default fit's markets).
(g) A daily update (``rd.update``, ``regime-dmm update``) of a saved default fit with 5 new days.
(f) The inference kernels: ``log_normalizer`` forward+backward (and 0.3.0's, through ``DiscreteHMM``),
    ``expected_statistics`` (the EM E-step) and ``posterior`` (0.3.0's E-step) at several lengths.

Run one benchmark at a time on an otherwise idle machine (absolute times move by a quarter between runs:
compare within one run). ``torch.get_num_threads()`` is printed because the numbers depend on it.

    python benchmarks/bench_speed.py                       # (a), (b), (c), (g), (f)
    python benchmarks/bench_speed.py --select --scale      # and (d), (e)
    python benchmarks/bench_speed.py --baseline none       # without the earlier commit
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import regime_dmm as rd
from regime_dmm.inference import expected_statistics, log_normalizer, posterior

ROOT = Path(__file__).resolve().parents[1]
#: regime-dmm 0.3.0 as it stood before the fast-fit work (issue #18).
BASELINE = "03e3997"


def time_call(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- (a) the default fit, beside the baseline and hmmlearn ------------------------------------------------
_FIT_SNIPPET = """
import json, time, regime_dmm as rd
start = time.perf_counter()
fit = rd.fit()
print(json.dumps({"wall": time.perf_counter() - start, "loglik": fit.log_likelihood, "version": rd.__version__}))
"""


@contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """A temporary detached ``git worktree`` of ``commit``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="regime-dmm-baseline-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True, capture_output=True
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False, capture_output=True
            )


def run_fit_in(src: Path) -> dict:
    """The default fit of the package under ``src`` in a subprocess of this interpreter (wall, loglik)."""
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", _FIT_SNIPPET], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def hmmlearn_fit(frame) -> tuple[float, float]:
    """hmmlearn GaussianHMM, K = 4, best of 10 seeds per market on its observed returns: (wall s, log-lik)."""
    from hmmlearn.hmm import GaussianHMM

    logging.getLogger("hmmlearn").setLevel(logging.ERROR)  # its "Model is not converging" lines
    start, total = time.perf_counter(), 0.0
    for _, rows in frame.groupby("market", sort=False):
        price = rows["price"].to_numpy(dtype=float)
        returns = np.diff(np.log(price))
        x = returns[np.isfinite(returns) & (returns != 0)][:, None]
        best = -np.inf
        for seed in range(10):
            model = GaussianHMM(n_components=4, covariance_type="diag", n_iter=500, tol=1e-6, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    model.fit(x)
                    best = max(best, model.score(x))
                except ValueError:
                    continue
        total += best
    return time.perf_counter() - start, total


def bench_default_fit(baseline: str) -> None:
    print("== (a) the default fit (embedded data, 2 markets x 2,500 days, K = 4) ==")
    cfg = rd.FitConfig()
    tc = cfg.training
    print(
        f"config: optimizer={tc.optimizer}, epochs={tc.epochs}, anneal_epochs={tc.anneal_epochs}, "
        f"restarts={tc.restarts}, emission={cfg.model.emission}, pooling={cfg.model.pooling}"
    )
    rows = []
    new = run_fit_in(ROOT / "src")
    rows.append((f"regime-dmm {new['version']} (this checkout)", new["wall"], new["loglik"]))
    if baseline != "none":
        with worktree(baseline) as tree:
            old = run_fit_in(tree / "src")
        rows.append((f"regime-dmm {old['version']} ({baseline})", old["wall"], old["loglik"]))
    wall_h, ll_h = hmmlearn_fit(rd.simulate_default(0).frame)
    rows.append(("hmmlearn GaussianHMM, best of 10 seeds per market", wall_h, ll_h))
    print("| fit | wall s | log-likelihood (nats) |\n|---|---|---|")
    for name, wall, ll in rows:
        print(f"| {name} | {wall:.1f} | {ll:.3f} |")
    print(f"this checkout / hmmlearn wall time: {new['wall'] / wall_h:.2f}")
    if baseline != "none":
        print(f"this checkout / {baseline} wall time: {new['wall'] / rows[1][1]:.2f}")
    print("(hmmlearn's log-likelihood is of the returns alone, Gaussian, without the masked days: not comparable)")
    print()


# ---- (b) phases ---------------------------------------------------------------------------------------------
def bench_phases() -> None:
    """The default fit with its phases timed by wrapping the functions that make them."""
    from regime_dmm import fitting, outputs
    from regime_dmm.training import starting_values, svi, variants

    spent: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    originals = []

    def wrap(owner, name: str, label: str) -> None:
        fn = getattr(owner, name)
        originals.append((owner, name, fn))

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start
                calls[label] += 1

        setattr(owner, name, timed)

    wrap(variants.Variant, "starting_values", "warm start")
    wrap(starting_values, "train_lbfgs", "  its L-BFGS (classic HMMs)")
    wrap(starting_values, "_with_best_df", "  its df grid")
    wrap(starting_values, "em_polish", "  its EM")
    wrap(starting_values, "em_map", "  its MAP EM (rare-regime guard)")
    wrap(variants.Variant, "train", "training")
    wrap(svi, "_lbfgs_iteration", "  its L-BFGS iterations")
    wrap(fitting, "compute_results", "results (posterior, summaries)")
    wrap(fitting, "cross_market", "cross-market report")
    wrap(outputs, "write_outputs", "outputs (CSV, JSON, plots, ArviZ, netCDF)")
    try:
        start = time.perf_counter()
        fit = rd.fit()
        fitted_at = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            outputs.write_outputs(fit, Path(tmp) / "out")
        total = time.perf_counter() - start
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    print("== (b) the default fit by phase (this checkout) ==")
    print(f"rd.fit(): {fitted_at - start:.2f} s; with the CLI's outputs: {total:.2f} s")
    print("| phase | seconds | share of the fit and outputs | calls |\n|---|---|---|---|")
    for label, seconds in spent.items():
        print(f"| {label} | {seconds:.2f} | {seconds / total:.0%} | {calls[label]} |")
    epochs = fit.history.groupby("restart")["optimizer"].value_counts().unstack(fill_value=0)
    print(f"epochs per restart by optimizer:\n{epochs.to_string()}")
    print()
    bench_cross_market(fit)


def bench_cross_market(fit: rd.RegimeFit) -> None:
    """The cross-market report (co-occurrence, lead/lag with its 200-resample bootstrap) of M markets: copies of
    the default fit's two markets under other names (it reads only their dates and smoothed probabilities)."""
    from regime_dmm.cross_market import cross_market

    print("== (b2) the cross-market report, copies of the default fit's markets ==")
    print("| markets | pairs | seconds |\n|---|---|---|")
    for m in (2, 8, 32):
        markets = [dataclasses.replace(fit.markets[i % 2], name=f"m{i:02d}") for i in range(m)]
        start = time.perf_counter()
        cross_market(dataclasses.replace(fit, markets=markets), seed=0)
        print(f"| {m} | {m * (m - 1) // 2} | {time.perf_counter() - start:.2f} |", flush=True)
    print()


# ---- (c) a warm walk-forward refit -------------------------------------------------------------------------
def bench_refit() -> None:
    frame = rd.simulate_default(0, n_days=5021).frame
    first = frame[frame["market"] == "traditional_cre"]
    dates = sorted(first["date"].unique())
    config = rd.FitConfig().replace(training={"restarts": 1})
    start = time.perf_counter()
    fit = rd.fit(first[first["date"] <= dates[-21]], config)
    full = time.perf_counter() - start
    refit_cfg = config.replace(training={"epochs": 100, "restarts": 1, "anneal_epochs": 0})
    params = fit.fitted.parameters()
    start = time.perf_counter()
    refit = rd.fit(first, refit_cfg, initial_params=params)
    warm = time.perf_counter() - start
    # a walk-forward runs its refits in one process: the refits after the first are what each one costs
    later = time_call(lambda: rd.fit(first, refit_cfg, initial_params=params), 3)
    print("== (c) walk-forward refit, 1 market x 5,000 days ==")
    print(
        f"first fit: {full:.2f} s; warm refit with 20 more days: {warm:.2f} s the first in the process, "
        f"{later:.2f} s later ones (median of 3 after one more) ({int(refit.history['epoch'].max())} epochs)"
    )
    print()


# ---- (g) a daily update -------------------------------------------------------------------------------------
def bench_update() -> None:
    """``rd.update`` of a saved default fit (2 markets x 2,496 days) with 5 new days of each market, from the
    fit's file grown by them (the usual daily case); and ``regime-dmm update`` as a command (a fresh process:
    interpreter start and imports included)."""
    from regime_dmm.outputs import write_outputs

    frame = rd.simulate_default(0).frame
    cut = frame.groupby("market", sort=False).head(2496)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cut.to_csv(root / "prices.csv", index=False)
        fit = rd.fit(root / "prices.csv", warn=False)
        write_outputs(fit, root / "fit", plots=False, posterior=False)
        frame.groupby("market", sort=False).head(2501).to_csv(root / "prices.csv", index=False)  # 5 days more
        seconds = time_call(lambda: rd.update(root / "fit", root / "prices.csv", write=False), 5)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "regime_dmm.cli", "update", str(root / "fit"), "--data", str(root / "prices.csv")],
            capture_output=True,
            text=True,
        )
        command = time.perf_counter() - start
    print("== (g) a daily update: a saved fit of 2 markets x 2,496 days, 5 new days each ==")
    print(
        f"rd.update: {seconds:.3f} s (median of 5); regime-dmm update (a new process): {command:.2f} s, "
        f"exit {done.returncode}"
    )
    print()


# ---- (d) select ---------------------------------------------------------------------------------------------
def bench_select() -> None:
    """``select`` over K = 2..6 with the K side by side in two processes or more (one thread each on 2 cores) and in
    one process (two threads: the command line's default on 2 cores); the two tables must agree."""
    from regime_dmm.selection import select_regimes
    from regime_dmm.threads import available_cores

    print("== (d) select K = 2..6 on the embedded default ==")
    tables = {}
    side_by_side = max(2, min(available_cores(), 5))
    for workers in (side_by_side, 1):
        start = time.perf_counter()
        tables[workers] = select_regimes(None, ks=range(2, 7), workers=workers)
        label = f"{workers} processes" if workers > 1 else "one process (the default on 2 cores)"
        table = tables[workers]
        fits = ", ".join(f"K={int(r.K)} {r.fit_seconds:.1f} s" for r in table.sort_values("K").itertuples())
        chosen = int(table.loc[table["chosen"], "K"].iloc[0])
        print(
            f"{label}: wall {time.perf_counter() - start:.1f} s; best K by held-out log-likelihood: "
            f"{int(table.iloc[0]['K'])}; chosen {chosen} ({fits})"
        )
    same = tables[side_by_side].drop(columns="fit_seconds").equals(tables[1].drop(columns="fit_seconds"))
    print(f"same table: {same}")
    print()


# ---- (e) scale ----------------------------------------------------------------------------------------------
_SCALE_SNIPPET = """
import json, resource, sys, time
import regime_dmm as rd
from regime_dmm.data import DEFAULT_SPECS, simulate_markets
markets, days = int(sys.argv[1]), int(sys.argv[2])
specs = [{**DEFAULT_SPECS[i % 2].__dict__, "name": f"m{i:02d}"} for i in range(markets)]
frame = simulate_markets(specs, seed=0, n_days=days + 1).frame
start = time.perf_counter()
fit = rd.fit(frame, rd.FitConfig().replace(training={"restarts": 1}))
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "peak_mib": peak, "epochs": int(fit.history["epoch"].max())}))
"""


def bench_scale() -> None:
    print("== (e) scale: one restart, each in its own process ==")
    print("| markets x days | wall s | peak memory MiB | epochs |\n|---|---|---|---|")
    for markets, days in ((2, 2500), (8, 2500), (32, 2500), (1, 5000), (1, 20000)):
        out = subprocess.run(
            [sys.executable, "-c", _SCALE_SNIPPET, str(markets), str(days)], check=True, capture_output=True, text=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {markets} x {days} | {r['wall']:.1f} | {r['peak_mib']:.0f} | {r['epochs']} |", flush=True)
    print()


# ---- (f) kernels --------------------------------------------------------------------------------------------
def make_potentials(batch: int, steps: int, k: int, dtype: torch.dtype, seed: int = 0):
    """Random, properly normalised, time-varying log-potentials (leaf tensors with grad)."""
    gen = torch.Generator().manual_seed(seed)
    log_init = torch.log_softmax(torch.randn(batch, k, generator=gen, dtype=dtype), -1)
    trans_logits = torch.randn(batch, steps, k, k, generator=gen, dtype=dtype) + 3.0 * torch.eye(k, dtype=dtype)
    log_trans = torch.log_softmax(trans_logits, -1)
    obs_ll = -0.5 * torch.randn(batch, steps, k, generator=gen, dtype=dtype) ** 2 - 1.0
    return tuple(t.detach().requires_grad_(True) for t in (log_init, log_trans, obs_ll))


def discrete_hmm_log_z(log_init: torch.Tensor, log_trans: torch.Tensor, obs_ll: torch.Tensor) -> torch.Tensor:
    """log Z as regime-dmm 0.3.0 computed it: ``pyro.distributions.DiscreteHMM`` with p(z_0) in step 0's rows."""
    import pyro.distributions as dist

    batch, steps, k = obs_ll.shape
    first = log_init[..., None, None, :].expand(log_trans[..., :1, :, :].shape)
    hmm = dist.DiscreteHMM(
        torch.zeros(batch, k, dtype=obs_ll.dtype),
        torch.cat([first, log_trans[..., 1:, :, :]], dim=-3),
        dist.Delta(torch.zeros_like(obs_ll), log_density=obs_ll, validate_args=False),
        duration=steps,
        validate_args=False,
    )
    return hmm.log_prob(torch.zeros(batch, steps, dtype=obs_ll.dtype))


def bench_kernels(lengths: list[int], k: int, batch: int, repeats: int) -> None:
    print(f"== (f) inference kernels, batch {batch}, K = {k}, float64, median ms ==")
    print(
        "| T | log_normalizer f+b | pyro DiscreteHMM f+b (0.3.0's log Z) | expected_statistics (E-step) "
        "| posterior (filtered too; 0.3.0's E-step) |\n|---|---|---|---|---|"
    )
    for steps in lengths:
        inputs = make_potentials(batch, steps, k, torch.float64)

        def fb(inputs=inputs):
            for t in inputs:
                t.grad = None
            log_normalizer(*inputs).sum().backward()

        def fb_pyro(inputs=inputs):
            for t in inputs:
                t.grad = None
            discrete_hmm_log_z(*inputs).sum().backward()

        n = repeats if steps < 100_000 else 3
        cells = [time_call(fb, n), time_call(fb_pyro, n)]
        cells.append(time_call(lambda inputs=inputs: expected_statistics(*inputs), n))
        with torch.no_grad():
            cells.append(time_call(lambda inputs=inputs: posterior(*inputs), n))
        print(f"| {steps} | " + " | ".join(f"{1000 * c:.1f}" for c in cells) + " |", flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help=f"commit to compare with (default {BASELINE}; none)")
    parser.add_argument("--skip-fit", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--skip-refit", action="store_true", help="skip (c)")
    parser.add_argument("--skip-update", action="store_true", help="skip (g)")
    parser.add_argument("--select", action="store_true", help="run (d)")
    parser.add_argument("--scale", action="store_true", help="run (e)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 2500, 10000, 100000])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    warnings.simplefilter("ignore", rd.RegimeWarning)  # the fits' findings (this benchmark times them)
    print(
        f"regime-dmm {rd.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    print()
    if not args.skip_fit:
        bench_default_fit(args.baseline)
        bench_phases()
    if not args.skip_refit:
        bench_refit()
    if not args.skip_update:
        bench_update()
    if args.select:
        bench_select()
    if args.scale:
        bench_scale()
    bench_kernels(args.lengths, args.k, args.batch, args.repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
