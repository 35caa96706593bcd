"""``musicinterp submit | status | rerun``: schedule a benchmark run on the deployed flows, tell a run's
state and its shards' states, and rerun exactly the failed shards into the same store.

The questions to the server (which run, which shards failed) are flows/rerun.py's; this module turns
them into commands, tables and JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from musicinterp_cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, console, error
from musicinterp_cli.server import _healthcheck, configured_api_url, server_url

BENCHMARK_DEPLOYMENT = "benchmark/benchmark"
RERUN_DEPLOYMENT = "rerun-failed-shards/rerun-failed-shards"
POLL_S = 2.0  # how often --wait asks the server
SERVER_LOST_S = 600.0  # how long --wait waits for a server that stopped answering before it gives up


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


def _duration(shard: dict[str, Any]) -> str:
    """Seconds of a finished shard; a running one has no duration yet (Prefect reports 0.0 until it ends)."""
    if shard["state"] == "Running":
        return "running"
    if shard["duration_s"] is None or shard["state"] in ("Pending", "Scheduled"):
        return ""
    return str(shard["duration_s"])


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
            _duration(s),
            s["message"] or "",  # whole: the table wraps it; a cut message lost the file name
        )
    return table


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
    if info["failed_shards"] and info.get("cannot_rerun"):
        out.print(f"failed shards: {info['failed_shards']}; a rerun cannot fix this: {info['cannot_rerun']}")
    elif info["failed_shards"]:
        out.print(f"failed shards: {info['failed_shards']}; rerun them with: musicinterp rerun {bench['id']}")
    out.print(f"artifacts: {', '.join(info['artifacts']) or 'none yet'}")
    out.print(f"UI: {run['url']}")


def _server_lost(run_id: str, since: float, err: Exception) -> str:
    return (
        f"the Prefect server at {configured_api_url()} is unreachable ({type(err).__name__}: {err}) since "
        f"{time.strftime('%H:%M:%S', time.localtime(since))}. The run's shards keep capturing into the store on "
        "their workers meanwhile. Start the server again on the same database (`musicinterp server`, or your "
        f"team's server); then `musicinterp status {run_id}` tells the run's state, and `musicinterp rerun "
        f"{run_id}` reruns any shard that did not finish"
    )


class ServerLost(RuntimeError):
    """The server did not answer for ``SERVER_LOST_S``; the message says what to do."""


def _wait(client, run_id: str, json_out: bool) -> int:
    """Follow a run to its final state, telling each shard's changes; EXIT_OK if it completed.

    A server that stops answering is said at once, and waited for up to ``SERVER_LOST_S``; the run is
    followed again once it answers (its runs went on meanwhile), or the command exits 1 saying what to do.
    """
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from musicinterp_flows.rerun import describe

    # this loop is the retry: the client's own retries (backoff over tens of seconds) could span a whole outage
    # inside one request, and the user would never hear that the server was gone (seen once in CI)
    try:
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
            fr = _follow(client, run_id)
    except ServerLost as e:
        return error(str(e), EXIT_FAILED)
    info = describe(client, run_id)
    _print_info(info, json_out)
    return EXIT_OK if fr.state.is_completed() else EXIT_FAILED


def _follow(client, run_id: str):
    """``_wait``'s loop: the flow run once final, or exit 1 after ``SERVER_LOST_S`` without an answer."""
    import httpx

    from musicinterp_flows.rerun import NotABenchmark, describe

    seen: dict[int, str] = {}
    lost_since: float | None = None
    url = configured_api_url()
    while True:
        # one quick question first: the client's own retries would hide a lost server for a minute
        err: Exception | None = _healthcheck(url) if url else None
        if err is None:
            try:
                fr = client.read_flow_run(run_id)
                try:
                    info = describe(client, run_id)
                    for s in info["shards"]:
                        if seen.get(s["shard"]) != s["state"]:
                            seen[s["shard"]] = s["state"]
                            console.print(f"  shard {s['shard']}: {s['state']}")
                except NotABenchmark:
                    pass  # not (yet) a benchmark's run: nothing to tell until it is final
            except httpx.TransportError as e:  # refused, reset, timed out
                err = e
            except httpx.HTTPStatusError as e:  # a server starting or stopping answers 5xx; anything else is a bug
                if e.response.status_code < 500:
                    raise
                err = e
        if err is not None:
            now = time.time()
            if lost_since is None:
                lost_since = now
                console.print(f"[yellow]{_server_lost(run_id, lost_since, err)}[/yellow]")
                console.print(f"waiting up to {SERVER_LOST_S:.0f} s for the server to answer again")
            elif now - lost_since > SERVER_LOST_S:
                raise ServerLost(
                    f"gave up waiting: {_server_lost(run_id, lost_since, err)}; no answer for {now - lost_since:.0f} s"
                )
            time.sleep(POLL_S)
            continue
        if lost_since is not None:
            console.print(f"the Prefect server answers again after {time.time() - lost_since:.0f} s; following the run")
            lost_since = None
        if fr.state is not None and fr.state.is_final():
            return fr
        time.sleep(POLL_S)


def cmd_submit(args: argparse.Namespace) -> int:
    from musicinterp.config import ConfigError, load_run_spec

    try:
        spec = load_run_spec(args.config)
    except ConfigError as e:
        return error(e)
    if server_url() is None:
        return EXIT_USAGE
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
            return error(problem)
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
            return EXIT_OK
        return _wait(client, str(fr.id), args.json)


def cmd_status(args: argparse.Namespace) -> int:
    if server_url() is None:
        return EXIT_USAGE
    from prefect.client.orchestration import get_client

    from musicinterp_flows.rerun import NotABenchmark, RunNotFound, describe

    with get_client(sync_client=True) as client:
        try:
            info = describe(client, args.run)
        except (RunNotFound, NotABenchmark) as e:
            return error(e)
    _print_info(info, args.json)
    return EXIT_OK


def cmd_rerun(args: argparse.Namespace) -> int:
    if server_url() is None:
        return EXIT_USAGE
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.utilities.urls import url_for

    from musicinterp_flows.rerun import (
        CannotRerun,
        NotABenchmark,
        RunNotFound,
        benchmark_run,
        check_rerunnable,
        resolve_run,
    )
    from musicinterp_flows.rerun import shard_states as read_shard_states

    with get_client(sync_client=True) as client:
        try:
            bench = benchmark_run(client, resolve_run(client, args.run))
        except (RunNotFound, NotABenchmark) as e:
            return error(e)
        if bench.state is None or not bench.state.is_final():
            return error(
                f"benchmark run {bench.name} ({bench.id}) is still "
                f"{bench.state.name if bench.state else 'pending'}; rerun it once it has finished",
                EXIT_FAILED,
            )
        states = read_shard_states(client, bench)
        try:
            check_rerunnable(client, bench, states)
        except CannotRerun as e:
            return error(e, EXIT_FAILED)
        todo = [s.shard for s in states if s.failed]
        if not todo:
            console.print(f"benchmark run {bench.name} ({bench.id}): every shard completed; nothing to rerun")
            if args.json:
                print(json.dumps({"rerun_of": str(bench.id), "shards": []}))
            return EXIT_OK
        problem = _check_deployment(client, RERUN_DEPLOYMENT)
        if problem:
            return error(problem)
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
            return EXIT_OK
        return _wait(client, str(fr.id), args.json)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``submit``, ``status`` and ``rerun``."""
    p = sub.add_parser("submit", help="schedule a benchmark run on the deployed flows and print its URL")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--out", default="runs", help="folder or fsspec URL every worker reaches (default: runs)")
    p.add_argument("--only-shards", type=int, nargs="+", help="run just these shards")
    p.add_argument("--wait", action="store_true", help="follow the run to its end; exit 1 if it failed")
    p.add_argument("--json", action="store_true", help="print JSON (the run; with --wait, its shard states)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="a benchmark run's state and its shards' states")
    p.add_argument("run", help="flow run id (as submit printed) or name; a rerun's id shows its benchmark")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rerun", help="rerun exactly the shards of a benchmark run that failed, into its store")
    p.add_argument("run", help="the benchmark's flow run id (or name, or an earlier rerun's id)")
    p.add_argument("--wait", action="store_true", help="follow the rerun to its end; exit 1 if it failed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rerun)
