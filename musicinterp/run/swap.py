"""Replacing a run's store by a rebuilt one (``musicinterp replan``), so that a kill at any point loses nothing.

The new store is built under ``STAGING_DIR`` beside the old one, then two renames swap them: the old store
to ``RETIRED_DIR``, the new one into place, and the old one is deleted. A folder rename is not atomic on
every filesystem, let alone on an object store, so a process killed between the renames leaves no
``store.zarr`` at all. ``finish_interrupted_swap`` recognises that state and completes the swap (or, when
the new store never finished, puts the old one back), and every entry point that opens a run's store calls
it first, so nothing is recaptured because of the kill.
"""

from __future__ import annotations

import logging

import fsspec

from musicinterp.run.paths import RunPaths
from musicinterp.store import StoreError, open_store

log = logging.getLogger(__name__)

STAGING_DIR = "store.replan.zarr"  # the new store while it is being built
RETIRED_DIR = "store.pre-replan.zarr"  # the old store between the two renames


def _local(url: str) -> str:
    return fsspec.core.url_to_fs(url)[1]


def store_is_ready(url: str) -> bool:
    """Whether ``url`` holds a whole store (it opens, ready flag set), not a half-made or missing one."""
    try:
        open_store(url)
    except StoreError:
        return False
    return True


def swap_store(paths: RunPaths) -> None:
    """Put the finished store in ``STAGING_DIR`` in place of the run's store; the old one is deleted."""
    fs, _ = fsspec.core.url_to_fs(paths.root)
    staging, retired = f"{paths.root}/{STAGING_DIR}", f"{paths.root}/{RETIRED_DIR}"
    fs.mv(_local(paths.store), _local(retired), recursive=True)
    fs.mv(_local(staging), _local(paths.store), recursive=True)
    fs.rm(_local(retired), recursive=True)


def finish_interrupted_swap(paths: RunPaths) -> str | None:
    """Complete a swap that a kill interrupted between its renames; says what it did (None: nothing to do).

    No store but a retired one: if the staged store is whole (its ready flag is set), it becomes the store,
    as the swap intended (the manifest describing it was written before the renames); otherwise the old
    store goes back, and the next ``replan`` starts over.
    """
    fs, _ = fsspec.core.url_to_fs(paths.root)
    staging, retired = f"{paths.root}/{STAGING_DIR}", f"{paths.root}/{RETIRED_DIR}"
    if fs.exists(_local(paths.store)) or not fs.exists(_local(retired)):
        return None
    if fs.exists(_local(staging)) and store_is_ready(staging):
        fs.mv(_local(staging), _local(paths.store), recursive=True)
        fs.rm(_local(retired), recursive=True)
        done = f"finished the store swap of an interrupted replan in {paths.root!r}: the replanned store is in place"
    else:
        fs.mv(_local(retired), _local(paths.store), recursive=True)
        done = f"an interrupted replan in {paths.root!r} had not finished its new store: the old store is back"
    log.warning(done)
    return done
