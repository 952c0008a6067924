"""The posterior-collapse detector on constructed collapsed, uniform and healthy posteriors."""

import math

import numpy as np
import pandas as pd

from regime_dmm.training.collapse import detect_collapse, format_collapse, posterior_entropy

K = 4
SPREAD = [[0.55, 0.25, 0.15, 0.05]]


def history(epochs=100, kl=800.0, grad_inference=None):
    rows = []
    for e in range(1, epochs + 1):
        row = {"restart": 0, "epoch": e, "loss": 1000.0, "kl": kl, "grad_norm": 1.0}
        if grad_inference is not None:
            row["grad_norm_inference"] = grad_inference(e)
        rows.append(row)
    return pd.DataFrame(rows)


def kinds(entries):
    return sorted(e["kind"] for e in entries)


def test_dominant_regime_fires_when_the_reference_is_spread():
    usage = [[0.95, 0.03, 0.01, 0.01]]
    out = detect_collapse(
        usage, [0.2], history(), K, reference_usage=SPREAD, after_warmup_epoch=40, markets=["m"], num_days=2500
    )
    assert kinds(out) == ["dominant_regime"]
    entry = out[0]
    assert entry["market"] == "m" and "95%" in entry["detail"]
    assert "penalties.diversity_weight" in entry["advice"]
    assert set(entry) == {"market", "kind", "detail", "advice"}
    assert format_collapse(out)[0].startswith("WARNING collapse: m: dominant_regime:")


def test_dominant_regime_is_quiet_when_the_data_justify_it():
    usage = [[0.9, 0.05, 0.03, 0.02]]
    out = detect_collapse(
        usage, [0.2], history(), K, reference_usage=[[0.86, 0.1, 0.03, 0.01]], after_warmup_epoch=40, num_days=2500
    )
    assert out == []


def test_uniform_posterior_fires_on_entropy_log_k_and_zero_kl():
    usage = [[0.25] * 4, [0.25] * 4]
    entropy = [math.log(K) - 1e-3] * 2
    hist = history(kl=1e-4)
    hist.loc[hist["epoch"] <= 40, "kl"] = 50.0  # large during the warm-up: ignored
    out = detect_collapse(
        usage, entropy, hist, K, reference_usage=SPREAD * 2, after_warmup_epoch=40, markets=["a", "b"], num_days=5000
    )
    assert kinds(out) == ["uniform_posterior", "uniform_posterior"]
    assert {e["market"] for e in out} == {"a", "b"}
    # same entropy but informative regimes (KL far from 0): quiet
    assert (
        detect_collapse(
            usage, entropy, history(kl=900.0), K, reference_usage=SPREAD * 2, after_warmup_epoch=40, num_days=5000
        )
        == []
    )


def test_vanishing_inference_gradients_relaxed_history_only():
    usage, entropy = [[0.6, 0.25, 0.1, 0.05]], [0.5]
    dead = history(grad_inference=lambda e: 1e-3 if e < 95 else 1e-9)
    out = detect_collapse(usage, entropy, dead, K, reference_usage=SPREAD, after_warmup_epoch=40)
    assert kinds(out) == ["vanishing_inference_gradients"]
    assert "lr" in out[0]["advice"]
    # exact-mode history: no inference network, no check
    assert detect_collapse(usage, entropy, history(), K, reference_usage=SPREAD, after_warmup_epoch=40) == []


def test_healthy_posterior_is_quiet():
    smoothed = np.tile([[0.9, 0.05, 0.03, 0.02], [0.1, 0.8, 0.05, 0.05]], (50, 1))
    usage = [smoothed.mean(0)]
    out = detect_collapse(
        usage,
        [posterior_entropy(smoothed)],
        history(grad_inference=lambda e: 0.3),
        K,
        reference_usage=SPREAD,
        after_warmup_epoch=40,
        num_days=100,
    )
    assert out == []
    assert 0 < posterior_entropy(smoothed) < 0.9 * math.log(K)
