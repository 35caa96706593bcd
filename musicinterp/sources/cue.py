"""Cue pieces: whether section A returns is decided by a cue at the start, and by nothing near the return.

The known-answer construction of DESIGN.md section 3 ("Known-answer models"), in audio. Every piece has
the same layout (seconds):

=============  ==========================================================================
0.0 - 1.0      the cue: a held chord, either the *return* cue (200/250/300 Hz, reed) or the
               *no-return* cue (300/350/450 Hz, flute)
1.0 - 2.6      section A: one of :data:`MOTIFS` (a small fixed inventory), organ
2.6 - 9.0      section B: random notes of the same kind
9.0 - 10.6     the return point, at the same time in every piece: A again (return cue) or a
               fresh random section C of the same kind as A (no-return cue)
10.6 - end     section D: random notes (pieces last at least 11 s)
=============  ==========================================================================

Why the return is 8 s after the cue: the analysis asks in the last frames (up to 2 s) before the return
whether A will come back, and its causal controls reach back at most 5.33 s from a frame (key
unclarity: a centred 4 s window read 2.66 s late, ``DESCRIPTOR_LOOKAHEAD_S``); from 7.0 s that is
1.67 s, after the cue has ended. Only a memory of more than 6 s can tell the kinds apart there.

Design choices that make the return predictable *only from memory*:

- B and D are drawn from random streams that do not depend on the kind of the piece, so a piece and
  its twin of the other kind (same seed and index, ``returns`` flipped) are sample-for-sample equal
  everywhere except the cue and the return section. Nothing audible between the cue and the return
  point tells the kinds apart.
- Every note starts on a 640-sample frame boundary and its release ends inside its own slot, and the
  mix is not normalised per piece, so a returning section is bit-for-bit the same audio as A; all
  frequencies are multiples of 50 Hz (just-intonation ratios over a 50 Hz fundamental), so a held note
  is periodic with the 20 ms frame hop and its EnCodec frames repeat.
- A comes from :data:`MOTIFS` (four motifs), like the token-level construction that a small decoder
  learned in DESIGN.md; C is random, so after a no-return cue the return section is unpredictable.

The *pair* design (``CueSource.design = "pair"``) replaces the one-chord cue by two chords, 0-0.4 s and
0.8-1.0 s, with silence between (longer than the toy EnCodec's ~12-frame memory, so no code hears both);
A returns when the two are equal. With one chord, an untrained decoder's attention carries the average of
the codes heard so far into every later frame and a linear probe reads the cue 8 s later (measured: AUROC
0.93 at the last layer of the random toy): memory, which needs no training. Equality is not linear in
anything additive in the two chords, so a probe finds it only where a model has computed it.

Ground truth (``truth``): ``returns`` lists the planted return in the format of
:mod:`musicinterp.sources.synthetic` (empty for no-return pieces), ``return_points`` the point where a
return may start in every piece (``start_s``/``end_s`` of the return section, ``returns`` true or
false: the truth labels ``truth_return_within_<h>s`` ask the question only just before it), ``cue`` is
``"return"`` or ``"no-return"`` (what the cue says), ``design`` and ``cue_chords`` (the chords played),
``motif`` the index of A in :data:`MOTIFS`, ``return_at_s`` the fixed
return time, and ``sections`` the labelled sections.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from musicinterp.config import CueSource
from musicinterp.frames import HOP_SAMPLES, SAMPLE_RATE_HZ
from musicinterp.sources.base import PlanFailure, Track
from musicinterp.sources.synth import RELEASE_S, Note, render_note

CUE_END_S = 1.0
A_START_S = CUE_END_S
A_LEN_S = 1.6
RETURN_AT_S = 9.0  # the return point, the same in every piece
RETURN_END_S = RETURN_AT_S + A_LEN_S
MIN_DURATION_S = 11.0  # the return section and a little of D must fit (2 s after the return point)
SLOT_S = 0.2  # notes last one or two slots of 10 frames
GAIN = 0.25  # fixed mix gain (no per-piece normalisation, so repeated audio is bit-identical)
PITCHES_HZ = (200.0, 250.0, 300.0, 350.0, 400.0, 450.0, 500.0, 600.0)  # multiples of 50 Hz: frame-periodic
BODY_TIMBRE = "organ"
CUES: dict[str, tuple[tuple[float, ...], str]] = {
    "return": ((200.0, 250.0, 300.0), "reed"),
    "no-return": ((300.0, 350.0, 450.0), "flute"),
}
# section A: (pitch index, slots) pairs filling A_LEN_S = 8 slots
MOTIFS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 1), (2, 1), (4, 2), (7, 1), (4, 1), (2, 2)),
    ((6, 2), (5, 1), (3, 1), (1, 2), (0, 2)),
    ((3, 1), (3, 1), (6, 1), (2, 1), (7, 2), (5, 1), (1, 1)),
    ((1, 2), (4, 1), (6, 1), (0, 1), (5, 1), (7, 2)),
)


def hz_to_midi(hz: float) -> float:
    return 69.0 + 12.0 * float(np.log2(hz / 440.0))


def _note(onset_s: float, slots: int, hz: float, velocity: float, timbre: str) -> Note:
    """A note filling ``slots`` slots from ``onset_s``; its release ends exactly at the slot's end."""
    return Note(round(onset_s, 6), slots * SLOT_S - RELEASE_S, hz_to_midi(hz), velocity, timbre)


def _motif_notes(motif: int, start_s: float) -> list[Note]:
    notes, t = [], start_s
    for pitch, slots in MOTIFS[motif]:
        notes.append(_note(t, slots, PITCHES_HZ[pitch], 0.8, BODY_TIMBRE))
        t += slots * SLOT_S
    return notes


def _random_notes(rng: np.random.Generator, start_s: float, end_s: float) -> list[Note]:
    """Random pitches of :data:`PITCHES_HZ`, one or two slots each, filling ``start_s..end_s``."""
    notes, slot, n_slots = [], 0, int(round((end_s - start_s) / SLOT_S))
    while slot < n_slots:
        slots = min(int(rng.choice([1, 1, 2])), n_slots - slot)
        notes.append(
            _note(start_s + slot * SLOT_S, slots, PITCHES_HZ[int(rng.integers(0, len(PITCHES_HZ)))], 0.8, BODY_TIMBRE)
        )
        slot += slots
    return notes


def _cue_notes(cue: str) -> list[Note]:
    chord, timbre = CUES[cue]
    return [_note(0.0, int(round(CUE_END_S / SLOT_S)), hz, 0.6, timbre) for hz in chord]


def _pair_notes(first: str, second: str) -> list[Note]:
    """The *pair* cue: chord ``first`` (0-0.4 s), silence (0.4-0.8 s), chord ``second`` (0.8-1.0 s)."""
    notes = []
    for name, onset_s, slots in ((first, 0.0, 2), (second, 0.8, 1)):
        chord, timbre = CUES[name]
        notes += [_note(onset_s, slots, hz, 0.6, timbre) for hz in chord]
    return notes


def _other(chord: str) -> str:
    return "no-return" if chord == "return" else "return"


def pair_chords(seed: int, index: int, returns: bool) -> tuple[str, str]:
    """The two chords of a *pair* cue: equal when A returns. The first is drawn, the second follows."""
    first = ("return", "no-return")[int(np.random.default_rng([seed, index, 4]).integers(0, 2))]
    return first, first if returns else _other(first)


def cue_recipe(seed: int, index: int, duration_s: float, returns: bool, design: str = "chord") -> dict:
    """The recipe :func:`compose` renders; the chord design's recipes carry no ``design`` key, so the
    locators of stores written before the pair design existed stay valid."""
    recipe = {"seed": seed, "index": index, "duration_s": duration_s, "returns": returns}
    return recipe | ({"design": design} if design != "chord" else {})


def _mix(notes: list[Note], duration_s: float) -> np.ndarray:
    """Sum of the notes at a fixed gain; every onset must lie on a frame boundary."""
    out = np.zeros(int(round(duration_s * SAMPLE_RATE_HZ)))
    for note in notes:
        start = int(round(note.onset_s * SAMPLE_RATE_HZ))
        if start % HOP_SAMPLES:
            raise ValueError(f"note at {note.onset_s} s does not start on a frame boundary")
        if start >= len(out):
            continue
        wave = render_note(note)[: len(out) - start]
        out[start : start + len(wave)] += wave
    return (GAIN * out).astype(np.float32)


def compose(recipe: dict) -> tuple[np.ndarray, dict]:
    """Render the piece ``recipe`` describes (see :func:`plan_cue`); returns samples and ground truth."""
    dur = float(recipe["duration_s"])
    if dur < MIN_DURATION_S:
        raise ValueError(f"cue pieces need duration_s >= {MIN_DURATION_S}, got {dur}")
    seed, index, returns = int(recipe["seed"]), int(recipe["index"]), bool(recipe["returns"])
    # independent streams: the kind of the piece changes the cue and the return section only
    motif = int(np.random.default_rng([seed, index, 0]).integers(0, len(MOTIFS)))
    b_notes = _random_notes(np.random.default_rng([seed, index, 1]), A_START_S + A_LEN_S, RETURN_AT_S)
    d_notes = _random_notes(np.random.default_rng([seed, index, 3]), RETURN_END_S, dur)
    cue = "return" if returns else "no-return"
    design = recipe.get("design", "chord")
    if design == "chord":
        cue_notes, chords = _cue_notes(cue), [cue]
    elif design == "pair":
        chords = list(pair_chords(seed, index, returns))
        cue_notes = _pair_notes(*chords)
    else:
        raise ValueError(f"cue design must be 'chord' or 'pair', got {design!r}")
    notes = cue_notes + _motif_notes(motif, A_START_S) + b_notes + d_notes
    if returns:
        notes += _motif_notes(motif, RETURN_AT_S)
    else:
        notes += _random_notes(np.random.default_rng([seed, index, 2]), RETURN_AT_S, RETURN_END_S)
    sections = [
        {"label": "cue", "start_s": 0.0, "end_s": CUE_END_S},
        {"label": "A", "start_s": A_START_S, "end_s": A_START_S + A_LEN_S},
        {"label": "B", "start_s": A_START_S + A_LEN_S, "end_s": RETURN_AT_S},
        {"label": "A'" if returns else "C", "start_s": RETURN_AT_S, "end_s": RETURN_END_S},
        {"label": "D", "start_s": RETURN_END_S, "end_s": dur},
    ]
    truth = {
        "returns": (
            [
                {
                    "source_start_s": A_START_S,
                    "source_end_s": A_START_S + A_LEN_S,
                    "start_s": RETURN_AT_S,
                    "end_s": RETURN_END_S,
                }
            ]
            if returns
            else []
        ),
        "return_points": [{"start_s": RETURN_AT_S, "end_s": RETURN_END_S, "returns": returns}],
        "cue": cue,
        "design": design,
        "cue_chords": chords,
        "motif": motif,
        "return_at_s": RETURN_AT_S,
        "sections": sections,
    }
    return _mix(notes, dur), truth


def with_cue(samples: np.ndarray, cue: str, chords: list[str] | None = None) -> np.ndarray:
    """The piece with its cue replaced by the one that says ``cue`` ("return" or "no-return"), everything
    after unchanged; ``chords``, the piece's ``cue_chords``, makes it a *pair* cue with the same first
    chord (only the second changes: equal says "return").

    The counterfactual of the learned-structure check: the cue's notes end inside the first second and
    nothing else sounds there, so this is exactly the piece as it would be with the other cue.
    """
    out = samples.copy()
    n = int(round(CUE_END_S * SAMPLE_RATE_HZ))
    if chords is None or len(chords) == 1:
        out[:n] = _mix(_cue_notes(cue), CUE_END_S)
    else:
        out[:n] = _mix(_pair_notes(chords[0], chords[0] if cue == "return" else _other(chords[0])), CUE_END_S)
    return out


def is_return_piece(seed: int, n_pieces: int, return_fraction: float) -> list[bool]:
    """Which pieces of a source get the return cue: drawn from the seed, so it is stable."""
    n_return = int(round(return_fraction * n_pieces))
    chosen = set(np.random.default_rng([seed, 20_000_003]).permutation(n_pieces)[:n_return].tolist())
    return [i in chosen for i in range(n_pieces)]


def plan_cue(spec: CueSource) -> Iterator[Track | PlanFailure]:
    """One track per piece, ``cue:s<seed><r|n>-p<index>`` (r: return cue, n: no-return cue)."""
    for i, returns in enumerate(is_return_piece(spec.seed, spec.n_pieces, spec.return_fraction)):
        recipe = cue_recipe(spec.seed, i, spec.duration_s, returns, spec.design)
        samples, truth = compose(recipe)
        yield Track(
            source="cue",
            source_id=f"cue:s{spec.seed}{'r' if returns else 'n'}-p{i:04d}",
            locator=json.dumps(recipe, sort_keys=True),
            licence="generated by musicinterp (CC0)",
            truth=truth,
            samples=samples,
        )


def load_cue(locator: str) -> np.ndarray:
    return compose(json.loads(locator))[0]
