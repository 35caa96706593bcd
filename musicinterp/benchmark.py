"""The benchmark's stages as plain functions: plan, initialise the store, capture shards, summarise.

Prefect tasks in ``tasks/`` wrap these one to one; a notebook can call them directly. Every stage
takes paths and ids and returns small summaries, never tensors.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from musicinterp import __version__
from musicinterp.annotate import annotate_full, label_schema
from musicinterp.annotate.labels import truth_label_schema, truth_labels
from musicinterp.annotate.plot import plot_annotation
from musicinterp.annotate.validate import returns_from_score
from musicinterp.capture import capture_clip
from musicinterp.config import RunSpec
from musicinterp.frames import FRAME_RATE_HZ
from musicinterp.models import LoadedModel, load_model
from musicinterp.slice import ClipRecord, Manifest, load_clip_audio, plan_slice
from musicinterp.sources.base import ClipError
from musicinterp.store import (
    ClipLayout,
    StoreLayout,
    completed_clips,
    finalize_store,
    init_store,
    mark_complete,
    open_store,
    store_attrs,
    store_size_bytes,
    weights_note,
    write_clip,
    write_labels,
)

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
N_PLOTS = 3  # annotation plots drawn per run (the first clips of the manifest), shown in the summary
STORE_DIR = "store.zarr"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunPaths:
    """Where a run's files live: ``{out}/{name}-{fingerprint}/`` (a local path or an fsspec URL)."""

    root: str

    @classmethod
    def for_spec(cls, spec: RunSpec, out: str) -> RunPaths:
        return cls(f"{out.rstrip('/')}/{spec.name}-{spec.fingerprint(10)}")

    @property
    def store(self) -> str:
        return f"{self.root}/{STORE_DIR}"

    @property
    def manifest(self) -> str:
        return f"{self.root}/{MANIFEST_FILE}"

    @property
    def run_file(self) -> str:
        return f"{self.root}/{RUN_FILE}"

    def shard_file(self, shard: int) -> str:
        return f"{self.root}/shards/{shard:05d}.json"

    def annotation_file(self, index: int) -> str:
        return f"{self.root}/annotations/{index:05d}.json"

    def plot_file(self, index: int) -> str:
        return f"{self.root}/plots/{index:05d}.png"


@dataclass(frozen=True)
class PreparedRun:
    """What the planning stage hands to the shard stage: small, JSON-able."""

    root: str
    fingerprint: str
    store_uid: str  # changes when the store is recreated, so caches never outlive their store
    n_shards: int
    n_clips: int
    rejected: list[dict[str, str]]  # inputs left out at planning, with the reason
    weights: str


@dataclass
class ShardResult:
    shard: int
    clips: list[str] = field(default_factory=list)
    captured: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete in the store
    failed: dict[str, str] = field(default_factory=dict)  # clip id -> reason
    frames: int = 0
    audio_s: float = 0.0
    bytes_written: int = 0
    elapsed_s: float = 0.0


class ShardFailed(RuntimeError):
    """Some clips of a shard failed; the others were captured. Carries the per-clip reasons."""

    def __init__(self, result: ShardResult):
        self.result = result
        reasons = "; ".join(f"{c}: {r}" for c, r in result.failed.items())
        super().__init__(f"shard {result.shard}: {len(result.failed)} of {len(result.clips)} clips failed: {reasons}")


def _write_text(url: str, text: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)


def _write_json(url: str, data: Any) -> None:
    _write_text(url, json.dumps(data, indent=2, sort_keys=True))


def _read_json(url: str) -> Any:
    with fsspec.open(url, "r") as f:
        return json.load(f)


def prepare_run(spec: RunSpec, out: str) -> PreparedRun:
    """Plan the slice, write the manifest and create (or reopen) the store."""
    paths = RunPaths.for_spec(spec, out)
    fs, root = fsspec.core.url_to_fs(paths.root)
    fs.makedirs(root, exist_ok=True)
    manifest = plan_slice(spec.slice)
    rejected = [{"item": f.item, "problem": f.problem} for f in manifest.failures]
    for f in manifest.failures:
        log.warning("left out %s", f"{f.item}: {f.problem}")
    if not manifest.clips:
        reasons = "; ".join(f"{r['item']}: {r['problem']}" for r in rejected) or "the sources yielded nothing"
        raise ClipError(f"slice {spec.slice.name!r}", f"no usable clips ({reasons})")
    model_info = describe_model_cheaply(spec)
    layers = _layers(spec, model_info["n_layers"])
    layout = StoreLayout(
        clips=tuple(ClipLayout(c.clip_id, c.n_frames) for c in manifest.clips),
        layers=layers,
        hidden_size=model_info["hidden_size"],
        num_codebooks=model_info["num_codebooks"],
    )
    clip_vars = {
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
    store_uid = uuid.uuid4().hex
    attrs = store_attrs(
        model=model_info, run_spec_json=spec.canonical_json(), fingerprint=spec.fingerprint(),
        capture=spec.capture.model_dump(), package_version=__version__,
        extra={"run_name": spec.name, "store_uid": store_uid},
    )
    labels = {**label_schema(spec.annotation), **truth_label_schema(spec.annotation)} if spec.annotate else None
    created = init_store(paths.store, layout, clip_vars, attrs, labels=labels)
    if created:
        manifest.to_json(paths.manifest)
    else:
        store_uid = open_store(paths.store).attrs["store_uid"]
    prepared = PreparedRun(
        root=paths.root, fingerprint=spec.fingerprint(), store_uid=store_uid, n_shards=manifest.n_shards,
        n_clips=len(manifest.clips), rejected=rejected, weights=model_info["weights"],
    )
    _write_json(paths.run_file, {"spec": spec.model_dump(mode="json"), "prepared": asdict(prepared)})
    return prepared


def _layers(spec: RunSpec, n_layers: int) -> tuple[int, ...]:
    n = n_layers + 1
    if spec.capture.layers is None:
        return tuple(range(n))
    bad = [layer for layer in spec.capture.layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"capture.layers: {bad} out of range; the model has layers 0..{n - 1}")
    return tuple(sorted(set(spec.capture.layers)))


def describe_model_cheaply(spec: RunSpec) -> dict[str, Any]:
    """Model facts the store template needs (shapes, id, revision, weights kind)."""
    return get_model(spec).describe()


_MODEL_CACHE: dict[str, tuple[LoadedModel, threading.Lock]] = {}
_CACHE_LOCK = threading.Lock()


def _cached_model(spec: RunSpec) -> tuple[LoadedModel, threading.Lock]:
    """One model per process and model spec; the lock serialises captures (they hook the model)."""
    key = f"{spec.model.fingerprint()}:{spec.capture.device}"
    with _CACHE_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = (load_model(spec.model, device=spec.capture.device), threading.Lock())
        return _MODEL_CACHE[key]


def get_model(spec: RunSpec) -> LoadedModel:
    return _cached_model(spec)[0]


ProgressFn = Callable[[int, int, str], None]


def capture_shard(spec: RunSpec, root: str, shard: int, on_clip: ProgressFn | None = None) -> ShardResult:
    """Capture every unfinished clip of one shard into the store; bad clips never stop the others.

    Complete clips (their flag is set) are skipped, so running a shard twice is harmless and a
    rerun after a crash redoes exactly the unfinished clips.
    """
    paths = RunPaths(root)
    manifest = Manifest.from_json(paths.manifest)
    if not 0 <= shard < manifest.n_shards:
        raise ValueError(f"shard {shard} out of range: the run has shards 0..{manifest.n_shards - 1}")
    clips = manifest.shard(shard)
    result = ShardResult(shard=shard, clips=[c.clip_id for c in clips])
    done = completed_clips(paths.store)
    t0 = time.perf_counter()
    model, lock = _cached_model(spec)
    for i, clip in enumerate(clips):
        if clip.clip_id in done:
            result.skipped.append(clip.clip_id)
        else:
            try:
                with lock:
                    result.bytes_written += capture_one(model, spec, paths.store, clip)
                result.captured.append(clip.clip_id)
                result.frames += clip.n_frames
                result.audio_s += clip.duration_s
            except Exception as e:  # noqa: BLE001 - one bad clip must not sink the shard
                reason = str(e) if isinstance(e, ClipError) else f"{type(e).__name__}: {e}"
                log.error("clip %s failed: %s", clip.clip_id, reason)
                result.failed[clip.clip_id] = reason
        if on_clip is not None:
            on_clip(i + 1, len(clips), clip.clip_id)
    result.elapsed_s = time.perf_counter() - t0
    # The shard's record lives beside the store, so a summary written by another process (or
    # after a crash) sees every shard's latest attempt.
    _write_json(paths.shard_file(shard), asdict(result))
    return result


def read_shard_results(root: str, n_shards: int) -> list[ShardResult]:
    """The latest record of every shard that has run at least once."""
    paths, out = RunPaths(root), []
    for shard in range(n_shards):
        fs, path = fsspec.core.url_to_fs(paths.shard_file(shard))
        if fs.exists(path):
            out.append(ShardResult(**_read_json(paths.shard_file(shard))))
    return out


def capture_one(model: LoadedModel, spec: RunSpec, store: str, clip: ClipRecord) -> int:
    """Load, capture and write one clip, then set its completion flag; returns bytes written."""
    samples = load_clip_audio(clip)
    cap = capture_clip(model, samples, spec.capture)
    written = write_clip(store, clip.clip_id, cap.resid, cap.codes)
    mark_complete(store, clip.clip_id)
    return written


@dataclass
class AnnotationResult:
    clip_id: str
    index: int
    annotated: bool = False
    skipped: bool = False  # already annotated in the store
    reason: str = ""  # why the clip could not be annotated (silent, too short), if so
    plot: str | None = None
    rec_positive_fraction: float = 0.0
    res_events: int = 0
    elapsed_s: float = 0.0


def clip_index(manifest: Manifest, clip_id: str) -> int:
    for i, c in enumerate(manifest.clips):
        if c.clip_id == clip_id:
            return i
    raise ClipError(clip_id, "is not in the run's manifest")


def truth_returns(clip: ClipRecord) -> list[dict]:
    """Ground-truth returns of a clip: planted (synthetic) or from the expanded score's measures."""
    if "returns" in clip.truth:
        return list(clip.truth["returns"])
    if "measures" in clip.truth:
        return returns_from_score(clip.truth["measures"], clip.truth.get("notes", []))
    return []


def annotate_one(spec: RunSpec, root: str, clip_id: str, plot: bool = False) -> AnnotationResult:
    """Annotate one clip into the store's label variables, then set its ``annotated`` flag.

    A clip that cannot be annotated (silent, shorter than ``annotation.min_duration_s``) is recorded
    with the reason and left unannotated; it is not an error. Other exceptions propagate (the task
    retries). Idempotent: an annotated clip is skipped.
    """
    paths = RunPaths(root)
    manifest = Manifest.from_json(paths.manifest)
    index = clip_index(manifest, clip_id)
    clip = manifest.clips[index]
    result = AnnotationResult(clip_id=clip_id, index=index)
    if bool(open_store(paths.store)["annotated"].values[index]):
        result.skipped = True
        return result
    t0 = time.perf_counter()
    samples = load_clip_audio(clip)
    try:
        ann = annotate_full(samples, spec.annotation, clip_id=clip_id)
    except ClipError as e:
        result.reason = e.problem
        log.warning("clip %s not annotated: %s", clip_id, e.problem)
    else:
        known = "returns" in clip.truth or "measures" in clip.truth
        truth = truth_labels(truth_returns(clip) if known else None, clip.n_frames, spec.annotation,
                             return_points=clip.truth.get("return_points"))
        write_labels(paths.store, clip_id, {**{k: v for k, v in ann.labels.items() if k != "time"}, **truth})
        mark_complete(paths.store, clip_id, flag="annotated")
        result.annotated = True
        result.rec_positive_fraction = round(float(ann.labels["rec_lag_next_s_valid"].mean()), 4)
        result.res_events = int(ann.labels["res_event"].sum())
        if plot:
            result.plot = _save_plot(ann, paths.plot_file(index), clip)
    result.elapsed_s = round(time.perf_counter() - t0, 3)
    _write_json(paths.annotation_file(index), asdict(result))
    return result


def _save_plot(ann, url: str, clip: ClipRecord) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "plot.png"
        plot_annotation(ann, local, title=clip.clip_id, truth=truth_returns(clip) or None)
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local), path)
    return url


def read_annotation_results(root: str, n_clips: int) -> list[AnnotationResult]:
    paths, out = RunPaths(root), []
    for i in range(n_clips):
        fs, path = fsspec.core.url_to_fs(paths.annotation_file(i))
        if fs.exists(path):
            out.append(AnnotationResult(**_read_json(paths.annotation_file(i))))
    return out


@dataclass
class RunSummary:
    root: str
    store: str
    weights: str
    n_clips: int
    complete: int
    frames: int
    audio_s: float
    bytes_on_disk: int
    elapsed_s: float
    failed: dict[str, str]
    rejected: list[dict[str, str]]
    shards: list[dict[str, Any]]
    annotate: bool = True
    annotated: int = 0
    not_annotated: dict[str, str] = field(default_factory=dict)  # clip -> reason (silent, too short)
    plots: dict[str, str] = field(default_factory=dict)  # clip -> png url

    @property
    def ok(self) -> bool:
        captured = not self.failed and not self.rejected and self.complete == self.n_clips
        return captured and (not self.annotate or self.annotated + len(self.not_annotated) == self.n_clips)


def summarise_run(prepared: PreparedRun, annotate: bool = True) -> RunSummary:
    """Totals over the shards, checked against the store's completion flags; consolidates metadata."""
    paths = RunPaths(prepared.root)
    results = read_shard_results(prepared.root, prepared.n_shards)
    annotations = read_annotation_results(prepared.root, prepared.n_clips) if annotate else []
    finalize_store(paths.store)
    ds = open_store(paths.store)
    complete = ds["complete"].values.astype(bool)
    failed: dict[str, str] = {}
    for r in results:
        failed.update(r.failed)
    for clip, flag in zip(ds["clip"].values, complete):
        if not flag and str(clip) not in failed:
            failed[str(clip)] = "not captured (its shard did not finish)"
    annotated = ds["annotated"].values.astype(bool) if "annotated" in ds else np.zeros(len(complete), bool)
    not_annotated = {a.clip_id: a.reason for a in annotations if a.reason}
    if annotate:
        for clip, flag in zip(ds["clip"].values, annotated):
            if not flag and str(clip) not in not_annotated and str(clip) not in failed:
                failed[str(clip)] = "not annotated (its annotation task did not finish)"
    summary = RunSummary(
        root=prepared.root, annotate=annotate, annotated=int(annotated.sum()), not_annotated=not_annotated,
        plots={a.clip_id: a.plot for a in annotations if a.plot},
        store=paths.store, weights=prepared.weights, n_clips=prepared.n_clips,
        complete=int(complete.sum()),
        frames=int(ds["n_frames"].values[complete].sum()),
        audio_s=float(ds["n_frames"].values[complete].sum() / FRAME_RATE_HZ),
        bytes_on_disk=store_size_bytes(paths.store),
        elapsed_s=sum(r.elapsed_s for r in results),
        failed=failed, rejected=prepared.rejected,
        shards=[{"shard": r.shard, "clips": len(r.clips), "captured": len(r.captured), "skipped": len(r.skipped),
                 "failed": len(r.failed), "frames": r.frames, "audio_s": round(r.audio_s, 2),
                 "bytes_written": r.bytes_written, "elapsed_s": round(r.elapsed_s, 2)} for r in results],
    )
    _write_json(f"{prepared.root}/summary.json", asdict(summary))
    _write_text(f"{prepared.root}/summary.md", summary_markdown(summary))
    return summary


def summary_markdown(s: RunSummary, images: dict[str, str] | None = None) -> str:
    """The run in markdown; ``images`` maps clip ids to image sources (default: the plots' paths
    relative to the run folder, as ``summary.md`` beside them needs)."""
    if images is None:
        images = {c: url[len(s.root) + 1:] if url.startswith(s.root) else url for c, url in s.plots.items()}
    lines = [
        f"# Benchmark run `{Path(s.root).name}`",
        "",
        f"**{weights_note(s.weights)}**",
        "",
        f"- store: `{s.store}`",
        f"- clips complete: {s.complete} of {s.n_clips}; frames: {s.frames}; audio: {s.audio_s:.1f} s",
        f"- clips annotated: {s.annotated} of {s.n_clips}" if s.annotate else "- annotation: off",
        f"- size on disk: {s.bytes_on_disk / 2**20:.1f} MiB; capture time: {s.elapsed_s:.1f} s",
        "",
        "| shard | clips | captured | skipped (already complete) | failed | frames | audio s | MiB written | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s.shards:
        lines.append(f"| {r['shard']} | {r['clips']} | {r['captured']} | {r['skipped']} | {r['failed']} | "
                     f"{r['frames']} | {r['audio_s']} | {r['bytes_written'] / 2**20:.1f} | {r['elapsed_s']} |")
    if s.failed:
        lines += ["", "## Failed clips", ""] + [f"- `{c}`: {r}" for c, r in s.failed.items()]
    if s.rejected:
        lines += ["", "## Inputs left out of the slice", ""] + [f"- `{r['item']}`: {r['problem']}" for r in s.rejected]
    if s.not_annotated:
        lines += ["", "## Clips captured but not annotated", ""] + [f"- `{c}`: {r}" for c, r in s.not_annotated.items()]
    if images:
        lines += ["", "## Annotations of the first clips", "",
                  "Left: self-similarity of the clip's chroma with the detected recurrences (ground-truth "
                  "returns boxed where known); right: tension components, composite and resolution events.", ""]
        lines += [f"### `{c}`\n\n![annotation of {c}]({src})\n" for c, src in images.items()]
    return "\n".join(lines) + "\n"


def run_inline(spec: RunSpec, out: str) -> RunSummary:
    """The whole benchmark in this process, stage after stage, without Prefect (notebooks, tests)."""
    prepared = prepare_run(spec, out)
    for shard in range(prepared.n_shards):
        capture_shard(spec, prepared.root, shard)
    if spec.annotate:
        for i, clip in enumerate(Manifest.from_json(RunPaths(prepared.root).manifest).clips):
            annotate_one(spec, prepared.root, clip.clip_id, plot=i < N_PLOTS)
    return summarise_run(prepared, annotate=spec.annotate)
