"""The ``musicinterp`` command line. It lives beside the flows because ``run`` starts one;
``inspect`` needs only the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from musicinterp.config import ConfigError, load_run_spec

console = Console(stderr=True)
POLL_S = 1.0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        spec = load_run_spec(args.config)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        return 2
    from flows.benchmark import benchmark  # imports Prefect and torch: only when a flow is run
    from musicinterp.benchmark import RunPaths
    from musicinterp.store import StoreError, completed_clips, open_store

    paths = RunPaths.for_spec(spec, args.out)
    outcome: dict[str, Any] = {}

    def target() -> None:
        outcome["state"] = benchmark(spec=spec, out=args.out, return_state=True)

    worker = threading.Thread(target=target, name="benchmark-flow", daemon=True)
    worker.start()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"{spec.name}: planning", total=None)
        while worker.is_alive():
            worker.join(POLL_S)
            try:
                total = open_store(paths.store).sizes["clip"]
                bar.update(task, description=f"{spec.name}: clips captured", total=total,
                           completed=len(completed_clips(paths.store)))
            except (StoreError, OSError, KeyError, ValueError):
                pass  # the store does not exist yet, or is being created
    state = outcome.get("state")
    summary_md = f"{paths.root}/summary.md"
    console.print(f"store:   {paths.store}\nsummary: {summary_md}")
    if state is None or not state.is_completed():
        console.print(f"[red]run did not complete: {state.message if state else 'no state'}[/red]")
        return 1
    console.print("[green]run complete[/green]")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from musicinterp.store import StoreError, describe_store

    try:
        info = describe_store(args.store)
    except StoreError as e:
        console.print(f"[red]{e}[/red]")
        return 2
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    out = Console()
    attrs = info["attrs"]
    out.print(f"[bold]{info['store']}[/bold]")
    out.print(f"[bold yellow]{attrs.get('weights_note', 'weights: ' + str(attrs.get('weights')))}[/bold yellow]")
    out.print(f"model: {attrs.get('model_id')} @ {attrs.get('model_revision')}  (weights: {attrs.get('weights')})")
    out.print("dims: " + ", ".join(f"{k}={v}" for k, v in info["dims"].items()))
    out.print(f"layers: {info['layers'][0]}..{info['layers'][-1]} ({len(info['layers'])}; 0 = embeddings)")
    out.print(f"config fingerprint: {attrs.get('config_fingerprint')}   musicinterp {attrs.get('musicinterp_version')}")
    out.print(f"size on disk: {info['size_bytes'] / 2**20:.1f} MiB")
    out.print(f"complete: {len(info['complete'])} of {len(info['clips'])} clips")
    table = Table("clip", "frames", "seconds", "complete")
    done = set(info["complete"])
    for clip in info["clips"]:
        n = info["frames"][clip]
        table.add_row(clip, str(n), f"{n / 50:.2f}", "yes" if clip in done else "[red]no[/red]")
    out.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicinterp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging from musicinterp")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a benchmark described by a YAML config, as a Prefect flow")
    run.add_argument("config", help="YAML config (see configs/)")
    run.add_argument("--out", default="runs", help="folder or fsspec URL for the run (default: runs)")
    run.set_defaults(func=cmd_run)
    insp = sub.add_parser("inspect", help="print what a run store holds")
    insp.add_argument("store", help="path or URL of a store.zarr")
    insp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    insp.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
