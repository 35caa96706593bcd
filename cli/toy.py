"""``musicinterp train-toy``: train the positive-control model (the toy flow, run in this process) from
a ToySpec assembled from a ``--settings`` file and the flags over it."""

from __future__ import annotations

import argparse

from cli.common import error, load_settings


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


def cmd_train_toy(args: argparse.Namespace) -> int:
    from flows.toy import train_toy_cli
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
