"""Tasks of the intervene flow: the experiment (one call of musicinterp.causal.experiment), its artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task

from musicinterp.causal.experiment import FIGURE_FILE, FINDINGS_FILE, RESULTS_FILE, run_experiment
from musicinterp.causal.spec import InterventionSpec
from musicinterp.figures import png_data_uri

TABLE_COLUMNS = (
    "model",
    "weights",
    "experiment",
    "layer",
    "window",
    "candidate",
    "operation",
    "k",
    "event_effect",
    "event_ci_low",
    "event_ci_high",
    "event_q",
    "controls_event_mean",
    "controls_event_max",
    "event_vs_controls",
    "event_vs_controls_q",
    "fluency_effect",
    "fluency_vs_controls",
)


@task(name="intervene-experiment", retries=0, cache_policy=None, persist_result=False)
def experiment(spec: InterventionSpec, out: str) -> dict[str, Any]:
    """Run the experiment into ``out``; returns paths and the row count (never tensors)."""
    logger = get_run_logger()
    df = run_experiment(spec, out, progress=logger.info)
    return {"out": out, "n_rows": len(df), "results": str(Path(out) / RESULTS_FILE)}


@task(name="intervene-table")
def table_records(out: str) -> list[dict[str, Any]]:
    """The results table's headline columns, rounded, for the table artifact."""
    df = pd.read_csv(Path(out) / RESULTS_FILE)
    cols = [c for c in TABLE_COLUMNS if c in df]
    d = df[cols].round(4)
    return json.loads(d.to_json(orient="records"))


@task(name="intervene-findings")
def findings_artifact(out: str) -> str:
    """``findings.md`` with the figure inline."""
    text = (Path(out) / FINDINGS_FILE).read_text()
    fig = Path(out) / FIGURE_FILE
    return text + (f"\n\n![causal effects]({png_data_uri(str(fig))})\n" if fig.exists() else "")
