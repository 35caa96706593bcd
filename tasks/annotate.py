"""The annotation task: one clip's recurrence and tension labels into the run's store."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from musicinterp import benchmark as bench
from musicinterp.config import RunSpec

ANNOTATE_RETRIES = 1
RETRY_DELAY_S = 2


def _annotate_cache_key(context, parameters: dict[str, Any]) -> str:
    """Clip checksum + annotation settings, within one store: the labels are a function of the audio
    and the settings only, and the store identity keeps a recreated store from skipping its writes."""
    spec: RunSpec = parameters["spec"]
    return (f"annotate-{parameters['sha256'][:16]}-{spec.annotation.fingerprint()}-"
            f"{parameters['prepared']['store_uid']}-{parameters['clip_id']}")


@task(
    name="annotate-clip",
    task_run_name="annotate {clip_id}",
    retries=ANNOTATE_RETRIES,
    retry_delay_seconds=RETRY_DELAY_S,
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_annotate_cache_key),
    persist_result=True,
)
def annotate_clip(spec: RunSpec, prepared: dict[str, Any], clip_id: str, sha256: str, plot: bool = False
                  ) -> dict[str, Any]:
    """Annotate one clip (``sha256`` is the manifest's checksum of its samples; it keys the cache)."""
    result = bench.annotate_one(spec, prepared["root"], clip_id, plot=plot)
    if result.reason:
        get_run_logger().warning("%s not annotated: %s", clip_id, result.reason)
    return asdict(result)
