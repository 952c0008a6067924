"""The fitted model: built once per fit, the one object consumers ask, its parameters its own."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from torch.distributions import biject_to

import regime_dmm as rd
import regime_dmm.arviz_export as arviz_export
import regime_dmm.fitted as fitted_module
from regime_dmm.data import FeaturePipeline
from regime_dmm.outputs import write_outputs
from regime_dmm.training import variants

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def frame():
    frame = rd.simulate_default(6, n_days=151).frame
    frame.attrs.clear()
    return frame


def test_a_fit_builds_model_data_and_posterior_once(frame, tmp_path, monkeypatch):
    counts = {"model": 0, "guide": 0, "model_data": 0, "posterior": 0, "export_posterior": 0}

    def counting(owner, name, key):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    counting(variants.ExactVariant, "build_model", "model")
    counting(variants.ExactVariant, "build_guide", "guide")
    counting(FeaturePipeline, "model_data", "model_data")
    counting(fitted_module, "posterior", "posterior")
    counting(arviz_export, "hmm_posterior", "export_posterior")
    restarts = 3
    fit = rd.fit(frame, rd.FitConfig().replace(training={"epochs": 4, "restarts": restarts}))
    write_outputs(fit, tmp_path / "run", plots=False)  # results, summary, ArviZ export
    assert counts == {"model": 1, "guide": restarts, "model_data": 1, "posterior": 1, "export_posterior": 0}


@pytest.fixture(scope="module")
def two_fits(frame):
    a = rd.fit(frame, rd.FitConfig().replace(training={"epochs": 4, "restarts": 1, "seed": 1}))
    b = rd.fit(frame, rd.FitConfig().replace(model={"num_regimes": 2}, training={"epochs": 4, "restarts": 1}))
    return a, b


def test_each_fit_keeps_its_own_parameters(two_fits):
    a, b = two_fits
    first = a.fitted.point_estimate()
    pot_a = a.fitted.potentials()
    b.fitted.posterior()  # another fit works in between
    assert all(torch.equal(first[k], v) for k, v in a.fitted.point_estimate().items())
    pot_again = a.fitted.potentials()
    assert torch.equal(pot_a.obs_ll, pot_again.obs_ll) and torch.equal(pot_a.log_trans, pot_again.log_trans)
    assert pot_a.log_init.shape[-1] == 4 and b.fitted.potentials().log_init.shape[-1] == 2


@pytest.mark.parametrize("kind", ["map", "normal", "relaxed"])
def test_queries_never_touch_the_store(kind, two_fits, small_fit, monkeypatch):
    if kind == "map":
        a = two_fits[0]
    elif kind == "normal":  # draws from the mean-field normal (shared with the plots)
        a = small_fit(0, 250, training={"epochs": 20, "restarts": 1, "guide": "normal"})
    else:  # smoothed marginals from the inference network
        a = small_fit(0, 250, training={"epochs": 3, "restarts": 1, "inference": "relaxed"})
    pyro.clear_param_store()
    pyro.param("someone_elses", torch.ones(3))
    store = pyro.get_param_store()

    def untouchable(*_args, **_kwargs):
        raise AssertionError("a query of a fitted model used Pyro's parameter store")

    with monkeypatch.context() as patch:  # parameters as values: every query is plain arithmetic
        for name in ("get_param", "setdefault", "get_state", "set_state", "clear", "named_parameters", "__getitem__"):
            patch.setattr(type(store), name, untouchable)
        a.fitted.posterior(a.fitted.data, a.fitted.point_estimate())
        a.fitted.smoothed()
        a.fitted.draws(2, seed=0)
        a.fitted.num_parameters()
        a.fitted.emission_shift()
    assert list(store.keys()) == ["someone_elses"]
    pyro.clear_param_store()


def test_normal_draws_follow_the_guides_normal(small_fit):
    normal = small_fit(0, 250, training={"epochs": 20, "restarts": 1, "guide": "normal"})  # shared with the plots
    sites = normal.fitted._globals.normal
    assert sites is not None and "ret_scale_base" in sites
    loc, scale, support = sites["ret_scale_base"]
    # they are the guide's trained parameters (the checkpoint's unconstrained tensors; scales are softplus'd)
    saved = normal.fitted.parameters()
    torch.testing.assert_close(loc, saved["AutoNormal.locs.ret_scale_base"])
    torch.testing.assert_close(scale, torch.nn.functional.softplus(saved["AutoNormal.scales.ret_scale_base"]))
    draws = normal.fitted.draws(4000, seed=2)
    u = torch.stack([biject_to(support).inv(d["ret_scale_base"]) for d in draws])  # unconstrained
    se = scale / len(draws) ** 0.5
    assert ((u.mean(0) - loc).abs() < 5 * se).all()
    assert ((u.std(0) / scale - 1).abs() < 0.1).all()
    point = normal.fitted.point_estimate()["ret_scale_base"]  # the normal guide's median
    torch.testing.assert_close(point, biject_to(support)(loc))


def test_posterior_is_the_exact_filter_of_its_potentials(two_fits):
    a, _ = two_fits
    pot, post = a.fitted.posterior()
    assert post is a.fitted.posterior()[1]  # cached for the fitted data
    m = a.markets[0]
    np.testing.assert_allclose(post.filtered[0, : len(m.dates)].numpy(), m.filtered)
    # a hand-written forward filter on the same potentials
    alpha = torch.softmax(pot.log_init[0] + pot.obs_ll[0, 0], -1)
    for t in range(1, 20):
        alpha = torch.softmax((alpha @ pot.log_trans[0, t].exp()).log() + pot.obs_ll[0, t], -1)
        np.testing.assert_allclose(alpha.numpy(), m.filtered[t], atol=1e-10)


def test_draws_are_seeded_and_a_map_fit_has_one(small_fit, two_fits):
    map_fit = two_fits[0]
    (only,) = map_fit.fitted.draws(50, seed=3)
    point = map_fit.fitted.point_estimate()
    assert set(only) == set(point) and all(torch.equal(only[k], point[k]) for k in point)
    normal = small_fit(0, 250, training={"epochs": 20, "restarts": 1, "guide": "normal"})  # shared with the plots
    d1, d2 = normal.fitted.draws(3, seed=5), normal.fitted.draws(3, seed=5)
    assert len(d1) == 3 and all(torch.equal(x[k], y[k]) for x, y in zip(d1, d2) for k in x)
    assert not torch.equal(d1[0]["ret_loc"], d1[1]["ret_loc"])
    state = torch.get_rng_state()
    normal.fitted.draws(2, seed=1)
    assert torch.equal(state, torch.get_rng_state())
