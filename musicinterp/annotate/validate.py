"""Validation of the labels against ground truth (README, "Validation").

Recurrence ground truth is a list of *returns*: ``{"source_start_s", "source_end_s", "start_s",
"end_s"}`` meaning that the audio in ``[start_s, end_s)`` is a (possibly slower / re-timbred / noisy)
occurrence of ``[source_start_s, source_end_s)``, mapped linearly. Synthetic pieces carry it in
``ClipRecord.truth["returns"]``; for scores it is derived from the played measures
(:func:`returns_from_measures`).

A frame ``t`` is a true *next* positive when it lies in some return's source span; its true lag is
``map(t) - t`` with ``map`` the linear map source -> return (the earliest return if several), provided
``map(t)`` lies inside the clip (a return cut off by the clip end is not a positive). A frame
is a true *prev* positive when it lies in a return span, with lag ``t - map^-1(t)``.
Precision, recall and F1 count frames pooled over clips; the lag error is measured on true
positives. Frames within ``EDGE_TOLERANCE_S`` of a return's boundaries are not scored (the
boundaries of a recurrence are not defined more finely than the feature context).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from musicinterp.frames import FRAME_RATE_HZ

log = logging.getLogger(__name__)

EDGE_TOLERANCE_S = 0.1
LAG_TOLERANCE_S = 0.5


def truth_lags(returns: Sequence[dict], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True next lag and previous lag in seconds per frame (NaN = none) and a 'do not score' mask."""
    t = np.arange(n) / FRAME_RATE_HZ
    nxt = np.full(n, np.nan)
    prv = np.full(n, np.nan)
    skip = np.zeros(n, dtype=bool)
    for r in sorted(returns, key=lambda r: r["start_s"]):
        s0, s1, r0, r1 = (float(r[k]) for k in ("source_start_s", "source_end_s", "start_s", "end_s"))
        scale = (r1 - r0) / (s1 - s0)
        target = r0 + (t - s0) * scale
        ins = (t >= s0) & (t < s1) & np.isnan(nxt) & (target < n / FRAME_RATE_HZ)  # the match is in the clip
        nxt[ins] = target[ins] - t[ins]
        inr = (t >= r0) & (t < r1)
        lag_p = t[inr] - (s0 + (t[inr] - r0) / scale)
        prv[inr] = np.where(np.isnan(prv[inr]), lag_p, np.minimum(prv[inr], lag_p))
        for edge in (s0, s1, r0, r1):
            skip |= np.abs(t - edge) < EDGE_TOLERANCE_S
    return nxt, prv, skip


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
        return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                "lag_within_0.5s": round(self.lag_ok / max(self.tp, 1), 4),
                "positive_frame_rate": round((self.tp + self.fp) / max(self.frames, 1), 4), **asdict(self)}


def score_clip(labels: dict[str, np.ndarray], returns: Sequence[dict], nxt: RecurrenceScore,
               prv: RecurrenceScore) -> None:
    n = len(labels["time"])
    t_next, t_prev, skip = truth_lags(returns, n)
    nxt.add(labels["rec_lag_next_s"], labels["rec_lag_next_s_valid"], t_next, skip)
    prv.add(labels["rec_lag_prev_s"], labels["rec_lag_prev_s_valid"], t_prev, skip)


def returns_from_measures(measures: Sequence[dict]) -> list[dict]:
    """Returns implied by an expanded score's played measures.

    ``measures``: in played order, each ``{"start_s", "end_s", "number"}`` with ``number`` the
    original measure number (music21's ``measureNumber`` after ``expandRepeats``). The content of a
    played measure recurs at the *next* played measure with the same number (the first playing
    -> the repeat, and only the next one: later playings are found from the intermediate one),
    mapped linearly between the two measures' spans. Two playings pair only when their durations
    agree (within 1%): a measure split around a repeat sign (the pickup completed after ``:|``)
    yields two partial measures with one number, and those halves are different music.
    """
    out = []
    for i, m in enumerate(measures):
        dur = m["end_s"] - m["start_s"]
        for later in measures[i + 1:]:
            same_len = abs((later["end_s"] - later["start_s"]) - dur) <= 0.01 * dur
            if later["number"] == m["number"] and same_len:
                out.append({"source_start_s": float(m["start_s"]), "source_end_s": float(m["end_s"]),
                            "start_s": float(later["start_s"]), "end_s": float(later["end_s"])})
                break
    return _merge_adjacent(out)


def _merge_adjacent(returns: list[dict], gap_s: float = 1e-3) -> list[dict]:
    """Join consecutive returns whose source and target both continue (one long return, not many)."""
    merged: list[dict] = []
    for r in sorted(returns, key=lambda r: (r["start_s"] - r["source_start_s"], r["source_start_s"])):
        if merged:
            m = merged[-1]
            same_lag = abs((r["start_s"] - r["source_start_s"]) - (m["start_s"] - m["source_start_s"])) < 1e-3
            if same_lag and abs(r["source_start_s"] - m["source_end_s"]) < gap_s and \
                    abs(r["start_s"] - m["end_s"]) < gap_s:
                m["source_end_s"], m["end_s"] = r["source_end_s"], r["end_s"]
                continue
        merged.append(dict(r))
    return sorted(merged, key=lambda r: r["source_start_s"])


# ---- tension ------------------------------------------------------------------------------------
def event_hits(events_s: np.ndarray, targets: Sequence[tuple[float, float]], tol_s: float) -> int:
    """Events lying within ``tol_s`` of a target interval ``(start, end)``."""
    if len(events_s) == 0 or len(targets) == 0:
        return 0
    ev = np.asarray(events_s)[:, None]
    lo = np.array([a for a, _ in targets])[None, :] - tol_s
    hi = np.array([b for _, b in targets])[None, :] + tol_s
    return int(((ev >= lo) & (ev <= hi)).any(axis=1).sum())


def resolution_alignment(clips: Iterable[tuple[np.ndarray, Sequence[tuple[float, float]], float]],
                         tol_s: float = 0.5, n_shifts: int = 999, seed: int = 0) -> dict:
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
    return {"events": n_events, "cadences": cad,
            "event_on_cadence_rate": round(observed / max(n_events, 1), 4),
            "shifted_rate_mean": round(float(null.mean()) / max(n_events, 1), 4),
            "cadences_with_event": round(recalled / max(cad, 1), 4),
            "p_value": round((1 + int((null >= observed).sum())) / (1 + n_shifts), 4)}


def score_strain(notes: Sequence[dict], tonic_fifths: int, minor: bool, n: int, window_s: float) -> np.ndarray:
    """Tensile strain per frame from score notes with real spellings (Herremans & Chew 2016).

    ``notes``: ``{"onset_s", "dur_s", "fifths"}`` (line-of-fifths index of the spelled pitch, see
    :func:`musicinterp.annotate.spiral.fifths_of_name`). Each frame's cloud is the duration-weighted
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
    return {"next": with_ret.summary(), "prev": prv.summary(),
            "no_return_positive_rate": null.summary()["positive_frame_rate"], "failures": failures}
