"""What every clip source yields: whole tracks with provenance and ground truth, or failures naming the item.

A source plans *tracks* (a file, a score, a generated piece) and can load a track's audio again from
its ``locator``; the slice (``musicinterp.slice``) cuts tracks into clips and cuts their ground
truth with them (:func:`cut_truth`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ClipError(Exception):
    """A clip or file that cannot be used; the message names it and says what is wrong."""

    def __init__(self, item: str, problem: str):
        self.item = item
        self.problem = problem
        super().__init__(f"{item}: {problem}")


@dataclass(frozen=True)
class Track:
    """One whole piece of audio as a source plans it.

    ``locator`` is what the source needs to produce the audio again (a file path, a corpus path, a
    JSON recipe); ``truth`` holds ground truth known by construction (JSON-serialisable, times in
    seconds from the track's start).
    """

    source: str  # 'synthetic' | 'music21' | 'audio_dir'
    source_id: str  # the track / score / piece (grouping unit for statistics)
    locator: str
    licence: str | None = None
    truth: dict[str, Any] = field(default_factory=dict)
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)  # decoded at planning


@dataclass(frozen=True)
class PlanFailure:
    """A clip or file that was left out of the slice, and why."""

    item: str
    problem: str


# interval fields of truth events: (start key, end key or None, duration key or None)
_INTERVALS = (("start_s", "end_s", None), ("source_start_s", "source_end_s", None), ("onset_s", None, "dur_s"))


def _intervals(event: dict) -> list[tuple[float, float]]:
    out = []
    for a, b, d in _INTERVALS:
        if a in event:
            start = float(event[a])
            out.append((start, float(event[b]) if b else start + float(event[d])))
    return out


def cut_truth(truth: dict[str, Any], offset_s: float, duration_s: float) -> dict[str, Any]:
    """Ground truth of the clip ``[offset_s, offset_s + duration_s)`` of a track, in clip time.

    Lists of events keep the events with any interval overlapping the clip (times shifted by
    ``-offset_s``, so an event cut by the clip's edge keeps its true extent); everything else is
    copied.
    """
    end = offset_s + duration_s
    out: dict[str, Any] = {}
    for key, value in truth.items():
        if isinstance(value, list) and value and isinstance(value[0], dict) and _intervals(value[0]):
            kept = []
            for ev in value:
                if any(a < end and b > offset_s for a, b in _intervals(ev)):
                    ev = dict(ev)
                    for k in ("start_s", "end_s", "source_start_s", "source_end_s", "onset_s"):
                        if k in ev:
                            ev[k] = round(float(ev[k]) - offset_s, 6)
                    kept.append(ev)
            out[key] = kept
        else:
            out[key] = value
    return out
