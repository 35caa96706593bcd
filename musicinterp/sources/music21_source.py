"""Scores from music21's own corpus, repeats expanded, rendered offline by :mod:`musicinterp.sources.synth`.

The ground truth is the expanded score itself: every played measure with its original number and its
time span, every note (onset, duration, MIDI pitch, spelling on the line of fifths, part), the
fermatas (the chorales' phrase endings) and the key. A measure number played twice with the same
length is a return of that measure (``musicinterp.annotate.truth.returns_from_measures``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from musicinterp.config import Music21Source
from musicinterp.sources.base import ClipError, PlanFailure, Track
from musicinterp.sources.synth import Note, render

DEFAULT_TEMPO_BPM = 90.0
PART_TIMBRES = ("flute", "reed", "organ", "organ")  # soprano, alto, tenor, bass
STEP_FIFTHS = {"F": -1, "C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5}
TAIL_S = 0.5  # silence after the last note, so its release is kept


def _fifths(pitch) -> int:
    return STEP_FIFTHS[pitch.step] + 7 * int(round(pitch.alter))


@lru_cache(maxsize=8)
def _parse(corpus_path: str):
    from music21 import corpus

    try:
        return corpus.parse(corpus_path)
    except Exception as e:  # noqa: BLE001 - music21 raises many kinds; report them the same way
        raise ClipError(f"music21:{corpus_path}", f"cannot load from the music21 corpus: {e}") from e


def _tempo(score, override: float | None) -> float:
    if override:
        return float(override)
    marks = list(score.recurse().getElementsByClass("MetronomeMark"))
    return float(marks[0].getQuarterBPM()) if marks and marks[0].number else DEFAULT_TEMPO_BPM


def expand(corpus_path: str, tempo_bpm: float | None = None) -> tuple[list[Note], dict, float]:
    """Notes of the repeat-expanded score, its ground truth and its duration in seconds."""
    return expand_stream(_parse(corpus_path), f"music21:{corpus_path}", tempo_bpm)


def expand_stream(score, item: str, tempo_bpm: float | None = None) -> tuple[list[Note], dict, float]:
    """:func:`expand` of a parsed music21 ``Score`` (e.g. one tune of an ABC collection, which music21
    parses as an ``Opus``); ``item`` names it in errors."""
    try:
        played = score.expandRepeats()
    except Exception as e:  # noqa: BLE001
        raise ClipError(item, f"cannot expand its repeats: {e}") from e
    bpm = _tempo(score, tempo_bpm)
    sec = 60.0 / bpm  # seconds per quarter note
    parts = list(played.parts)
    if not parts:
        raise ClipError(item, "the score has no parts")
    measures = []
    for m in parts[0].getElementsByClass("Measure"):
        start = float(m.offset) * sec
        measures.append(
            {
                "number": int(m.number),
                "start_s": round(start, 6),
                "end_s": round(start + float(m.duration.quarterLength) * sec, 6),
            }
        )
    notes: list[Note] = []
    truth_notes, fermatas = [], []
    for p, part in enumerate(parts):
        timbre = PART_TIMBRES[min(p, len(PART_TIMBRES) - 1)]
        for n in part.stripTies().recurse().notes:
            onset = float(n.getOffsetInHierarchy(part)) * sec
            dur = float(n.quarterLength) * sec
            if dur <= 0:  # grace notes
                continue
            for pitch in n.pitches:
                notes.append(Note(onset, dur, float(pitch.midi), 0.7, timbre))
                truth_notes.append(
                    {
                        "onset_s": round(onset, 6),
                        "dur_s": round(dur, 6),
                        "midi": int(pitch.midi),
                        "fifths": _fifths(pitch),
                        "part": p,
                    }
                )
            if any(type(x).__name__ == "Fermata" for x in n.expressions):
                fermatas.append((round(onset, 6), round(onset + dur, 6)))
    if not notes:
        raise ClipError(item, "the score has no notes")
    key = score.analyze("key")
    truth = {
        "measures": measures,
        "notes": truth_notes,
        "fermatas": [{"start_s": a, "end_s": b} for a, b in sorted(set(fermatas))],
        "key": {"name": str(key), "tonic_fifths": _fifths(key.tonic), "minor": key.mode == "minor"},
        "tempo_bpm": bpm,
    }
    duration = max(n.onset_s + n.dur_s for n in notes) + TAIL_S
    return notes, truth, duration


def render_score(corpus_path: str, tempo_bpm: float | None = None) -> tuple[np.ndarray, dict]:
    notes, truth, duration = expand(corpus_path, tempo_bpm)
    return render(notes, duration), truth


def plan_music21(spec: Music21Source) -> Iterator[Track | PlanFailure]:
    for path in spec.scores:
        try:
            samples, truth = render_score(path, spec.tempo_bpm)
        except ClipError as e:
            yield PlanFailure(e.item, e.problem)
            continue
        yield Track(
            source="music21",
            source_id=f"music21:{path}",
            locator=json.dumps({"score": path, "tempo_bpm": spec.tempo_bpm}, sort_keys=True),
            licence="music21 corpus (see music21's corpus licence)",
            truth=truth,
            samples=samples,
        )


def load_music21(locator: str) -> np.ndarray:
    recipe = json.loads(locator)
    return render_score(recipe["score"], recipe["tempo_bpm"])[0]
