"""``musicinterp train-toy``: train the positive-control model (the toy flow, run in this process) from
a ToySpec assembled from a ``--settings`` file and the flags over it."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from musicinterp_cli.common import EXIT_FAILED, EXIT_OK, error, load_settings

if TYPE_CHECKING:
    from musicinterp.toy import ToySpec


def toy_spec_from_args(args: argparse.Namespace):
    """The ToySpec of ``train-toy``: the ``--settings`` file (or the defaults), then the flags over it."""
    from pydantic import ValidationError

    from musicinterp.config import ConfigError, format_validation_error
    from musicinterp.toy import ToySpec

    flags = {"steps": args.steps, "seed": args.seed, "design": args.design, "device": args.device}
    fields = load_settings(args.settings, ToySpec, "toy").model_dump()
    fields |= {k: v for k, v in flags.items() if v is not None}
    try:
        return ToySpec(**fields)
    except ValidationError as e:
        raise ConfigError(format_validation_error("train-toy flags", e)) from e


def train_toy_cli(out: str, spec: ToySpec) -> int:
    """Run the toy flow in-process and print its report; 0 if the model learned the structure, 1 if not."""
    from musicinterp.toy import report_markdown
    from musicinterp_flows.toy import train_toy_flow  # imports Prefect and torch: only when a flow is run

    state = train_toy_flow(spec=spec, out=out, return_state=True)
    report = state.result(raise_on_failure=False)  # the exception itself when the flow failed
    if not isinstance(report, dict):
        print(f"train-toy failed: {state.message}")
        return EXIT_FAILED
    print(report_markdown(report))
    print(
        json.dumps(
            {k: report[k] for k in ("trained", "random", "checks", "train_seconds", "checkpoint_bytes")}, indent=2
        )
    )
    return EXIT_OK if report.get("learned") else EXIT_FAILED


def cmd_train_toy(args: argparse.Namespace) -> int:
    from musicinterp.config import ConfigError

    try:
        spec = toy_spec_from_args(args)
    except ConfigError as e:
        return error(e)
    return train_toy_cli(args.out or f"checkpoints/toy-{'cue' if spec.design == 'chord' else spec.design}", spec)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train-toy``."""
    toy = sub.add_parser("train-toy", help="train the positive-control model (a cue decides whether A returns)")
    toy.add_argument("--out", help="checkpoint folder (default: checkpoints/toy-cue, or toy-pair with --design pair)")
    toy.add_argument(
        "--settings",
        help="YAML with ToySpec fields (a 'toy:' mapping or its fields), e.g. "
        "checkpoints/toy-pair/train.yaml; the flags below override it",
    )
    toy.add_argument(
        "--design",
        choices=["chord", "pair"],
        help="cue design: one chord decides (default), or two chords that are equal when A returns",
    )
    toy.add_argument("--device", help="torch device of training: cpu (default) or cuda")
    toy.add_argument("--steps", type=int, help="optimiser steps (default: ToySpec's)")
    toy.add_argument("--seed", type=int, help="seed of the training pieces and weights")
    toy.set_defaults(func=cmd_train_toy)
