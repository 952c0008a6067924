"""Command line: ``regime-dmm fit`` and ``regime-dmm simulate``.

Errors the user can fix (bad data, bad configuration, an existing output folder) print
one line ``error: ...`` and exit with code 2; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import numpy as np

from .config import FitConfig
from .errors import RegimeDMMError

CHECKPOINT = "checkpoint.pt"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regime-dmm", description="Market regimes with an exact-regime Deep Markov Model.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit the model and write regimes, summary, history, checkpoint and plots")
    fit.add_argument("--data", help="CSV in long format: date, market, price|return (default: embedded simulated data)")
    fit.add_argument("--config", help="YAML file with sections model / penalties / training")
    fit.add_argument("--regimes", type=int, help="number of regimes K (default 4)")
    fit.add_argument("--seed", type=int, help="random seed (default 0)")
    fit.add_argument("--epochs", type=int, help="training epochs per restart")
    fit.add_argument("--restarts", type=int, help="restarts; the best objective is kept")
    fit.add_argument("--lr", type=float, help="learning rate of ClippedAdam")
    fit.add_argument("--classic", action="store_true", help="maximum-likelihood Gaussian Markov-switching model of the return")
    fit.add_argument("--emission", choices=["gaussian", "studentt"], help="emission distribution of the return")
    fit.add_argument("--guide", choices=["map", "normal"], help="guide for the global parameters")
    fit.add_argument("--out", default="regime_dmm_out", help="output folder (default: regime_dmm_out)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    fit.add_argument("--resume", metavar="DIR", help="continue the interrupted run whose output folder is DIR")
    fit.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                     help="write DIR/checkpoint.pt every N epochs (default 50)")
    fit.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    fit.add_argument("--quiet", action="store_true", help="no per-epoch log and no progress bar")

    sim = sub.add_parser("simulate", help="write the embedded simulated data set as CSV (input format)")
    sim.add_argument("--out", required=True, help="CSV file to write")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--truth", help="optional CSV of the true regimes (date, market, regime)")
    return parser


def _config(args) -> FitConfig:
    config = FitConfig.from_yaml(args.config) if args.config else FitConfig()
    model, training = {}, {}
    if args.regimes is not None:
        model["num_regimes"] = args.regimes
        if config.model.regime_names is not None and len(config.model.regime_names) != args.regimes:
            model["regime_names"] = None
        if config.model.regime_prior is not None and len(config.model.regime_prior) != args.regimes:
            model["regime_prior"] = None
    if args.classic:
        model["classic"] = True
    if args.emission:
        model["emission"] = args.emission
    for key in ("seed", "epochs", "restarts", "lr", "guide"):
        if getattr(args, key) is not None:
            training[key] = getattr(args, key)
    return config.replace(model=model, training=training)


def _print_matrix(names, matrix) -> str:
    width = max(len(n) for n in names) + 2
    lines = [" " * width + "".join(f"{n[:8]:>9}" for n in names)]
    for name, row in zip(names, np.asarray(matrix)):
        lines.append(f"{name:<{width}}" + "".join(f"{v:9.3f}" for v in row))
    return "\n".join(lines)


def cmd_fit(args) -> int:
    from .fitting import FitInterrupted, fit, load_resume_state, resume_fit
    from .outputs import write_outputs

    out = Path(args.resume or args.out)
    checkpoint = out / CHECKPOINT
    if args.resume:
        load_resume_state(checkpoint)  # fail early, with a clear message, on a bad checkpoint
    elif out.exists() and not args.overwrite and any(out.iterdir()):
        raise RegimeDMMError(f"output folder {out} exists and is not empty: use --overwrite or another --out")
    if args.checkpoint_every < 1:
        raise RegimeDMMError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    config = None if args.resume else _config(args)
    if args.data is None and not args.resume:
        print("data: embedded SIMULATED default (traditional_cre, tokenized_reit; true regimes known)")
    log = None if args.quiet else print
    stop = {"signal": None}

    def request_stop(signum, _frame):
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    kwargs = dict(progress=not args.quiet and sys.stderr.isatty(), log=log, checkpoint=checkpoint,
                  checkpoint_every=args.checkpoint_every, stop_requested=lambda: stop["signal"] is not None)
    try:
        if args.resume:
            result = resume_fit(checkpoint, data=args.data, **kwargs)
        else:
            result = fit(args.data, config, **kwargs)
    except FitInterrupted as exc:
        signum = stop["signal"] or signal.SIGINT
        print(f"\ninterrupted ({signal.Signals(signum).name}): {exc}; checkpoint saved in {checkpoint}", file=sys.stderr)
        print(f"resume with: regime-dmm fit --resume {out}", file=sys.stderr)
        return 128 + int(signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print()
    from .plots import usage_bars_text

    print("Regime usage (smoothed posterior):")
    print(usage_bars_text(result))
    for m in result.markets:
        print(f"\nTransition matrix, {m.name} (rows: from, columns: to):")
        print(_print_matrix(result.regimes, m.transition))
        print(f"current regime ({m.dates[-1].date()}): {result.regimes[int(m.current_probs.argmax())]}"
              f" (p = {m.current_probs.max():.2f})")
    print(f"\nlog-likelihood (input units): {result.log_likelihood:.3f}")
    write_outputs(result, out, overwrite=True, plots=not args.no_plots)
    print(f"wrote {out}/: regimes.csv summary.json history.csv model.pt" + ("" if args.no_plots else " *.png"))
    return 0


def cmd_simulate(args) -> int:
    import pandas as pd

    from .data import simulate_default, write_csv

    data = simulate_default(seed=args.seed)
    write_csv(data, args.out)
    if args.truth:
        rows = []
        for market, regimes in data.true_regimes.items():
            dates = data.frame.loc[data.frame["market"] == market, "date"].iloc[1:]
            rows.append(pd.DataFrame({"date": pd.to_datetime(dates).dt.strftime("%Y-%m-%d").values, "market": market,
                                      "regime": [data.regimes[k] for k in regimes]}))
        pd.concat(rows).to_csv(args.truth, index=False)
    print(f"wrote {args.out} (simulated, seed {args.seed}; markets: {', '.join(data.true_regimes)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fit":
            return cmd_fit(args)
        return cmd_simulate(args)
    except RegimeDMMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training: nothing to save
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
