"""The benchmark flows: plan -> each shard (capture + annotate) -> summarise -> analyse.

``benchmark`` is the parent: it plans the slice and creates the store, then runs every shard as the
child flow ``benchmark-shard``, either in this process one after another (``dispatch="local"``, the
embedded default) or as deployment runs on a work pool (``dispatch="deployments"``, the fleet: see
deployments/). It tracks every shard's state, publishes progress and a shard table, summarises the
store and fails loudly with the list of failed shards. A rerun (``only_shards``) runs exactly the
shards it is given; the store's completion flags make any shard run idempotent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import wait
from prefect.runtime import flow_run

from musicinterp.config import RunSpec
from musicinterp.run import N_PLOTS, PreparedRun, RunPaths
from musicinterp.run.summary import link_findings
from musicinterp.store import completed_clips
from musicinterp_flows.analysis import analysis
from musicinterp_tasks.annotate import annotate_clip
from musicinterp_tasks.run import capture_shard, plan_run, shard_clips, summarise_run, summary_artifact

DEFAULT_OUT = "runs"
SHARD_DEPLOYMENT = "benchmark-shard/benchmark-shard"
ANALYSIS_DEPLOYMENT = "analysis/analysis"
RERUN_DEPLOYMENT = "rerun-failed-shards/rerun-failed-shards"
POLL_S = 2.0
ZOMBIE_HEARTBEATS = 3  # heartbeats a running shard may miss before it counts as crashed (its process died)
HEARTBEAT_CHECK_S = 30.0  # how often the parent looks for the running shards' heartbeats
PROGRESS_S = 10.0  # how often the parent counts the store's complete clips while shards run


class RunIncomplete(RuntimeError):
    """Some clips failed or were left out; everything else was captured and summarised."""


def artifact_key(name: str, what: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return f"{''.join(c if c.isalnum() else '-' for c in name.lower())}-{what}"


def _spec_name() -> str:
    spec = flow_run.parameters.get("spec")
    return spec.get("name") if isinstance(spec, dict) else getattr(spec, "name", "benchmark")


def _run_name() -> str:
    return f"benchmark-{_spec_name()}"


def _shard_run_name() -> str:
    return f"{_spec_name()}-shard-{flow_run.parameters.get('shard')}"


@flow(name="benchmark-shard", flow_run_name=_shard_run_name, persist_result=True, result_serializer="json")
def benchmark_shard(spec: RunSpec, prepared: PreparedRun, shard: int) -> dict[str, Any]:
    """Capture one shard's clips into the store and annotate them (one task per clip)."""
    capture = capture_shard.submit(spec.model, spec.capture, prepared, shard)
    annotations = []
    if spec.annotate:
        for index, clip in shard_clips(prepared, shard):
            annotations.append(annotate_clip.submit(spec.annotation, prepared, clip, index, plot=index < N_PLOTS))
    wait([capture, *annotations])
    failed = [f for f in (capture, *annotations) if f.state.is_failed()]
    if failed:
        raise RuntimeError(f"shard {shard}: " + "; ".join(str(f.state.message) for f in failed))
    return {"shard": shard, "capture": asdict(capture.result()), "annotated": len(annotations)}


def _run_local(spec: RunSpec, prepared: Any, shards: list[int], on_done, shard_flow=None) -> dict[int, dict[str, Any]]:
    """Run every shard as the child flow ``shard_flow`` (default ``benchmark_shard``) in this process."""
    out = {}
    for shard in shards:
        t0 = time.perf_counter()
        state = (shard_flow or benchmark_shard)(spec=spec, prepared=prepared, shard=shard, return_state=True)
        out[shard] = {
            "state": state.name,
            "failed": state.is_failed(),
            "message": state.message or "",
            "duration_s": round(time.perf_counter() - t0, 1),
            "worker": "local (this process)",
            "flow_run": str(state.state_details.flow_run_id or ""),
        }
        on_done(shard, out[shard])
    return out


def _run_deployments(
    spec: RunSpec,
    prepared: Any,
    shards: list[int],
    on_done,
    deployment: str = SHARD_DEPLOYMENT,
    key: str = "",
    on_poll: Callable[[], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Create one child run per shard on the shard ``deployment``, then follow them to a final state.

    ``key`` names the store's contents in the idempotency keys (default: the run's fingerprint and store uid).
    ``on_poll`` is called every ``PROGRESS_S`` seconds while shards run (the parent's clip count).
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    parent = flow_run.id
    runs = {}
    for shard in shards:
        # deterministic: a retry of this parent finds its children instead of starting them twice;
        # a rerun is another parent, so it gets fresh children
        base = key or f"{prepared.fingerprint}-{prepared.store_uid}"
        runs[shard] = run_deployment(
            deployment,
            parameters={"spec": spec, "prepared": prepared, "shard": shard},
            idempotency_key=f"{base}-shard{shard}-{parent}",
            timeout=0,
            as_subflow=True,
        )
    out: dict[int, dict[str, Any]] = {}
    zombie_after_s = zombie_after()
    checked = polled = time.monotonic()
    with get_client(sync_client=True) as client:
        while len(out) < len(runs):
            time.sleep(POLL_S)
            if on_poll is not None and time.monotonic() - polled >= PROGRESS_S:
                polled = time.monotonic()
                on_poll()
            check = time.monotonic() - checked >= HEARTBEAT_CHECK_S
            checked = time.monotonic() if check else checked
            for shard, run in runs.items():
                if shard in out:
                    continue
                fr = client.read_flow_run(run.id)
                if check and zombie_after_s is not None and fr.state is not None and fr.state.is_running():
                    fr = crash_if_silent(client, fr, zombie_after_s)
                if check and fr.state is not None and fr.state.is_pending():
                    fr = crash_if_orphaned(client, fr)
                if fr.state is not None and fr.state.is_final():
                    worker = fr.work_pool_name or ""
                    if fr.infrastructure_pid:
                        worker += f" (pid {fr.infrastructure_pid})"
                    out[shard] = {
                        "state": fr.state.name,
                        "failed": not fr.state.is_completed(),
                        "message": fr.state.message or "",
                        "attempts": fr.run_count,
                        "worker": worker,
                        "duration_s": round(fr.total_run_time.total_seconds(), 1),
                        "flow_run": str(fr.id),
                    }
                    on_done(shard, out[shard])
    return out


def zombie_after() -> float | None:
    """Seconds without a heartbeat after which a running shard is taken for dead: ``ZOMBIE_HEARTBEATS``
    heartbeat intervals (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, 30 s at least). None when heartbeats are off
    (Prefect's default): a healthy shard then sends none, and silence would say nothing about its process."""
    from prefect.settings import get_current_settings

    frequency = get_current_settings().flows.heartbeat_frequency
    return None if frequency is None else ZOMBIE_HEARTBEATS * float(frequency)


def last_sign_of_life(client, fr) -> datetime:
    """When a running flow run last showed it is alive: its latest heartbeat event, or its last state change."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    page = client.read_events(
        filter=EventFilter(
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{fr.id}"]),
        ),
        limit=1,
    )
    return max([fr.state.timestamp, *(e.occurred for e in page.events)])


def crash_if_silent(client, fr, after_s: float):
    """The zombie rule: a shard run that is Running but has sent no heartbeat for ``after_s`` seconds lost
    its process (a worker killed with SIGKILL, a node gone); mark it Crashed, naming why, so the parent
    fails naming the shard (``on_done`` logs the message) and ``rerun`` reruns it. Returns the flow run as it
    now is."""
    from prefect.states import Crashed

    silent_s = (datetime.now(UTC) - last_sign_of_life(client, fr)).total_seconds()
    if silent_s <= after_s:
        return fr
    message = (
        f"no heartbeat from shard run {fr.name!r} for {silent_s:.0f} s (over {after_s:.0f} s): its process "
        "died (worker killed?); marked crashed, `musicinterp rerun` reruns it"
    )
    client.set_flow_run_state(fr.id, Crashed(message=message), force=True)
    return client.read_flow_run(fr.id)


def crash_if_orphaned(client, fr):
    """The zombie rule for a shard run that never started: a worker claimed it (Pending, e.g. Submitting)
    and then died before the run's own process reached Running. Such a run sends no heartbeats and would
    stay Pending forever, so the worker's heartbeats speak for it: once the claiming worker (the run's
    ``prefect.worker.name`` label) has been silent for ``ZOMBIE_HEARTBEATS`` of its own heartbeat
    intervals, and the run has been Pending at least as long, mark it Crashed, naming why. A run whose
    worker is alive is left alone however long its infrastructure takes to start. Returns the flow run as
    it now is."""
    from prefect.states import Crashed

    name = (fr.labels or {}).get("prefect.worker.name")
    if not name or not fr.work_pool_name:
        return fr
    workers = [w for w in client.read_workers_for_work_pool(fr.work_pool_name) if w.name == name]
    if not workers or workers[0].last_heartbeat_time is None:
        return fr
    worker = workers[0]
    after_s = ZOMBIE_HEARTBEATS * float(worker.heartbeat_interval_seconds or 30)
    now = datetime.now(UTC)
    silent_s = (now - worker.last_heartbeat_time).total_seconds()
    pending_s = (now - fr.state.timestamp).total_seconds()
    if min(silent_s, pending_s) <= after_s:
        return fr
    message = (
        f"shard run {fr.name!r} was claimed by worker {name!r}, which has sent no heartbeat for {silent_s:.0f} s "
        f"(over {after_s:.0f} s) while the run was still {fr.state.name}: the worker died before the run "
        "started; marked crashed, `musicinterp rerun` reruns it"
    )
    client.set_flow_run_state(fr.id, Crashed(message=message), force=True)
    return client.read_flow_run(fr.id)


@flow(name="benchmark", flow_run_name=_run_name, persist_result=True, result_serializer="json")
def benchmark(
    spec: RunSpec = RunSpec(),
    out: str = DEFAULT_OUT,
    dispatch: Literal["local", "deployments"] = "local",
    only_shards: list[int] | None = None,
) -> dict[str, Any]:
    """Capture MusicGen's residual stream for every clip of the slice into one Zarr store, annotated.

    ``dispatch``: run the shards in this process ("local") or as runs of the ``benchmark-shard``
    deployment on a work pool ("deployments"). ``only_shards``: run just these shards (a rerun).
    """
    logger = get_run_logger()
    prepared = plan_run(spec, out)
    shards = list(range(prepared.n_shards)) if only_shards is None else sorted(set(only_shards))
    bad = [s for s in shards if not 0 <= s < prepared.n_shards]
    if bad:
        raise ValueError(f"only_shards: {bad} out of range; the run has shards 0..{prepared.n_shards - 1}")
    progress = create_progress_artifact(
        100.0 * max(_clips_done(prepared), 0) / max(prepared.n_clips, 1),
        key=artifact_key(spec.name, "progress"),
        description=f"{spec.name}: clips complete in the store, of {prepared.n_clips}",
    )

    def count_clips() -> None:
        done = _clips_done(prepared)
        if done >= 0:
            update_progress_artifact(progress, 100.0 * done / max(prepared.n_clips, 1))

    def on_done(shard: int, info: dict[str, Any]) -> None:
        count_clips()
        (logger.error if info["failed"] else logger.info)("shard %d: %s %s", shard, info["state"], info["message"])

    if dispatch == "local":
        states = _run_local(spec, prepared, shards, on_done)
    else:
        states = _run_deployments(spec, prepared, shards, on_done, on_poll=count_clips)
    summary = summarise_run(prepared, annotate=spec.annotate)
    by_shard = {s["shard"]: s for s in summary.shards}
    table = [
        {
            "shard": s,
            "clips": by_shard.get(s, {}).get("clips", ""),
            "state": states[s]["state"],
            "attempts": states[s].get("attempts", 1),
            "duration_s": states[s]["duration_s"],
            "worker": states[s]["worker"],
            "flow_run": _ui_url("flow-run", states[s].get("flow_run")) or states[s].get("flow_run", ""),
            "reason": states[s]["message"] if states[s]["failed"] else "",
        }
        for s in shards
    ]
    create_table_artifact(table, key=artifact_key(spec.name, "shards"), description=f"{spec.name}: shards")
    failed_shards = sorted(s for s, info in states.items() if info["failed"])
    problems = {**summary.failed, **{r["item"]: r["problem"] for r in summary.rejected}}
    messages = [states[s]["message"] for s in failed_shards] + list(problems.values())
    blocked = cannot_rerun(messages, summary.root)
    # what to do first (a failed run's next step), then the summary, then the shards with their runs
    todo = rerun_markdown(str(flow_run.id), messages, summary.root) if not summary.ok or failed_shards else ""
    create_markdown_artifact(
        todo + "\n" + summary_artifact(summary) + shards_markdown(table),
        key=artifact_key(spec.name, "summary"),
        description=f"{spec.name}: run summary",
    )
    logger.info("store: %s", summary.store)
    if not summary.ok or failed_shards:
        raise RunIncomplete(
            f"failed shards: {failed_shards}; {len(problems)} clip(s) or file(s) failed; the other "
            f"{summary.complete} clips are in {summary.store}: "
            + "; ".join(f"{k}: {v}" for k, v in problems.items())
            + (f"; a rerun cannot fix this: {blocked}" if blocked else "")
        )
    result = {"store": summary.store, "root": summary.root, "complete": summary.complete, "n_clips": summary.n_clips}
    if spec.analyze:
        started = time.perf_counter()
        result["analysis"] = _run_analysis(spec, summary.store, RunPaths(summary.root).analysis, dispatch)
        link_findings(RunPaths(summary.root), analyse_s=time.perf_counter() - started)
    return result


def _clips_done(prepared: PreparedRun) -> int:
    """Complete clips in the store, whichever shard wrote them; -1 when it cannot be read this instant."""
    try:
        return len(completed_clips(prepared.paths.store))
    except Exception:  # noqa: BLE001 - a progress count is never worth failing the run for
        return -1


def _ui_url(kind: str, obj_id: str | None) -> str | None:
    """The object's page in the Prefect UI; None without an id or a UI address."""
    from prefect.utilities.urls import url_for

    try:
        return url_for(kind, obj_id=obj_id) if obj_id else None
    except Exception:  # noqa: BLE001 - a link is never worth failing the run for
        return None


def shards_markdown(table: list[dict[str, Any]]) -> str:
    """The shard table for the summary artifact: each shard's run linked, a failure's reason in full."""
    lines = [
        "",
        "## Shards",
        "",
        "| shard | state | attempts | s | worker | run | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        run = f"[flow run]({r['flow_run']})" if str(r["flow_run"]).startswith("http") else str(r["flow_run"])
        reason = str(r["reason"]).replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {r['shard']} | {r['state']} | {r['attempts']} | {r['duration_s']} | {r['worker']} | {run} | {reason} |"
        )
    return "\n".join(lines) + "\n"


def cannot_rerun(messages: list[str], root: str) -> str | None:
    """Why a rerun of these failures would fail the same way, and the command that helps; None when a rerun
    can help. A rerun reuses the run's config and its planned inputs: changed inputs need a replan, a
    config error a corrected config."""
    text = "\n".join(messages)
    if "musicinterp replan" in text:
        return (
            f"the run's inputs changed since it was planned; a rerun would fail the same way. Run "
            f"`musicinterp replan {root}` first (it adds new files and redoes changed ones), then rerun"
        )
    if "ConfigError" in text or "invalid config" in text:
        return (
            "the run's config is invalid; a rerun reuses it and would fail the same way. Correct the config "
            "and submit it again (`musicinterp submit CONFIG --out OUT`, or `musicinterp run CONFIG --out OUT`)"
        )
    return None


def rerun_link(run_id: str) -> str | None:
    """The ``rerun-failed-shards`` deployment's run form in the UI with this run prefilled, or None when that
    deployment is not on the server (a run without deployments). The UI reads the form's values from the
    ``parameters`` query: JSON, URI-encoded, and encoded once more as a query value, as its own links do."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(RERUN_DEPLOYMENT)
    except Exception:  # noqa: BLE001 - no such deployment, or no server that has it
        return None
    page = _ui_url("deployment", str(deployment.id))
    if page is None:
        return None
    return f"{page}/run?parameters={quote(quote(json.dumps({'run_id': run_id}), safe=''), safe='')}"


def rerun_markdown(run_id: str, messages: list[str], root: str) -> str:
    """What to do about a failed run: the reason a rerun cannot help, or how to start one (UI and CLI)."""
    blocked = cannot_rerun(messages, root)
    if blocked:
        return f"\n## What to do\n\nA rerun cannot fix this: {blocked}.\n"
    lines = ["", "## Rerun the failed shards", ""]
    link = rerun_link(run_id)
    if link:
        lines.append(f"- in the UI: [start `rerun-failed-shards` for this run]({link}) (the form is filled in)")
    lines.append(f"- from a terminal: `musicinterp rerun {run_id}`")
    lines.append(
        "- without a server or deployments: run the same config again with `musicinterp run` and the same "
        "`--out`; the store's completion flags keep every complete clip"
    )
    return "\n".join(lines) + "\n"


def _run_analysis(spec: RunSpec, store: str, out: str, dispatch: str) -> dict[str, Any]:
    """The probe analysis of the finished store: a subflow here, or a run of the analysis deployment."""
    params = {"store": store, "spec": spec.analysis, "out": out, "control_store": spec.control_store, "name": spec.name}
    if dispatch == "local":
        return analysis(**params)
    from prefect.deployments import run_deployment

    run = run_deployment(
        ANALYSIS_DEPLOYMENT,
        parameters=params,
        as_subflow=True,
        idempotency_key=f"analysis-{spec.fingerprint()}-{flow_run.id}",
    )
    if not run.state or not run.state.is_completed():
        why = f"{run.state.name}: {run.state.message}" if run.state else "without a state"
        raise RuntimeError(f"analysis run {run.name} ({run.id}) ended {why}")
    return {"out": out, "flow_run": str(run.id)}
