"""The Prefect server killed (SIGKILL) while a sharded run is in flight, then started again on the same
database and port, on a real stack.

While the server is down, the shard runs keep capturing into the store (the store, not the server, holds
the work); ``musicinterp status`` says at once that the server does not answer and what to do; a
``submit --wait`` that was following the run says the server is unreachable, keeps waiting (within its
deadline) and follows the run again once the server is back; a ``musicinterp run`` of the same config
in-process, reporting to that server, says so within seconds too. Afterwards every shard either finished
or is rerunnable with ``musicinterp rerun``, and both stores end equal to an uninterrupted run's
(``run_inline``). Bounded: every wait has a deadline; the stack is stopped by its fixture.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from fault_runs import cli_json, planned_run
from harness_procs import descendants

from musicinterp.run import RunPaths
from musicinterp.store import completed_clips

pytestmark = pytest.mark.integration

N_CLIPS = 24  # 12 a shard: long enough to be caught mid-way
DOWN_S = 10  # how long the server stays dead (well under the parent's 90 s zombie rule)
FINISH_S = 300  # after the restart, for the run to end (or its parent to give up on a shard)
CONFIG = {
    "name": "it-restart",
    "model": {"source": "offline", "name": "tiny", "seed": 0},
    "slice": {
        "name": "restart",
        "sources": [{"kind": "synthetic", "n_pieces": N_CLIPS, "duration_s": 3.0, "seed": 1}],
        "n_shards": 2,
    },
    "annotate": False,
    "analyze": False,
}


def _kill_server(stack) -> None:
    """SIGKILL the server and everything below it: a machine lost, no chance to shut down cleanly."""
    name, proc = [p for p in stack.procs if p[0].startswith("server")][-1]
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)
    stack.procs.remove((name, proc))


def _run_id(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        if line.startswith("flow run: "):
            return line.removeprefix("flow run: ").strip()
    return None


def _wait_for(what: str, check, deadline_s: float, stack, every_s: float = 1.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {deadline_s:.0f} s\n{stack.diagnostics()}")


def test_server_restarted_mid_run__shards_finish_or_rerun_and_the_store_is_whole(stack, it_tmp):
    import httpx

    root = it_tmp / f"restart-{stack.backend}"
    spec, config, clean, out, prepared = planned_run(root, CONFIG)

    # submitted by a user who follows the run (--wait): it must say that the server went away, and pick the
    # run up again once it is back
    follower = stack.start("follow", "submit", str(config), "--out", out, "--wait")
    follow_log = stack.logs / "follow.log"
    inprocess = None
    try:
        run_id = _wait_for("the submitted run's id", lambda: _run_id(follow_log), 120, stack)
        n = prepared.n_clips

        def some_but_not_all(store: str):
            def check() -> bool:
                try:
                    return 0 < len(completed_clips(store)) < n
                except Exception:  # noqa: BLE001 - the store is being created
                    return False

            return check

        _wait_for("a first clip captured", some_but_not_all(prepared.paths.store), 300, stack, every_s=0.2)
        killed_at = time.monotonic()
        _kill_server(stack)
        before = len(completed_clips(prepared.paths.store))

        # while it is down: status says so at once, naming the URL and what to do (exit 2: nothing ran)
        t0 = time.monotonic()
        down = stack.cli("status", run_id, timeout=60)
        assert down.returncode == 2, down.stdout + down.stderr
        assert "does not answer" in down.stderr and stack.api_url in down.stderr, down.stderr
        assert time.monotonic() - t0 < 30
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - t0)))
        during = len(completed_clips(prepared.paths.store))

        # the same database, the same port
        stack.start_server("server-restarted")
        down_s = time.monotonic() - killed_at
        assert httpx.get(f"{stack.api_url}/flow_runs/{run_id}", timeout=10).status_code == 200

        # the run ends (completed, or failed naming shards that a rerun can redo)
        def final() -> dict | None:
            st = stack.cli("status", run_id, "--json", timeout=120)
            if st.returncode != 0:
                return None
            info = cli_json(st)
            return info if info["benchmark"]["final"] else None

        info = _wait_for("the run to end after the restart", final, FINISH_S, stack, every_s=5)
        print(
            f"clips complete: {before} at the kill, {during} after {DOWN_S} s dead; server back after {down_s:.0f} s; "
            f"run ended {info['benchmark']['state']}: {info['benchmark']['message']}"
        )
        if not info["benchmark"]["completed"]:
            assert info["failed_shards"] and not info["cannot_rerun"], info
            rerun = stack.cli("rerun", run_id, "--wait", "--json", timeout=400)
            assert rerun.returncode == 0, f"{rerun.stdout}\n{rerun.stderr}\n{stack.diagnostics()}"

        # the follower said the server was gone, then followed the run to its end (exit 1 if it failed)
        follower.wait(120)
        said = follow_log.read_text()
        assert follower.returncode == (0 if info["benchmark"]["completed"] else 1), said
        assert "unreachable" in said and stack.api_url in said, said
        assert "answers again" in said, said

        # the same config run in-process (`musicinterp run`), reporting to the server, which is killed mid-run and
        # started again: it says so within seconds (it once said nothing for 6.5 min, then "run did not complete:
        # no state") and ends complete, or saying to run the same command, which completes the store
        inprocess_out = str(root / "inprocess")
        inprocess = stack.start("run-inprocess", "run", str(config), "--out", inprocess_out)
        store = RunPaths.for_spec(spec, inprocess_out).store
        _wait_for("musicinterp run's first clip", some_but_not_all(store), 300, stack, every_s=0.2)
        _kill_server(stack)
        time.sleep(DOWN_S)
        stack.start_server("server-restarted-2")
        inprocess.wait(FINISH_S)
        said = (stack.logs / "run-inprocess.log").read_text()
        print(f"musicinterp run: exit {inprocess.returncode}")
        assert "does not answer" in said and stack.api_url in said, said
        if inprocess.returncode != 0:
            assert inprocess.returncode == 1 and "run the same command" in said, said
            again = stack.cli("run", str(config), "--out", inprocess_out, timeout=FINISH_S)
            assert again.returncode == 0, again.stdout + again.stderr
        else:
            assert "answers again" in said, said
    finally:
        for proc in (follower, inprocess):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    for store in (prepared.paths.store, RunPaths.for_spec(spec, inprocess_out).store):
        a, b = xr.open_zarr(clean.store, consolidated=False), xr.open_zarr(store, consolidated=False)
        assert bool(b["complete"].all()), store
        for var in ("resid", "codes", "complete", "sha256", "n_frames"):
            np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=f"{store}: {var}")
