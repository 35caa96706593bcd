"""Material with exact recurrence ground truth beyond the project's own pieces: corpus families, splices, probes.

Three kinds of clip, each with ``returns`` in the format of :mod:`musicinterp.annotate.truth`:

* **Corpus families** (:data:`FAMILIES`): scores with repeat signs from music21's own corpus (Ryan's
  Mammoth Collection, Aird's Airs, Mozart / Haydn / Beethoven movements), repeats expanded
  (:func:`musicinterp.sources.music21_source.expand_stream`) and rendered by the project's synthesizer
  with a timbre and a tempo drawn per piece from the family's sets, so that the renders differ from the
  chorales' fixed flute/reed/organ at 90 bpm. The truth is
  :func:`~musicinterp.annotate.truth.returns_from_score` (identical measures, by repeat sign or
  written out) of the expanded score, cut to the clip. The **O'Neill collection** (``oneills1850``)
  is held out for checks made outside this harness and is never listed here.
* **Splices of recorded music** (:func:`splice`): X | Y | X' from Debian's game-music packages, with
  X' = X low-passed (3 kHz), 3 dB quieter and with white noise at 20 dB SNR, so the return of X at
  X' is known to the sample; the unrelated twin X | Y | Z (Z from a third track, treated like X')
  has no return across segments. What recurs *inside* a segment of a recording is not known, so
  splice clips are scored across segments only (``musicinterp.annotate.scoring.score_splice``).
* **Blind-spot probes** (:func:`probe_piece`): X | Y | X'' of the synthetic pieces' material with X''
  transposed, slower, partly re-noted or short (:data:`BLIND_SPOT_PROBES`), to measure what the
  annotator cannot see.

Every list is deterministic: a family's scan order is a fixed permutation (seed 0) of its corpus
items, and its **development split** is the first ``n_dev`` pieces of the scan that have a return
inside the clip, its **held-out split** the next ones (:func:`family_items`). Splice tracks are split
by track (alternate tracks of each package's sorted list), so no recording is in both splits.

Ground-truth material only: nothing here scores (the evaluation is ``validation`` / ``scoring``).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from musicinterp.annotate.truth import returns_from_score
from musicinterp.frames import HOP_SAMPLES, SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

HELD_OUT_COLLECTIONS = ("oneills1850",)  # never used here (an outside held-out check uses it)
MIN_RETURNED_S = 4.0  # a piece enters a family only if this much of its clip returns (per the score)
SCAN_SEED = 0


@dataclass(frozen=True)
class Family:
    """A corpus family: where its scores come from and how they are rendered."""

    name: str
    description: str
    collections: tuple[str, ...]  # music21 corpus folders (first path component)
    opus: bool  # the files are ABC collections of many tunes (music21 parses an Opus)
    tempo_bpm: tuple[float, float]  # quarter-note tempo drawn uniformly per piece
    timbres: tuple[tuple[str, ...], ...]  # one tuple per choice: the timbre of part 0, 1, ... (last repeats)
    clip_s: float  # the first clip_s seconds of the expanded render are scored
    exclude: tuple[str, ...] = ()  # path fragments never used (duplicates in another format)


SOLO = (("flute",), ("reed",), ("pluck",), ("piano",), ("organ",))
ENSEMBLES = (
    ("piano",),
    ("pluck", "pluck", "piano", "piano"),
    ("reed", "flute", "organ", "organ"),
    ("flute", "reed", "reed", "piano"),
    ("organ",),
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "ryans",
            "Ryan's Mammoth Collection (1883): reels, jigs, hornpipes, airs; one melody line per tune",
            ("ryansMammoth",),
            False,
            (100.0, 160.0),
            SOLO,
            30.0,
        ),
        Family(
            "airds",
            "Aird's Selection of Scotch, English, Irish and Foreign Airs (1782-1803): one melody line",
            ("airdsAirs",),
            True,
            (80.0, 140.0),
            SOLO,
            30.0,
        ),
        Family(
            "classical",
            "Mozart, Haydn and Beethoven movements (string quartets, a sonata): four or more parts",
            ("mozart", "haydn", "beethoven"),
            False,
            (100.0, 150.0),
            ENSEMBLES,
            45.0,
            exclude=(".krn",),
        ),
    )
}


def _seed(item: str) -> int:
    return zlib.crc32(item.encode())


def _corpus_paths(collections: tuple[str, ...]) -> list[str]:
    from music21 import corpus

    assert not set(collections) & set(HELD_OUT_COLLECTIONS)
    out = []
    for p in corpus.getPaths():
        s = str(p).replace("\\", "/")
        rel = s.split("/corpus/", 1)[1] if "/corpus/" in s else s
        if rel.split("/")[0] in collections:
            out.append(rel)
    return sorted(out)


@lru_cache(maxsize=8)  # an ABC collection parses into one Opus of hundreds of tunes: keep a few
def _parse(path: str):
    from music21 import corpus

    from musicinterp.sources.base import ClipError

    try:
        return corpus.parse(path)
    except Exception as e:  # noqa: BLE001 - music21 raises many kinds
        raise ClipError(f"music21:{path}", f"cannot load from the music21 corpus: {e}") from e


def scan(family: str) -> list[str]:
    """The family's items in scan order: ``'ryansMammoth/AcaciaReel.abc'`` or, for ABC collections,
    ``'airdsAirs/book1.abc#12'`` (the tune's ``X:`` number). Parses every collection file of an
    opus family (slow the first time; music21 caches the parse)."""
    fam = FAMILIES[family]
    paths = [p for p in _corpus_paths(fam.collections) if not any(x in p for x in fam.exclude)]
    items = []
    if fam.opus:
        for p in paths:
            try:
                op = _parse(p)
            except Exception as e:  # noqa: BLE001
                log.warning("family %s: %s", family, e)
                continue
            items += [f"{p}#{s.metadata.number}" for s in op.scores if s.metadata and s.metadata.number]
    else:
        items = paths
    perm = np.random.default_rng(SCAN_SEED).permutation(len(items))
    return [items[i] for i in perm]


def _score(item: str):
    path, _, number = item.partition("#")
    obj = _parse(path)
    if number:
        sc = obj.getScoreByNumber(int(number)) if hasattr(obj, "getScoreByNumber") else None
        if sc is None:
            from musicinterp.sources.base import ClipError

            raise ClipError(f"music21:{item}", "no tune with that number in the collection")
        return sc
    return obj


@dataclass(frozen=True)
class FamilyClip:
    item: str
    family: str
    samples: np.ndarray
    returns: list[dict]
    tempo_bpm: float
    timbres: tuple[str, ...]
    clip_s: float
    n_parts: int

    def meta(self) -> dict:
        return {
            "item": self.item,
            "tempo_bpm": round(self.tempo_bpm, 1),
            "timbres": list(self.timbres),
            "clip_s": round(self.clip_s, 3),
            "parts": self.n_parts,
            "returned_s": round(sum(r["end_s"] - r["start_s"] for r in self.returns), 3),
        }


def render_item(family: str, item: str) -> FamilyClip:
    """One piece of a family: expanded, rendered with its drawn timbre and tempo, cut to the clip.

    Raises :class:`~musicinterp.sources.base.ClipError` when music21 cannot load or expand it.
    """
    from musicinterp.sources.base import cut_truth
    from musicinterp.sources.music21_source import expand_stream
    from musicinterp.sources.synth import render

    fam = FAMILIES[family]
    rng = np.random.default_rng(_seed(item))
    tempo = float(rng.uniform(*fam.tempo_bpm))
    timbres = fam.timbres[int(rng.integers(len(fam.timbres)))]
    notes, truth, duration = expand_stream(_score(item), f"music21:{item}", tempo)
    parts = sorted({n["part"] for n in truth["notes"]})
    part_of = [n["part"] for n in truth["notes"]]  # expand_stream lists notes and truth notes together
    notes = [replace(n, timbre=timbres[min(p, len(timbres) - 1)]) for n, p in zip(notes, part_of)]
    clip_s = min(duration, fam.clip_s)
    samples = render(notes, duration)[: int(round(clip_s * SAMPLE_RATE_HZ))]
    clip_s = len(samples) / SAMPLE_RATE_HZ
    truth = cut_truth(truth, 0.0, clip_s)
    returns = returns_from_score(truth["measures"], truth["notes"])
    used = tuple(timbres[min(p, len(timbres) - 1)] for p in parts)
    return FamilyClip(item, family, samples, returns, tempo, used, clip_s, len(parts))


def returned_in_clip(returns: list[dict], clip_s: float) -> float:
    """Seconds of the clip whose content truly recurs later inside the clip (source spans with their
    return inside)."""
    total = 0.0
    for r in returns:
        s0, s1, r0, r1 = r["source_start_s"], r["source_end_s"], r["start_s"], r["end_s"]
        if r0 >= clip_s:
            continue
        scale = (r1 - r0) / (s1 - s0)
        # source frames whose mapped time lies inside the clip
        total += max(0.0, min(s1, s0 + (clip_s - r0) / scale) - s0)
    return total


def _cached_render(family: str, item: str, cache: Path | None) -> FamilyClip | str:
    """:func:`render_item`, or why it failed (a string); kept in ``cache`` (a folder) when given."""
    import hashlib
    import json

    from musicinterp.sources.base import ClipError

    f = cache / f"{family}-{hashlib.sha1(item.encode()).hexdigest()[:16]}.npz" if cache else None
    if f is not None and f.exists():
        z = np.load(f)
        meta = json.loads(str(z["meta"]))
        if "failed" in meta:
            return meta["failed"]
        return FamilyClip(
            item,
            family,
            z["samples"],
            meta["returns"],
            meta["tempo_bpm"],
            tuple(meta["timbres"]),
            meta["clip_s"],
            meta["n_parts"],
        )
    try:
        clip: FamilyClip | str = render_item(family, item)
    except ClipError as e:
        clip = e.problem
    except Exception as e:  # noqa: BLE001 - a malformed tune must not stop the scan
        clip = f"{type(e).__name__}: {e}"
    if f is not None:
        if isinstance(clip, str):
            np.savez(f, samples=np.zeros(0, np.float32), meta=json.dumps({"failed": clip}))
        else:
            meta = {
                "returns": clip.returns,
                "tempo_bpm": clip.tempo_bpm,
                "timbres": list(clip.timbres),
                "clip_s": clip.clip_s,
                "n_parts": clip.n_parts,
            }
            np.savez(f, samples=clip.samples, meta=json.dumps(meta))
    return clip


def family_items(
    family: str, n_dev: int, n_held: int, log_progress=None, cache: str | Path | None = None
) -> tuple[list[FamilyClip], list[FamilyClip]]:
    """The development and held-out clips of a family: the first ``n_dev`` pieces of :func:`scan`
    with at least ``MIN_RETURNED_S`` of returning material inside the clip, then the next ``n_held``.
    Pieces music21 cannot load or expand are logged and passed over. ``cache``: a folder that keeps the
    scan order and the renders (a rerun skips music21; delete it after changing this module)."""
    import json

    cache = Path(cache) if cache else None
    order = cache / f"{family}-scan.json" if cache else None
    if order is not None and order.exists():
        items = json.loads(order.read_text())
    else:
        items = scan(family)
        if order is not None:
            order.parent.mkdir(parents=True, exist_ok=True)
            order.write_text(json.dumps(items))
    out: list[FamilyClip] = []
    for item in items:
        if len(out) >= n_dev + n_held:
            break
        clip = _cached_render(family, item, cache)
        if isinstance(clip, str):
            log.warning("family %s: %s: %s", family, item, clip)
            continue
        if returned_in_clip(clip.returns, clip.clip_s) < MIN_RETURNED_S:
            continue
        out.append(clip)
        if log_progress is not None:
            log_progress(family, len(out), n_dev + n_held, item)
    if len(out) < n_dev + n_held:
        log.warning("family %s: only %d pieces with returns (asked for %d)", family, len(out), n_dev + n_held)
    return out[:n_dev], out[n_dev:]


# ---------------------------------------------------------------- splices of recorded music

GAME_MUSIC = (  # (Debian package, folder, licence as its copyright file gives it)
    ("drascula-music", "/usr/share/scummvm/drascula/audio", "Drascula-License, (c) 1996-2008 Alcachofa Soft S.L."),
    ("asc-music", "/usr/share/games/asc/music", "GPL-2+, (c) 2002 Michael Kievernagel"),
    ("hyperrogue-music", "/usr/share/hyperrogue/music", "see /usr/share/doc/hyperrogue-music/copyright"),
)
AUDIO_EXTS = (".ogg", ".mp3", ".flac", ".wav")
LOWPASS_HZ = 3000.0
RETURN_GAIN_DB = -3.0
RETURN_SNR_DB = 20.0
SEGMENT_MIN_DBFS = -35.0  # a drawn segment quieter than this (RMS) is drawn again


def game_tracks(roots: tuple[tuple[str, str, str], ...] = GAME_MUSIC) -> list[dict]:
    """Installed game-music files, ``{"package", "path", "licence"}``, sorted by package then path."""
    out = []
    for pkg, folder, lic in roots:
        d = Path(folder)
        if d.is_dir():
            out += [
                {"package": pkg, "path": str(p), "licence": lic}
                for p in sorted(d.iterdir())
                if p.suffix.lower() in AUDIO_EXTS
            ]
    return out


def track_split(tracks: list[dict]) -> tuple[list[dict], list[dict]]:
    """Development and held-out tracks: alternate tracks of each package's sorted list."""
    dev, held = [], []
    by_pkg: dict[str, list[dict]] = {}
    for t in tracks:
        by_pkg.setdefault(t["package"], []).append(t)
    for ts in by_pkg.values():
        dev += ts[0::2]
        held += ts[1::2]
    return dev, held


@lru_cache(maxsize=6)
def _track_audio(path: str) -> np.ndarray:
    from musicinterp.sources.audio_dir import read_audio

    return read_audio(path)


def degrade(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """X' of a splice: low-passed at ``LOWPASS_HZ`` (4th-order Butterworth, zero phase), ``RETURN_GAIN_DB``
    quieter, white noise at ``RETURN_SNR_DB`` below its RMS."""
    from scipy.signal import butter, sosfiltfilt

    from musicinterp.sources.synth import add_noise

    sos = butter(4, LOWPASS_HZ, btype="low", fs=SAMPLE_RATE_HZ, output="sos")
    y = sosfiltfilt(sos, x.astype(np.float64)) * 10 ** (RETURN_GAIN_DB / 20)
    return add_noise(y.astype(np.float32), RETURN_SNR_DB, rng)


def _hop_multiple(seconds: float) -> int:
    """Samples of a segment: a whole number of 640-sample hops, so segments start on frame boundaries."""
    return int(round(seconds * SAMPLE_RATE_HZ / HOP_SAMPLES)) * HOP_SAMPLES


def splice(
    x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, list[dict], list[float]]:
    """X | Y | X' (``z`` None) or X | Y | Z' (the unrelated twin): samples, the returns, and the
    segment boundaries in seconds ``[0, a, b, c]``. X' (or Z') is :func:`degrade` d; with ``z`` the
    returns are empty. Segments should be whole hops long (they are cut to whole hops here)."""
    rng = np.random.default_rng(seed)
    nx, ny = (len(x) // HOP_SAMPLES) * HOP_SAMPLES, (len(y) // HOP_SAMPLES) * HOP_SAMPLES
    x, y = x[:nx], y[:ny]
    last = degrade(x if z is None else z[: (len(z) // HOP_SAMPLES) * HOP_SAMPLES], rng)
    samples = np.concatenate([x, y, last]).astype(np.float32)
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    if peak > 0.99:  # the added noise can push a loud recording past full scale
        samples *= np.float32(0.99 / peak)
    a, b = nx / SAMPLE_RATE_HZ, (nx + ny) / SAMPLE_RATE_HZ
    c = len(samples) / SAMPLE_RATE_HZ
    returns = [] if z is not None else [{"source_start_s": 0.0, "source_end_s": a, "start_s": b, "end_s": b + a}]
    return samples, returns, [0.0, a, b, c]


@dataclass(frozen=True)
class SpliceClip:
    item: str
    samples: np.ndarray
    returns: list[dict]
    bounds_s: list[float]
    segments: list[dict]  # per segment: path, offset_s, dur_s, package, licence

    def meta(self) -> dict:
        return {"item": self.item, "bounds_s": [round(b, 3) for b in self.bounds_s], "segments": self.segments}


def _draw_segment(track: dict, dur_s: float, rng: np.random.Generator) -> tuple[np.ndarray, float] | None:
    audio = _track_audio(track["path"])
    n = _hop_multiple(dur_s)
    margin = 2 * SAMPLE_RATE_HZ
    if len(audio) < n + 2 * margin:
        return None
    for _ in range(8):
        start = int(rng.integers(margin, len(audio) - n - margin + 1))
        seg = audio[start : start + n]
        rms = float(np.sqrt(np.mean(np.square(seg, dtype=np.float64))))
        if rms > 0 and 20 * np.log10(rms) > SEGMENT_MIN_DBFS:
            return seg, start / SAMPLE_RATE_HZ
    return None


def splice_items(
    n_return: int, n_unrelated: int, split: str, seed: int = 0, tracks: list[dict] | None = None
) -> list[SpliceClip]:
    """``n_return`` X|Y|X' clips and ``n_unrelated`` X|Y|Z' clips from the ``split`` ('dev' or 'held')
    tracks: X 6-10 s, Y 6-12 s, Z as long as X, each from a different track, drawn with ``seed``."""
    from musicinterp.sources.base import ClipError

    dev, held = track_split(tracks if tracks is not None else game_tracks())
    pool = {"dev": dev, "held": held}[split]
    if len(pool) < 3:
        raise ClipError(
            f"splice:{split}",
            f"need at least 3 game-music tracks, found {len(pool)}; "
            "apt-get install drascula-music asc-music hyperrogue-music",
        )
    rng = np.random.default_rng([seed, 0 if split == "dev" else 1])
    out: list[SpliceClip] = []
    attempts = 0
    while len(out) < n_return + n_unrelated and attempts < 20 * (n_return + n_unrelated):
        attempts += 1
        unrelated = len(out) >= n_return
        k = rng.choice(len(pool), size=3, replace=False)
        tx, ty, tz = (pool[int(i)] for i in k)
        dx, dy = float(rng.uniform(6, 10)), float(rng.uniform(6, 12))
        try:
            sx, sy = _draw_segment(tx, dx, rng), _draw_segment(ty, dy, rng)
            sz = _draw_segment(tz, dx, rng) if unrelated else None
        except ClipError as e:
            log.warning("splice: %s", e)
            continue
        if sx is None or sy is None or (unrelated and sz is None):
            continue
        # sz is None exactly when the third segment is the return (not unrelated)
        samples, returns, bounds = splice(
            sx[0], sy[0], sz[0] if sz is not None else None, seed=int(rng.integers(2**31))
        )
        segs = [(tx, sx), (ty, sy), (tz, sz) if sz is not None else (tx, sx)]
        meta = [
            {
                "package": t["package"],
                "path": t["path"],
                "licence": t["licence"],
                "offset_s": round(s[1], 3),
                "dur_s": round(len(s[0]) / SAMPLE_RATE_HZ, 3),
            }
            for t, s in segs
        ]
        name = "|".join(Path(t["path"]).stem for t, _ in segs)
        kind = "unrelated" if unrelated else "return"
        out.append(SpliceClip(f"splice-{split}-{kind}-{len(out):02d}:{name}", samples, returns, bounds, meta))
    if len(out) < n_return + n_unrelated:
        log.warning("splice %s: made %d of %d clips", split, len(out), n_return + n_unrelated)
    return out


# ---------------------------------------------------------------- probes of what the annotator cannot see

BLIND_SPOT_PROBES = {  # name: (repeat length s, transposition semitones, tempo ratio, share of melody notes changed)
    "exact-6s": (6.0, 0, 1.0, 0.0),
    "transposed+1": (6.0, 1, 1.0, 0.0),
    "transposed+2": (6.0, 2, 1.0, 0.0),
    "transposed+5": (6.0, 5, 1.0, 0.0),
    "slower-5%": (6.0, 0, 1.05, 0.0),
    "slower-10%": (6.0, 0, 1.10, 0.0),
    "slower-20%": (6.0, 0, 1.20, 0.0),
    "slower-33%": (6.0, 0, 1.33, 0.0),
    "slower-50%": (6.0, 0, 1.50, 0.0),
    "varied-10%": (6.0, 0, 1.0, 0.1),
    "varied-25%": (6.0, 0, 1.0, 0.25),
    "varied-50%": (6.0, 0, 1.0, 0.5),
    "exact-1.5s": (1.5, 0, 1.0, 0.0),
    "exact-2s": (2.0, 0, 1.0, 0.0),
    "exact-2.5s": (2.5, 0, 1.0, 0.0),
    "exact-3s": (3.0, 0, 1.0, 0.0),
}


def probe_piece(name: str, index: int, seed: int = 0) -> tuple[np.ndarray, list[dict], list[float]]:
    """X | Y | X'' with X'' a changed repeat of X (``BLIND_SPOT_PROBES[name]``): X a random melody over
    triads (the synthetic pieces' material, :mod:`musicinterp.sources.synthetic`), Y 8 s in another key,
    X'' transposed, slower, or with a share of its melody notes changed to other scale degrees. The
    truth maps X onto X'' linearly (a slower X'' stretches the map). Returns samples, returns, bounds."""
    from musicinterp.sources.synth import render
    from musicinterp.sources.synthetic import SCALES, _section

    rep_s, semis, ratio, vary = BLIND_SPOT_PROBES[name]
    rng = np.random.default_rng([seed, index])
    tonic = 48 + int(rng.integers(0, 12))
    scale = SCALES[str(rng.choice(list(SCALES)))]
    beat = 60.0 / float(rng.uniform(90, 130))
    timbre = str(rng.choice(["organ", "piano", "reed", "pluck", "flute"]))
    x = _section(rng, 0.0, rep_s, beat, tonic, scale, timbre)
    y = _section(rng, 0.0, 8.0, beat, tonic + int(rng.integers(3, 10)), scale, timbre)
    melody_top = tonic + 12  # melody notes lie at tonic+12 and above, chords below
    changed = []
    for n in x:
        midi = n.midi + semis
        if vary and n.midi >= melody_top and rng.random() < vary:
            midi = tonic + 12 + 12 * int(rng.integers(0, 2)) + scale[int(rng.integers(0, 7))] + semis
        changed.append(replace(n, onset_s=n.onset_s * ratio, dur_s=n.dur_s * ratio, midi=float(midi)))
    segs = [render(x, rep_s), render(y, 8.0), render(changed, rep_s * ratio)]
    segs = [s[: (len(s) // HOP_SAMPLES) * HOP_SAMPLES] for s in segs]
    samples = np.concatenate(segs).astype(np.float32)
    a = len(segs[0]) / SAMPLE_RATE_HZ
    b = a + len(segs[1]) / SAMPLE_RATE_HZ
    c = len(samples) / SAMPLE_RATE_HZ
    returns = [{"source_start_s": 0.0, "source_end_s": a, "start_s": b, "end_s": c}]
    return samples, returns, [0.0, a, b, c]
