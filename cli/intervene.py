"""``musicinterp intervene``: a causal experiment (the intervene flow, in this process) from an
InterventionSpec YAML; or, with ``--write-directions``, save the probe directions of an existing analysis."""

from __future__ import annotations

import argparse

from musicinterp_cli.common import EXIT_FAILED, EXIT_OK, error


def cmd_intervene(args: argparse.Namespace) -> int:
    from musicinterp.config import ConfigError

    if args.write_directions:
        return _write_directions(args.write_directions, args.which)
    if not args.config:
        return error("intervene: give a CONFIG.yaml (or --write-directions ANALYSIS_DIR)")
    from musicinterp.causal.spec import load_intervention_spec

    try:
        spec = load_intervention_spec(args.config)
    except ConfigError as e:
        return error(e)
    from musicinterp_flows.intervene import intervene  # imports Prefect and torch: only when a flow is run

    state = intervene(spec=spec, out=args.out, return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        print(f"intervene failed: {state.message}")
        return EXIT_FAILED
    print(f"results:  {result['results']}")
    print(f"findings: {result['out']}/findings.md")
    return EXIT_OK


def _write_directions(folder: str, which: str) -> int:
    import json
    from pathlib import Path

    from musicinterp.causal import write_directions
    from musicinterp.config import AnalysisSpec

    spec_file = Path(folder) / "analysis_spec.json"
    if not spec_file.exists() or not (Path(folder) / "results.parquet").exists():
        return error(f"{folder!r} is not an analysis folder (needs analysis_spec.json and results.parquet)")
    spec = AnalysisSpec(**json.loads(spec_file.read_text()))
    path = write_directions(folder, spec, which)
    if path is None:
        print(f"no directions saved: no {'significant ' if which == 'significant' else ''}cells with reduced files")
        return EXIT_FAILED
    print(f"directions: {path}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``intervene``."""
    p = sub.add_parser(
        "intervene", help="causal tests: ablate / patch candidate directions against matched random controls"
    )
    p.add_argument("config", nargs="?", help="InterventionSpec YAML, e.g. configs/intervene/toy-pair.yaml")
    p.add_argument("--out", default="runs", help="parent folder; the experiment goes to OUT/NAME-FINGERPRINT")
    p.add_argument(
        "--write-directions",
        metavar="ANALYSIS_DIR",
        help="save the probe directions of an existing analysis folder (directions.safetensors + .json) and exit",
    )
    p.add_argument("--which", choices=["significant", "all"], default="all", help="with --write-directions")
    p.set_defaults(func=cmd_intervene)
