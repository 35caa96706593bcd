"""The object-store path end to end, on a real S3-compatible server process (moto's) on 127.0.0.1.

The whole run goes to ``s3://{bucket}/runs``: plan, capture (two shards), annotation, then the analysis at its
smallest settings, then a rerun after one clip's chunk was deleted and another clip's flag was reset. It
checks that plain xarray opens the store over S3 (``storage_options``), that the analysis wrote under the run's
own prefix and nothing landed in a local folder named ``s3:``, that the rerun captured exactly the two
clips again, that the final store equals a local run's, and that the credentials (sentinels, from the
environment, as on a fleet) are in no object written.

Bounded: the server gets SERVER_START_TIMEOUT_S to answer; the run is small (4 clips of 4 s; about 3,400 requests
and 40 s of wall time on a 2-core machine at load ~5.5; it was 11,400 requests, most of them the store's metadata,
before the store was consolidated at creation and kept open per shard).
The server is stopped in ``finally``, and dies with this test process if that is killed first (the integration
harness's launcher: PR_SET_PDEATHSIG and a reaper).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from harness_procs import Launcher

from musicinterp import run
from musicinterp.api import analyze
from musicinterp.config import RunSpec
from musicinterp.run.records import read_shard_records
from musicinterp.store import mark_complete, verify_clips

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 60
BUCKET = "musicinterp-it"
KEY_ID = "AKIDMUSICINTERPSENTINEL"  # sentinels: found in no object the run writes
SECRET = "musicinterp-secret-sentinel-7f3a9c"
SMALL_ANALYSIS = {"targets": ["res_within_2s"], "n_permutations": 19, "n_bootstrap": 50, "frame_stride": 5}


def _spec() -> RunSpec:
    return RunSpec(
        name="s3",
        slice={
            "name": "s3",
            "sources": [{"kind": "synthetic", "n_pieces": 4, "duration_s": 4.0, "seed": 1}],
            "n_shards": 2,
        },
        analysis=SMALL_ANALYSIS,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    """moto's S3 server on 127.0.0.1 and a free port, with one bucket; the AWS settings in the environment
    (the way a fleet's workers get them). Yields (endpoint URL, log file)."""
    if not os.environ.get("CI"):  # in CI the dev extra has installed both: a missing one fails the test
        pytest.importorskip("s3fs", reason="the object-store path needs s3fs (the dev extra installs it)")
        pytest.importorskip("moto.server", reason="the S3 test server is moto's (the dev extra installs moto[server])")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses filesystems: none may point at another server
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "moto.log"
    launcher = Launcher()  # the server dies with this process, even when it is SIGKILLed
    proc = launcher.start("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path)
    try:
        for name, value in {
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            monkeypatch.delenv(name, raising=False)
        _make_bucket(proc, log_path)
        yield endpoint, log_path
    finally:
        launcher.stop()


def _fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)  # the settings of this test's environment


def _make_bucket(proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            _fs().mkdir(BUCKET)
            return
        except Exception as e:  # noqa: BLE001 - not answering yet: connection refused, then ready
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"moto server did not answer within {SERVER_START_TIMEOUT_S} s ({e}):\n"
                    f"{log_path.read_text()[-3000:]}"
                ) from e
            time.sleep(0.5)


def _local_s3_folders(tmp_path: Path) -> list[Path]:
    """Folders named like a URL's scheme (``s3:``, what ``Path("s3://b/k")`` writes to): anywhere under this
    test's folders (the working directory is one), and in the checkout and the temporary folder."""
    found = [p for p in tmp_path.rglob("s3:")]
    return found + [p for p in (REPO / "s3:", Path(tempfile.gettempdir()) / "s3:") if p.exists()]


def test_s3__whole_run_analysis_and_rerun_on_a_real_object_store(s3_server, tmp_path, monkeypatch):
    endpoint, _ = s3_server
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # anything written to a relative local path would land here
    spec = _spec()
    out = f"s3://{BUCKET}/runs"

    # the whole run: plan, capture (two shards), annotation, analysis
    first = run.run_inline(spec, out)
    assert first.ok and first.complete == 4 and first.annotated == 4, first
    assert first.root.startswith(f"{out}/s3-") and first.store == f"{first.root}/store.zarr"
    df = analyze(first.root)
    assert len(df) and set(df["weights"]) == {"random"}

    fs = _fs()
    prefix = first.root.removeprefix("s3://")
    names = {p.removeprefix(prefix + "/") for p in fs.find(prefix)}
    for name in ("run.json", "manifest.json", "summary.json", "shards/00000.json", "shards/00001.json"):
        assert name in names, sorted(names)[:40]
    analysis = {n.removeprefix("analysis/") for n in names if n.startswith("analysis/")}
    for name in ("results.parquet", "results.csv", "findings.md", "analysis_spec.json", "work/labels.npz"):
        assert name in analysis, sorted(analysis)
    assert any(n.startswith("gain_") and n.endswith(".png") for n in analysis), sorted(analysis)
    with fs.open(f"{prefix}/analysis/results.csv") as f:
        pd.testing.assert_frame_equal(pd.read_csv(f), pd.read_csv(_csv(df)), check_dtype=False)
    assert _local_s3_folders(tmp_path) == []

    # plain xarray over S3, with the settings given as storage_options (not just the environment)
    options = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    plain = xr.open_zarr(first.store, storage_options=options)
    assert bool(plain["complete"].all()) and plain.attrs["weights"] == "random"
    clean = plain.load()
    clips = [str(c) for c in clean["clip"].values]

    # damage: one clip's activation chunk deleted, another clip's flag reset; the rerun captures just those two
    store_key = first.store.removeprefix("s3://")
    chunk = sorted(fs.find(f"{store_key}/resid/c/0"))[0]
    fs.rm(chunk)
    mark_complete(first.store, clips[2], done=False)
    assert set(verify_clips(first.store)) == {clips[0]}
    again = run.run_inline(spec, out)
    assert again.ok and again.root == first.root and again.complete == 4, again
    records = read_shard_records(run.RunPaths(again.root))
    assert {c for s in records for c in s.repaired} == {clips[0]}
    assert sorted(c for s in records if s.attempt > 1 for c in s.captured) == sorted([clips[0], clips[2]])
    assert verify_clips(again.store) == {}

    # the final store equals a local run's of the same config
    local = run.run_inline(spec, str(tmp_path / "local"))
    a, b = xr.open_zarr(again.store, storage_options=options).load(), xr.open_zarr(local.store).load()
    assert set(a.data_vars) == set(b.data_vars)
    for var in a.data_vars:
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    assert {k: v for k, v in a.attrs.items() if k != "store_uid"} == {
        k: v for k, v in b.attrs.items() if k != "store_uid"
    }

    # the credentials are in no object the run wrote, and nothing went to a local "s3:" folder
    leaked = [p for p in fs.find(BUCKET) if any(s.encode() in fs.cat_file(p) for s in (KEY_ID, SECRET))]
    assert leaked == []
    assert _local_s3_folders(tmp_path) == []


def _csv(df: pd.DataFrame):
    import io

    from musicinterp.analysis.report import table

    return io.StringIO(table(df).to_csv(index=False))
