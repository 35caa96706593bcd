"""Recurrence labels on music the project did not make: settings chosen on a development split, scored
on a held-out split, per family (musicinterp/annotate/README.md, "Music the project did not make").

    python benchmarks/annotation_families.py --out docs/validation --cache /tmp/annotation-families

Families (``musicinterp.annotate.families``): Ryan's Mammoth Collection, Aird's Airs, Mozart / Haydn /
Beethoven movements (music21 corpus, repeats expanded, rendered with a timbre and
tempo drawn per piece; truth: identical measures of the expanded score), and X|Y|X' splices of Debian
game music (``apt-get install drascula-music asc-music hyperrogue-music``; truth: X returns at X',
scored across segments only). The O'Neill collection is held out for outside checks and never used.

Steps:

1. **Development split** (the first ``--n-dev`` pieces of each family's scan; the dev tracks of the
   splices), plus the project's own dev material as constraints: synthetic pieces of seed 100 (the
   seed the original settings were tuned on) and chorales 1-``--dev-chorales`` of the scan.
2. **Search** (features computed once per clip): ``rec_threshold`` x ``path_len_s`` over a grid,
   ``depart_threshold`` and ``norm_floor`` one at a time at ``path_len_s`` = 2, each with every
   ``min_run_s`` of a list (the run rule is applied after detection, so it costs nothing).
3. **Rule, fixed before any number was seen.** Feasible: on the dev split every new family has at most
   10% spurious frames, the synthetic no-return pieces at most 2% positive frames, synthetic hard
   F1 >= 0.9 and chorale F1 >= 0.85 (the README's targets). Objective: the mean over the new families
   of lag F1 (a positive counts only with the true lag within 0.5 s). The defaults stay unless they
   are infeasible or the best feasible setting beats them by at least 0.02. Added after the first
   search, before any held-out number of the final setting was seen: settings within 0.005 of the best
   are ties, and the tie goes to the one that changes the fewest defaults (the argmax of the first
   search, rec_threshold 0.7 + norm_floor 0.35 + min_run_s 1, led rec_threshold 0.7 alone by 0.003).
   A setting that differs from the defaults then has to keep the project's targets on the README's
   validation sets A and B (``validate-annotations`` at full size; ``--no-target-check`` skips it); the
   search file says whether it does (``new_defaults``): the defaults change only if so.
4. **Held-out split** (the next ``--n-held`` pieces of each family; the held-out tracks): the defaults
   and, when it differs, the chosen setting (and any ``--also`` setting), each written to
   ``annotation-families-<fingerprint>.{json,md}``; the search to ``annotation-families-dev-search.json``.
5. **Blind spots**: X | Y | X'' probes with X'' transposed, slower, varied or short
   (``families.BLIND_SPOT_PROBES``), for the same settings, to ``annotation-blind-spots.json``.

``--cache`` keeps the rendered clips' features (a rerun skips the annotation's feature pass);
progress goes to stderr. Threads are pinned to one before numpy loads.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from musicinterp.annotate import AnnotationSpec  # noqa: E402
from musicinterp.annotate.families import FAMILIES  # noqa: E402
from musicinterp.annotate.validation import (  # noqa: E402
    SPLICE,
    EvalClip,
    families_markdown,
    family_clips,
    recurrence_features,
    recurrence_lags,
    run_families,
    score_family_clips,
    with_min_run,
)

NEW_FAMILIES = (*FAMILIES, SPLICE)
OWN = ("synthetic-easy", "synthetic-hard", "synthetic-none", "chorales")
REC_THRESHOLDS = (0.55, 0.6, 0.65, 0.7, 0.75)
PATH_LENS = (1.5, 2.0, 3.0)
DEPARTS = (0.2, 0.4)
NORM_FLOORS = (0.15, 0.35)
MIN_RUNS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
IMPROVEMENT = 0.02  # the defaults stay unless beaten by this much (mean dev lag F1)
TIE = 0.005  # settings this close to the best are a tie, won by the one changing the fewest defaults (see docstring)
DEFAULT_COUNTS = {"ryans": (16, 24), "airds": (16, 24), "classical": (6, 7)}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def own_dev_clips(n_synth: int, n_chorales: int) -> list[EvalClip]:
    """The project's own dev material as constraints: synthetic seed 100 and the first chorales."""
    from musicinterp.annotate.truth import returns_from_score
    from musicinterp.annotate.validation import NO_RETURN_INDEX_OFFSET, chorales_with_repeats
    from musicinterp.frames import SAMPLE_RATE_HZ
    from musicinterp.sources.base import cut_truth
    from musicinterp.sources.music21_source import render_score
    from musicinterp.sources.synthetic import compose

    out = []
    for kind, hard, returns, off in (
        ("easy", False, True, 0),
        ("hard", True, True, 0),
        ("none", None, False, NO_RETURN_INDEX_OFFSET),
    ):
        for i in range(n_synth):
            h = (i % 2 == 1) if hard is None else hard
            recipe = {"seed": 100, "index": off + i, "duration_s": 24.0, "hard": h, "returns": returns}
            x, truth = compose(recipe)
            out.append(
                EvalClip(f"synthetic-{kind}", f"synthetic:s100-{kind}-p{off + i:04d}", x, truth["returns"], None, {})
            )
    for path in chorales_with_repeats(n_chorales, skip=0):
        x, truth = render_score(path)
        x = x[: int(30 * SAMPLE_RATE_HZ)]
        truth = cut_truth(truth, 0.0, len(x) / SAMPLE_RATE_HZ)
        out.append(
            EvalClip("chorales", f"music21:{path}", x, returns_from_score(truth["measures"], truth["notes"]), None, {})
        )
    return out


def features(clips: list[EvalClip], spec: AnnotationSpec, cache: Path | None) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i, c in enumerate(clips):
        key = hashlib.sha1(c.samples.tobytes()).hexdigest()[:16]
        f = cache / f"{key}.npz" if cache else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        if f is not None and f.exists():
            z = np.load(f)
            out.append((z["hpcp"], z["present"]))
            continue
        hpcp, present = recurrence_features(c.samples, spec, c.item)
        if f is not None:
            np.savez(f, hpcp=hpcp, present=present)
        out.append((hpcp, present))
        if (i + 1) % 10 == 0 or i + 1 == len(clips):
            say(f"features {i + 1}/{len(clips)}")
    return out


def grid() -> list[dict]:
    """Detection settings (min_run_s is applied afterwards, for each of MIN_RUNS)."""
    pts = [{"rec_threshold": r, "path_len_s": p} for r, p in itertools.product(REC_THRESHOLDS, PATH_LENS)]
    pts += [{"rec_threshold": r, "depart_threshold": d} for r, d in itertools.product(REC_THRESHOLDS, DEPARTS)]
    pts += [{"rec_threshold": r, "norm_floor": n} for r, n in itertools.product(REC_THRESHOLDS, NORM_FLOORS)]
    return pts


def summarise(scored: dict[str, dict]) -> dict:
    new = [k for k in NEW_FAMILIES if k in scored]
    row = {
        "objective_mean_lag_f1": round(float(np.mean([scored[k]["next"]["lag_f1"] for k in new])), 4),
        "families": {
            k: {m: scored[k]["next"][m] for m in ("lag_recall", "spurious_rate", "f1", "lag_f1")} for k in new
        },
    }
    own = {}
    if "synthetic-none" in scored:
        own["synthetic_none_positive_rate"] = scored["synthetic-none"]["next"]["positive_frame_rate"]
    if "synthetic-hard" in scored:
        own["synthetic_hard_f1"] = scored["synthetic-hard"]["next"]["f1"]
    if "synthetic-easy" in scored:
        own["synthetic_easy_f1"] = scored["synthetic-easy"]["next"]["f1"]
    if "chorales" in scored:
        own["chorales_f1"] = scored["chorales"]["next"]["f1"]
    row["own"] = own
    row["feasible"] = bool(
        all(scored[k]["next"]["spurious_rate"] <= 0.10 for k in new)
        and own.get("synthetic_none_positive_rate", 0) <= 0.02
        and own.get("synthetic_hard_f1", 1) >= 0.9
        and own.get("chorales_f1", 1) >= 0.85
    )
    return row


def search(clips: list[EvalClip], feats, default: AnnotationSpec) -> dict:
    rows = []
    pts = grid()
    t0 = time.perf_counter()
    for k, pt in enumerate(pts):
        spec = default.model_copy(update=pt)
        lags = [recurrence_lags(h, p, spec) for h, p in feats]
        for mr in MIN_RUNS:
            labels = [with_min_run(n, p, mr) for n, p in lags]
            rows.append({"setting": {**pt, "min_run_s": mr}, **summarise(score_family_clips(clips, labels))})
        el = time.perf_counter() - t0
        say(f"search {k + 1}/{len(pts)} {pt} ({el:.0f} s, ~{el / (k + 1) * (len(pts) - k - 1):.0f} s left)")
    return rows


def choose(rows: list[dict], default: AnnotationSpec) -> tuple[dict, dict]:
    def changed(r: dict) -> int:
        return sum(getattr(default, k) != v for k, v in r["setting"].items())

    base = next(r for r in rows if changed(r) == 0)
    feasible = [r for r in rows if r["feasible"]]
    if not feasible:
        return base, {"decision": "keep the defaults: no setting is feasible on the dev split"}
    top = max(r["objective_mean_lag_f1"] for r in feasible)
    ties = [r for r in feasible if r["objective_mean_lag_f1"] >= top - TIE]
    best = min(ties, key=lambda r: (changed(r), -r["objective_mean_lag_f1"]))
    if not base["feasible"]:
        return best, {"decision": "change: the defaults are infeasible on the dev split"}
    if best["objective_mean_lag_f1"] >= base["objective_mean_lag_f1"] + IMPROVEMENT:
        return best, {
            "decision": f"change: the best feasible setting (fewest changes among those within {TIE} of the "
            f"best) beats the defaults by >= {IMPROVEMENT}",
            "argmax": max(feasible, key=lambda r: r["objective_mean_lag_f1"]),
        }
    return base, {"decision": f"keep the defaults: no feasible setting beats them by {IMPROVEMENT} or more"}


# the README's validation sets: A (seed 200, chorales 21-40) and B (seed 300, chorales 41-60)
TARGET_SETS = {"A": {"seed": 200, "chorale_skip": 20}, "B": {"seed": 300, "chorale_skip": 40}}
KNOWN_MISS = ("corpus_lag",)  # missed by the defaults already (README): not a reason to keep them


def target_check(spec: AnnotationSpec) -> dict:
    """New defaults must keep the project's targets: ``run_validation`` sets A and B at full size with
    ``spec``; every target the defaults meet must still be met on both sets."""
    from musicinterp.annotate.validation import run_validation

    sets, failed = {}, []
    for name, kw in TARGET_SETS.items():
        say(f"target check: set {name} ({kw})")
        res = run_validation(n_synthetic=30, n_chorales=20, spec=spec, **kw)
        sets[name] = {"settings": kw, "targets": res["targets"], "elapsed_s": res["elapsed_s"]}
        failed += [
            f"{t['key']} = {t['value']} on set {name}"
            for t in res["targets"]
            if t["pass"] is False and t["key"] not in KNOWN_MISS
        ]
    verdict = "all targets the defaults meet still hold" if not failed else "fails " + "; ".join(failed)
    return {"annotation_fingerprint": spec.fingerprint(), "sets": sets, "all_hold": not failed, "verdict": verdict}


def blind_spots(n: int, specs: list[AnnotationSpec], out: Path) -> None:
    """What the annotator cannot see: X|Y|X'' probes (``families.BLIND_SPOT_PROBES``), X'' transposed,
    slower, varied or short, scored across segments like the splices; ``annotation-blind-spots.json``."""
    from musicinterp.annotate.families import BLIND_SPOT_PROBES, probe_piece

    clips = []
    for name in BLIND_SPOT_PROBES:
        for i in range(n):
            x, ret, bounds = probe_piece(name, i)
            clips.append(EvalClip(name, f"probe:{name}:{i}", x, ret, bounds, {}))
    say(f"blind-spot probes: {len(clips)} clips")
    feats = features(clips, specs[0], None)
    doc = {
        "title": "Blind-spot probes: X | Y | X'' with X'' changed",
        "pieces_per_probe": n,
        "probes": {
            k: dict(zip(("repeat_s", "transposition", "tempo_ratio", "melody_changed"), v))
            for k, v in BLIND_SPOT_PROBES.items()
        },
        "results": [],
    }
    for spec in specs:
        labels = [with_min_run(*recurrence_lags(h, p, spec), spec.min_run_s) for h, p in feats]
        scored = score_family_clips(clips, labels)
        rows = {}
        for name in BLIND_SPOT_PROBES:
            d = scored[name]
            rows[name] = {
                "lag_recall": d["next"]["lag_recall"],
                "recall_any_lag": d["next"]["recall"],
                "spurious_rate": d["next"]["spurious_rate"],
                "pieces_found": round(sum(r["lag_ok"] > 0 for r in d["per_clip"]) / len(d["per_clip"]), 3),
            }
            say(f"  {spec.fingerprint()} {name}: {rows[name]}")
        doc["results"].append(
            {
                "annotation_fingerprint": spec.fingerprint(),
                "annotation_spec": spec.model_dump(mode="json"),
                "probes": rows,
            }
        )
    (out / "annotation-blind-spots.json").write_text(json.dumps(doc, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=list(NEW_FAMILIES), choices=list(NEW_FAMILIES))
    ap.add_argument(
        "--count",
        action="append",
        default=[],
        metavar="FAMILY=DEV:HELD",
        help=f"pieces of a corpus family in each split (default {DEFAULT_COUNTS})",
    )
    ap.add_argument("--n-splice", type=int, default=12, help="X|Y|X' splices per split (default 12)")
    ap.add_argument("--n-unrelated", type=int, default=6, help="X|Y|Z' splices per split (default 6)")
    ap.add_argument("--dev-synthetic", type=int, default=30, help="synthetic seed-100 pieces per kind (default 30)")
    ap.add_argument("--dev-chorales", type=int, default=20, help="chorales 1..N as dev constraints (default 20)")
    ap.add_argument("--no-search", action="store_true", help="held-out report of the defaults only")
    ap.add_argument("--blind-spots", type=int, default=10, help="pieces per blind-spot probe (0: none; default 10)")
    ap.add_argument("--only-blind-spots", action="store_true", help="run the blind-spot probes only")
    ap.add_argument(
        "--no-target-check",
        action="store_true",
        help="skip validate-annotations sets A and B for a chosen setting that differs from the defaults",
    )
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="report this setting (the defaults with these fields changed) on the held-out split too",
    )
    ap.add_argument("--out", default="docs/validation", help="folder for the reports")
    ap.add_argument("--cache", default=None, help="folder to keep clip features in")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("musicinterp.annotate.labels").setLevel(logging.ERROR)  # DC / full-scale notes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    default = AnnotationSpec()
    also = [
        default.model_copy(update={k: float(v) for k, v in (kv.split("=") for kv in a.split(","))}) for a in args.also
    ]
    counts = dict(DEFAULT_COUNTS)
    for c in args.count:
        name, _, dh = c.partition("=")
        d, _, h = dh.partition(":")
        counts[name] = (int(d), int(h))
    n_dev = {k: v[0] for k, v in counts.items()}
    n_held = {k: v[1] for k, v in counts.items()}

    if args.only_blind_spots:
        blind_spots(args.blind_spots, [default, *also], out)
        return 0
    say(f"rendering {args.families}")
    clips = family_clips(
        args.families,
        n_dev,
        n_held,
        n_splice=args.n_splice,
        n_unrelated=args.n_unrelated,
        cache=str(cache / "renders") if cache else None,
        progress=lambda fam, i, n, item: say(f"  {fam} {i}/{n} {item}"),
    )
    say(f"clips: dev {len(clips['dev'])}, held {len(clips['held'])}")

    chosen, decision, rows = default, {"decision": "no search (--no-search)"}, []
    new_defaults = None
    if not args.no_search:
        dev = clips["dev"] + own_dev_clips(args.dev_synthetic, args.dev_chorales)
        say(f"dev features: {len(dev)} clips")
        feats = features(dev, default, cache / "features" if cache else None)
        rows = search(dev, feats, default)
        best, decision = choose(rows, default)
        chosen = default.model_copy(update=best["setting"])
        decision["chosen"] = best
        decision["defaults"] = next(r for r in rows if all(getattr(default, k) == v for k, v in r["setting"].items()))
        search_doc = {
            "title": "Settings search on the development split",
            "rule": "feasible: dev spurious <= 10% in every new family, synthetic no-return positives <= 2%, "
            "synthetic hard F1 >= 0.9, chorales F1 >= 0.85; objective: mean lag F1 over the new families; "
            f"settings within {TIE} of the best tie, won by the fewest changed defaults; "
            f"keep the defaults unless infeasible or beaten by >= {IMPROVEMENT}",
            "dev_clips": {k: sum(c.family == k for c in dev) for k in (*args.families, *OWN)},
            "dev_items": [c.item for c in dev],
            "grid": {
                "rec_threshold": REC_THRESHOLDS,
                "path_len_s": PATH_LENS,
                "depart_threshold": DEPARTS,
                "norm_floor": NORM_FLOORS,
                "min_run_s": MIN_RUNS,
            },
            **decision,
        }
        say(f"decision: {decision['decision']}; chosen {best['setting']}")
        if chosen != default and not args.no_target_check:
            search_doc["target_check"] = target_check(chosen)
            search_doc["new_defaults"] = search_doc["target_check"]["all_hold"]
            say(f"target check of the chosen setting: {search_doc['target_check']['verdict']}")
        else:
            search_doc["new_defaults"] = chosen != default
        new_defaults = search_doc["new_defaults"]
        search_doc["rows"] = rows
        (out / "annotation-families-dev-search.json").write_text(json.dumps(search_doc, indent=1))

    specs = [default] + [x for x in (chosen, *also) if x != default]
    specs = [x for i, x in enumerate(specs) if x not in specs[:i]]
    for spec in specs:
        name = f"annotation-families-{spec.fingerprint()}"
        say(f"held-out report: {name}")
        res = run_families(
            args.families,
            n_dev,
            n_held,
            "held",
            spec,
            n_splice=args.n_splice,
            n_unrelated=args.n_unrelated,
            clips=clips,
            progress=lambda i, n, item: say(f"  held {i}/{n} {item}") if i % 10 == 0 else None,
        )
        role = "the defaults" if spec == default else ("chosen on the dev split" if spec == chosen else "--also")
        res["role"] = role
        res["title"] += f": {role}"
        res["command"] = "python benchmarks/annotation_families.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        res["selection"] = {k: v for k, v in decision.items() if k in ("decision",)} | {
            "chosen_setting": decision.get("chosen", {}).get("setting"),
            "new_defaults": new_defaults,
        }
        (out / f"{name}.json").write_text(json.dumps(res, indent=1, default=str))
        (out / f"{name}.md").write_text(families_markdown(res))
        print(families_markdown(res))
    if args.blind_spots:
        blind_spots(args.blind_spots, specs, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
