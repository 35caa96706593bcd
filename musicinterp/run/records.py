"""A run's records beside its store: one JSON file per shard attempt and per annotated clip.

Each record is written by the process that did the work (``shards/NNNNN.json``: a shard's latest
capture attempt; ``annotations/NNNNN.json``: a clip's annotation outcome, numbered by the clip's
row in the store), so a summary or a rerun in another process, or after a crash, sees them all.
This module is their only writer and reader.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from musicinterp.run.paths import RunPaths


@dataclass
class ShardResult:
    """One capture attempt of a shard."""

    shard: int
    clips: list[str] = field(default_factory=list)
    captured: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete in the store
    failed: dict[str, str] = field(default_factory=dict)  # clip id -> reason
    frames: int = 0
    audio_s: float = 0.0
    bytes_written: int = 0
    elapsed_s: float = 0.0


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


def write_text(url: str, text: str) -> None:
    """Write ``text`` to a file, creating its folder (local path or fsspec URL)."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)


def write_json(url: str, data: Any) -> None:
    write_text(url, json.dumps(data, indent=2, sort_keys=True))


def write_shard_record(paths: RunPaths, result: ShardResult) -> None:
    write_json(paths.shard_file(result.shard), asdict(result))


def write_annotation_record(paths: RunPaths, result: AnnotationResult) -> None:
    write_json(paths.annotation_file(result.index), asdict(result))


def _read_records(folder: str) -> list[dict[str, Any]]:
    """Every ``*.json`` record in ``folder``, in file-name order (shard or clip order); none if it is absent."""
    fs, path = fsspec.core.url_to_fs(folder)
    if not fs.exists(path):
        return []
    out = []
    for f in sorted(fs.glob(f"{path}/*.json")):
        with fs.open(f, "r") as fh:
            out.append(json.load(fh))
    return out


def read_shard_records(paths: RunPaths) -> list[ShardResult]:
    """The latest record of every shard that has run at least once, in shard order."""
    return [ShardResult(**r) for r in _read_records(paths.shards_dir)]


def read_annotation_records(paths: RunPaths) -> list[AnnotationResult]:
    """The record of every clip whose annotation has run at least once, in store order."""
    return [AnnotationResult(**r) for r in _read_records(paths.annotations_dir)]
