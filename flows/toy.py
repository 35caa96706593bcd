"""The toy flow: train the positive-control model on cue pieces, check it, publish the report.

``musicinterp train-toy`` calls :func:`train_toy_cli`. The flow fails when the model did not learn
the structure (a positive control that is not positive is worse than none); the checkpoint is still
written, and the report artifact says which check failed.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from musicinterp.toy import ToySpec, report_markdown
from tasks.toy import train_toy_task

DEFAULT_OUT = "checkpoints/toy-cue"


class ToyNotLearned(RuntimeError):
    """The trained toy model failed the learned-structure check."""


@flow(name="train-toy", persist_result=False)
def train_toy_flow(spec: ToySpec = ToySpec(), out: str = DEFAULT_OUT, random_out: str | None = None
                   ) -> dict[str, Any]:
    """Train the toy MusicGen decoder on cue pieces and save it (weights: trained-here).

    On ``spec.device``: the chord toy's defaults take ~15 min on a 2-core CPU, the pair toy's recipe
    (checkpoints/toy-pair/train.yaml) ~40 min.

    ``random_out`` (default ``<out>-random``) gets the same architecture with its initial random
    weights (weights: random), the negative control.
    """
    report = train_toy_task(spec, out, random_out)
    create_markdown_artifact(report_markdown(report), key="toy-cue-report",
                             description="toy positive control: held-out loss at the return, trained vs random")
    if not report["learned"]:
        raise ToyNotLearned(f"the toy model did not learn the cue structure: {report['checks']} "
                            f"(trained {report['trained']}, random {report['random']}); try more steps")
    get_run_logger().info("toy model saved to %s (weights: trained-here)", report["out_dir"])
    return report


def train_toy_cli(out: str, spec: ToySpec) -> int:
    """Run the flow in-process and print the report; 0 if the model learned the structure, 1 if not."""
    state = train_toy_flow(spec=spec, out=out, return_state=True)
    report = state.result(raise_on_failure=False)  # the exception itself when the flow failed
    if not isinstance(report, dict):
        print(f"train-toy failed: {state.message}")
        return 1
    print(report_markdown(report))
    print(json.dumps({k: report[k] for k in ("trained", "random", "checks", "train_seconds", "checkpoint_bytes")},
                     indent=2))
    return 0 if report.get("learned") else 1
