"""Recurrence labels from a chroma self-similarity matrix.

Method (README, "Recurrence"): HPCP with the clip's mean chroma removed, time-delay embedded
(Serrà et al. 2012), cosine self-similarity, path enhancement by averaging along diagonals
(Müller & Kurth 2006; forward-backward, i.e. a centred average), and two rules that keep
continuation out: a minimum lag, and "the content must depart before it returns" (the similarity
between t and some frame between t and t + lag must fall below ``depart_threshold``).

Everything is done in lag coordinates: diagonal ``l`` of the similarity matrix holds
``sim(t, t + l)``, so path enhancement is a 1-D average along it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

from musicinterp.annotate.features import smooth
from musicinterp.config import AnnotationSpec
from musicinterp.frames import frames_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recurrence:
    """Per-frame results in frames (-1 = none); see :func:`recurrence_labels` for seconds."""

    next_lag: np.ndarray  # int, lag to the next occurrence of the content at t
    prev_lag: np.ndarray  # int, lag since its previous occurrence
    strength: np.ndarray  # float in [0, 1]: best path-enhanced similarity over accepted lags
    similarity: np.ndarray  # (n, n) float32 self-similarity (for plots)


def embed(hpcp: np.ndarray, present: np.ndarray, spec: AnnotationSpec, causal: bool) -> np.ndarray:
    """Mean-removed, time-delay embedded, norm-floored chroma vectors ``(n, 12 * embed_dim)``.

    ``present`` marks frames with tonal content; others get a zero vector (similar to nothing).
    ``causal``: the mean is the running mean of frames <= t, the delays reach into the past only
    and the smoothing is trailing, so row t depends on frames <= t alone.
    """
    n = len(hpcp)
    c = smooth(hpcp.astype(np.float64), frames_of(spec.chroma_smooth_s), causal=causal)
    w = present.astype(np.float64)[:, None]
    if causal:
        mean = np.cumsum(c * w, axis=0) / np.maximum(np.cumsum(w, axis=0), 1.0)
    else:
        mean = (c * w).sum(axis=0) / max(w.sum(), 1.0)
    r = (c - mean) * w
    step = frames_of(spec.embed_step_s)
    m = spec.embed_dim
    offsets = [-k * step for k in range(m)] if causal else [(k - (m - 1) / 2) * step for k in range(m)]
    idx = np.arange(n)
    cols = [r[np.clip(idx + int(round(o)), 0, n - 1)] for o in offsets]
    x = np.concatenate(cols, axis=1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    floor = spec.norm_floor * np.sqrt(m)
    return (x / np.maximum(norm, floor)).astype(np.float32)


def _track_first_band(lag_arr, best_arr, state, ok, e, lag):
    """Keep, per frame, the lag of the best similarity within the first band of accepted lags."""
    start = ok & (state == 0)
    lag_arr[start] = lag
    best_arr[start] = e[start]
    state[start] = 1
    inband = state == 1
    better = inband & ok & (e > best_arr)
    lag_arr[better] = lag
    best_arr[better] = e[better]
    state[inband & ~ok] = 2


def detect(x: np.ndarray, spec: AnnotationSpec, causal: bool = False) -> Recurrence:
    """Accepted recurrences of every frame from embedded vectors ``x`` (see :func:`embed`)."""
    n = len(x)
    sim = x @ x.T
    min_lag = frames_of(spec.min_lag_s)
    plen = frames_of(spec.path_len_s)
    origin = (plen - 1) // 2 if causal else 0
    next_lag = np.full(n, -1, dtype=np.int64)
    prev_lag = np.full(n, -1, dtype=np.int64)
    next_best = np.zeros(n)
    prev_best = np.zeros(n)
    next_state = np.zeros(n, dtype=np.int8)
    prev_state = np.zeros(n, dtype=np.int8)
    strength = np.zeros(n)
    runmin = np.full(n, np.inf)
    ones = np.ones(n)
    for lag in range(1, n):
        m = n - lag
        d = sim.diagonal(lag).astype(np.float64)  # d[u] = sim(u, u + lag)
        if lag >= min_lag:
            cnt = uniform_filter1d(ones[:m], plen, mode="constant", origin=origin)
            e = uniform_filter1d(d, plen, mode="constant", origin=origin) / np.maximum(cnt, 1e-9)
            ok = (e > spec.rec_threshold) & (runmin[:m] < spec.depart_threshold)
            if ok.any() or (next_state[:m] == 1).any() or (prev_state[lag:] == 1).any():
                _track_first_band(next_lag[:m], next_best[:m], next_state[:m], ok, e, lag)
                _track_first_band(prev_lag[lag:], prev_best[lag:], prev_state[lag:], ok, e, lag)
                ev = np.where(ok, e, 0.0)
                np.maximum(strength[:m], ev, out=strength[:m])
                np.maximum(strength[lag:], ev, out=strength[lag:])
        np.minimum(runmin[:m], d, out=runmin[:m])
    if not causal:  # the causal pass's trailing path average already asks the past path_len to match
        min_run = frames_of(spec.min_run_s) if spec.min_run_s > 0 else 1
        next_lag = keep_runs(next_lag, min_run)
        prev_lag = keep_runs(prev_lag, min_run)
        strength[(next_lag < 0) & (prev_lag < 0)] = 0.0
    return Recurrence(next_lag=next_lag, prev_lag=prev_lag, strength=np.clip(strength, 0, 1), similarity=sim)


def keep_runs(lag: np.ndarray, min_run: int) -> np.ndarray:
    """Keep only recurrences that persist: runs of consecutive frames that all recur (whatever the
    lag: a held chord matches a band of lags and its best lag jitters) lasting at least ``min_run``
    frames. A shorter run is a chance match of a chord or two, not a returning passage.
    """
    valid = lag >= 0
    out = lag.copy()
    edges = np.flatnonzero(np.diff(np.r_[0, valid.astype(np.int8), 0]))
    for start, stop in zip(edges[::2], edges[1::2]):
        if stop - start < min_run:
            out[start:stop] = -1
    return out


def tonal_presence(peak_energy: np.ndarray, rel_db: float = -50.0) -> np.ndarray:
    """Frames whose spectral-peak energy is within ``rel_db`` of the clip's loudest (95th pct) frame."""
    ref = np.percentile(peak_energy, 95) if len(peak_energy) else 0.0
    if ref <= 0:
        return np.zeros(len(peak_energy), dtype=bool)
    return peak_energy > ref * 10 ** (rel_db / 10)


@dataclass(frozen=True)
class CrossRecurrence:
    """Per frame of a continuation (frames ``n_source..n-1``): the recurrence of source material (-1 = none)."""

    lag: np.ndarray  # int frames from the source occurrence (in frames < n_source) to the frame
    strength: np.ndarray  # float in [0, 1]: best path-enhanced similarity over accepted source lags


def cross_recurrence(x: np.ndarray, n_source: int, spec: AnnotationSpec) -> CrossRecurrence:
    """Where material of frames ``< n_source`` (a prompt) recurs in frames ``>= n_source`` (its continuation).

    :func:`detect`'s method across the two parts: the same embedded vectors ``x`` (of the whole piece),
    minimum lag, path enhancement, "departs before it returns" and minimum run, except that only pairs
    with the source in the prompt and the target in the continuation count, in the path average too, so
    the prompt's recurrences within itself never enter. The lag is that of the most recent accepted
    occurrence in the prompt (the first band of accepted lags, as ``detect``'s ``prev_lag``); a path
    average needs at least half its window of such pairs.
    """
    n = len(x)
    if not 0 < n_source < n:
        raise ValueError(f"n_source must split the {n} frames into a source and a continuation, got {n_source}")
    sim = x @ x.T
    min_lag, plen = frames_of(spec.min_lag_s), frames_of(spec.path_len_s)
    m = n - n_source
    lag_out = np.full(m, -1, dtype=np.int64)
    best = np.zeros(m)
    state = np.zeros(m, dtype=np.int8)
    strength = np.zeros(m)
    runmin = np.full(n, np.inf)
    for lag in range(1, n):
        k = n - lag
        d = sim.diagonal(lag).astype(np.float64)  # d[u] = sim(u, u + lag)
        lo, hi = max(0, n_source - lag), min(k, n_source)  # sources u in the prompt whose target is not
        if lag >= min_lag and hi > lo:
            u = np.arange(k)
            valid = (u < n_source) & (u + lag >= n_source)
            share = uniform_filter1d(valid.astype(np.float64), plen, mode="constant")
            e = uniform_filter1d(np.where(valid, d, 0.0), plen, mode="constant") / np.maximum(share, 1e-9)
            ok = valid & (share >= 0.5) & (e > spec.rec_threshold) & (runmin[:k] < spec.depart_threshold)
            t0, t1 = lo + lag - n_source, hi + lag - n_source
            _track_first_band(lag_out[t0:t1], best[t0:t1], state[t0:t1], ok[lo:hi], e[lo:hi], lag)
            np.maximum(strength[t0:t1], np.where(ok[lo:hi], e[lo:hi], 0.0), out=strength[t0:t1])
        np.minimum(runmin[:k], d, out=runmin[:k])
    lag_out = keep_runs(lag_out, frames_of(spec.min_run_s) if spec.min_run_s > 0 else 1)
    strength[lag_out < 0] = 0.0
    return CrossRecurrence(lag=lag_out, strength=np.clip(strength, 0, 1))
