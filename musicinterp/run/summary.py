"""What a run came to: totals over the shard and annotation records, checked against the store's
completion flags (``summarise_run``, ``summary_markdown``), and which shards are finished
(``read_progress``, for reruns).

The store's flags are the truth; the records add the reasons (why a clip failed or was not
annotated) and the timings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from musicinterp.figures import png_data_uri
from musicinterp.frames import FRAME_RATE_HZ
from musicinterp.run.paths import RunPaths
from musicinterp.run.plan import PreparedRun
from musicinterp.run.records import (
    AnnotationResult,
    ShardResult,
    read_annotation_records,
    read_shard_records,
    write_json,
    write_text,
)
from musicinterp.slice import Manifest
from musicinterp.store import finalize_store, open_store, store_size_bytes, verify_clips, weights_note


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
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> seconds and throughput
    encoded_with: dict[str, list[str]] = field(default_factory=dict)  # capture.encoder_numerics -> clip ids

    @property
    def ok(self) -> bool:
        captured = not self.failed and not self.rejected and self.complete == self.n_clips
        return captured and (not self.annotate or self.annotated + len(self.not_annotated) == self.n_clips)


def summarise_run(prepared: PreparedRun, annotate: bool = True) -> RunSummary:
    """Totals over the shards, checked against the store's completion flags; consolidates metadata.

    Writes ``summary.json`` and ``summary.md`` into the run folder.
    """
    paths = prepared.paths
    results = read_shard_records(paths)
    annotations = read_annotation_records(paths) if annotate else []
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
        root=prepared.root,
        annotate=annotate,
        annotated=int(annotated.sum()),
        not_annotated=not_annotated,
        plots={a.clip_id: a.plot for a in annotations if a.plot},
        store=paths.store,
        weights=prepared.weights,
        n_clips=prepared.n_clips,
        complete=int(complete.sum()),
        frames=int(ds["n_frames"].values[complete].sum()),
        audio_s=float(ds["n_frames"].values[complete].sum() / FRAME_RATE_HZ),
        bytes_on_disk=store_size_bytes(paths.store),
        elapsed_s=sum(r.elapsed_s for r in results),
        failed=failed,
        rejected=prepared.rejected,
        shards=[
            {
                "shard": r.shard,
                "clips": len(r.clips),
                "captured": len(r.captured),
                "captured_earlier": len(r.captured_earlier),
                "skipped": len(r.skipped),
                "attempt": r.attempt,
                "failed": len(r.failed),
                "frames": r.frames,
                "audio_s": round(r.audio_s, 2),
                "bytes_written": r.bytes_written,
                "elapsed_s": round(r.elapsed_s, 2),
            }
            for r in results
        ],
    )
    summary.stages = stage_times(results, annotations, prepared)
    for r in results:
        for clip, how in r.encoded_with.items():
            summary.encoded_with.setdefault(how, []).append(clip)
    write_json(paths.summary_json, asdict(summary))
    write_text(paths.summary_md, summary_markdown(summary))
    return summary


def stage_times(
    results: list[ShardResult], annotations: list[AnnotationResult], prepared: PreparedRun
) -> dict[str, dict[str, float]]:
    """Seconds and throughput of each stage, summed over the latest attempt of every shard and clip.

    ``plan`` is the latest planning's wall time (slice, manifest, store). ``capture_wall`` is the shards'
    wall time: where writes run in a background thread beside the next clip's capture
    (``writes_can_overlap``), encode + capture + write can exceed it. ``analyse`` is added by
    ``link_findings`` once the analysis has run.
    """
    clips = sum(len(r.captured) for r in results)
    audio_s = sum(r.audio_s for r in results)
    written = sum(r.bytes_written for r in results)

    def rates(seconds: float, n: int, audio: float | None = None, nbytes: int | None = None) -> dict[str, float]:
        out = {"seconds": round(seconds, 3), "clips": n, "clips_per_s": round(n / seconds, 3) if seconds else 0.0}
        if audio is not None:
            out["audio_s_per_s"] = round(audio / seconds, 3) if seconds else 0.0
        if nbytes is not None:
            out["mb_per_s"] = round(nbytes / 1e6 / seconds, 2) if seconds else 0.0
        return out

    done = [a for a in annotations if a.annotated]
    return {
        "plan": rates(prepared.plan_s, prepared.n_clips),
        "encode": rates(sum(r.encode_s for r in results), clips, audio_s),
        "capture": rates(sum(r.capture_s for r in results), clips, audio_s),
        "write": rates(sum(r.write_s for r in results), clips, nbytes=written),
        "capture_wall": rates(sum(r.elapsed_s for r in results), clips, audio_s, written),
        "annotate": rates(sum(a.elapsed_s for a in done), len(done)),
    }


def summary_markdown(s: RunSummary, images: dict[str, str] | None = None) -> str:
    """The run in markdown; ``images`` maps clip ids to image sources (default: the plots' paths
    relative to the run folder, as ``summary.md`` beside them needs)."""
    if images is None:
        images = {c: url[len(s.root) + 1 :] if url.startswith(s.root) else url for c, url in s.plots.items()}
    lines = [
        f"# Benchmark run `{Path(s.root).name}`",
        "",
        f"**{weights_note(s.weights)}**",
        "",
        f"- store: `{s.store}`",
        f"- clips complete: {s.complete} of {s.n_clips}; frames: {s.frames}; audio: {s.audio_s:.1f} s",
        f"- clips annotated: {s.annotated} of {s.n_clips}" if s.annotate else "- annotation: off",
        f"- size on disk: {s.bytes_on_disk / 2**20:.1f} MiB; capture time: {s.elapsed_s:.1f} s",
        *[f"- codes computed with {how}: {len(clips)} clips" for how, clips in s.encoded_with.items()],
        *(
            [
                f"- **the clips' codes were computed in {len(s.encoded_with)} ways**: EnCodec's codes depend on "
                "the device and the torch thread count (a few % of codes differ), so these clips are not "
                "encoded exactly alike; rerun on workers configured alike to make them so"
            ]
            if len(s.encoded_with) > 1
            else []
        ),
        "",
        "| shard | clips | captured | captured by an earlier attempt | skipped (complete before) | failed "
        "| frames | audio s | MiB written | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s.shards:
        lines.append(
            f"| {r['shard']} | {r['clips']} | {r['captured']} | {r.get('captured_earlier', 0)} | {r['skipped']} | "
            f"{r['failed']} | "
            f"{r['frames']} | {r['audio_s']} | {r['bytes_written'] / 2**20:.1f} | {r['elapsed_s']} |"
        )
    if s.stages:
        lines += ["", "## Stage times", "", "| stage | s | clips | clips/s | audio s per s | MB/s |", "|---" * 6 + "|"]
        for name, t in s.stages.items():
            lines.append(
                f"| {name} | {t['seconds']} | {t['clips']} | {t['clips_per_s']} | {t.get('audio_s_per_s', '')} | "
                f"{t.get('mb_per_s', '')} |"
            )
        lines += ["", "Writes overlap the next capture where a core is free; capture_wall: wall time."]
    if s.failed:
        lines += ["", "## Failed clips", ""] + [f"- `{c}`: {r}" for c, r in s.failed.items()]
    if s.rejected:
        lines += ["", "## Inputs left out of the slice", ""] + [f"- `{r['item']}`: {r['problem']}" for r in s.rejected]
    if s.not_annotated:
        lines += ["", "## Clips captured but not annotated", ""] + [f"- `{c}`: {r}" for c, r in s.not_annotated.items()]
    if images:
        lines += [
            "",
            "## Annotations of the first clips",
            "",
            "Left: self-similarity of the clip's chroma with the detected recurrences (ground-truth "
            "returns boxed where known); right: tension components, composite and resolution events.",
            "",
        ]
        lines += [f"### `{c}`\n\n![annotation of {c}]({src})\n" for c, src in images.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RunProgress:
    """Which shards of a planned run are finished in its store."""

    n_shards: int
    finished: frozenset[int]  # every clip complete, and annotated (or recorded as not annotatable)


def summary_artifact(s: RunSummary) -> str:
    """The summary in markdown with its annotation plots inline (the flow's artifact)."""
    return summary_markdown(s, images={clip: png_data_uri(url) for clip, url in s.plots.items()})


def read_progress(paths: RunPaths, annotate: bool, verify: bool = False) -> RunProgress:
    """The shards whose clips are all complete (and annotated, if the run annotates) in the store.

    ``verify``: read every complete clip's chunks too; a damaged clip (``store.verify_clips``) leaves
    its shard unfinished, so a rerun of the failed shards captures it again.

    The store is the source of truth: a shard whose run failed but that a later rerun completed is
    finished. A clip that cannot be annotated (silent, too short) counts as annotated when its
    annotation record says why. Raises when the run was never planned (no manifest or store).
    """
    manifest = Manifest.from_json(paths.manifest)
    ds = open_store(paths.store)
    done = {str(c) for c, f in zip(ds["clip"].values, ds["complete"].values) if f}
    if verify:
        done -= set(verify_clips(paths.store))
    if annotate and "annotated" in ds:
        annotated = {str(c) for c, f in zip(ds["clip"].values, ds["annotated"].values) if f}
        unannotatable = {a.clip_id for a in read_annotation_records(paths) if a.reason}
        done &= annotated | unannotatable
    finished = {s for s in range(manifest.n_shards) if all(c.clip_id in done for c in manifest.shard(s))}
    return RunProgress(n_shards=manifest.n_shards, finished=frozenset(finished))


def link_findings(paths: RunPaths, analyse_s: float | None = None) -> bool:
    """Add the analysis's findings and results to ``summary.md`` once they exist (the analysis runs after the
    summary is written), and its wall time ``analyse_s`` to the stage times of ``summary.json`` and
    ``summary.md``. Returns whether it linked them; idempotent."""
    import fsspec

    names = ["findings.md", "results.csv"]
    fs, _ = fsspec.core.url_to_fs(paths.analysis)
    present = [n for n in names if fs.exists(fsspec.core.url_to_fs(f"{paths.analysis}/{n}")[1])]
    if not present:
        return False
    if analyse_s is not None:
        with fsspec.open(paths.summary_json, "r") as f:
            summary = RunSummary(**json.load(f))
        clips = summary.complete
        summary.stages["analyse"] = {
            "seconds": round(analyse_s, 3),
            "clips": clips,
            "clips_per_s": round(clips / analyse_s, 3) if analyse_s else 0.0,
        }
        write_json(paths.summary_json, asdict(summary))
        write_text(paths.summary_md, summary_markdown(summary))
    with fsspec.open(paths.summary_md, "r") as f:
        text = f.read()
    section = "\n## Findings\n\n" + "".join(f"- [analysis/{n}](analysis/{n})\n" for n in present)
    if section not in text:
        write_text(paths.summary_md, text + section)
    return True
