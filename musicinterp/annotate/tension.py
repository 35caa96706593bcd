"""Tension components, their composite and resolution events (README, "Tension").

Components (each a moving average over ``tension_smooth_s``): loudness (dBFS), onset density
(onsets/s), pitch height (MIDI), sensory dissonance, spectral flatness (dB), key unclarity
(1 - key clarity) and tensile strain on Chew's spiral array. The composite follows Farbood (2012)
in combining loudness, onset frequency, pitch height and harmony linearly, and Herremans & Chew
(2016) for the tonal part: each component is z-scored within the clip and the composite is their
weighted mean, z-scored again (mean 0, sd 1 per clip).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import find_peaks

from musicinterp.annotate import spiral
from musicinterp.annotate.features import HPCP_PC_OF_C, Features, smooth
from musicinterp.config import AnnotationSpec
from musicinterp.frames import FRAME_RATE_HZ, frames_of

# Krumhansl & Kessler (1982) key profiles, tonic first
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
SILENCE_BELOW_PEAK_DB = 60.0


@dataclass(frozen=True)
class Tension:
    components: dict[str, np.ndarray]  # name -> per-frame values (units in the README)
    composite: np.ndarray  # z-scored weighted mean of z-scored components
    events: np.ndarray  # frame indices of resolution events
    key: tuple[int, bool]  # tonic pitch class (0 = C) and minor?


def chroma_c(hpcp: np.ndarray) -> np.ndarray:
    """Essentia HPCP (bin 0 = A) rotated so that column 0 is C."""
    return np.roll(hpcp, -HPCP_PC_OF_C, axis=1)


def key_clarity(chroma: np.ndarray) -> np.ndarray:
    """Max Pearson correlation of each row with the 24 rotated Krumhansl-Kessler profiles; NaN if flat."""
    profs = np.array([np.roll(p, k) for p in (KK_MAJOR, KK_MINOR) for k in range(12)])  # (24, 12)
    pz = (profs - profs.mean(1, keepdims=True)) / profs.std(1, keepdims=True)
    c = chroma - chroma.mean(1, keepdims=True)
    sd = c.std(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cz = np.where(sd > 1e-9, c / sd, np.nan)
    return (cz @ pz.T / 12).max(axis=1)


def onset_density(flux: np.ndarray, window_frames: int) -> np.ndarray:
    """Onsets per second: peaks of the spectral flux above an adaptive threshold, counted in a window."""
    if flux.max() <= 0:
        return np.zeros_like(flux)
    thr = median_filter(flux, size=25, mode="nearest") + 0.1 * np.percentile(flux, 95)
    peaks, _ = find_peaks(flux, height=thr, distance=3)
    impulses = np.zeros(len(flux))
    impulses[peaks] = 1.0
    return smooth(impulses, window_frames) * FRAME_RATE_HZ


def _fill(v: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    if not ok.any():
        return np.zeros_like(v)
    idx = np.arange(len(v))
    return np.interp(idx, idx[ok], v[ok])


def _z(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / sd if sd > 1e-9 else np.zeros_like(v)


def components(f: Features, spec: AnnotationSpec) -> tuple[dict[str, np.ndarray], tuple[int, bool]]:
    sm = frames_of(spec.tension_smooth_s)
    loud = np.maximum(f.loudness_db, f.loudness_db.max() - SILENCE_BELOW_PEAK_DB).astype(np.float64)
    chroma = chroma_c(f.hpcp.astype(np.float64)) * np.sqrt(np.maximum(f.peak_energy, 0))[:, None]
    clar = key_clarity(smooth(chroma, frames_of(spec.key_window_s)))
    # spiral array: key of the whole clip (centre-of-effect generator), cloud over strain_window_s
    tonic_k, minor = spiral.best_key(chroma.sum(axis=0))
    strain = spiral.tensile_strain(smooth(chroma, frames_of(spec.strain_window_s)), tonic_k, minor)
    flat_db = 10 * np.log10(np.maximum(f.flatness.astype(np.float64), 1e-6))
    comps = {
        "loudness": loud,
        "onset_density": onset_density(f.flux.astype(np.float64), frames_of(spec.onset_window_s)),
        "pitch_height": f.pitch_midi.astype(np.float64),
        "dissonance": f.dissonance.astype(np.float64),
        "flatness": flat_db,
        "key_unclarity": 1.0 - _fill(clar),
        "tensile_strain": _fill(strain),
    }
    comps = {k: smooth(v, sm) for k, v in comps.items()}
    return comps, ((7 * tonic_k) % 12, minor)


def composite(comps: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    tot = sum(weights.get(k, 0.0) for k in comps)
    mix = sum(weights.get(k, 0.0) * _z(v) for k, v in comps.items()) / tot
    return _z(np.asarray(mix))


def resolutions(tension: np.ndarray, spec: AnnotationSpec) -> np.ndarray:
    """Frames where a fall of the composite by >= ``resolution_drop`` from a peak ends (its trough).

    A peak is a local maximum of prominence >= ``resolution_drop``; its trough is the minimum before
    the next peak or ``resolution_max_fall_s``, whichever comes first. The event is the trough: the
    moment of arrival, where the music has resolved.
    """
    peaks, _ = find_peaks(tension, prominence=spec.resolution_drop)
    max_fall = frames_of(spec.resolution_max_fall_s)
    # the components are centred moving averages of windows that run off the clip's end there, so a
    # fall that only ends at the clip's last frames is the edge, not an arrival
    last_ok = len(tension) - 1 - frames_of(spec.tension_smooth_s / 2)
    events = []
    for j, p in enumerate(peaks):
        end = min(len(tension), p + max_fall + 1, peaks[j + 1] if j + 1 < len(peaks) else len(tension))
        if end <= p + 1:
            continue
        q = p + 1 + int(np.argmin(tension[p + 1 : end]))
        if tension[p] - tension[q] >= spec.resolution_drop and q <= last_ok:
            events.append(q)
    return np.asarray(events, dtype=np.int64)


def compute_tension(f: Features, spec: AnnotationSpec) -> Tension:
    comps, key = components(f, spec)
    comp = composite(comps, spec.tension_weights)
    return Tension(components=comps, composite=comp, events=resolutions(comp, spec), key=key)
