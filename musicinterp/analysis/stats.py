"""Metrics and inference that respect autocorrelation: the clip (or source) is the unit.

- :func:`auroc`, :func:`log_loss`: weighted so that a cluster bootstrap is a reweighting;
- :func:`bootstrap_gain_ci`: percentile CI of the gain, resampling clusters with replacement on the
  out-of-fold predictions (the models are not refit: the CI is for the predictive gain of the fitted
  procedure on these clips);
- :func:`auroc_columns`, :func:`brier`: the ridge probe's metrics over blocks of permutations;
- the permutation schemes themselves: musicinterp.analysis.permutation;
- :func:`permutation_p`: (1 + #null >= observed) / (1 + n);
- :func:`cluster_wald_t`: statsmodels GLM(Binomial) of the target on [controls' out-of-fold score, layer
  model's out-of-fold score] with cluster-robust covariance by cluster; the Wald t of the layer score,
  which the probe refers to its permutation null (``p_cluster``); :func:`cluster_wald_t_batch`: the same t
  for a stack of permutation draws in one vectorised fit (statsmodels' IRLS and cluster sandwich, in numpy);
- :func:`bh`: Benjamini–Hochberg q-values (statsmodels);
- :func:`naive_frame_p`: what NOT to do (frames as independent samples), kept for the null simulation.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)

EPS = 1e-6


def _auc_counts(grp: np.ndarray, y: np.ndarray, w: np.ndarray, ng: int) -> tuple[float, float]:
    """Concordant weight (ties half) and total positive x negative weight, scores given as sorted group ids."""
    pos = np.bincount(grp, weights=w * y, minlength=ng)
    neg = np.bincount(grp, weights=w * ~y, minlength=ng)
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum()), float(pos.sum() * neg.sum())


class _SortedAuc:
    """AUROC under many reweightings of the same scores (the bootstrap): sort once, bincount per weight.

    With ``strata`` (the outer CV folds) only pairs within a stratum count: pooled out-of-fold scores carry
    each fold's own intercept, and a fold whose training part has more positives predicts higher for a test
    part that has fewer, so pooled AUROC sits below 0.5 on null data; within-fold pairs do not mix intercepts.
    """

    def __init__(self, y: np.ndarray, score: np.ndarray, strata: np.ndarray | None = None):
        self.y = np.asarray(y).astype(bool)
        strata = np.zeros(len(self.y), int) if strata is None else np.unique(strata, return_inverse=True)[1]
        self.parts = []
        for k in np.unique(strata):
            idx = np.flatnonzero(strata == k)
            grp = np.unique(np.asarray(score)[idx], return_inverse=True)[1]
            self.parts.append((idx, grp, int(grp.max()) + 1 if len(grp) else 0))

    def __call__(self, w: np.ndarray | None = None) -> float:
        w = np.ones(len(self.y)) if w is None else np.asarray(w, float)
        num = den = 0.0
        for idx, grp, ng in self.parts:
            a, b = _auc_counts(grp, self.y[idx], w[idx], ng)
            num, den = num + a, den + b
        return num / den if den > 0 else float("nan")


def auroc(y: np.ndarray, score: np.ndarray, w: np.ndarray | None = None, strata: np.ndarray | None = None) -> float:
    """Area under the ROC curve with ties counted half, optionally weighted per frame and counting only pairs
    within ``strata``; NaN with one class."""
    return _SortedAuc(y, score, strata)(w)


def auroc_columns(Y: np.ndarray, P: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """Within-stratum AUROC of every column of ``P`` against the same column of ``Y`` (the permutation blocks)."""
    from scipy.stats import rankdata

    Y = np.asarray(Y).astype(bool)
    num = np.zeros(Y.shape[1])
    den = np.zeros(Y.shape[1])
    for k in np.unique(strata):
        idx = strata == k
        r = rankdata(P[idx], axis=0)  # average ranks: ties count half
        npos = Y[idx].sum(axis=0)
        nneg = idx.sum() - npos
        num += (r * Y[idx]).sum(axis=0) - npos * (npos + 1) / 2
        den += npos * nneg
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def brier(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean squared error of the predictions (the ridge probe's score; lower is better)."""
    e = (np.asarray(y, float) - np.asarray(p, float)) ** 2
    return float(e.mean() if w is None else (e * w).sum() / w.sum())


def log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean binary cross-entropy (nats), probabilities clipped to [1e-6, 1 - 1e-6]."""
    p = np.clip(np.asarray(p, float), EPS, 1 - EPS)
    y = np.asarray(y, float)
    ll = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    if w is None:
        return float(ll.mean())
    return float((ll * w).sum() / w.sum())


def gains(
    y: np.ndarray,
    p_controls: np.ndarray,
    p_full: np.ndarray,
    w: np.ndarray | None = None,
    strata: np.ndarray | None = None,
    second: str = "log_loss",
) -> dict[str, float]:
    """AUROC gain (full - controls, pairs within ``strata``) and the loss gain (controls - full) of ``second``
    ('log_loss' or 'brier'): positive = the layer helps."""
    loss = log_loss if second == "log_loss" else brier
    return {
        "auroc": auroc(y, p_full, w, strata) - auroc(y, p_controls, w, strata),
        second: loss(y, p_controls, w) - loss(y, p_full, w),
    }


def bootstrap_gain_ci(
    y: np.ndarray,
    p_controls: np.ndarray,
    p_full: np.ndarray,
    unit: np.ndarray,
    n_boot: int,
    alpha: float,
    rng: np.random.Generator,
    strata: np.ndarray | None = None,
    second: str = "log_loss",
) -> dict[str, tuple[float, float]]:
    """Percentile (1 - alpha) CI of each gain, resampling clusters (``unit``) with replacement."""
    units, inv = np.unique(unit, return_inverse=True)
    k = len(units)
    auc0, auc1 = _SortedAuc(y, p_controls, strata), _SortedAuc(y, p_full, strata)
    yf = np.asarray(y, float)
    if second == "log_loss":
        p0, p1 = np.clip(p_controls, EPS, 1 - EPS), np.clip(p_full, EPS, 1 - EPS)
        l0 = -(yf * np.log(p0) + (1 - yf) * np.log1p(-p0))
        l1 = -(yf * np.log(p1) + (1 - yf) * np.log1p(-p1))
    else:
        l0, l1 = (yf - p_controls) ** 2, (yf - p_full) ** 2
    out: dict[str, list[float]] = {"auroc": [], second: []}
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, k, k), minlength=k).astype(float)
        w = counts[inv]
        if w.sum() <= 0:
            continue
        out["auroc"].append(auc1(w) - auc0(w))
        out[second].append(((l0 - l1) * w).sum() / w.sum())
    res = {}
    for m, v in out.items():
        v = np.asarray(v, float)
        v = v[np.isfinite(v)]
        res[m] = (
            (float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2)))
            if len(v) >= 10
            else (float("nan"), float("nan"))
        )
    return res


def permutation_p(observed: float, null: np.ndarray) -> float:
    """(1 + #null >= observed) / (1 + n); NaN when the observed statistic is undefined."""
    null = np.asarray(null, float)
    if not np.isfinite(observed):
        return float("nan")
    null = np.where(np.isfinite(null), null, -np.inf)  # an undefined null draw never beats the observation
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def _independent_columns(X: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Keep columns (in order) that are not linear combinations of the ones kept before them."""
    kept: list[int] = []
    Q = np.zeros((X.shape[0], 0))
    for j in range(X.shape[1]):
        v = X[:, j] - Q @ (Q.T @ X[:, j])
        norm = np.linalg.norm(v)
        if norm > tol * max(1.0, np.linalg.norm(X[:, j])):
            kept.append(j)
            Q = np.column_stack([Q, v / norm])
    return np.asarray(kept, dtype=int)


def _design(controls: np.ndarray, score: np.ndarray | None = None) -> np.ndarray:
    """Intercept, standardised controls (constant and collinear ones dropped), then the score if given."""
    sd = controls.std(axis=0)
    c = controls[:, sd > 1e-9]
    c = (c - c.mean(axis=0)) / c.std(axis=0) if c.shape[1] else c
    X = np.column_stack([np.ones(len(controls)), c])
    X = X[:, _independent_columns(X)]
    if score is None:
        return X
    s = (score - score.mean()) / (score.std() or 1.0)
    return np.column_stack([X, s])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def cluster_wald_t(
    y: np.ndarray, p_controls: np.ndarray, p_full: np.ndarray, groups: np.ndarray, scores: bool = False
) -> tuple[float, str]:
    """Cluster-robust Wald t that the layer's out-of-fold score adds to the controls'.

    GLM(Binomial): ``y ~ 1 + logit(p_controls) + logit(p_full)`` with cluster-robust covariance by
    ``groups`` (statsmodels ``cov_type="cluster"``); the t of the full model's score. The controls enter
    through their own out-of-fold logit rather than one column each: a cluster-robust covariance needs
    many more clusters than parameters, and a study has tens of sources, not hundreds.

    The t is not referred to a t distribution: against t(G - 1) it rejected 7-8% of null experiments
    (our reading: out-of-fold scores share each fold's fitted model, a dependence across clusters
    that no by-cluster covariance sees, and G is small). The probe refers it to the permutation null
    instead (a studentised permutation test), exact like the gains' permutation p. Returns
    ``(t, note)``; t is NaN with a note when the fit fails (separation, too few clusters).
    """
    import statsmodels.api as sm

    g = np.unique(groups, return_inverse=True)[1]
    n_groups = int(g.max()) + 1 if len(g) else 0
    if n_groups < 3:
        return float("nan"), "p_cluster: fewer than 3 clusters"
    # probabilities enter as logits; ridge scores (``scores=True``) as they are
    s0, s1 = (
        (np.asarray(p_controls, float), np.asarray(p_full, float)) if scores else (_logit(p_controls), _logit(p_full))
    )
    X = _score_design(s0, s1)
    if X is None:
        return float("nan"), _COLLINEAR
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.GLM(np.asarray(y, float), X, family=sm.families.Binomial()).fit(
                cov_type="cluster", cov_kwds={"groups": g}
            )
            if not fit.converged:
                return float("nan"), "p_cluster: GLM did not converge (separation?)"
            t = float(fit.tvalues[-1])
    except Exception as e:  # noqa: BLE001 - statsmodels raises many kinds on degenerate data; reported, not hidden
        return float("nan"), f"p_cluster: GLM failed ({type(e).__name__}: {e})"
    if not np.isfinite(t):
        return float("nan"), "p_cluster: undefined (separation or a singular covariance)"
    return t, ""


_FLOAT_EPS = float(np.finfo(float).eps)  # statsmodels' clip for probabilities in its Binomial family and logit link
CLUSTER_CHUNK_VALUES = 2**16  # draws x frames fitted together: temporaries stay in cache
_COLLINEAR = "p_cluster: the layer score is constant or collinear with the controls' score"


def _score_design(s0: np.ndarray, s1: np.ndarray) -> np.ndarray | None:
    """p_cluster's design ``[1, s0, s1]`` (``[1, s1]`` when ``s0`` is constant); None when ``s1`` is constant or
    collinear with the columns before it."""
    X = np.column_stack([np.ones(len(s1)), s0, s1])
    if np.std(s0) < 1e-9:
        X = X[:, [0, 2]]
    if np.std(s1) < 1e-9 or len(_independent_columns(X)) < X.shape[1]:
        return None
    return X


def _binomial_logit_terms(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binomial variance and the logit's derivative at ``mu``, both on probabilities clipped to [eps, 1 - eps]."""
    pc = np.clip(mu, _FLOAT_EPS, 1 - _FLOAT_EPS)
    var = pc * (1 - pc)
    return var, 1.0 / var


def _binomial_deviance(positive: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Binomial deviance of each row of labels (``positive``: draws x frames) at ``mu``, as statsmodels' IRLS
    computes it, -2 sum log(mu_observed + 1e-20) (its term of the class not observed is exactly 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -2 * np.log(np.where(positive, mu, 1.0 - mu) + 1e-20).sum(axis=-1)


def _logistic_irls(
    F: np.ndarray, y: np.ndarray, maxiter: int = 100, atol: float = 1e-8
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression of every draw at once: ``F`` (draws, columns, frames), 0/1 labels ``y`` (draws, frames).

    The iteration statsmodels' ``GLM(Binomial).fit()`` runs: IRLS from mu = (y + 0.5) / 2, weights and working
    response on probabilities clipped to [eps, 1 - eps], each step a least-squares solve, stopping when the
    deviance changes by at most ``atol`` or after ``maxiter`` steps; each draw stops at its own step.
    Returns (coefficients (draws, columns), converged).
    """
    m, k, _ = F.shape
    mu = (y + 0.5) / 2
    eta = np.log(mu / (1.0 - mu))
    beta = np.full((m, k), np.nan)
    converged = np.zeros(m, bool)
    active = np.arange(m)
    positive = y > 0.5
    dev = _binomial_deviance(positive, mu)
    for _ in range(maxiter):
        w = _binomial_logit_terms(mu)[0]  # the IRLS weight: the variance, 1 / the logit's derivative
        FW = F * w[:, None, :]
        z = eta + (y - mu) / w
        with np.errstate(all="ignore"):
            step = np.linalg.pinv(FW @ F.transpose(0, 2, 1)) @ (FW @ z[..., None])  # least squares, as statsmodels
            eta = (step.transpose(0, 2, 1) @ F)[:, 0, :]
            mu = 1.0 / (1.0 + np.exp(-eta))
            dev_new = _binomial_deviance(positive, mu)
            done = np.isclose(dev, dev_new, rtol=0.0, atol=atol)
        beta[active] = step[..., 0]
        dev = dev_new
        if done.any():
            converged[active[done]] = True
            keep = ~done
            active, F, y, positive = active[keep], F[keep], y[keep], positive[keep]
            mu, eta, dev = mu[keep], eta[keep], dev[keep]
            if not len(active):
                break
    return beta, converged


def _cluster_t_last(F: np.ndarray, y: np.ndarray, beta: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Wald t of the last coefficient with statsmodels' ``cov_type="cluster"`` covariance, per draw.

    Sandwich ``H^-1 M H^-1`` with ``H`` the observed information at the estimate and ``M`` the sum over
    clusters of the outer products of each cluster's summed score, times the CRV1 correction ``G / (G - 1) *
    (n - 1) / (n - k)`` (statsmodels' default ``use_correction=True``). ``H`` and the scores are formed as
    statsmodels' GLM forms them (its observed-information factor included: it is not finite, and so neither is
    t, when a fitted probability rounds to 0 or 1). NaN where ``H`` is singular. Frames come sorted by
    cluster, each cluster starting at ``starts``.
    """
    m, k, n = F.shape
    n_groups = len(starts)
    with np.errstate(all="ignore"):
        mu = 1.0 / (1.0 + np.exp(-(beta[:, None, :] @ F)[:, 0, :]))
        var, dlink = _binomial_logit_terms(mu)
        score = (y - mu) / dlink / var
        pc = np.clip(mu, _FLOAT_EPS, 1 - _FLOAT_EPS)
        second = var * (2 * mu - 1) / (mu * (1 - mu)) ** 2 + (1 - 2 * pc) * dlink
        info = 1.0 / (dlink**2 * var) * (1 + score * second)
        H = (F * info[:, None, :]) @ F.transpose(0, 2, 1)
        U = np.add.reduceat(F * score[:, None, :], starts, axis=2)  # (draws, k, clusters)
        M = U @ U.transpose(0, 2, 1)
        try:
            Hi = np.linalg.inv(H)
        except np.linalg.LinAlgError:  # one draw's H is singular: invert one at a time, NaN for that draw
            Hi = np.full_like(H, np.nan)
            for j in range(m):
                try:
                    Hi[j] = np.linalg.inv(H[j])
                except np.linalg.LinAlgError:
                    pass
        cov = Hi @ M @ Hi.transpose(0, 2, 1) * (n_groups / (n_groups - 1.0) * (n - 1.0) / (n - k))
        return beta[:, -1] / np.sqrt(cov[:, -1, -1])


def _score_designs(S0: np.ndarray, S1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_score_design`'s decision for every row of ``S0``, ``S1`` (draws x frames): (with s0, usable),
    vectorised; a draw within a factor 100 of a threshold is decided by :func:`_score_design` itself."""
    n = S0.shape[1]
    c0, c1 = S0 - S0.mean(axis=1)[:, None], S1 - S1.mean(axis=1)[:, None]
    ss0, ss1, c01 = (np.einsum("ij,ij->i", a, b) for a, b in ((c0, c0), (c1, c1), (c0, c1)))
    sd0, sd1 = np.sqrt(ss0 / n), np.sqrt(ss1 / n)  # np.std
    with np.errstate(divide="ignore", invalid="ignore"):
        # Gram-Schmidt of [1, s0, s1] as _independent_columns runs it: residual norms over its thresholds
        r0 = np.sqrt(ss0) / (1e-6 * np.maximum(1.0, np.sqrt(np.einsum("ij,ij->i", S0, S0))))
        res1 = ss1 - np.where(sd0 >= 1e-9, c01**2 / ss0, 0.0)
        r1 = np.sqrt(np.maximum(res1, 0.0)) / (1e-6 * np.maximum(1.0, np.sqrt(np.einsum("ij,ij->i", S1, S1))))
    with_s0 = sd0 >= 1e-9
    usable = (sd1 >= 1e-9) & (~with_s0 | (r0 > 1)) & (r1 > 1)
    near = [np.abs(np.log10(np.where(x > 0, x, 1e-300))) < 2 for x in (sd0 / 1e-9, sd1 / 1e-9, r0, r1)]
    undecided = near[0] | near[1] | (with_s0 & near[2]) | near[3] | ~np.isfinite(sd0 + sd1 + r0 + r1)
    for b in np.flatnonzero(undecided):
        X = _score_design(S0[b], S1[b])
        with_s0[b], usable[b] = X is not None and X.shape[1] == 3, X is not None
    return with_s0, usable


def cluster_wald_t_batch(
    Y: np.ndarray, P0: np.ndarray, P1: np.ndarray, groups: np.ndarray, scores: bool = False, maxiter: int = 100
) -> tuple[np.ndarray, list[str]]:
    """:func:`cluster_wald_t` of every column of ``Y``, ``P0``, ``P1`` (frames x draws) in one batched fit.

    The probe's permutation draws differ in their labels and out-of-fold scores, not in their clusters; all
    draws' logistic fits run as one vectorised IRLS (:func:`_logistic_irls`, statsmodels' iteration) and one
    cluster sandwich (:func:`_cluster_t_last`). Same cases, same NaNs and notes as :func:`cluster_wald_t`
    (which stays the reference: equal t per draw to float rounding, tests/test_statistics.py), except that a
    singular Hessian reads "undefined" rather than statsmodels' exception text. ``Y`` holds 0/1 labels.
    ``maxiter``: IRLS steps, as in statsmodels' ``fit`` (100). Returns ``(t, notes)``.
    """
    n, B = np.shape(Y)
    t = np.full(B, np.nan)
    g = np.unique(groups, return_inverse=True)[1]
    if len(np.unique(g)) < 3:
        return t, ["p_cluster: fewer than 3 clusters"] * B
    # draws x frames, the frames sorted by cluster: every per-draw pass runs over contiguous memory
    order = np.argsort(g, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(g[order]) != 0])
    Y, P0, P1 = (np.ascontiguousarray(np.asarray(a, float)[order].T) for a in (Y, P0, P1))
    if not np.isin(Y, (0.0, 1.0)).all():
        raise ValueError("cluster_wald_t_batch: the labels Y must be 0 or 1")
    S0, S1 = (P0, P1) if scores else (_logit(P0), _logit(P1))
    with_s0, usable = _score_designs(S0, S1)
    notes = ["" if u else _COLLINEAR for u in usable]
    chunk = max(1, CLUSTER_CHUNK_VALUES // max(n, 1))
    for three in (True, False):  # designs [1, s0, s1] and [1, s1]
        todo = np.flatnonzero(usable & (with_s0 == three))
        for idx in (todo[i : i + chunk] for i in range(0, len(todo), chunk)):
            cols = [S0[idx], S1[idx]] if three else [S1[idx]]
            F = np.stack([np.ones((len(idx), n)), *cols], axis=1)
            beta, converged = _logistic_irls(F, Y[idx], maxiter)
            tb = _cluster_t_last(F, Y[idx], beta, starts)
            for j, b in enumerate(idx):
                if not converged[j]:
                    notes[b] = "p_cluster: GLM did not converge (separation?)"
                elif not np.isfinite(tb[j]):
                    notes[b] = "p_cluster: undefined (separation or a singular covariance)"
                else:
                    t[b] = tb[j]
    return t, notes


def naive_frame_p(y: np.ndarray, controls: np.ndarray, features: np.ndarray) -> float:
    """Frame-level likelihood-ratio test of [controls + features] vs controls, frames as independent samples.

    Over-confident on autocorrelated frames (DESIGN.md §3); used only by the null simulation to show it.
    """
    import statsmodels.api as sm
    from scipy import stats as st

    X0 = _design(controls)
    f = features[:, features.std(axis=0) > 1e-9]
    X1 = np.column_stack([X0, (f - f.mean(0)) / f.std(0)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            l0 = sm.GLM(y.astype(float), X0, family=sm.families.Binomial()).fit().llf
            l1 = sm.GLM(y.astype(float), X1, family=sm.families.Binomial()).fit().llf
    except Exception:  # noqa: BLE001
        return float("nan")
    return float(st.chi2.sf(max(0.0, 2 * (l1 - l0)), df=X1.shape[1] - X0.shape[1]))


def bh(pvalues: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Benjamini–Hochberg q-values; NaN p-values stay NaN and do not count as tests."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, float)
    q = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = multipletests(p[ok], alpha=alpha, method="fdr_bh")[1]
    return q


def ar1_noise(rng: np.random.Generator, n: int, d: int, phi: float) -> np.ndarray:
    """Stationary AR(1) noise ``(n, d)`` with unit variance: the autocorrelated null of the simulations."""
    x = np.empty((n, d))
    x[0] = rng.standard_normal(d)
    e = rng.standard_normal((n, d)) * np.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x
