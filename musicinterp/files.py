"""Files at a local path or an fsspec URL (``s3://bucket/runs/...``), for the writers outside the store.

A run on a fleet lives in an object store: everything written beside its store (the analysis's work files,
results, figures, findings, directions) goes under the same URL. ``pathlib.Path`` cannot hold one
(``Path("s3://b/k")`` is the local path ``s3:/b/k``), so those writers join and open URLs as strings here.
Local paths behave as before: folders are made as needed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` as a string; URLs keep their ``scheme://``."""
    return "/".join([str(base).rstrip("/"), *parts])


def parent(url: str | Path) -> str:
    """The folder holding ``url`` (``s3://b/runs/x/store.zarr`` -> ``s3://b/runs/x``)."""
    head, sep, _ = str(url).rstrip("/").rpartition("/")
    return head if sep else "."


def is_local(url: str | Path) -> bool:
    return isinstance(fsspec.core.url_to_fs(str(url))[0], LocalFileSystem)


def makedirs(url: str | Path) -> None:
    """Create the folder ``url`` (on object stores: nothing to create below the bucket)."""
    fs, path = fsspec.core.url_to_fs(str(url))
    fs.makedirs(path, exist_ok=True)


def exists(url: str | Path) -> bool:
    fs, path = fsspec.core.url_to_fs(str(url))
    return bool(fs.exists(path))


def glob(folder: str | Path, pattern: str) -> list[str]:
    """The files in ``folder`` matching ``pattern``, sorted, as URLs of the same kind as ``folder``."""
    fs, path = fsspec.core.url_to_fs(str(folder))
    found = sorted(fs.glob(f"{path.rstrip('/')}/{pattern}"))
    return [p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p) for p in found]


@contextmanager
def open_write(url: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``url`` for writing, its folder made first."""
    makedirs(parent(url))
    with fsspec.open(str(url), mode) as f:
        yield f


def write_text(url: str | Path, text: str) -> None:
    with open_write(url, "w") as f:
        f.write(text)


def read_text(url: str | Path) -> str:
    with fsspec.open(str(url), "r") as f:
        return str(f.read())


def save_npz(url: str | Path, **arrays: Any) -> str:
    """``np.savez`` to ``url`` (no pickles: object arrays are refused on reading); returns ``url`` as a string.
    Object stores get the archive in one upload."""
    fs, path = fsspec.core.url_to_fs(str(url))
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(parent(path), exist_ok=True)
        np.savez(path, **arrays)
        return str(url)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with open_write(url, "wb") as f:
        f.write(buf.getvalue())
    return str(url)


def load_npz(url: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` at ``url``, read with ``allow_pickle=False``."""
    with fsspec.open(str(url), "rb") as f, np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
