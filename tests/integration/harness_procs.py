"""The integration harness's process launcher: every process it starts dies with the test process.

A pytest killed from outside (SIGKILL, a CI timeout) runs no ``finally`` and no ``atexit``, so a Prefect
server and its workers started for it would keep running. Two guards, both Linux:

* each started process gets ``PR_SET_PDEATHSIG`` = SIGKILL (``prctl`` through ctypes, in the child before
  it executes): the kernel kills it the moment the test process dies (strictly: the thread that started
  it, so start them from the main thread, as the fixtures do);
* a reaper process (this file run as a script, in a session of its own so that a signal to the test's
  process group spares it) is told each started process's pid. It keeps a list of them and of every
  process below them (Prefect's worker runs in a process group of its own, and its flow runs below it;
  the server runs uvicorn), each with its start time, so that a reused pid is never hit. When its stdin
  closes (the test process ended, however), it SIGKILLs whatever on the list still lives, including
  processes left orphaned by a parent that died first, and exits.

``Launcher.stop`` stops everything gracefully first (SIGINT, SIGTERM, SIGKILL to each process group);
the reaper then finds nothing left. Tested by ``test_harness.py``.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
REAPER_POLL_S = 0.5  # how often the reaper lists the processes below the started ones
REAPER_KILL_S = 10.0  # how long the reaper keeps killing (a parent may start a child while it dies)


def die_with_parent() -> None:
    """``preexec_fn``: the kernel sends this process SIGKILL when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # a zombie: already dead, waiting for its parent to reap it
        return None
    return int(fields[1]), fields[19]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    return _stat(pid) is not None


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        st = _stat(int(entry.name))
        if st is not None:
            children.setdefault(st[0], []).append(int(entry.name))
    return children


def descendants(*pids: int) -> list[int]:
    """Every live process below ``pids`` (from /proc)."""
    children = _children()
    out, todo = [], list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _track(tracked: dict[int, str]) -> list[int]:
    """Add every process below the tracked ones to them; return the tracked ones still alive (not a reused pid)."""
    alive = [pid for pid, start in tracked.items() if (st := _stat(pid)) is not None and st[1] == start]
    for child in descendants(*alive):
        st = _stat(child)
        if st is not None:  # below a live tracked process: ours, whatever the pid was before
            tracked[child] = st[1]
            alive.append(child)
    return alive


def _reap() -> None:
    """The reaper's loop: pids arrive on stdin, one a line; at EOF, kill everything tracked."""
    tracked: dict[int, str] = {}  # pid -> its start time
    buffer = b""
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], REAPER_POLL_S)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line == b"scan":  # Launcher.sync: list everything below the started ones now, then say so
                    _track(tracked)
                    os.write(sys.stdout.fileno(), b"ok\n")
                    continue
                st = _stat(int(line))
                if st is not None:
                    tracked[int(line)] = st[1]
        _track(tracked)
    deadline = time.monotonic() + REAPER_KILL_S
    while time.monotonic() < deadline:
        alive = _track(tracked)
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(REAPER_POLL_S)


class Launcher:
    """Starts processes that die with this one (see the module's docstring) and stops them on request."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._reaper = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start(self, name: str, argv: Sequence[str], log: Path, **popen_kw) -> subprocess.Popen:
        """``argv`` in a process group of its own (stopping it stops its children), output to ``log``."""
        with open(log, "w") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
                **popen_kw,
            )
        self.procs.append((name, proc))
        self._tell(str(proc.pid))
        return proc

    def _tell(self, line: str) -> None:
        assert self._reaper.stdin is not None
        self._reaper.stdin.write(f"{line}\n".encode())
        self._reaper.stdin.flush()

    def sync(self, timeout_s: float = 30.0) -> None:
        """Return once the reaper has listed every process now running below the started ones (it lists them
        every ``REAPER_POLL_S`` anyway; this closes the gap for a process started a moment ago)."""
        self._tell("scan")
        assert self._reaper.stdout is not None
        ready, _, _ = select.select([self._reaper.stdout], [], [], timeout_s)
        if not ready or self._reaper.stdout.readline() != b"ok\n":
            raise RuntimeError(f"the harness's reaper (pid {self._reaper.pid}) did not answer in {timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop every started process, the last started first (workers before the server); then the reaper
        kills whatever was left below them and exits."""
        if self._reaper.poll() is None and self.procs:
            self.sync()  # what the processes started is listed before they are stopped and it is orphaned
        for _name, proc in reversed(self.procs):
            stop_group(proc)
        self.procs.clear()
        if self._reaper.stdin is not None and not self._reaper.stdin.closed:
            self._reaper.stdin.close()
            try:
                self._reaper.wait(REAPER_KILL_S + 5)
            except subprocess.TimeoutExpired:
                self._reaper.kill()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGINT (a Prefect worker's graceful stop), then SIGTERM, then SIGKILL to the process group ``proc`` leads."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)  # the group this launcher started (start_new_session), nothing else
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


if __name__ == "__main__":
    _reap()
