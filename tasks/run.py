"""Tasks of the run pipeline (``musicinterp.run``), one per stage: plan, list a shard's clips,
capture a shard, read a run's progress, summarise. The annotation task is in ``tasks/annotate.py``."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from musicinterp import run
from musicinterp.config import CaptureSpec, ModelSpec, RunSpec
from musicinterp.slice import ClipRecord

SHARD_RETRIES = 1
RETRY_DELAY_S = 2


def _shard_cache_key(context, parameters: dict[str, Any]) -> str:
    """Config fingerprint + store identity + shard: a recreated store never reuses old results."""
    prepared: run.PreparedRun = parameters["prepared"]
    return f"capture-{prepared.fingerprint}-{prepared.store_uid}-shard{parameters['shard']}"


@task(name="plan-run", retries=1, retry_delay_seconds=RETRY_DELAY_S)
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


@task(name="list-shard-clips", retries=1, retry_delay_seconds=RETRY_DELAY_S)
def shard_clips(prepared: run.PreparedRun, shard: int) -> list[tuple[int, ClipRecord]]:
    """The clips of one shard with their row in the store, from the run's manifest."""
    return run.shard_clips(prepared.paths, shard)


@task(
    name="capture-shard",
    task_run_name="capture shard {shard}",
    retries=SHARD_RETRIES,
    retry_delay_seconds=RETRY_DELAY_S,
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_shard_cache_key),
    persist_result=True,
)
def capture_shard(model: ModelSpec, capture: CaptureSpec, prepared: run.PreparedRun, shard: int) -> run.ShardResult:
    """Capture one shard into the store; fails (after the other clips are done) if any clip failed."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"shard {shard}: clips captured")

    def on_clip(done: int, total: int, clip_id: str) -> None:
        update_progress_artifact(progress, 100.0 * done / total)
        logger.info("shard %d: %d/%d clips (%s)", shard, done, total, clip_id)

    result = run.capture_shard(model, capture, prepared.paths, shard, on_clip=on_clip)
    if result.failed:
        raise run.ShardFailed(result)
    return result


@task(name="read-run-progress")
def read_progress(spec: RunSpec, out: str) -> run.RunProgress | None:
    """The run's finished shards from its store; None when the run folder cannot be read from here."""
    try:
        return run.read_progress(run.RunPaths.for_spec(spec, out), annotate=spec.annotate)
    except Exception as e:  # noqa: BLE001 - never planned, or not reachable from this machine
        get_run_logger().warning("cannot read the run folder's progress: %s", e)
        return None


@task(name="summarise-run")
def summarise_run(prepared: run.PreparedRun, annotate: bool = True) -> run.RunSummary:
    """Totals from the store and the shard records; consolidates the store's metadata."""
    return run.summarise_run(prepared, annotate=annotate)


@task(name="summary-artifact")
def summary_artifact(summary: run.RunSummary) -> str:
    """The run summary in markdown with its plots inline."""
    return run.summary_artifact(summary)
