"""A run's records beside its store: one JSON file per shard attempt and per annotated clip.

Each record is written by the process that did the work (``shards/NNNNN.json``: a shard's latest
capture attempt; ``annotations/NNNNN.json``: a clip's annotation outcome, numbered by the clip's
row in the store), so a summary or a rerun in another process, or after a crash, sees them all.
This module is their only writer and reader.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from musicinterp.run.paths import RunPaths

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    """One capture attempt of a shard."""

    shard: int
    clips: list[str] = field(default_factory=list)
    captured: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # complete before any recorded attempt of this shard
    captured_earlier: list[str] = field(default_factory=list)  # complete: captured by an earlier attempt
    failed: dict[str, str] = field(default_factory=dict)  # clip id -> reason
    repaired: dict[str, str] = field(default_factory=dict)  # complete but damaged: captured again (why)
    frames: int = 0
    audio_s: float = 0.0
    bytes_written: int = 0
    elapsed_s: float = 0.0
    encode_s: float = 0.0  # loading and EnCodec-encoding the captured clips' audio
    capture_s: float = 0.0  # their teacher-forced forward passes with the capture hooks
    write_s: float = 0.0  # writing them into the store (in a writer thread where a core is free)
    attempt: int = 1  # capture attempts of this shard in this run folder, this one included
    encoded_with: dict[str, str] = field(default_factory=dict)  # clip id -> capture.encoder_numerics, all attempts


@dataclass
class AnnotationResult:
    """The annotation of one clip: done, skipped (done before), or not possible (and why)."""

    clip_id: str
    index: int  # the clip's row in the store (and the manifest)
    annotated: bool = False
    skipped: bool = False  # already annotated in the store
    reason: str = ""  # why the clip could not be annotated (silent, too short), if so
    plot: str | None = None
    rec_positive_fraction: float = 0.0
    res_events: int = 0
    elapsed_s: float = 0.0


def atomic_write(url: str, fill: Callable[[str], None]) -> None:
    """Have ``fill(target)`` write a file, so that ``url`` holds either its old content or the whole new one.

    Local files are written beside the target and renamed over it (a full disk or a kill leaves the old
    file, never a 0-byte or cut one); object stores replace an object only once it is uploaded whole.
    A failure names the file.
    """
    fs, path = fsspec.core.url_to_fs(url)
    folder = path.rsplit("/", 1)[0]
    try:
        fs.makedirs(folder, exist_ok=True)
        if not isinstance(fs, LocalFileSystem):
            fill(url)
            return
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        os.close(fd)
        try:
            fill(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {url!r}: {e.strerror or e}") from e


def write_text(url: str, text: str) -> None:
    """Write ``text`` to a file atomically, creating its folder (local path or fsspec URL)."""

    def fill(target: str) -> None:
        with fsspec.open(target, "w") as f:
            f.write(text)

    atomic_write(url, fill)


def write_json(url: str, data: Any) -> None:
    write_text(url, json.dumps(data, indent=2, sort_keys=True))


def write_shard_record(paths: RunPaths, result: ShardResult) -> None:
    write_json(paths.shard_file(result.shard), asdict(result))


def read_shard_record(paths: RunPaths, shard: int) -> ShardResult | None:
    """The latest attempt's record of one shard; None if the shard never ran (or its record is unreadable)."""
    fs, path = fsspec.core.url_to_fs(paths.shard_file(shard))
    try:
        with fs.open(path, "r") as f:
            return ShardResult(**json.load(f))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_annotation_record(paths: RunPaths, result: AnnotationResult) -> None:
    write_json(paths.annotation_file(result.index), asdict(result))


def _read_records(folder: str) -> list[dict[str, Any]]:
    """Every ``*.json`` record in ``folder``, in file-name order (shard or clip order); none if it is absent."""
    fs, path = fsspec.core.url_to_fs(folder)
    if not fs.exists(path):
        return []
    out = []
    for f in sorted(fs.glob(f"{path}/*.json")):
        try:
            with fs.open(f, "r") as fh:
                out.append(json.load(fh))
        except ValueError as e:  # cut short by a full disk before writes were atomic: the flags still tell
            log.warning("record %s is not valid JSON (%s): ignored; the store's flags decide", f, e)
    return out


def read_shard_records(paths: RunPaths) -> list[ShardResult]:
    """The latest record of every shard that has run at least once, in shard order."""
    return [ShardResult(**r) for r in _read_records(paths.shards_dir)]


def read_annotation_records(paths: RunPaths) -> list[AnnotationResult]:
    """The record of every clip whose annotation has run at least once, in store order."""
    return [AnnotationResult(**r) for r in _read_records(paths.annotations_dir)]
