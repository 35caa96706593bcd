"""Tasks of the analysis flow: labels once, each layer reduced once, one probe per (layer, target, control)."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from musicinterp import analysis
from musicinterp.config import AnalysisSpec

RETRY_DELAY_S = 2
RESULTS = "json"  # persisted results are JSON, never pickles another process would load


@task(name="analysis-plan-store", retries=2, retry_delay_seconds=RETRY_DELAY_S, result_serializer=RESULTS)
def plan_store(store: str, spec: AnalysisSpec) -> dict[str, Any]:
    """Open the store once: its identity for caching, the layers to probe and its weights kind."""
    return analysis.plan_store(store, spec)


@cache
def analysis_code_digest() -> str:
    """Digest of the analysis package's source: TASK_SOURCE sees only the task's own body, and a cached
    probe computed by older statistics must not be reused."""
    h = hashlib.sha256()
    for f in sorted(Path(analysis.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def _key(what: str, *names: str):
    def key_fn(context, parameters: dict[str, Any]) -> str:
        spec: AnalysisSpec = parameters["spec"]
        parts = [str(parameters[n]) for n in names]
        return "-".join([what, parameters["store_fp"], spec.fingerprint(), analysis_code_digest(), *parts])

    return key_fn


@task(
    name="analysis-labels",
    retries=1,
    retry_delay_seconds=RETRY_DELAY_S,
    persist_result=True,
    result_serializer=RESULTS,
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_key("labels", "tag")),
)
def load_labels(store: str, store_fp: str, spec: AnalysisSpec, work: str, tag: str) -> str:
    """Targets, masks and controls of every kept frame, as one small npz."""
    return str(analysis.load_labels(store, spec, f"{work}/{tag}labels.npz"))


@task(
    name="analysis-reduce-layer",
    task_run_name="reduce {tag}layer {layer}",
    retries=1,
    retry_delay_seconds=RETRY_DELAY_S,
    persist_result=True,
    result_serializer=RESULTS,
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_key("reduce", "tag", "layer")),
)
def reduce_layer(store: str, store_fp: str, spec: AnalysisSpec, work: str, tag: str, layer: int) -> str:
    """Read one layer once, clip by clip, projected to the reduced width."""
    return str(analysis.reduce_layer(store, layer, spec, f"{work}/{tag}layer{layer}.npz"))


@task(
    name="analysis-probe",
    task_run_name="probe layer {layer} {target} ({control})",
    retries=1,
    retry_delay_seconds=RETRY_DELAY_S,
    persist_result=True,
    result_serializer=RESULTS,
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_key("probe", "layer", "target", "control", "n_cells")),
)
def probe(
    reduced: str,
    labels: str,
    store_fp: str,
    spec: AnalysisSpec,
    layer: int,
    target: str,
    control: str,
    n_cells: int,
    baseline: str | None = None,
) -> list[dict[str, Any]]:
    """Controls alone vs controls + layer (``baseline``: + the random network's layer), with CI, permutation p
    and cluster-robust p. ``store_fp`` names every store the probe reads (both for 'beyond-random')."""
    return analysis.probe_layer_target(reduced, labels, target, spec, control, baseline_npz=baseline, n_cells=n_cells)


@task(name="analysis-finalize", result_serializer=RESULTS)
def finalize(rows: list[dict[str, Any]], spec: AnalysisSpec, out: str, weights: str) -> str:
    """BH across the grid, results table (parquet, CSV), heatmaps and findings. Returns the path of
    results.parquet: a DataFrame is no result to persist (Prefect could only pickle it)."""
    analysis.finalize(rows, spec, out, weights)
    return f"{out}/results.parquet"


@task(name="analysis-findings-artifact", result_serializer=RESULTS)
def findings_artifact(out: str) -> str:
    """findings.md with the AUROC heatmaps inline."""
    return analysis.report.findings_artifact(out)
