"""``musicinterp deploy``: the work pools (from deployments/pools/), their concurrency limits, and the
deployments of deployments/prefect.yaml whose flow exists in this checkout, on the configured server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from musicinterp_cli.common import (
    CONTROL_POOL,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    GPU_POOL,
    POOL_TYPES,
    REPO,
    console,
    error,
    prefect_command,
    prefect_env,
)
from musicinterp_cli.server import server_url, ui_url

DEPLOYMENTS_DIR = REPO / "deployments"
PREFECT_FILE = DEPLOYMENTS_DIR / "prefect.yaml"
POOLS_DIR = DEPLOYMENTS_DIR / "pools"


def _pool_template(kind: str) -> dict[str, Any]:
    path = POOLS_DIR / f"{kind}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"work-pool template {str(path)!r} is missing; pool types: {', '.join(POOL_TYPES)}"
        ) from e


def ensure_pool(client, name: str, kind: str, limit: int | None, description: str) -> str:
    """Create the pool from deployments/pools/{kind}.json, or update its template and limit."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    template = _pool_template(kind)
    try:
        existing = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(
            WorkPoolCreate(
                name=name, type=kind, base_job_template=template, concurrency_limit=limit, description=description
            )
        )
        return "created"
    if existing.type != kind:
        raise ValueError(
            f"work pool {name!r} exists with type {existing.type!r}, not {kind!r}; a pool's type cannot "
            f"change: delete it first (prefect work-pool delete {name}) or deploy with "
            f"--gpu-pool-type {existing.type}"
        )
    client.update_work_pool(
        name, WorkPoolUpdate(base_job_template=template, concurrency_limit=limit, description=description)
    )
    return "updated"


def deployable(prefect_file: Path = PREFECT_FILE) -> tuple[list[dict[str, Any]], list[str]]:
    """The deployments of prefect.yaml whose flow exists in this checkout, and why the others are left out."""
    config = yaml.safe_load(prefect_file.read_text())
    ok, skipped = [], []
    for d in config.get("deployments", []):
        module, func = d["entrypoint"].rsplit(":", 1)
        path = REPO / module
        if not path.exists():
            skipped.append(f"{d['name']}: {module} does not exist in this checkout")
        elif f"def {func}(" not in path.read_text():
            skipped.append(f"{d['name']}: {module} defines no flow {func!r}")
        else:
            ok.append(d)
    return ok, skipped


def _flow_name_of(d: dict[str, Any]) -> str:
    """The flow's name (``@flow(name=...)``) of a prefect.yaml deployment, read without importing it."""
    import ast

    module, func = d["entrypoint"].rsplit(":", 1)
    tree = ast.parse((REPO / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == func:
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call):
                    for kw in dec.keywords:
                        if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                            return str(kw.value.value)
            return func.replace("_", "-")
    return func.replace("_", "-")


def cmd_deploy(args: argparse.Namespace) -> int:
    import subprocess

    from prefect.client.orchestration import get_client

    api = server_url()
    if api is None:
        return EXIT_USAGE
    if args.control_slots < 2 or args.gpu_slots < 1:
        return error(
            "--control-slots must be at least 2 (a benchmark parent waits for its analysis run in the same "
            "pool) and --gpu-slots at least 1"
        )
    pools = [
        (CONTROL_POOL, "process", args.control_slots, "musicinterp: benchmark parents, reruns, analysis (CPU)"),
        (
            GPU_POOL,
            args.gpu_pool_type,
            args.gpu_slots,
            f"musicinterp: benchmark shards (capture + annotation); at most {args.gpu_slots} at once (GPU slots)",
        ),
    ]
    try:
        with get_client(sync_client=True) as client:
            for name, kind, limit, desc in pools:
                what = ensure_pool(client, name, kind, limit, desc)
                console.print(f"work pool {name!r}: {what} ({kind}, concurrency limit {limit})")
    except (ValueError, FileNotFoundError) as e:
        return error(e)
    todo, skipped = deployable()
    for why in skipped:
        console.print(f"[yellow]deployment left out: {why}[/yellow]")
    cmd = [*prefect_command(), "deploy", "--prefect-file", str(PREFECT_FILE)]
    for d in todo:
        cmd += ["--name", d["name"]]
    proc = subprocess.run(
        cmd, cwd=REPO, env=prefect_env(api, PREFECT_CLI_PROMPT="false"), capture_output=True, text=True
    )
    if proc.returncode != 0:
        console.print(proc.stdout[-4000:] + proc.stderr[-4000:])
        return error(f"prefect deploy failed (exit {proc.returncode}): {' '.join(cmd)}", EXIT_FAILED)
    table = Table("deployment", "work pool", "entrypoint")
    with get_client(sync_client=True) as client:
        for d in todo:
            dep = client.read_deployment_by_name(f"{_flow_name_of(d)}/{d['name']}")
            table.add_row(f"{_flow_name_of(d)}/{d['name']}", dep.work_pool_name or "", d["entrypoint"])
    Console().print(table)
    console.print(
        f"UI: {ui_url(api)}/deployments\nStart the workers: musicinterp worker --pool {CONTROL_POOL}  and  "
        f"musicinterp worker --pool {GPU_POOL}"
    )
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``deploy``."""
    p = sub.add_parser(
        "deploy",
        help="create the work pools, their concurrency limits and the deployments "
        "of deployments/prefect.yaml on the server",
    )
    p.add_argument(
        "--gpu-pool-type",
        choices=POOL_TYPES,
        default="process",
        help=f"type of the {GPU_POOL!r} pool (default process; docker or kubernetes ask for a GPU)",
    )
    p.add_argument(
        "--gpu-slots",
        type=int,
        default=2,
        help="shards running at once on the GPU pool (its concurrency limit; default 2)",
    )
    p.add_argument(
        "--control-slots",
        type=int,
        default=4,
        help=f"benchmark parents, reruns and analyses at once on {CONTROL_POOL!r} (default 4)",
    )
    p.set_defaults(func=cmd_deploy)
