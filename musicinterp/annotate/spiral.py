"""Chew's spiral array (Chew 2000, 2014) and Herremans & Chew's (2016) tensile strain.

Pitches sit on a helix indexed by their position ``k`` on the line of fifths (C=0, G=1, F=-1):
``P(k) = (r sin(k pi/2), r cos(k pi/2), k h)`` with ``r = 1``, ``h = sqrt(2/15)``. Chords and keys
are weighted centres of their components with weights ``(0.536, 0.274, 0.190)`` for
root/fifth/third (chords) and tonic/dominant/subdominant (keys), and ``alpha = beta = 0.75`` for the
minor key's mixture of major and minor dominant/subdominant chords (Chew 2014, ch. 3).

Tensile strain = distance between the centre of effect of the sounding notes ("cloud") and the
key. Audio gives pitch classes, not spellings, so each pitch class is spelled as the line-of-fifths
index in a 12-wide window around the key (``spell_pc``); the score side uses the real spellings.
"""

from __future__ import annotations

import numpy as np

R = 1.0
H = float(np.sqrt(2.0 / 15.0))
W = np.array([0.536, 0.274, 0.190])
ALPHA = BETA = 0.75
# line-of-fifths index of each pitch class C..B in the simplest spelling (C=0, G=1, ..., F=-1)
FIFTHS_OF_PC = np.array([0, 7, 2, -3, 4, -1, 6, 1, -4, 3, -2, 5])


def pitch_pos(k) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    return np.stack([R * np.sin(k * np.pi / 2), R * np.cos(k * np.pi / 2), k * H], axis=-1)


def major_chord(k: int) -> np.ndarray:
    return W[0] * pitch_pos(k) + W[1] * pitch_pos(k + 1) + W[2] * pitch_pos(k + 4)


def minor_chord(k: int) -> np.ndarray:
    return W[0] * pitch_pos(k) + W[1] * pitch_pos(k + 1) + W[2] * pitch_pos(k - 3)


def key_pos(k: int, minor: bool) -> np.ndarray:
    """Centre of a key with tonic at line-of-fifths index ``k``."""
    if not minor:
        return W[0] * major_chord(k) + W[1] * major_chord(k + 1) + W[2] * major_chord(k - 1)
    dom = ALPHA * major_chord(k + 1) + (1 - ALPHA) * minor_chord(k + 1)
    sub = BETA * minor_chord(k - 1) + (1 - BETA) * major_chord(k - 1)
    return W[0] * minor_chord(k) + W[1] * dom + W[2] * sub


def spell_pc(tonic_k: int, minor: bool) -> np.ndarray:
    """Line-of-fifths index of pitch classes 0..11 (C..B) in the window around the key.

    Major: indices ``tonic-5 .. tonic+6`` (C major: Db Ab Eb Bb F C G D A E B F#);
    minor: ``tonic-6 .. tonic+5`` (A minor: Eb Bb F C G D A E B F# C# G#).
    """
    lo = tonic_k - (6 if minor else 5)
    out = np.empty(12, dtype=np.int64)
    for k in range(lo, lo + 12):
        out[(7 * k) % 12] = k
    return out


def clouds(chroma_c: np.ndarray, spelling: np.ndarray) -> np.ndarray:
    """Centre of effect of chroma rows (pitch class 0 = C) under a spelling; NaN where empty."""
    pos = pitch_pos(spelling)  # (12, 3)
    tot = chroma_c.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, chroma_c @ pos / np.where(tot > 0, tot, 1.0), np.nan)


def best_key(chroma_c_total: np.ndarray) -> tuple[int, bool]:
    """Centre-of-effect generator (Chew): the key nearest the clip's centre of effect.

    Returns the tonic's line-of-fifths index and whether the key is minor.
    """
    best = (np.inf, 0, False)
    for pc in range(12):
        for minor in (False, True):
            # distances are invariant under k -> k + c (a screw motion of the helix), so the
            # tonic's own spelling does not matter as long as the notes are spelled around it
            k = int(FIFTHS_OF_PC[pc])
            ce = clouds(chroma_c_total[None, :], spell_pc(k, minor))[0]
            dist = float(np.linalg.norm(ce - key_pos(k, minor)))
            if dist < best[0]:
                best = (dist, k, minor)
    return best[1], best[2]


def tensile_strain(chroma_c: np.ndarray, tonic_k: int, minor: bool) -> np.ndarray:
    """Distance of each row's cloud centre from the key (NaN where the row is empty)."""
    ce = clouds(chroma_c, spell_pc(tonic_k, minor))
    return np.linalg.norm(ce - key_pos(tonic_k, minor)[None, :], axis=1)
