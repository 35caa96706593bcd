"""One (layer, target) analysis: nested out-of-fold probes, their gain, and its inference.

For the rows where the target is valid in every member of its permutation class (musicinterp.analysis.permutation):

1. **Folds.** GroupKFold by ``source_id`` (``n_folds``, fewer when there are fewer sources).
2. **Two models** fit on the training folds only: *controls* (position, past of the labels, causal descriptors,
   and the target's own value at t - h - 1 frame, which moves with the target under permutation) and *full*
   (the same + the layer at full width; with a random network's layer as a baseline, that layer joins both).
   ``estimator="ridge"`` (musicinterp.analysis.ridge): strength chosen by an inner grouped CV on the training
   folds, every permutation refit in a few matrix products. ``estimator="logistic"``: the first wave's L2
   logistic regression (C by inner grouped CV on log-loss, exact Newton solver), refit from scratch.
3. **Gain** on the out-of-fold predictions: AUROC(full) - AUROC(controls) over pairs within one outer fold, and
   the Brier (ridge) or log-loss (logistic) gain; positive = the layer adds information.
4. **Inference**: the permutation p of each gain over window classes (exact when the group is small, refused
   when it has fewer than 1/alpha arrangements, sequential up to the grid's budget otherwise), ``p_cluster``
   (the cluster-robust Wald t of the full model's score in a GLM beside the controls' score, referred to the
   first ``n_permutations`` draws) and a cluster-bootstrap CI of each gain (an effect size, not a test).

Degenerate inputs (a target missing or with one class, too few sources or arrangements) give rows with NaN and
a ``note``.
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

from musicinterp.analysis import permutation as pm
from musicinterp.analysis import stats
from musicinterp.analysis.data import AnalysisError, load_reduced, parse_target
from musicinterp.analysis.ridge import GroupedRidgeCV, cached_ridge_cv
from musicinterp.config import AnalysisSpec
from musicinterp.frames import FRAME_RATE_HZ

log = logging.getLogger(__name__)

CONTROLS = ("none", "shifted-labels", "random-model", "beyond-random")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def newton_l2_logit(
    Z: np.ndarray, y: np.ndarray, C: float, beta0: np.ndarray | None = None, max_iter: int = 50, tol: float = 1e-7
) -> np.ndarray:
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


def oof_predict(
    F: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int, spec: AnalysisSpec
) -> tuple[np.ndarray, list[float], set[str]]:
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


def _rows(base: dict[str, Any], metrics: tuple[str, ...], **per_metric: Any) -> list[dict[str, Any]]:
    rows = []
    for m in metrics:
        r = dict(base)
        r["metric"] = m
        for key, values in per_metric.items():
            r[key] = values.get(m, float("nan")) if isinstance(values, dict) else values
        rows.append(r)
    return rows


def _nan_rows(base: dict[str, Any], note: str, metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    log.warning("layer %s target %s (%s): %s", base["layer"], base["label"], base["control"], note)
    nan = float("nan")
    return _rows(
        {
            **base,
            "gain": nan,
            "ci_low": nan,
            "ci_high": nan,
            "p_value": nan,
            "q_value": nan,
            "p_cluster": nan,
            "note": note,
            "score_controls": nan,
            "score_full": nan,
        },
        metrics,
    )


def _stable_seed(*parts: Any) -> list[int]:
    return [zlib.crc32(str(p).encode()) for p in parts]


def metrics_of(spec: AnalysisSpec) -> tuple[str, str]:
    return ("auroc", "brier") if spec.estimator == "ridge" else ("auroc", "log_loss")


def probe_layer_target(
    reduced_npz: str,
    labels_npz: str,
    target: str,
    spec: AnalysisSpec,
    control: str = "none",
    return_predictions: bool = False,
    baseline_npz: str | None = None,
    n_cells: int | None = None,
) -> list[dict[str, Any]]:
    """The analysis of one (layer, target) under one control; one row per metric.

    ``control``: 'none' (the real analysis), 'shifted-labels' (every clip's label track handed to another clip
    of its window class, at the same positions, before anything else: the effect must vanish), 'random-model' (the same
    analysis; the caller passes the random-weight store's reduced file) or 'beyond-random' (``baseline_npz``:
    the same layer of a random-weight network of the same architecture on the same clips; its activations join
    the controls, so the gain is what the layer holds beyond what a random network extracts from the audio; two
    more rows, control 'trained-minus-random', test AUROC(controls + layer) - AUROC(controls + random layer)
    by swapping the two predictions within sources). ``n_cells``: cells of the BH family (layers x targets),
    which sets the permutation budget (:meth:`AnalysisSpec.permutation_budget`; default 25 layers x targets).
    ``return_predictions`` adds the out-of-fold predictions and targets as ``_p_controls``, ``_p_full`` and
    ``_y`` (for diagnostics; :func:`musicinterp.analysis.finalize` drops keys starting with '_').
    """
    if control not in CONTROLS:
        raise AnalysisError(f"control {control!r} is not one of {CONTROLS}")
    if (control == "beyond-random") != (baseline_npz is not None):
        raise AnalysisError(
            "control 'beyond-random' needs baseline_npz (the random network's reduced layer), "
            "and baseline_npz is only for that control"
        )
    from threadpoolctl import threadpool_limits

    # thousands of small fits: BLAS threads only add synchronisation (10x slower on a busy 2-core machine);
    # parallelism belongs one level up (a task per layer x target)
    with threadpool_limits(limits=1, user_api="blas"):
        return _probe(
            reduced_npz,
            labels_npz,
            target,
            spec,
            control,
            return_predictions,
            baseline_npz,
            n_cells if n_cells is not None else 25 * len(spec.targets),
        )


def _same_frames(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        np.array_equal(a["clips"], b["clips"])
        and np.array_equal(a["clip"], b["clip"])
        and np.array_equal(a["frame"], b["frame"])
    )


def _probe(
    reduced_npz: str,
    labels_npz: str,
    target: str,
    spec: AnalysisSpec,
    control: str,
    return_predictions: bool,
    baseline_npz: str | None,
    n_cells: int,
) -> list[dict[str, Any]]:
    red = load_reduced(reduced_npz)
    lab = load_reduced(labels_npz)
    if not _same_frames(red, lab):
        raise AnalysisError(
            f"{reduced_npz!s} and {labels_npz!s} hold different frames (other clips or another "
            "frame_stride); make both from the same store with the same AnalysisSpec"
        )
    base_red = load_reduced(baseline_npz) if baseline_npz else None
    if base_red is not None and not _same_frames(base_red, lab):
        raise AnalysisError(
            f"the random network's {baseline_npz!s} holds other clips or frames than "
            f"{labels_npz!s}: capture the same slice with the same settings into the control store"
        )
    metrics = metrics_of(spec)
    layer = int(red["layer"])
    family, horizon = parse_target(target)
    weights = str(red.get("meta_weights", lab["weights"]))
    clip = lab["clip"]
    sources = lab["source_id"][clip]
    unit_names = sources if spec.cluster_unit == "source" else lab["clips"][clip]
    base: dict[str, Any] = {
        "layer": layer,
        "horizon": horizon,
        "target": family,
        "label": target,
        "control": control,
        "weights": weights,
        "n_clips": 0,
        "n_frames": 0,
        "n_sources": 0,
        "n_permutations": 0,
        "q_value": float("nan"),
    }
    if target not in set(lab["targets"].tolist()):
        return _nan_rows(base, f"target {target!r} was not loaded (labels file has {lab['targets'].tolist()})", metrics)
    y_all = lab[f"y__{target}"].astype(int)
    valid_all = lab[f"valid__{target}"].astype(bool)
    lag_all = lab[f"lag__{target}"].astype(float)
    lagv_all = lab[f"lagvalid__{target}"].astype(float)
    notes: list[str] = []
    look_note = str(lab.get("meta_lookahead_note", ""))
    if look_note:
        notes.append(look_note)
    window = max(1, round(spec.window_s * FRAME_RATE_HZ))
    classes = pm.window_classes(clip, lab["frame"].astype(int), lab["n_frames"].astype(int), window)
    if control == "shifted-labels":  # another clip's label track at the same positions (same classes)
        perm = pm.control_draw(
            len(y_all), classes, np.random.default_rng(_stable_seed(spec.seed, "shifted-labels", target))
        )
        y_all, valid_all, lag_all, lagv_all = y_all[perm], valid_all[perm], lag_all[perm], lagv_all[perm]
    rows = np.flatnonzero(pm.consensus_valid(valid_all, classes))
    y = y_all[rows]
    src = sources[rows]
    base.update(n_frames=len(rows), n_clips=len(np.unique(clip[rows])), n_sources=len(np.unique(src)))
    if len(rows) == 0:
        return _nan_rows(base, "no valid frames for this target", metrics)
    if len(np.unique(y)) < 2:
        return _nan_rows(base, f"the target has one class only ({int(y[0])}) on its valid frames", metrics)
    if base["n_sources"] < spec.min_sources:
        return _nan_rows(
            base,
            f"only {base['n_sources']} sources with valid frames; "
            f"need at least {spec.min_sources} (AnalysisSpec.min_sources)",
            metrics,
        )
    # draws restricted to the analysed rows: classes of rows outside them never matter
    sub = pm.Classes(tuple(m for m in classes.members if valid_all[m].all(axis=0).any()))
    log10_g = sub.log10_arrangements()
    if log10_g < math.log10(1 / spec.alpha):
        return _nan_rows(
            base,
            f"only {10**log10_g:.0f} distinct label arrangements (window classes of sizes "
            f"{sorted((c for c in sub.sizes if c > 1), reverse=True)}): no p-value can go below "
            f"alpha = {spec.alpha}; add clips of equal length or shorten window_s",
            metrics,
        )
    n_folds = min(spec.n_folds, len(np.unique(src)))
    groups = np.unique(src, return_inverse=True)[1]
    fold = np.empty(len(rows), dtype=np.int32)
    from sklearn.model_selection import GroupKFold

    for f, (_, te) in enumerate(GroupKFold(n_splits=n_folds).split(rows, groups=groups)):
        fold[te] = f
    X = red["X"].astype(float)[rows]
    Fc = lab["controls"].astype(float)[rows]
    R = base_red["X"].astype(float)[rows] if base_red is not None else None
    Z0 = Fc if R is None else np.hstack([Fc, R])
    Z1 = np.hstack([Z0, X])
    use_lag = not math.isnan(horizon)
    units = unit_names[rows]
    second = metrics[1]

    if spec.estimator == "ridge":
        cv0 = cached_ridge_cv(Z0, groups, n_folds, spec.inner_folds, spec.ridge_grid, spec.device)
        cv1 = cached_ridge_cv(Z1, groups, n_folds, spec.inner_folds, spec.ridge_grid, spec.device)
        fold = cv0.fold

        def predict(perms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
            idx = np.stack([p[rows] for p in perms], axis=1)  # (n, B)
            Y = y_all[idx].astype(float)
            L = np.stack([lag_all[idx], lagv_all[idx]], axis=1) if use_lag else None
            P0, c0 = cv0.oof(Y, L)
            P1, c1 = cv1.oof(Y, L)
            return Y, P0, P1, {"c_controls": c0[:, 0], "c_full": c1[:, 0]}
    else:

        def predict(perms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
            cols = [], [], []
            info: dict[str, Any] = {}
            for p in perms:
                yb = y_all[p][rows]
                lagc = np.column_stack([lag_all[p][rows], lagv_all[p][rows]]) if use_lag else np.empty((len(rows), 0))
                F0 = np.hstack([Z0, lagc])
                q0, c0, n0 = oof_predict(F0, yb, groups, n_folds, spec)
                q1, c1, n1 = oof_predict(np.hstack([F0, X]), yb, groups, n_folds, spec)
                for lst, v in zip(cols, (yb, q0, q1)):
                    lst.append(v)
                info = info or {"c_controls": c0, "c_full": c1, "notes": n0 | n1}
            return (np.stack(cols[0], 1).astype(float), np.stack(cols[1], 1), np.stack(cols[2], 1), info)

    Y_obs, P0_obs, P1_obs, info = predict([np.arange(len(y_all))])
    y_obs, p0, p1 = Y_obs[:, 0].astype(int), P0_obs[:, 0], P1_obs[:, 0]
    observed = stats.gains(y_obs, p0, p1, strata=fold, second=second)
    t_cluster, cnote = stats.cluster_wald_t(y_obs, p0, p1, units, scores=spec.estimator == "ridge")
    if cnote:
        notes.append(cnote)

    def loss(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
        if second == "brier":
            return ((Y - P) ** 2).mean(axis=0)
        Pc = np.clip(P, stats.EPS, 1 - stats.EPS)
        return -(Y * np.log(Pc) + (1 - Y) * np.log1p(-Pc)).mean(axis=0)

    n_cluster = [0]

    def stat_fn(perms: list[np.ndarray]) -> dict[str, np.ndarray]:
        Y, P0, P1, _ = predict(perms)
        out = {
            "auroc": stats.auroc_columns(Y, P1, fold) - stats.auroc_columns(Y, P0, fold),
            second: loss(Y, P0) - loss(Y, P1),
        }
        t = np.full(len(perms), np.nan)
        m = min(len(perms), spec.n_permutations - n_cluster[0]) if np.isfinite(t_cluster) else 0
        if m > 0:  # p_cluster's null: the first n_permutations draws, all of a block's fitted at once
            raw = spec.estimator == "ridge"  # ridge scores enter as they are, probabilities as logits
            t[:m] = stats.cluster_wald_t_batch(Y[:, :m], P0[:, :m], P1[:, :m], units, scores=raw)[0]
            n_cluster[0] += m
        out["t_cluster"] = t
        return out

    rng = np.random.default_rng(_stable_seed(spec.seed, "permutations", control, target))
    budget = spec.permutation_budget(n_cells)
    res = pm.permutation_test(
        observed,
        stat_fn,
        len(y_all),
        sub,
        rng,
        min_draws=spec.n_permutations,
        max_draws=budget,
        sequential_h=spec.sequential_h,
        keep_first=spec.n_permutations,
    )
    p_cluster = stats.permutation_p(t_cluster, res.null_first.get("t_cluster", np.array([])))
    if res.exact:
        notes.append(f"exact test: all {res.n_draws + 1} label arrangements")
    ci = stats.bootstrap_gain_ci(
        y_obs,
        p0,
        p1,
        units,
        spec.n_bootstrap,
        spec.alpha,
        np.random.default_rng(_stable_seed(spec.seed, "bootstrap", control, layer, target)),
        strata=fold,
        second=second,
    )
    notes.extend(sorted(info.get("notes", set())))
    base.update(
        n_permutations=res.n_draws,
        p_cluster=p_cluster,
        note="; ".join(notes),
        c_controls=float(np.median(info["c_controls"])) if len(info["c_controls"]) else float("nan"),
        c_full=float(np.median(info["c_full"])) if len(info["c_full"]) else float("nan"),
    )
    if return_predictions:
        base.update(_p_controls=p0, _p_full=p1, _y=y_obs, _fold=fold)
    loss_name = stats.brier if second == "brier" else stats.log_loss
    out = _rows(
        base,
        metrics,
        gain=observed,
        ci_low={m: ci[m][0] for m in metrics},
        ci_high={m: ci[m][1] for m in metrics},
        p_value=res.p,
        score_controls={"auroc": stats.auroc(y_obs, p0, strata=fold), second: loss_name(y_obs, p0)},
        score_full={"auroc": stats.auroc(y_obs, p1, strata=fold), second: loss_name(y_obs, p1)},
    )
    if R is not None:
        own = np.column_stack([lag_all[rows], lagv_all[rows]]) if use_lag else np.empty((len(rows), 0))
        out += _trained_minus_random(
            base, y_obs, fold, units, np.hstack([Fc, own]), X, R, groups, n_folds, spec, budget
        )
    return out


def _trained_minus_random(
    base: dict[str, Any],
    y: np.ndarray,
    fold: np.ndarray,
    units: np.ndarray,
    Fc: np.ndarray,
    X: np.ndarray,
    R: np.ndarray,
    groups: np.ndarray,
    n_folds: int,
    spec: AnalysisSpec,
    budget: int,
) -> list[dict[str, Any]]:
    """AUROC(controls + trained layer) - AUROC(controls + random layer), tested by swapping the two
    out-of-fold predictions within each unit (source) at random: exchangeable when neither network reads the
    target better. No refit is needed, so the draws are cheap; B = the permutation budget. ``Fc``: the controls
    with the target's own past (fixed here: the labels are not permuted)."""
    if spec.estimator == "ridge":
        pT = GroupedRidgeCV(np.hstack([Fc, X]), groups, n_folds, spec.inner_folds, spec.ridge_grid, spec.device).oof(
            y[:, None].astype(float)
        )[0][:, 0]
        pR = GroupedRidgeCV(np.hstack([Fc, R]), groups, n_folds, spec.inner_folds, spec.ridge_grid, spec.device).oof(
            y[:, None].astype(float)
        )[0][:, 0]
    else:
        pT = oof_predict(np.hstack([Fc, X]), y, groups, n_folds, spec)[0]
        pR = oof_predict(np.hstack([Fc, R]), y, groups, n_folds, spec)[0]
    obs = stats.auroc(y, pT, strata=fold) - stats.auroc(y, pR, strata=fold)
    u = np.unique(units, return_inverse=True)[1]
    rng = np.random.default_rng(_stable_seed(spec.seed, "trained-minus-random", base["label"], base["layer"]))
    null: list[np.ndarray] = []
    Y = np.repeat(y[:, None], pm.BLOCK, axis=1)
    for _ in range(math.ceil(budget / pm.BLOCK)):
        flip = rng.random((u.max() + 1, pm.BLOCK)) < 0.5
        F = flip[u]
        A = np.where(F, pR[:, None], pT[:, None])
        Bm = np.where(F, pT[:, None], pR[:, None])
        null.append(stats.auroc_columns(Y, A, fold) - stats.auroc_columns(Y, Bm, fold))
    nulls = np.concatenate(null)[:budget]
    ci = stats.bootstrap_gain_ci(
        y,
        pR,
        pT,
        units,
        spec.n_bootstrap,
        spec.alpha,
        np.random.default_rng(_stable_seed(spec.seed, "tmr-bootstrap", base["label"])),
        strata=fold,
        second="brier",
    )
    row = {
        **base,
        "control": "trained-minus-random",
        "metric": "auroc",
        "gain": obs,
        "ci_low": ci["auroc"][0],
        "ci_high": ci["auroc"][1],
        "p_value": stats.permutation_p(obs, nulls),
        "p_cluster": float("nan"),
        "n_permutations": len(nulls),
        "note": "paired: predictions of the trained and the random layer swapped within sources",
        "score_controls": stats.auroc(y, pR, strata=fold),
        "score_full": stats.auroc(y, pT, strata=fold),
    }
    return [row]
