"""Seeded test audio in one place: tone clips, noise, additive-synth notes and planted-recurrence pieces.

Every builder returns float32 mono samples (what ``read_audio`` and the sources give) at 32 kHz unless
``sr`` says otherwise; randomness comes only from a ``seed`` or a generator the caller passes. A clip of
``seconds`` has ``round(seconds * sr)`` samples. ``write_wav`` / ``write_tone`` put a clip in a file.

The other factories: tiny run stores in ``analysis_factories.py``, the tiny offline model in the
``tiny_model`` fixture (``conftest.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from musicinterp.frames import SAMPLE_RATE_HZ

SR = SAMPLE_RATE_HZ
PURE: tuple[tuple[float, float], ...] = ((1, 1.0),)  # (frequency ratio, gain): the fundamental alone
SCALE = (0, 2, 4, 5, 7, 9, 11)  # the major scale, in semitones above the tonic


def midi_hz(midi: float) -> float:
    """Equal-tempered frequency of a MIDI note number (A4 = 69 = 440 Hz)."""
    return 440 * 2 ** ((midi - 69) / 12)


def times(seconds: float, sr: int = SR) -> np.ndarray:
    """Sample times (s) of a clip of ``seconds``: ``round(seconds * sr)`` samples from 0."""
    return np.arange(int(round(seconds * sr))) / sr


def _partials(freq_hz: float, t: np.ndarray, partials: Iterable[tuple[float, float]]) -> np.ndarray:
    return sum(a * np.sin(2 * np.pi * freq_hz * k * t) for k, a in partials)


def tone(
    seconds: float,
    *,
    freq_hz: float = 330.0,
    amp: float = 0.3,
    partials: Sequence[tuple[float, float]] = PURE,
    noise: float = 0.0,
    seed: int = 0,
    sr: int = SR,
) -> np.ndarray:
    """``amp * sum(gain * sin(2 pi ratio freq_hz t))`` over ``partials``, plus Gaussian noise of std ``noise``."""
    y = amp * _partials(freq_hz, times(seconds, sr), partials)
    if noise:
        y = y + np.random.default_rng(seed).normal(0, noise, len(y))
    return np.asarray(y, dtype=np.float32)


def chord(
    freqs_hz: Iterable[float],
    seconds: float,
    *,
    amp: float = 0.1,
    partials: Sequence[tuple[float, float]] = PURE,
    sr: int = SR,
) -> np.ndarray:
    """Sustained tones at ``freqs_hz``, each of amplitude ``amp``, summed (no envelope: a held organ chord)."""
    t = times(seconds, sr)
    return np.asarray(amp * sum(_partials(f, t, partials) for f in freqs_hz), dtype=np.float32)


def noise(seconds: float, *, std: float = 0.1, seed: int = 0, sr: int = SR) -> np.ndarray:
    """White Gaussian noise of standard deviation ``std``."""
    return np.random.default_rng(seed).normal(0, std, int(round(seconds * sr))).astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray, sr: int = SR, *, channels: int = 1, **kw: Any) -> Path:
    """Write ``samples`` (mono) to ``path``, copied to ``channels`` channels; ``kw`` go to ``soundfile.write``
    (``subtype="FLOAT"`` keeps float32 samples exact; the default is the format's, e.g. 16-bit PCM for wav)."""
    data = samples if channels == 1 else np.repeat(np.asarray(samples)[:, None], channels, axis=1)
    sf.write(path, data, sr, **kw)
    return Path(path)


def write_tone(path: str | Path, seconds: float, *, sr: int = SR, **tone_kw: Any) -> Path:
    """A :func:`tone` clip written as a float wav (exact samples)."""
    return write_wav(path, tone(seconds, sr=sr, **tone_kw), sr, subtype="FLOAT")


# ---- planted-recurrence pieces: additive-synth notes, random sections, a section that returns ------------------
def _note(midi: float, seconds: float, amp: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    env = np.minimum(1, t / 0.01) * np.exp(-2.5 * t) * np.minimum(1, (seconds - t) / 0.01)
    return amp * env * _partials(midi_hz(midi), t, ((1, 1), (2, 0.5), (3, 0.3), (4, 0.2)))


def _section(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    y = np.zeros(int(seconds * sr))
    t = 0.0
    while t < seconds - 1e-6:
        d = min(0.25 * rng.choice([1, 1, 2]), seconds - t)
        s = _note(60 + rng.choice(SCALE) + 12 * rng.integers(-1, 1), d, 0.15, sr)
        y[int(t * sr) : int(t * sr) + len(s)] += s
        t += d
    for b in np.arange(0, seconds, 1.0):
        root = 48 + rng.choice(SCALE)
        for iv in (0, 4, 7):
            s = _note(root + iv, min(1.0, seconds - b), 0.1, sr)
            y[int(b * sr) : int(b * sr) + len(s)] += s
    return y


def note(midi: float, seconds: float, *, amp: float = 0.15, sr: int = SR) -> np.ndarray:
    """A plucked note: four harmonics, 10 ms attack and release, exponential decay; ``int(seconds * sr)`` samples."""
    return _note(midi, seconds, amp, sr).astype(np.float32)


def section(rng: np.random.Generator, seconds: float, *, sr: int = SR) -> np.ndarray:
    """Random melody (quarter and half notes of a major scale) over one major triad per second, from ``rng``."""
    return _section(rng, seconds, sr).astype(np.float32)


def planted_piece(seed: int, ret: bool = True, *, sr: int = SR) -> tuple[np.ndarray, float, float]:
    """A (4 s) B (5 s) A-or-C (4 s) D (5 s); returns samples, A's start and the return's start (s)."""
    rng = np.random.default_rng(seed)
    a = _section(rng, 4.0, sr)
    parts = [a, _section(rng, 5.0, sr), a if ret else _section(rng, 4.0, sr), _section(rng, 5.0, sr)]
    return np.concatenate(parts).astype(np.float32), 0.0, 9.0
