"""Validation of the annotation on the project's own sources, at small size (musicinterp/annotate/README.md).

The full-size run (``musicinterp validate-annotations --synthetic 30 --chorales 20``) misses three
targets (synthetic hard F1 0.894 < 0.9, no-return positives 3.7% > 2%, chorale lag 82.5% < 90%; the
README says why). Here the targets that the full-size run meets are asserted as targets; the three
misses get floors a little below the measured values, so that a regression still fails the test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from musicinterp.annotate import AnnotationSpec
from musicinterp.annotate.truth import returns_from_measures
from musicinterp.annotate.validation import TARGETS, chorales_with_repeats, run_validation, validation_markdown
from musicinterp.sources.music21_source import expand


@pytest.fixture(scope="module")
def small_run():
    calls = []
    res = run_validation(
        n_synthetic=4,
        n_chorales=2,
        duration_s=24.0,
        seed=200,
        n_easy=2,
        n_no_return=2,
        chorale_skip=0,
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    return res, calls


def _target(res: dict, key: str) -> dict:
    (row,) = [t for t in res["targets"] if t["key"] == key]
    return row


def test_validation__small_run_meets_the_targets_the_full_run_meets(small_run):
    res, _ = small_run
    assert res["failures"] == []
    assert res["synthetic"]["hard"]["n_clips"] == 4 and res["synthetic"]["no_return"]["n_clips"] == 2
    assert res["chorales"]["n_clips"] == 2
    for key in (
        "synthetic_easy_next_f1",
        "synthetic_easy_prev_f1",
        "corpus_next_f1",
        "corpus_prev_f1",
        "synthetic_easy_lag",
        "synthetic_hard_lag",
    ):
        row = _target(res, key)
        assert row["pass"] is True, row
    # the full-size misses: floors below the measured values (0.894, 3.7%, 82.5% at full size)
    assert res["synthetic"]["hard"]["next"]["f1"] >= 0.85
    assert res["synthetic"]["no_return"]["next"]["positive_frame_rate"] <= 0.08
    assert res["chorales"]["recurrence"]["next"]["lag_within_0.5s"] >= 0.7
    # tension on the chorales: real, if small, agreement with the score
    assert res["chorales"]["tension"]["strain_r_median"] >= 0.5
    ra = res["chorales"]["tension"]["resolution_vs_fermatas"]
    assert ra["event_on_cadence_rate"] > ra["shifted_rate_mean"]


def test_validation__targets_agree_with_their_values_and_the_report_is_json(small_run):
    res, calls = small_run
    assert len(res["targets"]) == len(TARGETS)
    for t in res["targets"]:
        if t["pass"] is not None:
            assert t["pass"] == (t["value"] >= t["threshold"] if t["op"] == ">=" else t["value"] <= t["threshold"])
    assert res["passed"] == all(t["pass"] for t in res["targets"] if t["pass"] is not None)
    json.loads(json.dumps(res))
    md = validation_markdown(res)
    assert "| synthetic hard | 4 |" in md and "| chorales | 2 |" in md and "## Targets" in md
    total = 4 + 2 + 2 + 2
    assert calls[-1][:2] == (total, total)
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)


def test_validation__broken_spec_fails_the_no_return_target():
    res = run_validation(n_synthetic=0, n_chorales=0, n_no_return=2, spec=AnnotationSpec(rec_threshold=0.05))
    row = _target(res, "no_return_positive_rate")
    assert row["pass"] is False and row["value"] > 0.1
    assert res["passed"] is False
    # sets that were not run are reported as not measured, never as passing
    assert _target(res, "synthetic_hard_next_f1")["pass"] is None
    assert _target(res, "corpus_next_f1")["pass"] is None
    assert "FAIL" in validation_markdown(res)


def test_chorales_with_repeats__skip_and_truth():
    first_two = chorales_with_repeats(2)
    assert len(set(first_two)) == 2
    assert chorales_with_repeats(1, skip=1) == first_two[1:]
    for path in first_two:
        _, truth, _ = expand(path)
        assert returns_from_measures(truth["measures"])
    assert chorales_with_repeats(0) == []
    with pytest.raises(ValueError, match="n and skip"):
        chorales_with_repeats(-1)


# ---- music the project did not make: corpus families and splices (musicinterp.annotate.families)


def _plain_piece(index: int, seconds: float) -> np.ndarray:
    """The first seconds of a synthetic piece without a return (its sections are in different keys, so
    nothing inside it recurs)."""
    from musicinterp.frames import SAMPLE_RATE_HZ
    from musicinterp.sources.synthetic import compose

    x, truth = compose({"seed": 7, "index": 1000 + index, "duration_s": 24.0, "hard": False, "returns": False})
    assert truth["returns"] == []
    return x[: int(seconds * SAMPLE_RATE_HZ)]


@pytest.fixture(scope="module")
def spliced():
    from musicinterp.annotate.families import splice
    from musicinterp.annotate.validation import SPLICE, EvalClip

    x, y, z = _plain_piece(0, 8.0), _plain_piece(1, 9.0), _plain_piece(2, 8.0)
    ret = splice(x, y, seed=1)
    unrel = splice(x, y, z, seed=1)
    return [EvalClip(SPLICE, name, s, r, b, {}) for name, (s, r, b) in (("xyx", ret), ("xyz", unrel))]


def test_splice__construction_is_exact(spliced):
    from musicinterp.annotate.families import RETURN_GAIN_DB
    from musicinterp.frames import HOP_SAMPLES, SAMPLE_RATE_HZ

    ret, unrel = spliced
    a, b, c = ret.bounds_s[1:]
    assert (a, b, c) == (8.0, 17.0, 25.0) and a * SAMPLE_RATE_HZ % HOP_SAMPLES == 0
    assert ret.returns == [{"source_start_s": 0.0, "source_end_s": 8.0, "start_s": 17.0, "end_s": 25.0}]
    assert unrel.returns == [] and unrel.bounds_s == ret.bounds_s
    x, xp = ret.samples[: int(a * SAMPLE_RATE_HZ)], ret.samples[int(b * SAMPLE_RATE_HZ) :]
    gain_db = 10 * np.log10(np.mean(xp.astype(np.float64) ** 2) / np.mean(x.astype(np.float64) ** 2))
    assert RETURN_GAIN_DB - 1.5 < gain_db < RETURN_GAIN_DB + 0.5  # -3 dB, less the low-passed highs, plus noise
    np.testing.assert_array_equal(ret.samples[: len(x)], unrel.samples[: len(x)])


def test_families_harness__finds_a_known_return_and_no_return_in_an_unrelated_splice(spliced):
    """The harness's fast path gives annotate's labels; the splice X|Y|X' is found at the true lag and
    the unrelated X|Y|Z' has no recurrence across segments."""
    from musicinterp.annotate import annotate
    from musicinterp.annotate.validation import (
        SPLICE,
        family_targets,
        recurrence_features,
        recurrence_lags,
        score_family_clips,
        with_min_run,
    )

    spec = AnnotationSpec()
    labels = []
    for clip in spliced:
        hpcp, present = recurrence_features(clip.samples, spec, clip.item)
        labels.append(with_min_run(*recurrence_lags(hpcp, present, spec), spec.min_run_s))
    full = annotate(spliced[0].samples, spec)
    for k in ("rec_lag_next_s", "rec_lag_next_s_valid", "rec_lag_prev_s", "rec_lag_prev_s_valid"):
        np.testing.assert_array_equal(full[k], labels[0][k], err_msg=k)

    res = score_family_clips(spliced, labels)[SPLICE]
    ret, unrel = res["return"], res["unrelated"]
    assert ret["lag_recall"] >= 0.8 and ret["spurious_rate"] <= 0.01, ret
    assert unrel["tp"] + unrel["fp"] == 0 and unrel["frames"] > 1000, unrel
    assert res["returns_found"] == 1.0
    rows = {(t["family"], t["metric"]): t for t in family_targets({SPLICE: res})}
    assert rows[(SPLICE, "lag_recall")]["pass"] and rows[(SPLICE, "spurious_rate")]["pass"]


def test_score_splice__counts_across_segments_only():
    from musicinterp.annotate.scoring import RecurrenceScore, score_splice
    from musicinterp.frames import FRAME_RATE_HZ

    n = 30 * FRAME_RATE_HZ  # X 0-10 s, Y 10-20 s, X' 20-30 s
    t = np.arange(n) / FRAME_RATE_HZ
    lag = np.zeros(n, dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    lag[(t >= 1) & (t < 5)], ok[(t >= 1) & (t < 5)] = 20.0, True  # the return, at the true lag
    lag[(t >= 5) & (t < 6)], ok[(t >= 5) & (t < 6)] = 3.0, True  # inside X: not scored
    lag[(t >= 12) & (t < 13)], ok[(t >= 12) & (t < 13)] = 10.0, True  # Y -> X': spurious
    labels = {"time": t, "rec_lag_next_s": lag, "rec_lag_next_s_valid": ok}
    ret = [{"source_start_s": 0.0, "source_end_s": 10.0, "start_s": 20.0, "end_s": 30.0}]
    s = RecurrenceScore()
    row = score_splice(labels, [0.0, 10.0, 20.0, 30.0], ret, s)
    assert row["within_segment"] == FRAME_RATE_HZ
    assert row["lag_ok"] == row["tp"] == 4 * FRAME_RATE_HZ
    assert row["fp"] == FRAME_RATE_HZ
    # X frames with nothing reported are misses, except the 4-5 frames within 0.1 s of the boundary at 10 s
    assert 10 * FRAME_RATE_HZ - 4 * FRAME_RATE_HZ - FRAME_RATE_HZ - row["fn"] in (4, 5)


def test_family_render__one_tune_with_exact_repeat_truth():
    from musicinterp.annotate.families import FAMILIES, HELD_OUT_COLLECTIONS, render_item, returned_in_clip

    assert not any(set(f.collections) & set(HELD_OUT_COLLECTIONS) for f in FAMILIES.values())
    item = "ryansMammoth/KatyIsWaitingJig.abc"  # a jig whose first strain is played twice (repeat sign)
    clip = render_item("ryans", item)
    np.testing.assert_array_equal(clip.samples, render_item("ryans", item).samples)  # tempo, timbre: from the item
    fam = FAMILIES["ryans"]
    assert fam.tempo_bpm[0] <= clip.tempo_bpm <= fam.tempo_bpm[1] and clip.timbres[0] in {t[0] for t in fam.timbres}
    assert len(clip.samples) / 32000 == pytest.approx(clip.clip_s) and clip.clip_s <= fam.clip_s
    # the repeated strain: every return at one lag, 12 s of it inside the clip
    lags = {round(r["start_s"] - r["source_start_s"], 2) for r in clip.returns}
    assert len(lags) == 1 and returned_in_clip(clip.returns, clip.clip_s) >= 12.0


def test_run_families__report_from_given_clips(spliced):
    from musicinterp.annotate.validation import SPLICE, families_markdown, run_families

    res = run_families([SPLICE], 0, 0, "held", clips={"dev": [], "held": spliced})
    json.loads(json.dumps(res, default=str))
    fam = res["families"][SPLICE]
    assert fam["n_clips"] == 2 and fam["n_return"] == 1 and fam["n_unrelated"] == 1
    assert res["passed"] is True and res["failures"] == []
    assert res["settings"]["annotation_fingerprint"] == AnnotationSpec().fingerprint()
    md = families_markdown(res)
    assert "| splice | 2 |" in md and "Unrelated splices" in md
    with pytest.raises(ValueError, match="split"):
        run_families([SPLICE], 0, 0, "test", clips={"dev": [], "held": spliced})
