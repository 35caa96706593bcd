"""The SAE flows end to end on small stores: train (and a rerun that resumes), then rank with the random-model
control; the artifacts and the files the README names exist."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from analysis_factories import make_store

from musicinterp.sae import SAERankSpec, SAETrainSpec, load_sae
from musicinterp_flows.sae import sae_rank, sae_train

pytestmark = pytest.mark.flow

KW = {"n_clips": 12, "n_sources": 6, "n_frames": 200, "layers": 2, "hidden": 8}


def _spec(store: str) -> SAETrainSpec:
    return SAETrainSpec(
        store=store,
        layers=[1, 2],
        d_sae=16,
        k=3,
        train_frames=6 * 128,
        batch_size=128,
        lr=3e-3,
        shuffle_buffer_frames=400,
        checkpoint_every_steps=2,
    )


def test_sae_flows__train_resume_and_rank_with_the_random_model_control(tmp_path):
    store = make_store(tmp_path / "s.zarr", planted_layer=2, seed=5, **KW)
    twin = make_store(tmp_path / "t.zarr", planted_layer=None, seed=6, **KW)
    a = sae_train(spec=_spec(store), out=str(tmp_path / "sae"), with_loss=False, name="flow-test")
    assert [r["layer"] for r in a["metrics"]] == [1, 2] and (tmp_path / "sae" / "metrics.csv").exists()
    before = load_sae(tmp_path / "sae" / "layer2").sae.W_enc.clone()
    again = sae_train(spec=_spec(store), out=str(tmp_path / "sae"), with_loss=False)  # finished: re-exported as is
    assert again["metrics"] == a["metrics"]
    assert (load_sae(tmp_path / "sae" / "layer2").sae.W_enc == before).all()
    sae_train(spec=_spec(twin), out=str(tmp_path / "twin-sae"), with_loss=False)
    spec = SAERankSpec(
        targets=["rec_within_2s"],
        layers=[2],
        top_n=1,
        analysis={"n_bootstrap": 20, "n_permutations": 19, "shifted_labels_control": False, "n_folds": 3},
    )
    r = sae_rank(
        store=store,
        sae_root=str(tmp_path / "sae"),
        spec=spec,
        out=str(tmp_path / "rank"),
        control_store=twin,
        control_sae_root=str(tmp_path / "twin-sae"),
    )
    controls = {"none", "random-model", "beyond-random", "trained-minus-random"}
    assert set(r["summary"]) == controls
    df = pd.read_csv(tmp_path / "rank" / "ranked.csv")
    assert set(df["control"]) == controls and set(df["layer"]) == {2}
    assert isinstance(json.loads((tmp_path / "rank" / "candidates.json").read_text()), list)
