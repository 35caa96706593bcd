"""A GPU worker killed mid-shard (SIGKILL to the worker and its flow-run process), on a real stack.

Nothing tells the server that the shard's process died: its run stays Running (or Pending, when the worker
had claimed it but its process had not started). The benchmark parent's zombie rules (no heartbeat for three
intervals from the run, or from the worker that claimed a pending run; the harness sends one every 30 s) mark
it Crashed, the parent fails naming the shard, and ``musicinterp rerun`` on a fresh worker completes the store equal to
an uninterrupted run's. Bounded: every wait has a deadline; the stack is stopped by its fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from fault_runs import cli_json, planned_run

from musicinterp.slice import Manifest
from musicinterp.store import completed_clips

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

N_CLIPS = 60  # 30 a shard: shard 0 long enough to be caught mid-way
DETECT_S = 300  # three missed 30 s heartbeats, the parent's 30 s check, and slack for a busy machine
CONFIG = {
    "name": "it-killed",
    "model": {"source": "offline", "name": "tiny", "seed": 0},
    "slice": {
        "name": "killed",
        "sources": [{"kind": "synthetic", "n_pieces": N_CLIPS, "duration_s": 3.0}],
        "n_shards": 2,
    },
    "annotate": False,
    "analyze": False,
}


def _status(stack, run_id: str) -> dict:
    return cli_json(stack.cli("status", run_id, "--json", timeout=120))


def _screenshots():
    """scripts/screenshot.py (headless Chromium over DevTools), or None where no Chromium is installed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("screenshot", REPO / "scripts/screenshot.py")
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    return shot if shot.find_chromium() is not None else None


def _shoot(shot, stack, url: str, name: str, **kw) -> None:
    """Load a UI page in headless Chromium until the expected texts show; keep it as docs/img/ui-NAME.png
    when MUSICINTERP_UPDATE_SCREENSHOT is set (sqlite stack only)."""
    png = shot.screenshot(url, stack.logs / f"ui-{name}.png", **kw)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name
    if os.environ.get("MUSICINTERP_UPDATE_SCREENSHOT") and stack.backend == "sqlite":
        shutil.copy(png, REPO / f"docs/img/ui-{name}.png")


def _artifact(stack, key: str) -> dict:
    """The newest artifact of ``key``, from the stack's API."""
    import httpx

    r = httpx.post(
        f"{stack.api_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1},
        timeout=30,
    )
    r.raise_for_status()
    assert r.json(), f"no artifact {key!r}"
    return r.json()[0]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): ``musicinterp worker`` runs Prefect's worker in a process
    group of its own, and the worker its flow runs, so a kill of one group would leave them running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(proc) -> None:
    """SIGKILL the worker this harness started and every process below it (Prefect's worker, its flow
    runs): a node that dies takes all of them at once, with no chance to report."""
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def test_worker_killed_mid_shard_is_noticed_and_rerun_completes_the_store(stack, it_tmp):
    spec, config, clean, out, prepared = planned_run(it_tmp / f"killed-{stack.backend}", CONFIG)
    shard0 = {c.clip_id for c in Manifest.from_json(f"{prepared.root}/manifest.json").shard(0)}

    sub = stack.cli("submit", str(config), "--out", out, "--json")
    assert sub.returncode == 0, sub.stdout + sub.stderr
    run_id = cli_json(sub)["id"]

    # wait until shard 0 has captured a clip but not all, then kill the GPU worker and its flow runs
    worker = dict(stack.procs)["worker-gpu"]
    deadline = time.monotonic() + 300
    done: set[str] = set()
    while time.monotonic() < deadline:
        try:
            done = completed_clips(prepared.paths.store) & shard0
        except Exception:  # noqa: BLE001 - the store is being written
            done = set()
        if done:
            break
        time.sleep(0.2)
    assert done, f"shard 0 captured nothing in 300 s\n{stack.diagnostics()}"
    _kill_tree(worker)
    assert done != shard0, "shard 0 finished before the kill: make it longer"
    killed_at = time.monotonic()
    shot = _screenshots()
    ui = stack.api_url.removesuffix("/api")
    if shot is not None:  # the parent still runs: its clip progress is visible
        _shoot(
            shot,
            stack,
            f"{ui}/runs/flow-run/{run_id}",
            "run-progress",
            expect=["Running"],
            tab="Artifacts",
            expect_after_tab=["it-killed-progress"],
            height=1000,
        )

    # a replacement worker joins the pool, as on a fleet: it takes shard 1 if the dead worker had not yet
    # claimed it, and the rerun below
    stack.start("worker-gpu-2", "worker", "--pool", "musicinterp-gpu", "--name", f"gpu2-{stack.backend}")

    # the parent notices within minutes and fails naming the shard
    while time.monotonic() - killed_at < DETECT_S:
        st = _status(stack, run_id)
        if st["benchmark"]["final"]:
            break
        time.sleep(5)
    else:
        raise AssertionError(f"the parent did not notice in {DETECT_S} s: {st['shards']}\n{stack.diagnostics()}")
    noticed_s = time.monotonic() - killed_at
    print(f"killed worker noticed after {noticed_s:.0f} s")
    assert st["benchmark"]["state"] == "Failed"
    assert 0 in st["failed_shards"], st["shards"]
    crashed = {s["shard"]: s for s in st["shards"]}[0]
    assert crashed["state"] == "Crashed" and "no heartbeat" in crashed["message"], crashed
    # shard 1 shared the killed worker: still running, or claimed but not yet started (then its worker's
    # silence marks it crashed); either way it never hangs the parent
    for shard in st["shards"]:
        assert shard["state"] in ("Completed", "Crashed"), shard
    assert "failed shards: [0" in st["benchmark"]["message"]
    summary = _artifact(stack, "it-killed-summary")
    assert "Rerun the failed shards" in summary["data"] and f"musicinterp rerun {run_id}" in summary["data"]
    form = summary["data"].split("for this run](", 1)[1].split(")", 1)[0]
    if shot is not None:  # the failed run's summary with the rerun link, and the form it opens, filled in
        _shoot(
            shot, stack, f"{ui}/artifacts/artifact/{summary['id']}", "failed-run", expect=["Rerun the failed shards"]
        )
        _shoot(shot, stack, form, "rerun-form", expect=["Leave empty to rerun"], height=1000)

    # the rerun, on the replacement worker, completes the store, equal to an uninterrupted run's
    rerun = stack.cli("rerun", run_id, "--wait", "--json", timeout=600)
    assert rerun.returncode == 0, f"{rerun.stdout}\n{rerun.stderr}\n{stack.diagnostics()}"
    a, b = xr.open_zarr(clean.store), xr.open_zarr(prepared.paths.store)
    assert bool(b["complete"].all())
    for var in ("resid", "codes", "complete", "sha256", "n_frames"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
