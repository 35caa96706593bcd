"""A small additive synthesizer: note events in, 32 kHz mono float32 out, bit-for-bit deterministic.

It renders the synthetic pieces and the music21 scores. Each timbre is a fixed set of harmonic
amplitudes and an envelope; that is enough for EnCodec and Essentia to see pitch, onsets and timbre
change, and it keeps the ground truth exact (every sample comes from a listed note).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from musicinterp.frames import SAMPLE_RATE_HZ

# harmonic amplitudes (1st, 2nd, ...) and exponential decay rate per second (0 = sustained)
TIMBRES: dict[str, tuple[tuple[float, ...], float]] = {
    "organ": ((1.0, 0.5, 0.33, 0.25, 0.12), 0.0),
    "piano": ((1.0, 0.45, 0.25, 0.12, 0.06, 0.03), 2.5),
    "pluck": ((1.0, 0.7, 0.4, 0.3, 0.2, 0.1, 0.05), 5.0),
    "reed": ((1.0, 0.05, 0.6, 0.05, 0.4, 0.05, 0.25), 0.0),
    "flute": ((1.0, 0.15, 0.05), 0.0),
}
ATTACK_S = 0.01
RELEASE_S = 0.03


@dataclass(frozen=True)
class Note:
    onset_s: float
    dur_s: float
    midi: float
    velocity: float = 0.8  # 0..1, linear amplitude
    timbre: str = "organ"


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def render_note(note: Note, sr: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """One note, including its release tail, as float64 samples starting at its onset."""
    if note.timbre not in TIMBRES:
        raise ValueError(f"unknown timbre {note.timbre!r}; choose one of {sorted(TIMBRES)}")
    harmonics, decay = TIMBRES[note.timbre]
    n = int(round((note.dur_s + RELEASE_S) * sr))
    t = np.arange(n) / sr
    f0 = midi_to_hz(note.midi)
    wave = np.zeros(n)
    for k, amp in enumerate(harmonics, start=1):
        if k * f0 < sr / 2 * 0.9:  # keep partials well below Nyquist
            wave += amp * np.sin(2 * np.pi * k * f0 * t)
    env = np.minimum(1.0, t / ATTACK_S)
    if decay:
        env = env * np.exp(-decay * t)
    release = np.clip((note.dur_s + RELEASE_S - t) / RELEASE_S, 0.0, 1.0)
    return note.velocity * env * release * wave / sum(harmonics)


def render(notes: list[Note], duration_s: float, sr: int = SAMPLE_RATE_HZ, peak: float = 0.5) -> np.ndarray:
    """Mix notes into a buffer of ``duration_s`` seconds and scale it to ``peak`` (if not silent)."""
    out = np.zeros(int(round(duration_s * sr)))
    for note in notes:
        start = int(round(note.onset_s * sr))
        if start >= len(out):
            continue
        wave = render_note(note, sr)[: len(out) - start]
        out[start : start + len(wave)] += wave
    top = np.abs(out).max() if len(out) else 0.0
    if top > 0:
        out *= peak / top
    return out.astype(np.float32)


def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``snr_db`` below the signal's RMS."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    noise = rng.standard_normal(len(samples)) * rms * 10 ** (-snr_db / 20)
    return (samples + noise).astype(np.float32)
