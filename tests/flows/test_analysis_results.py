"""The analysis flow's persisted results are JSON: nothing of it is pickled, and no result is too big to
persist (the finalize task returns the results table's path, not the DataFrame)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from analysis_factories import FLOW_TEST_SPEC, make_store

from musicinterp_flows.analysis import analysis

pytestmark = pytest.mark.flow

SPEC = FLOW_TEST_SPEC


def test_analysis_flow__results_persist_as_json_and_nothing_fails_to_serialize(tmp_path, caplog):
    store = make_store(tmp_path / "s.zarr", planted_layer=1, n_clips=8, n_sources=4, n_frames=200, layers=1, hidden=8)
    storage = Path(os.environ["PREFECT_HOME"]) / "storage"
    t0 = time.time()
    with caplog.at_level(logging.WARNING):
        result = analysis(store=store, spec=SPEC, out=str(tmp_path / "out"))
    assert "Failed to serialize" not in caplog.text
    assert result["n_rows"] == len(pd.read_parquet(tmp_path / "out" / "results.parquet"))
    written = [f for f in storage.rglob("*") if f.is_file() and f.stat().st_mtime >= t0 - 1]
    assert written, "the tasks persisted no results"
    for f in written:  # every persisted result is JSON (a pickle, base64 or not, does not parse)
        json.loads(f.read_bytes())
