"""Annotation speed on one core: real-time factor of the whole annotation.

    python benchmarks/annotate_speed.py --seconds 30 120

Renders music (random notes and chords with a planted return, the project's numpy-synth style),
then times, per clip length: the baseline (a plain numpy STFT of the clip at the 50 Hz hop), the
Essentia features, the recurrence pass (self-similarity, path enhancement, lag search), the causal
recurrence pass, tension, and the whole ``annotate``. Prints each stage's share, the ratio of the
whole to the baseline, and the real-time factor (annotation time / audio duration; target <= 0.1).
Threads are pinned to one before numpy loads.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from musicinterp.annotate import AnnotationSpec, annotate  # noqa: E402
from musicinterp.annotate import recurrence as rec  # noqa: E402
from musicinterp.annotate.features import SHORT_WIN_SAMPLES, _spectra, compute_features  # noqa: E402
from musicinterp.annotate.tension import compute_tension  # noqa: E402
from musicinterp.frames import SAMPLE_RATE_HZ  # noqa: E402

SR = SAMPLE_RATE_HZ


def render(seconds: float, seed: int = 0) -> np.ndarray:
    """Random melody over random triads (one per second) with the first 4 s returning at 40%."""
    rng = np.random.default_rng(seed)
    y = np.zeros(int(seconds * SR) + SR)
    scale = [0, 2, 4, 5, 7, 9, 11]

    def tone(midi: float, dur: float, amp: float) -> np.ndarray:
        t = np.arange(int(dur * SR)) / SR
        f = 440 * 2 ** ((midi - 69) / 12)
        env = np.minimum(1, t / 0.01) * np.exp(-2.5 * t)
        return amp * env * sum(a * np.sin(2 * np.pi * f * k * t) for k, a in ((1, 1), (2, 0.5), (3, 0.3)))

    t = 0.0
    while t < seconds:
        d = 0.25 * rng.choice([1, 1, 2])
        s = tone(60 + rng.choice(scale), d, 0.15)
        y[int(t * SR) : int(t * SR) + len(s)] += s
        t += d
    for b in np.arange(0, seconds, 1.0):
        root = 48 + rng.choice(scale)
        for iv in (0, 4, 7):
            s = tone(root + iv, 1.0, 0.1)
            y[int(b * SR) : int(b * SR) + len(s)] += s
    r0 = int(0.4 * seconds * SR)
    y[r0 : r0 + 4 * SR] = y[: 4 * SR]
    return y[: int(seconds * SR)].astype(np.float32)


def _best(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[30.0, 120.0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    spec = AnnotationSpec()
    print(
        f"{'audio_s':>8} {'stft_s':>8} {'feat_s':>8} {'rec_s':>8} {'causal_s':>8} {'tension_s':>9} "
        f"{'total_s':>8} {'total/stft':>10} {'RTF':>6}"
    )
    for sec in args.seconds:
        y = render(sec)
        annotate(y[: 3 * SR], spec)  # warm-up (imports, essentia init)
        base = _best(lambda y=y: _spectra(y, SHORT_WIN_SAMPLES), args.repeats)
        f = compute_features(y)
        present = rec.tonal_presence(f.peak_energy)
        t_feat = _best(lambda y=y: compute_features(y), args.repeats)
        t_rec = _best(lambda f=f, p=present: rec.detect(rec.embed(f.hpcp, p, spec, False), spec), args.repeats)
        t_causal = _best(
            lambda f=f, p=present: rec.detect(rec.embed(f.hpcp, p, spec, True), spec, causal=True), args.repeats
        )
        t_ten = _best(lambda f=f: compute_tension(f, spec), args.repeats)
        total = _best(lambda y=y: annotate(y, spec), args.repeats)
        print(
            f"{sec:8.0f} {base:8.3f} {t_feat:8.3f} {t_rec:8.3f} {t_causal:8.3f} {t_ten:9.3f} "
            f"{total:8.3f} {total / base:10.1f} {total / sec:6.3f}"
        )


if __name__ == "__main__":
    main()
