"""The training task of the positive-control model (``musicinterp.toy.train_toy``)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from musicinterp.toy import ToySpec, train_toy

PROGRESS_EVERY_STEPS = 10


@task(name="train-toy", retries=0, cache_policy=None, persist_result=False)
def train_toy_task(spec: ToySpec, out: str, random_out: str | None = None) -> dict[str, Any]:
    """Train, save and check the toy model; returns the report (numbers and paths only)."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"train-toy: optimiser steps ({spec.steps})")

    def on_step(step: int, steps: int, loss: float) -> None:
        if step % PROGRESS_EVERY_STEPS == 0 or step == steps:
            update_progress_artifact(progress, 100.0 * step / steps)
            logger.info("step %d/%d: train loss %.4f", step, steps, loss)

    report = train_toy(spec, out, progress=on_step, random_dir=random_out)
    logger.info(
        "held-out loss at the return: trained %.3f (return cue) / %.3f (no-return cue), random %.3f",
        report["trained"]["return_return_cue"],
        report["trained"]["return_no_return_cue"],
        report["random"]["return_all"],
    )
    return report
