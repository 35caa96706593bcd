"""Validation of the annotation on the project's own sources, at small size (musicinterp/annotate/README.md).

The full-size run (``musicinterp validate-annotations --synthetic 30 --chorales 20``) misses three
targets (synthetic hard F1 0.894 < 0.9, no-return positives 3.7% > 2%, chorale lag 82.5% < 90%; the
README says why). Here the targets that the full-size run meets are asserted as targets; the three
misses get floors a little below the measured values, so that a regression still fails the test.
"""

from __future__ import annotations

import json

import pytest

from musicinterp.annotate import AnnotationSpec
from musicinterp.annotate.truth import returns_from_measures
from musicinterp.annotate.validation import TARGETS, chorales_with_repeats, run_validation, validation_markdown
from musicinterp.sources.music21_source import expand


@pytest.fixture(scope="module")
def small_run():
    calls = []
    res = run_validation(n_synthetic=4, n_chorales=2, duration_s=24.0, seed=200, n_easy=2, n_no_return=2,
                         chorale_skip=0, progress=lambda done, total, what: calls.append((done, total, what)))
    return res, calls


def _target(res: dict, key: str) -> dict:
    (row,) = [t for t in res["targets"] if t["key"] == key]
    return row


def test_validation__small_run_meets_the_targets_the_full_run_meets(small_run):
    res, _ = small_run
    assert res["failures"] == []
    assert res["synthetic"]["hard"]["n_clips"] == 4 and res["synthetic"]["no_return"]["n_clips"] == 2
    assert res["chorales"]["n_clips"] == 2
    for key in ("synthetic_easy_next_f1", "synthetic_easy_prev_f1", "corpus_next_f1", "corpus_prev_f1",
                "synthetic_easy_lag", "synthetic_hard_lag"):
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
