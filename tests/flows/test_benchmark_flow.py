"""The benchmark flow on a real (test) Prefect server: stores, artifacts, failures named."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from factories import tone, write_tone, write_wav
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from musicinterp.config import RunSpec
from musicinterp.slice import Manifest
from musicinterp_flows.benchmark import RunIncomplete, benchmark

pytestmark = pytest.mark.flow


async def _artifact(key: str):
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
        )
    return found[0] if found else None


def test_benchmark_flow__captures_all_clips_and_publishes_artifacts(tmp_path):
    from pathlib import Path

    fast_analysis = {
        "targets": ["rec_within_2s"],
        "n_permutations": 9,
        "n_bootstrap": 50,
        "reduced_width": 8,
        "n_folds": 3,
        "inner_folds": 2,
    }
    spec = RunSpec(
        name="flow-ok",
        slice={"sources": [{"kind": "synthetic", "n_pieces": 3, "duration_s": 3.0}], "n_shards": 2},
        analysis=fast_analysis,
    )
    out = benchmark(spec=spec, out=str(tmp_path))
    ds = xr.open_zarr(out["store"])
    assert bool(ds["complete"].all()) and ds.sizes["clip"] == 3
    assert ds.attrs["weights"] == "random"
    table = asyncio.run(_artifact("flow-ok-shards"))
    summary = asyncio.run(_artifact("flow-ok-summary"))
    assert table is not None and summary is not None
    assert "weights: random" in summary.data
    assert summary.data.count("data:image/png;base64,") == 3  # annotation plots of the first clips
    assert bool(ds["annotated"].all()) and "rec_within_4s" in ds and "tension" in ds
    # the analysis ran on the finished store: results table with the documented columns, findings artifact
    results = pd.read_csv(f"{out['analysis']['out']}/results.csv")
    assert list(results.columns[:12]) == [
        "layer",
        "horizon",
        "target",
        "metric",
        "gain",
        "ci_low",
        "ci_high",
        "p_value",
        "q_value",
        "n_clips",
        "n_frames",
        "control",
    ]
    assert set(results["layer"]) == {0, 1, 2} and set(results["control"]) == {"none", "shifted-labels"}
    summary_md = (Path(out["root"]) / "summary.md").read_text()
    assert "[analysis/findings.md](analysis/findings.md)" in summary_md  # summary.md links the findings
    stages = json.loads((Path(out["root"]) / "summary.json").read_text())["stages"]  # every stage timed
    assert set(stages) == {"plan", "encode", "capture", "write", "capture_wall", "annotate", "analyse"}
    assert stages["plan"]["seconds"] > 0 and stages["analyse"]["seconds"] > 0
    assert stages["analyse"]["clips"] == out["complete"] and "| analyse |" in summary_md
    assert (Path(out["root"]) / "analysis" / "findings.md").exists()
    findings = asyncio.run(_artifact("flow-ok-findings"))
    assert findings is not None and "weights: random" in findings.data

    # a second run of the same config is the same run: nothing is recaptured (no activation chunk rewritten)
    def chunk_stamps() -> dict[str, int]:
        return {str(f): f.stat().st_mtime_ns for f in (Path(out["store"]) / "resid").rglob("*") if f.is_file()}

    before = chunk_stamps()
    again = benchmark(spec=spec, out=str(tmp_path))
    assert again["store"] == out["store"] and len(before) > 0
    assert chunk_stamps() == before


def test_benchmark_flow__bad_inputs_are_named_and_the_rest_completes(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_wav(audio / "good.wav", tone(3.0, freq_hz=220))
    write_wav(audio / "silent.flac", np.zeros(3 * 32000, dtype=np.float32))
    write_wav(audio / "short.wav", np.zeros(8000, dtype=np.float32) + 0.1)
    nan = tone(3.0, freq_hz=220)
    nan[100:200] = np.nan
    write_wav(audio / "nan.wav", nan, subtype="FLOAT")
    write_wav(audio / "empty.wav", np.zeros(0, dtype=np.float32))
    (audio / "garbage.ogg").write_bytes(b"this is not audio")
    spec = RunSpec(
        name="flow-bad",
        slice={
            "sources": [
                {"kind": "audio_dir", "path": str(audio)},
                {"kind": "audio_dir", "path": str(tmp_path / "missing")},
                {"kind": "synthetic", "n_pieces": 1, "duration_s": 2.0},
            ],
            "n_shards": 2,
        },
    )
    state = benchmark(spec=spec, out=str(tmp_path / "out"), return_state=True)
    assert state.is_failed()
    with pytest.raises(RunIncomplete) as e:
        state.result()
    msg = str(e.value)
    for name in ("short.wav", "nan.wav", "empty.wav", "garbage.ogg", "missing"):
        assert name in msg, name
    roots = list((tmp_path / "out").iterdir())
    manifest = Manifest.from_json(roots[0] / "manifest.json")
    ds = xr.open_zarr(roots[0] / "store.zarr")
    assert bool(ds["complete"].all()) and ds.sizes["clip"] == 3  # good, silent, synthetic
    silent = {c.clip_id: c.silent for c in manifest.clips}
    assert [c for c, s in silent.items() if s] == [c for c in silent if "silent" in c]
    summary = (roots[0] / "summary.md").read_text()
    assert "nan.wav" in summary and "weights: random" in summary


def test_benchmark_flow__rerun_of_the_failed_shard_completes_the_store(tmp_path):
    from musicinterp import run

    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(4):
        write_tone(audio / f"{i}.wav", 2.5, freq_hz=200 + 60 * i)
    spec = RunSpec(
        name="flow-rerun",
        slice={"sources": [{"kind": "audio_dir", "path": str(audio)}], "n_shards": 4},
        annotate=False,
        analyze=False,
    )
    clean = benchmark(spec=spec, out=str(tmp_path / "clean"))

    prepared = run.prepare_run(spec, str(tmp_path / "faulty"))  # the flow reopens this run
    clips = Manifest.from_json(f"{prepared.root}/manifest.json").clips
    victim = next(c for c in clips if c.clip_id.startswith("audio_dir:2"))
    original = (audio / "2.wav").read_bytes()
    write_wav(audio / "2.wav", np.zeros(int(2.5 * 32000), np.float32), subtype="FLOAT")  # the fault: the file changed
    state = benchmark(spec=spec, out=str(tmp_path / "faulty"), return_state=True)
    assert state.is_failed()
    with pytest.raises(RunIncomplete, match=rf"failed shards: \[{victim.shard}\]") as e:
        state.result()
    assert "a rerun cannot fix this: the run's inputs changed" in str(e.value)
    assert f"musicinterp replan {prepared.root}" in str(e.value)
    # live progress counts clips, not shards; the table links each shard's run and gives the reason
    assert asyncio.run(_artifact("flow-rerun-progress")).data == pytest.approx(75.0)
    rows = {r["shard"]: r for r in json.loads(asyncio.run(_artifact("flow-rerun-shards")).data)}
    assert "audio changed" in rows[victim.shard]["reason"] and rows[victim.shard]["flow_run"]
    assert all(r["reason"] == "" for s, r in rows.items() if s != victim.shard)
    summary = asyncio.run(_artifact("flow-rerun-summary")).data
    assert "A rerun cannot fix this" in summary and f"musicinterp replan {prepared.root}" in summary
    assert "musicinterp rerun" not in summary  # never the command that would fail the same way
    # the rerun refuses it too while the input differs from the plan (until a replan, or the file put back)
    from musicinterp_flows.rerun import CannotRerun, check_rerunnable, shard_states

    with get_client(sync_client=True) as client:
        bench = client.read_flow_run(state.state_details.flow_run_id)
        with pytest.raises(CannotRerun, match="musicinterp replan"):
            check_rerunnable(client, bench, shard_states(client, bench))
        (audio / "2.wav").write_bytes(original)  # the input as planned again: a rerun can fix it now
        check_rerunnable(client, bench, shard_states(client, bench))

    # fixed above; rerun exactly the failed shard
    again = benchmark(spec=spec, out=str(tmp_path / "faulty"), only_shards=[victim.shard])
    shard_records = sorted((tmp_path / "faulty").glob("*/shards/*.json"))
    captured = {json.loads(p.read_text())["shard"]: json.loads(p.read_text())["captured"] for p in shard_records}
    assert captured[victim.shard] == [victim.clip_id]  # only the failed clip was captured again
    a, b = xr.open_zarr(clean["store"]), xr.open_zarr(again["store"])
    for var in ("resid", "codes", "complete", "sha256"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)


def test_benchmark_flow__completion_flags_not_the_cache_decide_what_is_captured(tmp_path):
    """A clip whose flag was reset (or whose chunks were damaged) is captured again by the next run;
    Prefect's task cache once skipped the shard and failed with "failed shards: []"."""
    from pathlib import Path

    from musicinterp.store import mark_complete

    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(3):
        write_tone(audio / f"{i}.wav", 1.5, freq_hz=250 + 60 * i)
    spec = RunSpec(
        name="flow-flags",
        slice={"sources": [{"kind": "audio_dir", "path": str(audio)}], "n_shards": 1},
        annotate=False,
        analyze=False,
    )
    first = benchmark(spec=spec, out=str(tmp_path))
    ds = xr.open_zarr(first["store"])
    clips = [str(c) for c in ds["clip"].values]
    mark_complete(first["store"], clips[1], done=False)  # e.g. `inspect --verify` found it damaged
    next(p for p in Path(first["store"], "resid", "c", "2").rglob("*") if p.is_file()).unlink()
    again = benchmark(spec=spec, out=str(tmp_path))
    assert again["complete"] == 3
    record = json.loads(next(Path(first["root"]).glob("shards/*.json")).read_text())
    assert sorted(record["captured"]) == sorted([clips[1], clips[2]]) and list(record["repaired"]) == [clips[2]]
    assert np.isfinite(xr.open_zarr(again["store"])["resid"].values).all()  # 1.5 s clips: no padding


def test_run_command__layers_the_model_lacks_exit_2_naming_the_field_without_retry(tmp_path, capsys):
    import yaml

    from musicinterp_cli import main

    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "flow-layers",
                "slice": {"sources": [{"kind": "synthetic", "n_pieces": 1, "duration_s": 2.0}], "n_shards": 1},
                "capture": {"layers": [0, 99]},
                "annotate": False,
                "analyze": False,
            }
        )
    )
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr()
    assert "capture.layers: [99] out of range" in err.out + err.err
    assert "Retry" not in err.out + err.err  # a config error is not retried


def test_benchmark_flow__tokens_in_the_environment_are_written_nowhere(tmp_path, monkeypatch):
    """A Hugging Face and an AWS token set during a run appear in no file it writes: run folder, store,
    records, Prefect's database and result storage."""
    from pathlib import Path

    from prefect.settings import get_current_settings

    sentinel = "hf_SENTINELtoken0123456789abcdef"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, sentinel)
    spec = RunSpec(
        name="flow-secret",
        slice={"sources": [{"kind": "synthetic", "n_pieces": 2, "duration_s": 2.0}], "n_shards": 2},
        annotate=False,
        analyze=False,
    )
    benchmark(spec=spec, out=str(tmp_path))
    settings = get_current_settings()
    db_url = str(settings.server.database.connection_url.get_secret_value())
    searched = [tmp_path, Path(settings.home)]
    if db_url.startswith("sqlite"):
        searched.append(Path(db_url.split("///", 1)[1]).parent)
    files = [f for root in searched for f in Path(root).rglob("*") if f.is_file()]
    for f in files:
        assert sentinel.encode() not in f.read_bytes(), f
    assert any(f.suffix == ".zarr" or "store.zarr" in str(f) for f in files)  # the store's chunks
    assert not db_url.startswith("sqlite") or any(f.suffix == ".db" for f in files)  # Prefect's database


def test_zombie_rule__a_running_shard_without_heartbeats_is_marked_crashed():
    """A shard run whose process was SIGKILLed stays Running on the server forever; the parent's zombie
    rule (no heartbeat for ZOMBIE_HEARTBEATS intervals) marks it Crashed, naming why."""
    import time

    from prefect import flow as prefect_flow
    from prefect.states import Running

    from musicinterp_flows.benchmark import crash_if_silent, zombie_after

    @prefect_flow(name="benchmark-shard-zombie-test")
    def victim() -> None:  # never run: only its flow run's states matter
        pass

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        assert zombie_after() is None  # heartbeats off: silence is no sign of death
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        assert zombie_after() == 90  # three missed heartbeats
    with get_client(sync_client=True) as client:
        fr = client.create_flow_run(victim, name="zombie-shard-0")
        client.set_flow_run_state(fr.id, Running(), force=True)
        fr = client.read_flow_run(fr.id)
        assert crash_if_silent(client, fr, after_s=3600).state.is_running()  # recently alive: left alone
        time.sleep(1.5)
        crashed = crash_if_silent(client, client.read_flow_run(fr.id), after_s=1.0)
    assert crashed.state.is_crashed() and "no heartbeat from shard run 'zombie-shard-0'" in crashed.state.message


def test_zombie_rule__a_pending_shard_whose_worker_died_is_marked_crashed():
    """A worker killed after claiming a shard but before the shard's process reached Running leaves the run
    Pending (Submitting) forever, with no heartbeats of its own (seen in CI). Its worker's heartbeats decide:
    silent for three of its intervals -> Crashed, naming the worker; a live worker's pending run is left alone."""
    import time

    from prefect import flow as prefect_flow
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Pending

    from musicinterp_flows.benchmark import crash_if_orphaned

    @prefect_flow(name="benchmark-shard-orphan-test")
    def victim() -> None:  # never run: only its flow run's states matter
        pass

    pool = "orphan-test-pool"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment = client.create_deployment(flow_id=client.create_flow(victim), name="orphan", work_pool_name=pool)
        runs = {}
        for worker in ("dead-worker", "live-worker"):
            client.send_worker_heartbeat(pool, worker, heartbeat_interval_seconds=1)
            fr = client.create_flow_run_from_deployment(deployment, name=f"shard-of-{worker}")
            client.update_flow_run_labels(fr.id, {"prefect.worker.name": worker})
            client.set_flow_run_state(fr.id, Pending(name="Submitting"), force=True)
            runs[worker] = fr.id
        fresh = crash_if_orphaned(client, client.read_flow_run(runs["dead-worker"]))
        assert fresh.state.is_pending()  # just claimed: left alone
        for _ in range(10):  # the live worker keeps beating; the dead one does not
            time.sleep(0.5)
            client.send_worker_heartbeat(pool, "live-worker", heartbeat_interval_seconds=1)
        dead = crash_if_orphaned(client, client.read_flow_run(runs["dead-worker"]))
        live = crash_if_orphaned(client, client.read_flow_run(runs["live-worker"]))
    assert dead.state.is_crashed(), dead.state
    assert "claimed by worker 'dead-worker'" in dead.state.message and "Submitting" in dead.state.message
    assert live.state.is_pending(), live.state


def test_rerun_markdown__links_the_prefilled_rerun_form_and_the_command():
    """A failure a rerun can fix: the summary links the rerun deployment's form with the run filled in (the UI
    reads the ``parameters`` query, JSON encoded twice, as its own links are) and gives the CLI command."""
    from urllib.parse import unquote

    from musicinterp_flows.benchmark import rerun_markdown
    from musicinterp_flows.rerun import rerun_failed_shards

    run_id = "0b7e6c2c-0000-4000-8000-000000000001"
    message = "shard 1: worker killed"
    assert "in the UI" not in rerun_markdown(run_id, [message], "/runs/x")  # no deployment on the server yet
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(rerun_failed_shards)
        deployment_id = client.create_deployment(flow_id=flow_id, name="rerun-failed-shards")
    text = rerun_markdown(run_id, [message], "/runs/x")
    assert f"`musicinterp rerun {run_id}`" in text
    link = text.split("for this run](", 1)[1].split(")", 1)[0]
    assert f"/deployments/deployment/{deployment_id}/run?parameters=" in link
    assert json.loads(unquote(unquote(link.split("parameters=", 1)[1]))) == {"run_id": run_id}
