"""The validation harness: the labels scored on the project's own sources, with targets and a report.

:func:`run_validation` annotates synthetic pieces with planted returns (easy, hard, none) and Bach
chorales with repeat signs (:func:`chorales_with_repeats`), scores them with
:mod:`musicinterp.annotate.scoring` against :mod:`musicinterp.annotate.truth`, and checks the
results against ``TARGETS``; :func:`validation_markdown` writes the report (README, "Validation").
Evaluation only: nothing in the annotation pipeline imports this module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from musicinterp.annotate.scoring import (
    LAG_TOLERANCE_S,
    RecurrenceScore,
    event_hits,
    pearson,
    resolution_alignment,
    score_clip,
    score_strain,
)
from musicinterp.annotate.truth import EDGE_TOLERANCE_S, returns_from_measures, returns_from_score
from musicinterp.frames import FRAME_RATE_HZ

if TYPE_CHECKING:
    from collections.abc import Callable

    from musicinterp.config import AnnotationSpec

log = logging.getLogger(__name__)


CHORALE_CLIP_S = 30.0  # the validation scores the first 30 s of each rendered chorale
NO_RETURN_INDEX_OFFSET = 1000  # synthetic no-return pieces use recipe indices 1000.. (other pieces than the twins)
TARGETS = (  # (key, label, where in the result, comparison, threshold)
    ("synthetic_easy_next_f1", "synthetic easy: next F1", ("synthetic", "easy", "next", "f1"), ">=", 0.9),
    ("synthetic_easy_prev_f1", "synthetic easy: prev F1", ("synthetic", "easy", "prev", "f1"), ">=", 0.9),
    ("synthetic_hard_next_f1", "synthetic hard: next F1", ("synthetic", "hard", "next", "f1"), ">=", 0.9),
    ("synthetic_hard_prev_f1", "synthetic hard: prev F1", ("synthetic", "hard", "prev", "f1"), ">=", 0.9),
    ("corpus_next_f1", "chorales: next F1", ("chorales", "recurrence", "next", "f1"), ">=", 0.85),
    ("corpus_prev_f1", "chorales: prev F1", ("chorales", "recurrence", "prev", "f1"), ">=", 0.85),
    (
        "no_return_positive_rate",
        "synthetic no-return: positive frames (next)",
        ("synthetic", "no_return", "next", "positive_frame_rate"),
        "<=",
        0.02,
    ),
    (
        "synthetic_easy_lag",
        "synthetic easy: hits with lag error <= 0.5 s",
        ("synthetic", "easy", "next", "lag_within_0.5s"),
        ">=",
        0.9,
    ),
    (
        "synthetic_hard_lag",
        "synthetic hard: hits with lag error <= 0.5 s",
        ("synthetic", "hard", "next", "lag_within_0.5s"),
        ">=",
        0.9,
    ),
    (
        "corpus_lag",
        "chorales: hits with lag error <= 0.5 s",
        ("chorales", "recurrence", "next", "lag_within_0.5s"),
        ">=",
        0.9,
    ),
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
        log.warning("chorale scan: only %d chorales with repeats after skipping %d (asked for %d)", len(found), skip, n)
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
        n_clips = (
            _lookup(result, where[:2] + ("n_clips",))
            if where[0] == "synthetic"
            else _lookup(result, ("chorales", "n_clips"))
        )
        measured = value is not None and bool(n_clips)
        if measured and where[-1] in ("f1", "lag_within_0.5s"):
            # an F1 / lag rate over no true positives is not a measurement
            measured = (_lookup(result, where[:-1] + ("tp",)) or 0) + (_lookup(result, where[:-1] + ("fn",)) or 0) > 0
        ok = None if not measured else (value >= thr if op == ">=" else value <= thr)
        rows.append(
            {"key": key, "target": label, "value": value if measured else None, "op": op, "threshold": thr, "pass": ok}
        )
    return rows


def _synthetic_recipes(n_easy: int, n_hard: int, n_null: int, duration_s: float, seed: int) -> list[tuple]:
    out = []
    for i in range(n_easy):
        out.append(("easy", {"seed": seed, "index": i, "duration_s": duration_s, "hard": False, "returns": True}))
    for i in range(n_hard):
        out.append(("hard", {"seed": seed, "index": i, "duration_s": duration_s, "hard": True, "returns": True}))
    for i in range(n_null):
        out.append(
            (
                "no_return",
                {
                    "seed": seed,
                    "index": NO_RETURN_INDEX_OFFSET + i,
                    "duration_s": duration_s,
                    "hard": i % 2 == 1,
                    "returns": False,
                },
            )
        )
    return out


def _clip_f1(labels: dict[str, np.ndarray], returns: Sequence[dict]) -> dict:
    nxt, prv = RecurrenceScore(), RecurrenceScore()
    score_clip(labels, returns, nxt, prv)
    s_n, s_p = nxt.summary(), prv.summary()
    return {
        "next_f1": s_n["f1"] if s_n["tp"] + s_n["fn"] else None,
        "prev_f1": s_p["f1"] if s_p["tp"] + s_p["fn"] else None,
        "positive_frame_rate": s_n["positive_frame_rate"],
    }


def run_validation(
    n_synthetic: int,
    n_chorales: int,
    duration_s: float = 24.0,
    seed: int = 200,
    spec: AnnotationSpec | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    n_easy: int | None = None,
    n_no_return: int | None = None,
    chorale_skip: int = 20,
    chorale_clip_s: float = CHORALE_CLIP_S,
) -> dict:
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
    from musicinterp.config import AnnotationSpec
    from musicinterp.frames import SAMPLE_RATE_HZ
    from musicinterp.sources.base import ClipError, cut_truth
    from musicinterp.sources.music21_source import DEFAULT_TEMPO_BPM, render_score
    from musicinterp.sources.synthetic import compose

    spec = spec or AnnotationSpec()
    n_easy = n_synthetic if n_easy is None else n_easy
    n_null = int(round(2 * n_synthetic / 3)) if n_no_return is None else n_no_return
    if min(n_synthetic, n_chorales, n_easy, n_null, chorale_skip) < 0:
        raise ValueError(
            "run_validation: counts must be >= 0 "
            f"(n_synthetic={n_synthetic}, n_easy={n_easy}, n_no_return={n_null}, "
            f"n_chorales={n_chorales}, chorale_skip={chorale_skip})"
        )
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
                per_null.append(
                    {
                        "clip": clip_id,
                        "hard": recipe["hard"],
                        "positive_frame_rate": round(float(lab["rec_lag_next_s_valid"].mean()), 4),
                    }
                )
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
        s_score = score_strain(
            truth["notes"], key["tonic_fifths"], key["minor"], len(lab["time"]), spec.strain_window_s
        )
        r = pearson(lab["tension_tensile_strain"].astype(np.float64), s_score)
        strain_r[path] = None if not np.isfinite(r) else round(r, 4)
        per_chorale.append(
            {
                "score": path,
                "key": key["name"],
                "clip_s": round(clip_dur, 3),
                "returned_s": round(sum(x["end_s"] - x["start_s"] for x in returns), 3),
                **_clip_f1(lab, returns),
                "events": int(len(events_s)),
                "events_on_fermata": event_hits(events_s, fermatas, 0.5),
                "fermatas": len(fermatas),
                "strain_r": strain_r[path],
            }
        )
        done += 1
        tick(clip_id)

    rs = [r for r in strain_r.values() if r is not None]
    chorales = {
        "n_clips": len(per_chorale),
        "scores": paths,
        "skip": chorale_skip,
        "recurrence": {"next": c_next.summary(), "prev": c_prev.summary()},
        "tension": {
            "resolution_vs_fermatas": resolution_alignment(res_clips) if res_clips else None,
            "strain_r_median": round(float(np.median(rs)), 4) if rs else None,
            "strain_r_min": round(float(np.min(rs)), 4) if rs else None,
            "strain_r_max": round(float(np.max(rs)), 4) if rs else None,
        },
        "per_clip": per_chorale,
    }
    result: dict[str, Any] = {
        "title": "Annotation validation on musicinterp's own sources",
        "settings": {
            "n_synthetic": n_synthetic,
            "n_easy": n_easy,
            "n_no_return": n_null,
            "n_chorales": n_chorales,
            "chorale_skip": chorale_skip,
            "duration_s": float(duration_s),
            "seed": int(seed),
            "chorale_clip_s": chorale_clip_s,
            "chorale_tempo_bpm": DEFAULT_TEMPO_BPM,
            "edge_tolerance_s": EDGE_TOLERANCE_S,
            "lag_tolerance_s": LAG_TOLERANCE_S,
            "annotation_spec": spec.model_dump(mode="json"),
            "annotation_fingerprint": spec.fingerprint(),
            "musicinterp_version": __version__,
        },
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
    lines += [
        f"Annotation settings `{s['annotation_fingerprint']}`, musicinterp {s['musicinterp_version']}; "
        f"{verdict}; {result.get('elapsed_s', '?')} s.",
        "",
    ]
    lines += ["## Targets", "", "| target | measured | required | result |", "|---|---|---|---|"]
    for t in result["targets"]:
        pct = "rate" in t["key"] or "lag" in t["key"]
        verdict = "not measured" if t["pass"] is None else ("pass" if t["pass"] else "**FAIL**")
        lines.append(f"| {t['target']} | {_f(t['value'], pct)} | {t['op']} {_f(t['threshold'], pct)} | {verdict} |")
    lines += [
        "",
        "## Recurrence",
        "",
        f"Synthetic pieces: `musicinterp.sources.synthetic.compose`, seed {s['seed']}, {s['duration_s']:g} s "
        "each; hard = the easy twin with the return 3-6% slower, in another timbre, with noise at 20 dB SNR. "
        f"Chorales: Bach chorales with repeat signs from the music21 corpus (the {s['n_chorales']} after "
        f"the first {s['chorale_skip']} of the scan), repeats expanded, {s['chorale_tempo_bpm']:g} bpm, "
        f"first {s['chorale_clip_s']:g} s. Frames within {s['edge_tolerance_s']:g} s of a return's "
        "boundaries are not scored.",
        "",
        "| set | clips | next P / R / F1 | prev P / R / F1 | lag within 0.5 s | positive frames |",
        "|---|---|---|---|---|---|",
    ]
    sets = [(f"synthetic {k.replace('_', '-')}", result["synthetic"][k]) for k in ("easy", "hard", "no_return")]
    sets.append(("chorales", {"n_clips": result["chorales"]["n_clips"], **result["chorales"]["recurrence"]}))
    for name, d in sets:
        n, p = d["next"], d["prev"]
        has_truth = n["tp"] + n["fn"] > 0
        prf = (
            (lambda x: f"{_f(x['precision'])} / {_f(x['recall'])} / **{_f(x['f1'])}**")
            if has_truth
            else (lambda x: "–")
        )
        lag = _f(n["lag_within_0.5s"], True) if has_truth else "–"
        lines.append(
            f"| {name} | {d['n_clips']} | {prf(n)} | {prf(p)} | {lag} | {_f(n['positive_frame_rate'], True)} |"
        )
    nulls = result["synthetic"]["no_return"].get("per_clip", [])
    if nulls:
        worst = max(nulls, key=lambda c: c["positive_frame_rate"])
        lines += [
            "",
            f"No-return pieces: worst piece {worst['clip']} with "
            f"{_f(worst['positive_frame_rate'], True)} positive frames; "
            f"{sum(c['positive_frame_rate'] > 0 for c in nulls)} of {len(nulls)} pieces have any.",
        ]
    ten = result["chorales"]["tension"]
    ra = ten["resolution_vs_fermatas"]
    if ra:
        lines += [
            "",
            "## Tension (chorales)",
            "",
            f"- Resolution events within 0.5 s of a fermata note: {_f(ra['event_on_cadence_rate'], True)} of "
            f"{ra['events']} events, against {_f(ra['shifted_rate_mean'], True)} for circularly shifted "
            f"events (p = {ra['p_value']:.3f}); {_f(ra['cadences_with_event'], True)} of the "
            f"{ra['cadences']} fermatas have an event.",
            f"- Audio tensile strain vs the score's (spelled notes, key from music21 `analyze('key')`): "
            f"median Pearson r = {_f(ten['strain_r_median'])} (range {_f(ten['strain_r_min'])} to "
            f"{_f(ten['strain_r_max'])}).",
        ]
    per = result["chorales"]["per_clip"]
    if per:
        lines += [
            "",
            "## Per chorale",
            "",
            "| score | key | returned s | next F1 | prev F1 | positive frames | events (on fermata) / fermatas "
            "| strain r |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in per:
            lines.append(
                f"| {c['score']} | {c['key']} | {c['returned_s']:.1f} | {_f(c['next_f1'])} | "
                f"{_f(c['prev_f1'])} | {_f(c['positive_frame_rate'], True)} | "
                f"{c['events']} ({c['events_on_fermata']}) / {c['fermatas']} | {_f(c['strain_r'])} |"
            )
    if result["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f['item']}: {f['problem']}" for f in result["failures"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- families beyond the project's own pieces

FAMILY_TARGETS = (  # (metric of scoring.lag_metrics, comparison, threshold): the bar for music not ours
    ("lag_recall", ">=", 0.70),
    ("spurious_rate", "<=", 0.10),
)
SPLICE = "splice"  # the family of X|Y|X' splices of recorded music (families.splice_items)


@dataclass(frozen=True)
class EvalClip:
    """A clip with exact recurrence truth: a rendered corpus piece, or a splice (``bounds_s`` set)."""

    family: str
    item: str
    samples: np.ndarray
    returns: list
    bounds_s: list | None
    meta: dict


def family_clips(
    families: Sequence[str],
    n_dev: int | dict[str, int],
    n_held: int | dict[str, int],
    *,
    n_splice: int = 0,
    n_unrelated: int = 0,
    splice_seed: int = 0,
    cache: str | None = None,
    progress: Callable[[str, int, int, str], None] | None = None,
) -> dict[str, list[EvalClip]]:
    """The clips of each family in ``families`` (names of ``families.FAMILIES`` and/or ``"splice"``),
    split ``{"dev": [...], "held": [...]}``: ``n_dev`` / ``n_held`` pieces of each corpus family (a
    number, or one per family name) (:func:`musicinterp.annotate.families.family_items`, ``cache``
    its render cache), and per split ``n_splice`` X|Y|X' and ``n_unrelated`` X|Y|Z' splices from that
    split's tracks (:func:`~musicinterp.annotate.families.splice_items`)."""
    from musicinterp.annotate import families as fam

    def count(n: int | dict[str, int], name: str) -> int:
        return n if isinstance(n, int) else int(n.get(name, 0))

    out: dict[str, list[EvalClip]] = {"dev": [], "held": []}
    for name in families:
        if name == SPLICE:
            for split in ("dev", "held"):
                for c in fam.splice_items(n_splice, n_unrelated, split, seed=splice_seed):
                    out[split].append(EvalClip(SPLICE, c.item, c.samples, c.returns, c.bounds_s, c.meta()))
                if progress is not None:
                    progress(SPLICE, len(out[split]), 0, split)
            continue
        dev, held = fam.family_items(name, count(n_dev, name), count(n_held, name), log_progress=progress, cache=cache)
        for split, clips in (("dev", dev), ("held", held)):
            out[split] += [EvalClip(name, c.item, c.samples, c.returns, None, c.meta()) for c in clips]
    return out


def recurrence_features(samples: np.ndarray, spec: AnnotationSpec, clip_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The HPCP and the tonal-presence mask that :func:`musicinterp.annotate.annotate` computes (so
    that several settings can be scored without recomputing the features)."""
    from musicinterp.annotate import recurrence
    from musicinterp.annotate.features import compute_features
    from musicinterp.annotate.labels import prepare_samples

    f = compute_features(prepare_samples(samples, spec, clip_id))
    return f.hpcp, recurrence.tonal_presence(f.peak_energy)


def recurrence_lags(hpcp: np.ndarray, present: np.ndarray, spec: AnnotationSpec) -> tuple[np.ndarray, np.ndarray]:
    """Next and previous lags in frames (-1 = none) as :func:`annotate` finds them, *before* the
    minimum-run rule (apply :func:`with_min_run`); the expensive part of a settings search."""
    from musicinterp.annotate import recurrence

    x = recurrence.embed(hpcp, present, spec, causal=False)
    rec = recurrence.detect(x, spec.model_copy(update={"min_run_s": 0.0}))
    return rec.next_lag, rec.prev_lag


def with_min_run(next_lag: np.ndarray, prev_lag: np.ndarray, min_run_s: float) -> dict[str, np.ndarray]:
    """The recurrence labels (``rec_lag_next_s``/``rec_lag_prev_s`` and their ``_valid``) after the
    minimum-run rule, exactly as :func:`annotate` returns them."""
    from musicinterp.annotate.recurrence import keep_runs
    from musicinterp.frames import frames_of

    run = frames_of(min_run_s) if min_run_s > 0 else 1
    lab: dict[str, np.ndarray] = {"time": np.arange(len(next_lag)) / FRAME_RATE_HZ}
    for name, lag in (("rec_lag_next_s", keep_runs(next_lag, run)), ("rec_lag_prev_s", keep_runs(prev_lag, run))):
        ok = lag > 0
        lab[name] = np.where(ok, lag / FRAME_RATE_HZ, 0.0).astype(np.float32)
        lab[name + "_valid"] = ok
    return lab


SHORT_STRETCH_S = 2.0  # a true lag held for less than this is a "short" return (the default path / run length)


def miss_breakdown(labels: dict[str, np.ndarray], returns: Sequence[dict]) -> dict[str, int]:
    """Where the lag-exact misses of a scored piece lie: frames with a true next lag, split by the length
    of the stretch over which that true lag holds (< ``SHORT_STRETCH_S``: a measure or two recurring at
    their own lag, e.g. a phrase written out twice; otherwise a returning passage), and, for the
    misses, whether nothing was reported or a shorter / longer lag than the truth's."""
    from musicinterp.annotate.truth import truth_lags

    n = len(labels["time"])
    t_next, _, skip = truth_lags(returns, n)
    has = np.isfinite(t_next)
    # stretches of one true lag: consecutive frames with a lag that moves by < 1 frame per frame
    same = np.zeros(n, dtype=bool)
    same[1:] = has[1:] & has[:-1] & (np.abs(np.nan_to_num(t_next[1:] - t_next[:-1])) < 1.0 / FRAME_RATE_HZ)
    ids = np.cumsum(~same)  # a new stretch starts wherever a frame does not continue the one before
    stretch = np.bincount(ids)[ids] / FRAME_RATE_HZ
    gt = has & ~skip
    pred = labels["rec_lag_next_s_valid"].astype(bool)
    err = labels["rec_lag_next_s"].astype(np.float64) - np.nan_to_num(t_next)
    ok = gt & pred & (np.abs(err) <= LAG_TOLERANCE_S)
    out = {}
    for name, sel in (("short", gt & (stretch < SHORT_STRETCH_S)), ("long", gt & (stretch >= SHORT_STRETCH_S))):
        out[f"{name}_frames"] = int(sel.sum())
        out[f"{name}_found"] = int((sel & ok).sum())
        out[f"{name}_none"] = int((sel & ~pred).sum())
        out[f"{name}_shorter_lag"] = int((sel & pred & ~ok & (err < 0)).sum())
        out[f"{name}_longer_lag"] = int((sel & pred & ~ok & (err > 0)).sum())
    return out


def score_family_clips(clips: Sequence[EvalClip], labels: Sequence[dict[str, np.ndarray]]) -> dict[str, dict]:
    """Per family: the pooled next-lag scores (:func:`~musicinterp.annotate.scoring.lag_metrics`) and
    per-clip rows. Corpus pieces are scored against their returns on every frame
    (:func:`~musicinterp.annotate.scoring.score_clip`); splices across segments only
    (:func:`~musicinterp.annotate.scoring.score_splice`), with the return splices and the unrelated
    ones also pooled apart."""
    from musicinterp.annotate.scoring import lag_metrics, score_splice

    acc: dict[str, dict] = {}
    for clip, lab in zip(clips, labels):
        d = acc.setdefault(clip.family, {"next": RecurrenceScore(), "prev": RecurrenceScore(), "per_clip": []})
        if clip.bounds_s is None:
            one_n, one_p = RecurrenceScore(), RecurrenceScore()
            score_clip(lab, clip.returns, one_n, one_p)
            score_clip(lab, clip.returns, d["next"], d["prev"])
            row = {k: v for k, v in lag_metrics(one_n).items() if k in ("tp", "fp", "fn", "lag_ok", "frames")}
            misses = miss_breakdown(lab, clip.returns)
            d["misses"] = {k: d.get("misses", {}).get(k, 0) + v for k, v in misses.items()}
        else:
            kind = "return" if clip.returns else "unrelated"
            sub = d.setdefault(kind, RecurrenceScore())
            score_splice(lab, clip.bounds_s, clip.returns, sub)
            row = score_splice(lab, clip.bounds_s, clip.returns, d["next"])
            row["kind"] = kind
        row["lag_recall"] = round(row["lag_ok"] / max(row["tp"] + row["fn"], 1), 4) if row["tp"] + row["fn"] else None
        row["spurious_rate"] = round(row["fp"] / max(row["frames"], 1), 4)
        d["per_clip"].append({"item": clip.item, **clip.meta, **row})
    out = {}
    for fam_name, d in acc.items():
        out[fam_name] = {"n_clips": len(d["per_clip"]), "next": lag_metrics(d["next"]), "per_clip": d["per_clip"]}
        if d["prev"].frames:
            out[fam_name]["prev"] = lag_metrics(d["prev"])
        if "misses" in d:
            m = d["misses"]
            out[fam_name]["misses"] = m
            for k in ("short", "long"):
                frames = m[f"{k}_frames"]
                out[fam_name][f"lag_recall_{k}"] = round(m[f"{k}_found"] / frames, 4) if frames else None
        for kind in ("return", "unrelated"):
            if kind in d:
                out[fam_name][kind] = lag_metrics(d[kind])
                out[fam_name][f"n_{kind}"] = sum(r.get("kind") == kind for r in d["per_clip"])
        if fam_name == SPLICE and "return" in d:
            rows = [r for r in d["per_clip"] if r.get("kind") == "return"]
            out[fam_name]["returns_found"] = round(sum(r["lag_ok"] > 0 for r in rows) / max(len(rows), 1), 4)
    return out


def family_targets(families: dict[str, dict]) -> list[dict]:
    rows = []
    for name, d in families.items():
        for metric, op, thr in FAMILY_TARGETS:
            value = d["next"][metric]
            measured = metric != "lag_recall" or d["next"]["tp"] + d["next"]["fn"] > 0
            ok = None if not measured else (value >= thr if op == ">=" else value <= thr)
            rows.append(
                {
                    "family": name,
                    "metric": metric,
                    "value": value if measured else None,
                    "op": op,
                    "threshold": thr,
                    "pass": ok,
                }
            )
    return rows


def run_families(
    families: Sequence[str],
    n_dev: int | dict[str, int],
    n_held: int | dict[str, int],
    split: str = "held",
    spec: AnnotationSpec | None = None,
    *,
    n_splice: int = 0,
    n_unrelated: int = 0,
    splice_seed: int = 0,
    clips: dict[str, list[EvalClip]] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Score the recurrence labels on the ``split`` ('dev' or 'held') clips of ``families``; returns a
    JSON-able report with the per-family numbers and :data:`FAMILY_TARGETS`. ``clips`` (from
    :func:`family_clips`) skips the rendering. The labels are :func:`annotate`'s (recomputed through
    :func:`recurrence_features` / :func:`recurrence_lags` / :func:`with_min_run`, which skip the
    tension; a test checks they are identical)."""
    import time

    from musicinterp import __version__
    from musicinterp.annotate import families as fam
    from musicinterp.config import AnnotationSpec
    from musicinterp.sources.base import ClipError

    if split not in ("dev", "held"):
        raise ValueError(f"run_families: split must be 'dev' or 'held', got {split!r}")
    spec = spec or AnnotationSpec()
    t0 = time.perf_counter()
    if clips is None:
        clips = family_clips(
            families, n_dev, n_held, n_splice=n_splice, n_unrelated=n_unrelated, splice_seed=splice_seed
        )
    todo = [c for c in clips[split] if c.family in families]
    kept, labels, failures = [], [], []
    for i, c in enumerate(todo):
        try:
            hpcp, present = recurrence_features(c.samples, spec, c.item)
        except ClipError as e:
            failures.append({"item": e.item, "problem": e.problem})
        else:
            labels.append(with_min_run(*recurrence_lags(hpcp, present, spec), spec.min_run_s))
            kept.append(c)
        if progress is not None:
            progress(i + 1, len(todo), c.item)
    scored = score_family_clips(kept, labels)
    result: dict[str, Any] = {
        "title": f"Recurrence labels on music the project did not make ({split} split)",
        "settings": {
            "families": list(families),
            "split": split,
            "n_dev": n_dev,
            "n_held": n_held,
            "n_splice": n_splice,
            "n_unrelated": n_unrelated,
            "splice_seed": splice_seed,
            "family_render": {
                k: {
                    "collections": list(f.collections),
                    "tempo_bpm": list(f.tempo_bpm),
                    "timbres": [list(t) for t in f.timbres],
                    "clip_s": f.clip_s,
                    "description": f.description,
                }
                for k, f in fam.FAMILIES.items()
                if k in families
            },
            "min_returned_s": fam.MIN_RETURNED_S,
            "held_out_collections_never_used": list(fam.HELD_OUT_COLLECTIONS),
            "splice": {"lowpass_hz": fam.LOWPASS_HZ, "gain_db": fam.RETURN_GAIN_DB, "snr_db": fam.RETURN_SNR_DB},
            "edge_tolerance_s": EDGE_TOLERANCE_S,
            "lag_tolerance_s": LAG_TOLERANCE_S,
            "annotation_spec": spec.model_dump(mode="json"),
            "annotation_fingerprint": spec.fingerprint(),
            "musicinterp_version": __version__,
        },
        "families": {k: scored[k] for k in families if k in scored},
        "failures": failures,
    }
    result["targets"] = family_targets(result["families"])
    measured = [t["pass"] for t in result["targets"] if t["pass"] is not None]
    result["passed"] = bool(measured) and all(measured)
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return result


def families_markdown(result: dict) -> str:
    """A readable report of :func:`run_families` (one row per family)."""
    s = result["settings"]
    lines = [
        f"# {result['title']}",
        "",
        f"Annotation settings `{s['annotation_fingerprint']}`, musicinterp {s['musicinterp_version']}; "
        f"{'all families meet' if result['passed'] else '**not every family meets**'} lag recall >= 0.70 "
        f"at spurious <= 10%; {result.get('elapsed_s', '?')} s.",
        "",
        "| family | clips | lag recall | spurious frames | next P / R / F1 | lag F1 | lag within 0.5 s "
        "| positive frames |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in result["families"].items():
        n = d["next"]
        has = n["tp"] + n["fn"] > 0
        prf = f"{_f(n['precision'])} / {_f(n['recall'])} / {_f(n['f1'])}" if has else "–"
        lines.append(
            f"| {name} | {d['n_clips']} | **{_f(n['lag_recall']) if has else '–'}** | "
            f"**{_f(n['spurious_rate'], True)}** | {prf} | {_f(n['lag_f1']) if has else '–'} | "
            f"{_f(n['lag_within_0.5s'], True) if has else '–'} | {_f(n['positive_frame_rate'], True)} |"
        )
    scored = {k: d for k, d in result["families"].items() if d.get("misses")}
    if scored:
        lines += [
            "",
            f"Where the corpus misses lie (frames with a true next lag; a *short* stretch holds one true lag "
            f"for less than {SHORT_STRETCH_S:g} s, e.g. a bar that recurs at its own lag):",
            "",
            "| family | short-stretch frames | lag recall short / long | long-stretch misses: none / shorter lag "
            "/ longer lag |",
            "|---|---|---|---|",
        ]
        for name, d in scored.items():
            m = d["misses"]
            n_long = max(m["long_frames"] - m["long_found"], 1)
            lines.append(
                f"| {name} | {_f(m['short_frames'] / max(m['short_frames'] + m['long_frames'], 1), True)} | "
                f"{_f(d['lag_recall_short'])} / {_f(d['lag_recall_long'])} | "
                f"{_f(m['long_none'] / n_long, True)} / {_f(m['long_shorter_lag'] / n_long, True)} / "
                f"{_f(m['long_longer_lag'] / n_long, True)} |"
            )
    sp = result["families"].get(SPLICE)
    if sp:
        lines += [""]
        if "return" in sp:
            r = sp["return"]
            lines.append(
                f"Splices X|Y|X' ({sp.get('n_return', 0)}): lag recall {_f(r['lag_recall'])}, spurious "
                f"{_f(r['spurious_rate'], True)}, returns found (any frame at the right lag) "
                f"{_f(sp.get('returns_found'), True)}."
            )
        if "unrelated" in sp:
            u = sp["unrelated"]
            lines.append(
                f"Unrelated splices X|Y|Z' ({sp.get('n_unrelated', 0)}): spurious cross-segment frames "
                f"{_f(u['spurious_rate'], True)}."
            )
        within = sum(r.get("within_segment", 0) for r in sp["per_clip"])
        total = sum(r.get("frames", 0) + r.get("within_segment", 0) for r in sp["per_clip"])
        lines.append(
            f"Frames not scored because their reported next occurrence lies inside their own segment: "
            f"{within} of {total}."
        )
    if result["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f['item']}: {f['problem']}" for f in result["failures"]]
    return "\n".join(lines) + "\n"
