"""``musicinterp generate``: the generation flow in this process, with a progress bar from the store's flags."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from musicinterp.config import ConfigError, load_run_spec
from musicinterp_cli.common import EXIT_FAILED, EXIT_OK, console, error, progress_bar

POLL_S = 1.0  # how often the progress bar reads the store


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        spec = load_run_spec(args.config)
    except ConfigError as e:
        return error(e)
    if spec.generation is None:
        return error(f"config {args.config!r} has no 'generation' section (see README, Generation-time capture)")
    from musicinterp.run import RunPaths
    from musicinterp.store import StoreError, open_store
    from musicinterp_flows.generate import generate  # imports Prefect and torch: only when a flow is run

    paths = RunPaths.for_spec(spec, args.out)
    outcome: dict[str, Any] = {}

    def target() -> None:
        outcome["state"] = generate(spec=spec, out=args.out, return_state=True)

    worker = threading.Thread(target=target, name="generate-flow", daemon=True)
    worker.start()
    with progress_bar() as bar:
        task = bar.add_task(f"{spec.name}: planning", total=None)
        while worker.is_alive():
            worker.join(POLL_S)
            try:
                flags = open_store(paths.store)["gen_complete"].values
                bar.update(
                    task, description=f"{spec.name}: continuations", total=flags.size, completed=int(flags.sum())
                )
            except (StoreError, OSError, KeyError, ValueError):
                pass  # the store or its generated variables do not exist yet
    state = outcome.get("state")
    console.print(f"store:     {paths.store}\ngenerated: {paths.root}/generated/")
    if state is None or not state.is_completed():
        return error(f"generation did not complete: {state.message if state else 'no state'}", EXIT_FAILED)
    console.print("[green]generation complete[/green]")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``generate``."""
    gen = sub.add_parser(
        "generate",
        help="continue each clip's prompt (config 'generation' section) and capture the continuations' states",
    )
    gen.add_argument("config", help="YAML config with a 'generation' section (see configs/generate-*.yaml)")
    gen.add_argument("--out", default="runs", help="folder or fsspec URL for the run (default: runs)")
    gen.set_defaults(func=cmd_generate)
