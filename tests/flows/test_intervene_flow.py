"""The intervene flow on a real (test) Prefect server, at reduced size: the folder, the table and findings artifacts."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from musicinterp.causal.spec import CandidateSpec, InterventionSpec, experiment_folder
from musicinterp.config import ModelSpec
from musicinterp_flows.intervene import intervene

pytestmark = pytest.mark.flow

SMALL = InterventionSpec(
    name="intervene-test",
    model=ModelSpec(source="local", name="checkpoints/toy-pair", weights="trained-here"),
    control_model=None,
    n_pieces=2,
    n_fit_pieces=2,
    layers=[2],
    candidates=[CandidateSpec(kind="diff-means", k=1, operations=["ablate"], n_controls=2)],
    whole_patch_layers=[2],
    whole_patch_windows=["to-return"],
    fluency_stride=10,
    n_bootstrap=20,
)


async def _artifact(key: str):
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0] if found else None


def test_intervene_flow__writes_the_experiment_and_publishes_table_and_findings(tmp_path):
    result = intervene(spec=SMALL, out=str(tmp_path))
    folder = experiment_folder(SMALL, tmp_path)
    assert result["out"] == str(folder)
    df = pd.read_csv(folder / "results.csv")
    whole = df[(df["experiment"] == "whole-stream patch") & df["candidate"].str.contains("other-cue")].iloc[0]
    swap = df[df["experiment"] == "cue swap"].iloc[0]
    assert whole["event_effect"] == pytest.approx(swap["event_effect"], abs=1e-4)
    table = asyncio.run(_artifact("intervene-test-causal-results"))
    findings = asyncio.run(_artifact("intervene-test-causal-findings"))
    assert table is not None and "diff-means top-1" in table.data
    assert findings is not None and "weights: trained-here" in findings.data and "data:image/png" in findings.data
