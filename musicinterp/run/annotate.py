"""The annotation stage of a run: one clip's recurrence and tension labels, and its ground truth,
into the store's label variables.

Wraps ``musicinterp.annotate`` for the run: skips annotated clips, records clips that cannot be
annotated (silent, too short) with the reason, draws the plots of the first clips and writes each
clip's record beside the store.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import fsspec

from musicinterp.annotate import annotate_full
from musicinterp.annotate.plot import plot_annotation
from musicinterp.annotate.truth import returns_from_score, truth_labels
from musicinterp.config import AnnotationSpec
from musicinterp.run.inputs import check_locator
from musicinterp.run.paths import RunPaths
from musicinterp.run.records import AnnotationResult, write_annotation_record
from musicinterp.slice import ClipRecord, load_clip_audio
from musicinterp.sources.base import ClipError
from musicinterp.store import ClipWriter, mark_complete, write_labels

log = logging.getLogger(__name__)

N_PLOTS = 3  # annotation plots drawn per run (the first clips of the manifest), shown in the summary


def truth_returns(clip: ClipRecord) -> list[dict]:
    """Ground-truth returns of a clip: planted (synthetic) or from the expanded score's measures."""
    if "returns" in clip.truth:
        return list(clip.truth["returns"])
    if "measures" in clip.truth:
        return returns_from_score(clip.truth["measures"], clip.truth.get("notes", []))
    return []


def annotate_one(
    annotation: AnnotationSpec,
    paths: RunPaths,
    clip: ClipRecord,
    index: int,
    plot: bool = False,
    roots: list[str] | None = None,
) -> AnnotationResult:
    """Annotate one clip (row ``index`` of the store) into its label variables, then set its
    ``annotated`` flag.

    A clip that cannot be annotated (silent, shorter than ``annotation.min_duration_s``) is recorded
    with the reason and left unannotated; it is not an error. Other exceptions propagate (the task
    retries). Idempotent: an annotated clip is skipped (its plot drawn again if asked for and missing).
    ``roots``: as for ``capture_shard``.
    """
    if roots is not None:
        check_locator(clip, roots)
    store = ClipWriter(paths.store)  # its metadata read once, here (one read when consolidated)
    if not 0 <= index < len(store.clip_ids) or store.clip_ids[index] != clip.clip_id:
        raise ClipError(clip.clip_id, f"is not row {index} of the run's store {paths.store!r}")
    result = AnnotationResult(clip_id=clip.clip_id, index=index)
    if store.flag(clip.clip_id, "annotated"):
        result.skipped = True
        if plot and not _exists(paths.plot_file(index)):  # e.g. a clip a replan kept: its plot was dropped
            result.plot = _save_plot(
                annotate_full(load_clip_audio(clip), annotation, clip_id=clip.clip_id), paths.plot_file(index), clip
            )
        return result
    t0 = time.perf_counter()
    samples = load_clip_audio(clip)
    try:
        ann = annotate_full(samples, annotation, clip_id=clip.clip_id)
    except ClipError as e:
        result.reason = e.problem
        log.warning("clip %s not annotated: %s", clip.clip_id, e.problem)
    else:
        known = "returns" in clip.truth or "measures" in clip.truth
        truth = truth_labels(
            truth_returns(clip) if known else None,
            clip.n_frames,
            annotation,
            return_points=clip.truth.get("return_points"),
        )
        labels = {k: v for k, v in ann.labels.items() if k != "time"}
        write_labels(store, clip.clip_id, {**labels, **truth})
        mark_complete(store, clip.clip_id, flag="annotated")
        result.annotated = True
        result.rec_positive_fraction = round(float(ann.labels["rec_lag_next_s_valid"].mean()), 4)
        result.res_events = int(ann.labels["res_event"].sum())
        if plot:
            result.plot = _save_plot(ann, paths.plot_file(index), clip)
    result.elapsed_s = round(time.perf_counter() - t0, 3)
    write_annotation_record(paths, result)
    return result


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def _save_plot(ann, url: str, clip: ClipRecord) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "plot.png"
        plot_annotation(ann, local, title=clip.clip_id, truth=truth_returns(clip) or None)
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local), path)
    return url
