"""Planning a run: deal the slice into shards, write the manifest, create (or reopen) the store.

Planning reads the model's config only (``describe_model``): it never builds or loads weights, so
it runs on any machine, whatever ``capture.device`` says.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from pydantic import BaseModel, ConfigDict

from musicinterp import __version__
from musicinterp.annotate import label_schema
from musicinterp.annotate.truth import truth_label_schema
from musicinterp.capture import select_layers
from musicinterp.config import ConfigError, RunSpec
from musicinterp.models import describe_model
from musicinterp.run.inputs import compare_inputs, data_roots, inputs_digest
from musicinterp.run.paths import RunPaths
from musicinterp.run.records import atomic_write, write_json
from musicinterp.run.swap import finish_interrupted_swap, store_is_ready
from musicinterp.slice import ClipRecord, Manifest, plan_slice
from musicinterp.sources.base import ClipError
from musicinterp.store import ClipLayout, StoreError, StoreLayout, init_store, open_store, store_attrs

log = logging.getLogger(__name__)


class PreparedRun(BaseModel):
    """What planning hands to the later stages: small and JSON-able, so tasks and deployment runs
    pass it as it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: str
    fingerprint: str
    store_uid: str  # changes when the store is recreated, so caches never outlive their store
    n_shards: int
    n_clips: int
    rejected: list[dict[str, str]]  # inputs left out at planning, with the reason
    weights: str
    data_roots: list[str] = []  # what audio-folder clips may read (from the config, not the manifest)
    plan_s: float = 0.0  # the latest planning's wall time (the summary's ``plan`` stage)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.root)


@dataclass(frozen=True)
class Template:
    """What a store is created from: its layout, per-clip provenance, attributes and label schema."""

    layout: StoreLayout
    clip_vars: dict[str, list[Any]]
    attrs: dict[str, Any]
    labels: dict[str, dict[str, str]] | None
    weights: str


def plan_inputs(spec: RunSpec) -> tuple[Manifest, list[dict[str, str]]]:
    """The slice planned from the sources as they are now, and the inputs left out (with the reason)."""
    manifest = plan_slice(spec.slice)
    rejected = [{"item": f.item, "problem": f.problem} for f in manifest.failures]
    for f in manifest.failures:
        log.warning("left out %s", f"{f.item}: {f.problem}")
    if not manifest.clips:
        reasons = "; ".join(f"{r['item']}: {r['problem']}" for r in rejected) or "the sources yielded nothing"
        raise ClipError(f"slice {spec.slice.name!r}", f"no usable clips ({reasons})")
    return manifest, rejected


def store_template(spec: RunSpec, manifest: Manifest) -> Template:
    """The store of ``manifest``'s clips (reads the model's config, never its weights); a new store uid."""
    model_info = describe_model(spec.model)
    try:  # the layers a config may ask for depend on the model: a config error found at planning
        layers = select_layers(spec.capture.layers, model_info["n_layers"], model_info["model_id"])
    except ValueError as e:
        raise ConfigError(str(e)) from e
    layout = StoreLayout(
        clips=tuple(ClipLayout(c.clip_id, c.n_frames) for c in manifest.clips),
        layers=layers,
        hidden_size=model_info["hidden_size"],
        num_codebooks=model_info["num_codebooks"],
        reduce=spec.capture.reduce,
    )
    clip_vars: dict[str, list[Any]] = {
        "source": [c.source for c in manifest.clips],
        "source_id": [c.source_id for c in manifest.clips],
        "locator": [c.locator for c in manifest.clips],
        "offset_s": [c.offset_s for c in manifest.clips],
        "duration_s": [c.duration_s for c in manifest.clips],
        "sha256": [c.sha256 for c in manifest.clips],
        "licence": [c.licence or "" for c in manifest.clips],
        "silent": [c.silent for c in manifest.clips],
        "shard": [c.shard for c in manifest.clips],
    }
    attrs = store_attrs(
        model=model_info,
        run_spec_json=spec.canonical_json(),
        fingerprint=spec.fingerprint(),
        capture=spec.capture.model_dump(),
        package_version=__version__,
        extra={"run_name": spec.name, "store_uid": uuid.uuid4().hex, "inputs_digest": inputs_digest(manifest)},
    )
    labels = {**label_schema(spec.annotation), **truth_label_schema(spec.annotation)} if spec.annotate else None
    return Template(layout, clip_vars, attrs, labels, model_info["weights"])


def prepare_run(spec: RunSpec, out: str) -> PreparedRun:
    """Plan the slice, write the manifest and create (or reopen) the store under ``RunPaths.for_spec``.

    Reopening a run whose inputs changed since it was planned (files added to, changed in or removed
    from an audio folder) keeps the run's own manifest and store, and lists each change among the
    inputs left out, saying that ``musicinterp replan RUN_DIR`` brings the run up to date: the run
    then finishes what it planned and fails naming them, never silently leaving a new file out.
    """
    started = time.perf_counter()
    paths = RunPaths.for_spec(spec, out)
    fs, root = fsspec.core.url_to_fs(paths.root)
    fs.makedirs(root, exist_ok=True)
    finish_interrupted_swap(paths)  # a replan killed between its renames left no store.zarr: finish it first
    manifest, rejected = plan_inputs(spec)
    template = store_template(spec, manifest)
    if fs.exists(fsspec.core.url_to_fs(paths.manifest)[1]) and store_is_ready(paths.store):
        planned = Manifest.from_json(paths.manifest)
        held = open_store(paths.store).attrs.get("inputs_digest")
        if held is not None and held != inputs_digest(planned):
            raise StoreError(
                f"run {paths.root!r}: its manifest and its store hold different clips (a `musicinterp replan` "
                f"was interrupted); run `musicinterp replan {paths.root}` again"
            )
        changes = compare_inputs(planned, manifest)
        if changes:
            log.warning("inputs changed since the run was planned: %s", changes)
            rejected += changes.as_rejected(paths.root)
        manifest = planned  # the run's store holds the planned clips
    else:  # before the store, atomically: a store is never left without the manifest it was made from
        atomic_write(paths.manifest, manifest.to_json)
    t = template
    store_uid = t.attrs["store_uid"]
    if not init_store(paths.store, t.layout, t.clip_vars, t.attrs, labels=t.labels):
        store_uid = open_store(paths.store).attrs["store_uid"]
    prepared = PreparedRun(
        root=paths.root,
        fingerprint=spec.fingerprint(),
        store_uid=store_uid,
        n_shards=manifest.n_shards,
        n_clips=len(manifest.clips),
        rejected=rejected,
        weights=t.weights,
        data_roots=data_roots(spec.slice),
        plan_s=round(time.perf_counter() - started, 3),
    )
    write_json(paths.run_file, {"spec": spec.model_dump(mode="json"), "prepared": prepared.model_dump(mode="json")})
    return prepared


def run_clips(paths: RunPaths) -> list[tuple[int, ClipRecord]]:
    """Every clip of the run with its row in the store (the manifest's order)."""
    return list(enumerate(Manifest.from_json(paths.manifest).clips))


def shard_clips(paths: RunPaths, shard: int) -> list[tuple[int, ClipRecord]]:
    """The clips of one shard with their row in the store (the manifest's order), from the manifest."""
    manifest = Manifest.from_json(paths.manifest)
    if not 0 <= shard < manifest.n_shards:
        raise ValueError(f"shard {shard} out of range: the run has shards 0..{manifest.n_shards - 1}")
    return [(i, c) for i, c in enumerate(manifest.clips) if c.shard == shard]
