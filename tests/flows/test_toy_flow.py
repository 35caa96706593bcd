"""The train-toy flow on a real (test) Prefect server: a few steps, the report artifact, the failed check."""

from __future__ import annotations

import asyncio
import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from musicinterp.toy import ToySpec
from musicinterp_flows.toy import ToyNotLearned, train_toy_flow

pytestmark = pytest.mark.flow

TINY = ToySpec(
    n_pieces=4,
    heldout_pieces=2,
    steps=3,
    batch_size=2,
    hidden_size=32,
    n_layers=1,
    n_heads=2,
    ffn_dim=64,
    loss_steps=20,
    codebook_clusters=16,
)


async def _artifact(key: str):
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0] if found else None


def test_train_toy_flow__untrained_model_fails_the_check_but_saves_and_reports(tmp_path):
    out = tmp_path / "toy"
    with pytest.raises(ToyNotLearned, match="did not learn the cue structure"):
        train_toy_flow(spec=TINY, out=str(out))
    meta = json.loads((out / "musicinterp.json").read_text())
    assert meta["weights"] == "trained-here"
    assert json.loads((tmp_path / "toy-random" / "musicinterp.json").read_text())["weights"] == "random"
    report = asyncio.run(_artifact("toy-cue-report"))
    assert report is not None and "weights: trained-here" in report.data and "random weights" in report.data
