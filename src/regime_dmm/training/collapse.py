"""Posterior-collapse checks at the end of a fit (exact and relaxed modes).

Three kinds, each an entry ``{market, kind, detail, advice}``:

* ``dominant_regime``: one regime takes more than 80 % of a market's days while the data
  do not justify it: the reference, the warm start's maximum-likelihood HMM of the returns
  (the warm start's, :class:`~regime_dmm.training.starting_values.WarmStart`), has no regime
  above 80 %. Without a reference it fires on the 80 % rule alone (and says so).
* ``uniform_posterior``: a market's mean posterior entropy is above 0.9 log K and the
  regimes' KL is about zero after the warm-up: the regimes carry no information.
* ``vanishing_inference_gradients`` (only where the history has ``grad_norm_inference``,
  i.e. the relaxed mode): the inference network's gradient norm stayed below 1e-6 over the
  last 10 % of the epochs after the warm-up.

An empty list means healthy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["detect_collapse", "format_collapse", "posterior_entropy"]

DOMINANT_SHARE = 0.8
UNIFORM_ENTROPY = 0.9  # share of log K
KL_PER_DAY = 0.01  # nats: "KL about zero"
GRAD_FLOOR = 1e-6
TAIL_SHARE = 0.1


def detect_collapse(
    usage,
    entropy,
    history,
    num_regimes: int,
    reference_usage=None,
    after_warmup_epoch: int = 0,
    *,
    markets: Sequence[str] | None = None,
    num_days: int | None = None,
) -> list[dict]:
    """Collapse warnings (see module docstring).

    ``usage (M, K)`` and ``entropy (M,)`` (mean posterior entropy, nats) describe the final
    posterior; ``history`` is the training history of the fit (DataFrame or list of rows;
    columns ``epoch``, ``kl`` and, in relaxed mode, ``grad_norm_inference``);
    ``reference_usage (M, K)`` the usage of the warm start's maximum-likelihood HMM of the returns;
    ``after_warmup_epoch`` the last epoch of the warm-up (later rows are judged);
    ``num_days`` the number of days in all markets (scales "KL about zero", default 1 nat).
    """
    usage = np.atleast_2d(np.asarray(usage, dtype=float))
    entropy = np.atleast_1d(np.asarray(entropy, dtype=float))
    names = list(markets) if markets is not None else [str(m) for m in range(usage.shape[0])]
    hist = history if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history or []))
    if len(hist) and "epoch" in hist.columns:
        late = hist[hist["epoch"] > after_warmup_epoch]
    else:
        late = hist.iloc[0:0] if len(hist) else hist
    reference = None if reference_usage is None else np.atleast_2d(np.asarray(reference_usage, dtype=float))
    out: list[dict] = []

    for m, name in enumerate(names):
        top = int(usage[m].argmax())
        share = float(usage[m, top])
        if share > DOMINANT_SHARE:
            if reference is None:
                justified, why = False, "no reference HMM to compare with"
            else:
                ref_top = float(reference[m].max())
                justified = ref_top > DOMINANT_SHARE
                why = f"the warm start's maximum-likelihood HMM of the returns puts at most {ref_top:.0%} in one regime"
            if not justified:
                out.append(
                    {
                        "market": name,
                        "kind": "dominant_regime",
                        "detail": f"regime {top} has {share:.0%} of the days; {why}",
                        "advice": "raise penalties.diversity_weight (or lower penalties.diversity_threshold); "
                        "in relaxed mode also lower training.tau_floor or raise training.epochs / warmup",
                    }
                )

    kl_late = None
    if len(late) and "kl" in late.columns:
        kl_late = float(np.nanmean(np.abs(late["kl"].to_numpy(dtype=float))))
    kl_tol = KL_PER_DAY * num_days if num_days else 1.0
    log_k = math.log(num_regimes)
    for m, name in enumerate(names):
        if entropy[m] > UNIFORM_ENTROPY * log_k and kl_late is not None and kl_late < kl_tol:
            out.append(
                {
                    "market": name,
                    "kind": "uniform_posterior",
                    "detail": f"mean posterior entropy {entropy[m]:.3f} nats (log K = {log_k:.3f}) and regime KL "
                    f"{kl_late:.3g} nats after the warm-up: the regimes explain nothing",
                    "advice": "raise penalties.entropy_weight (entropy_target below log K), raise training.epochs / "
                    "warmup or training.lr; in relaxed mode lower training.tau_floor",
                }
            )

    if len(late) and "grad_norm_inference" in late.columns:
        tail = max(1, math.ceil(TAIL_SHARE * len(late)))
        norms = late["grad_norm_inference"].to_numpy(dtype=float)[-tail:]
        if np.all(np.nan_to_num(norms, nan=0.0) < GRAD_FLOOR):
            out.append(
                {
                    "market": "all",
                    "kind": "vanishing_inference_gradients",
                    "detail": f"inference-network gradient norm below {GRAD_FLOOR:g} over the last {tail} epochs "
                    f"(max {float(np.nanmax(norms)) if np.isfinite(norms).any() else float('nan'):.3g})",
                    "advice": "raise training.lr or training.tau_floor (saturated relaxed samples), "
                    "shorten the warm-up (training.warmup_fraction)",
                }
            )
    return out


def format_collapse(entries: list[dict]) -> list[str]:
    """One ``WARNING collapse: ...`` log line per entry."""
    return [f"WARNING collapse: {e['market']}: {e['kind']}: {e['detail']} -> {e['advice']}" for e in entries]


def posterior_entropy(smoothed: np.ndarray) -> float:
    """Mean entropy (nats) of the rows of ``smoothed (T, K)``."""
    p = np.clip(np.asarray(smoothed, dtype=float), 1e-300, 1.0)
    return float(-(p * np.log(p)).sum(-1).mean())
