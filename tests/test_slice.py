"""The slice: cutting tracks into clips, ground truth with them, shards, manifest, integrity on reload."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from factories import tone, write_tone
from hypothesis import given, settings
from hypothesis import strategies as st

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
    np.testing.assert_array_equal(x, tone(35.0, freq_hz=330.0)[30 * SR :])
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
    assert [c.clip_id for c in m.clips] == [
        "synthetic:s1-p0000@0s",
        "synthetic:s1-p0000@20s",
        "synthetic:s1-p0001@0s",
        "synthetic:s1-p0001@20s",
    ]
    for c in m.clips:
        for r in c.truth["returns"]:
            assert r["start_s"] < c.duration_s and r["end_s"] > 0  # kept only where the clip holds part of it
    whole = [c for c in m.clips if c.offset_s == 0][0].truth["returns"][0]
    later = [c for c in m.clips if c.offset_s == 20 and c.source_id.endswith("0000")][0].truth["returns"]
    for r in later:
        assert r["start_s"] == pytest.approx(whole["start_s"] - 20)


def test_slice__shards_balance_durations_and_the_manifest_round_trips(tmp_path):
    spec = SliceSpec(
        sources=[
            {"kind": "synthetic", "n_pieces": 2, "duration_s": 9.0},
            {"kind": "synthetic", "n_pieces": 4, "duration_s": 3.0, "seed": 7},
        ],
        n_shards=2,
    )
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


# ---- the dealing, against brute force ---------------------------------------------------------------------
CLIP_DURATIONS = st.lists(st.integers(1, 3000).map(lambda cs: cs / 100), max_size=40)  # 0.01-30 s, as cut


def _deal_by_hand(durations: list[float], n_shards: int) -> list[int]:
    """The documented rule, spelled out: longest first (ties: earlier clip), to the least-loaded shard
    (ties: lowest shard)."""
    loads = [0.0] * n_shards
    shard_of = [0] * len(durations)
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        s = min(range(n_shards), key=lambda s: (loads[s], s))
        shard_of[i] = s
        loads[s] += durations[i]
    return shard_of


def _loads(durations: list[float], shard_of: list[int] | tuple[int, ...], n_shards: int) -> list[float]:
    loads = [0.0] * n_shards
    for d, s in zip(durations, shard_of):
        loads[s] += d
    return loads


@settings(max_examples=200, deadline=None)
@given(CLIP_DURATIONS, st.integers(1, 12))
def test_deal__matches_the_rule_by_hand_and_is_deterministic(durations, n_shards):
    shards = _deal(durations, n_shards)
    assert shards == _deal_by_hand(durations, n_shards)
    assert _deal(list(durations), n_shards) == shards


@settings(max_examples=200, deadline=None)
@given(CLIP_DURATIONS, st.integers(1, 12))
def test_deal__every_clip_in_one_shard_and_no_shard_empty(durations, n_shards):
    n_shards = max(1, min(n_shards, len(durations)))  # as plan_slice does
    shards = _deal(durations, n_shards)
    assert len(shards) == len(durations) and all(0 <= s < n_shards for s in shards)
    assert set(shards) == set(range(n_shards)) or not durations


@settings(max_examples=200, deadline=None)
@given(CLIP_DURATIONS.filter(bool), st.integers(1, 12))
def test_deal__shard_times_differ_by_at_most_the_longest_clip(durations, n_shards):
    loads = _loads(durations, _deal(durations, n_shards), n_shards)
    assert max(loads) - min(loads) <= max(durations) + 1e-9


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.floats(0.5, 30.0), st.integers(1, 12))
def test_deal__equal_clips_split_evenly(n_clips, seconds, n_shards):
    counts = np.bincount(_deal([seconds] * n_clips, n_shards), minlength=n_shards)
    assert counts.max() - counts.min() <= 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 3000).map(lambda cs: cs / 100), min_size=1, max_size=7), st.integers(2, 3))
def test_deal__longest_shard_within_graham_bound_of_the_best_split(durations, n_shards):
    """Longest-first greedy is within 4/3 - 1/(3m) of the best split (Graham 1969); the best by trying all."""
    longest = max(_loads(durations, _deal(durations, n_shards), n_shards))
    best = min(
        max(_loads(durations, split, n_shards)) for split in itertools.product(range(n_shards), repeat=len(durations))
    )
    assert longest <= (4 / 3 - 1 / (3 * n_shards)) * best + 1e-9


def test_slice__duplicate_sources_get_distinct_clip_ids(tmp_path):
    write_tone(tmp_path / "a.wav", 2.0)
    src = {"kind": "audio_dir", "path": str(tmp_path)}
    m = plan_slice(SliceSpec(sources=[src, src]))
    assert [c.clip_id for c in m.clips] == ["audio_dir:a.wav@0s", "audio_dir:a.wav@0s#2"]
