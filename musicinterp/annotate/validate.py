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
from typing import TYPE_CHECKING

import numpy as np

from musicinterp.frames import FRAME_RATE_HZ

if TYPE_CHECKING:
    from collections.abc import Callable

    from musicinterp.annotate.spec import AnnotationSpec

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
        return tuple(sorted((round(n["onset_s"] - a, 3), round(n["dur_s"], 3), int(n["midi"]))
                            for n in notes if a - 1e-6 <= n["onset_s"] < b - 1e-6))

    sigs = [content(m) for m in measures]
    out = []
    for i, m in enumerate(measures):
        dur = m["end_s"] - m["start_s"]
        if not sigs[i]:
            continue  # a measure of rests is not content
        for j in range(i + 1, len(measures)):
            later = measures[j]
            if abs((later["end_s"] - later["start_s"]) - dur) <= 0.01 * dur and sigs[j] == sigs[i]:
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


# ---- validation on the project's own sources ----------------------------------------------------
CHORALE_CLIP_S = 30.0  # the validation scores the first 30 s of each rendered chorale
NO_RETURN_INDEX_OFFSET = 1000  # synthetic no-return pieces use recipe indices 1000.. (other pieces than the twins)
TARGETS = (  # (key, label, where in the result, comparison, threshold)
    ("synthetic_easy_next_f1", "synthetic easy: next F1", ("synthetic", "easy", "next", "f1"), ">=", 0.9),
    ("synthetic_easy_prev_f1", "synthetic easy: prev F1", ("synthetic", "easy", "prev", "f1"), ">=", 0.9),
    ("synthetic_hard_next_f1", "synthetic hard: next F1", ("synthetic", "hard", "next", "f1"), ">=", 0.9),
    ("synthetic_hard_prev_f1", "synthetic hard: prev F1", ("synthetic", "hard", "prev", "f1"), ">=", 0.9),
    ("corpus_next_f1", "chorales: next F1", ("chorales", "recurrence", "next", "f1"), ">=", 0.85),
    ("corpus_prev_f1", "chorales: prev F1", ("chorales", "recurrence", "prev", "f1"), ">=", 0.85),
    ("no_return_positive_rate", "synthetic no-return: positive frames (next)",
     ("synthetic", "no_return", "next", "positive_frame_rate"), "<=", 0.02),
    ("synthetic_easy_lag", "synthetic easy: hits with lag error <= 0.5 s",
     ("synthetic", "easy", "next", "lag_within_0.5s"), ">=", 0.9),
    ("synthetic_hard_lag", "synthetic hard: hits with lag error <= 0.5 s",
     ("synthetic", "hard", "next", "lag_within_0.5s"), ">=", 0.9),
    ("corpus_lag", "chorales: hits with lag error <= 0.5 s",
     ("chorales", "recurrence", "next", "lag_within_0.5s"), ">=", 0.9),
)


def chorales_with_repeats(n: int, skip: int = 0) -> list[str]:
    """The first ``n`` Bach chorales (after skipping ``skip`` such chorales) whose expanded score plays
    some measure twice, in the fixed order of :func:`musicinterp.annotate.corpus.bach_chorale_paths`.

    "Plays some measure twice" means that :func:`returns_from_measures` finds a return in the
    expanded score's ``truth["measures"]`` (a measure number played twice with the same length; a
    measure split around a repeat sign does not count). Scores that music21 cannot load or expand are
    logged and passed over. The scan stops once ``n`` are found; nothing is cached on disk.
    """
    from musicinterp.annotate.corpus import bach_chorale_paths
    from musicinterp.sources.base import ClipError
    from musicinterp.sources.music21_source import expand

    if n < 0 or skip < 0:
        raise ValueError(f"chorales_with_repeats: n and skip must be >= 0, got n={n}, skip={skip}")
    found: list[str] = []
    seen = 0
    for path in bach_chorale_paths():
        if len(found) >= n:
            break
        try:
            _, truth, _ = expand(path)
        except ClipError as e:
            log.warning("chorale scan: %s", e)
            continue
        if not returns_from_measures(truth["measures"]):
            continue
        seen += 1
        if seen > skip:
            found.append(path)
    if len(found) < n:
        log.warning("chorale scan: only %d chorales with repeats after skipping %d (asked for %d)",
                    len(found), skip, n)
    return found


def _lookup(result: dict, where: tuple[str, ...]):
    v = result
    for k in where:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def _targets(result: dict) -> list[dict]:
    """One row per target; ``pass`` is None when the set was empty (nothing measured)."""
    rows = []
    for key, label, where, op, thr in TARGETS:
        value = _lookup(result, where)
        n_clips = _lookup(result, where[:2] + ("n_clips",)) if where[0] == "synthetic" else \
            _lookup(result, ("chorales", "n_clips"))
        measured = value is not None and bool(n_clips)
        if measured and where[-1] in ("f1", "lag_within_0.5s"):
            # an F1 / lag rate over no true positives is not a measurement
            measured = (_lookup(result, where[:-1] + ("tp",)) or 0) + (_lookup(result, where[:-1] + ("fn",)) or 0) > 0
        ok = None if not measured else (value >= thr if op == ">=" else value <= thr)
        rows.append({"key": key, "target": label, "value": value if measured else None, "op": op,
                     "threshold": thr, "pass": ok})
    return rows


def _synthetic_recipes(n_easy: int, n_hard: int, n_null: int, duration_s: float, seed: int) -> list[tuple]:
    out = []
    for i in range(n_easy):
        out.append(("easy", {"seed": seed, "index": i, "duration_s": duration_s, "hard": False, "returns": True}))
    for i in range(n_hard):
        out.append(("hard", {"seed": seed, "index": i, "duration_s": duration_s, "hard": True, "returns": True}))
    for i in range(n_null):
        out.append(("no_return", {"seed": seed, "index": NO_RETURN_INDEX_OFFSET + i, "duration_s": duration_s,
                                  "hard": i % 2 == 1, "returns": False}))
    return out


def _clip_f1(labels: dict[str, np.ndarray], returns: Sequence[dict]) -> dict:
    nxt, prv = RecurrenceScore(), RecurrenceScore()
    score_clip(labels, returns, nxt, prv)
    s_n, s_p = nxt.summary(), prv.summary()
    return {"next_f1": s_n["f1"] if s_n["tp"] + s_n["fn"] else None,
            "prev_f1": s_p["f1"] if s_p["tp"] + s_p["fn"] else None,
            "positive_frame_rate": s_n["positive_frame_rate"]}


def run_validation(n_synthetic: int, n_chorales: int, duration_s: float = 24.0, seed: int = 200,
                   spec: AnnotationSpec | None = None, progress: Callable[[int, int, str], None] | None = None,
                   *, n_easy: int | None = None, n_no_return: int | None = None,
                   chorale_skip: int = 20, chorale_clip_s: float = CHORALE_CLIP_S) -> dict:
    """Validate the labels on the project's own sources; returns a JSON-able report with the targets.

    Synthetic pieces (:func:`musicinterp.sources.synthetic.compose`, recipe seed ``seed``):
    ``n_easy`` (default ``n_synthetic``) easy pieces with a return (indices 0..), ``n_synthetic``
    hard ones (the same indices: each hard piece is its easy twin with the return slowed,
    re-timbred and noisy) and ``n_no_return`` (default ``round(2/3 * n_synthetic)``) pieces without a
    return, alternately easy and hard (indices 1000..), all ``duration_s`` long. Chorales:
    ``n_chorales`` from :func:`chorales_with_repeats` after skipping ``chorale_skip`` (the first 20
    were used to choose the resolution-event rule), rendered at 90 bpm, first ``chorale_clip_s``
    seconds; recurrence truth from the played measures, tension checked against the fermatas and
    the score's tensile strain. ``spec`` is the :class:`AnnotationSpec` (default settings when
    None). Per-clip failures (:class:`ClipError`) are collected under ``failures``, never raised.
    ``progress(done, total, what)`` is called after each clip when given.
    """
    import time

    from musicinterp import __version__
    from musicinterp.annotate.labels import annotate
    from musicinterp.annotate.spec import AnnotationSpec
    from musicinterp.frames import SAMPLE_RATE_HZ
    from musicinterp.sources.base import ClipError, cut_truth
    from musicinterp.sources.music21_source import DEFAULT_TEMPO_BPM, render_score
    from musicinterp.sources.synthetic import compose

    spec = spec or AnnotationSpec()
    n_easy = n_synthetic if n_easy is None else n_easy
    n_null = int(round(2 * n_synthetic / 3)) if n_no_return is None else n_no_return
    if min(n_synthetic, n_chorales, n_easy, n_null, chorale_skip) < 0:
        raise ValueError("run_validation: counts must be >= 0 "
                         f"(n_synthetic={n_synthetic}, n_easy={n_easy}, n_no_return={n_null}, "
                         f"n_chorales={n_chorales}, chorale_skip={chorale_skip})")
    t_start = time.perf_counter()
    recipes = _synthetic_recipes(n_easy, n_synthetic, n_null, float(duration_s), int(seed))
    total = len(recipes) + n_chorales
    done = 0

    def tick(what: str) -> None:
        if progress is not None:
            progress(done, total, what)

    failures: list[dict] = []
    scores = {k: (RecurrenceScore(), RecurrenceScore()) for k in ("easy", "hard", "no_return")}
    counts = dict.fromkeys(scores, 0)
    per_null: list[dict] = []
    for kind, recipe in recipes:
        clip_id = f"synthetic:s{recipe['seed']}-{kind}-p{recipe['index']:04d}"
        try:
            samples, truth = compose(recipe)
            lab = annotate(samples, spec, clip_id=clip_id)
        except ClipError as e:
            failures.append({"item": e.item, "problem": e.problem})
        else:
            score_clip(lab, truth["returns"], *scores[kind])
            counts[kind] += 1
            if kind == "no_return":
                per_null.append({"clip": clip_id, "hard": recipe["hard"],
                                 "positive_frame_rate": round(float(lab["rec_lag_next_s_valid"].mean()), 4)})
        done += 1
        tick(clip_id)

    synthetic = {}
    for kind, (nxt, prv) in scores.items():
        synthetic[kind] = {"n_clips": counts[kind], "next": nxt.summary(), "prev": prv.summary()}
    synthetic["no_return"]["per_clip"] = per_null

    # ---- chorales
    tick("scanning the music21 corpus for chorales with repeats")
    paths = chorales_with_repeats(n_chorales, skip=chorale_skip) if n_chorales else []
    c_next, c_prev = RecurrenceScore(), RecurrenceScore()
    res_clips, strain_r, per_chorale = [], {}, []
    n_clip_samples = int(round(chorale_clip_s * SAMPLE_RATE_HZ))
    for path in paths:
        clip_id = f"music21:{path}@0s"
        try:
            samples, truth = render_score(path)
            samples = samples[:n_clip_samples]
            clip_dur = len(samples) / SAMPLE_RATE_HZ
            truth = cut_truth(truth, 0.0, clip_dur)
            lab = annotate(samples, spec, clip_id=clip_id)
        except ClipError as e:
            failures.append({"item": e.item, "problem": e.problem})
            done += 1
            tick(clip_id)
            continue
        returns = returns_from_score(truth["measures"], truth["notes"])
        score_clip(lab, returns, c_next, c_prev)
        events_s = np.flatnonzero(lab["res_event"]) / FRAME_RATE_HZ
        fermatas = [(f["start_s"], f["end_s"]) for f in truth["fermatas"]]
        res_clips.append((events_s, fermatas, clip_dur))
        key = truth["key"]
        s_score = score_strain(truth["notes"], key["tonic_fifths"], key["minor"], len(lab["time"]),
                               spec.strain_window_s)
        r = pearson(lab["tension_tensile_strain"].astype(np.float64), s_score)
        strain_r[path] = None if not np.isfinite(r) else round(r, 4)
        per_chorale.append({"score": path, "key": key["name"], "clip_s": round(clip_dur, 3),
                            "returned_s": round(sum(x["end_s"] - x["start_s"] for x in returns), 3),
                            **_clip_f1(lab, returns), "events": int(len(events_s)),
                            "events_on_fermata": event_hits(events_s, fermatas, 0.5),
                            "fermatas": len(fermatas), "strain_r": strain_r[path]})
        done += 1
        tick(clip_id)

    rs = [r for r in strain_r.values() if r is not None]
    chorales = {
        "n_clips": len(per_chorale), "scores": paths, "skip": chorale_skip,
        "recurrence": {"next": c_next.summary(), "prev": c_prev.summary()},
        "tension": {
            "resolution_vs_fermatas": resolution_alignment(res_clips) if res_clips else None,
            "strain_r_median": round(float(np.median(rs)), 4) if rs else None,
            "strain_r_min": round(float(np.min(rs)), 4) if rs else None,
            "strain_r_max": round(float(np.max(rs)), 4) if rs else None,
        },
        "per_clip": per_chorale,
    }
    result = {
        "title": "Annotation validation on musicinterp's own sources",
        "settings": {"n_synthetic": n_synthetic, "n_easy": n_easy, "n_no_return": n_null,
                     "n_chorales": n_chorales, "chorale_skip": chorale_skip, "duration_s": float(duration_s),
                     "seed": int(seed), "chorale_clip_s": chorale_clip_s, "chorale_tempo_bpm": DEFAULT_TEMPO_BPM,
                     "edge_tolerance_s": EDGE_TOLERANCE_S, "lag_tolerance_s": LAG_TOLERANCE_S,
                     "annotation_spec": spec.model_dump(mode="json"),
                     "annotation_fingerprint": spec.fingerprint(), "musicinterp_version": __version__},
        "synthetic": synthetic,
        "chorales": chorales,
        "failures": failures,
    }
    result["targets"] = _targets(result)
    measured = [t["pass"] for t in result["targets"] if t["pass"] is not None]
    result["passed"] = bool(measured) and all(measured)
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return result


def _f(v, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def validation_markdown(result: dict) -> str:
    """A readable report of :func:`run_validation`'s result (markdown tables)."""
    s = result["settings"]
    lines = [f"# {result['title']}", ""]
    verdict = "all measured targets pass" if result["passed"] else "**some targets fail** (see below)"
    lines += [f"Annotation settings `{s['annotation_fingerprint']}`, musicinterp {s['musicinterp_version']}; "
              f"{verdict}; {result.get('elapsed_s', '?')} s.", ""]
    lines += ["## Targets", "", "| target | measured | required | result |", "|---|---|---|---|"]
    for t in result["targets"]:
        pct = "rate" in t["key"] or "lag" in t["key"]
        verdict = "not measured" if t["pass"] is None else ("pass" if t["pass"] else "**FAIL**")
        lines.append(f"| {t['target']} | {_f(t['value'], pct)} | {t['op']} {_f(t['threshold'], pct)} | {verdict} |")
    lines += ["", "## Recurrence", "",
              f"Synthetic pieces: `musicinterp.sources.synthetic.compose`, seed {s['seed']}, {s['duration_s']:g} s "
              "each; hard = the easy twin with the return 3-6% slower, in another timbre, with noise at 20 dB SNR. "
              f"Chorales: Bach chorales with repeat signs from the music21 corpus (the {s['n_chorales']} after "
              f"the first {s['chorale_skip']} of the scan), repeats expanded, {s['chorale_tempo_bpm']:g} bpm, "
              f"first {s['chorale_clip_s']:g} s. Frames within {s['edge_tolerance_s']:g} s of a return's "
              "boundaries are not scored.", "",
              "| set | clips | next P / R / F1 | prev P / R / F1 | lag within 0.5 s | positive frames |",
              "|---|---|---|---|---|---|"]
    sets = [(f"synthetic {k.replace('_', '-')}", result["synthetic"][k]) for k in ("easy", "hard", "no_return")]
    sets.append(("chorales", {"n_clips": result["chorales"]["n_clips"], **result["chorales"]["recurrence"]}))
    for name, d in sets:
        n, p = d["next"], d["prev"]
        has_truth = n["tp"] + n["fn"] > 0
        prf = (lambda x: f"{_f(x['precision'])} / {_f(x['recall'])} / **{_f(x['f1'])}**") if has_truth else \
            (lambda x: "–")
        lag = _f(n["lag_within_0.5s"], True) if has_truth else "–"
        lines.append(f"| {name} | {d['n_clips']} | {prf(n)} | {prf(p)} | {lag} | "
                     f"{_f(n['positive_frame_rate'], True)} |")
    nulls = result["synthetic"]["no_return"].get("per_clip", [])
    if nulls:
        worst = max(nulls, key=lambda c: c["positive_frame_rate"])
        lines += ["", f"No-return pieces: worst piece {worst['clip']} with "
                  f"{_f(worst['positive_frame_rate'], True)} positive frames; "
                  f"{sum(c['positive_frame_rate'] > 0 for c in nulls)} of {len(nulls)} pieces have any."]
    ten = result["chorales"]["tension"]
    ra = ten["resolution_vs_fermatas"]
    if ra:
        lines += ["", "## Tension (chorales)", "",
                  f"- Resolution events within 0.5 s of a fermata note: {_f(ra['event_on_cadence_rate'], True)} of "
                  f"{ra['events']} events, against {_f(ra['shifted_rate_mean'], True)} for circularly shifted "
                  f"events (p = {ra['p_value']:.3f}); {_f(ra['cadences_with_event'], True)} of the "
                  f"{ra['cadences']} fermatas have an event.",
                  f"- Audio tensile strain vs the score's (spelled notes, key from music21 `analyze('key')`): "
                  f"median Pearson r = {_f(ten['strain_r_median'])} (range {_f(ten['strain_r_min'])} to "
                  f"{_f(ten['strain_r_max'])})."]
    per = result["chorales"]["per_clip"]
    if per:
        lines += ["", "## Per chorale", "",
                  "| score | key | returned s | next F1 | prev F1 | positive frames | events (on fermata) / fermatas "
                  "| strain r |", "|---|---|---|---|---|---|---|---|"]
        for c in per:
            lines.append(f"| {c['score']} | {c['key']} | {c['returned_s']:.1f} | {_f(c['next_f1'])} | "
                         f"{_f(c['prev_f1'])} | {_f(c['positive_frame_rate'], True)} | "
                         f"{c['events']} ({c['events_on_fermata']}) / {c['fermatas']} | {_f(c['strain_r'])} |")
    if result["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f['item']}: {f['problem']}" for f in result["failures"]]
    return "\n".join(lines) + "\n"
