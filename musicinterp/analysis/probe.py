"""One (layer, target) analysis: nested out-of-fold probes, their gain, and its inference.

For the frames where the target is valid:

1. **Folds.** GroupKFold by ``source_id`` (``n_folds``, fewer when there are fewer sources).
2. **Two models**, both ``Pipeline(StandardScaler, L2 logistic regression)`` fit on the training folds only:
   *controls* (position, past of the labels, causal descriptors, the target's own value at t - h - 1 frame) and
   *full* (the same controls + the layer's reduced activations). The strength C of each is chosen by an
   inner GroupKFold (``inner_folds``) on the training folds only, by inner out-of-fold log-loss; the
   scaler of each inner split is fit on its inner training part.
3. **Gain** on the pooled out-of-fold predictions: AUROC(full) - AUROC(controls) and
   log-loss(controls) - log-loss(full); positive = the layer adds information.
4. **Inference** (musicinterp.analysis.stats): cluster-bootstrap CI of each gain, a permutation p-value
   (the target, its valid mask and its own-lag control move together: by default each clip takes the
   labels of another clip of the same length, ``permutation="shift"`` shifts them circularly within the
   clip; both models refit each time, inner CV included), and ``p_cluster``: the cluster-robust Wald t of
   the full model's out-of-fold logit in a GLM of the target on [controls' out-of-fold logit, that score],
   referred to the same permutations (see :func:`musicinterp.analysis.stats.cluster_wald_t`).

Degenerate inputs (a target missing or with one class, too few sources) give rows with NaN and a ``note``.
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from musicinterp.analysis import stats
from musicinterp.analysis.data import AnalysisError, load_reduced, parse_target
from musicinterp.config import AnalysisSpec
from musicinterp.frames import FRAME_RATE_HZ

log = logging.getLogger(__name__)

CONTROLS = ("none", "shifted-labels", "random-model")
METRICS = ("auroc", "log_loss")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def newton_l2_logit(Z: np.ndarray, y: np.ndarray, C: float, beta0: np.ndarray | None = None,
                    max_iter: int = 50, tol: float = 1e-7) -> np.ndarray:
    """Minimise C * sum(logistic loss) + ||w||^2 / 2 (sklearn's objective; intercept unpenalised) by Newton.

    Returns ``[w..., intercept]``. The objective is strictly convex, so the minimiser is the one
    sklearn's LogisticRegression finds (tests check agreement).
    """
    from scipy.linalg import lapack

    n, p = Z.shape
    Za = np.empty((n, p + 1))
    Za[:, :p] = Z
    Za[:, p] = 1.0
    b = np.zeros(p + 1) if beta0 is None else np.array(beta0, float)
    lam = np.full(p + 1, 1.0 / C)
    lam[p] = 0.0
    ridge = lam + 1e-10
    diag = np.arange(p + 1) * (p + 2)
    yf = y.astype(float)
    for _ in range(max_iter):
        pr = _sigmoid(Za @ b)
        g = Za.T @ (pr - yf) + lam * b
        H = (Za.T * (pr * (1 - pr) + 1e-10)) @ Za
        H.flat[diag] += ridge
        _, step, info = lapack.dposv(H, g)  # H is positive definite: Cholesky solve, little overhead
        if info != 0:
            step = np.linalg.lstsq(H, g, rcond=None)[0]
        b -= step
        if np.abs(step).max() < tol:
            break
    return b


class NewtonLogit(ClassifierMixin, BaseEstimator):
    """L2 logistic regression (sklearn's objective and C) solved exactly by Newton's method; classes {0, 1}."""

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, X, y):
        y = np.asarray(y).astype(int)
        self.classes_ = np.array([0, 1])
        b = newton_l2_logit(np.asarray(X, float), y, self.C)
        self.coef_, self.intercept_ = b[None, :-1], b[-1:]
        return self

    def decision_function(self, X):
        return np.asarray(X, float) @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X):
        p = _sigmoid(self.decision_function(X))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.decision_function(X) > 0).astype(int)


def make_probe(C: float, solver: str = "newton") -> Pipeline:
    """``Pipeline(StandardScaler, L2 logistic regression)`` with strength C."""
    clf = NewtonLogit(C=C) if solver == "newton" else LogisticRegression(C=C, max_iter=2000)
    return Pipeline([("scale", StandardScaler()), ("logit", clf)])


def fit_predict(F_train: np.ndarray, y_train: np.ndarray, F_test: np.ndarray, C: float, solver: str) -> np.ndarray:
    """P(y=1) on ``F_test`` of :func:`make_probe` fit on the training rows.

    For the Newton solver the pipeline is evaluated directly (StandardScaler's arithmetic, then the
    solver) without sklearn's per-call validation, which dominates the cost of the thousands of small
    fits a permutation test makes; a test checks that it equals the Pipeline.
    """
    if solver != "newton":
        return make_probe(C, solver).fit(F_train, y_train).predict_proba(F_test)[:, 1]
    mu, sd = F_train.mean(axis=0), F_train.std(axis=0)
    sd[sd == 0] = 1.0
    b = newton_l2_logit((F_train - mu) / sd, y_train, C)
    return _sigmoid(((F_test - mu) / sd) @ b[:-1] + b[-1])


def _fit_scaled(Z: np.ndarray, y: np.ndarray, C: float, solver: str, beta0: np.ndarray | None) -> np.ndarray:
    if solver == "newton":
        return newton_l2_logit(Z, y, C, beta0)
    m = LogisticRegression(C=C, max_iter=2000).fit(Z, y)
    return np.r_[m.coef_[0], m.intercept_]


def select_c(F: np.ndarray, y: np.ndarray, groups: np.ndarray, spec: AnalysisSpec) -> tuple[float, str]:
    """C by inner grouped CV on (training-fold) data only; the mean inner out-of-fold log-loss decides."""
    grid = list(spec.c_grid)
    if len(grid) == 1:
        return grid[0], ""
    k = min(spec.inner_folds, len(np.unique(groups)))
    if k < 2:
        return grid[len(grid) // 2], "inner CV impossible (one source in a training fold): middle C used"
    loss = np.zeros(len(grid))
    used = 0
    for tr, va in GroupKFold(n_splits=k).split(F, y, groups):
        if len(np.unique(y[tr])) < 2:
            continue
        mu, sd = F[tr].mean(axis=0), F[tr].std(axis=0)
        sd[sd == 0] = 1.0  # StandardScaler's convention, without its per-call validation cost
        Ztr, Zva = (F[tr] - mu) / sd, (F[va] - mu) / sd
        beta = None
        for i, C in enumerate(grid):  # ascending C: warm start from the more regularised solution
            beta = _fit_scaled(Ztr, y[tr], C, spec.solver, beta)
            pr = _sigmoid(Zva @ beta[:-1] + beta[-1])
            loss[i] += stats.log_loss(y[va], pr) * len(va)
        used += 1
    if used == 0:
        return grid[len(grid) // 2], "inner CV had one class in every split: middle C used"
    return grid[int(np.argmin(loss))], ""


def oof_predict(F: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int,
                spec: AnalysisSpec) -> tuple[np.ndarray, list[float], set[str]]:
    """Out-of-fold P(y=1) of ``Pipeline(StandardScaler, logit)``, C chosen inside each training fold."""
    p = np.empty(len(y))
    cs: list[float] = []
    notes: set[str] = set()
    for tr, te in GroupKFold(n_splits=n_folds).split(F, y, groups):
        if len(np.unique(y[tr])) < 2:
            p[te] = np.clip((y[tr].sum() + 0.5) / (len(tr) + 1.0), stats.EPS, 1 - stats.EPS)
            notes.add("a training fold had one class: its test fold got the training base rate")
            continue
        C, note = select_c(F[tr], y[tr], groups[tr], spec)
        if note:
            notes.add(note)
        cs.append(C)
        p[te] = fit_predict(F[tr], y[tr], F[te], C, spec.solver)
    return p, cs, notes


def _procedure(X: np.ndarray, Fc: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int,
               spec: AnalysisSpec) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Both nested models' out-of-fold predictions on one labelling."""
    p0, c0, n0 = oof_predict(Fc, y, groups, n_folds, spec)
    p1, c1, n1 = oof_predict(np.hstack([Fc, X]), y, groups, n_folds, spec)
    return p0, p1, {"c_controls": c0, "c_full": c1, "notes": n0 | n1}


def _rows(base: dict[str, Any], **per_metric: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m in METRICS:
        r = dict(base)
        r["metric"] = m
        for key, values in per_metric.items():
            r[key] = values.get(m, float("nan")) if isinstance(values, dict) else values
        rows.append(r)
    return rows


def _nan_rows(base: dict[str, Any], note: str) -> list[dict[str, Any]]:
    log.warning("layer %s target %s (%s): %s", base["layer"], base["label"], base["control"], note)
    nan = float("nan")
    return _rows({**base, "gain": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "q_value": nan,
                  "p_cluster": nan, "note": note, "score_controls": nan, "score_full": nan})


def _fallback_words(scheme: str, n: int) -> str:
    if scheme == "swap":
        return f"{n} clip-draws had no other clip of the same length and were circularly shifted instead"
    return f"{n} clip-draws were shorter than 2 x min_shift_s and took an equal-length clip's labels instead"


def _stable_seed(*parts: Any) -> list[int]:
    return [zlib.crc32(str(p).encode()) for p in parts]


def probe_layer_target(reduced_npz: str, labels_npz: str, target: str, spec: AnalysisSpec,
                       control: str = "none", return_predictions: bool = False) -> list[dict[str, Any]]:
    """The analysis of one (layer, target) under one control; two rows (metric auroc and log_loss).

    ``control``: 'none' (the real analysis), 'shifted-labels' (the target circularly shifted within each
    clip by a seeded offset >= min_shift_s before anything else: the effect must vanish) or
    'random-model' (the same analysis; the caller passes the random-weight store's reduced file).
    ``return_predictions`` adds the out-of-fold predictions and targets as ``_p_controls``, ``_p_full``
    and ``_y`` (for diagnostics; :func:`musicinterp.analysis.finalize` drops keys starting with '_').
    """
    if control not in CONTROLS:
        raise AnalysisError(f"control {control!r} is not one of {CONTROLS}")
    from threadpoolctl import threadpool_limits

    # thousands of small fits: BLAS threads only add synchronisation (10x slower on a busy 2-core machine);
    # parallelism belongs one level up (a task per layer x target)
    with threadpool_limits(limits=1, user_api="blas"):
        return _probe(reduced_npz, labels_npz, target, spec, control, return_predictions)


def _probe(reduced_npz: str, labels_npz: str, target: str, spec: AnalysisSpec, control: str,
           return_predictions: bool) -> list[dict[str, Any]]:
    red = load_reduced(reduced_npz)
    lab = load_reduced(labels_npz)
    if not (np.array_equal(red["clips"], lab["clips"]) and np.array_equal(red["clip"], lab["clip"])
            and np.array_equal(red["frame"], lab["frame"])):
        raise AnalysisError(f"{reduced_npz!s} and {labels_npz!s} hold different frames (other clips or another "
                            "frame_stride); make both from the same store with the same AnalysisSpec")
    layer = int(red["layer"])
    family, horizon = parse_target(target)
    weights = str(red.get("meta_weights", lab["weights"]))
    clip = lab["clip"]
    sources = lab["source_id"][clip]
    unit_names = sources if spec.cluster_unit == "source" else lab["clips"][clip]
    base: dict[str, Any] = {
        "layer": layer, "horizon": horizon, "target": family, "label": target, "control": control,
        "weights": weights, "n_clips": 0, "n_frames": 0, "n_sources": 0, "n_permutations": 0, "q_value": float("nan"),
    }
    if target not in set(lab["targets"].tolist()):
        return _nan_rows(base, f"target {target!r} was not loaded (labels file has {lab['targets'].tolist()})")
    y_all = lab[f"y__{target}"].astype(int)
    valid_all = lab[f"valid__{target}"].astype(bool)
    lag_all = lab[f"lag__{target}"]
    lagv_all = lab[f"lagvalid__{target}"].astype(bool)
    min_shift = max(1, math.ceil(spec.min_shift_s * FRAME_RATE_HZ / spec.frame_stride))
    notes: list[str] = []
    if control == "shifted-labels":
        perm, fb = stats.permutation_index(clip, min_shift, np.random.default_rng(
            _stable_seed(spec.seed, "shifted-labels", target)), spec.permutation)
        y_all, valid_all, lag_all, lagv_all = y_all[perm], valid_all[perm], lag_all[perm], lagv_all[perm]
        if fb:
            notes.append(f"shifted labels: {_fallback_words(spec.permutation, fb)}")
    use_lag = not math.isnan(horizon)
    Xall = red["X"].astype(float)
    Call = lab["controls"].astype(float)

    def design(mask: np.ndarray, lag: np.ndarray, lagv: np.ndarray) -> np.ndarray:
        cols = [Call[mask]]
        if use_lag:
            cols.append(np.column_stack([lag[mask], lagv[mask].astype(float)]))
        return np.hstack(cols)

    mask = valid_all
    y = y_all[mask]
    src = sources[mask]
    base.update(n_frames=int(mask.sum()), n_clips=len(np.unique(clip[mask])), n_sources=len(np.unique(src)))
    if mask.sum() == 0:
        return _nan_rows(base, "no valid frames for this target")
    if len(np.unique(y)) < 2:
        return _nan_rows(base, f"the target has one class only ({int(y[0])}) on its valid frames")
    if base["n_sources"] < spec.min_sources:
        return _nan_rows(base, f"only {base['n_sources']} sources with valid frames; "
                               f"need at least {spec.min_sources} (AnalysisSpec.min_sources)")
    n_folds = min(spec.n_folds, len(np.unique(src)))
    groups = np.unique(src, return_inverse=True)[1]
    Fc = design(mask, lag_all, lagv_all)
    p0, p1, info = _procedure(Xall[mask], Fc, y, groups, n_folds, spec)
    observed = stats.gains(y, p0, p1)
    ci = stats.bootstrap_gain_ci(y, p0, p1, unit_names[mask], spec.n_bootstrap, spec.alpha,
                                 np.random.default_rng(_stable_seed(spec.seed, "bootstrap", control, layer, target)))
    # the same permutations for every layer (common random numbers): layers are compared on one null
    rng = np.random.default_rng(_stable_seed(spec.seed, "permutations", control, target))
    t_cluster, cnote = stats.cluster_wald_t(y, p0, p1, unit_names[mask])
    if cnote:
        notes.append(cnote)
    null: dict[str, list[float]] = {m: [] for m in (*METRICS, "t_cluster")}
    fallback_total = 0
    for _ in range(spec.n_permutations):
        perm, fb = stats.permutation_index(clip, min_shift, rng, spec.permutation)
        fallback_total += fb
        yb, vb, lb, lvb = y_all[perm], valid_all[perm], lag_all[perm], lagv_all[perm]
        if len(np.unique(yb[vb])) < 2:
            for m in null:
                null[m].append(float("nan"))
            continue
        srcb = sources[vb]
        gb = np.unique(srcb, return_inverse=True)[1]
        q0, q1, _ = _procedure(Xall[vb], design(vb, lb, lvb), yb[vb], gb, min(n_folds, gb.max() + 1), spec)
        g = stats.gains(yb[vb], q0, q1)
        for m in METRICS:
            null[m].append(g[m])
        null["t_cluster"].append(stats.cluster_wald_t(yb[vb], q0, q1, unit_names[vb])[0]
                                 if np.isfinite(t_cluster) else float("nan"))
    if fallback_total:
        notes.append(f"permutations: {_fallback_words(spec.permutation, fallback_total)}")
    notes.extend(sorted(info["notes"]))
    pvals = {m: stats.permutation_p(observed[m], np.asarray(null[m])) for m in METRICS}
    p_cluster = stats.permutation_p(t_cluster, np.asarray(null["t_cluster"]))
    base.update(n_permutations=spec.n_permutations, p_cluster=p_cluster, note="; ".join(notes),
                c_controls=float(np.median(info["c_controls"])) if info["c_controls"] else float("nan"),
                c_full=float(np.median(info["c_full"])) if info["c_full"] else float("nan"))
    if return_predictions:
        base.update(_p_controls=p0, _p_full=p1, _y=y)
    return _rows(base, gain=observed, ci_low={m: ci[m][0] for m in METRICS},
                 ci_high={m: ci[m][1] for m in METRICS}, p_value=pvals,
                 score_controls={"auroc": stats.auroc(y, p0), "log_loss": stats.log_loss(y, p0)},
                 score_full={"auroc": stats.auroc(y, p1), "log_loss": stats.log_loss(y, p1)})
