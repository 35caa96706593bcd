"""Pieces generated here with a planted recurrence: A, other material, A again, other material.

Every piece is drawn from a seed: key, tempo, timbre and the section boundaries vary from piece to
piece. Section A (a melody over a chord per beat pair) returns once after material of its own; every
other section is in a key of its own (a contrasting section, as in much tonal music), so that chance
chord coincidences between sections do not make unplanned recurrences. The
ground truth ``truth["returns"]`` says where (``source_start_s..source_end_s`` heard again at
``start_s..end_s``). *Hard* pieces vary the return: 3-6 % slower, another timbre, and white noise at
20 dB SNR over the return. *No-return* pieces put fresh material where the return would be; they
must come out null. Material is random per section, so only the planted return recurs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from musicinterp.config import SyntheticSource
from musicinterp.sources.base import PlanFailure, Track
from musicinterp.sources.synth import TIMBRES, Note, add_noise, render

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
HARD_SNR_DB = 20.0
HARD_STRETCH = (1.03, 1.06)


def _section(
    rng: np.random.Generator, start_s: float, dur_s: float, beat_s: float, tonic: int, scale, timbre: str
) -> list[Note]:
    """Random melody on the scale plus a triad every two beats, filling ``dur_s`` seconds."""
    notes: list[Note] = []
    t = 0.0
    while t < dur_s - 1e-6:
        d = min(beat_s * float(rng.choice([0.5, 1.0, 1.0, 2.0])), dur_s - t)
        degree = int(rng.integers(0, 7))
        octave = int(rng.integers(0, 2))
        notes.append(Note(start_s + t, d, tonic + 12 + 12 * octave + scale[degree], 0.8, timbre))
        t += d
    t = 0.0
    while t < dur_s - 1e-6:
        d = min(2 * beat_s, dur_s - t)
        root = int(rng.integers(0, 7))
        for step in (0, 2, 4):
            deg = root + step
            notes.append(Note(start_s + t, d, tonic - 12 + scale[deg % 7] + 12 * (deg // 7), 0.5, timbre))
        t += d
    return notes


def _shift(notes: list[Note], start_s: float, stretch: float, timbre: str) -> list[Note]:
    """Section notes moved to ``start_s`` (relative to the section's start 0), slowed by ``stretch``."""
    return [Note(start_s + n.onset_s * stretch, n.dur_s * stretch, n.midi, n.velocity, timbre) for n in notes]


def compose(recipe: dict) -> tuple[np.ndarray, dict]:
    """Render the piece described by ``recipe`` (see :func:`plan_synthetic`); returns samples and truth."""
    rng = np.random.default_rng([recipe["seed"], recipe["index"]])
    dur = float(recipe["duration_s"])
    tonic = 48 + int(rng.integers(0, 12))
    scale = SCALES[str(rng.choice(list(SCALES)))]
    beat_s = 60.0 / float(rng.uniform(80, 140))
    timbres = sorted(TIMBRES)
    timbre = str(rng.choice(timbres))
    a_len = float(np.clip(rng.uniform(0.2, 0.3) * dur, 0.5, 6.0))
    a_start = float(rng.uniform(0.0, 0.1) * dur)
    gap = float(np.clip(rng.uniform(0.15, 0.3) * dur, 0.5, 8.0))
    # drawn for every piece, so a hard piece and its plain twin share everything but the return
    hard_stretch = float(rng.uniform(*HARD_STRETCH))
    hard_timbre = str(rng.choice([t for t in timbres if t != timbre]))
    stretch, ret_timbre = (hard_stretch, hard_timbre) if recipe["hard"] else (1.0, timbre)
    r_start = a_start + a_len + gap
    r_end = r_start + a_len * stretch

    # the other sections' tonics: distinct, none in A's key (offsets of 1..11 semitones)
    others = iter(tonic + int(k) for k in rng.permutation(np.arange(1, 12)))
    a_notes = _section(rng, 0.0, a_len, beat_s, tonic, scale, timbre)
    notes = _section(rng, 0.0, a_start, beat_s, next(others), scale, timbre) if a_start > 0.05 else []
    notes += _shift(a_notes, a_start, 1.0, timbre)
    notes += _section(rng, a_start + a_len, gap, beat_s, next(others), scale, timbre)
    sections = [
        {"label": "A", "start_s": a_start, "end_s": a_start + a_len},
        {"label": "B", "start_s": a_start + a_len, "end_s": r_start},
    ]
    if recipe["returns"]:
        notes += _shift(a_notes, r_start, stretch, ret_timbre)
        sections.append({"label": "A'", "start_s": r_start, "end_s": r_end})
    else:
        notes += _section(rng, r_start, r_end - r_start, beat_s, next(others), scale, timbre)
        sections.append({"label": "C", "start_s": r_start, "end_s": r_end})
    if dur - r_end > 0.05:
        notes += _section(rng, r_end, dur - r_end, beat_s, next(others), scale, timbre)
        sections.append({"label": "D", "start_s": r_end, "end_s": dur})
    samples = render(notes, dur)
    if recipe["hard"]:
        noise_rng = np.random.default_rng([recipe["seed"], recipe["index"], 1])
        i0, i1 = int(round(r_start * len(samples) / dur)), int(round(r_end * len(samples) / dur))
        samples[i0:i1] = add_noise(samples[i0:i1], HARD_SNR_DB, noise_rng)
    returns = []
    if recipe["returns"]:
        returns.append(
            {
                "source_start_s": round(a_start, 6),
                "source_end_s": round(a_start + a_len, 6),
                "start_s": round(r_start, 6),
                "end_s": round(r_end, 6),
            }
        )
    truth = {
        "returns": returns,
        "sections": sections,
        "tempo_bpm": round(60 / beat_s, 3),
        "timbre": timbre,
        "return_timbre": ret_timbre if recipe["returns"] else None,
        "stretch": round(stretch, 6),
        "noise_snr_db": HARD_SNR_DB if recipe["hard"] else None,
    }
    return samples, truth


def plan_synthetic(spec: SyntheticSource) -> Iterator[Track | PlanFailure]:
    """One track per piece; which pieces have no return is drawn from the seed, so it is stable."""
    choose = np.random.default_rng([spec.seed, 10_000_019])
    n_null = int(round(spec.no_return_fraction * spec.n_pieces))
    null = set(choose.permutation(spec.n_pieces)[:n_null].tolist())
    for i in range(spec.n_pieces):
        recipe = {
            "seed": spec.seed,
            "index": i,
            "duration_s": spec.duration_s,
            "hard": spec.hard,
            "returns": i not in null,
        }
        samples, truth = compose(recipe)
        tag = ("h" if spec.hard else "") + ("n" if i in null else "")
        yield Track(
            source="synthetic",
            source_id=f"synthetic:s{spec.seed}{tag}-p{i:04d}",
            locator=json.dumps(recipe, sort_keys=True),
            licence="generated by musicinterp (CC0)",
            truth=truth,
            samples=samples,
        )


def load_synthetic(locator: str) -> np.ndarray:
    return compose(json.loads(locator))[0]
