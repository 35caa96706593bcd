"""Tasks of the generation pipeline (``musicinterp.generate``): plan, generate a shard, summarise, report."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from musicinterp.config import AnnotationSpec, CaptureSpec, GenerationSpec, ModelSpec, RunSpec
from musicinterp.generate import shard as gen
from musicinterp.generate.report import generation_markdown
from musicinterp_tasks.run import RESULTS, retry_unless_permanent

SHARD_RETRIES = 1
RETRY_DELAY_S = 2


@task(
    name="plan-generation",
    retries=1,
    retry_delay_seconds=RETRY_DELAY_S,
    retry_condition_fn=retry_unless_permanent,
    result_serializer=RESULTS,
)
def plan_generation(spec: RunSpec, out: str) -> gen.PreparedGeneration:
    """Plan the run (create or reopen its store) and add the generated variables to it."""
    prepared = gen.prepare_generation(spec, out)
    get_run_logger().info(
        "generation %s: %d clips x %d seeds in %d shards, store %s (weights: %s)",
        spec.name,
        prepared.run.n_clips,
        prepared.n_seeds,
        prepared.run.n_shards,
        prepared.paths.store,
        prepared.run.weights,
    )
    return prepared


@task(
    name="generate-shard",
    task_run_name="generate shard {shard}",
    retries=SHARD_RETRIES,
    retry_delay_seconds=RETRY_DELAY_S,
    retry_condition_fn=retry_unless_permanent,
    cache_policy=NO_CACHE,  # the store's gen_complete / gen_annotated flags decide what is (re)done
    result_serializer=RESULTS,
)
def generate_shard(
    model: ModelSpec,
    capture: CaptureSpec,
    generation: GenerationSpec,
    annotation: AnnotationSpec,
    prepared: gen.PreparedGeneration,
    shard: int,
) -> dict[str, Any]:
    """Generate one shard's continuations; fails (after the other clips are done) if any failed."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"shard {shard}: clips generated")

    def on_clip(done: int, total: int, clip_id: str) -> None:
        update_progress_artifact(progress, 100.0 * done / total)
        logger.info("shard %d: %d/%d clips (%s)", shard, done, total, clip_id)

    result = gen.generate_shard(model, capture, generation, annotation, prepared, shard, on_clip=on_clip)
    if result.failed:
        raise gen.GenerationShardFailed(result)
    return asdict(result)


@task(name="summarise-generation", result_serializer=RESULTS)
def summarise_generation(prepared: gen.PreparedGeneration) -> dict[str, Any]:
    """Totals from the store's flags; consolidates the store's metadata."""
    return asdict(gen.summarise_generation(prepared))


@task(name="generation-report")
def generation_report(prepared: gen.PreparedGeneration, model: ModelSpec, device: str = "cpu") -> str:
    """The generation's findings as markdown (the pair toy's A-return table when the slice is cue pieces)."""
    return generation_markdown(prepared.paths.root, model, device)
