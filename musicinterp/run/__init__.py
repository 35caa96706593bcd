"""A run: plan the slice and create the store, capture each shard, annotate each clip, summarise.

Modules by role (each stage takes what it needs, never the whole config, and returns a small record):

- ``paths``: the run folder ``{out}/{name}-{fingerprint}`` and the files in it (``RunPaths``);
- ``records``: the shard and annotation records beside the store, their one writer and reader;
- ``plan``: ``prepare_run`` (manifest, store template; reads the model's config, never its weights)
  and ``PreparedRun``, what the later stages are handed;
- ``capture``: ``capture_shard`` (model + capture settings + a shard) and the per-process model cache;
- ``annotate``: ``annotate_one`` (annotation settings + one clip);
- ``summary``: ``summarise_run``, ``summary_markdown``, ``summary_artifact`` (with plots inline),
  ``read_progress`` (finished shards, for reruns);
- ``inline``: ``run_inline``, every stage in this process without Prefect.

``tasks/run.py`` and ``tasks/annotate.py`` wrap these one to one; a notebook calls them directly.
"""

from musicinterp.run.annotate import N_PLOTS, annotate_one
from musicinterp.run.capture import ShardFailed, capture_shard, clear_model_cache
from musicinterp.run.inline import run_inline
from musicinterp.run.paths import RunPaths
from musicinterp.run.plan import PreparedRun, prepare_run, run_clips, shard_clips
from musicinterp.run.records import AnnotationResult, ShardResult
from musicinterp.run.summary import (
    RunProgress,
    RunSummary,
    read_progress,
    summarise_run,
    summary_artifact,
    summary_markdown,
)

__all__ = [
    "N_PLOTS",
    "AnnotationResult",
    "PreparedRun",
    "RunPaths",
    "RunProgress",
    "RunSummary",
    "ShardFailed",
    "ShardResult",
    "annotate_one",
    "capture_shard",
    "clear_model_cache",
    "prepare_run",
    "read_progress",
    "run_clips",
    "run_inline",
    "shard_clips",
    "summarise_run",
    "summary_artifact",
    "summary_markdown",
]
