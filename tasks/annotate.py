"""The annotation task: one clip's recurrence and tension labels into the run's store."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from musicinterp import run
from musicinterp.config import AnnotationSpec
from musicinterp.slice import ClipRecord
from musicinterp_tasks.run import RESULTS, retry_unless_permanent

ANNOTATE_RETRIES = 1
RETRY_DELAY_S = 2


@task(
    name="annotate-clip",
    task_run_name="annotate {clip.clip_id}",
    retries=ANNOTATE_RETRIES,
    retry_delay_seconds=RETRY_DELAY_S,
    retry_condition_fn=retry_unless_permanent,
    cache_policy=NO_CACHE,  # the store's ``annotated`` flags decide, as for capture (tasks/run.py)
    result_serializer=RESULTS,
)
def annotate_clip(
    annotation: AnnotationSpec, prepared: run.PreparedRun, clip: ClipRecord, index: int, plot: bool = False
) -> run.AnnotationResult:
    """Annotate one clip (row ``index`` of the store; its manifest checksum keys the cache)."""
    result = run.annotate_one(annotation, prepared.paths, clip, index, plot=plot, roots=prepared.data_roots)
    if result.reason:
        get_run_logger().warning("%s not annotated: %s", clip.clip_id, result.reason)
    return result
