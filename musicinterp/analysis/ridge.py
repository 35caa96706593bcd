"""Grouped cross-validated ridge probes whose refits under thousands of label permutations cost little.

A ridge fit is linear in the target. For a fixed design ``Z`` (the controls, or controls + a layer at full
width) and fixed folds, everything that is expensive (the eigendecomposition of each training fold's scaled
design, its projection of the test rows) is computed once; each permutation then costs a few matrix products
with the permuted label columns, done for a block of permutations at once. The regularisation strength is
chosen inside every training fold by an inner grouped CV (squared error), for every permutation anew, exactly
as for the observed labels: the permutation null is the null of the whole procedure.

The target's own past (``L``: its value at t - h - 1 frame and whether that is defined) travels with the labels
under permutation, so it cannot be part of the fixed design. It enters through the ridge solution profiled over
the fixed columns: with ``M = I - Z (Z'Z + lam I)^-1 Z'`` (cheap in the eigenbasis), its coefficients are
``(L'ML + lam I)^-1 L'My`` and the fixed columns' follow; both are exact, not approximations.

Columns are standardised with the training fold's mean and sd (constant columns are left at zero), the target
and ``L`` are centred on the training fold (an unpenalised intercept), and ``lam`` is ``ridge_grid x n_train``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold

EIG_RTOL = 1e-10


@dataclass
class _Split:
    tr: np.ndarray
    te: np.ndarray
    U: np.ndarray  # (n_tr, r) left singular vectors of the scaled, centred training design
    s2: np.ndarray  # (r,) squared singular values
    A: np.ndarray  # (n_te, r): the test rows, scaled with the training statistics, in the right singular basis
    s: np.ndarray


def _scaled(Z: np.ndarray, tr: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = Z[tr].mean(axis=0)
    sd = Z[tr].std(axis=0)
    sd[sd < 1e-12] = np.inf  # constant in training: the column contributes nothing
    return (Z[tr] - mu) / sd, (Z[te] - mu) / sd


def _split(Z: np.ndarray, tr: np.ndarray, te: np.ndarray) -> _Split:
    Ztr, Zte = _scaled(Z, tr, te)
    n, p = Ztr.shape
    if n >= p:  # eigen of the Gram in the smaller dimension: n p^2, not the SVD's constant
        w, V = np.linalg.eigh(Ztr.T @ Ztr)
        keep = w > EIG_RTOL * max(w.max(initial=0.0), 1.0)
        w, V = w[keep], V[:, keep]
        s = np.sqrt(w)
        U = (Ztr @ V) / s
    else:
        w, U = np.linalg.eigh(Ztr @ Ztr.T)
        keep = w > EIG_RTOL * max(w.max(initial=0.0), 1.0)
        w, U = w[keep], U[:, keep]
        s = np.sqrt(w)
        V = (Ztr.T @ U) / s
    return _Split(tr, te, U, w, Zte @ V, s)


def _predict(sp: _Split, Y: np.ndarray, L: np.ndarray | None, lams: np.ndarray) -> np.ndarray:
    """Test-row predictions ``(n_grid, n_te, B)`` of ridge fits of every column of ``Y`` at every ``lam``."""
    Ytr = Y[sp.tr]
    ybar = Ytr.mean(axis=0)
    Yc = Ytr - ybar
    UtY = sp.U.T @ Yc  # (r, B)
    out = np.empty((len(lams), len(sp.te), Y.shape[1]))
    if L is None:
        for i, lam in enumerate(lams):
            out[i] = ybar + sp.A @ ((sp.s / (sp.s2 + lam))[:, None] * UtY)
        return out
    Ltr, Lte = L[sp.tr], L[sp.te]  # (n, q, B)
    mu = Ltr.mean(axis=0)
    sd = Ltr.std(axis=0)
    sd[sd < 1e-12] = np.inf
    Lc, Lt = (Ltr - mu) / sd, (Lte - mu) / sd
    n, q, B = Lc.shape
    UtL = (sp.U.T @ Lc.reshape(n, q * B)).reshape(-1, q, B)  # (r, q, B)
    LtL = np.einsum("nqb,nkb->bqk", Lc, Lc)
    LtY = np.einsum("nqb,nb->bq", Lc, Yc)
    eye = np.eye(q)
    for i, lam in enumerate(lams):
        g = sp.s2 / (sp.s2 + lam)
        LML = LtL - np.einsum("rqb,r,rkb->bqk", UtL, g, UtL) + lam * eye
        LMy = LtY - np.einsum("rqb,r,rb->bq", UtL, g, UtY)
        c = np.linalg.solve(LML, LMy[..., None])[..., 0]  # (B, q)
        W = (sp.s / (sp.s2 + lam))[:, None] * (UtY - np.einsum("rqb,bq->rb", UtL, c))
        out[i] = ybar + sp.A @ W + np.einsum("nqb,bq->nb", Lt, c)
    return out


class GroupedRidgeCV:
    """Out-of-fold ridge predictions for many label columns at once (see the module docstring).

    ``Z``: the fixed design (rows x columns); ``groups``: the unit of the folds (source ids as integers);
    ``grid``: strengths relative to the training rows (``lam = grid x n_train``).
    """

    def __init__(self, Z: np.ndarray, groups: np.ndarray, n_folds: int, inner_folds: int, grid: list[float]):
        self.n = len(Z)
        self.grid = np.asarray(sorted(grid), float)
        self.fold = np.empty(self.n, dtype=np.int32)
        self.outer: list[tuple[_Split, list[_Split]]] = []
        for f, (tr, te) in enumerate(GroupKFold(n_splits=n_folds).split(Z, groups=groups)):
            self.fold[te] = f
            inner: list[_Split] = []
            k = min(inner_folds, len(np.unique(groups[tr])))
            if len(self.grid) > 1 and k >= 2:
                for itr, iva in GroupKFold(n_splits=k).split(tr, groups=groups[tr]):
                    inner.append(_split(Z, tr[itr], tr[iva]))
            self.outer.append((_split(Z, tr, te), inner))

    def oof(self, Y: np.ndarray, L: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Out-of-fold predictions ``(n, B)`` and the chosen relative strength per (fold, column)."""
        Y = np.asarray(Y, float)
        P = np.empty_like(Y)
        chosen = np.empty((len(self.outer), Y.shape[1]))
        for f, (sp, inner) in enumerate(self.outer):
            if inner:
                err = np.zeros((len(self.grid), Y.shape[1]))
                for isp in inner:
                    lams = self.grid * len(isp.tr)
                    pred = _predict(isp, Y, L, lams)
                    err += ((pred - Y[isp.te][None]) ** 2).sum(axis=1)
                best = err.argmin(axis=0)
            else:
                best = np.full(Y.shape[1], len(self.grid) // 2)
            pred = _predict(sp, Y, L, self.grid * len(sp.tr))
            P[sp.te] = np.take_along_axis(pred, best[None, None, :], axis=0)[0]
            chosen[f] = self.grid[best]
        return P, chosen
