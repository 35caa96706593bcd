"""The annotation task: one clip's recurrence and tension labels into the run's store."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from musicinterp import run
from musicinterp.config import AnnotationSpec
from musicinterp.slice import ClipRecord

ANNOTATE_RETRIES = 1
RETRY_DELAY_S = 2


def _annotate_cache_key(context, parameters: dict[str, Any]) -> str:
    """Clip checksum + annotation settings, within one store: the labels are a function of the audio
    and the settings only, and the store identity keeps a recreated store from skipping its writes."""
    annotation: AnnotationSpec = parameters["annotation"]
    clip: ClipRecord = parameters["clip"]
    prepared: run.PreparedRun = parameters["prepared"]
    return f"annotate-{clip.sha256[:16]}-{annotation.fingerprint()}-{prepared.store_uid}-{clip.clip_id}"


@task(
    name="annotate-clip",
    task_run_name="annotate {clip.clip_id}",
    retries=ANNOTATE_RETRIES,
    retry_delay_seconds=RETRY_DELAY_S,
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_annotate_cache_key),
    persist_result=True,
)
def annotate_clip(
    annotation: AnnotationSpec, prepared: run.PreparedRun, clip: ClipRecord, index: int, plot: bool = False
) -> run.AnnotationResult:
    """Annotate one clip (row ``index`` of the store; its manifest checksum keys the cache)."""
    result = run.annotate_one(annotation, prepared.paths, clip, index, plot=plot)
    if result.reason:
        get_run_logger().warning("%s not annotated: %s", clip.clip_id, result.reason)
    return result
