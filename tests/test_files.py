"""Files at fsspec URLs: the analysis of a store writes where its ``out`` URL says, never to a local folder
named after the URL's scheme (``Path("s3://b/k")`` is the local path ``s3:/b/k``). fsspec's in-memory
filesystem stands in for an object store here; tests/integration/test_s3.py runs the same on a real S3 server."""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pandas as pd
from analysis_factories import FLOW_TEST_SPEC, make_store

from musicinterp import files
from musicinterp.analysis import analyze_store
from musicinterp.analysis.report import findings_artifact
from musicinterp.causal import load_directions


def test_files__urls_keep_their_scheme_when_joined_and_split():
    assert files.join("s3://b/runs/x", "analysis", "work") == "s3://b/runs/x/analysis/work"
    assert files.parent("s3://b/runs/x/store.zarr/") == "s3://b/runs/x"
    assert files.parent("store.zarr") == "."
    assert files.is_local("runs/x") and not files.is_local("memory://x")


def test_analysis_flow__default_out_of_an_s3_store_is_beside_it_in_the_bucket():
    from musicinterp_flows.analysis import default_out

    assert default_out("s3://b/runs/x/store.zarr") == "s3://b/runs/x/analysis"  # was "s3:/b/runs/x/analysis"
    assert default_out("runs/x/store.zarr/") == "runs/x/analysis"


def test_files__npz_round_trip_at_a_url_refuses_nothing_it_wrote(tmp_path):
    url = f"memory://files-{uuid.uuid4().hex}/a/b.npz"
    assert files.save_npz(url, x=np.arange(3), s=np.array(["a", "b"])) == url
    back = files.load_npz(url)
    np.testing.assert_array_equal(back["x"], np.arange(3))
    assert list(back["s"]) == ["a", "b"]
    local = files.save_npz(tmp_path / "deep" / "c.npz", y=np.ones(2))
    np.testing.assert_array_equal(files.load_npz(local)["y"], np.ones(2))


def test_analysis__results_figures_and_directions_go_to_the_out_url_not_a_local_folder(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s.zarr", n_clips=6, n_sources=3, n_frames=200, layers=1, hidden=8)
    monkeypatch.chdir(tmp_path)
    root = f"memory://analysis-{uuid.uuid4().hex}"
    out = f"{root}/run/analysis"
    spec = FLOW_TEST_SPEC.model_copy(update={"save_directions": "all"})
    df = analyze_store(store, spec, out)
    fs = fsspec.filesystem("memory")
    try:
        written = {p.rsplit("/analysis/", 1)[1] for p in fs.find(out)}
        for name in ("results.parquet", "results.csv", "results_detail.csv", "findings.md", "analysis_spec.json"):
            assert name in written, sorted(written)
        assert {"work/labels.npz", "work/layer1.npz", "directions.json", "directions.safetensors"} <= written
        assert any(n.startswith("gain_") and n.endswith(".png") for n in written), sorted(written)
        with fsspec.open(f"{out}/results.parquet", "rb") as f:
            assert len(pd.read_parquet(f)) == len(df)
        assert "data:image/png;base64," in findings_artifact(out)
        assert {d.layer for d in load_directions(out)} == {int(x) for x in df["layer"]}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # no "memory:" folder beside it
    finally:
        fs.rm(root.removeprefix("memory://"), recursive=True)
