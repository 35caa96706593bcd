"""``musicinterp worker``: a Prefect worker for one work pool, pointed at the configured server; the flow
runs it starts import the code of this checkout (MUSICINTERP_HOME).

The worker runs as a child in its own session, so that SIGTERM and Ctrl-C stop it and the flow runs it started
together: the signal is forwarded to the child's whole process group, which gets WORKER_GRACE_S to exit before
it is killed (Prefect's own worker can take more than half a minute to honour SIGTERM)."""

from __future__ import annotations

import argparse
import signal
import subprocess

from musicinterp_cli.common import (
    CONTROL_POOL,
    EXIT_USAGE,
    GPU_POOL,
    POOL_TYPES,
    REPO,
    console,
    prefect_command,
    prefect_env,
    stop_process_group,
)
from musicinterp_cli.server import server_url

WORKER_GRACE_S = 8.0  # how long the worker's process group has to exit after the forwarded signal


def cmd_worker(args: argparse.Namespace) -> int:
    api = server_url()
    if api is None:
        return EXIT_USAGE
    env = prefect_env(api)
    env.setdefault("MUSICINTERP_HOME", str(REPO))  # where the deployments' pull step moves the flow run
    cmd = [*prefect_command(), "worker", "start", "--pool", args.pool]
    if args.name:
        cmd += ["--name", args.name]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.type:
        cmd += ["--type", args.type]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    console.print(
        f"worker for pool {args.pool!r} on {api} (pid {proc.pid}); flow runs import the code in "
        f"{env['MUSICINTERP_HOME']}"
    )
    try:
        return proc.wait()
    except KeyboardInterrupt as e:  # SIGTERM or Ctrl-C (cli.main turns SIGTERM into this): pass it on
        signum = getattr(e, "signum", signal.SIGINT)
        console.print(f"stopping the worker (pid {proc.pid}) and its flow runs ...")
        stop_process_group(proc, signum, WORKER_GRACE_S)
        raise


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``worker``."""
    p = sub.add_parser("worker", help="start a Prefect worker for a work pool (it runs the flow runs)")
    p.add_argument("--pool", required=True, help=f"work pool: {CONTROL_POOL} or {GPU_POOL}")
    p.add_argument("--name", help="worker name (default: Prefect's)")
    p.add_argument("--limit", type=int, help="flow runs this worker runs at once (default: no limit but the pool's)")
    p.add_argument("--type", choices=POOL_TYPES, help="worker type (default: the pool's)")
    p.set_defaults(func=cmd_worker)
