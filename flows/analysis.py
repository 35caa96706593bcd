"""The analysis flow: probes of every layer x target (x control) on a store, BH-corrected, with figures.

Labels are prepared once and every layer is read once (reduced to a small npz); the probes are
mapped over layer x target x control and cached by store fingerprint + analysis settings, so a
rerun after a crash redoes only the probes that did not finish.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.runtime import flow_run

from musicinterp import analysis as lib
from musicinterp import files
from musicinterp.config import AnalysisSpec
from musicinterp_tasks import analysis as t

HEADLINE_METRIC = "auroc"


def artifact_key(name: str, what: str) -> str:
    return f"{''.join(c if c.isalnum() else '-' for c in name.lower())}-{what}"


def _run_name() -> str:
    store = str(flow_run.parameters.get("store", "store"))
    return f"analysis-{Path(store.rstrip('/')).parent.name or store}"


def default_out(store: str) -> str:
    """``{run folder}/analysis`` beside ``store.zarr`` (an fsspec URL stays one: ``s3://b/r/analysis``)."""
    return files.join(files.parent(store), "analysis")


@flow(name="analysis", flow_run_name=_run_name, persist_result=True, result_serializer="json")
def analysis(
    store: str,
    spec: AnalysisSpec = AnalysisSpec(),
    out: str | None = None,
    control_store: str | None = None,
    name: str = "analysis",
) -> dict[str, Any]:
    """Does layer L at frame t predict the event at t + h beyond controls that see the audio up to t?

    ``store``: any store of the documented schema. ``control_store``: the same slice from a random-weight
    model of the same architecture: analysed alone ('random-model') and as covariates of the store's layers
    ('beyond-random', 'trained-minus-random'). Writes results.parquet,
    results.csv, heatmaps and findings.md under ``out`` (default: beside the store).
    """
    logger = get_run_logger()
    out = out or default_out(store)
    work = f"{out}/work"  # made by its writers, locally or in the run's object store
    controls = ["none"] + (["shifted-labels"] if spec.shifted_labels_control else [])
    main = t.plan_store.submit(store, spec)
    ctrl = t.plan_store.submit(control_store, spec) if control_store else None
    plan = main.result()
    cplan = ctrl.result() if ctrl else None
    weights, layers = plan["weights"], plan["layers"]
    n_cells = len(layers) * len(spec.targets)
    if cplan is not None:
        if cplan["layers"] != layers:
            raise lib.AnalysisError(
                f"the control store has layers {cplan['layers']}, the store {layers}: capture "
                "both with the same architecture and layers"
            )
        controls += ["beyond-random"]
    total = n_cells * (len(controls) + (1 if cplan is not None else 0))
    progress = create_progress_artifact(
        0.0, key=artifact_key(name, "analysis-progress"), description=f"{name}: probes finished"
    )
    futures = []
    baselines = {}
    if cplan is not None:  # the random network alone, and its reduced layers for 'beyond-random'
        cfp = cplan["identity"]
        clabels = t.load_labels.submit(control_store, cfp, spec, work, "control_")
        for layer in layers:
            baselines[layer] = t.reduce_layer.submit(control_store, cfp, spec, work, "control_", layer)
            for target in spec.targets:
                futures.append(
                    t.probe.submit(baselines[layer], clabels, cfp, spec, layer, target, "random-model", n_cells)
                )
    fp = plan["identity"]
    labels = t.load_labels.submit(store, fp, spec, work, "")
    for layer in layers:
        reduced = t.reduce_layer.submit(store, fp, spec, work, "", layer)
        for target in spec.targets:
            for control in controls:
                if control == "beyond-random":
                    futures.append(
                        t.probe.submit(
                            reduced,
                            labels,
                            f"{fp}+{cplan['identity']}",
                            spec,
                            layer,
                            target,
                            control,
                            n_cells,
                            baselines[layer],
                        )
                    )
                else:
                    futures.append(t.probe.submit(reduced, labels, fp, spec, layer, target, control, n_cells))
    rows: list[dict[str, Any]] = []
    for done, future in enumerate(as_completed(futures), start=1):
        new = future.result()
        rows += new
        update_progress_artifact(progress, 100.0 * done / total)
        r = new[0]
        logger.info("probe %d/%d done: layer %s, %s (%s)", done, total, r["layer"], r["label"], r["control"])
    df = pd.read_parquet(t.finalize(rows, spec, out, weights))
    headline = df[(df["metric"] == HEADLINE_METRIC)].copy()
    records = headline.round(4).astype(object).where(headline.notna(), None).to_dict("records")
    create_table_artifact(
        records,
        key=artifact_key(name, "analysis-results"),
        description=f"{name}: {HEADLINE_METRIC} gain per layer x horizon x target x control",
    )
    create_markdown_artifact(
        t.findings_artifact(out),
        key=artifact_key(name, "findings"),
        description=f"{name}: probe findings",
    )
    significant = int(
        ((df["control"] == "none") & (df["metric"] == HEADLINE_METRIC) & (df["q_value"] < spec.alpha)).sum()
    )
    logger.info("analysis of %s: %d significant cells (weights: %s); results in %s", store, significant, weights, out)
    return {"out": out, "significant": significant, "weights": weights, "n_rows": len(df)}
