"""``musicinterp worker``: a Prefect worker for one work pool, pointed at the configured server; the flow
runs it starts import the code of this checkout (MUSICINTERP_HOME)."""

from __future__ import annotations

import argparse
import os
import sys

from cli.common import (
    CONTROL_POOL,
    EXIT_OK,
    EXIT_USAGE,
    GPU_POOL,
    POOL_TYPES,
    REPO,
    console,
    prefect_command,
    prefect_env,
)
from cli.server import server_url


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
    console.print(f"worker for pool {args.pool!r} on {api}; flow runs import the code in {env['MUSICINTERP_HOME']}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)  # the worker replaces this process: Ctrl-C and SIGTERM reach it
    return EXIT_OK  # not reached


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``worker``."""
    p = sub.add_parser("worker", help="start a Prefect worker for a work pool (it runs the flow runs)")
    p.add_argument("--pool", required=True, help=f"work pool: {CONTROL_POOL} or {GPU_POOL}")
    p.add_argument("--name", help="worker name (default: Prefect's)")
    p.add_argument("--limit", type=int, help="flow runs this worker runs at once (default: no limit but the pool's)")
    p.add_argument("--type", choices=POOL_TYPES, help="worker type (default: the pool's)")
    p.set_defaults(func=cmd_worker)
