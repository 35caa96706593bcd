"""Sources: the synthesizer, planted returns, music21 repeat expansion (checked by hand), audio decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import tone, write_wav

from musicinterp.config import AudioDirSource, Music21Source, SyntheticSource
from musicinterp.frames import SAMPLE_RATE_HZ as SR
from musicinterp.sources.audio_dir import plan_audio_dir, read_audio
from musicinterp.sources.base import ClipError, PlanFailure, cut_truth
from musicinterp.sources.music21_source import expand, plan_music21
from musicinterp.sources.synth import Note, midi_to_hz, render
from musicinterp.sources.synthetic import compose, plan_synthetic


def _peak_hz(x: np.ndarray, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()])


def _span(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return x[int(round(a * SR)) : int(round(b * SR))]


# ---- synthesizer ------------------------------------------------------------------------------------
def test_synth__note_has_its_pitch_and_length():
    x = render([Note(0.25, 1.0, 69, timbre="flute")], 2.0)
    assert x.dtype == np.float32 and len(x) == 2 * SR
    assert abs(_peak_hz(_span(x, 0.3, 1.2)) - 440.0) < 2.0
    assert np.abs(_span(x, 0.0, 0.24)).max() == 0 and np.abs(_span(x, 1.3, 2.0)).max() == 0
    assert np.abs(x).max() == pytest.approx(0.5)
    assert abs(midi_to_hz(60) - 261.63) < 0.01


def test_synth__unknown_timbre_is_named():
    with pytest.raises(ValueError, match="kazoo"):
        render([Note(0, 1, 60, timbre="kazoo")], 1.0)


# ---- synthetic pieces ---------------------------------------------------------------------------------
def test_synthetic__planted_return_repeats_the_source_and_nothing_else_does():
    recipe = {"seed": 3, "index": 0, "duration_s": 12.0, "hard": False, "returns": True}
    x, truth = compose(recipe)
    (r,) = truth["returns"]
    assert r["end_s"] - r["start_s"] == pytest.approx(r["source_end_s"] - r["source_start_s"])
    assert r["start_s"] >= r["source_end_s"] + 0.5  # the content departs before it returns
    skip = 0.05  # release tails of the preceding notes overlap the section's first 30 ms
    src = _span(x, r["source_start_s"] + skip, r["source_end_s"])
    ret = _span(x, r["start_s"] + skip, r["start_s"] + skip + len(src) / SR)
    assert np.corrcoef(src, ret)[0, 1] > 0.99
    # the same span in a piece without a return is unrelated
    y, null_truth = compose({**recipe, "returns": False})
    assert null_truth["returns"] == []
    assert abs(np.corrcoef(src, _span(y, r["start_s"] + skip, r["start_s"] + skip + len(src) / SR))[0, 1]) < 0.3
    # determinism: the locator recipe gives the same samples again
    np.testing.assert_array_equal(x, compose(recipe)[0])


def test_synthetic__hard_return_is_slower_retimbred_and_noisy():
    x, truth = compose({"seed": 5, "index": 1, "duration_s": 15.0, "hard": True, "returns": True})
    (r,) = truth["returns"]
    stretch = (r["end_s"] - r["start_s"]) / (r["source_end_s"] - r["source_start_s"])
    assert 1.03 <= stretch <= 1.06 and stretch == pytest.approx(truth["stretch"], abs=1e-5)
    assert truth["return_timbre"] != truth["timbre"] and truth["noise_snr_db"] == 20.0
    clean, _ = compose({"seed": 5, "index": 1, "duration_s": 15.0, "hard": False, "returns": True})
    # noise only over the return: elsewhere the hard and clean pieces have the same notes
    assert np.corrcoef(_span(x, 0, r["source_end_s"]), _span(clean, 0, r["source_end_s"]))[0, 1] > 0.999


def test_synthetic__no_return_fraction_is_exact_and_stable():
    spec = SyntheticSource(n_pieces=10, duration_s=4.0, no_return_fraction=0.3, seed=2)
    tracks = list(plan_synthetic(spec))
    nulls = [t.source_id for t in tracks if not t.truth["returns"]]
    assert len(nulls) == 3 and nulls == [t.source_id for t in plan_synthetic(spec) if not t.truth["returns"]]
    assert all("n-p" in s for s in nulls)
    assert len({t.source_id for t in tracks}) == 10


def test_synthetic__short_pieces_still_fit_their_return():
    for seed in range(20):
        _, truth = compose({"seed": seed, "index": 0, "duration_s": 2.0, "hard": True, "returns": True})
        (r,) = truth["returns"]
        assert 0 <= r["source_start_s"] < r["source_end_s"] < r["start_s"] < r["end_s"] <= 2.0


# ---- music21 ------------------------------------------------------------------------------------------
def test_music21__bwv269_repeat_expanded_as_checked_by_hand():
    """BWV 269 (G major, 3/4): pickup bar 0, bars 1-7 with an end-repeat after beat 2 of bar 7, then
    bar 7's last beat as the pickup to bars 8-21; bar 14 is split the same way at a phrase end (no
    repeat). Played: 0..7, 0..7, 7 (pickup), 8..14, 14 (pickup), 15..21.
    At 90 quarters per minute a quarter lasts 2/3 s; the first section is 1 + 6*3 + 2 = 21 quarters."""
    notes, truth, duration = expand("bach/bwv269", 90.0)
    order = [m["number"] for m in truth["measures"]]
    first = [0, 1, 2, 3, 4, 5, 6, 7]
    assert order == first + first + [7] + list(range(8, 15)) + [14] + list(range(15, 22))
    q = 2 / 3
    starts = {i: m["start_s"] for i, m in enumerate(truth["measures"])}
    assert starts[8] == pytest.approx(21 * q)  # bar 0 again, after the first pass
    assert starts[16] == pytest.approx(42 * q) and truth["measures"][16]["end_s"] == pytest.approx(43 * q)
    assert starts[17] == pytest.approx(43 * q)  # bar 8
    assert duration == pytest.approx((63 + 21) * q + 0.5)  # 63 quarters in the score, 21 of them twice
    # fermatas on the half notes ending bars 4 and 7 come twice; the later ones once
    fermata_starts = [f["start_s"] for f in truth["fermatas"]]
    assert fermata_starts[:4] == pytest.approx([10 * q, 19 * q, 31 * q, 40 * q])
    assert truth["key"] == {"name": "G major", "tonic_fifths": 1, "minor": False}
    # the soprano's first note (pickup) is G4 and it is played again at the repeat
    soprano = [n for n in truth["notes"] if n["part"] == 0]
    assert soprano[0]["midi"] == 67 and soprano[0]["onset_s"] == 0.0 and soprano[0]["fifths"] == 1
    again = [n for n in soprano if n["onset_s"] == pytest.approx(21 * q)]
    assert again and again[0]["midi"] == 67
    assert len(notes) == len(truth["notes"])


def test_music21__unknown_score_is_a_named_failure():
    (item,) = list(plan_music21(Music21Source(scores=["bach/bwv99999"])))
    assert isinstance(item, PlanFailure) and "bwv99999" in item.item and "corpus" in item.problem


# ---- audio files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,ext,sr", [("WAV", "wav", 44100), ("FLAC", "flac", 48000), ("OGG", "ogg", 22050)])
def test_audio__stereo_any_rate_becomes_mono_32k_same_pitch(tmp_path, fmt, ext, sr):
    path = write_wav(tmp_path / f"a.{ext}", tone(2.0, freq_hz=440, amp=0.4, sr=sr), sr, channels=2, format=fmt)
    x = read_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 2 * SR) <= 2
    assert abs(_peak_hz(x) - 440) < 2
    assert 0.35 < np.abs(x).max() < 0.45


def test_audio__bad_files_are_named(tmp_path):
    with pytest.raises(ClipError, match="nope.wav: file does not exist"):
        read_audio(tmp_path / "nope.wav")
    (tmp_path / "bad.flac").write_bytes(b"\x00" * 100)
    with pytest.raises(ClipError, match="bad.flac: cannot decode audio"):
        read_audio(tmp_path / "bad.flac")
    items = list(plan_audio_dir(AudioDirSource(path=str(tmp_path))))
    assert [type(i) for i in items] == [PlanFailure] and "bad.flac" in items[0].item
    (empty,) = list(plan_audio_dir(AudioDirSource(path=str(tmp_path / "sub"))))
    assert "folder does not exist" in empty.problem


def test_audio__locator_reloads_the_same_file(tmp_path):
    write_wav(tmp_path / "x.wav", np.full(32000, 0.25, dtype=np.float32), subtype="FLOAT")
    (track,) = list(plan_audio_dir(AudioDirSource(path=str(tmp_path), licence="CC-BY")))
    assert track.source_id == "audio_dir:x.wav" and track.licence == "CC-BY"
    assert json.loads(track.locator)["path"].endswith("x.wav")


# ---- ground truth cut with the clip ----------------------------------------------------------------------
def test_cut_truth__shifts_and_keeps_overlapping_events():
    truth = {
        "returns": [{"source_start_s": 2.0, "source_end_s": 5.0, "start_s": 32.0, "end_s": 35.0}],
        "notes": [{"onset_s": 29.5, "dur_s": 1.0, "midi": 60}, {"onset_s": 10.0, "dur_s": 1.0, "midi": 62}],
        "key": {"name": "C major"},
    }
    cut = cut_truth(truth, 30.0, 30.0)
    assert cut["returns"] == [{"source_start_s": -28.0, "source_end_s": -25.0, "start_s": 2.0, "end_s": 5.0}]
    assert cut["notes"] == [{"onset_s": -0.5, "dur_s": 1.0, "midi": 60}]
    assert cut["key"] == {"name": "C major"}
