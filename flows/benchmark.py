"""The benchmark flow: plan slice -> init store -> capture each shard -> summarise."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.runtime import flow_run

from musicinterp.benchmark import N_PLOTS, RunPaths, RunSummary, summary_markdown
from musicinterp.config import RunSpec
from musicinterp.slice import Manifest
from tasks.annotate import annotate_clip
from tasks.benchmark import capture_shard, plan_run, summarise_run

DEFAULT_OUT = "runs"


class RunIncomplete(RuntimeError):
    """Some clips failed or were left out; everything else was captured and summarised."""


def _artifact_key(spec: RunSpec, what: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    name = "".join(c if c.isalnum() else "-" for c in spec.name.lower())
    return f"{name}-{what}"


def _inline_images(plots: dict[str, str]) -> dict[str, str]:
    """PNG plots as data URIs, so the artifact shows them wherever the run's files live."""
    import base64

    import fsspec

    out = {}
    for clip, url in plots.items():
        with fsspec.open(url, "rb") as f:
            out[clip] = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    return out


def _run_name() -> str:
    spec = flow_run.parameters.get("spec")
    name = spec.get("name") if isinstance(spec, dict) else getattr(spec, "name", "benchmark")
    return f"benchmark-{name}"


@flow(name="benchmark", flow_run_name=_run_name, persist_result=True)
def benchmark(spec: RunSpec = RunSpec(), out: str = DEFAULT_OUT) -> dict[str, Any]:
    """Capture MusicGen's residual stream for every clip of the slice into one Zarr store."""
    logger = get_run_logger()
    prepared = plan_run(spec, out)
    n = prepared["n_shards"]
    progress = create_progress_artifact(0.0, key=_artifact_key(spec, "progress"),
                                        description=f"{spec.name}: shards captured and clips annotated")
    futures = [capture_shard.submit(spec, prepared, shard) for shard in range(n)]
    if spec.annotate:
        clips = Manifest.from_json(RunPaths(prepared["root"]).manifest).clips
        futures += [annotate_clip.submit(spec, prepared, c.clip_id, c.sha256, plot=i < N_PLOTS)
                    for i, c in enumerate(clips)]
    for finished, future in enumerate(as_completed(futures), start=1):
        state = future.state
        if state.is_failed():
            logger.error("%s", state.message)
        update_progress_artifact(progress, 100.0 * finished / len(futures))
    summary = RunSummary(**summarise_run(prepared, annotate=spec.annotate))
    create_table_artifact(summary.shards, key=_artifact_key(spec, "shards"),
                          description=f"{spec.name}: shards")
    create_markdown_artifact(summary_markdown(summary, images=_inline_images(summary.plots)),
                             key=_artifact_key(spec, "summary"),
                             description=f"{spec.name}: run summary")
    logger.info("store: %s", summary.store)
    if not summary.ok:
        problems = {**summary.failed, **{r["item"]: r["problem"] for r in summary.rejected}}
        raise RunIncomplete(
            f"{len(problems)} clip(s) or file(s) failed; the other {summary.complete} clips are in {summary.store}: "
            + "; ".join(f"{k}: {v}" for k, v in problems.items())
        )
    return {"store": summary.store, "root": summary.root, "complete": summary.complete, "n_clips": summary.n_clips}
