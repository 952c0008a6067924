"""Can the data tell the fitted regimes apart? Checks of a fit's regimes, with the knob to try.

Per market:

* **overlap** of each pair of adjacent regimes: the Bhattacharyya coefficient ``BC`` and the
  Hellinger distance ``H = sqrt(1 - BC)`` between their return emissions (Gaussians of the fitted
  mean and sd, in input units). ``BC = 1`` (``H = 0``): the same distribution. Below ``H = 0.2``
  (for equal means, a volatility ratio under about 1.5) two regimes are reported as hard to tell
  apart (Bhattacharyya 1943, "On a measure of divergence between two statistical populations").
* **rare** regimes: used on fewer than ``max(1 %, 5 / days)`` of the days;
* **floor**: the calmest regime's sd at the floor ``model.min_scale`` sets (a regime that would
  shrink further onto a handful of quiet days);
* **few days**: fewer than 50 observed days per regime: the data cannot support that many;
* **fleeting**: a regime whose expected duration is under two days: it models single days
  (outliers) rather than a state of the market;
* **never left**: a regime whose expected duration is more than ten times the sample, reported as
  "never left in the sample" instead of a duration nobody can believe;
* **ladder**: names that may be shifted by one (issue #20). Two signs, each naming the regimes it concerns:
  adjacent regimes whose volatility ratio sits at or just above the separation wall (below ``WALL_MARGIN``
  times ``model.min_ratio``: the data barely hold them apart, so one true regime may be split there and two
  merged elsewhere); and, with three regimes or more, a calmest regime that lasts under ``CALM_SPLIT_SHARE``
  of the next one's expected duration and under ``CALM_SPLIT_DAYS`` days (the quietest days of one regime
  split off - heavy-tailed shocks are peaked - so every name above it is one step too high, and the most
  volatile two true regimes share a name).
  Measured on the 20-seed recovery benchmark (both shock laws, ``benchmarks/bench_recovery.py``): every
  seed below 0.85 of the oracle shows one of them or an ``indistinguishable`` pair, against at most one
  seed a market at 0.95 or more.

Each finding is ``{market, kind, regimes, detail, advice}``; an empty list means the regimes are
distinguishable and each is used. A market gets one piece of advice, the same in each of its findings
(:func:`market_advice`): a number of regimes its observed days can carry (``DAYS_PER_REGIME`` a regime),
a look at the regimes' daily sds beside the other markets' where the ladder may be shifted, heavy tails only
where the emissions are Gaussian, and more data where even two regimes are too many.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .results import MarketResult, RegimeFit

__all__ = [
    "CALM_SPLIT_DAYS",
    "CALM_SPLIT_SHARE",
    "DAYS_PER_REGIME",
    "FLEETING_DAYS",
    "HELLINGER_MIN",
    "check_regimes",
    "format_regime_warnings",
    "ladder_findings",
    "market_advice",
    "never_left",
    "WALL_MARGIN",
]

HELLINGER_MIN = 0.2
DAYS_PER_REGIME = 50
FLEETING_DAYS = 2.0
#: A volatility ratio of adjacent regimes below ``model.min_ratio`` times this is at the separation wall.
WALL_MARGIN = 1.03
#: A calmest regime lasting less than this share of the next regime's expected duration, and under
#: ``CALM_SPLIT_DAYS`` days (bursts of under a week, not a state of the market), is split off.
CALM_SPLIT_SHARE = 1 / 3
CALM_SPLIT_DAYS = 5.0


def never_left(m: MarketResult) -> list[int]:
    """Regimes whose expected duration exceeds ten times the sample (:meth:`MarketResult.durations`)."""
    return [k for k, d in enumerate(m.durations()) if d is None]


def check_regimes(fit: RegimeFit, floors: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The findings of the module docstring for every market of ``fit``.

    ``floors``: per market, the lowest sd a regime may have (input units), when the guard is on.
    """
    regimes = fit.regimes
    k = len(regimes)
    out: list[dict[str, Any]] = []
    for m in fit.markets:
        days = int(np.asarray(m.observed).sum())
        first = len(out)
        for pair, value in m.overlap(regimes).items():
            if value["hellinger"] < HELLINGER_MIN:
                out.append(
                    {
                        "market": m.name,
                        "kind": "indistinguishable",
                        "regimes": pair.split("|"),
                        "detail": f"regimes {pair.replace('|', ' and ')} are hard to tell apart (Hellinger distance "
                        f"{value['hellinger']:.3f} between their return distributions)",
                    }
                )
        threshold = max(0.01, 5.0 / max(len(m.dates), 1))
        for j in np.flatnonzero(np.asarray(m.usage) < threshold).tolist():
            out.append(
                {
                    "market": m.name,
                    "kind": "rare",
                    "regimes": [regimes[j]],
                    "detail": f"regime {regimes[j]} holds {m.usage[j]:.2%} of the days "
                    f"(about {m.usage[j] * len(m.dates):.0f})",
                }
            )
        floor = (floors or {}).get(m.name)
        calm_scale = m.emission.get("return_scale", m.emission["return_sd"])[0]  # the floor bounds the scale
        if floor is not None and calm_scale <= 1.01 * floor:
            out.append(
                {
                    "market": m.name,
                    "kind": "floor",
                    "regimes": [regimes[0]],
                    "detail": f"regime {regimes[0]}'s scale ({calm_scale:.3g}) is at the floor "
                    "(model.min_scale of the market's typical daily sd): it would shrink onto quiet days",
                }
            )
        if days < DAYS_PER_REGIME * k:
            out.append(
                {
                    "market": m.name,
                    "kind": "few_days",
                    "regimes": list(regimes),
                    "detail": f"{days} observed days cannot support {k} regimes (fewer than {DAYS_PER_REGIME} "
                    "a regime); the regimes and the probabilities of the regime now are not to be trusted",
                }
            )
        for j, duration in enumerate(m.durations()):
            if duration is not None and duration < FLEETING_DAYS:
                out.append(
                    {
                        "market": m.name,
                        "kind": "fleeting",
                        "regimes": [regimes[j]],
                        "detail": f"regime {regimes[j]} lasts {duration:.1f} days on average: it models single days "
                        "(outliers), not a state of the market",
                    }
                )
        for j in never_left(m):
            out.append(
                {
                    "market": m.name,
                    "kind": "never_left",
                    "regimes": [regimes[j]],
                    "detail": f"regime {regimes[j]} is never left in the sample (staying probability "
                    f"{m.transition[j, j]:.6f}): no duration can be estimated",
                }
            )
        out += ladder_findings(m, regimes, fit.config.model.min_ratio)
        advice = market_advice(out[first:], k, days, fit.config.model.emission)
        for entry in out[first:]:
            entry["advice"] = advice
    return out


def ladder_findings(m: MarketResult, regimes: tuple[str, ...], min_ratio: float) -> list[dict[str, Any]]:
    """The ``ladder`` findings of market ``m`` (see the module docstring): adjacent regimes whose volatility
    ratio is below ``WALL_MARGIN`` times ``min_ratio`` (> 1, the fit's ``model.min_ratio``), and, with three
    regimes or more, a calm regime split off the next one."""
    out: list[dict[str, Any]] = []
    sd = np.asarray(m.emission.get("return_scale", m.emission["return_sd"]), dtype=float)
    if min_ratio > 1:
        for j in range(len(regimes) - 1):
            ratio = sd[j + 1] / sd[j]
            if ratio < min_ratio * WALL_MARGIN:
                out.append(
                    {
                        "market": m.name,
                        "kind": "ladder",
                        "regimes": [regimes[j], regimes[j + 1]],
                        "detail": f"regimes {regimes[j]} and {regimes[j + 1]} sit at or just above the separation "
                        f"wall (volatility ratio {ratio:.2f}, model.min_ratio {min_ratio:g}): the data barely hold "
                        "them apart, so a true regime may be split here and two merged elsewhere - the names around "
                        "this pair may be one step off",
                    }
                )
    durations = [np.inf if d is None else d for d in m.durations()]
    if len(regimes) > 2 and durations[0] < min(CALM_SPLIT_SHARE * durations[1], CALM_SPLIT_DAYS):
        out.append(
            {
                "market": m.name,
                "kind": "ladder",
                "regimes": list(regimes),
                "detail": f"regime {regimes[0]} lasts {durations[0]:.1f} days on average against {regimes[1]}'s "
                f"{durations[1]:.1f}: it looks like the quietest days of {regimes[1]} split off, so the names may be "
                f"one step too high ({regimes[1]} would be the true {regimes[0]}, each name above it the true one "
                f"below, and {regimes[-1]} would mix the two most volatile true regimes)",
            }
        )
    return out


def market_advice(findings: list[dict[str, Any]], k: int, days: int, emission: str) -> str:
    """One piece of advice for a market's ``findings`` (``k`` regimes fitted, ``days`` observed days, the
    fit's ``emission``): the largest K below ``k`` its days can carry (``DAYS_PER_REGIME`` a regime), checked
    with ``regime-dmm select``; heavy tails for single-day regimes only under Gaussian emissions; more data when
    even two regimes need more days than there are."""
    kinds = {f["kind"] for f in findings}
    if not kinds:
        return ""
    carried = days // DAYS_PER_REGIME
    if carried < 2:
        return (
            f"use more data: two regimes need {2 * DAYS_PER_REGIME} observed days or more ({days} here); the regime "
            "now is not to be trusted"
        )
    target = min(k - 1, carried)
    if kinds == {"never_left"}:
        parts = [f"a longer sample, or --regimes {target}" if target >= 2 else "a longer sample"]
    elif target >= 2:
        parts = [f"try --regimes {target} (regime-dmm select --regimes 2..{k} compares them on held-out days)"]
    else:
        parts = ["the data may hold a single regime (no K below 2 is fitted)"]
    if "ladder" in kinds:
        parts.append("check the names against each regime's daily sd, which the fit prints beside the other markets'")
    if "fleeting" in kinds and emission != "studentt":
        parts.append("or heavy tails for single extreme days (--emission studentt)")
    return ", ".join(parts)


def format_regime_warnings(entries: list[dict[str, Any]]) -> list[str]:
    """One ``WARNING regimes: ...`` line per finding, the market's advice once, on its last finding."""
    lines = []
    for i, e in enumerate(entries):
        last = i + 1 == len(entries) or entries[i + 1]["market"] != e["market"]
        advice = f" -> {e['advice']}" if last and e.get("advice") else ""
        lines.append(f"WARNING regimes: {e['market']}: [{e['kind']}] {e['detail']}{advice}")
    return lines
