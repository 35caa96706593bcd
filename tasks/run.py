"""Tasks of the run pipeline (``musicinterp.run``), one per stage: plan, list a shard's clips,
capture a shard, read a run's progress, summarise. The annotation task is in ``tasks/annotate.py``."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from musicinterp import run
from musicinterp.config import CaptureSpec, ConfigError, ModelSpec, RunSpec
from musicinterp.slice import ClipRecord
from musicinterp.sources.base import ClipError
from musicinterp.store import StoreError

SHARD_RETRIES = 1
RETRY_DELAY_S = 2
RESULTS = "json"  # persisted results are JSON, never pickles another process would load


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures only: a bad config, a store of another run or an unusable input fails
    the same way every time, so it fails at once with its own message."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return not isinstance(exc, (ConfigError, StoreError, ClipError))


@task(
    name="plan-run",
    retries=1,
    retry_delay_seconds=RETRY_DELAY_S,
    retry_condition_fn=retry_unless_permanent,
    result_serializer=RESULTS,
)
def plan_run(spec: RunSpec, out: str) -> run.PreparedRun:
    """Plan the slice, write the manifest, create or reopen the store."""
    prepared = run.prepare_run(spec, out)
    get_run_logger().info(
        "run %s: %d clips in %d shards, store %s (weights: %s)",
        spec.name,
        prepared.n_clips,
        prepared.n_shards,
        prepared.paths.store,
        prepared.weights,
    )
    return prepared


@task(name="list-shard-clips", retries=1, retry_delay_seconds=RETRY_DELAY_S, result_serializer=RESULTS)
def shard_clips(prepared: run.PreparedRun, shard: int) -> list[tuple[int, ClipRecord]]:
    """The clips of one shard with their row in the store, from the run's manifest."""
    return run.shard_clips(prepared.paths, shard)


@task(
    name="capture-shard",
    task_run_name="capture shard {shard}",
    retries=SHARD_RETRIES,
    retry_delay_seconds=RETRY_DELAY_S,
    retry_condition_fn=retry_unless_permanent,
    cache_policy=NO_CACHE,
    result_serializer=RESULTS,
)
def capture_shard(model: ModelSpec, capture: CaptureSpec, prepared: run.PreparedRun, shard: int) -> run.ShardResult:
    """Capture one shard into the store; fails (after the other clips are done) if any clip failed.

    No cache: the store's completion flags decide what is captured (a cached result would skip a shard
    whose flags were reset or whose chunks were found damaged), and they make a rerun idempotent."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"shard {shard}: clips captured")

    def on_clip(done: int, total: int, clip_id: str) -> None:
        update_progress_artifact(progress, 100.0 * done / total)
        logger.info("shard %d: %d/%d clips (%s)", shard, done, total, clip_id)

    result = run.capture_shard(model, capture, prepared.paths, shard, on_clip=on_clip, roots=prepared.data_roots)
    if result.failed:
        raise run.ShardFailed(result)
    return result


@task(name="read-run-progress", result_serializer=RESULTS)
def read_progress(spec: RunSpec, out: str) -> run.RunProgress | None:
    """The run's finished shards from its store, every complete clip's chunks read back (a damaged clip
    leaves its shard to rerun); None when the run folder cannot be read from here."""
    try:
        return run.read_progress(run.RunPaths.for_spec(spec, out), annotate=spec.annotate, verify=True)
    except Exception as e:  # noqa: BLE001 - never planned, or not reachable from this machine
        get_run_logger().warning("cannot read the run folder's progress: %s", e)
        return None


@task(name="summarise-run", result_serializer=RESULTS)
def summarise_run(prepared: run.PreparedRun, annotate: bool = True) -> run.RunSummary:
    """Totals from the store and the shard records; consolidates the store's metadata."""
    return run.summarise_run(prepared, annotate=annotate)


@task(name="summary-artifact", result_serializer=RESULTS)
def summary_artifact(summary: run.RunSummary) -> str:
    """The run summary in markdown with its plots inline."""
    return run.summary_artifact(summary)
