"""The deployed benchmark on a real Prefect server: a shard fails, the parent names it, a rerun fixes it.

The fault is realistic: the run is planned first (``prepare_run`` writes the manifest with every
clip's checksum; the deployed parent reopens the same run), then one input file changes on disk,
so that its shard's clip fails with "changed since planning" while the other shards complete.
After the file is restored, ``musicinterp rerun`` must run exactly that shard again, into the same
store, and the store must then equal the one an uninterrupted in-process run writes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from factories import write_tone

from musicinterp.config import RunSpec
from musicinterp.run import prepare_run, run_inline
from musicinterp.slice import Manifest

pytestmark = pytest.mark.integration

SR = 32000
N_CLIPS = 4
CLIP_S = 2.5
FORBIDDEN_WORDS = ("ephemeral", "temporary server")
REPO = Path(__file__).resolve().parents[2]
RUNS: dict[str, dict] = {}  # backend -> the finished benchmark run, for the UI check


def _write_tone(path: Path, i: int, shift: float = 0.0) -> Path:
    """Clip ``i``: a tone at 200 + 60 i Hz (+ ``shift``) with a fifth above it, 2.5 s, float wav."""
    return write_tone(path, CLIP_S, freq_hz=200 + 60 * i + shift, amp=1.0, partials=((1, 0.3), (1.5, 0.1)), sr=SR)


@pytest.fixture(scope="session")
def workload(it_tmp):
    """Four short audio clips in four shards, the config file, and an uninterrupted run's store."""
    root = it_tmp / "workload"
    audio = root / "audio"
    audio.mkdir(parents=True)
    for i in range(N_CLIPS):
        _write_tone(audio / f"{i}.wav", i)
    config = {
        "name": "it-bench",
        "model": {"source": "offline", "name": "tiny", "seed": 0},
        "slice": {"name": "it", "sources": [{"kind": "audio_dir", "path": str(audio)}], "n_shards": N_CLIPS},
        "annotate": True,
    }
    path = root / "it-bench.yaml"
    path.write_text(yaml.safe_dump(config))
    spec = RunSpec.model_validate(config)
    clean = run_inline(spec, str(root / "clean"))  # the reference: no Prefect, one process
    assert clean.ok, clean.failed
    return {"root": root, "audio": audio, "config": path, "spec": spec, "clean_store": clean.store}


def _json(proc) -> dict:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"not JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from e


def test_failed_shard_is_named_and_rerun_alone_into_the_same_store(stack, workload, it_tmp):
    spec: RunSpec = workload["spec"]
    tmp_path = it_tmp / f"run-{stack.backend}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = str(tmp_path / "runs")
    prepared = prepare_run(spec, out)  # planned before the fault: the deployed parent reopens this run
    clips = Manifest.from_json(f"{prepared.root}/manifest.json").clips
    victim = next(c for c in clips if c.clip_id.startswith("audio_dir:2"))
    wav = workload["audio"] / "2.wav"
    backup = tmp_path / "2.wav.orig"
    shutil.copy(wav, backup)
    try:
        _write_tone(wav, 2, shift=37.0)  # the fault: the file changed since planning
        sub = stack.cli("submit", str(workload["config"]), "--out", out, "--wait", "--json")
    finally:
        shutil.copy(backup, wav)
    info = _json(sub)
    assert sub.returncode == 1, f"the benchmark should fail:\n{sub.stderr}\n{stack.diagnostics()}"
    run_id = info["benchmark"]["id"]
    RUNS[stack.backend] = info["benchmark"]

    # the parent reports exactly that shard as failed, and why
    status = stack.cli("status", run_id, "--json")
    assert status.returncode == 0, status.stderr
    st = _json(status)
    assert st["benchmark"]["state"] == "Failed"
    assert st["failed_shards"] == [victim.shard], st["shards"]
    assert f"failed shards: [{victim.shard}]" in st["benchmark"]["message"]
    assert (
        victim.clip_id in st["benchmark"]["message"]
        and "changed since the" in st["benchmark"]["message"]  # "... the slice/run was planned"
    )
    states = {s["shard"]: s["state"] for s in st["shards"]}
    assert states == {s: ("Failed" if s == victim.shard else "Completed") for s in range(N_CLIPS)}, states
    assert {f"{spec.name}-shards", f"{spec.name}-summary", f"{spec.name}-progress"} <= set(st["artifacts"])
    assert st["benchmark"]["url"].startswith(stack.api_url.removesuffix("/api") + "/runs/flow-run/")

    records = {p.name: p.read_bytes() for p in (Path(prepared.root) / "shards").glob("*.json")}
    assert len(records) == N_CLIPS

    # rerun: exactly the failed shard runs again, into the same store
    rerun = stack.cli("rerun", run_id, "--wait", "--json")
    assert rerun.returncode == 0, f"{rerun.stdout}\n{rerun.stderr}\n{stack.diagnostics()}"
    ri = _json(rerun)
    assert ri["run"]["flow"] == "rerun-failed-shards" and ri["benchmark"]["completed"], ri
    assert ri["only_shards"] == [victim.shard]
    assert [(s["shard"], s["state"]) for s in ri["shards"]] == [(victim.shard, "Completed")], ri["shards"]
    assert ri["out"] == out
    after = {p.name: p.read_bytes() for p in (Path(prepared.root) / "shards").glob("*.json")}
    changed = sorted(name for name in records if after[name] != records[name])
    assert changed == [f"{victim.shard:05d}.json"], changed  # the other shards' records are untouched
    assert json.loads(after[f"{victim.shard:05d}.json"])["captured"] == [victim.clip_id]

    # nothing is left to rerun
    again = stack.cli("rerun", ri["run"]["id"])
    assert again.returncode == 0 and "nothing to rerun" in again.stderr, again.stderr
    # the original run's status now reads the store: its failed shard was completed by the rerun
    healed = _json(stack.cli("status", run_id, "--json"))
    assert healed["failed_shards"] == [], healed["shards"]
    assert "completed since by a rerun" in {s["shard"]: s["state"] for s in healed["shards"]}[victim.shard]
    again = stack.cli("rerun", run_id)
    assert again.returncode == 0 and "nothing to rerun" in again.stderr, again.stderr

    # the store equals an uninterrupted run's
    a, b = xr.open_zarr(workload["clean_store"]), xr.open_zarr(f"{prepared.root}/store.zarr")
    assert set(a.data_vars) == set(b.data_vars)
    assert bool(b["complete"].all()) and bool(b["annotated"].all())
    for var in a.data_vars:
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    assert b.attrs["config_fingerprint"] == a.attrs["config_fingerprint"]

    # a real server is configured: nothing the user saw speaks of an ephemeral or temporary one
    for text in stack.outputs:
        for word in FORBIDDEN_WORDS:
            assert word not in text.lower(), text


def test_ui_shows_the_run_with_its_artifacts(stack, it_tmp):
    import importlib.util

    spec = importlib.util.spec_from_file_location("screenshot", REPO / "scripts/screenshot.py")
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    if shot.find_chromium() is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    run = RUNS.get(stack.backend)
    if run is None:
        pytest.skip("the benchmark test did not leave a finished run to look at (see its failure)")
    png = shot.screenshot(
        run["url"],
        it_tmp / f"run-{stack.backend}.png",
        expect=[run["name"], "Failed"],
        tab="Artifacts",
        expect_after_tab=["it-bench-shards", "it-bench-summary"],
        height=1100,
    )
    data = png.read_bytes()
    if os.environ.get("MUSICINTERP_UPDATE_SCREENSHOT") and stack.backend == "sqlite":
        shutil.copy(png, REPO / "docs/img/prefect-run-artifacts.png")  # the README's picture
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
