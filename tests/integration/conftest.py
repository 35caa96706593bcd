"""A real Prefect stack for the integration tests: server on loopback, pools, deployments, two workers.

One stack per database backend, session-scoped (``stack`` is parametrized over "sqlite" and
"postgres"): ``musicinterp server`` on 127.0.0.1 and a free port with a private PREFECT_HOME, then
``musicinterp deploy`` from deployments/, then ``musicinterp worker`` on each pool (two process
workers: the control pool runs the benchmark parents and reruns, the GPU pool the shards).
Everything started here is stopped in ``finally`` (and by atexit if the interpreter exits first),
also when a test fails; its logs go to the test's tmp folder and their tails into failure messages.
A pytest killed from outside (SIGKILL) leaves nothing running either: the processes are started by
``harness_procs.Launcher`` (parent-death signal, and a reaper that kills everything below them).

PostgreSQL: ``.ci/run`` installs Debian's postgresql, starts the cluster and exports
MUSICINTERP_TEST_PG_URL (a role that may create databases); each session creates a fresh database
and drops it at the end. Without a reachable PostgreSQL the postgres tests skip, saying why.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness_procs import Launcher

from musicinterp_cli.common import prefect_env

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PG_URL = "postgresql+asyncpg://musicinterp:musicinterp@127.0.0.1:5432/postgres"
SERVER_START_TIMEOUT_S = 180


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: starts a real Prefect server, workers and deployments")


def cli_prefix() -> list[str]:
    """The ``musicinterp`` console script of this interpreter; ``python -m musicinterp_cli`` where it is not
    installed."""
    exe = Path(sys.executable).parent / "musicinterp"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "musicinterp_cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class Stack:
    backend: str
    api_url: str
    env: dict[str, str]
    logs: Path
    port: int
    launcher: Launcher = field(default_factory=Launcher)
    outputs: list[str] = field(default_factory=list)  # everything the CLI printed, for the wording checks

    @property
    def procs(self) -> list[tuple[str, subprocess.Popen]]:
        return self.launcher.procs

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """``musicinterp ARGS`` in its own process group (stopping it stops its children), dying with this process."""
        return self.launcher.start(name, [*cli_prefix(), *args], self.logs / f"{name}.log", cwd=REPO, env=self.env)

    def start_server(self, name: str = "server") -> subprocess.Popen:
        """``musicinterp server`` on the stack's port and database; returns once it answers."""
        server = self.start(name, "server", "--host", "127.0.0.1", "--port", str(self.port))
        _wait_healthy(self.api_url, server, self.logs / f"{name}.log")
        return server

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*cli_prefix(), *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        self.outputs.append(proc.stdout + proc.stderr)
        return proc

    def diagnostics(self) -> str:
        return "\n".join(f"--- {name}.log (tail) ---\n{_tail(self.logs / f'{name}.log')}" for name, _ in self.procs)

    def stop(self) -> None:
        # workers first (SIGINT is their graceful stop), the server last
        self.launcher.stop()


def _wait_healthy(api_url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"prefect server did not answer within {SERVER_START_TIMEOUT_S} s:\n{_tail(log)}")


def _pg_admin(url: str, sql: str) -> None:
    """Run one statement on the admin database of ``url`` (sqlalchemy URL with +asyncpg)."""
    import asyncio

    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")

    async def go():
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def _fresh_pg_database(tmp: Path) -> tuple[str, str]:
    """A new, empty database on the PostgreSQL that .ci/run started: (its URL, its name)."""
    admin = os.environ.get("MUSICINTERP_TEST_PG_URL", DEFAULT_PG_URL)
    name = f"musicinterp_it_{uuid.uuid4().hex[:10]}"
    try:
        _pg_admin(admin, f'CREATE DATABASE "{name}"')
    except ImportError as e:
        pytest.skip(f"asyncpg is not installed ({e})")
    except Exception as e:  # noqa: BLE001 - any connection failure means: no PostgreSQL to test against
        if os.environ.get("CI"):
            raise RuntimeError(
                f"CI: PostgreSQL at {admin.split('@')[-1]} is not usable; .ci/run should have "
                f"started it: {type(e).__name__}: {e}"
            ) from e
        pytest.skip(
            f"PostgreSQL not reachable at {admin.split('@')[-1]} ({type(e).__name__}: {e}); .ci/run installs "
            "and starts it (or set MUSICINTERP_TEST_PG_URL)"
        )
    return admin.rsplit("/", 1)[0] + f"/{name}", name


def _drop_pg_database(name: str) -> None:
    admin = os.environ.get("MUSICINTERP_TEST_PG_URL", DEFAULT_PG_URL)
    try:
        _pg_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as e:  # noqa: BLE001 - cleanup must not mask the test's own result
        print(f"could not drop test database {name}: {e}", file=sys.stderr)


@pytest.fixture(scope="session")
def it_tmp():
    """A folder of this session's own: pytest's numbered tmp folders are pruned by any other pytest
    session of the same user (keeping the last three), which would delete stores under a running
    stack. Removed at the end unless MUSICINTERP_KEEP_IT_TMP is set."""
    path = Path(tempfile.mkdtemp(prefix="musicinterp-it-"))
    yield path
    if not os.environ.get("MUSICINTERP_KEEP_IT_TMP"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(request, it_tmp):
    backend = request.param
    tmp = it_tmp / f"stack-{backend}"
    tmp.mkdir()
    logs = tmp / "logs"
    logs.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # a clean environment: no Prefect setting of the developer's (or of the flow tests' harness) leaks in;
    # then the command line's own Prefect environment (API URL, telemetry off) and the test's settings
    env = prefect_env(
        api_url,
        base={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_HEARTBEAT_SECONDS="10",
        # flow runs send a heartbeat every 30 s (Prefect's least): a shard whose process was killed is taken
        # for dead by its parent after three missed ones (flows/benchmark.py's zombie rule)
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
        PREFECT_LOGGING_LEVEL="INFO",
        MUSICINTERP_HOME=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    pg_db = None
    if backend == "postgres":
        url, pg_db = _fresh_pg_database(tmp)
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url
    st = Stack(backend=backend, api_url=api_url, env=env, logs=logs, port=port)

    def cleanup():
        st.stop()
        if pg_db:
            _drop_pg_database(pg_db)

    atexit.register(cleanup)
    try:
        st.start_server()
        deploy = st.cli("deploy", "--gpu-slots", "2", timeout=300)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        st.start("worker-control", "worker", "--pool", "musicinterp", "--name", f"control-{backend}")
        st.start("worker-gpu", "worker", "--pool", "musicinterp-gpu", "--name", f"gpu-{backend}")
        yield st
    finally:
        cleanup()
        atexit.unregister(cleanup)
