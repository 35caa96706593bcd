"""``annotate``: one clip's samples -> per-frame recurrence and tension labels; ``to_csv``.

Every label is an array of length ``n_frames(len(samples))`` on the 50 Hz grid (frame i centred at
i/50 s). No array holds NaN: a label that can be missing ``X`` has a boolean ``X_valid`` beside it,
and ``X`` is 0 where ``X_valid`` is false. The CSV writes those cells empty.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicinterp.annotate import recurrence, tension
from musicinterp.annotate.features import HOP_SAMPLES, LOOKAHEAD_SAMPLES, Features, compute_features
from musicinterp.config import TENSION_COMPONENTS, AnnotationSpec
from musicinterp.frames import FRAME_RATE_HZ, SAMPLE_RATE_HZ, frames_of, n_frames
from musicinterp.sources.base import ClipError

log = logging.getLogger(__name__)

CSV_REQUIRED = ("rec_lag_next_s", "rec_within_4s", "rec_within_8s", "tension")
WINDOW_S = 300.0  # longest audio annotated as one piece (memory grows with frames squared)
CLIPPED_FRACTION_WARN = 0.001
DC_WARN = 1e-3
# causal labels at frame t may use audio up to the end of frame t: samples < (t + 1) * HOP
CAUSAL_SHIFT_FRAMES = math.ceil((LOOKAHEAD_SAMPLES - HOP_SAMPLES) / HOP_SAMPLES)


@dataclass(frozen=True)
class Annotation:
    """Labels plus the intermediate results that the plots and the validation use."""

    labels: dict[str, np.ndarray]
    features: Features
    rec: recurrence.Recurrence
    tension: tension.Tension


def horizon_name(h: float) -> str:
    return f"{h:g}s"


def prepare_samples(
    samples, spec: AnnotationSpec, clip_id: str = "<clip>", sample_rate_hz: int = SAMPLE_RATE_HZ
) -> np.ndarray:
    """Check and condition raw samples: mono float32 at 32 kHz, DC removed; errors name the clip."""
    x = np.asarray(samples)
    if x.ndim == 2 and min(x.shape) <= 8:  # (n, channels) or (channels, n): mix down
        x = x.mean(axis=int(np.argmin(x.shape)))
        log.info("clip %r: mixed %d channels to mono", clip_id, min(np.asarray(samples).shape))
    if x.ndim != 1:
        raise ClipError(clip_id, f"expected mono samples (1-D array), got shape {np.shape(samples)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ClipError(
            clip_id,
            f"expected float samples in [-1, 1], got dtype {x.dtype}; convert integer PCM first (e.g. int16 / 32768)",
        )
    if sample_rate_hz != SAMPLE_RATE_HZ:
        from scipy.signal import resample_poly

        g = math.gcd(int(sample_rate_hz), SAMPLE_RATE_HZ)
        x = resample_poly(x, SAMPLE_RATE_HZ // g, int(sample_rate_hz) // g)
        log.info("clip %r: resampled %d Hz -> %d Hz", clip_id, sample_rate_hz, SAMPLE_RATE_HZ)
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ClipError(clip_id, f"{int((~np.isfinite(x)).sum())} samples are NaN or infinite")
    dur = len(x) / SAMPLE_RATE_HZ
    if dur < spec.min_duration_s:
        raise ClipError(clip_id, f"too short to annotate: {dur:.2f} s < min_duration_s={spec.min_duration_s:g} s")
    dc = x.mean()
    if abs(dc) > DC_WARN:
        log.warning("clip %r: removed a DC offset of %.4f", clip_id, dc)
    x = x - dc
    peak = float(np.abs(x).max())
    if peak < spec.silence_peak:
        raise ClipError(clip_id, f"silent: peak |sample| {peak:.2e} < silence_peak={spec.silence_peak:g}")
    clipped = float(np.mean(np.abs(x) >= 0.999 * peak)) if peak >= 0.99 else 0.0
    if clipped > CLIPPED_FRACTION_WARN:
        log.warning(
            "clip %r: %.2f%% of samples sit at the peak (clipped audio); annotating anyway", clip_id, 100 * clipped
        )
    if peak > 1.0:
        log.warning("clip %r: peak %.2f exceeds full scale; scaled to 1", clip_id, peak)
        x = x / peak
    return x.astype(np.float32)


def within_horizon(event_lag: np.ndarray, has: np.ndarray, h_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 'event within h' and its validity: positives, or frames whose horizon ends in the clip."""
    n = len(has)
    pos = has & (event_lag <= h_frames)
    valid = pos | (np.arange(n) + h_frames <= n - 1)
    return np.where(valid, pos, 0).astype(np.int8), valid


def _causal_rate(features: Features, present: np.ndarray, spec: AnnotationSpec) -> np.ndarray:
    """Fraction of recent frames that are returns, from frames whose audio ends by frame t."""
    xc = recurrence.embed(features.hpcp, present, spec, causal=True)
    rc = recurrence.detect(xc, spec, causal=True)
    hits = (rc.prev_lag > 0).astype(np.float64)
    w = frames_of(spec.rate_window_s)
    cs = np.concatenate([[0.0], np.cumsum(hits)])
    idx = np.arange(len(hits))
    rate = (cs[idx + 1] - cs[np.maximum(idx + 1 - w, 0)]) / np.minimum(idx + 1, w)
    out = np.zeros_like(rate)
    s = CAUSAL_SHIFT_FRAMES
    out[s:] = rate[: len(rate) - s]
    return out


COMPONENT_UNITS = {"loudness": "db", "onset_density": "hz", "pitch_height": "midi", "flatness": "db"}
_COMPONENT_DOC = {
    "loudness": ("dBFS", "RMS level of a 64 ms window, floored 60 dB below the clip's loudest frame"),
    "onset_density": ("onsets/s", "spectral-flux onsets in a 2 s window"),
    "pitch_height": ("MIDI", "energy-weighted mean pitch of the spectral peaks (40 Hz-5 kHz)"),
    "dissonance": ("0-1", "Essentia Dissonance of the spectral peaks (Plomp & Levelt 1965, Sethares 1998)"),
    "flatness": ("dB", "spectral flatness of the power spectrum, 50 Hz-8 kHz"),
    "key_unclarity": ("0-2", "1 - best Pearson correlation of 4 s chroma with the 24 Krumhansl-Kessler profiles"),
    "tensile_strain": (
        "spiral-array units",
        "distance of the 1 s chroma cloud from the clip's key (Herremans & Chew 2016)",
    ),
}


def component_label(name: str) -> str:
    return f"tension_{name}" + (f"_{COMPONENT_UNITS[name]}" if name in COMPONENT_UNITS else "")


def label_schema(spec: AnnotationSpec | None = None) -> dict[str, dict[str, str]]:
    """Every label :func:`annotate` returns (``time`` aside), in order, with dtype, units and meaning.

    The store's template is made from this before any clip is annotated; a test checks that
    :func:`annotate` returns exactly these names and dtypes.
    """
    spec = spec or AnnotationSpec()
    out: dict[str, dict[str, str]] = {}

    def add(name: str, dtype: str, units: str, doc: str, valid: bool = False) -> None:
        out[name] = {"dtype": dtype, "units": units, "description": doc}
        if valid:
            out[name]["valid_mask"] = f"{name}_valid"
            out[f"{name}_valid"] = {"dtype": "bool", "units": "", "description": f"where {name} is defined"}

    add("rec_lag_next_s", "float32", "s", "lag to the next recurrence of the content heard at t", True)
    add("rec_lag_prev_s", "float32", "s", "lag since the previous occurrence of the content heard at t", True)
    add("rec_strength", "float32", "0-1", "path-enhanced similarity of the best accepted recurrence of t")
    for h in spec.horizons_s:
        add(f"rec_within_{horizon_name(h)}", "int8", "0/1", f"the content at t recurs within {h:g} s", True)
    add(
        "rec_rate_causal",
        "float32",
        "0-1",
        f"fraction of the last {spec.rate_window_s:g} s that returned earlier material (audio up to t only)",
    )
    add("tension", "float32", "z", "composite tension (weighted mean of the z-scored components), z-scored")
    for name in TENSION_COMPONENTS:
        units, doc = _COMPONENT_DOC[name]
        add(component_label(name), "float32", units, doc)
    add("res_event", "int8", "0/1", "tension-resolution event (arrival after a fall of the composite)")
    for h in spec.horizons_s:
        add(f"res_within_{horizon_name(h)}", "int8", "0/1", f"a resolution event falls in (t, t + {h:g} s]", True)
    return out


def annotate_full(
    samples, spec: AnnotationSpec | None = None, clip_id: str = "<clip>", sample_rate_hz: int = SAMPLE_RATE_HZ
) -> Annotation:
    """Labels and intermediates of one clip (see :func:`annotate`)."""
    spec = spec or AnnotationSpec()
    x = prepare_samples(samples, spec, clip_id, sample_rate_hz)
    n = n_frames(len(x))
    f = compute_features(x)
    present = recurrence.tonal_presence(f.peak_energy)
    if not present.any():
        log.warning("clip %r: no tonal content found; no recurrence can be detected", clip_id)
    rec = recurrence.detect(recurrence.embed(f.hpcp, present, spec, causal=False), spec)
    ten = tension.compute_tension(f, spec)

    lab: dict[str, np.ndarray] = {"time": (np.arange(n) / FRAME_RATE_HZ).astype(np.float64)}
    for name, lag in (("rec_lag_next_s", rec.next_lag), ("rec_lag_prev_s", rec.prev_lag)):
        ok = lag > 0
        lab[name] = np.where(ok, lag / FRAME_RATE_HZ, 0.0).astype(np.float32)
        lab[name + "_valid"] = ok
    lab["rec_strength"] = rec.strength.astype(np.float32)
    for h in spec.horizons_s:
        v, ok = within_horizon(rec.next_lag, rec.next_lag > 0, frames_of(h))
        lab[f"rec_within_{horizon_name(h)}"], lab[f"rec_within_{horizon_name(h)}_valid"] = v, ok
    lab["rec_rate_causal"] = _causal_rate(f, present, spec).astype(np.float32)

    lab["tension"] = ten.composite.astype(np.float32)
    for k, v in ten.components.items():
        lab[component_label(k)] = v.astype(np.float32)
    ev = np.zeros(n, dtype=np.int8)
    ev[ten.events] = 1
    lab["res_event"] = ev
    # lag from t to the next event strictly after t
    nxt = np.full(n, -1, dtype=np.int64)
    for e in ten.events[::-1]:
        nxt[:e] = e - np.arange(e)
    for h in spec.horizons_s:
        v, ok = within_horizon(nxt, nxt > 0, frames_of(h))
        lab[f"res_within_{horizon_name(h)}"], lab[f"res_within_{horizon_name(h)}_valid"] = v, ok
    for k, v in lab.items():
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ClipError(clip_id, f"internal error: label {k!r} holds NaN/inf; please report")
    return Annotation(labels=lab, features=f, rec=rec, tension=ten)


def annotate(
    samples, spec: AnnotationSpec | None = None, clip_id: str = "<clip>", sample_rate_hz: int = SAMPLE_RATE_HZ
) -> dict[str, np.ndarray]:
    """Per-frame labels of a clip (mono float samples, 32 kHz unless ``sample_rate_hz`` says otherwise).

    Returns ``{name: array of length n_frames}`` (names and units in musicinterp/annotate/README.md),
    free of NaN; missing values are flagged by the ``<name>_valid`` arrays. Raises
    :class:`~musicinterp.sources.base.ClipError` naming ``clip_id`` for unusable input.
    """
    return annotate_full(samples, spec, clip_id, sample_rate_hz).labels


def annotate_windows(
    samples: np.ndarray,
    spec: AnnotationSpec | None = None,
    clip_id: str = "<clip>",
    window_s: float = WINDOW_S,
    on_window=None,
) -> tuple[dict[str, np.ndarray], Annotation | None]:
    """Labels of audio of any length, annotated ``window_s`` at a time (32 kHz mono samples).

    The self-similarity grows with the square of the frames, so long files are cut into consecutive
    windows (a multiple of the 640-sample hop, so the frames tile) and recurrence is found within a
    window only; a last window shorter than ``min_duration_s`` joins the one before. Returns the
    labels and, when there was a single window, the full :class:`Annotation` (for plots).
    """
    spec = spec or AnnotationSpec()
    step = int(window_s * FRAME_RATE_HZ) * HOP_SAMPLES
    starts = list(range(0, len(samples), step)) or [0]
    if len(starts) > 1 and len(samples) - starts[-1] < spec.min_duration_s * SAMPLE_RATE_HZ:
        starts.pop()
    bounds = list(zip(starts, [*starts[1:], len(samples)]))
    parts = []
    for i, (a, b) in enumerate(bounds):
        if on_window is not None:
            on_window(i + 1, len(bounds))
        name = clip_id if len(bounds) == 1 else f"{clip_id} [{a / SAMPLE_RATE_HZ:g}-{b / SAMPLE_RATE_HZ:g} s]"
        parts.append(annotate_full(samples[a:b], spec, clip_id=name))
    if len(parts) == 1:
        return parts[0].labels, parts[0]
    labels = {k: np.concatenate([p.labels[k] for p in parts]) for k in parts[0].labels}
    labels["time"] = np.arange(len(labels["time"])) / FRAME_RATE_HZ
    return labels, None


def to_csv(labels: dict[str, np.ndarray], path: str | Path) -> Path:
    """One row per frame: ``time`` then every label; cells whose ``_valid`` flag is false are empty."""
    path = Path(path)
    cols = [k for k in labels if k != "time" and not k.endswith("_valid")]
    cols = [c for c in CSV_REQUIRED if c in cols] + [c for c in cols if c not in CSV_REQUIRED]
    n = len(labels["time"])
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", *cols])
        for i in range(n):
            row = [f"{labels['time'][i]:.2f}"]
            for c in cols:
                valid = labels.get(c + "_valid")
                if valid is not None and not valid[i]:
                    row.append("")
                elif labels[c].dtype.kind in "iub":
                    row.append(str(int(labels[c][i])))
                else:
                    row.append(f"{float(labels[c][i]):.4g}")
            w.writerow(row)
    return path
