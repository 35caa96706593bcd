"""The ``musicinterp`` command line: :func:`main` and the parser, assembled from one module per role.

| module | commands |
|---|---|
| ``run.py`` | ``run`` (the benchmark flow in this process, with a progress bar), ``inspect`` (a store) |
| ``annotate.py`` | ``annotate``, ``validate-annotations`` (the library only) |
| ``analyze.py`` | ``analyze`` (the analysis flow in this process) |
| ``toy.py`` | ``train-toy`` (the toy flow in this process) |
| ``server.py`` | ``server``; which server PREFECT_API_URL names and whether it answers |
| ``deploy.py`` | ``deploy``: work pools, their limits, the deployments of deployments/prefect.yaml |
| ``worker.py`` | ``worker`` for one work pool |
| ``submit.py`` | ``submit``, ``status``, ``rerun`` on the deployed flows |
| ``common.py`` | console, exit codes, settings files, pool names, the Prefect subprocess environment |

Imports run ``cli -> flows -> tasks -> musicinterp``; nothing imports cli but the ``musicinterp``
console script (and ``python -m cli``) and the tests.

The deployed picture on one machine (see deployments/README.md):

    musicinterp server                          # Prefect server on 127.0.0.1:4200, SQLite in $PREFECT_HOME
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    musicinterp deploy                          # work pools, concurrency limits, deployments
    musicinterp worker --pool musicinterp       # the control pool: benchmark parents, reruns, analysis
    musicinterp worker --pool musicinterp-gpu   # the shards (capture + annotation)
    musicinterp submit configs/demo.yaml        # prints the run's URL
    musicinterp status RUN                      # shard states
    musicinterp rerun RUN                       # reruns exactly the failed shards, into the same store
"""

from __future__ import annotations

import argparse
import logging
import os

DESCRIPTION = (
    "The ``musicinterp`` command line. ``run`` starts the benchmark flow in this process; "
    "``inspect``, ``annotate`` and ``validate-annotations`` need only the library; "
    "``server``, ``deploy``, ``worker``, ``submit``, ``status`` and ``rerun`` operate the deployed flows."
)


def build_parser() -> argparse.ArgumentParser:
    # the command modules load here, not on ``import cli``: ``cli.common`` alone stays light
    from cli import analyze, annotate, deploy, run, server, submit, toy, worker

    parser = argparse.ArgumentParser(prog="musicinterp", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging from musicinterp")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (run, annotate, analyze, toy, server, deploy, worker, submit):  # the order of --help
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # the local server's usage telemetry needs the internet; off unless the user turns it on
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    return args.func(args)
