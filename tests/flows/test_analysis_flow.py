"""The analysis flow's cache: a store's identity is where it is and what it holds, whoever wrote it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from analysis_factories import FLOW_TEST_SPEC, make_store

from musicinterp_flows.analysis import analysis

pytestmark = pytest.mark.flow

SPEC = FLOW_TEST_SPEC
KW = {"n_clips": 12, "n_sources": 6, "n_frames": 300, "layers": 1, "hidden": 8, "seed": 4}


def _results(store: str, out: Path) -> pd.DataFrame:
    analysis(store=store, spec=SPEC, out=str(out))
    return pd.read_csv(out / "results.csv")


def test_analysis_flow__a_second_store_with_the_same_attributes_gets_its_own_results(tmp_path):
    """Two stores written with plain xarray (no store_uid): same shape, attributes and flags, other
    activations. Analysed one after the other with the cache on, each gets its own results; so does the first
    store rewritten in place with other activations."""
    a = make_store(tmp_path / "a.zarr", planted_layer=None, **KW)
    b = make_store(tmp_path / "b.zarr", planted_layer=1, **KW)
    da, db = xr.open_zarr(a, consolidated=False), xr.open_zarr(b, consolidated=False)
    assert da.attrs == db.attrs and da.sizes == db.sizes
    assert not np.allclose(da.resid.sel(layer=1).values, db.resid.sel(layer=1).values, equal_nan=True)
    ra, rb = _results(a, tmp_path / "out_a"), _results(b, tmp_path / "out_b")
    ga = ra[(ra.layer == 1) & (ra.metric == "auroc")].gain.item()
    gb = rb[(rb.layer == 1) & (rb.metric == "auroc")].gain.item()
    assert gb > ga + 0.2, (ga, gb)  # b's planted layer, not a's cached noise
    again = _results(a, tmp_path / "out_a2")  # unchanged store: the cache may serve it, and must agree
    pd.testing.assert_frame_equal(again, ra)
    make_store(a, planted_layer=1, **KW)  # the same path, rewritten with b's activations
    rewritten = _results(a, tmp_path / "out_a3")
    assert rewritten[(rewritten.layer == 1) & (rewritten.metric == "auroc")].gain.item() == pytest.approx(gb)
