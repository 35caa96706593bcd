"""Bring a planned run up to date with its inputs: add new clips, redo changed ones, drop gone ones.

``replan_run`` plans the slice again from the run's own config (``run.json``), compares it with what
the store holds (clip ids and the sha256 of their samples), and builds the new store beside the old
one: every unchanged clip's activations, codes, labels and flags are copied over, the new and
changed clips are left unfinished. The new manifest is written, then the new store replaces the old
one. The next ``musicinterp run`` of the same config (the same run folder) captures exactly the new
and changed clips. Interrupted at any point, running it again finishes the job: it always compares
the fresh plan with the store, never with the manifest alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import fsspec
import numpy as np

from musicinterp.config import RunSpec
from musicinterp.run.inputs import InputChanges
from musicinterp.run.paths import RunPaths
from musicinterp.run.plan import plan_inputs, store_template
from musicinterp.run.records import atomic_write
from musicinterp.run.swap import RETIRED_DIR, STAGING_DIR, finish_interrupted_swap, swap_store
from musicinterp.store import (
    ClipWriter,
    StoreError,
    init_store,
    int8_of_clip,
    label_names,
    mark_complete,
    open_store,
    write_clip,
    write_labels,
)

log = logging.getLogger(__name__)

STALE_FOLDERS = ("shards", "annotations", "plots")  # records numbered by the old store's rows


@dataclass
class ReplanResult:
    root: str
    changes: InputChanges
    kept: list[str] = field(default_factory=list)  # complete clips carried over unchanged
    rejected: list[dict[str, str]] = field(default_factory=list)  # inputs left out of the new plan


def _read_spec(paths: RunPaths) -> RunSpec:
    try:
        with fsspec.open(paths.run_file, "r") as f:
            return RunSpec.model_validate(json.load(f)["spec"])
    except FileNotFoundError as e:
        raise StoreError(f"{paths.root!r} is not a run folder (no {paths.run_file!r}); give RUN_DIR") from e


def replan_run(root: str) -> ReplanResult:
    """Replan the run in ``root`` (a run folder: ``{out}/{name}-{fingerprint}``) against its inputs now."""
    paths = RunPaths(root.rstrip("/"))
    spec = _read_spec(paths)
    finish_interrupted_swap(paths)
    manifest, rejected = plan_inputs(spec)
    old = open_store(paths.store)
    held = {str(c): str(h) for c, h in zip(old["clip"].values, old["sha256"].values)}
    now = {c.clip_id: c.sha256 for c in manifest.clips}
    changes = InputChanges(
        new=[c for c in now if c not in held],
        changed=[c for c in now if c in held and held[c] != now[c]],
        gone=[c for c in held if c not in now],
    )
    result = ReplanResult(root=paths.root, changes=changes, rejected=rejected)
    if not changes:
        atomic_write(paths.manifest, manifest.to_json)  # an interrupted replan may have left the old one
        return result
    fs, _ = fsspec.core.url_to_fs(paths.root)
    staging, retired = f"{paths.root}/{STAGING_DIR}", f"{paths.root}/{RETIRED_DIR}"
    for leftover in (staging, retired):
        if fs.exists(fsspec.core.url_to_fs(leftover)[1]):
            fs.rm(fsspec.core.url_to_fs(leftover)[1], recursive=True)
    t = store_template(spec, manifest)
    init_store(staging, t.layout, t.clip_vars, t.attrs, labels=t.labels)
    result.kept = _copy_unchanged(old, staging, [c for c in now if c in held and held[c] == now[c]])
    atomic_write(paths.manifest, manifest.to_json)
    swap_store(paths)
    for folder in STALE_FOLDERS:
        path = fsspec.core.url_to_fs(f"{paths.root}/{folder}")[1]
        if fs.exists(path):
            fs.rm(path, recursive=True)
    log.info("replanned %s: %s; %d complete clips kept", paths.root, changes, len(result.kept))
    return result


def _copy_unchanged(old, staging: str, clips: list[str]) -> list[str]:
    """Copy each unchanged clip's data and flags from the old store; returns the complete ones copied."""
    new = ClipWriter(staging)
    ids = [str(c) for c in old["clip"].values]
    labels = label_names(old) if set(label_names(old)) == set(new.label_names()) else []
    kept = []
    for clip_id in clips:
        i = ids.index(clip_id)
        n = int(old["n_frames"].values[i])
        if bool(old["complete"].values[i]):
            resid = np.asarray(old["resid"].isel(clip=i, time=slice(0, n)).values)
            codes = np.asarray(old["codes"].isel(clip=i, time=slice(0, n)).values)
            if np.isfinite(resid).all():  # a damaged clip is left to capture again
                q, quant = int8_of_clip(old, i, n)  # an int8 store's clips are copied as they are
                write_clip(new, clip_id, resid if q is None else q, codes, quant)
                mark_complete(new, clip_id)
                kept.append(clip_id)
        if labels and "annotated" in old and bool(old["annotated"].values[i]):
            values = {name: np.asarray(old[name].isel(clip=i).values[:n]) for name in labels}
            write_labels(new, clip_id, values)
            mark_complete(new, clip_id, flag="annotated")
    return kept
