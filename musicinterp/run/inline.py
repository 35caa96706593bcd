"""The whole run in this process, stage after stage, without Prefect (notebooks, tests, references)."""

from __future__ import annotations

from musicinterp.config import RunSpec
from musicinterp.run.annotate import N_PLOTS, annotate_one
from musicinterp.run.capture import capture_shard
from musicinterp.run.plan import prepare_run, run_clips
from musicinterp.run.summary import RunSummary, summarise_run


def run_inline(spec: RunSpec, out: str) -> RunSummary:
    """Plan, capture every shard, annotate every clip (if ``spec.annotate``), summarise."""
    prepared = prepare_run(spec, out)
    for shard in range(prepared.n_shards):
        capture_shard(spec.model, spec.capture, prepared.paths, shard, roots=prepared.data_roots)
    if spec.annotate:
        for index, clip in run_clips(prepared.paths):
            annotate_one(spec.annotation, prepared.paths, clip, index, plot=index < N_PLOTS, roots=prepared.data_roots)
    return summarise_run(prepared, annotate=spec.annotate)
