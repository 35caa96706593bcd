"""Audio files from a folder: decoded with libsndfile (wav, flac, ogg/vorbis, opus, mp3, aiff, ...),
mixed to mono, resampled to 32 kHz with a polyphase filter, checked."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from musicinterp.config import AudioDirSource
from musicinterp.frames import SAMPLE_RATE_HZ
from musicinterp.sources.base import ClipError, PlanFailure, Track


def read_audio(path: str | Path, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode a file to mono float32 at ``sample_rate_hz``; a :class:`ClipError` names the file otherwise.

    Channels are averaged (no phase-cancellation check); non-finite samples are left in so the caller
    can report them (see ``musicinterp.slice.check_audio``).
    """
    path = Path(path)
    if not path.exists():
        raise ClipError(str(path), "file does not exist")
    if not path.is_file():
        raise ClipError(str(path), "is not a file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise ClipError(str(path), f"cannot decode audio ({e})") from e
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if len(mono) == 0:
        return mono.astype(np.float32)
    if sr != sample_rate_hz:
        ratio = Fraction(sample_rate_hz, int(sr)).limit_denominator(1000)
        finite = np.isfinite(mono)
        mono = resample_poly(np.where(finite, mono, 0.0), ratio.numerator, ratio.denominator)
        if not finite.all():  # keep NaN visible after resampling, so the check still reports it
            mono[0] = np.nan
    return np.ascontiguousarray(mono, dtype=np.float32)


def list_audio_files(spec: AudioDirSource) -> list[Path]:
    root = Path(spec.path).expanduser()
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in spec.extensions}
    if root.is_file():
        return [root]
    if not root.exists():
        raise ClipError(str(root), "folder does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    return files[: spec.max_files] if spec.max_files else files


def plan_audio_dir(spec: AudioDirSource) -> Iterator[Track | PlanFailure]:
    try:
        files = list_audio_files(spec)
    except ClipError as e:
        yield PlanFailure(e.item, e.problem)
        return
    if not files:
        yield PlanFailure(spec.path, f"no audio files with extensions {spec.extensions}")
    root = Path(spec.path).expanduser()
    for path in files:
        try:
            samples = read_audio(path)
        except ClipError as e:
            yield PlanFailure(e.item, e.problem)
            continue
        rel = path.name if root.is_file() else str(path.relative_to(root))
        yield Track(
            source="audio_dir",
            source_id=f"audio_dir:{rel}",
            locator=json.dumps({"path": os.path.normpath(os.path.abspath(path))}),  # links kept: see run/inputs.py
            licence=spec.licence,
            samples=samples,
        )


def load_audio_dir(locator: str) -> np.ndarray:
    return read_audio(json.loads(locator)["path"])
