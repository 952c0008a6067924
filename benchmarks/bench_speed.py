"""Speed benchmark of regime_dmm.

(a) Wall time and log-likelihood of ``rd.fit()`` with the default configuration
    (embedded simulated data, 2 markets x 2,500 days, K=4, all restarts included).
(b) Forward+backward time of ``regime_dmm.inference.log_normalizer`` (log Z through
    pyro's DiscreteHMM) for several series lengths, float64 and float32, and the time
    of ``regime_dmm.inference.posterior`` (smoothed/filtered/pairwise marginals).

Timings are medians over ``--repeats`` runs after one warm-up run. Run one benchmark at
a time on an otherwise idle machine; ``torch.get_num_threads()`` is printed because the
numbers depend on it.

    python benchmarks/bench_speed.py                 # everything
    python benchmarks/bench_speed.py --skip-fit      # kernels only
    python benchmarks/bench_speed.py --lengths 1000 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import regime_dmm as rd
from regime_dmm.inference import log_normalizer, posterior


def make_potentials(batch: int, steps: int, k: int, dtype: torch.dtype, seed: int = 0):
    """Random, properly normalised, time-varying log-potentials (leaf tensors with grad)."""
    gen = torch.Generator().manual_seed(seed)
    log_init = torch.log_softmax(torch.randn(batch, k, generator=gen, dtype=dtype), -1)
    trans_logits = torch.randn(batch, steps, k, k, generator=gen, dtype=dtype) + 3.0 * torch.eye(k, dtype=dtype)
    log_trans = torch.log_softmax(trans_logits, -1)
    obs_ll = -0.5 * torch.randn(batch, steps, k, generator=gen, dtype=dtype) ** 2 - 1.0
    return tuple(t.detach().requires_grad_(True) for t in (log_init, log_trans, obs_ll))


def _zero_grads(tensors) -> None:
    for t in tensors:
        t.grad = None


def time_call(fn, repeats: int) -> tuple[float, float, float]:
    """(median, min, max) seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def bench_log_normalizer(batch: int, steps: int, k: int, dtype: torch.dtype, repeats: int):
    inputs = make_potentials(batch, steps, k, dtype)

    def forward():
        with torch.no_grad():
            log_normalizer(*inputs)

    def forward_backward():
        _zero_grads(inputs)
        log_normalizer(*inputs).sum().backward()

    fwd = time_call(forward, repeats)
    fb = time_call(forward_backward, repeats)
    return fwd, fb


def bench_posterior(batch: int, steps: int, k: int, dtype: torch.dtype, repeats: int):
    inputs = make_potentials(batch, steps, k, dtype)

    def forward():
        with torch.no_grad():
            posterior(*inputs)

    def forward_backward():  # e.g. a penalty on regime usage trained through the marginals
        _zero_grads(inputs)
        post = posterior(*inputs)
        (post.log_z.sum() + post.smoothed.mean(1).pow(2).sum()).backward()

    fwd = time_call(forward, repeats)
    fb = time_call(forward_backward, repeats)
    return fwd, fb


def bench_default_fit() -> None:
    print("== (a) rd.fit() with the default FitConfig (embedded data) ==")
    cfg = rd.FitConfig()
    tc, mc = cfg.training, cfg.model
    print(
        f"config: K={mc.num_regimes}, inference={tc.inference}, guide={tc.guide}, epochs={tc.epochs}, "
        f"restarts={tc.restarts}, dtype={tc.dtype}, seed={tc.seed}"
    )
    monitor = OthersMonitor()
    start, cpu0 = time.perf_counter(), time.process_time()
    fit = rd.fit(config=cfg)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    print(f"wall time: {wall:.1f} s (CPU time of this process: {cpu:.1f} s)")
    print(monitor.report("the fit"))
    print(f"log-likelihood (sum over markets, input units): {fit.log_likelihood:.3f}")
    for m in fit.markets:
        print(
            f"  {m.name:>16s}: T={len(m.dates)}, log-likelihood {m.log_likelihood:.3f}, "
            f"usage {[round(float(u), 3) for u in m.usage]}"
        )
    for r in fit.restarts:
        print(f"  restart {r}")
    if fit.truth is not None:
        acc = []
        for m, truth in zip(fit.markets, _truth_paths(fit)):
            if truth is not None and len(truth) == len(m.smoothed):
                acc.append(float((m.smoothed.argmax(-1) == truth).mean()))
        if acc:
            print(
                f"  accuracy of the most probable smoothed regime vs. the true regimes: "
                f"{', '.join(f'{a:.3f}' for a in acc)}"
            )
    print()


def _truth_paths(fit):
    """True regime paths of the embedded simulation (dict market -> (n_days-1,) int), aligned to the fitted days."""
    truth = getattr(fit.truth, "true_regimes", None) or {}
    out = []
    for m in fit.markets:
        path = truth.get(m.name)
        out.append(None if path is None else path[-len(m.dates) :])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-fit", action="store_true", help="skip (a), the default fit")
    parser.add_argument("--skip-kernels", action="store_true", help="skip (b), the inference kernels")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 5000, 10000, 100000])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per cell (3 for T >= 100000)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default, one per core)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs"
    )
    _print_load("at start")
    print()
    if not args.skip_fit:
        bench_default_fit()
    if args.skip_kernels:
        return

    monitor = OthersMonitor()
    print(f"== (b) log_normalizer (B={args.batch}, K={args.k}); median [min-max] of repeats after a warm-up ==")
    header = (
        f"{'T':>7s} {'dtype':>8s} {'reps':>4s} {'forward ms':>22s} {'forward+backward ms':>22s} {'f+b us/step':>12s}"
    )
    print(header)
    print("-" * len(header))
    for steps in args.lengths:
        for dtype in (torch.float64, torch.float32):
            reps = args.repeats if steps < 100000 else min(args.repeats, 3)
            fwd, fb = bench_log_normalizer(args.batch, steps, args.k, dtype, reps)
            print(
                f"{steps:>7d} {str(dtype).replace('torch.', ''):>8s} {reps:>4d} {_fmt(fwd):>22s} {_fmt(fb):>22s} "
                f"{1e6 * fb[0] / steps:>12.2f}"
            )
    print()

    steps = 5000
    print(f"== posterior() marginals (B={args.batch}, T={steps}, K={args.k}) ==")
    header = f"{'T':>7s} {'dtype':>8s} {'reps':>4s} {'forward ms':>22s} {'forward+backward ms':>22s}"
    print(header)
    print("-" * len(header))
    for dtype in (torch.float64, torch.float32):
        fwd, fb = bench_posterior(args.batch, steps, args.k, dtype, args.repeats)
        print(f"{steps:>7d} {str(dtype).replace('torch.', ''):>8s} {args.repeats:>4d} {_fmt(fwd):>22s} {_fmt(fb):>22s}")

    # Consistency: the two routes to log Z agree.
    inputs = make_potentials(args.batch, steps, args.k, torch.float64)
    with torch.no_grad():
        diff = (log_normalizer(*inputs) - posterior(*inputs).log_z).abs().max().item()
    print(f"max |log_normalizer - posterior.log_z| (float64, T={steps}): {diff:.3e}")
    print(monitor.report("the kernel timings"))
    _print_load("at end")


def _print_load(when: str) -> None:
    """Other processes on the machine distort the timings (torch threads oversubscribe the cores).

    Prints the load average and, on Linux, the share of CPU time used over the next second
    (by anything: this process is idle meanwhile, so it measures the others).
    """
    try:
        load = os.getloadavg()
    except OSError:
        return
    busy = _cpu_busy_share()
    busy_s = "" if busy is None else f"; CPUs busy over 1 s: {100 * busy:.0f}%"
    print(f"load average {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{busy_s}")
    if busy is not None and busy > 0.2:
        print("WARNING: other processes are using the CPUs; timings will be inflated (use an idle machine)")


class OthersMonitor:
    """Share of the machine's CPU time used by *other* processes between start() and share().

    Linux only (``/proc/stat``); ``share()`` is None elsewhere. A share above a few percent
    means the section's timings are inflated.
    """

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _stat():
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]  # guest time is already in user
        return sum(values), sum(values) - values[3] - values[4]

    def start(self) -> None:
        try:
            self._t0 = self._stat()
        except (OSError, ValueError, IndexError):
            self._t0 = None
        self._own0 = time.process_time()

    def share(self) -> float | None:
        if self._t0 is None:
            return None
        total1, busy1 = self._stat()
        hz = os.sysconf("SC_CLK_TCK")
        total = (total1 - self._t0[0]) / hz
        others = (busy1 - self._t0[1]) / hz - (time.process_time() - self._own0)
        return max(others, 0.0) / max(total, 1e-9)

    def report(self, section: str) -> str:
        share = self.share()
        if share is None:
            return ""
        warn = "  WARNING: timings inflated" if share > 0.05 else ""
        return f"[other processes used {100 * share:.0f}% of the CPUs during {section}]{warn}"


def _cpu_busy_share(interval: float = 1.0) -> float | None:
    def sample():
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]  # guest time is already in user
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def _fmt(stats: tuple[float, float, float]) -> str:
    med, lo, hi = (1e3 * s for s in stats)
    return f"{med:.2f} [{lo:.2f}-{hi:.2f}]"


if __name__ == "__main__":
    main()
