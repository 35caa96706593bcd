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
  which the probe refers to its permutation null (``p_cluster``);
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
    X = np.column_stack([np.ones(len(y)), s0, s1])
    if np.std(s0) < 1e-9:
        X = X[:, [0, 2]]
    if np.std(s1) < 1e-9 or len(_independent_columns(X)) < X.shape[1]:
        return float("nan"), "p_cluster: the layer score is constant or collinear with the controls' score"
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
