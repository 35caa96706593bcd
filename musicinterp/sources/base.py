"""What every clip source yields: clip references with provenance, or failures naming the item."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ClipError(Exception):
    """A clip or file that cannot be used; the message names it and says what is wrong."""

    def __init__(self, item: str, problem: str):
        self.item = item
        self.problem = problem
        super().__init__(f"{item}: {problem}")


@dataclass(frozen=True)
class ClipRef:
    """One clip as a source plans it, before its audio is decoded and checked.

    ``locator`` is what the source needs to produce the audio again (a file path, a corpus path, a
    seed); ``truth`` holds ground truth known by construction (JSON-serialisable).
    """

    clip_id: str
    source: str  # 'synthetic' | 'music21' | 'audio_dir'
    source_id: str  # the track / score / piece the clip was cut from (grouping unit for statistics)
    locator: str
    offset_s: float
    duration_s: float
    licence: str | None = None
    truth: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanFailure:
    """A clip or file that was left out of the slice, and why."""

    item: str
    problem: str
