"""The slice: cutting tracks into clips, ground truth with them, shards, manifest, integrity on reload."""

from __future__ import annotations

import numpy as np
import pytest
from factories import tone, write_tone

from musicinterp.config import SliceSpec
from musicinterp.frames import SAMPLE_RATE_HZ as SR
from musicinterp.slice import Manifest, _deal, load_clip_audio, plan_slice
from musicinterp.sources.base import ClipError


def test_slice__long_file_is_cut_at_clip_s_and_short_tail_dropped(tmp_path):
    write_tone(tmp_path / "long.wav", 61.5)
    write_tone(tmp_path / "tail.wav", 30.4)
    m = plan_slice(SliceSpec(sources=[{"kind": "audio_dir", "path": str(tmp_path)}], n_shards=3))
    got = {c.clip_id: (c.offset_s, c.duration_s, c.n_frames) for c in m.clips}
    assert got == {
        "audio_dir:long.wav@0s": (0.0, 30.0, 1500),
        "audio_dir:long.wav@30s": (30.0, 30.0, 1500),
        "audio_dir:long.wav@60s": (60.0, 1.5, 75),
        "audio_dir:tail.wav@0s": (0.0, 30.0, 1500),  # its 0.4 s tail is shorter than min_clip_s
    }
    assert not m.failures and {c.source_id for c in m.clips} == {"audio_dir:long.wav", "audio_dir:tail.wav"}


def test_slice__reloaded_clip_is_the_planned_clip_and_changes_are_refused(tmp_path):
    write_tone(tmp_path / "a.wav", 35.0)
    m = plan_slice(SliceSpec(sources=[{"kind": "audio_dir", "path": str(tmp_path)}], n_shards=1))
    second = m.clips[1]
    x = load_clip_audio(second)
    assert len(x) == second.n_samples == 5 * SR
    np.testing.assert_array_equal(x, tone(35.0, freq_hz=330.0)[30 * SR:])
    write_tone(tmp_path / "a.wav", 35.0, freq_hz=331.0)
    with pytest.raises(ClipError, match=r"audio_dir:a.wav@30s: audio changed since the slice was planned"):
        load_clip_audio(second)
    (tmp_path / "a.wav").unlink()
    with pytest.raises(ClipError, match=r"audio_dir:a.wav@0s: cannot load .*a.wav: file does not exist"):
        load_clip_audio(m.clips[0])


def test_slice__silent_clip_is_kept_and_flagged(tmp_path):
    write_tone(tmp_path / "quiet.wav", 2.0, amp=0.0)
    write_tone(tmp_path / "loud.wav", 2.0)
    m = plan_slice(SliceSpec(sources=[{"kind": "audio_dir", "path": str(tmp_path)}]))
    assert {c.clip_id: c.silent for c in m.clips} == {"audio_dir:loud.wav@0s": False, "audio_dir:quiet.wav@0s": True}


def test_slice__synthetic_truth_travels_with_its_clip():
    spec = SliceSpec(sources=[{"kind": "synthetic", "n_pieces": 2, "duration_s": 40.0, "seed": 1}], clip_s=20.0)
    m = plan_slice(spec)
    assert [c.clip_id for c in m.clips] == ["synthetic:s1-p0000@0s", "synthetic:s1-p0000@20s",
                                            "synthetic:s1-p0001@0s", "synthetic:s1-p0001@20s"]
    for c in m.clips:
        for r in c.truth["returns"]:
            assert r["start_s"] < c.duration_s and r["end_s"] > 0  # kept only where the clip holds part of it
    whole = [c for c in m.clips if c.offset_s == 0][0].truth["returns"][0]
    later = [c for c in m.clips if c.offset_s == 20 and c.source_id.endswith("0000")][0].truth["returns"]
    for r in later:
        assert r["start_s"] == pytest.approx(whole["start_s"] - 20)


def test_slice__shards_balance_durations_and_the_manifest_round_trips(tmp_path):
    spec = SliceSpec(sources=[{"kind": "synthetic", "n_pieces": 2, "duration_s": 9.0},
                              {"kind": "synthetic", "n_pieces": 4, "duration_s": 3.0, "seed": 7}], n_shards=2)
    m = plan_slice(spec)
    loads = [sum(c.duration_s for c in m.shard(s)) for s in range(2)]
    assert loads == [15.0, 15.0]
    m.to_json(tmp_path / "manifest.json")
    back = Manifest.from_json(tmp_path / "manifest.json")
    assert back == m
    assert plan_slice(spec) == m  # planning is deterministic


def test_slice__more_shards_than_clips_gives_one_clip_per_shard():
    m = plan_slice(SliceSpec(sources=[{"kind": "synthetic", "n_pieces": 2, "duration_s": 2.0}], n_shards=8))
    assert m.n_shards == 2 and sorted(c.shard for c in m.clips) == [0, 1]


def test_deal__longest_first_to_least_loaded():
    # 5 -> shard 0; 3 -> shard 1; 3 -> shard 1 (3 < 5); 1 -> shard 0 (5 < 6)
    assert _deal([1, 5, 3, 3], 2) == [0, 0, 1, 1]


def test_slice__duplicate_sources_get_distinct_clip_ids(tmp_path):
    write_tone(tmp_path / "a.wav", 2.0)
    src = {"kind": "audio_dir", "path": str(tmp_path)}
    m = plan_slice(SliceSpec(sources=[src, src]))
    assert [c.clip_id for c in m.clips] == ["audio_dir:a.wav@0s", "audio_dir:a.wav@0s#2"]
