"""``musicinterp run`` and ``musicinterp inspect``: a run in this process and the store it writes.

``run`` starts the benchmark flow in-process (no server needed) and draws a progress bar from the
store's completion flags; ``inspect`` prints what a store holds and needs only the library.
"""

from __future__ import annotations

import argparse
import json
import threading
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.common import EXIT_FAILED, EXIT_OK, console, error, progress_bar
from musicinterp.config import ConfigError, load_run_spec

POLL_S = 1.0  # how often the progress bar reads the store


def cmd_run(args: argparse.Namespace) -> int:
    try:
        spec = load_run_spec(args.config)
    except ConfigError as e:
        return error(e)
    from flows.benchmark import benchmark  # imports Prefect and torch: only when a flow is run
    from musicinterp.run import RunPaths
    from musicinterp.store import StoreError, open_store

    paths = RunPaths.for_spec(spec, args.out)
    outcome: dict[str, Any] = {}

    def target() -> None:
        outcome["state"] = benchmark(spec=spec, out=args.out, return_state=True)

    worker = threading.Thread(target=target, name="benchmark-flow", daemon=True)
    worker.start()
    with progress_bar() as bar:
        task = bar.add_task(f"{spec.name}: planning", total=None)
        labels = bar.add_task(f"{spec.name}: clips annotated", total=None, visible=spec.annotate)
        while worker.is_alive():
            worker.join(POLL_S)
            try:
                ds = open_store(paths.store)
                total = ds.sizes["clip"]
                bar.update(
                    task,
                    description=f"{spec.name}: clips captured",
                    total=total,
                    completed=int(ds["complete"].values.sum()),
                )
                if spec.annotate:
                    bar.update(labels, total=total, completed=int(ds["annotated"].values.sum()))
            except (StoreError, OSError, KeyError, ValueError):
                pass  # the store does not exist yet, or is being created
    state = outcome.get("state")
    summary_md = f"{paths.root}/summary.md"
    console.print(f"store:   {paths.store}\nsummary: {summary_md}")
    if state is None or not state.is_completed():
        return error(f"run did not complete: {state.message if state else 'no state'}", EXIT_FAILED)
    console.print("[green]run complete[/green]")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from musicinterp.store import StoreError, describe_store

    try:
        info = describe_store(args.store)
    except StoreError as e:
        return error(e)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
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
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``run`` and ``inspect``."""
    run = sub.add_parser("run", help="run a benchmark described by a YAML config, as a Prefect flow")
    run.add_argument("config", help="YAML config (see configs/)")
    run.add_argument("--out", default="runs", help="folder or fsspec URL for the run (default: runs)")
    run.set_defaults(func=cmd_run)
    insp = sub.add_parser("inspect", help="print what a run store holds")
    insp.add_argument("store", help="path or URL of a store.zarr")
    insp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    insp.set_defaults(func=cmd_inspect)
