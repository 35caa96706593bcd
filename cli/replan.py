"""``musicinterp replan RUN_DIR``: bring a run up to date with its inputs (``musicinterp.run.replan``)."""

from __future__ import annotations

import argparse

from musicinterp_cli.common import EXIT_OK, console, error


def cmd_replan(args: argparse.Namespace) -> int:
    from musicinterp.run.replan import replan_run
    from musicinterp.sources.base import ClipError
    from musicinterp.store import StoreError

    try:
        result = replan_run(args.run_dir)
    except (StoreError, ClipError) as e:
        return error(e)
    c = result.changes
    if not c:
        console.print(f"{result.root}: inputs unchanged since the run was planned; nothing to do")
        return EXIT_OK
    for what, clips in (("new", c.new), ("changed", c.changed), ("gone", c.gone)):
        for clip in clips:
            console.print(f"{what:8}{clip}")
    console.print(
        f"{result.root}: {len(c.new)} new, {len(c.changed)} changed, {len(c.gone)} gone; "
        f"{len(result.kept)} complete clips kept. Run the same config again to capture the new and changed clips."
    )
    for r in result.rejected:
        console.print(f"[yellow]left out[/yellow] {r['item']}: {r['problem']}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``replan``."""
    p = sub.add_parser(
        "replan",
        help="bring a run up to date with its inputs: add new files, redo changed ones, keep the rest",
    )
    p.add_argument("run_dir", help="the run folder ({out}/{name}-{fingerprint}), as `run` prints it")
    p.set_defaults(func=cmd_replan)
