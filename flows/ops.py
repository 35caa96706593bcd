"""Operating the deployed flows: ``musicinterp server | deploy | worker | submit | status | rerun``.

The local picture (one machine, see deployments/README.md):

    musicinterp server                          # Prefect server on 127.0.0.1:4200, SQLite in $PREFECT_HOME
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    musicinterp deploy                          # work pools, concurrency limits, deployments
    musicinterp worker --pool musicinterp       # the control pool: benchmark parents, reruns, analysis
    musicinterp worker --pool musicinterp-gpu   # the shards (capture + annotation)
    musicinterp submit configs/demo.yaml        # prints the run's URL
    musicinterp status RUN                      # shard states
    musicinterp rerun RUN                       # reruns exactly the failed shards, into the same store

Every command but ``server`` talks to the server that PREFECT_API_URL names and refuses to start a
throwaway in-process one: work submitted there would be lost when the command exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS_DIR = REPO / "deployments"
PREFECT_FILE = DEPLOYMENTS_DIR / "prefect.yaml"
POOLS_DIR = DEPLOYMENTS_DIR / "pools"
CONTROL_POOL = "musicinterp"
GPU_POOL = "musicinterp-gpu"
POOL_TYPES = ("process", "docker", "kubernetes")
BENCHMARK_DEPLOYMENT = "benchmark/benchmark"
RERUN_DEPLOYMENT = "rerun-failed-shards/rerun-failed-shards"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
POLL_S = 2.0

console = Console(stderr=True, soft_wrap=True)


class NoServer(RuntimeError):
    """No Prefect server is configured, or the configured one does not answer."""


# --- the server ------------------------------------------------------------------------------------


def _prefect() -> list[str]:
    """The Prefect CLI of this interpreter (the venv's, whatever PATH says)."""
    return [sys.executable, "-m", "prefect"]


def _settings():
    from prefect.settings import get_current_settings

    return get_current_settings()


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    url = _settings().api.url
    return str(url).rstrip("/") if url else None


def _healthcheck(url: str) -> Exception | None:
    import httpx

    try:
        r = httpx.get(f"{url}/health", timeout=5)
        r.raise_for_status()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "does not answer"; the caller says so
        return e


def _server_url() -> str | None:
    """The configured server's API URL when it answers; otherwise say why and return None (exit 2)."""
    try:
        return require_server()
    except NoServer as e:
        console.print(f"[red]{e}[/red]")
        return None


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


def ui_url(api_url: str) -> str:
    ui = _settings().ui_url
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
    home = Path(str(_settings().home)).expanduser()
    return f"SQLite at {home / 'prefect.db'} (set PREFECT_SERVER_DATABASE_CONNECTION_URL for PostgreSQL)"


def cmd_server(args: argparse.Namespace) -> int:
    api = f"http://{args.host}:{args.port}/api"
    configured = configured_api_url()
    if configured and not args.check and _healthcheck(configured) is None:
        console.print(
            f"A Prefect server is already configured and answering: PREFECT_API_URL={configured}\n"
            f"UI: {ui_url(configured)}\nNothing to start. Next: musicinterp deploy"
        )
        return 0
    if args.check:
        if configured and _healthcheck(configured) is None:
            console.print(f"PREFECT_API_URL={configured} answers (UI: {ui_url(configured)})")
            return 0
        problem = f"PREFECT_API_URL={configured} does not answer" if configured else "PREFECT_API_URL is not set"
        console.print(
            f"[red]{problem}[/red]; start a server with `musicinterp server`, then export PREFECT_API_URL={api}"
        )
        return 1
    if configured and configured != api:
        console.print(
            f"[red]PREFECT_API_URL points at {configured}, which does not answer.[/red] Start that server, "
            f"or unset PREFECT_API_URL to start a local one here ({api})."
        )
        return 1
    if not _is_loopback(args.host):
        console.print(
            f"[yellow]binding to {args.host}: the server has no authentication; anyone who reaches "
            "this address can run flows. Prefer a reverse proxy with auth.[/yellow]"
        )
    console.print(
        f"Prefect server on http://{args.host}:{args.port} (UI and API), database: {database_description()}\n"
        f"In every shell that submits or runs work: export PREFECT_API_URL={api}\n"
        f"Then: musicinterp deploy; musicinterp worker --pool {CONTROL_POOL}; "
        f"musicinterp worker --pool {GPU_POOL}; musicinterp submit configs/demo.yaml"
    )
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        "PREFECT_API_URL": api,
    }
    cmd = [*_prefect(), "server", "start", "--host", args.host, "--port", str(args.port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)  # the server replaces this process: signals reach it directly
    return 0  # not reached


# --- deploy ----------------------------------------------------------------------------------------


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


def cmd_deploy(args: argparse.Namespace) -> int:
    import subprocess

    from prefect.client.orchestration import get_client

    api = _server_url()
    if api is None:
        return 2
    if args.control_slots < 2 or args.gpu_slots < 1:
        console.print(
            "[red]--control-slots must be at least 2 (a benchmark parent waits for its analysis run in the same "
            "pool) and --gpu-slots at least 1[/red]"
        )
        return 2
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
        console.print(f"[red]{e}[/red]")
        return 2
    todo, skipped = deployable()
    for why in skipped:
        console.print(f"[yellow]deployment left out: {why}[/yellow]")
    cmd = [*_prefect(), "deploy", "--prefect-file", str(PREFECT_FILE)]
    for d in todo:
        cmd += ["--name", d["name"]]
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(proc.stdout[-4000:] + proc.stderr[-4000:])
        console.print(f"[red]prefect deploy failed (exit {proc.returncode}): {' '.join(cmd)}[/red]")
        return 1
    from prefect.client.orchestration import get_client as _gc

    table = Table("deployment", "work pool", "entrypoint")
    with _gc(sync_client=True) as client:
        for d in todo:
            dep = client.read_deployment_by_name(f"{_flow_name_of(d)}/{d['name']}")
            table.add_row(f"{_flow_name_of(d)}/{d['name']}", dep.work_pool_name or "", d["entrypoint"])
    Console().print(table)
    console.print(
        f"UI: {ui_url(api)}/deployments\nStart the workers: musicinterp worker --pool {CONTROL_POOL}  and  "
        f"musicinterp worker --pool {GPU_POOL}"
    )
    return 0


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


# --- worker ----------------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    api = _server_url()
    if api is None:
        return 2
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    }
    env.setdefault("MUSICINTERP_HOME", str(REPO))  # where the deployments' pull step moves the flow run
    cmd = [*_prefect(), "worker", "start", "--pool", args.pool]
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
    return 0  # not reached


# --- submit, status, rerun -------------------------------------------------------------------------


def _absolute_out(out: str) -> str:
    if "://" in out:
        return out
    path = str(Path(out).expanduser().resolve())
    console.print(
        f"--out is a local path: {path}; every worker must see it at that path (one machine, or a shared "
        "mount). On a fleet give an object-store URL (s3://bucket/runs) instead."
    )
    return path


def _check_deployment(client, name: str) -> str | None:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_deployment_by_name(name)
        return None
    except ObjectNotFound:
        return f"deployment {name!r} is not on this server; run `musicinterp deploy` first"


def _status_table(info: dict[str, Any]) -> Table:
    table = Table(
        "shard", "state", "flow run", "s", "message", title=f"{info['benchmark']['name']}: {info['benchmark']['state']}"
    )
    for s in info["shards"]:
        color = "red" if s["failed"] else ("green" if s["state"] == "Completed" else "yellow")
        table.add_row(
            str(s["shard"]),
            f"[{color}]{s['state']}[/{color}]",
            s["name"] or "",
            "" if s["duration_s"] is None else str(s["duration_s"]),
            (s["message"] or "")[:160],
        )
    return table


def _wait(client, run_id: str, json_out: bool) -> int:
    """Follow a run to its final state, telling each shard's changes; 0 if it completed."""
    from flows.rerun import NotABenchmark, describe

    seen: dict[int, str] = {}
    while True:
        fr = client.read_flow_run(run_id)
        try:
            info = describe(client, run_id)
            for s in info["shards"]:
                if seen.get(s["shard"]) != s["state"]:
                    seen[s["shard"]] = s["state"]
                    console.print(f"  shard {s['shard']}: {s['state']}")
        except NotABenchmark:
            info = None
        if fr.state is not None and fr.state.is_final():
            break
        time.sleep(POLL_S)
    info = describe(client, run_id)
    _print_info(info, json_out)
    return 0 if fr.state.is_completed() else 1


def _print_info(info: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print(json.dumps(info, indent=2))
        return
    out = Console()
    run, bench = info["run"], info["benchmark"]
    out.print(f"[bold]{run['name']}[/bold] ({run['flow']}, {run['id']}): {run['state']}")
    if bench["id"] != run["id"]:
        out.print(f"benchmark run: {bench['name']} ({bench['id']}): {bench['state']}")
    out.print(
        f"config: {info['config']}   out: {info['out']}"
        + (f"   only shards: {info['only_shards']}" if info["only_shards"] is not None else "")
    )
    out.print(_status_table(info))
    if bench["message"] and not bench["completed"]:
        out.print(f"[red]{bench['message']}[/red]")
    if info["failed_shards"]:
        out.print(f"failed shards: {info['failed_shards']}; rerun them with: musicinterp rerun {bench['id']}")
    out.print(f"artifacts: {', '.join(info['artifacts']) or 'none yet'}")
    out.print(f"UI: {run['url']}")


def cmd_submit(args: argparse.Namespace) -> int:
    from musicinterp.config import ConfigError, load_run_spec

    try:
        spec = load_run_spec(args.config)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        return 2
    if _server_url() is None:
        return 2
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.utilities.urls import url_for

    out = _absolute_out(args.out)
    params: dict[str, Any] = {"spec": spec.model_dump(mode="json"), "out": out, "dispatch": "deployments"}
    if args.only_shards:
        params["only_shards"] = sorted(set(args.only_shards))
    with get_client(sync_client=True) as client:
        problem = _check_deployment(client, BENCHMARK_DEPLOYMENT)
        if problem:
            console.print(f"[red]{problem}[/red]")
            return 2
        fr = run_deployment(BENCHMARK_DEPLOYMENT, parameters=params, timeout=0, flow_run_name=f"benchmark-{spec.name}")
        url = url_for(fr)
        console.print(
            f"submitted benchmark run {fr.name} ({fr.id}) of config {spec.name!r} "
            f"(fingerprint {spec.fingerprint(10)}) into {out}"
        )
        if not args.json:
            print(f"flow run: {fr.id}\n{url}")
        if not args.wait:
            if args.json:
                print(json.dumps({"id": str(fr.id), "name": fr.name, "url": url}, indent=2))
            console.print(f"follow it: musicinterp status {fr.id}   (or open {url})")
            return 0
        return _wait(client, str(fr.id), args.json)


def cmd_status(args: argparse.Namespace) -> int:
    if _server_url() is None:
        return 2
    from prefect.client.orchestration import get_client

    from flows.rerun import NotABenchmark, RunNotFound, describe

    with get_client(sync_client=True) as client:
        try:
            info = describe(client, args.run)
        except (RunNotFound, NotABenchmark) as e:
            console.print(f"[red]{e}[/red]")
            return 2
    _print_info(info, args.json)
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    if _server_url() is None:
        return 2
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.utilities.urls import url_for

    from flows.rerun import NotABenchmark, RunNotFound, benchmark_run, failed_shards, resolve_run

    with get_client(sync_client=True) as client:
        try:
            bench = benchmark_run(client, resolve_run(client, args.run))
        except (RunNotFound, NotABenchmark) as e:
            console.print(f"[red]{e}[/red]")
            return 2
        if bench.state is None or not bench.state.is_final():
            console.print(
                f"[red]benchmark run {bench.name} ({bench.id}) is still "
                f"{bench.state.name if bench.state else 'pending'}; rerun it once it has finished[/red]"
            )
            return 1
        todo = failed_shards(client, bench)
        if not todo:
            console.print(f"benchmark run {bench.name} ({bench.id}): every shard completed; nothing to rerun")
            if args.json:
                print(json.dumps({"rerun_of": str(bench.id), "shards": []}))
            return 0
        problem = _check_deployment(client, RERUN_DEPLOYMENT)
        if problem:
            console.print(f"[red]{problem}[/red]")
            return 2
        name = f"rerun-{bench.name}-shards-" + "-".join(str(s) for s in todo)
        fr = run_deployment(
            RERUN_DEPLOYMENT, parameters={"run_id": str(bench.id), "shards": todo}, timeout=0, flow_run_name=name
        )
        url = url_for(fr)
        console.print(
            f"rerunning shards {todo} of {bench.name} ({bench.id}) into "
            f"{(bench.parameters or {}).get('out')}: {fr.name} ({fr.id})"
        )
        if not args.json:
            print(f"flow run: {fr.id}\n{url}")
        if not args.wait:
            if args.json:
                print(
                    json.dumps(
                        {"id": str(fr.id), "name": fr.name, "url": url, "rerun_of": str(bench.id), "shards": todo},
                        indent=2,
                    )
                )
            console.print(f"follow it: musicinterp status {fr.id}")
            return 0
        return _wait(client, str(fr.id), args.json)


def add_ops_commands(subparsers) -> None:
    """Register server, deploy, worker, submit, status and rerun on the ``musicinterp`` parser."""
    p = subparsers.add_parser(
        "server", help="start a local Prefect server (127.0.0.1, SQLite), or say which one PREFECT_API_URL points at"
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--check", action="store_true", help="only check that the configured server answers")
    p.set_defaults(func=cmd_server)

    p = subparsers.add_parser(
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

    p = subparsers.add_parser("worker", help="start a Prefect worker for a work pool (it runs the flow runs)")
    p.add_argument("--pool", required=True, help=f"work pool: {CONTROL_POOL} or {GPU_POOL}")
    p.add_argument("--name", help="worker name (default: Prefect's)")
    p.add_argument("--limit", type=int, help="flow runs this worker runs at once (default: no limit but the pool's)")
    p.add_argument("--type", choices=POOL_TYPES, help="worker type (default: the pool's)")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("submit", help="schedule a benchmark run on the deployed flows and print its URL")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--out", default="runs", help="folder or fsspec URL every worker reaches (default: runs)")
    p.add_argument("--only-shards", type=int, nargs="+", help="run just these shards")
    p.add_argument("--wait", action="store_true", help="follow the run to its end; exit 1 if it failed")
    p.add_argument("--json", action="store_true", help="print JSON (the run; with --wait, its shard states)")
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("status", help="a benchmark run's state and its shards' states")
    p.add_argument("run", help="flow run id (as submit printed) or name; a rerun's id shows its benchmark")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("rerun", help="rerun exactly the shards of a benchmark run that failed, into its store")
    p.add_argument("run", help="the benchmark's flow run id (or name, or an earlier rerun's id)")
    p.add_argument("--wait", action="store_true", help="follow the rerun to its end; exit 1 if it failed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rerun)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.ops``: the six commands alone (``musicinterp`` has them too)."""
    parser = argparse.ArgumentParser(
        prog="musicinterp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_ops_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
