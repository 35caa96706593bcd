"""The integration harness leaves nothing running: not when it stops its stack, and not when the test process
itself is SIGKILLed (no ``finally``, no ``atexit`` runs then). The processes here stand in for a server and a
worker: each starts a grandchild in a session of its own, as ``musicinterp worker`` starts Prefect's worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness_procs import Launcher, alive

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
GONE_S = 10.0  # the kernel's parent-death signal is at once; the reaper polls every 0.5 s

# a process that starts a grandchild in a session of its own, prints its pid and sleeps
SPAWNER = (
    "import subprocess, sys, time; "
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
    "print(p.pid, flush=True); time.sleep(600)"
)

# the test process stand-in: starts the harness's launcher and two spawners, writes their pids, sleeps
CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from harness_procs import Launcher

out, spawner = Path(sys.argv[2]), sys.argv[3]
launcher = Launcher()
procs = [launcher.start(f"p{i}", [sys.executable, "-c", spawner], out / f"p{i}.log") for i in range(2)]
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not all((out / f"p{i}.log").read_text().strip() for i in range(2)):
    time.sleep(0.1)
grandchildren = [int((out / f"p{i}.log").read_text()) for i in range(2)]
launcher.sync()
pids = {"launched": [p.pid for p in procs], "grandchildren": grandchildren, "reaper": launcher._reaper.pid}
(out / "pids.json").write_text(json.dumps(pids))
time.sleep(600)
"""


def _wait_gone(pids: list[int], within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_harness__processes_die_when_the_test_process_is_sigkilled(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(HERE), str(tmp_path), SPAWNER], start_new_session=True)
    pids: dict = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (tmp_path / "pids.json").exists():
            assert child.poll() is None, f"the stand-in exited with {child.returncode}"
            time.sleep(0.1)
        pids = json.loads((tmp_path / "pids.json").read_text())
        everyone = [*pids["launched"], *pids["grandchildren"]]
        assert all(alive(p) for p in [*everyone, pids["reaper"]])
        os.kill(child.pid, signal.SIGKILL)  # the test process dies; nothing of its own runs after this
        child.wait(10)
        t0 = time.monotonic()
        left = _wait_gone(everyone, GONE_S)
        assert not left, f"still running {GONE_S:.0f} s after the test process was killed: {left}"
        assert _wait_gone([pids["reaper"]], GONE_S) == []  # the reaper leaves once its work is done
        print(f"all gone {time.monotonic() - t0:.1f} s after the SIGKILL")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        _kill([p for p in [*pids.get("launched", []), *pids.get("grandchildren", []), pids.get("reaper", 0)] if p])


def test_harness__stop_stops_the_processes_and_what_they_started(tmp_path):
    launcher = Launcher()
    procs = [launcher.start(f"p{i}", [sys.executable, "-c", SPAWNER], tmp_path / f"p{i}.log") for i in range(2)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all((tmp_path / f"p{i}.log").read_text().strip() for i in range(2)):
        time.sleep(0.1)
    grandchildren = [int((tmp_path / f"p{i}.log").read_text()) for i in range(2)]
    reaper = launcher._reaper
    try:
        assert all(alive(p) for p in grandchildren)
        launcher.stop()  # each process group gets SIGINT; the grandchildren, in sessions of their own, do not
        assert all(p.poll() is not None for p in procs)
        assert _wait_gone(grandchildren, GONE_S) == []  # the reaper took them
        assert reaper.poll() is not None
    finally:
        _kill([p for p in grandchildren if alive(p)])
