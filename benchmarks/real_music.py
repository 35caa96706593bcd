"""Annotate real recorded music and draw the annotation plots (docs/real-music.md).

    python benchmarks/real_music.py --out /tmp/real_music
    python benchmarks/real_music.py --files a.ogg b.mp3 --out /tmp/real_music

Without ``--files`` it looks for four tracks of Debian's game-music packages ``asc-music`` (mp3) and
``drascula-music`` (ogg) under /usr/share/games and /usr/share (``apt-get install asc-music
drascula-music``). Each file is decoded with ``musicinterp.sources.audio_dir.read_audio`` (mono,
32 kHz, float32), cut to the first ``--max-seconds`` (300 s; the self-similarity matrix is
n_frames^2 float32, 0.9 GB at 300 s, and the causal pass builds a second one) and annotated with
``musicinterp.annotate.annotate_full``. Per track it writes ``<name>.png``
(``plot.plot_annotation``) and ``<name>.csv`` (``to_csv``), and prints: duration, annotation time and
real-time factor, fraction of frames with a detected next recurrence, median and most common lag
(0.5 s bins), the Essentia tempo (to read lags in bars), resolution events per minute, the range of the
tension composite, the 5-95 percentile span of the level (dB) and the correlation of the composite
with the level (5 s moving averages; first and last 5 s left out). ``summary.csv`` collects the
numbers. Threads are pinned to one before numpy loads.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import gc  # noqa: E402
import glob  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.ndimage import uniform_filter1d  # noqa: E402

from musicinterp.annotate import annotate_full, to_csv  # noqa: E402
from musicinterp.annotate.plot import plot_annotation  # noqa: E402
from musicinterp.frames import FRAME_RATE_HZ, SAMPLE_RATE_HZ  # noqa: E402
from musicinterp.sources.audio_dir import read_audio  # noqa: E402

# (package, file pattern relative to a search root); the first match under each root is used
DEFAULT_TRACKS = [
    ("asc-music", "asc/music/machine_wars.mp3"),
    ("drascula-music", "scummvm/drascula/audio/track4.ogg"),
    ("drascula-music", "scummvm/drascula/audio/track6.ogg"),
    ("drascula-music", "scummvm/drascula/audio/track9.ogg"),
]
SEARCH_ROOTS = ["/usr/share/games", "/usr/share"]


def default_files() -> list[Path]:
    found = []
    for pkg, pattern in DEFAULT_TRACKS:
        hits = []
        for root in SEARCH_ROOTS:
            hits = sorted(glob.glob(f"{root}/**/{pattern}", recursive=True)) or sorted(glob.glob(f"{root}/{pattern}"))
            if hits:
                break
        if hits:
            found.append(Path(hits[0]))
        else:
            print(f"not found: {pattern} (apt-get install {pkg})", file=sys.stderr)
    return found


def track_name(path: Path) -> str:
    """'machine_wars' for asc, 'drascula-track4' for the numbered drascula files."""
    stem = path.stem
    return f"{path.parent.parent.name}-{stem}" if stem.startswith("track") else stem


def modal_lag(lags: np.ndarray, bin_s: float = 0.5) -> float:
    if len(lags) == 0:
        return float("nan")
    b = np.round(lags / bin_s).astype(int)
    vals, counts = np.unique(b, return_counts=True)
    return float(vals[np.argmax(counts)] * bin_s)


def tempo_bpm(path: Path, max_seconds: float) -> float:
    """Essentia RhythmExtractor2013 (multifeature) tempo of the annotated part, to read lags in bars."""
    import essentia.standard as es

    x = read_audio(path, 44100)[: int(max_seconds * 44100)]
    return float(es.RhythmExtractor2013(method="multifeature")(x)[0])


def run_one(path: Path, out: Path, max_seconds: float) -> dict:
    name = track_name(path)
    x = read_audio(path)
    full_s = len(x) / SAMPLE_RATE_HZ
    cut = full_s > max_seconds
    if cut:
        x = x[: int(max_seconds * SAMPLE_RATE_HZ)]
    dur = len(x) / SAMPLE_RATE_HZ
    t0 = time.perf_counter()
    ann = annotate_full(x, clip_id=name)
    elapsed = time.perf_counter() - t0
    lab = ann.labels
    ok = lab["rec_lag_next_s_valid"]
    lags = lab["rec_lag_next_s"][ok]
    ten = lab["tension"]
    edge = 5 * FRAME_RATE_HZ
    inner = slice(edge, max(edge + 1, len(ten) - edge))
    row = {
        "track": name,
        "file": str(path),
        "file_s": round(full_s, 1),
        "annotated_s": round(dur, 1),
        "cut": cut,
        "annotate_s": round(elapsed, 1),
        "rtf": round(elapsed / dur, 4),
        "rec_next_frac": round(float(ok.mean()), 3),
        "rec_prev_frac": round(float(lab["rec_lag_prev_s_valid"].mean()), 3),
        "median_lag_s": round(float(np.median(lags)), 1) if len(lags) else float("nan"),
        "modal_lag_s": modal_lag(lags),
        "res_events_per_min": round(float(lab["res_event"].sum()) / (dur / 60), 2),
        "tension_min": round(float(ten.min()), 2),
        "tension_max": round(float(ten.max()), 2),
        # dynamics: 5-95 percentile span of the 64 ms level, first and last 5 s left out (fades)
        "loudness_span_db": round(float(np.subtract(*np.percentile(lab["tension_loudness_db"][inner], [95, 5]))), 1),
        # does the composite follow the dynamics? Pearson r of 5 s moving averages, ends left out
        "r_tension_loudness_5s": round(
            float(
                np.corrcoef(
                    uniform_filter1d(lab["tension"].astype(np.float64), 5 * FRAME_RATE_HZ)[inner],
                    uniform_filter1d(lab["tension_loudness_db"].astype(np.float64), 5 * FRAME_RATE_HZ)[inner],
                )[0, 1]
            ),
            2,
        ),
        "tempo_bpm": round(tempo_bpm(path, max_seconds), 1),
    }
    title = f"{name} ({path.name}), {dur:.0f} s" + (f" = first {max_seconds:.0f} s of {full_s:.0f} s" if cut else "")
    plot_annotation(ann, out / f"{name}.png", title=title)
    to_csv(lab, out / f"{name}.csv")
    np.savez_compressed(out / f"{name}.npz", **{k: v for k, v in lab.items()})  # for later inspection
    del ann, lab, x
    gc.collect()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", nargs="+", type=Path, help="audio files (default: see DEFAULT_TRACKS)")
    ap.add_argument("--out", type=Path, default=Path("real_music_out"), help="output folder")
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        help="annotate at most the first this many seconds of a file (memory: n_frames^2)",
    )
    args = ap.parse_args(argv)
    files = args.files or default_files()
    if not files:
        print("no audio files: pass --files or apt-get install asc-music drascula-music", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    hdr = (
        f"{'track':<18} {'dur s':>6} {'ann s':>6} {'RTF':>6} {'rec':>5} {'med lag':>7} "
        f"{'mode lag':>8} {'bpm':>6} {'res/min':>7} {'tension range':>14} {'dyn dB':>6} {'r(T,L)':>6}"
    )
    print(hdr)
    for f in files:
        r = run_one(Path(f), args.out, args.max_seconds)
        rows.append(r)
        note = f"  (first {r['annotated_s']:.0f} s of {r['file_s']:.0f} s)" if r["cut"] else ""
        print(
            f"{r['track']:<18} {r['annotated_s']:>6.1f} {r['annotate_s']:>6.1f} {r['rtf']:>6.3f} "
            f"{r['rec_next_frac']:>5.2f} {r['median_lag_s']:>7.1f} {r['modal_lag_s']:>8.1f} "
            f"{r['tempo_bpm']:>6.1f} {r['res_events_per_min']:>7.2f} "
            f"{r['tension_min']:>6.2f}..{r['tension_max']:<6.2f} "
            f"{r['loudness_span_db']:>6.1f} {r['r_tension_loudness_5s']:>6.2f}{note}",
            flush=True,
        )
    with open(args.out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"frame rate {FRAME_RATE_HZ} Hz; peak RSS {peak_gb:.1f} GB; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
