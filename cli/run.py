"""``musicinterp run`` and ``musicinterp inspect``: a run in this process and the store it writes.

``run`` starts the benchmark flow in-process (no server needed) and draws a progress bar from the
store's completion flags; ``inspect`` prints what a store holds and needs only the library.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from musicinterp.config import ConfigError, load_run_spec
from musicinterp_cli.common import EXIT_FAILED, EXIT_OK, console, error, is_terminal, progress_bar, quiet_essentia

POLL_S = 1.0  # how often the progress bar reads the store
SERVER_CHECK_S = 10.0  # how often a run that reports to a Prefect server checks that it answers


def _exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return bool(fs.exists(path))


def _read_json(url: str) -> dict[str, Any] | None:
    import fsspec

    if not _exists(url):
        return None
    with fsspec.open(url, "r") as f:
        return json.load(f)


def run_report(paths: Any, state: Any) -> dict[str, Any]:
    """What ``run --json`` prints: the paths that exist (None for those that do not), counts, failures."""
    summary = _read_json(paths.summary_json) or {}
    findings = f"{paths.analysis}/findings.md"
    return {
        "run": paths.root,
        "completed": bool(state is not None and state.is_completed()),
        "state": state.name if state is not None else None,
        "message": state.message if state is not None else "the flow did not start",
        "store": paths.store if _exists(paths.store) else None,
        "summary": paths.summary_md if _exists(paths.summary_md) else None,
        "findings": findings if _exists(findings) else None,
        **{k: summary.get(k) for k in ("n_clips", "complete", "annotated", "audio_s", "weights")},
        "failed": summary.get("failed", {}),
        "rejected": summary.get("rejected", []),
        "not_annotated": summary.get("not_annotated", {}),
    }


def _server_lost(api: str, err: Exception) -> str:
    return (
        f"the Prefect server at PREFECT_API_URL={api} does not answer ({type(err).__name__}: {err}); "
        "this run reports its states there: it goes on only as long as Prefect's client keeps retrying. "
        "Every clip captured so far stays in the store. Start the server again (on the same database), "
        "or unset PREFECT_API_URL to run without one, and run the same command: it resumes from the store"
    )


def _watch(spec: Any, paths: Any, worker: threading.Thread, api: str | None = None) -> None:
    """Bars with an ETA on a terminal; piped, one line per stage (planned, captured, annotated). With a
    server (``api``), says within ``SERVER_CHECK_S`` when it stops answering, and when it answers again."""
    from musicinterp.store import StoreError, open_store
    from musicinterp_cli.server import _healthcheck

    live = is_terminal()
    said: set[str] = set()
    lost = False
    checked = time.monotonic()

    def say(stage: str, text: str) -> None:
        if not live and stage not in said:
            said.add(stage)
            console.print(f"{spec.name}: {text}")

    with progress_bar(disable=not live) as bar:
        task = bar.add_task(f"{spec.name}: planning", total=None)
        labels = bar.add_task(f"{spec.name}: clips annotated", total=None, visible=spec.annotate)
        while worker.is_alive():
            worker.join(POLL_S)
            try:
                ds = open_store(paths.store)
                total = ds.sizes["clip"]
                done = int(ds["complete"].values.sum())
                bar.update(task, description=f"{spec.name}: clips captured", total=total, completed=done)
                say("planned", f"planned {total} clips; capturing")
                if done == total:
                    say("captured", f"captured {total} clips" + ("; annotating" if spec.annotate else ""))
                if spec.annotate:
                    annotated = int(ds["annotated"].values.sum())
                    bar.update(labels, total=total, completed=annotated)
            except (StoreError, OSError, KeyError, ValueError):
                pass  # the store does not exist yet, or is being created
            if api and time.monotonic() - checked >= SERVER_CHECK_S:
                checked = time.monotonic()
                err = _healthcheck(api)
                if err is not None and not lost:
                    console.print(f"[yellow]{_server_lost(api, err)}[/yellow]")
                elif err is None and lost:
                    console.print(f"the Prefect server at {api} answers again")
                lost = err is not None
    if api and lost and _healthcheck(api) is None:  # back since the last check, and the run ended before the next
        console.print(f"the Prefect server at {api} answers again")


def _failure(state: Any) -> BaseException | None:
    """The exception a failed flow run ended with, if this process still holds it."""
    try:
        cause = state.result(raise_on_failure=False) if state is not None else None
    except Exception:  # noqa: BLE001 - no result to read: the message says what is known
        return None
    return cause if isinstance(cause, BaseException) else None


def cmd_run(args: argparse.Namespace) -> int:
    try:
        spec = load_run_spec(args.config)
    except ConfigError as e:
        return error(e)
    from musicinterp_cli.server import _healthcheck, configured_api_url

    api = configured_api_url()  # None: Prefect runs a temporary server of its own for this command
    if api and (down := _healthcheck(api)) is not None:
        return error(
            f"the Prefect server at PREFECT_API_URL={api} does not answer ({type(down).__name__}: {down}); "
            "start it (`musicinterp server`), or unset PREFECT_API_URL to run without a server"
        )
    from musicinterp.run import RunPaths
    from musicinterp_flows.benchmark import benchmark  # imports Prefect and torch: only when a flow is run

    paths = RunPaths.for_spec(spec, args.out)
    quiet_essentia(args.verbose)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["state"] = benchmark(spec=spec, out=args.out, return_state=True)
        except Exception as e:  # noqa: BLE001 - said below, with what to do (a lost server, most often)
            outcome["error"] = e

    worker = threading.Thread(target=target, name="benchmark-flow", daemon=True)
    worker.start()
    _watch(spec, paths, worker, api)
    state = outcome.get("state")
    if (state is None or not state.is_completed()) and api and (err := _healthcheck(api)) is not None:
        return error(_server_lost(api, err), EXIT_FAILED)  # once "run did not complete: no state"
    if state is None and "error" in outcome:
        e = outcome["error"]
        return error(f"run did not complete: {type(e).__name__}: {e}", EXIT_FAILED)
    report = run_report(paths, state)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for clip, reason in report["failed"].items():  # one line per failure; summary.md has them all
            console.print(f"[red]failed:[/red] {clip}: {reason}")
        for item in report["rejected"]:
            console.print(f"[red]rejected:[/red] {'; '.join(f'{k}: {v}' for k, v in item.items())}")
        for key in ("store", "summary", "findings"):  # only what exists
            if report[key]:
                console.print(f"{key + ':':10}{report[key]}")
    if not report["completed"]:
        cause = _failure(state)
        if isinstance(cause, ConfigError):  # found at planning (layers the model lacks): exit 2, never retried
            return error(cause)
        return error(f"run did not complete: {report['message']}", EXIT_FAILED)
    if not args.json:
        console.print("[green]run complete[/green]")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from musicinterp.store import StoreError, describe_store

    try:
        info = describe_store(args.store, verify=args.verify)
    except StoreError as e:
        return error(e)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_FAILED if info.get("damaged") else EXIT_OK
    out = Console()
    attrs = info["attrs"]
    out.print(f"[bold]{info['store']}[/bold]")
    out.print(f"[bold yellow]{attrs.get('weights_note', 'weights: ' + str(attrs.get('weights')))}[/bold yellow]")
    out.print(f"model: {attrs.get('model_id')} @ {attrs.get('model_revision')}  (weights: {attrs.get('weights')})")
    out.print("dims: " + ", ".join(f"{k}={v}" for k, v in info["dims"].items()))
    out.print(f"layers: {info['layers'][0]}..{info['layers'][-1]} ({len(info['layers'])}; 0 = embeddings)")
    out.print(f"config fingerprint: {attrs.get('config_fingerprint')}   musicinterp {attrs.get('musicinterp_version')}")
    out.print(f"size on disk: {info['size_bytes'] / 2**20:.1f} MiB")
    out.print(
        f"complete: {len(info['complete'])} of {len(info['clips'])} clips; "
        f"annotated: {len(info['annotated'])}; labels: {', '.join(info['labels']) or 'none'}"
    )
    table = Table("clip", "frames", "seconds", "complete")
    done = set(info["complete"])
    for clip in info["clips"]:
        n = info["frames"][clip]
        table.add_row(clip, str(n), f"{n / 50:.2f}", "yes" if clip in done else "[red]no[/red]")
    out.print(table)
    if info.get("damaged"):
        for clip, problem in info["damaged"].items():
            out.print(f"[red]damaged[/red] {clip}: {problem}")
        out.print(f"[red]{len(info['damaged'])} complete clip(s) damaged[/red]: a rerun of the run captures them again")
        return EXIT_FAILED
    if args.verify:
        out.print(f"verified: every chunk of the {len(info['complete'])} complete clips reads back whole")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``run`` and ``inspect``."""
    run = sub.add_parser("run", help="run a benchmark described by a YAML config, as a Prefect flow")
    run.add_argument("config", help="YAML config (see configs/)")
    run.add_argument("--out", default="runs", help="folder or fsspec URL for the run (default: runs)")
    run.add_argument("--json", action="store_true", help="print one JSON object (paths, counts, failures) on stdout")
    run.set_defaults(func=cmd_run)
    insp = sub.add_parser("inspect", help="print what a run store holds")
    insp.add_argument("store", help="path or URL of a store.zarr")
    insp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    insp.add_argument(
        "--verify", action="store_true", help="read every complete clip's chunks; exit 1 naming the damaged ones"
    )
    insp.set_defaults(func=cmd_inspect)
