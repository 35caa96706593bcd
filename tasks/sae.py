"""Tasks of the SAE flows: train (or resume) one layer's SAE, evaluate it, rank features of a store's SAEs.

Training is not cached by Prefect: its checkpoints are the resumption (a rerun continues from the last one and a
finished layer only re-exports its folder). Tasks return paths and numbers, never tensors.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from musicinterp import sae as lib
from musicinterp.sae import SAERankSpec, SAETrainSpec

RETRY_DELAY_S = 2


@task(name="sae-train-layer", task_run_name="train SAE layer {layer}", cache_policy=None, persist_result=False)
def train_layer(spec: SAETrainSpec, layer: int, out: str) -> dict[str, Any]:
    """Train one layer's SAE (resuming from its checkpoint), with a progress artifact of optimiser steps."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"SAE layer {layer}: optimiser steps")

    def on_step(step: int, total: int, message: str) -> None:
        update_progress_artifact(progress, 100.0 * step / total)
        logger.info("%s", message)

    result = lib.train_layer(spec, layer, out, progress=on_step)
    logger.info("layer %d: %s (resumed: %s)", layer, result.get("sae"), result.get("resumed"))
    return result


@task(name="sae-evaluate-layer", task_run_name="evaluate SAE layer {layer}", cache_policy=None, retries=1)
def evaluate_layer(spec: SAETrainSpec, layer: int, out: str, with_loss: bool) -> dict[str, Any]:
    """Reconstruction metrics, and the spliced next-code loss when ``with_loss`` (loads the store's model)."""
    loaded = lib.store_model(spec.store, spec.device) if with_loss and spec.loss_clips > 0 else None
    return lib.evaluate_layer(spec, layer, out, loaded)


@task(name="sae-write-metrics", cache_policy=None)
def write_metrics(rows: list[dict[str, Any]], out: str) -> list[dict[str, Any]]:
    df = lib.write_metrics(rows, out)
    return df.round(4).astype(object).where(df.notna(), None).to_dict("records")


@task(name="sae-rank", task_run_name="rank SAE features ({control})", cache_policy=None, persist_result=False)
def rank(
    store: str, sae_root: str, spec: SAERankSpec, out: str, control: str, baseline_store: str | None = None
) -> str:
    """Screen and test one store's SAE features (with ``baseline_store``: also beyond the random twin's layer);
    the rows go to a parquet file whose path is returned."""
    logger = get_run_logger()

    def on_cell(done: int, total: int, message: str) -> None:
        logger.info("%d/%d %s", done, total, message)

    df = lib.rank_features(store, sae_root, spec, out, control, progress=on_cell, baseline_store=baseline_store)
    path = str(lib.intermediate_dir(out, control) / "rows.parquet")
    df.to_parquet(path, index=False)
    return path


@task(name="sae-rank-finalize", cache_policy=None)
def finalize(paths: list[str], out: str, alpha: float, store: str) -> dict[str, Any]:
    """The ranked table, candidates.json and the candidates' activations (features_layer<l>.zarr)."""
    df = lib.finalize_ranking([pd.read_parquet(p) for p in paths], out, alpha)
    lib.store_candidate_features(store, out)
    head = df[df["metric"] == "auroc"].groupby("control").head(20)
    return {
        "summary": lib.summary(df, alpha),
        "top": head.round(4).astype(object).where(head.notna(), None).to_dict("records"),
    }
