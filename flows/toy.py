"""The toy flow: train the positive-control model on cue pieces, check it, publish the report.

``musicinterp train-toy`` (``cli/toy.py``) runs it in-process. The flow fails when the model did not learn
the structure (a positive control that is not positive is worse than none); the checkpoint is still
written, and the report artifact says which check failed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from musicinterp.toy import ToySpec, report_markdown
from musicinterp_tasks.toy import train_toy_task

DEFAULT_OUT = "checkpoints/toy-cue"


class ToyNotLearned(RuntimeError):
    """The trained toy model failed the learned-structure check."""


@flow(name="train-toy", persist_result=False)
def train_toy_flow(spec: ToySpec = ToySpec(), out: str = DEFAULT_OUT, random_out: str | None = None) -> dict[str, Any]:
    """Train the toy MusicGen decoder on cue pieces and save it (weights: trained-here).

    On ``spec.device``: the chord toy's defaults take ~15 min on a 2-core CPU, the pair toy's recipe
    (checkpoints/toy-pair/train.yaml) ~40 min.

    ``random_out`` (default ``<out>-random``) gets the same architecture with its initial random
    weights (weights: random), the negative control.
    """
    report = train_toy_task(spec, out, random_out)
    create_markdown_artifact(
        report_markdown(report),
        key="toy-cue-report",
        description="toy positive control: held-out loss at the return, trained vs random",
    )
    if not report["learned"]:
        raise ToyNotLearned(
            f"the toy model did not learn the cue structure: {report['checks']} "
            f"(trained {report['trained']}, random {report['random']}); try more steps"
        )
    get_run_logger().info("toy model saved to %s (weights: trained-here)", report["out_dir"])
    return report
