"""Scoring of the labels against ground truth: the metrics, with no corpus or report in them.

Recurrence (ground truth and its lags in :mod:`musicinterp.annotate.truth`): precision, recall and
F1 count frames pooled over clips (:class:`RecurrenceScore`); a frame is a true *next* (*prev*)
positive when its true next (prev) lag is defined, and frames near a return's boundaries are not
scored. The lag error is measured on true positives (within ``LAG_TOLERANCE_S``).

Tension: resolution events against cadence intervals with a circular-shift null
(:func:`resolution_alignment`), and the audio tensile strain against the score's
(:func:`score_strain`, :func:`pearson`).

The harness that runs these on the project's own sources is :mod:`musicinterp.annotate.validation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from musicinterp.annotate.truth import truth_lags
from musicinterp.frames import FRAME_RATE_HZ

LAG_TOLERANCE_S = 0.5


@dataclass
class RecurrenceScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    lag_ok: int = 0  # true positives with |lag error| <= LAG_TOLERANCE_S
    frames: int = 0

    def add(self, pred_lag_s: np.ndarray, pred_ok: np.ndarray, true_lag_s: np.ndarray, skip: np.ndarray) -> None:
        keep = ~skip
        gt = np.isfinite(true_lag_s) & keep
        pr = pred_ok & keep
        self.tp += int((gt & pr).sum())
        self.fp += int((pr & ~gt).sum())
        self.fn += int((gt & ~pr).sum())
        hit = gt & pr
        self.lag_ok += int((np.abs(pred_lag_s[hit] - true_lag_s[hit]) <= LAG_TOLERANCE_S).sum())
        self.frames += int(keep.sum())

    def summary(self) -> dict:
        p = self.tp / max(self.tp + self.fp, 1)
        r = self.tp / max(self.tp + self.fn, 1)
        f1 = 2 * p * r / max(p + r, 1e-12)
        return {
            "precision": round(p, 4),
            "recall": round(r, 4),
            "f1": round(f1, 4),
            "lag_within_0.5s": round(self.lag_ok / max(self.tp, 1), 4),
            "positive_frame_rate": round((self.tp + self.fp) / max(self.frames, 1), 4),
            **asdict(self),
        }


def score_clip(
    labels: dict[str, np.ndarray], returns: Sequence[dict], nxt: RecurrenceScore, prv: RecurrenceScore
) -> None:
    n = len(labels["time"])
    t_next, t_prev, skip = truth_lags(returns, n)
    nxt.add(labels["rec_lag_next_s"], labels["rec_lag_next_s_valid"], t_next, skip)
    prv.add(labels["rec_lag_prev_s"], labels["rec_lag_prev_s_valid"], t_prev, skip)


def event_hits(events_s: np.ndarray, targets: Sequence[tuple[float, float]], tol_s: float) -> int:
    """Events lying within ``tol_s`` of a target interval ``(start, end)``."""
    if len(events_s) == 0 or len(targets) == 0:
        return 0
    ev = np.asarray(events_s)[:, None]
    lo = np.array([a for a, _ in targets])[None, :] - tol_s
    hi = np.array([b for _, b in targets])[None, :] + tol_s
    return int(((ev >= lo) & (ev <= hi)).any(axis=1).sum())


def resolution_alignment(
    clips: Iterable[tuple[np.ndarray, Sequence[tuple[float, float]], float]],
    tol_s: float = 0.5,
    n_shifts: int = 999,
    seed: int = 0,
) -> dict:
    """Do resolution events fall on cadences more often than circularly shifted events do?

    ``clips``: (event times s, cadence intervals (start_s, end_s), clip duration s). The null shifts
    each clip's events by one uniform random offset (mod the clip duration), which keeps their
    number and spacing; the p-value is (1 + #shifts with hits >= observed) / (1 + n_shifts).
    """
    clips = list(clips)
    rng = np.random.default_rng(seed)
    n_events = sum(len(e) for e, _, _ in clips)
    observed = sum(event_hits(e, c, tol_s) for e, c, _ in clips)
    null = np.zeros(n_shifts)
    for k in range(n_shifts):
        null[k] = sum(event_hits((np.asarray(e) + rng.uniform(0, d)) % d, c, tol_s) for e, c, d in clips)
    cad = sum(len(c) for _, c, _ in clips)
    recalled = sum(sum(event_hits(np.asarray(e), [iv], tol_s) > 0 for iv in c) for e, c, _ in clips)
    return {
        "events": n_events,
        "cadences": cad,
        "event_on_cadence_rate": round(observed / max(n_events, 1), 4),
        "shifted_rate_mean": round(float(null.mean()) / max(n_events, 1), 4),
        "cadences_with_event": round(recalled / max(cad, 1), 4),
        "p_value": round((1 + int((null >= observed).sum())) / (1 + n_shifts), 4),
    }


def score_strain(notes: Sequence[dict], tonic_fifths: int, minor: bool, n: int, window_s: float) -> np.ndarray:
    """Tensile strain per frame from score notes with real spellings (Herremans & Chew 2016).

    ``notes``: ``{"onset_s", "dur_s", "fifths"}`` (line-of-fifths index of the spelled pitch, as
    :mod:`musicinterp.sources.music21_source` writes it). Each frame's cloud is the duration-weighted
    centre of the notes sounding in a centred ``window_s`` window (as the audio side smooths its
    chroma over ``strain_window_s``). NaN where no note sounds.
    """
    from musicinterp.annotate import spiral

    t = np.arange(n) / FRAME_RATE_HZ
    lo, hi = t - window_s / 2, t + window_s / 2
    acc = np.zeros((n, 3))
    wsum = np.zeros(n)
    for nt in notes:
        a, b = nt["onset_s"], nt["onset_s"] + nt["dur_s"]
        w = np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0, None)
        acc += w[:, None] * spiral.pitch_pos(nt["fifths"])[None, :]
        wsum += w
    with np.errstate(invalid="ignore", divide="ignore"):
        ce = acc / wsum[:, None]
    return np.linalg.norm(ce - spiral.key_pos(tonic_fifths, minor)[None, :], axis=1)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def validate_recurrence(clips: Iterable[tuple[str, np.ndarray, Sequence[dict]]], spec=None) -> dict:
    """Annotate ``(clip_id, samples, returns)`` items and score them; pieces with no returns are
    reported separately as the false-positive rate on null pieces. Per-clip failures are collected."""
    from musicinterp.annotate.labels import annotate
    from musicinterp.sources.base import ClipError

    with_ret, prv, null, _unused = RecurrenceScore(), RecurrenceScore(), RecurrenceScore(), RecurrenceScore()
    failures = []
    for clip_id, samples, returns in clips:
        try:
            lab = annotate(samples, spec, clip_id=clip_id)
        except ClipError as e:
            failures.append(str(e))
            continue
        if returns:
            score_clip(lab, returns, with_ret, prv)
        else:
            score_clip(lab, returns, null, _unused)
    return {
        "next": with_ret.summary(),
        "prev": prv.summary(),
        "no_return_positive_rate": null.summary()["positive_frame_rate"],
        "failures": failures,
    }


def lag_metrics(s: RecurrenceScore) -> dict:
    """The lag-exact view of a :class:`RecurrenceScore`: a frame is found only when its true next lag is
    reported within ``LAG_TOLERANCE_S``.

    ``lag_recall`` = lag-correct frames / frames with a true lag; ``spurious_rate`` = positive frames
    without a true lag / scored frames; ``lag_precision`` = lag-correct frames / positive frames;
    ``lag_f1`` their harmonic mean (``f1`` of :meth:`RecurrenceScore.summary` counts a positive with a
    wrong lag as correct).
    """
    lag_r = s.lag_ok / max(s.tp + s.fn, 1)
    lag_p = s.lag_ok / max(s.tp + s.fp, 1)
    return {
        **s.summary(),
        "lag_recall": round(lag_r, 4),
        "lag_precision": round(lag_p, 4),
        "lag_f1": round(2 * lag_p * lag_r / max(lag_p + lag_r, 1e-12), 4),
        "spurious_rate": round(s.fp / max(s.frames, 1), 4),
    }


def score_splice(
    labels: dict[str, np.ndarray], bounds_s: Sequence[float], returns: Sequence[dict], nxt: RecurrenceScore
) -> dict:
    """Score a spliced clip (segments ``[bounds_s[k], bounds_s[k+1])``) *across segments* only.

    The splice's truth says where X returns (``returns``: X at X') and that nothing else recurs
    across segments (they come from different recordings); what recurs inside one segment of a
    recording is not known. So a frame whose reported next occurrence lies in its own segment is not
    scored; a frame of a returning X with no report, or a report outside its return, is a miss; a
    report across segments anywhere else is spurious. Frames within ``EDGE_TOLERANCE_S`` of a
    segment boundary are not scored. Adds to ``nxt`` and returns this clip's counts.
    """
    from musicinterp.annotate.truth import EDGE_TOLERANCE_S

    n = len(labels["time"])
    t = np.arange(n) / FRAME_RATE_HZ
    edges = np.asarray(bounds_s, dtype=np.float64)
    seg_t = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    lag = labels["rec_lag_next_s"].astype(np.float64)
    valid = labels["rec_lag_next_s_valid"].astype(bool)
    seg_u = np.clip(np.searchsorted(edges, t + lag, side="right") - 1, 0, len(edges) - 2)
    within = valid & (seg_u == seg_t)
    true_lag = truth_lags(returns, n)[0] if returns else np.full(n, np.nan)
    skip = within | (np.abs(t[:, None] - edges[None, 1:-1]) < EDGE_TOLERANCE_S).any(axis=1)
    before = RecurrenceScore(**asdict(nxt))
    nxt.add(lag, valid & ~within, true_lag, skip)
    return {
        "tp": nxt.tp - before.tp,
        "fp": nxt.fp - before.fp,
        "fn": nxt.fn - before.fn,
        "lag_ok": nxt.lag_ok - before.lag_ok,
        "frames": nxt.frames - before.frames,
        "within_segment": int(within.sum()),
    }
