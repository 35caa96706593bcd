"""Ground truth: where a clip's content recurs, as returns, per-frame lags and truth labels.

Recurrence ground truth is a list of *returns*: ``{"source_start_s", "source_end_s", "start_s",
"end_s"}`` meaning that the audio in ``[start_s, end_s)`` is a (possibly slower / re-timbred / noisy)
occurrence of ``[source_start_s, source_end_s)``, mapped linearly. Synthetic pieces carry it in
``ClipRecord.truth["returns"]``; for scores it is derived from the played measures
(:func:`returns_from_measures`) or from the notes (:func:`returns_from_score`).

A frame ``t`` has a true *next* lag when it lies in some return's source span: ``map(t) - t`` with
``map`` the linear map source -> return (the earliest return if several), provided ``map(t)`` lies
inside the clip (a return cut off by the clip end does not count). It has a true *prev* lag when it
lies in a return span: ``t - map^-1(t)``. Frames within ``EDGE_TOLERANCE_S`` of a return's
boundaries are flagged "do not score" (the boundaries of a recurrence are not defined more finely
than the feature context).

This is production code (the run pipeline stores :func:`truth_labels` beside the annotated labels)
and the base of the evaluation (:mod:`musicinterp.annotate.scoring`); it imports neither.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from musicinterp.annotate.labels import horizon_name, within_horizon
from musicinterp.config import AnnotationSpec
from musicinterp.frames import FRAME_RATE_HZ, frames_of

EDGE_TOLERANCE_S = 0.1


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


def _return(source: dict, later: dict) -> dict:
    """One return in the ground-truth format: measure ``source`` heard again at measure ``later``."""
    return {
        "source_start_s": float(source["start_s"]),
        "source_end_s": float(source["end_s"]),
        "start_s": float(later["start_s"]),
        "end_s": float(later["end_s"]),
    }


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
        for later in measures[i + 1 :]:
            same_len = abs((later["end_s"] - later["start_s"]) - dur) <= 0.01 * dur
            if later["number"] == m["number"] and same_len:
                out.append(_return(m, later))
                break
    return _merge_adjacent(out)


def returns_from_score(measures: Sequence[dict], notes: Sequence[dict]) -> list[dict]:
    """Returns implied by the expanded score's notes: repeat signs *and* literal repetitions.

    A played measure returns at the next played measure of the same length whose notes (onset
    within the measure, duration, MIDI pitch, in every part) are identical: the measures played
    again by a repeat sign, and also a phrase or cadence the composer wrote out twice. This is
    exact, like :func:`returns_from_measures`, and more complete: the label asks for the next
    occurrence of the content, whatever the notation.
    """

    def content(m: dict) -> tuple:
        a, b = m["start_s"], m["end_s"]
        return tuple(
            sorted(
                (round(n["onset_s"] - a, 3), round(n["dur_s"], 3), int(n["midi"]))
                for n in notes
                if a - 1e-6 <= n["onset_s"] < b - 1e-6
            )
        )

    sigs = [content(m) for m in measures]
    out = []
    for i, m in enumerate(measures):
        dur = m["end_s"] - m["start_s"]
        if not sigs[i]:
            continue  # a measure of rests is not content
        for j in range(i + 1, len(measures)):
            later = measures[j]
            if abs((later["end_s"] - later["start_s"]) - dur) <= 0.01 * dur and sigs[j] == sigs[i]:
                out.append(_return(m, later))
                break
    return _merge_adjacent(out)


def _merge_adjacent(returns: list[dict], gap_s: float = 1e-3) -> list[dict]:
    """Join consecutive returns whose source and target both continue (one long return, not many)."""
    merged: list[dict] = []
    for r in sorted(returns, key=lambda r: (r["start_s"] - r["source_start_s"], r["source_start_s"])):
        if merged:
            m = merged[-1]
            same_lag = abs((r["start_s"] - r["source_start_s"]) - (m["start_s"] - m["source_start_s"])) < 1e-3
            if (
                same_lag
                and abs(r["source_start_s"] - m["source_end_s"]) < gap_s
                and abs(r["start_s"] - m["end_s"]) < gap_s
            ):
                m["source_end_s"], m["end_s"] = r["source_end_s"], r["end_s"]
                continue
        merged.append(dict(r))
    return sorted(merged, key=lambda r: r["source_start_s"])


def truth_label_schema(spec: AnnotationSpec | None = None) -> dict[str, dict[str, str]]:
    """Labels from a clip's ground truth (planted or score-derived returns), beside the annotated ones:
    the planted event itself, for known-answer analyses. Undefined (``_valid`` False) on clips without
    ground truth."""
    spec = spec or AnnotationSpec()
    out: dict[str, dict[str, str]] = {}
    for name, dtype, units, doc in (
        [("truth_rec_lag_next_s", "float32", "s", "ground truth: lag to the next occurrence of the content at t")]
        + [
            (
                f"truth_rec_within_{horizon_name(h)}",
                "int8",
                "0/1",
                f"ground truth: the content at t recurs within {h:g} s",
            )
            for h in spec.horizons_s
        ]
        + [
            (
                f"truth_return_within_{horizon_name(h)}",
                "int8",
                "0/1",
                f"ground truth: a return begins at frame t or within {h:g} s after it; where the truth names the "
                f"points where a return may begin, defined only in that stretch before them",
            )
            for h in spec.horizons_s
        ]
    ):
        out[name] = {"dtype": dtype, "units": units, "description": doc, "valid_mask": f"{name}_valid"}
        out[f"{name}_valid"] = {"dtype": "bool", "units": "", "description": f"where {name} is defined"}
    return out


def truth_labels(
    returns: list[dict] | None, n: int, spec: AnnotationSpec | None = None, return_points: list[dict] | None = None
) -> dict[str, np.ndarray]:
    """The :func:`truth_label_schema` labels of a clip of ``n`` frames; ``returns=None``: no ground truth.

    ``truth_return_within_<h>s`` is 1 from ``h`` before a planted return's first frame up to that frame
    itself: a frame's codes are made from audio up to the end of its 20 ms hop, so a model at the onset
    frame has heard at most those 20 ms of the return (the toy's causal codec gives that frame the same
    code either way). ``return_points`` (``start_s`` each), when the truth has them, are the points where
    a return *may* begin (the cue pieces: every piece has one, half of them return there); the label is
    then defined only in that same stretch before such a point, where whether a return comes is the open
    question; a stretch where nothing can happen would only teach a probe where the point is.
    """
    spec = spec or AnnotationSpec()
    if returns is None:
        nxt = np.full(n, np.nan)
    else:
        nxt = truth_lags(returns, n)[0]
    has = np.isfinite(nxt)
    lag_frames = np.where(has, np.round(np.nan_to_num(nxt) * FRAME_RATE_HZ), -1).astype(np.int64)
    out = {"truth_rec_lag_next_s": np.where(has, nxt, 0.0).astype(np.float32), "truth_rec_lag_next_s_valid": has}
    # frames from t to the next return onset at or after t (-1: none)
    to_onset = np.full(n, -1, dtype=np.int64)
    for r0 in sorted({int(round(float(r["start_s"]) * FRAME_RATE_HZ)) for r in returns or []}, reverse=True):
        upto = min(max(r0 + 1, 0), n)
        to_onset[:upto] = r0 - np.arange(upto)
    points = sorted({int(round(float(p["start_s"]) * FRAME_RATE_HZ)) for p in return_points or []})
    for h in spec.horizons_s:
        hf, name = frames_of(h), horizon_name(h)
        v, ok = within_horizon(lag_frames, has, hf)
        if returns is None:
            ok = np.zeros(n, dtype=bool)
            v = np.zeros(n, dtype=np.int8)
        out[f"truth_rec_within_{name}"], out[f"truth_rec_within_{name}_valid"] = v, ok
        rv, rok = within_horizon(to_onset, to_onset >= 0, hf)
        if points:
            rok = np.zeros(n, dtype=bool)
            for p in points:
                rok[max(p - hf, 0) : min(max(p + 1, 0), n)] = True
        if returns is None:
            rv, rok = np.zeros(n, dtype=np.int8), np.zeros(n, dtype=bool)
        out[f"truth_return_within_{name}"] = np.where(rok, rv, 0).astype(np.int8)
        out[f"truth_return_within_{name}_valid"] = rok
    return out
