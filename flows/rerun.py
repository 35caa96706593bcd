"""Rerun the shards of a benchmark run that failed, into the same store.

A failed ``run_deployment`` child does not fail its parent, and a retry of the parent would not by
itself rerun only the failed children; so the benchmark's shard runs are read back from the server
(its child flow runs, one per shard), and exactly the shards whose latest run did not complete (or
that never got a run) are run again, by a new ``benchmark`` run with ``only_shards``. The store's
completion flags make that idempotent: a clip that is already complete is skipped.

``rerun_failed_shards`` is the flow behind the ``rerun-failed-shards`` deployment (the UI's way);
``musicinterp rerun RUN`` reads the same helpers to say what it will rerun, then submits it.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.runtime import flow_run as current_run

from musicinterp.config import RunSpec
from musicinterp.run import RunPaths, RunProgress, read_progress
from musicinterp_flows.benchmark import DEFAULT_OUT, benchmark, cannot_rerun
from musicinterp_tasks.run import read_progress as read_progress_task

BENCHMARK_FLOW = "benchmark"
SHARD_FLOW = "benchmark-shard"
RERUN_FLOW = "rerun-failed-shards"


class RunNotFound(LookupError):
    """No flow run has that id or name (or the name is ambiguous)."""


class NotABenchmark(ValueError):
    """The flow run is neither a benchmark run nor a rerun of one."""


class CannotRerun(RuntimeError):
    """The run failed in a way a rerun cannot fix (its inputs changed, its config is invalid); the message
    says why and which command does help."""


@dataclass
class ShardState:
    shard: int
    state: str  # Prefect state name of the shard's latest run, or "Not started"
    failed: bool
    flow_run: str | None = None
    name: str | None = None
    message: str = ""
    duration_s: float | None = None
    started: str | None = None


def _flow_name(client: SyncPrefectClient, run: FlowRun, cache: dict[uuid.UUID, str] | None = None) -> str:
    cache = {} if cache is None else cache
    if run.flow_id not in cache:
        cache[run.flow_id] = client.read_flow(run.flow_id).name
    return cache[run.flow_id]


def resolve_run(client: SyncPrefectClient, ref: str) -> FlowRun:
    """A flow run by id, or by name (the newest when several runs share it)."""
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = uuid.UUID(ref)
    except ValueError:
        run_id = None  # not a UUID: a name
    if run_id is not None:
        try:
            return client.read_flow_run(run_id)
        except ObjectNotFound as e:
            raise RunNotFound(f"no flow run with id {ref!r} on this server") from e
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[ref])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=1,
    )
    if not runs:
        raise RunNotFound(
            f"no flow run named {ref!r} on this server; give the id that `musicinterp submit` "
            "printed (or copy it from the run's page in the UI)"
        )
    return runs[0]


def children(client: SyncPrefectClient, run: FlowRun) -> list[FlowRun]:
    """The flow runs started by ``run`` (subflows and ``run_deployment(as_subflow=True)`` runs)."""
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
    )


def benchmark_run(client: SyncPrefectClient, run: FlowRun) -> FlowRun:
    """The benchmark run behind ``run``: itself, or the benchmark a rerun started."""
    name = _flow_name(client, run)
    if name == BENCHMARK_FLOW:
        return run
    if name == RERUN_FLOW:
        inner = [c for c in children(client, run) if _flow_name(client, c) == BENCHMARK_FLOW]
        if inner:
            return inner[-1]
        raise NotABenchmark(
            f"rerun {run.name!r} ({run.id}) has not started its benchmark run yet "
            f"(state: {run.state.name if run.state else 'unknown'})"
        )
    raise NotABenchmark(f"flow run {run.name!r} ({run.id}) is a {name!r} run, not a benchmark run or a rerun")


def run_parameters(run: FlowRun) -> tuple[RunSpec, str]:
    """The config and output URL a benchmark run was given."""
    params = run.parameters or {}
    return RunSpec.model_validate(params.get("spec") or {}), params.get("out", DEFAULT_OUT)


def _store_progress(run: FlowRun) -> RunProgress | None:
    """The run's finished shards, from its store (outside a flow: the ``status`` command)."""
    try:
        spec, out = run_parameters(run)
        return read_progress(RunPaths.for_spec(spec, out), annotate=spec.annotate)
    except Exception:  # noqa: BLE001 - the run folder may not be reachable from here, or never planned
        return None


def shard_states(client: SyncPrefectClient, run: FlowRun, progress: RunProgress | None = None) -> list[ShardState]:
    """Every shard of a benchmark run with the state of its latest run, in shard order.

    A shard whose latest run failed but whose clips are all complete in the store (a rerun finished
    them) is reported with that state and not counted as failed. ``progress``: what the run's store
    says (the ``read-run-progress`` task's answer); read here when not given. Without it (the run
    folder cannot be read from here) the shards are those the server knows of, and none is healed.
    """
    progress = _store_progress(run) if progress is None else progress
    in_store = progress.finished if progress is not None else frozenset()
    cache: dict[uuid.UUID, str] = {}
    latest: dict[int, FlowRun] = {}
    for child in children(client, run):
        if _flow_name(client, child, cache) == SHARD_FLOW and "shard" in (child.parameters or {}):
            latest[int(child.parameters["shard"])] = child  # sorted by start: the last is the latest
    params = run.parameters or {}
    if params.get("only_shards") is not None:  # the shards this run was asked to run
        expected = set(params["only_shards"])
    else:
        expected = set(range(progress.n_shards)) if progress is not None else set()
    shards = set(latest) | expected
    out = []
    for shard in sorted(shards):
        child = latest.get(shard)
        if child is None:
            out.append(
                ShardState(
                    shard=shard,
                    state="Not started",
                    failed=run.state is not None and run.state.is_final() and shard not in in_store,
                )
            )
            continue
        st = child.state
        final = st is not None and st.is_final()
        healed = shard in in_store and final and not st.is_completed()
        out.append(
            ShardState(
                shard=shard,
                state=(st.name if st else "Unknown") + (" (completed since by a rerun)" if healed else ""),
                failed=final and not st.is_completed() and not healed,
                flow_run=str(child.id),
                name=child.name,
                message=(st.message or "") if st else "",
                duration_s=round(child.total_run_time.total_seconds(), 1),
                started=child.start_time.isoformat() if child.start_time else None,
            )
        )
    return out


def failed_shards(client: SyncPrefectClient, run: FlowRun, progress: RunProgress | None = None) -> list[int]:
    """Shards of a finished benchmark run whose latest run did not complete, or that never ran."""
    return [s.shard for s in shard_states(client, run, progress) if s.failed]


def _inputs_changed(spec: RunSpec, root: str) -> bool:
    """Whether the run's inputs still differ from its manifest (new, changed or removed files): a replan,
    or the file put back, ends it. False when that cannot be told from here (the rerun checks again)."""
    from musicinterp.run.inputs import compare_inputs
    from musicinterp.run.plan import plan_inputs
    from musicinterp.slice import Manifest

    try:
        return bool(compare_inputs(Manifest.from_json(RunPaths(root).manifest), plan_inputs(spec)[0]))
    except Exception:  # noqa: BLE001 - inputs or run folder not reachable from this machine
        return False


def check_rerunnable(client: SyncPrefectClient, bench: FlowRun, states: list[ShardState]) -> None:
    """Raise :class:`CannotRerun` when the failures are ones a rerun would repeat: the shards' and the run's
    messages say the inputs changed (and they still differ from the run's plan) or the config is invalid; or the
    run failed before any shard ran. The message names the command that helps, never ``rerun`` itself."""
    spec, out = run_parameters(bench)
    root = RunPaths.for_spec(spec, out).root
    failed = [s for s in states if s.failed]
    message = (bench.state.message or "") if bench.state else ""
    blocked = cannot_rerun([s.message for s in failed] + [message], root)
    if blocked and "musicinterp replan" in blocked and not _inputs_changed(spec, root):
        blocked = None  # replanned since (or the file put back): the rerun captures the inputs as they are
    if blocked:
        raise CannotRerun(f"benchmark run {bench.name!r} ({bench.id}): {blocked}")
    if not states and bench.state is not None and not bench.state.is_completed():
        raise CannotRerun(
            f"benchmark run {bench.name!r} ({bench.id}) failed before any shard ran ({message or 'no message'}); "
            "there are no shards to rerun: fix the cause and submit the config again "
            "(`musicinterp submit CONFIG --out OUT`)"
        )


def _cannot_rerun_reason(client: SyncPrefectClient, bench: FlowRun, states: list[ShardState]) -> str | None:
    if bench.state is None or not bench.state.is_final() or bench.state.is_completed():
        return None
    try:
        check_rerunnable(client, bench, states)
    except CannotRerun as e:
        return str(e)
    return None


def describe(client: SyncPrefectClient, ref: str) -> dict[str, Any]:
    """What ``musicinterp status`` prints: the run, its benchmark, the shards and the artifacts."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.utilities.urls import url_for

    run = resolve_run(client, ref)
    bench = benchmark_run(client, run)
    arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[bench.id])))
    shards = shard_states(client, bench)
    params = bench.parameters or {}
    spec = params.get("spec") or {}
    return {
        "run": _run_info(client, run, url_for),
        "benchmark": _run_info(client, bench, url_for),
        "config": spec.get("name") if isinstance(spec, dict) else None,
        "out": params.get("out"),
        "only_shards": params.get("only_shards"),
        "shards": [asdict(s) for s in shards],
        "failed_shards": [s.shard for s in shards if s.failed],
        "cannot_rerun": _cannot_rerun_reason(client, bench, shards),
        "artifacts": sorted(a.key for a in arts if a.key),
    }


def _run_info(client: SyncPrefectClient, run: FlowRun, url_for) -> dict[str, Any]:
    return {
        "id": str(run.id),
        "name": run.name,
        "flow": _flow_name(client, run),
        "state": run.state.name if run.state else None,
        "final": bool(run.state and run.state.is_final()),
        "completed": bool(run.state and run.state.is_completed()),
        "message": (run.state.message or "") if run.state else "",
        "url": url_for(run),
    }


def _rerun_name() -> str:
    params = current_run.parameters
    shards = params.get("shards")
    what = "shards-" + "-".join(str(s) for s in shards) if shards else "failed-shards"
    try:
        with get_client(sync_client=True) as client:
            parent = client.read_flow_run(uuid.UUID(str(params.get("run_id"))))
        return f"rerun-{parent.name}-{what}"
    except Exception:  # noqa: BLE001 - a name is never worth failing the run for
        return f"rerun-{what}"


@flow(name=RERUN_FLOW, flow_run_name=_rerun_name, persist_result=True, result_serializer="json")
def rerun_failed_shards(run_id: str, shards: list[int] | None = None) -> dict[str, Any]:
    """Rerun the failed shards of a benchmark run into its store.

    The run's own parameters (config, output URL) are reused, so the shards land in the same store; shards
    run on the GPU pool. Refuses (:class:`CannotRerun`) failures a rerun would repeat (changed inputs, an
    invalid config), naming the command that helps. The Args below are the deployment form's descriptions.

    Args:
        run_id: The failed benchmark run: its flow run id, or its name (e.g. benchmark-demo; the newest run
            of that name), or an earlier rerun's. Its config and output folder are reused.
        shards: Shard numbers to run again. Leave empty to rerun every shard whose latest run did not
            complete (the usual choice).
    """
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        bench = benchmark_run(client, resolve_run(client, run_id))
    if bench.state is None or not bench.state.is_final():
        raise RuntimeError(
            f"benchmark run {bench.name!r} ({bench.id}) is still "
            f"{bench.state.name if bench.state else 'pending'}; rerun it once it has finished"
        )
    spec, out = run_parameters(bench)
    progress = read_progress_task(spec, out)
    with get_client(sync_client=True) as client:
        states = shard_states(client, bench, progress)
        check_rerunnable(client, bench, states)
    todo = sorted(set(shards)) if shards else [s.shard for s in states if s.failed]
    if not todo:
        logger.info("benchmark run %s (%s): every shard completed; nothing to rerun", bench.name, bench.id)
        return {"rerun_of": str(bench.id), "shards": [], "store": None}
    logger.info("rerunning shards %s of %s (%s)", todo, bench.name, bench.id)
    result = benchmark(spec=spec, out=out, dispatch="deployments", only_shards=todo)
    return {"rerun_of": str(bench.id), "shards": todo, **result}
