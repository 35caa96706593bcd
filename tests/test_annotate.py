"""Annotation: known answers for recurrence and tension labels, bad input, causality."""

from __future__ import annotations

import numpy as np
import pytest
from factories import chord, midi_hz, noise, note, planted_piece, section, tone

from musicinterp.annotate import AnnotationSpec, annotate, annotate_full, to_csv
from musicinterp.frames import FRAME_RATE_HZ, HOP_SAMPLES, SAMPLE_RATE_HZ, n_frames
from musicinterp.sources.base import ClipError

SR = SAMPLE_RATE_HZ
SPEC = AnnotationSpec()


@pytest.fixture(scope="module")
def planted():
    y, a0, r0 = planted_piece(1)
    return y, annotate_full(y, SPEC, clip_id="planted-1")


# ---- recurrence ---------------------------------------------------------------------------------
def test_recurrence__planted_return_found_at_its_lag(planted):
    _, ann = planted
    lab = ann.labels
    src = slice(int(0.3 * FRAME_RATE_HZ), int(3.7 * FRAME_RATE_HZ))
    ok = lab["rec_lag_next_s_valid"][src]
    assert ok.mean() > 0.9
    assert np.all(np.abs(lab["rec_lag_next_s"][src][ok] - 9.0) < 0.3)
    ret = slice(int(9.3 * FRAME_RATE_HZ), int(12.7 * FRAME_RATE_HZ))
    okp = lab["rec_lag_prev_s_valid"][ret]
    assert okp.mean() > 0.9
    assert np.all(np.abs(lab["rec_lag_prev_s"][ret][okp] - 9.0) < 0.3)
    # frames of B and D are not returns (a few chance frames at most)
    other = np.r_[int(4.7 * 50) : int(8.3 * 50), int(13.7 * 50) : len(lab["time"])]
    assert lab["rec_lag_next_s_valid"][other].mean() < 0.1
    assert lab["rec_strength"][src].min() > SPEC.rec_threshold


def test_recurrence__horizon_labels_agree_with_lag(planted):
    _, ann = planted
    lab = ann.labels
    for h in (2, 4, 8):
        v, ok = lab[f"rec_within_{h}s"], lab[f"rec_within_{h}s_valid"]
        pos = lab["rec_lag_next_s_valid"] & (lab["rec_lag_next_s"] <= h)
        assert np.array_equal(v.astype(bool), pos)
        assert np.all(ok[pos])


def test_recurrence__validity_masks_false_near_clip_end(planted):
    _, ann = planted
    lab = ann.labels
    n = len(lab["time"])
    for h in (2, 4, 8):
        ok = lab[f"rec_within_{h}s_valid"]
        tail = slice(n - h * FRAME_RATE_HZ + 1, n)
        assert not ok[tail][lab[f"rec_within_{h}s"][tail] == 0].any()
        assert ok[: n - h * FRAME_RATE_HZ].all()
        assert not lab[f"res_within_{h}s_valid"][tail][lab[f"res_within_{h}s"][tail] == 0].any()


def test_recurrence__sustained_chord_and_drone_are_not_recurrence():
    organ = chord([midi_hz(m) for m in (48, 55, 60, 64)], 12.0, amp=0.1, partials=((1, 1), (2, 0.5), (3, 0.3)))
    tremolo = 1 + tone(12.0, freq_hz=0.5, amp=0.3)
    drone = tone(12.0, freq_hz=110, amp=1.0, partials=((1, 0.3), (1.5, 0.2))) * tremolo
    for name, y in (("chord", organ), ("drone", drone)):
        lab = annotate(y, SPEC, clip_id=name)
        assert lab["rec_lag_next_s_valid"].sum() == 0, name
        assert lab["rec_lag_prev_s_valid"].sum() == 0, name


def test_recurrence__chord_that_departs_and_returns_is_recurrence():
    rng = np.random.default_rng(5)
    held = sum(note(m, 3.0) for m in (48, 55, 64))
    y = np.concatenate([held, section(rng, 4.0), held, section(rng, 3.0)])
    lab = annotate(y, SPEC, clip_id="chord-return")
    src = slice(int(0.5 * 50), int(2.5 * 50))
    assert lab["rec_lag_next_s_valid"][src].mean() > 0.8
    lags = lab["rec_lag_next_s"][src][lab["rec_lag_next_s_valid"][src]]
    assert np.all(np.abs(lags - 7.0) < 0.75)  # a held chord matches over a band of lags


def test_recurrence__adjacent_repeat_within_min_lag_is_not_recurrence():
    rng = np.random.default_rng(7)
    motif = section(rng, 0.75)
    y = np.concatenate([section(rng, 4.0), motif, motif, section(rng, 5.0)])
    lab = annotate(y, SPEC, clip_id="adjacent")
    assert not (lab["rec_lag_next_s_valid"] & (lab["rec_lag_next_s"] < SPEC.min_lag_s)).any()
    region = slice(int(4.0 * 50), int(5.5 * 50))
    assert lab["rec_lag_next_s_valid"][region].mean() < 0.1


def test_recurrence__white_noise_and_no_return_piece_give_almost_no_positives():
    assert annotate(noise(15.0, std=0.1, seed=0), SPEC, clip_id="noise")["rec_lag_next_s_valid"].mean() <= 0.02
    y, _, _ = planted_piece(2, ret=False)
    assert annotate(y, SPEC, clip_id="no-return")["rec_lag_next_s_valid"].mean() <= 0.05


def test_recurrence__causal_rate_ignores_the_future():
    y, _, _ = planted_piece(3)
    cut_frame = 600  # 12 s
    y2 = y.copy()
    # change everything the model at frame cut_frame has not heard: samples >= (cut_frame + 1) * hop
    y2[(cut_frame + 1) * HOP_SAMPLES :] = np.random.default_rng(1).normal(
        0, 0.1, len(y) - (cut_frame + 1) * HOP_SAMPLES
    )
    r1 = annotate(y, SPEC, clip_id="causal-a")["rec_rate_causal"]
    r2 = annotate(y2, SPEC, clip_id="causal-b")["rec_rate_causal"]
    assert np.array_equal(r1[: cut_frame + 1], r2[: cut_frame + 1])
    assert r1[cut_frame] > 0  # the return (9-13 s) has been heard by 12 s
    assert not np.array_equal(r1, r2)


# ---- tension ------------------------------------------------------------------------------------
def test_tension__rises_with_dissonance_and_loudness():
    rng = np.random.default_rng(11)
    calm = np.concatenate([section(rng, 4.0) for _ in range(2)])
    dis = calm + chord((466.2, 493.9, 523.3, 554.4), 8.0, amp=0.15)  # a cluster
    y = np.concatenate([calm, 2.0 * dis])
    lab = annotate(y, SPEC, clip_id="tension")
    half = len(lab["time"]) // 2
    first, second = lab["tension"][50 : half - 50].mean(), lab["tension"][half + 50 : -50].mean()
    assert second > first + 0.5
    assert lab["tension_dissonance"][half + 50 : -50].mean() > lab["tension_dissonance"][50 : half - 50].mean()


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_input__silence_is_rejected_naming_the_clip():
    with pytest.raises(ClipError, match="quiet-one.*silent"):
        annotate(np.zeros(5 * SR, dtype=np.float32), SPEC, clip_id="quiet-one")


def test_bad_input__short_clip_is_rejected():
    with pytest.raises(ClipError, match="tiny-clip.*too short"):
        annotate(np.ones(SR // 2, dtype=np.float32) * 0.1, SPEC, clip_id="tiny-clip")


def test_bad_input__nan_and_integer_samples_are_rejected():
    y = planted_piece(4)[0]
    y[100] = np.nan
    with pytest.raises(ClipError, match="nan-clip.*NaN"):
        annotate(y, SPEC, clip_id="nan-clip")
    with pytest.raises(ClipError, match="int-clip.*dtype int16"):
        annotate(np.zeros(3 * SR, dtype=np.int16), SPEC, clip_id="int-clip")


def test_bad_input__dc_offset_clipping_stereo_and_rate_are_handled(planted):
    y, ann = planted
    base = ann.labels
    with_dc = annotate(y + 0.3, SPEC, clip_id="dc")
    assert np.array_equal(with_dc["rec_lag_next_s_valid"], base["rec_lag_next_s_valid"])
    clipped = annotate(np.clip(4 * y, -1, 1), SPEC, clip_id="clipped")
    stereo = annotate(np.stack([y, y], axis=1), SPEC, clip_id="stereo")
    assert np.array_equal(stereo["rec_lag_next_s_valid"], base["rec_lag_next_s_valid"])
    from scipy.signal import resample_poly

    y44 = resample_poly(y, 441, 320).astype(np.float32)
    at44 = annotate(y44, SPEC, clip_id="44k", sample_rate_hz=44_100)
    assert abs(len(at44["time"]) - len(base["time"])) <= 1
    for lab in (with_dc, clipped, stereo, at44):
        _assert_no_nan_where_valid(lab)


def _assert_no_nan_where_valid(lab: dict[str, np.ndarray]) -> None:
    n = len(lab["time"])
    for k, v in lab.items():
        assert len(v) == n, k
        if v.dtype.kind == "f":
            assert np.isfinite(v).all(), k


def test_labels__length_grid_and_csv(planted, tmp_path):
    y, ann = planted
    lab = ann.labels
    assert len(lab["time"]) == n_frames(len(y))
    _assert_no_nan_where_valid(lab)
    path = to_csv(lab, tmp_path / "labels.csv")
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:5] == ["time", "rec_lag_next_s", "rec_within_4s", "rec_within_8s", "tension"]
    assert len(lines) == len(lab["time"]) + 1
    last = lines[-1].split(",")
    assert last[header.index("rec_within_8s")] == "" or last[header.index("rec_within_8s")] == "1"
    first_b = lines[1 + int(6 * FRAME_RATE_HZ)].split(",")  # inside B: no recurrence -> empty lag
    assert first_b[1] == ""


# ---- validation at small size -------------------------------------------------------------------
def test_validate__small_synthetic_set_meets_targets():
    from musicinterp.annotate.scoring import validate_recurrence
    from musicinterp.annotate.truth import returns_from_measures

    clips = []
    for seed in (21, 22, 23):
        y, a0, r0 = planted_piece(seed)
        clips.append((f"ret-{seed}", y, [{"source_start_s": 0.0, "source_end_s": 4.0, "start_s": 9.0, "end_s": 13.0}]))
        clips.append((f"null-{seed}", planted_piece(seed, ret=False)[0], []))
    res = validate_recurrence(clips)
    assert res["next"]["f1"] >= 0.9 and res["prev"]["f1"] >= 0.9
    assert res["next"]["lag_within_0.5s"] >= 0.9
    assert res["no_return_positive_rate"] <= 0.05
    # measures -> returns: |: m1 m2 :| then m3 split in two halves of one number (not a return)
    meas = [
        {"start_s": 0, "end_s": 2, "number": 1},
        {"start_s": 2, "end_s": 4, "number": 2},
        {"start_s": 4, "end_s": 6, "number": 1},
        {"start_s": 6, "end_s": 8, "number": 2},
        {"start_s": 8, "end_s": 9.5, "number": 3},
        {"start_s": 9.5, "end_s": 10, "number": 3},
    ]
    assert returns_from_measures(meas) == [{"source_start_s": 0.0, "source_end_s": 4.0, "start_s": 4.0, "end_s": 8.0}]


def test_recurrence__short_matches_are_dropped_long_runs_kept():
    from musicinterp.annotate.recurrence import keep_runs

    lag = np.full(30, -1)
    lag[2:5] = 40  # 3 frames: a chance match
    lag[10:25] = [50, 51, 49, 50, 80, 81, 80, 50, 50, 50, 51, 50, 50, 50, 50]  # 15 frames, jittering lag
    kept = keep_runs(lag, min_run=10)
    assert (kept[2:5] == -1).all()
    np.testing.assert_array_equal(kept[10:25], lag[10:25])
    assert (kept[:10] == -1).all() and (kept[25:] == -1).all()
