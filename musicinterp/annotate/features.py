"""Frame features on the 50 Hz grid (Essentia + numpy).

Frame ``i`` of every feature is computed from an analysis window *centred on sample* ``i * 640``
(zero padding at both clip ends), so feature frames coincide with the store's frames
(:mod:`musicinterp.frames`); nothing is resampled afterwards.

Two windows are used: ``LONG_WIN_SAMPLES`` (4096 = 128 ms, for spectral peaks: HPCP, dissonance,
pitch height) and ``SHORT_WIN_SAMPLES`` (2048 = 64 ms, for loudness, spectral flux and flatness).
A feature at frame ``i`` therefore depends on samples ``< i * 640 + 2048`` only
(``LOOKAHEAD_SAMPLES``), which the causal labels use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from musicinterp.frames import HOP_SAMPLES, SAMPLE_RATE_HZ, n_frames

log = logging.getLogger(__name__)

LONG_WIN_SAMPLES = 4096
SHORT_WIN_SAMPLES = 2048
LOOKAHEAD_SAMPLES = LONG_WIN_SAMPLES // 2
PEAK_MIN_HZ = 40.0
PEAK_MAX_HZ = 5000.0
MAX_PEAKS = 60
EPS = 1e-10


@dataclass(frozen=True)
class Features:
    """Per-frame descriptors, each of length ``n_frames``.

    hpcp: (n, 12) harmonic pitch-class profile, unit maximum per frame (0 in silent frames),
    pitch class 0 = A (Essentia's convention; see :data:`HPCP_PC_OF_C`).
    """

    hpcp: np.ndarray  # (n, 12)
    loudness_db: np.ndarray  # RMS level of the 64 ms window, dBFS
    flux: np.ndarray  # half-wave rectified log-spectral flux (onset strength), arbitrary units
    flatness: np.ndarray  # spectral flatness (Wiener entropy) in [0, 1], 50 Hz-8 kHz
    pitch_midi: np.ndarray  # magnitude-weighted mean pitch of spectral peaks, MIDI number
    dissonance: np.ndarray  # Essentia sensory dissonance (Plomp & Levelt / Sethares) in [0, 1]
    peak_energy: np.ndarray  # energy of the spectral peaks (0 means no tonal content)


# Essentia's HPCP bin 0 is the reference frequency (440 Hz, A); C is 3 semitones above A.
HPCP_PC_OF_C = 3


def frame_signal(x: np.ndarray, win: int) -> np.ndarray:
    """Frames of length ``win`` centred on samples ``i * HOP`` for ``i < n_frames(len(x))``."""
    n = n_frames(len(x))
    half = win // 2
    padded = np.zeros(half + n * HOP_SAMPLES + win, dtype=np.float32)
    padded[half : half + len(x)] = x
    return np.lib.stride_tricks.sliding_window_view(padded, win)[::HOP_SAMPLES][:n]


def _spectra(x: np.ndarray, win: int) -> np.ndarray:
    frames = frame_signal(x, win)
    window = np.hanning(win).astype(np.float32)
    # scale so that a full-scale sine gives magnitude ~1 at its peak
    return np.abs(np.fft.rfft(frames * window, axis=1)).astype(np.float32) * (2.0 / window.sum())


def compute_features(x: np.ndarray) -> Features:
    """All frame features of a mono 32 kHz clip (validated by the caller)."""
    import essentia.standard as es  # imported lazily: essentia prints on import

    n = n_frames(len(x))
    # short window: loudness, flux, flatness
    frames_s = frame_signal(x, SHORT_WIN_SAMPLES)
    rms = np.sqrt(np.mean(frames_s.astype(np.float64) ** 2, axis=1))
    loudness_db = 20 * np.log10(rms + 1e-5)  # floor at -100 dBFS
    mag_s = _spectra(x, SHORT_WIN_SAMPLES)
    freqs_s = np.fft.rfftfreq(SHORT_WIN_SAMPLES, 1 / SAMPLE_RATE_HZ)
    logmag = np.log1p(1000.0 * mag_s)
    flux = np.zeros(n, dtype=np.float32)
    flux[1:] = np.maximum(logmag[1:] - logmag[:-1], 0).sum(axis=1)
    band = (freqs_s >= 50) & (freqs_s <= 8000)
    pb = mag_s[:, band].astype(np.float64) ** 2 + EPS
    flatness = np.exp(np.mean(np.log(pb), axis=1)) / np.mean(pb, axis=1)
    flatness[rms < 1e-4] = 0.0

    # long window: spectral peaks -> HPCP, dissonance, pitch height
    mag_l = _spectra(x, LONG_WIN_SAMPLES)
    peaks = es.SpectralPeaks(
        sampleRate=SAMPLE_RATE_HZ,
        maxPeaks=MAX_PEAKS,
        magnitudeThreshold=1e-4,
        minFrequency=PEAK_MIN_HZ,
        maxFrequency=PEAK_MAX_HZ,
        orderBy="frequency",
    )
    hpcp_alg = es.HPCP(
        size=12,
        referenceFrequency=440.0,
        harmonics=4,
        bandPreset=False,
        minFrequency=PEAK_MIN_HZ,
        maxFrequency=PEAK_MAX_HZ,
        weightType="cosine",
        nonLinear=False,
        normalized="none",
        sampleRate=SAMPLE_RATE_HZ,
        windowSize=1.0,
    )
    diss_alg = es.Dissonance()
    hpcp = np.zeros((n, 12), dtype=np.float32)
    dissonance = np.zeros(n, dtype=np.float32)
    pitch = np.full(n, np.nan, dtype=np.float32)
    peak_energy = np.zeros(n, dtype=np.float32)
    for i in range(n):
        f, m = peaks(mag_l[i])
        if len(f) == 0:
            continue
        hpcp[i] = hpcp_alg(f, m)
        e = m.astype(np.float64) ** 2
        peak_energy[i] = e.sum()
        pitch[i] = np.sum(e * (69 + 12 * np.log2(f / 440.0))) / e.sum()
        if len(f) > 1:
            dissonance[i] = diss_alg(f, m / m.max())
    mx = hpcp.max(axis=1, keepdims=True)
    hpcp = np.where(mx > 0, hpcp / np.maximum(mx, EPS), 0).astype(np.float32)
    pitch = _fill_nan(pitch)
    return Features(
        hpcp=hpcp,
        loudness_db=loudness_db.astype(np.float32),
        flux=flux,
        flatness=flatness.astype(np.float32),
        pitch_midi=pitch,
        dissonance=dissonance,
        peak_energy=peak_energy,
    )


def _fill_nan(v: np.ndarray, default: float = 60.0) -> np.ndarray:
    """Linear interpolation over NaN frames (frames without spectral peaks)."""
    ok = np.isfinite(v)
    if not ok.any():
        return np.full_like(v, default)
    idx = np.arange(len(v))
    return np.interp(idx, idx[ok], v[ok]).astype(v.dtype)


def smooth(v: np.ndarray, width_frames: int, causal: bool = False) -> np.ndarray:
    """Moving average along axis 0 over ``width_frames`` frames, centred or trailing (causal)."""
    from scipy.ndimage import uniform_filter1d

    if width_frames <= 1:
        return v
    origin = (width_frames - 1) // 2 if causal else 0
    return uniform_filter1d(v, width_frames, axis=0, mode="nearest", origin=origin)
