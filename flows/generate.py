"""The generation flows: plan -> each shard (continuations generated, decoded, annotated) -> summarise -> report.

``generate`` is the parent, shaped like ``benchmark`` and using its shard machinery: it plans the run
(creating or reopening its store) and adds the generated variables, then runs every shard as the child
flow ``generate-shard``, in this process (``dispatch="local"``) or as runs of the ``generate-shard``
deployment (``dispatch="deployments"``). It publishes progress, a shard table and the findings, and
fails naming the failed shards; ``only_shards`` reruns just those (the store's flags make it idempotent).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from musicinterp.config import RunSpec
from musicinterp.generate.shard import PreparedGeneration
from musicinterp_flows.benchmark import DEFAULT_OUT, _run_deployments, _run_local, artifact_key
from musicinterp_tasks.generate import generate_shard, generation_report, plan_generation, summarise_generation

SHARD_DEPLOYMENT = "generate-shard/generate-shard"


class GenerationIncomplete(RuntimeError):
    """Some continuations failed; the others are in the store."""


def _spec_name() -> str:
    spec = flow_run.parameters.get("spec")
    return spec.get("name") if isinstance(spec, dict) else getattr(spec, "name", "generate")


def _run_name() -> str:
    return f"generate-{_spec_name()}"


def _shard_run_name() -> str:
    return f"{_spec_name()}-generate-shard-{flow_run.parameters.get('shard')}"


@flow(name="generate-shard", flow_run_name=_shard_run_name, persist_result=True, result_serializer="json")
def generate_shard_flow(spec: RunSpec, prepared: PreparedGeneration, shard: int) -> dict[str, Any]:
    """Generate, decode and annotate one shard's continuations (every seed of every clip)."""
    if spec.generation is None:
        raise ValueError(f"config {spec.name!r} has no 'generation' section")
    return generate_shard(spec.model, spec.capture, spec.generation, spec.annotation, prepared, shard)


@flow(name="generate", flow_run_name=_run_name, persist_result=True, result_serializer="json")
def generate(
    spec: RunSpec = RunSpec(generation={}),
    out: str = DEFAULT_OUT,
    dispatch: Literal["local", "deployments"] = "local",
    only_shards: list[int] | None = None,
) -> dict[str, Any]:
    """Continue every clip's prompt with every seed, keep the continuations' residual stream, annotate them.

    ``dispatch``: shards in this process ("local") or as runs of the ``generate-shard`` deployment.
    ``only_shards``: run just these shards (a rerun).
    """
    logger = get_run_logger()
    prepared = plan_generation(spec, out)
    n_shards = prepared.run.n_shards
    shards = list(range(n_shards)) if only_shards is None else sorted(set(only_shards))
    bad = [s for s in shards if not 0 <= s < n_shards]
    if bad:
        raise ValueError(f"only_shards: {bad} out of range; the run has shards 0..{n_shards - 1}")
    progress = create_progress_artifact(
        0.0, key=artifact_key(spec.name, "generate-progress"), description=f"{spec.name}: shards generated"
    )
    finished: list[int] = []

    def on_done(shard: int, info: dict[str, Any]) -> None:
        finished.append(shard)
        update_progress_artifact(progress, 100.0 * len(finished) / len(shards))
        (logger.error if info["failed"] else logger.info)("shard %d: %s %s", shard, info["state"], info["message"])

    if dispatch == "local":
        states = _run_local(spec, prepared, shards, on_done, shard_flow=generate_shard_flow)
    else:
        key = f"gen-{prepared.generation_fingerprint}-{prepared.run.store_uid}"
        states = _run_deployments(spec, prepared, shards, on_done, deployment=SHARD_DEPLOYMENT, key=key)
    summary = summarise_generation(prepared)
    table = [
        {
            "shard": s,
            "state": states[s]["state"],
            "attempts": states[s].get("attempts", 1),
            "duration_s": states[s]["duration_s"],
            "worker": states[s]["worker"],
        }
        for s in shards
    ]
    create_table_artifact(table, key=artifact_key(spec.name, "generate-shards"), description=f"{spec.name}: shards")
    create_markdown_artifact(
        generation_report(prepared, spec.model, spec.capture.device),
        key=artifact_key(spec.name, "generate-summary"),
        description=f"{spec.name}: generation findings",
    )
    failed_shards = sorted(s for s, info in states.items() if info["failed"])
    if failed_shards or summary["failed"]:
        raise GenerationIncomplete(
            f"failed shards: {failed_shards}; {len(summary['failed'])} continuation(s) failed; the other "
            f"{summary['complete']} are in {summary['store']}: "
            + "; ".join(f"{k}: {v}" for k, v in summary["failed"].items())
        )
    return {
        "store": summary["store"],
        "root": summary["root"],
        "complete": summary["complete"],
        "pairs": summary["pairs"],
    }
