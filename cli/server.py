"""The Prefect server: which one this shell points at (PREFECT_API_URL), whether it answers, its UI,
and ``musicinterp server``, which starts a local one (127.0.0.1, SQLite) when none is configured.

Every command but ``server`` talks to the server that PREFECT_API_URL names (:func:`server_url`) and
refuses to start a throwaway in-process one: work submitted there would be lost when the command exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from musicinterp_cli.common import (
    CONTROL_POOL,
    EXIT_FAILED,
    EXIT_OK,
    GPU_POOL,
    console,
    error,
    prefect_command,
    prefect_env,
    stop_process_group,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
SERVER_STARTUP_S = 300.0  # a loaded machine can take minutes to migrate the database and start
SERVER_GRACE_S = 10.0  # after SIGTERM / Ctrl-C, how long the server has before it is killed
HEALTH_POLL_S = 0.5


class NoServer(RuntimeError):
    """No Prefect server is configured, or the configured one does not answer."""


def _prefect_settings():
    from prefect.settings import get_current_settings

    return get_current_settings()


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    url = _prefect_settings().api.url
    return str(url).rstrip("/") if url else None


def _healthcheck(url: str) -> Exception | None:
    import httpx

    try:
        r = httpx.get(f"{url}/health", timeout=5)
        r.raise_for_status()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "does not answer"; the caller says so
        return e


def require_server() -> str:
    """The configured server's API URL, checked to answer; never an ephemeral server."""
    url = configured_api_url()
    if not url:
        raise NoServer(
            "no Prefect server is configured (PREFECT_API_URL is not set). Start one with `musicinterp server` "
            f"and point this shell at it: export PREFECT_API_URL=http://{DEFAULT_HOST}:{DEFAULT_PORT}/api "
            "(or set PREFECT_API_URL to your team's server)"
        )
    err = _healthcheck(url)
    if err is not None:
        raise NoServer(
            f"the Prefect server at PREFECT_API_URL={url} does not answer ({type(err).__name__}: {err}); "
            "start it (`musicinterp server`) or fix PREFECT_API_URL"
        )
    return url


def server_url() -> str | None:
    """The configured server's API URL when it answers; otherwise say why and return None (the caller
    exits with EXIT_USAGE)."""
    try:
        return require_server()
    except NoServer as e:
        console.print(f"[red]{e}[/red]")
        return None


def ui_url(api_url: str) -> str:
    ui = _prefect_settings().ui_url
    return str(ui).rstrip("/") if ui else api_url.removesuffix("/api")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def database_description() -> str:
    """Where the server keeps its state, in words (the password never printed)."""
    url = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_API_DATABASE_CONNECTION_URL"
    )
    if url:
        p = urlparse(url)
        netloc = p.hostname or ""
        if p.port:
            netloc += f":{p.port}"
        return f"{p.scheme.split('+')[0]} at {netloc}{p.path} (PREFECT_SERVER_DATABASE_CONNECTION_URL)"
    home = Path(str(_prefect_settings().home)).expanduser()
    return f"SQLite at {home / 'prefect.db'} (set PREFECT_SERVER_DATABASE_CONNECTION_URL for PostgreSQL)"


def cmd_server(args: argparse.Namespace) -> int:
    api = f"http://{args.host}:{args.port}/api"
    configured = configured_api_url()
    if configured and not args.check and _healthcheck(configured) is None:
        console.print(
            f"A Prefect server is already configured and answering: PREFECT_API_URL={configured}\n"
            f"UI: {ui_url(configured)}\nNothing to start. Next: musicinterp deploy"
        )
        return EXIT_OK
    if args.check:
        if configured and _healthcheck(configured) is None:
            console.print(f"PREFECT_API_URL={configured} answers (UI: {ui_url(configured)})")
            return EXIT_OK
        problem = f"PREFECT_API_URL={configured} does not answer" if configured else "PREFECT_API_URL is not set"
        console.print(
            f"[red]{problem}[/red]; start a server with `musicinterp server`, then export PREFECT_API_URL={api}"
        )
        return EXIT_FAILED
    if configured and configured != api:
        console.print(
            f"[red]PREFECT_API_URL points at {configured}, which does not answer.[/red] Start that server, "
            f"or unset PREFECT_API_URL to start a local one here ({api})."
        )
        return EXIT_FAILED
    if not _is_loopback(args.host):
        console.print(
            f"[yellow]binding to {args.host}: the server has no authentication; anyone who reaches "
            "this address can run flows. Prefer a reverse proxy with auth.[/yellow]"
        )
    cmd = [*prefect_command(), "server", "start", "--host", args.host, "--port", str(args.port)]
    proc = subprocess.Popen(cmd, env=prefect_env(api), start_new_session=True)
    try:
        return _announce_and_wait(proc, args, api)
    except KeyboardInterrupt as e:  # SIGTERM or Ctrl-C: stop the server (its own process group) too
        stop_process_group(proc, getattr(e, "signum", signal.SIGINT), SERVER_GRACE_S)
        raise


def _announce_and_wait(proc: subprocess.Popen, args: argparse.Namespace, api: str) -> int:
    """Say where the server is once it answers (not before), then wait for it to end."""
    console.print(f"starting a Prefect server on http://{args.host}:{args.port} (pid {proc.pid}) ...")
    deadline = time.monotonic() + SERVER_STARTUP_S
    while _healthcheck(api) is not None:
        if proc.poll() is not None:
            return error(f"the Prefect server exited with code {proc.returncode} before it answered", EXIT_FAILED)
        if time.monotonic() > deadline:
            stop_process_group(proc, signal.SIGTERM, SERVER_GRACE_S)
            return error(f"the Prefect server did not answer within {SERVER_STARTUP_S:g} s; stopped it", EXIT_FAILED)
        time.sleep(HEALTH_POLL_S)
    console.print(
        f"Prefect server on http://{args.host}:{args.port} (UI and API), database: {database_description()}\n"
        f"In every shell that submits or runs work: export PREFECT_API_URL={api}\n"
        f"Then: musicinterp deploy; musicinterp worker --pool {CONTROL_POOL}; "
        f"musicinterp worker --pool {GPU_POOL}; musicinterp submit configs/demo.yaml"
    )
    return proc.wait()


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``server``."""
    p = sub.add_parser(
        "server", help="start a local Prefect server (127.0.0.1, SQLite), or say which one PREFECT_API_URL points at"
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--check", action="store_true", help="only check that the configured server answers")
    p.set_defaults(func=cmd_server)
