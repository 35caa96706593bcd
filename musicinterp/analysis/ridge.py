"""Grouped cross-validated ridge probes whose refits under thousands of label permutations cost little.

A ridge fit is linear in the target. For a fixed design ``Z`` (the controls, or controls + a layer at full
width) and fixed folds, everything that is expensive (the eigendecomposition of each training fold's scaled
design) is computed once; each permutation then costs a few matrix products with the permuted label columns,
done for a block of permutations at once. :class:`GroupedRidgeCV` sums the cross-products once per group of rows
and keeps nothing rows-sized per fold; :func:`cached_ridge_cv` shares a design's decompositions between probes
on the same rows; :class:`DirectGroupedRidgeCV` is the straightforward path the tests hold them to.
The regularisation strength is chosen inside every training fold by an inner grouped CV (squared error), for
every permutation anew, exactly as for the observed labels: the permutation null is the null of the whole
procedure.

The target's own past (``L``: its value at t - h - 1 frame and whether that is defined) travels with the labels
under permutation, so it cannot be part of the fixed design. It enters through the ridge solution profiled over
the fixed columns: with ``M = I - Z (Z'Z + lam I)^-1 Z'`` (cheap in the eigenbasis), its coefficients are
``(L'ML + lam I)^-1 L'My`` and the fixed columns' follow; both are exact, not approximations.

Columns are standardised with the training fold's mean and sd (constant columns are left at zero), the target
and ``L`` are centred on the training fold (an unpenalised intercept), and ``lam`` is ``ridge_grid x n_train``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold

from musicinterp.analysis.backend import Backend, backend

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


class DirectGroupedRidgeCV:
    """The reference path: every split's scaled design decomposed from its rows (:func:`_split`), test rows
    projected once, every strength predicted. :class:`GroupedRidgeCV` computes the same predictions with less work;
    tests hold it to this one.

    ``Z``: the fixed design (rows x columns); ``groups``: the unit of the folds (source ids as integers);
    ``grid``: strengths relative to the training rows (``lam = grid x n_train``). ``device`` is taken for the
    same signature as :class:`GroupedRidgeCV` and not used: the reference runs in numpy.
    """

    def __init__(
        self,
        Z: np.ndarray,
        groups: np.ndarray,
        n_folds: int,
        inner_folds: int,
        grid: list[float],
        device: str = "cpu",
    ):
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

    def nbytes(self) -> int:
        """Bytes held between calls (each split's row-sized factors)."""
        return int(sum(a.nbytes for sp, inner in self.outer for f in (sp, *inner) for a in (f.U, f.A)))

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


@dataclass
class _Fit:
    """One training set's decomposition, kept in the column space: nothing of the size rows x columns."""

    tr: np.ndarray
    te: np.ndarray
    te_pos: np.ndarray  # the test rows' positions in the atom-ordered design
    drop: list[int]  # the test sets whose rows are not in training: training = all rows - these
    V: Any  # (p, r) eigenvectors of the scaled, centred training Gram (the right singular vectors); kept (backend)
    s2: np.ndarray
    s: np.ndarray
    mu: np.ndarray  # (p,) training mean of the globally centred design
    inv_sd: np.ndarray  # (p,) 1 / training sd; 0 for a column constant in training
    H: Any = None  # inner splits: (p, p) sum of the validation rows' scaled outer products; kept (backend)
    asum: np.ndarray | None = None  # inner splits: (p,) sum of the validation rows, scaled


def _eig(C: np.ndarray, be: Backend) -> tuple[np.ndarray, np.ndarray]:
    w, V = be.eigh(C)
    keep = w > EIG_RTOL * max(w.max(initial=0.0), 1.0)
    return w[keep], V[:, keep]


class GroupedRidgeCV:
    """Out-of-fold ridge predictions for many label columns at once (see the module docstring).

    ``Z``: the fixed design (rows x columns); ``groups``: the unit of the folds (source ids as integers);
    ``grid``: strengths relative to the training rows (``lam = grid x n_train``).

    The same predictions as :class:`DirectGroupedRidgeCV` (tested) with less work: every outer and inner test
    set is a union of groups, so the rows are cut once into *atoms* (rows that fall in the same test sets); the
    cross-products ``Z'Z`` and, per block of label columns, ``Z'Y`` are summed per atom once, and each training
    set's are all rows' minus its test sets' (rows x columns^2 once instead of once per split). Each split
    keeps only its eigenvectors ``V`` (columns x rank): the left factor ``U = Z V / s`` and the projected test
    rows are never formed (``U'Y = V'Z'Y / s``; test predictions ``Z_te (V W)``), and an inner split's
    squared errors come from its validation rows' Gram ``H`` (``w'Hw - 2 w'Z'd + d'd``), not from the rows.
    The cheaper side is taken per split: a training set with fewer rows than columns decomposes its rows x rows
    dual from its rows, and a validation set with fewer rows than columns is predicted row by row.

    ``device`` (``AnalysisSpec.device``): where the eigendecompositions and the matrix products run
    (:mod:`musicinterp.analysis.backend`); the eigenbases, validation Grams and centred design stay there, and
    every product comes back as numpy. 'cpu' (numpy) is the reference.
    """

    def __init__(
        self,
        Z: np.ndarray,
        groups: np.ndarray,
        n_folds: int,
        inner_folds: int,
        grid: list[float],
        device: str = "cpu",
    ):
        self._be = backend(device)
        Z = np.asarray(Z, float)
        self.n, self.p = Z.shape
        self.grid = np.asarray(sorted(grid), float)
        self.fold = np.empty(self.n, dtype=np.int32)
        outer = list(GroupKFold(n_splits=n_folds).split(Z, groups=groups))
        inner: list[list[tuple[np.ndarray, np.ndarray]]] = []
        for f, (tr, te) in enumerate(outer):
            self.fold[te] = f
            k = min(inner_folds, len(np.unique(groups[tr])))
            inner.append(
                [(tr[a], tr[b]) for a, b in GroupKFold(n_splits=k).split(tr, groups=groups[tr])]
                if len(self.grid) > 1 and k >= 2
                else []
            )
        self.outer: list[tuple[_Fit, list[_Fit]]] = []
        test_sets = [te for _, te in outer] + [va for inn in inner for _, va in inn]
        member = np.zeros((self.n, len(test_sets)), dtype=bool)
        for i, rows in enumerate(test_sets):
            member[rows, i] = True
        self._atoms, atom_of = np.unique(member, axis=0, return_inverse=True)
        self._order = np.argsort(atom_of.ravel(), kind="stable")
        self._bounds = np.searchsorted(atom_of.ravel()[self._order], np.arange(len(self._atoms) + 1))
        position = np.empty(self.n, dtype=np.intp)
        position[self._order] = np.arange(self.n)
        self._Zo = Z[self._order] - Z.mean(axis=0)  # globally centred: the sums below lose no digits to the mean
        self._Zk = self._be.keep(self._Zo)  # where the products run (numpy: the same array)
        if max(len(tr) for tr, _ in outer) >= self.p:
            G, zsum = self._sums(self._Zo, gram=True)
        else:  # every split takes the dual form, from its rows: no columns x columns sums needed
            G = np.empty((0, 0, 0))
            zsum = np.array([self._Zo[self._rows_in(i)].sum(axis=0) for i in range(self._atoms.shape[1] + 1)])
        self._amin = np.array([self._Zo[b0:b1].min(axis=0) for b0, b1 in zip(self._bounds[:-1], self._bounds[1:])])
        self._amax = np.array([self._Zo[b0:b1].max(axis=0) for b0, b1 in zip(self._bounds[:-1], self._bounds[1:])])
        sid = len(outer)
        for f, (tr, te) in enumerate(outer):
            fits = []
            for itr, iva in inner[f]:
                fits.append(self._fit(G, zsum, itr, iva, position, [f, sid]))
                sid += 1
            self.outer.append((self._fit(G, zsum, tr, te, position, [f]), fits))

    def nbytes(self) -> int:
        """Bytes held between calls (the centred design and each split's factors)."""
        fits = [f for ft, inner in self.outer for f in (ft, *inner)]
        arrays = [self._Zo] + [a for f in fits for a in (f.V, f.H) if a is not None]
        return int(sum(a.nbytes for a in arrays))

    def _rows_in(self, i: int) -> np.ndarray:
        """Positions (atom order) of test set ``i``'s rows; ``i`` = the number of test sets: all rows."""
        if i == self._atoms.shape[1]:
            return np.arange(self.n)
        atoms = np.flatnonzero(self._atoms[:, i])
        return np.concatenate([np.arange(self._bounds[a], self._bounds[a + 1]) for a in atoms])

    def _sums(self, Ro: np.ndarray, gram: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per test set (and, last, over all rows): the sum over its atoms of ``Zo'Ro`` (``Zo'Zo`` with ``gram``)
        and of ``Ro``'s rows; ``Ro`` in the atom order."""
        n_sets = self._atoms.shape[1] + 1
        out = np.zeros((n_sets, self.p, self.p if gram else Ro.shape[1]))
        rsum = np.zeros((n_sets, Ro.shape[1]))
        Rk = self._Zk if gram else self._be.keep(Ro)
        for a, (b0, b1) in enumerate(zip(self._bounds[:-1], self._bounds[1:])):
            Za = self._Zk[b0:b1]
            term = self._be.matmul(Za.T, Rk[b0:b1])
            col = Ro[b0:b1].sum(axis=0)
            for s in [*np.flatnonzero(self._atoms[a]), n_sets - 1]:
                out[s] += term
                rsum[s] += col
        return out, rsum

    def _fit(
        self,
        G: np.ndarray,
        zsum: np.ndarray,
        tr: np.ndarray,
        te: np.ndarray,
        position: np.ndarray,
        drop: list[int],
    ) -> _Fit:
        n_tr = len(tr)
        rows = ~self._atoms[:, drop].any(axis=1)  # the training set's atoms
        # a column constant in training (its minimum is its maximum) contributes nothing, as in the direct path
        const = self._amin[rows].min(axis=0) == self._amax[rows].max(axis=0)
        mu = (zsum[-1] - zsum[drop].sum(axis=0)) / n_tr
        exact = n_tr < self.p  # fewer rows than columns: the dual (rows x rows) eigenproblem is the smaller one
        if not exact:
            C = G[-1] - G[drop].sum(axis=0) - n_tr * np.outer(mu, mu)
            sd = np.sqrt(np.clip(np.diag(C) / n_tr, 0.0, None))
            exact = bool(np.any(~const & (mu**2 > 1e6 * sd**2)))  # a training mean far from the global one
        if exact:  # from the rows: centre them instead of subtracting the mean from the sums
            Zc = self._Zo[np.sort(position[tr])] - mu
            sd = Zc.std(axis=0)
        const |= sd < 1e-12
        inv_sd = np.where(const, 0.0, 1.0 / np.where(const, 1.0, sd))
        be = self._be
        if n_tr < self.p:
            Zs = Zc * inv_sd
            w, U = _eig(be.matmul(Zs, Zs.T), be)
            V = be.matmul(Zs.T, U) / np.sqrt(w)
        else:
            if exact:
                C = be.matmul(Zc.T, Zc)
            w, V = _eig(C * inv_sd[:, None] * inv_sd[None, :], be)
        H = asum = None
        if len(drop) == 2 and len(te) > self.p:  # an inner split: its validation rows' scaled Gram, for the errors
            v, n_v = drop[1], len(te)
            if exact:
                Zv = self._Zo[np.sort(position[te])] - mu
                Hc, sv = be.matmul(Zv.T, Zv), Zv.sum(axis=0)
            else:
                Hc = G[v] - np.outer(mu, zsum[v]) - np.outer(zsum[v], mu) + n_v * np.outer(mu, mu)
                sv = zsum[v] - n_v * mu
            H, asum = be.keep(Hc * inv_sd[:, None] * inv_sd[None, :]), sv * inv_sd
        return _Fit(tr, te, position[te], drop, be.keep(V), w, np.sqrt(w), mu, inv_sd, H, asum)

    def _coefs(
        self, ft: _Fit, S: np.ndarray, rsum: np.ndarray, Y: np.ndarray, L: np.ndarray | None, lams: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
        """The ridge coefficients of every column at every ``lam``: ``W`` (n_lam, r, B) in the eigenbasis, the
        training means ``ybar``, the own-lag coefficients ``c`` (n_lam, B, q), the test rows' scaled ``Lt`` and
        the own-lag columns' training mean and sd."""
        B = Y.shape[1]
        n_tr = len(ft.tr)
        Str = S[-1] - S[ft.drop].sum(axis=0)
        rtr = rsum[-1] - rsum[ft.drop].sum(axis=0)
        VtR = self._be.matmul(ft.V.T, (Str - np.outer(ft.mu, rtr)) * ft.inv_sd[:, None]) / ft.s[:, None]  # U'R
        UtY = VtR[:, :B]
        ybar = rtr[:B] / n_tr
        W = np.empty((len(lams), len(ft.s), B))
        if L is None:
            for i, lam in enumerate(lams):
                W[i] = (ft.s / (ft.s2 + lam))[:, None] * UtY
            return W, ybar, None, None, None
        Ltr = L[ft.tr]
        muL = Ltr.mean(axis=0)
        sdL = Ltr.std(axis=0)
        sdL[sdL < 1e-12] = np.inf
        Lc, Lt = (Ltr - muL) / sdL, (L[ft.te] - muL) / sdL
        q = Lc.shape[1]
        UtL = VtR[:, B:].reshape(-1, q, B) / sdL
        Yc = Y[ft.tr] - ybar
        LtL = np.einsum("nqb,nkb->bqk", Lc, Lc)
        LtY = np.einsum("nqb,nb->bq", Lc, Yc)
        eye = np.eye(q)
        c = np.empty((len(lams), B, q))
        for i, lam in enumerate(lams):
            g = ft.s2 / (ft.s2 + lam)
            LML = LtL - np.einsum("rqb,r,rkb->bqk", UtL, g, UtL) + lam * eye
            LMy = LtY - np.einsum("rqb,r,rb->bq", UtL, g, UtY)
            c[i] = np.linalg.solve(LML, LMy[..., None])[..., 0]
            W[i] = (ft.s / (ft.s2 + lam))[:, None] * (UtY - np.einsum("rqb,bq->rb", UtL, c[i]))
        return W, ybar, c, Lt, (muL, sdL)

    def _val_errors(
        self,
        ft: _Fit,
        S: np.ndarray,
        rsum: np.ndarray,
        Y: np.ndarray,
        W: np.ndarray,
        ybar: np.ndarray,
        c: np.ndarray | None,
        Lt: np.ndarray | None,
        Lstats: tuple[np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        """Squared error ``(n_lam, B)`` on an inner split's validation rows, from sums instead of the rows.

        With ``a_i`` a scaled validation row, ``w = V W``, ``d_i = ybar - y_i`` and ``l_i`` its scaled own-lag
        columns: sum (a_i'w + l_i'c + d_i)^2 = w'Hw + 2 w'(Qc + h) + c'Kc + 2 c'k + d'd, where ``H`` (kept from
        the decomposition), ``h = sum a_i d_i`` and ``Q = sum a_i l_i'`` come from the validation set's sums.
        """
        assert ft.H is not None and ft.asum is not None
        k, r, B = W.shape
        v = ft.drop[1]
        Yv = Y[ft.te]
        d = ybar - Yv
        Wp = self._be.matmul(ft.V, W.transpose(1, 0, 2).reshape(r, k * B)).reshape(self.p, k, B)
        quad = np.einsum("pkb,pkb->kb", Wp, self._be.matmul(ft.H, Wp.reshape(self.p, k * B)).reshape(self.p, k, B))
        Sv, rv = S[v], rsum[v]
        h = np.outer(ft.asum, ybar) - (Sv[:, :B] - np.outer(ft.mu, rv[:B])) * ft.inv_sd[:, None]
        err = quad + 2 * np.einsum("pkb,pb->kb", Wp, h) + (d**2).sum(axis=0)
        if c is None or Lt is None or Lstats is None:
            return err
        muL, sdL = Lstats
        q = Lt.shape[1]
        SL = (Sv[:, B:].reshape(self.p, q, B) - ft.mu[:, None, None] * rv[B:].reshape(q, B)) * ft.inv_sd[:, None, None]
        Q = (SL - ft.asum[:, None, None] * muL) / sdL  # (p, q, B)
        K = np.einsum("nqb,njb->bqj", Lt, Lt)
        kv = np.einsum("nqb,nb->bq", Lt, d)
        err += 2 * np.einsum("pkb,pqb,kbq->kb", Wp, Q, c, optimize=True)
        err += np.einsum("kbq,bqj,kbj->kb", c, K, c) + 2 * np.einsum("kbq,bq->kb", c, kv)
        return err

    def _test_predictions(
        self, ft: _Fit, W: np.ndarray, ybar: np.ndarray, c: np.ndarray | None, Lt: np.ndarray | None
    ) -> np.ndarray:
        """``(n_lam, n_te, B)`` from coefficients ``W`` (n_lam, r, B): ``ybar + Z_te,scaled V W + Lt c``."""
        k, _, B = W.shape
        M = self._be.matmul(ft.V, W.transpose(1, 0, 2).reshape(len(ft.s), k * B)) * ft.inv_sd[:, None]  # (p, k B)
        P = (self._be.matmul(self._Zk[ft.te_pos], M) - ft.mu @ M).reshape(len(ft.te), k, B).transpose(1, 0, 2) + ybar
        if c is not None and Lt is not None:
            P += np.einsum("nqb,kbq->knb", Lt, c)
        return P

    def oof(self, Y: np.ndarray, L: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Out-of-fold predictions ``(n, B)`` and the chosen relative strength per (fold, column)."""
        Y = np.asarray(Y, float)
        B = Y.shape[1]
        R = Y if L is None else np.hstack([Y, L.reshape(self.n, -1)])
        S, rsum = self._sums(R[self._order])
        P = np.empty_like(Y)
        chosen = np.empty((len(self.outer), B))
        cols = np.arange(B)
        for f, (ft, inner) in enumerate(self.outer):
            if inner:
                err = np.zeros((len(self.grid), B))
                for it in inner:
                    W, ybar, c, Lt, Lstats = self._coefs(it, S, rsum, Y, L, self.grid * len(it.tr))
                    if it.H is None:  # fewer validation rows than columns: predicting them is the cheaper side
                        pred = self._test_predictions(it, W, ybar, c, Lt)
                        err += ((pred - Y[it.te][None]) ** 2).sum(axis=1)
                    else:
                        err += self._val_errors(it, S, rsum, Y, W, ybar, c, Lt, Lstats)
                best = err.argmin(axis=0)
            else:
                best = np.full(B, len(self.grid) // 2)
            W, ybar, c, Lt, _ = self._coefs(ft, S, rsum, Y, L, self.grid * len(ft.tr))
            W1 = W[best, :, cols].T[None]  # (1, r, B): each column's chosen strength
            c1 = None if c is None else c[best, cols][None]
            P[ft.te] = self._test_predictions(ft, W1, ybar, c1, Lt)[0]
            chosen[f] = self.grid[best]
        return P, chosen


_CACHE: OrderedDict[tuple[Any, ...], GroupedRidgeCV] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_BYTES = 2e9  # kept decompositions, newest first, while they fit (the newest always stays)


def cached_ridge_cv(
    Z: np.ndarray, groups: np.ndarray, n_folds: int, inner_folds: int, grid: list[float], device: str = "cpu"
) -> GroupedRidgeCV:
    """:class:`GroupedRidgeCV` of ``Z``, reused when the same design, groups and settings come again.

    The decompositions depend on the rows and columns only, not on the labels, so the probes of one (layer,
    target) under the controls 'none' and 'shifted-labels' (which keep the rows: the labels move within their
    window class) share them, as do targets that analyse the same rows (e.g. two label families at one
    horizon). The key is a hash of the design's bytes. Entries are kept, least recently used dropped first,
    while their sizes (:meth:`GroupedRidgeCV.nbytes`: the centred design plus one columns x columns eigenbasis
    per split and one Gram per inner split, about 0.4 GB at 7,000 rows x 1,069 columns and 0.6 GB at 30,000)
    sum to at most ``CACHE_BYTES``; the newest is always kept. ``device`` is part of the key.
    """
    Z = np.ascontiguousarray(Z, dtype=float)
    h = hashlib.blake2b(Z.data, digest_size=16)
    h.update(np.ascontiguousarray(groups).data)
    key = (Z.shape, h.hexdigest(), n_folds, inner_folds, tuple(sorted(grid)), device)
    with _CACHE_LOCK:
        cv = _CACHE.get(key)
        if cv is not None:
            _CACHE.move_to_end(key)
            return cv
    cv = GroupedRidgeCV(Z, groups, n_folds, inner_folds, grid, device)
    with _CACHE_LOCK:
        _CACHE[key] = cv
        while len(_CACHE) > 1 and sum(c.nbytes() for c in _CACHE.values()) > CACHE_BYTES:
            _CACHE.popitem(last=False)
    return cv
