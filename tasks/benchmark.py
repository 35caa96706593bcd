"""Tasks of the benchmark flow, one per musicinterp stage."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from musicinterp import benchmark as bench
from musicinterp.config import RunSpec

SHARD_RETRIES = 1
RETRY_DELAY_S = 2


def _shard_cache_key(context, parameters: dict[str, Any]) -> str:
    """Config fingerprint + store identity + shard: a recreated store never reuses old results."""
    prepared = parameters["prepared"]
    return f"capture-{prepared['fingerprint']}-{prepared['store_uid']}-shard{parameters['shard']}"


@task(name="plan-run", retries=1, retry_delay_seconds=RETRY_DELAY_S)
def plan_run(spec: RunSpec, out: str) -> dict[str, Any]:
    """Plan the slice, write the manifest, create or reopen the store."""
    prepared = bench.prepare_run(spec, out)
    get_run_logger().info(
        "run %s: %d clips in %d shards, store %s (weights: %s)",
        spec.name, prepared.n_clips, prepared.n_shards, bench.RunPaths(prepared.root).store, prepared.weights,
    )
    return asdict(prepared)


@task(
    name="capture-shard",
    task_run_name="capture shard {shard}",
    retries=SHARD_RETRIES,
    retry_delay_seconds=RETRY_DELAY_S,
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_shard_cache_key),
    persist_result=True,
)
def capture_shard(spec: RunSpec, prepared: dict[str, Any], shard: int) -> dict[str, Any]:
    """Capture one shard into the store; fails (after the other clips are done) if any clip failed."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"shard {shard}: clips captured")

    def on_clip(done: int, total: int, clip_id: str) -> None:
        update_progress_artifact(progress, 100.0 * done / total)
        logger.info("shard %d: %d/%d clips (%s)", shard, done, total, clip_id)

    result = bench.capture_shard(spec, prepared["root"], shard, on_clip=on_clip)
    if result.failed:
        raise bench.ShardFailed(result)
    return asdict(result)


@task(name="summarise-run")
def summarise_run(prepared: dict[str, Any], annotate: bool = True) -> dict[str, Any]:
    """Totals from the store and the shard records; consolidates the store's metadata."""
    return asdict(bench.summarise_run(bench.PreparedRun(**prepared), annotate=annotate))
