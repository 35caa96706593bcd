"""The benchmark slice: tracks from the sources, cut into clips of at most ``clip_s``, dealt into shards.

The manifest is the run's contract: every clip with its provenance (source, locator, offset,
duration, sha256 of the decoded float32 samples, licence), its ground truth and its shard. Capture
reloads a clip from its locator and refuses it when the samples no longer hash to the manifest's
sha256, so a store never mixes two versions of an input.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import fsspec
import numpy as np

from musicinterp.config import SILENCE_PEAK_FS, SliceSpec
from musicinterp.frames import SAMPLE_RATE_HZ, n_frames
from musicinterp.sources.audio_dir import load_audio_dir, plan_audio_dir
from musicinterp.sources.base import ClipError, PlanFailure, Track, cut_truth
from musicinterp.sources.cue import load_cue, plan_cue
from musicinterp.sources.music21_source import load_music21, plan_music21
from musicinterp.sources.synthetic import load_synthetic, plan_synthetic

log = logging.getLogger(__name__)

_PLANNERS: dict[str, Callable[[Any], Iterator[Track | PlanFailure]]] = {
    "synthetic": plan_synthetic,
    "music21": plan_music21,
    "audio_dir": plan_audio_dir,
    "cue": plan_cue,
}
_LOADERS: dict[str, Callable[[str], np.ndarray]] = {
    "synthetic": load_synthetic,
    "music21": load_music21,
    "audio_dir": load_audio_dir,
    "cue": load_cue,
}


@dataclass(frozen=True)
class ClipRecord:
    clip_id: str
    source: str
    source_id: str
    locator: str
    offset_s: float
    duration_s: float
    n_samples: int
    n_frames: int
    sha256: str
    licence: str | None
    silent: bool
    shard: int
    truth: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    slice_fingerprint: str
    n_shards: int
    clips: list[ClipRecord]
    failures: list[PlanFailure]

    def shard(self, i: int) -> list[ClipRecord]:
        return [c for c in self.clips if c.shard == i]

    def to_json(self, url: str) -> None:
        fs, path = fsspec.core.url_to_fs(str(url))
        data = {
            "slice_fingerprint": self.slice_fingerprint,
            "n_shards": self.n_shards,
            "clips": [asdict(c) for c in self.clips],
            "failures": [asdict(f) for f in self.failures],
        }
        with fs.open(path, "w") as f:
            json.dump(data, f, indent=1)

    @classmethod
    def from_json(cls, url) -> Manifest:
        try:
            with fsspec.open(str(url), "r") as f:
                data = json.load(f)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"manifest {url} does not exist; plan the run first") from e
        return cls(
            slice_fingerprint=data["slice_fingerprint"],
            n_shards=data["n_shards"],
            clips=[ClipRecord(**c) for c in data["clips"]],
            failures=[PlanFailure(**f) for f in data["failures"]],
        )


def sha256_of(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype="<f4").tobytes()).hexdigest()


def check_audio(samples: np.ndarray, item: str, min_s: float) -> None:
    """Reject empty, non-finite or too short audio with a message that names ``item``."""
    if samples.ndim != 1:
        raise ClipError(item, f"expected mono samples, got shape {samples.shape}")
    if len(samples) == 0:
        raise ClipError(item, "holds no samples (empty audio)")
    bad = int((~np.isfinite(samples)).sum())
    if bad:
        raise ClipError(item, f"{bad} samples are NaN or infinite")
    seconds = len(samples) / SAMPLE_RATE_HZ
    if seconds < min_s:
        raise ClipError(item, f"is {seconds:.2f} s long; clips shorter than min_clip_s={min_s:g} s are rejected")


def _cut(track: Track, spec: SliceSpec) -> Iterator[tuple[float, np.ndarray]]:
    """(offset s, samples) windows of at most ``clip_s``; a tail shorter than ``min_clip_s`` is dropped."""
    step = int(round(spec.clip_s * SAMPLE_RATE_HZ))
    x = track.samples
    if x is None:  # every planner decodes its tracks; a new one that does not is a bug, named here
        raise ValueError(f"{track.source_id}: the source planned a track without its samples")
    if len(x) == 0:
        yield 0.0, x  # so that the check names the empty input
        return
    for start in range(0, len(x), step):
        piece = x[start : start + step]
        if start and len(piece) < spec.min_clip_s * SAMPLE_RATE_HZ:
            log.info(
                "%s: dropped a %.2f s tail (shorter than min_clip_s)", track.source_id, len(piece) / SAMPLE_RATE_HZ
            )
            break
        yield start / SAMPLE_RATE_HZ, piece


def _deal(durations: list[float], n_shards: int) -> list[int]:
    """Longest clips first, each to the least-loaded shard (ties: lowest shard), so shards take alike time."""
    heap = [(0.0, s) for s in range(n_shards)]
    shard_of = [0] * len(durations)
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        load, s = heapq.heappop(heap)
        shard_of[i] = s
        heapq.heappush(heap, (load + durations[i], s))
    return shard_of


def plan_slice(spec: SliceSpec) -> Manifest:
    """Every source's tracks, cut and checked; bad inputs become named failures, never exceptions."""
    clips: list[dict[str, Any]] = []
    failures: list[PlanFailure] = []
    seen: set[str] = set()
    for source in spec.sources:
        for item in _PLANNERS[source.kind](source):
            if isinstance(item, PlanFailure):
                failures.append(item)
                continue
            for offset, samples in _cut(item, spec):
                clip_id = f"{item.source_id}@{offset:g}s"
                k = 2
                while clip_id in seen:
                    clip_id, k = f"{item.source_id}@{offset:g}s#{k}", k + 1
                try:
                    check_audio(samples, clip_id, spec.min_clip_s)
                except ClipError as e:
                    failures.append(PlanFailure(e.item, e.problem))
                    continue
                seen.add(clip_id)
                duration = len(samples) / SAMPLE_RATE_HZ
                clips.append(
                    {
                        "clip_id": clip_id,
                        "source": item.source,
                        "source_id": item.source_id,
                        "locator": item.locator,
                        "offset_s": offset,
                        "duration_s": duration,
                        "n_samples": len(samples),
                        "n_frames": n_frames(len(samples)),
                        "sha256": sha256_of(samples),
                        "licence": item.licence,
                        "silent": bool(np.abs(samples).max() < SILENCE_PEAK_FS),
                        "truth": cut_truth(item.truth, offset, duration),
                    }
                )
    n_shards = max(1, min(spec.n_shards, len(clips)))
    shards = _deal([c["duration_s"] for c in clips], n_shards)
    records = [ClipRecord(shard=s, **c) for c, s in zip(clips, shards)]
    return Manifest(slice_fingerprint=spec.fingerprint(), n_shards=n_shards, clips=records, failures=failures)


def _file_stamp(source: str, locator: str) -> tuple[int, int] | None:
    """(mtime, size) of a file-backed track, so the cache below never serves a file's old contents."""
    if source != "audio_dir":
        return None
    try:
        st = os.stat(json.loads(locator)["path"])
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _load_track(source: str, locator: str) -> np.ndarray:
    return _load_track_cached(source, locator, _file_stamp(source, locator))


@lru_cache(maxsize=2)
def _load_track_cached(source: str, locator: str, stamp: tuple[int, int] | None) -> np.ndarray:
    """The last tracks loaded, so the clips of one long file do not decode it once each."""
    samples = _LOADERS[source](locator)
    samples.setflags(write=False)
    return samples


def load_clip_audio(clip: ClipRecord) -> np.ndarray:
    """The clip's samples, exactly as planned; a :class:`ClipError` names the clip if they changed."""
    try:
        track = _load_track(clip.source, clip.locator)
    except ClipError as e:
        raise ClipError(clip.clip_id, f"cannot load {e.item}: {e.problem}") from e
    start = int(round(clip.offset_s * SAMPLE_RATE_HZ))
    samples = np.array(track[start : start + clip.n_samples])
    check_audio(samples, clip.clip_id, 0.0)
    digest = sha256_of(samples)
    if digest != clip.sha256:
        raise ClipError(
            clip.clip_id,
            f"audio changed since the slice was planned (sha256 {digest[:12]} "
            f"!= manifest {clip.sha256[:12]}); `musicinterp replan RUN_DIR` captures it again",
        )
    return samples
