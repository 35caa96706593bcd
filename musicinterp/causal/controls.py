"""Matched random controls: random directions of the same layer that remove as much of the stream as the
candidate.

A candidate direction (or a k-dimensional subspace) ``Q`` of a layer carries a share of the activations'
variance, ``v = trace(Q' S Q)`` with ``S`` the covariance of the reference activations (the layer at the
intervened frames of the reference pieces). A control must carry the same share, or a candidate that
"matters more than random" may only be one that removes more of the stream. Isotropic random directions
carry ``trace(S) / d`` on average, far below a direction the data cares about, so the controls are drawn
from ``N(0, S^p)`` (``p = 0`` is isotropic; larger ``p`` leans towards the high-variance directions), ``p``
chosen by bisection so that the median draw carries ``v``, and accepted only when their variance is within
``tolerance`` (relative) of ``v`` and their overlap with the candidate (the largest principal cosine) is
below ``max_overlap``: a control is never the candidate itself. Each control has its own seed (recorded);
if fewer than ``n`` controls can be matched in ``max_draws`` draws, :class:`ControlMatchError` is raised.
Nothing falls back to the candidate (the seed repository's bug).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_N_CONTROLS = 20
DEFAULT_TOLERANCE = 0.05  # relative difference of the projection variance
DEFAULT_MAX_OVERLAP = 0.5  # largest principal cosine between a control and the candidate's span
DEFAULT_MAX_DRAWS = 4000
DEFAULT_MATCH_TOLERANCE = 0.25  # SAE-feature controls: relative, on frequency and mean contribution (sae_features)
POWER_RANGE = (-4.0, 8.0)


class ControlMatchError(RuntimeError):
    """No (or too few) random directions match the candidate's projection variance."""


@dataclass(frozen=True)
class Controls:
    """Matched controls of one candidate: ``directions`` ``(n, k, d)`` (orthonormal rows per control),
    their projection ``variances`` and ``seeds``, the candidate's ``target_variance`` and the ``power`` of
    the covariance they were drawn from."""

    directions: np.ndarray
    variances: np.ndarray
    seeds: list[int]
    target_variance: float
    power: float
    tolerance: float


def projection_variance(acts: np.ndarray, directions: np.ndarray) -> float:
    """``trace(Q' S Q)``: the variance of the activations ``(n, d)`` in the span of ``directions`` ``(k, d)``."""
    q = _orthonormal(directions)
    z = (acts - acts.mean(axis=0)) @ q
    return float((z**2).sum(axis=1).mean())


def _orthonormal(directions: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(np.atleast_2d(np.asarray(directions, float)).T)
    return q  # (d, k)


def _overlap(q_a: np.ndarray, q_b: np.ndarray) -> float:
    return float(np.linalg.svd(q_a.T @ q_b, compute_uv=False).max())


def matched_controls(
    acts: np.ndarray,
    candidate: np.ndarray,
    n: int = DEFAULT_N_CONTROLS,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    max_overlap: float = DEFAULT_MAX_OVERLAP,
    max_draws: int = DEFAULT_MAX_DRAWS,
) -> Controls:
    """``n`` random subspaces of the candidate's dimension matched in projection variance (module docstring).

    ``acts``: reference activations ``(rows, d)`` of the layer; ``candidate``: ``(k, d)`` or ``(d,)``.
    Control ``j`` is drawn from ``np.random.default_rng([seed, j, attempt])``; its seed triple is recorded.
    """
    acts = np.asarray(acts, float)
    cand = np.atleast_2d(np.asarray(candidate, float))
    k, d = cand.shape
    if acts.ndim != 2 or acts.shape[1] != d:
        raise ValueError(f"activations {acts.shape} and candidate {cand.shape} differ in width")
    q_c = _orthonormal(cand)
    target = projection_variance(acts, cand)
    cov = np.cov(acts, rowvar=False, bias=True)  # the same normalisation as projection_variance
    w, V = np.linalg.eigh(cov)
    w = np.clip(w, 0.0, None)
    if target <= 0 or w.max() <= 0:
        raise ControlMatchError(f"the activations have no variance along the candidate ({target=}): nothing to match")

    def draw(p: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        scale = np.where(w > 0, w, 0.0) ** (p / 2) if p >= 0 else np.where(w > 1e-12 * w.max(), w, np.inf) ** (p / 2)
        g = rng.standard_normal((d, k)) * scale[:, None]
        q = _orthonormal((V @ g).T)
        return q, float(np.einsum("dk,de,ek->", q, cov, q))

    def median_var(p: float) -> float:
        rng = np.random.default_rng([seed, 999_999])
        return float(np.median([draw(p, rng)[1] for _ in range(64)]))

    lo, hi = POWER_RANGE
    if median_var(hi) < target or median_var(lo) > target:
        p = hi if median_var(hi) < target else lo
    else:
        for _ in range(30):
            p = 0.5 * (lo + hi)
            if median_var(p) < target:
                lo = p
            else:
                hi = p
        p = 0.5 * (lo + hi)
    chosen, variances, seeds = [], [], []
    attempts = 0
    for j in range(n):
        for attempt in range(max_draws):
            attempts += 1
            if attempts > max_draws:
                break
            q, v = draw(p, np.random.default_rng([seed, j, attempt]))
            if abs(v - target) <= tolerance * target and _overlap(q, q_c) < max_overlap:
                chosen.append(q.T)
                variances.append(v)
                seeds.append(attempt)
                break
        if attempts > max_draws:
            break
    if len(chosen) < n:
        raise ControlMatchError(
            f"only {len(chosen)} of {n} random {k}-dimensional controls matched the candidate's projection variance "
            f"{target:.4g} within {tolerance:.0%} (overlap < {max_overlap}) in {max_draws} draws (covariance power "
            f"{p:.2f}); raise tolerance or max_draws. The candidate is never used as its own control."
        )
    return Controls(np.stack(chosen), np.array(variances), seeds, target, p, tolerance)
