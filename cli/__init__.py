"""The ``musicinterp`` command line: :func:`main` and the parser, assembled from one module per role.

| module | commands |
|---|---|
| ``run.py`` | ``run`` (the benchmark flow in this process, with a progress bar), ``inspect`` (a store) |
| ``annotate.py`` | ``annotate``, ``validate-annotations`` (the library only) |
| ``analyze.py`` | ``analyze`` (musicinterp.api.analyze in this process, no Prefect: bars, ETA, --json) |
| ``toy.py`` | ``train-toy`` (the toy flow in this process) |
| ``sae.py`` | ``sae train`` and ``sae rank`` (the SAE flows in this process) |
| ``browse.py`` | ``browse`` (a run's feature browser, static HTML; ``--serve`` on 127.0.0.1) |
| ``publish.py`` | ``publish`` (a run as a Hugging Face dataset repo; ``--dry-run``) |
| ``generate.py`` | ``generate`` (the generation flow in this process) |
| ``intervene.py`` | ``intervene`` (the intervene flow in this process; ``--write-directions``) |
| ``server.py`` | ``server``; which server PREFECT_API_URL names and whether it answers |
| ``deploy.py`` | ``deploy``: work pools, their limits, the deployments of deployments/prefect.yaml |
| ``worker.py`` | ``worker`` for one work pool |
| ``submit.py`` | ``submit``, ``status``, ``rerun`` on the deployed flows |
| ``common.py`` | console, exit codes, signals, settings files, pool names, the Prefect subprocess environment |

Imports run ``cli -> flows -> tasks -> musicinterp`` (installed as ``musicinterp_cli``, ``musicinterp_flows``,
``musicinterp_tasks``); nothing imports cli but the ``musicinterp``
console script (and ``python -m musicinterp_cli``) and the tests.

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
import importlib
import logging
import os
import warnings

DESCRIPTION = """\
Does MusicGen track long-range musical structure? Capture its residual stream on music, annotate
the music's recurrences and tension, and probe every layer for what comes next.

  musicinterp run configs/demo.yaml          a benchmark run in this process (no server needed)
  musicinterp inspect RUN/store.zarr         what a store holds
  musicinterp analyze RUN/store.zarr --quick probe the layers (the run's own settings by default)
  musicinterp annotate song.wav --out -      per-frame labels of one audio file, as CSV

Operating a Prefect server and workers: server, deploy, worker, submit, status, rerun.
Every command has --help. Exit codes: 0 done, 1 ran but failed, 2 bad input (nothing ran),
130 / 143 stopped by Ctrl-C / SIGTERM.
"""
EPHEMERAL_STARTUP_TIMEOUT_S = 300  # Prefect's default (20 s) is too short for its temporary server on a busy machine
QUIET_ENV = {  # unless -v: Prefect's INFO logs, transformers' advisories
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def build_parser() -> argparse.ArgumentParser:
    # the command modules load here, not on ``import cli``: ``cli.common`` alone stays light
    from musicinterp import __version__
    from musicinterp_cli import (
        analyze,
        annotate,
        deploy,
        generate,
        intervene,
        replan,
        run,
        sae,
        server,
        submit,
        toy,
        worker,
    )

    parser = argparse.ArgumentParser(
        prog="musicinterp", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"musicinterp {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect's and the libraries' logs, and debug logs"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (run, replan, annotate, analyze, generate, intervene, sae, toy, server, deploy, worker, submit):
        module.add_commands(sub)
    importlib.import_module("musicinterp_cli.browse").add_commands(sub)
    importlib.import_module("musicinterp_cli.publish").add_commands(sub)
    return parser


def quiet_environment(verbose: bool) -> None:
    """Defaults set before Prefect or transformers is imported: no usage telemetry or its notice (they need
    the internet), a generous start-up limit for the temporary Prefect server, and (unless ``verbose``)
    no INFO logs from Prefect and transformers. A variable the user set wins. ``verbose`` is also true when
    :func:`main` is called with ``argv`` (tests in one process), so that their logs stay as they were."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # the client-side switch of Prefect's telemetry notice
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT_S))
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        # statsmodels' overflow warnings on separable probes; the findings note degenerate cells instead
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="statsmodels")


def main(argv: list[str] | None = None) -> int:
    from musicinterp_cli.common import console, error, exit_now, interrupted_code, stop_on_signals

    args = build_parser().parse_args(argv)
    quiet_environment(args.verbose or argv is not None)
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_time=False, show_path=False)  # log lines above the live bars
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[handler], format="%(message)s"
    )
    with stop_on_signals():
        try:
            return args.func(args)
        except KeyboardInterrupt as e:
            code = interrupted_code(e)
            error(
                f"stopped ({'SIGTERM' if code == 143 else 'Ctrl-C'}); finished work is kept (completion flags are "
                "written last), so the same command resumes where this one stopped",
                code,
            )
            exit_now(code)
