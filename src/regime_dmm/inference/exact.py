"""Exact inference for a K-regime Markov chain with arbitrary per-step log-likelihoods.

One core that every model, guide, summary and forecast calls (after dynamax's
``hidden_markov_model/inference.py``): the models only produce *log-potentials*,

* ``log_init``  ``(B, K)``: log p(z_0 = k),
* ``log_trans`` ``(B, T, K, K)``: log p(z_t = j | z_{t-1} = i) in ``[..., t, i, j]``
  (row-normalised; entry ``t = 0`` is ignored; entries may vary in time),
* ``obs_ll``    ``(B, T, K)``: log p(x_t | z_t = k, x_{<t}),

and this module turns them into the marginal likelihood, filtered, smoothed and
pairwise marginals, the Viterbi path and forecasts. Ragged batches are padded at the
end with ``obs_ll = 0`` (and row-normalised transitions): padded steps add nothing to
``log Z`` and leave the marginals of the real steps unchanged.

``log Z`` is a balanced tree of scaled matrix products (the computation of
:class:`pyro.distributions.DiscreteHMM`, in probability space with a scale per product; depth O(log T)); the
E-step's smoothed and pairwise marginals
are its gradient (:func:`expected_statistics`); the filtered marginals come from a Hillis-Steele
prefix/suffix scan in log space, also O(log T) deep (:func:`posterior`). All are differentiable, so
penalties on regime usage and entropy can be trained through them.
"""

from __future__ import annotations

import math
from typing import NamedTuple, overload

import numpy as np
import torch

__all__ = [
    "ExpectedStatistics",
    "HMMPosterior",
    "expected_statistics",
    "last_filtered",
    "log_normalizer",
    "posterior",
    "viterbi",
    "forecast",
    "stationary_distribution",
]


def _logmatmulexp(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log(exp(x) @ exp(y))`` over the last two dims, stable for ``-inf`` entries."""
    finfo = torch.finfo(x.dtype)
    x_shift = x.detach().amax(-1, keepdim=True).clamp(min=finfo.min)
    y_shift = y.detach().amax(-2, keepdim=True).clamp(min=finfo.min)
    prod = torch.matmul((x - x_shift).exp(), (y - y_shift).exp())
    return prod.clamp(min=finfo.tiny).log() + x_shift + y_shift


def log_normalizer(log_init: torch.Tensor, log_trans: torch.Tensor, obs_ll: torch.Tensor) -> torch.Tensor:
    """log p(x_{1:T}) ``(B,)`` in nats: the regimes summed out exactly, differentiable (twice) in all inputs.

    ``logsumexp(alpha_0 + log prod_t M_t)`` with ``alpha_0 = log_init + obs_0`` and the step matrices
    ``M_t = log_trans[t] + obs_t`` multiplied in a balanced tree (:func:`_chain_log_z`: O(T K^3) work,
    depth O(log T)), the computation of :class:`pyro.distributions.DiscreteHMM` without its distribution
    objects (equal to it to round-off, tested). Non-finite values pass through (the training loop handles them).
    """
    return _chain_log_z(log_init + obs_ll[..., 0, :], log_trans[..., 1:, :, :] + obs_ll[..., 1:, None, :])


def _chain_log_z(alpha0: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``logsumexp(alpha0 + log prod_t mats[t])`` for ``alpha0 (B, K)`` and step matrices ``mats (B, N, K, K)``
    (``N`` may be 0); ``-inf`` where a step makes every regime impossible.

    The product is taken in probability space with a scale per matrix, in a balanced tree: each step matrix is
    ``exp(mats[t] - s_t)`` with ``s_t`` its largest entry, and each product of a pair is divided by its largest
    entry ``c``, whose log is added back (the scaled forward algorithm of Rabiner 1989, sec. V.A, applied to the
    tree's products). The shifts and scales are constants to autograd: ``log Z`` is invariant to them, so the
    gradient (the smoothed and pairwise marginals) and its own gradient (the penalties') are exact. Against
    a tree of log-space products (:func:`_logmatmulexp`) it runs a third of the operations, which is what a
    step costs at this size; entries below ``1e-308`` of their matrix's largest (a path that much less
    likely than the best) are zero instead of tiny, which changes ``log Z`` and the marginals by less than
    round-off (tested against the log-space tree and enumeration).
    """
    if mats.shape[-3] == 0:
        return torch.logsumexp(alpha0, dim=-1)
    finfo = torch.finfo(mats.dtype)
    if mats.dtype != torch.float64:  # float32's range (1e-38) is too short for probability space: log space
        log_z = torch.logsumexp(alpha0[..., :, None] + _tree_product(mats), dim=(-2, -1))
        return torch.where(log_z > finfo.min / 2, log_z, torch.full_like(log_z, -math.inf))
    shift = mats.detach().amax(dim=(-2, -1), keepdim=True).clamp(min=finfo.min)  # (B, N, 1, 1)
    probs = (mats - shift).exp()
    log_scale = shift.sum(dim=(-3, -2, -1))
    while probs.shape[-3] > 1:
        n = probs.shape[-3]
        paired = probs[..., 0 : n - 1 : 2, :, :] @ probs[..., 1:n:2, :, :]
        largest = paired.detach().amax(dim=(-2, -1), keepdim=True).clamp(min=finfo.tiny)
        paired = paired / largest
        log_scale = log_scale + largest.log().sum(dim=(-3, -2, -1))
        probs = torch.cat([paired, probs[..., n - 1 :, :, :]], dim=-3) if n % 2 else paired
    start = alpha0.detach().amax(-1, keepdim=True).clamp(min=finfo.min)
    total = ((alpha0 - start).exp()[..., None, :] @ probs[..., 0, :, :]).sum(dim=(-2, -1))
    # a step impossible under every regime leaves a total of 0: its log Z is -inf (below) and its gradient zero
    log_z = total.clamp(min=finfo.tiny).log() + start[..., 0] + log_scale
    return torch.where(log_z > finfo.min / 2, log_z, torch.full_like(log_z, -math.inf))


class HMMPosterior(NamedTuple):
    """Exact posterior of the regimes. Shapes: B series, T steps, K regimes."""

    log_z: torch.Tensor  # (B,) log p(x_{1:T})
    log_filtered: torch.Tensor  # (B, T, K) log p(z_t | x_{1:t})
    log_smoothed: torch.Tensor  # (B, T, K) log p(z_t | x_{1:T})
    log_pairwise: torch.Tensor  # (B, T, K, K) log p(z_{t-1}=i, z_t=j | x_{1:T}); t = 0 is -inf
    log_predictive: torch.Tensor  # (B, T) one-step-ahead log p(x_t | x_{1:t-1}); sums to log_z

    @property
    def smoothed(self) -> torch.Tensor:
        """``(B, T, K)`` p(z_t | x_{1:T})."""
        return self.log_smoothed.exp()

    @property
    def filtered(self) -> torch.Tensor:
        """``(B, T, K)`` p(z_t | x_{1:t})."""
        return self.log_filtered.exp()


def _inclusive_scan(mats: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Hillis-Steele scan of log-matrix products along dim -3.

    Forward: ``out[t] = m[1] (x) ... (x) m[t]``; reverse: ``out[t] = m[t] (x) ... (x) m[T-1]``.
    """
    out = mats
    steps = mats.shape[-3]
    shift = 1
    while shift < steps:
        if reverse:
            head = _logmatmulexp(out[..., :-shift, :, :], out[..., shift:, :, :])
            out = torch.cat([head, out[..., -shift:, :, :]], dim=-3)
        else:
            tail = _logmatmulexp(out[..., :-shift, :, :], out[..., shift:, :, :])
            out = torch.cat([out[..., :shift, :, :], tail], dim=-3)
        shift *= 2
    return out


def last_filtered(log_init: torch.Tensor, log_trans: torch.Tensor, obs_ll: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` log p(z_{T-1} | x_{0..T-1}): the filtered distribution of the last step only.

    The same quantity as ``posterior(...).log_filtered[:, -1]`` without the marginals of the other
    steps: the step matrices are multiplied in a balanced tree (O(T) work, log T depth), as a
    walk-forward filter needs it once per day. Shapes as :func:`posterior`.
    """
    alpha = log_init + obs_ll[..., 0, :]
    mats = log_trans[..., 1:, :, :] + obs_ll[..., 1:, None, :]
    if mats.shape[-3] > 0:
        alpha = torch.logsumexp(alpha[..., :, None] + _tree_product(mats), dim=-2)
    return alpha - torch.logsumexp(alpha, dim=-1, keepdim=True)


def _tree_product(mats: torch.Tensor) -> torch.Tensor:
    """``(B, N, K, K)`` log-matrices -> ``(B, K, K)`` their log-product ``m[0] (x) ... (x) m[N-1]``, by pairs
    in a balanced tree (O(N K^3) work, depth log N)."""
    while mats.shape[-3] > 1:
        n = mats.shape[-3]
        paired = _logmatmulexp(mats[..., 0 : n - 1 : 2, :, :], mats[..., 1:n:2, :, :])
        mats = torch.cat([paired, mats[..., n - 1 :, :, :]], dim=-3) if n % 2 else paired
    return mats[..., 0, :, :]


class ExpectedStatistics(NamedTuple):
    """What an EM step needs of the posterior (B series, T steps, K regimes), in probabilities.

    ``log_z (B,)`` log p(x_{1:T}) in nats; ``smoothed (B, T, K)`` p(z_t | x_{1:T});
    ``pairwise (B, T, K, K)`` p(z_{t-1} = i, z_t = j | x_{1:T}) (``t = 0`` is zero).
    """

    log_z: torch.Tensor
    smoothed: torch.Tensor
    pairwise: torch.Tensor


def expected_statistics(log_init: torch.Tensor, log_trans: torch.Tensor, obs_ll: torch.Tensor) -> ExpectedStatistics:
    """The E-step of Baum-Welch: ``log Z``, smoothed and pairwise marginals, without a gradient to the inputs.

    The forward-backward pass as the gradient of ``log Z`` (Eisner 2016, "Inside-outside and
    forward-backward algorithms are just backprop"): ``log Z = logsumexp(alpha_0 + log prod_t M_t)`` with
    the step matrices ``M_t[i, j] = log A_t[i, j] + obs_t[j]`` multiplied in a balanced tree, and
    ``d log Z / d M_t[i, j] = p(z_{t-1} = i, z_t = j | x)``, ``d log Z / d alpha_0 = p(z_0 | x)``. O(T K^3)
    work and O(log T) depth, against O(T log T K^3) for :func:`posterior`'s prefix scans, which also give
    the filtered marginals. Shapes as :func:`posterior`; equal to it to round-off (tested).
    """
    with torch.enable_grad():
        alpha0 = (log_init.detach() + obs_ll.detach()[..., 0, :]).requires_grad_()
        mats = (log_trans.detach()[..., 1:, :, :] + obs_ll.detach()[..., 1:, None, :]).requires_grad_()
        log_z = _chain_log_z(alpha0, mats)
        g0, pair_rest = torch.autograd.grad(log_z.sum(), (alpha0, mats), allow_unused=True, materialize_grads=True)
    smoothed = torch.cat([g0[..., None, :], pair_rest.sum(-2)], dim=-2)
    first = pair_rest.new_zeros(pair_rest.shape[:-3] + (1,) + pair_rest.shape[-2:])  # no pair before t = 0
    pairwise = torch.cat([first, pair_rest], dim=-3)
    return ExpectedStatistics(log_z.detach(), smoothed, pairwise)


def posterior(log_init: torch.Tensor, log_trans: torch.Tensor, obs_ll: torch.Tensor) -> HMMPosterior:
    """Forward-backward by parallel scans; differentiable in all three inputs."""
    batch, steps, k = obs_ll.shape
    # Step matrices M_t[i, j] = log A_t[i, j] + obs_t[j] for t >= 1.
    mats = log_trans[..., 1:, :, :] + obs_ll[..., 1:, None, :]
    alpha0 = log_init + obs_ll[..., 0, :]  # (B, K)
    if steps > 1:
        prefix = _inclusive_scan(mats)  # (B, T-1, K, K)
        alpha_rest = torch.logsumexp(alpha0[..., None, :, None] + prefix, dim=-2)  # (B,T-1,K)
        log_alpha = torch.cat([alpha0[..., None, :], alpha_rest], dim=-2)
        suffix = _inclusive_scan(mats, reverse=True)  # suffix[t] = M_{t+1} ... M_{T-1}
        beta_head = torch.logsumexp(suffix, dim=-1)  # (B, T-1, K): beta_0 .. beta_{T-2}
        log_beta = torch.cat([beta_head, torch.zeros_like(alpha0)[..., None, :]], dim=-2)
    else:
        log_alpha = alpha0[..., None, :]
        log_beta = torch.zeros_like(log_alpha)
    log_z = torch.logsumexp(log_alpha[..., -1, :], dim=-1)
    log_filtered = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
    log_smoothed = log_alpha + log_beta - log_z[..., None, None]
    pair_rest = log_alpha[..., :-1, :, None] + mats + log_beta[..., 1:, None, :] - log_z[..., None, None, None]
    pair_first = torch.full_like(log_trans[..., :1, :, :], -float("inf"))
    log_pairwise = torch.cat([pair_first, pair_rest], dim=-3)
    log_evidence = torch.logsumexp(log_alpha, dim=-1)  # (B, T) log p(x_{1:t})
    log_predictive = torch.cat([log_evidence[..., :1], log_evidence.diff(dim=-1)], dim=-1)
    return HMMPosterior(log_z, log_filtered, log_smoothed, log_pairwise, log_predictive)


def viterbi(log_init: np.ndarray, log_trans: np.ndarray, obs_ll: np.ndarray) -> np.ndarray:
    """Most probable regime path of one series (max-product), ``(T,)`` int.

    Shapes: ``log_init (K,)``, ``log_trans (T, K, K)`` (entry 0 unused), ``obs_ll (T, K)``.
    """
    log_init = np.asarray(log_init, dtype=np.float64)
    log_trans = np.asarray(log_trans, dtype=np.float64)
    obs_ll = np.asarray(obs_ll, dtype=np.float64)
    steps, k = obs_ll.shape
    back = np.zeros((steps, k), dtype=np.int64)
    delta = log_init + obs_ll[0]
    for t in range(1, steps):
        cand = delta[:, None] + log_trans[t]
        back[t] = np.argmax(cand, axis=0)
        delta = cand[back[t], np.arange(k)] + obs_ll[t]
    path = np.empty(steps, dtype=np.int64)
    path[-1] = int(np.argmax(delta))
    for t in range(steps - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def forecast(filtered_last: np.ndarray, transition: np.ndarray, horizon: int) -> np.ndarray:
    """p(z_{T+h} | x_{1:T}) for h = 1..horizon, ``(horizon, K)``, from p(z_T | x_{1:T})."""
    probs = np.empty((horizon, len(filtered_last)))
    current = np.asarray(filtered_last, dtype=np.float64)
    for h in range(horizon):
        current = current @ transition
        probs[h] = current
    return probs


@overload
def stationary_distribution(transition: torch.Tensor) -> torch.Tensor: ...


@overload
def stationary_distribution(transition: np.ndarray) -> np.ndarray: ...


def stationary_distribution(transition: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Stationary distribution ``(..., K)`` of row-stochastic ``transition (..., K, K)``.

    Solves ``pi (P - I) = 0`` with ``sum(pi) = 1`` by least squares (batched, and
    differentiable for a torch input); tiny negative round-off is clipped and the result
    renormalised. A numpy input gives a numpy output (float64). For a reducible chain the
    least-squares solution is one of its stationary distributions.
    """
    if isinstance(transition, torch.Tensor):
        return _stationary(transition)
    return _stationary(torch.as_tensor(np.asarray(transition, dtype=np.float64))).numpy()


def _stationary(trans: torch.Tensor) -> torch.Tensor:
    k = trans.shape[-1]
    eye = torch.eye(k, dtype=trans.dtype)
    ones = torch.ones(trans.shape[:-2] + (1, k), dtype=trans.dtype)
    system = torch.cat([trans.transpose(-1, -2) - eye, ones], dim=-2)  # (..., K+1, K)
    rhs = torch.zeros(trans.shape[:-2] + (k + 1, 1), dtype=trans.dtype)
    rhs[..., -1, 0] = 1.0
    solution = torch.linalg.lstsq(system, rhs).solution[..., 0].clamp(min=0.0)
    return solution / solution.sum(-1, keepdim=True)
