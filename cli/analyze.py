"""``musicinterp analyze``: probe every layer of a store for future events, as the analysis flow run in
this process (no server needed); prints the findings and where the results are."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from cli.common import EXIT_FAILED, EXIT_OK, console, error, load_settings


def cmd_analyze(args: argparse.Namespace) -> int:
    from musicinterp.analysis.data import AnalysisError, open_analysis_store
    from musicinterp.config import AnalysisSpec, ConfigError

    try:
        spec = load_settings(args.settings, AnalysisSpec, "analysis")
        for url in filter(None, (args.store, args.control_store)):
            open_analysis_store(url)
    except (ConfigError, AnalysisError) as e:
        return error(e)
    from flows.analysis import analysis, default_out

    out = args.out or default_out(args.store)
    state = analysis(
        store=args.store, spec=spec, out=out, control_store=args.control_store, name=args.name, return_state=True
    )
    if not state.is_completed():
        return error(f"analysis did not complete: {state.message}", EXIT_FAILED)
    result = state.result()
    Console().print((Path(out) / "findings.md").read_text())
    console.print(f"results: {out}/results.parquet, {out}/results.csv; figures and findings.md in {out}")
    console.print(f"{result['significant']} significant cells (q < {spec.alpha:g}); weights: {result['weights']}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``analyze``."""
    ana = sub.add_parser("analyze", help="probe every layer of a store for future events, against causal controls")
    ana.add_argument("store", help="path or URL of a store of the documented schema (resid + (clip, time) labels)")
    ana.add_argument("--out", help="folder for results, figures and findings (default: beside the store)")
    ana.add_argument("--control-store", help="the same slice from a random-weight model: the 'random-model' control")
    ana.add_argument("--settings", help="YAML with analysis settings (an 'analysis:' mapping or its fields)")
    ana.add_argument("--name", default="analysis", help="name used in artifact keys (default: analysis)")
    ana.set_defaults(func=cmd_analyze)
