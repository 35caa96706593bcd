"""Faults a fleet has, reproduced on real stores on disk: half-made stores, damaged chunks, changed
inputs, full disks. Each test first reproduced the fault (it failed before the fix)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from factories import write_tone

from musicinterp import run
from musicinterp.config import RunSpec
from musicinterp.run.records import read_shard_records
from musicinterp.store import StoreError, describe_store


def _audio_spec(folder, name="rel", n_shards=2, annotate=False) -> RunSpec:
    return RunSpec(
        name=name,
        slice={"name": name, "sources": [{"kind": "audio_dir", "path": str(folder)}], "n_shards": n_shards},
        annotate=annotate,
    )


def _tones(folder: Path, n: int = 3, seconds: float = 1.5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_tone(folder / f"{i}.wav", seconds, freq_hz=220 + 60 * i)


def _age(folder: str | Path, seconds: float = 3600) -> None:
    """Make every file under ``folder`` look ``seconds`` old: the creator is long gone."""
    past = time.time() - seconds
    for p in Path(folder).rglob("*"):
        os.utime(p, (past, past))


def _disk_full_on_call(monkeypatch, n: int) -> None:
    """``xarray.Dataset.to_zarr`` raises ENOSPC from its ``n``-th call on (a disk that fills up)."""
    real = xr.Dataset.to_zarr
    calls = {"n": 0}

    def to_zarr(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_zarr", to_zarr)


# 1. A half-made store -------------------------------------------------------------------------------


def test_half_made_store__out_of_disk_in_init_is_rebuilt_not_resumed(tmp_path, monkeypatch):
    _tones(tmp_path / "audio")
    spec = _audio_spec(tmp_path / "audio")
    _disk_full_on_call(monkeypatch, 2)  # the template's metadata is written, its small variables are not
    with pytest.raises(OSError):
        run.prepare_run(spec, str(tmp_path / "out"))
    monkeypatch.undo()
    store = run.RunPaths.for_spec(spec, str(tmp_path / "out")).store
    assert Path(store, "zarr.json").exists()
    with pytest.raises(StoreError, match="never finished"):
        describe_store(store)  # inspect says so, instead of a KeyError
    _age(store)
    summary = run.run_inline(spec, str(tmp_path / "out"))
    assert summary.ok and summary.complete == 3
    ds = xr.open_zarr(store)
    assert (ds["n_frames"].values == 75).all() and all(len(s) == 64 for s in ds["sha256"].values)


def test_half_made_store__killed_while_writing_the_template_is_rebuilt(tmp_path):
    import shutil

    _tones(tmp_path / "audio")
    spec = _audio_spec(tmp_path / "audio")
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    store = prepared.paths.store
    # what a kill during the template leaves: the root metadata and some arrays, not the flags
    shutil.rmtree(Path(store, "complete"))
    root = Path(store, "zarr.json")
    root.write_text(root.read_text().replace('"store_ready": true', '"store_ready": false'))
    with pytest.raises(StoreError, match="never finished"):
        describe_store(store)
    _age(store)
    summary = run.run_inline(spec, str(tmp_path / "out"))
    assert summary.ok and summary.complete == 3


def test_half_made_store__a_young_one_is_waited_for_not_deleted(tmp_path, monkeypatch):
    """Two runs of one config at once: the second finds the first's store still being created."""
    from musicinterp import store as store_mod

    _tones(tmp_path / "audio")
    spec = _audio_spec(tmp_path / "audio")
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    root = Path(prepared.paths.store, "zarr.json")
    ready = root.read_text()
    root.write_text(ready.replace('"store_ready": true', '"store_ready": false'))
    monkeypatch.setattr(store_mod, "TEMPLATE_POLL_S", 0.05)
    monkeypatch.setattr(store_mod, "TEMPLATE_STALE_S", 1.0)
    # the "other writer" finishes 0.3 s later
    import threading

    threading.Timer(0.3, lambda: root.write_text(ready)).start()
    again = run.prepare_run(spec, str(tmp_path / "out"))
    assert again.store_uid == prepared.store_uid  # the same store: it was not rebuilt


def test_half_made_store__an_entry_vanishing_while_listed_does_not_make_it_look_abandoned(tmp_path):
    """zarr writes each file to a temporary name and renames it, so listing a store that another run is creating
    can meet an entry that vanished between being listed and being read. fsspec's walk then drops the whole
    directory silently: the young store looked empty, timeless, hence abandoned, and was deleted under its
    creator (seen once in the four-writers test under load). Its age must come from a listing that worked."""
    import os

    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    from musicinterp import store as store_mod

    _tones(tmp_path / "audio")
    store = run.prepare_run(_audio_spec(tmp_path / "audio"), str(tmp_path / "out")).paths.store
    vanished = {"left": 2}

    class Vanishing(LocalFileSystem):  # a real disk whose root listing meets a renamed temp file, twice
        protocol = "vanishing"

        @classmethod
        def _strip_protocol(cls, path):
            return LocalFileSystem._strip_protocol(str(path).removeprefix("vanishing://"))

        def ls(self, path, detail=False, **kwargs):
            if self._strip_protocol(path).rstrip("/") == store.rstrip("/") and vanished["left"] > 0:
                vanished["left"] -= 1
                raise FileNotFoundError(2, "No such file or directory", f"{store}/zarr.json.tmp")
            return super().ls(path, detail=detail, **kwargs)

    fsspec.register_implementation("vanishing", Vanishing, clobber=True)
    assert store_mod._last_write_age_s("vanishing://" + store) < 60  # young: listed again, not "no times"
    assert vanished["left"] == 0
    old = 1_000_000_000  # 2001: a store nobody has written to since is still found abandoned
    for f in Path(store).rglob("*"):
        os.utime(f, (old, old))
    assert store_mod._last_write_age_s(store) > store_mod.TEMPLATE_STALE_S


# 2. Integrity ---------------------------------------------------------------------------------------


def _chunk_files(store: str, var: str, index: int) -> list[Path]:
    return sorted(p for p in Path(store, var, "c", str(index)).rglob("*") if p.is_file())


def test_damaged_store__missing_and_truncated_chunks_named_and_repaired_by_a_rerun(tmp_path, capsys):
    from musicinterp.store import verify_clips

    _tones(tmp_path / "audio", n=4)
    spec = _audio_spec(tmp_path / "audio")
    first = run.run_inline(spec, str(tmp_path / "out"))
    clean = xr.open_zarr(first.store).load()
    clips = [str(c) for c in clean["clip"].values]
    assert verify_clips(first.store) == {}
    _chunk_files(first.store, "resid", 0)[0].unlink()  # a chunk deleted
    (victim,) = _chunk_files(first.store, "codes", 2)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a chunk truncated
    assert describe_store(first.store)["complete"] == clips  # the flags alone say nothing is wrong
    damaged = describe_store(first.store, verify=True)["damaged"]
    assert set(damaged) == {clips[0], clips[2]}
    assert "resid: a chunk is missing" in damaged[clips[0]] and "codes: a chunk cannot be read" in damaged[clips[2]]

    from musicinterp_cli import main

    assert main(["inspect", first.store, "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"damaged {clips[0]}" in out.replace("\n", " ") and "2 complete clip(s) damaged" in out
    progress = run.read_progress(run.RunPaths(first.root), annotate=False, verify=True)
    shard_of = {str(c): int(s) for c, s in zip(clean["clip"].values, clean["shard"].values)}
    assert not progress.finished & {shard_of[clips[0]], shard_of[clips[2]]}  # a rerun redoes their shards

    again = run.run_inline(spec, str(tmp_path / "out"))
    assert again.ok and verify_clips(again.store) == {}
    assert main(["inspect", again.store, "--verify"]) == 0
    repaired = {c: why for s in read_shard_records(run.RunPaths(again.root)) for c, why in s.repaired.items()}
    assert set(repaired) == {clips[0], clips[2]}
    assert sum(s["captured"] for s in again.shards) == 2  # only the damaged clips were captured again
    fixed = xr.open_zarr(again.store)
    for var in ("resid", "codes", "complete"):
        np.testing.assert_array_equal(fixed[var].values, clean[var].values, err_msg=var)


def test_damaged_store__analysis_refuses_naming_the_clip(tmp_path):
    from musicinterp.analysis.data import AnalysisError, reduce_layer
    from musicinterp.config import AnalysisSpec

    _tones(tmp_path / "audio", n=2, seconds=2.5)
    summary = run.run_inline(_audio_spec(tmp_path / "audio", n_shards=1, annotate=True), str(tmp_path / "out"))
    clip = str(xr.open_zarr(summary.store)["clip"].values[1])
    for f in _chunk_files(summary.store, "resid", 1):
        f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(AnalysisError, match=f"clip '{clip}'.*damaged"):
        reduce_layer(summary.store, 1, AnalysisSpec(frame_stride=4), tmp_path / "l1.npz")


# 5. Errors that name the cause ----------------------------------------------------------------------


def test_full_disk__names_the_store_and_the_same_command_resumes_after(tmp_path, flaky_disk):
    _tones(tmp_path / "audio", n=3)
    spec = _audio_spec(tmp_path / "audio", n_shards=1)
    clean = run.run_inline(spec, str(tmp_path / "clean"))
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    paths = run.RunPaths("flaky://" + prepared.root)  # the same disk through fsspec, where it fills up
    for fragment in ("/complete/c/0", "/resid/c/1/", "/resid/c/2/"):  # the first clip's data fits, then it is full
        flaky_disk[fragment] = [99, errno.ENOSPC]
    result = run.capture_shard(spec.model, spec.capture, paths, 0)
    flaky_disk.clear()
    assert len(result.captured) == 0 and len(result.failed) == 3  # the first wrote its data, not its flag
    for reason in result.failed.values():
        assert f"into store {paths.store!r}: No space left on device" in reason
    summary = run.run_inline(spec, str(tmp_path / "out"))  # space freed: the same command
    assert summary.ok and sum(s["captured"] for s in summary.shards) == 3
    a, b = xr.open_zarr(clean.store), xr.open_zarr(summary.store)
    for var in ("resid", "codes", "complete"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)


def test_records__written_atomically_a_cut_write_leaves_the_old_file(tmp_path):
    from musicinterp.run.records import atomic_write, write_json

    target = tmp_path / "shards" / "00000.json"
    write_json(str(target), {"shard": 0, "captured": ["a"]})

    def cut_short(path: str) -> None:
        Path(path).write_text('{"shard": 0, "capt')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"cannot write '{target}': No space left on device"):
        atomic_write(str(target), cut_short)
    assert target.read_text().startswith("{") and '"captured"' in target.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["00000.json"]  # no temporary left behind


def test_shard_table__captured_on_a_retry_is_not_called_skipped(tmp_path, monkeypatch):
    _tones(tmp_path / "audio", n=4)
    spec = _audio_spec(tmp_path / "audio", n_shards=1)
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    real_mark, calls = run.capture.mark_complete, {"n": 0}

    def killed_at_the_third(url, clip_id, done=True):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("worker killed")
        real_mark(url, clip_id, done)

    monkeypatch.setattr(run.capture, "mark_complete", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        run.capture_shard(spec.model, spec.capture, prepared.paths, 0)
    monkeypatch.undo()
    retry = run.capture_shard(spec.model, spec.capture, prepared.paths, 0)  # the task's retry
    assert len(retry.captured_earlier) == 2 and len(retry.captured) == 2 and retry.skipped == []
    assert retry.attempt == 2
    summary = run.summarise_run(prepared, annotate=False)
    assert summary.shards[0]["captured_earlier"] == 2 and summary.shards[0]["skipped"] == 0
    md = Path(prepared.paths.summary_md).read_text()
    assert "| 0 | 4 | 2 | 2 | 0 | 0 |" in md
    again = run.capture_shard(spec.model, spec.capture, prepared.paths, 0)  # every clip done: all "earlier"
    assert len(again.captured_earlier) == 4 and again.captured == [] and again.attempt == 3


def test_plan_task__config_and_store_errors_are_not_retried():
    from prefect.states import Failed

    from musicinterp.config import ConfigError
    from musicinterp_tasks.run import retry_unless_permanent

    assert not retry_unless_permanent(None, None, Failed(data=ConfigError("capture.layers: [99] out of range")))
    assert not retry_unless_permanent(None, None, Failed(data=StoreError("store 'x' holds config 'a', not 'b'")))
    assert retry_unless_permanent(None, None, Failed(data=OSError(errno.EIO, "I/O error")))  # transient: retried


# 4. A run's identity includes its inputs -----------------------------------------------------------


def test_audio_folder__new_and_changed_files_flagged_then_replan_redoes_only_them(tmp_path, capsys):
    from musicinterp_cli import main

    audio = tmp_path / "audio"
    _tones(audio, n=3, seconds=2.5)
    spec = _audio_spec(audio, annotate=True)
    first = run.run_inline(spec, str(tmp_path / "out"))
    assert first.ok
    write_tone(audio / "3.wav", 2.5, freq_hz=700)  # a file added after the run
    write_tone(audio / "1.wav", 2.5, freq_hz=999)  # a file changed after the run
    flagged = run.run_inline(spec, str(tmp_path / "out"))
    assert not flagged.ok and flagged.complete == 3  # nothing silently "complete"
    problems = {r["item"]: r["problem"] for r in flagged.rejected}
    assert "new since the run was planned" in problems["audio_dir:3.wav@0s"]
    assert "audio changed since the run was planned" in problems["audio_dir:1.wav@0s"]
    assert f"musicinterp replan {first.root}" in problems["audio_dir:3.wav@0s"]

    assert main(["replan", first.root]) == 0
    out = capsys.readouterr().err  # the console writes to stderr
    assert "1 new, 1 changed, 0 gone; 2 complete clips kept" in " ".join(out.split())
    again = run.run_inline(spec, str(tmp_path / "out"))
    assert again.ok and again.complete == 4 and again.annotated == 4
    plots = Path(again.root) / "plots"  # the kept clips' plots, dropped with the old rows, are drawn again
    assert sorted(f.name for f in plots.glob("*.png")) == [f"{i:05d}.png" for i in range(run.N_PLOTS)]
    assert sorted(c for s in read_shard_records(run.RunPaths(again.root)) for c in s.captured) == [
        "audio_dir:1.wav@0s",
        "audio_dir:3.wav@0s",
    ]
    clean = run.run_inline(spec, str(tmp_path / "clean"))  # the folder as it is now, from scratch
    a, b = xr.open_zarr(clean.store), xr.open_zarr(again.store)
    for var in ("resid", "codes", "complete", "annotated", "sha256", "rec_within_4s", "tension"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    assert main(["replan", first.root]) == 0 and "nothing to do" in capsys.readouterr().err


@pytest.mark.parametrize("staged", ["whole", "half-made"])
def test_replan_killed_between_its_renames__the_next_command_finishes_the_swap(tmp_path, staged):
    """A replan killed after moving the old store aside but before moving the new one in leaves no store.zarr
    (the on-disk state is made here by hand: the kill's exact moment). The next run puts the staged store in
    place when it is whole, or the old store back when it is not: nothing complete is captured again."""
    import shutil

    from musicinterp.run.swap import RETIRED_DIR, STAGING_DIR

    audio = tmp_path / "audio"
    _tones(audio, n=3, seconds=1.5)
    spec = _audio_spec(audio, n_shards=1)
    first = run.run_inline(spec, str(tmp_path / "out"))
    assert first.ok
    root = Path(first.root)
    before = xr.open_zarr(first.store)["resid"].values
    if staged == "whole":
        shutil.copytree(root / "store.zarr", root / STAGING_DIR)
    else:  # the new store had only begun: no ready flag
        (root / STAGING_DIR).mkdir()
        (root / STAGING_DIR / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (root / "store.zarr").rename(root / RETIRED_DIR)

    again = run.run_inline(spec, str(tmp_path / "out"))
    assert again.ok and again.complete == 3
    assert not (root / RETIRED_DIR).exists()
    assert [c for s in read_shard_records(run.RunPaths(again.root)) for c in s.captured] == []  # nothing recaptured
    np.testing.assert_array_equal(xr.open_zarr(again.store)["resid"].values, before)


# 6. Safety -----------------------------------------------------------------------------------------


def test_no_pickle_is_ever_loaded__torch_load_and_np_load_calls():
    """Every ``torch.load`` passes ``weights_only=True``; no ``np.load`` allows pickles; Prefect results of
    the run pipeline are JSON."""
    import ast

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [p for d in ("musicinterp", "flows", "tasks", "cli", "benchmarks") for p in (root / d).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            if owner == "torch" and node.func.attr == "load":
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            elif owner == "np" and node.func.attr == "load":
                ok = not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is True)
            else:
                continue
            if not ok:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []

    from musicinterp_flows.benchmark import benchmark, benchmark_shard
    from musicinterp_flows.rerun import rerun_failed_shards
    from musicinterp_tasks.annotate import annotate_clip
    from musicinterp_tasks.run import capture_shard, plan_run

    for f in (benchmark, benchmark_shard, rerun_failed_shards, plan_run, capture_shard, annotate_clip):
        assert f.result_serializer == "json", f.name


# 7. Determinism ------------------------------------------------------------------------------------


def test_determinism__the_same_config_twice_gives_identical_stores(tmp_path):
    spec = RunSpec(
        name="det",
        slice={"sources": [{"kind": "synthetic", "n_pieces": 2, "duration_s": 4.0, "seed": 3}], "n_shards": 2},
    )
    a = run.run_inline(spec, str(tmp_path / "a"))
    b = run.run_inline(spec, str(tmp_path / "b"))
    assert a.ok and b.ok
    da, db = xr.open_zarr(a.store), xr.open_zarr(b.store)
    assert set(da.data_vars) == set(db.data_vars)
    for var in da.data_vars:
        np.testing.assert_array_equal(da[var].values, db[var].values, err_msg=var)
    same = {k: v for k, v in da.attrs.items() if k != "store_uid"}
    assert same == {k: v for k, v in db.attrs.items() if k != "store_uid"}
    assert Path(a.root, "manifest.json").read_text() == Path(b.root, "manifest.json").read_text()


def test_encoder_numerics__a_store_encoded_with_two_thread_counts_says_so_per_clip(tmp_path):
    """EnCodec's codes depend on the torch thread count (a few % of them flip), so the shard records keep how
    each clip was encoded, across attempts, and the summary says when a store's clips were encoded differently."""
    import torch

    from musicinterp.store import mark_complete

    spec = RunSpec(
        name="numerics",
        slice={"sources": [{"kind": "synthetic", "n_pieces": 3, "duration_s": 2.0, "seed": 5}], "n_shards": 1},
        annotate=False,
    )
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = run.capture_shard(spec.model, spec.capture, prepared.paths, 0)
        redo = first.captured[1]
        mark_complete(prepared.paths.store, redo, done=False)  # as if its chunks were lost: captured again
        torch.set_num_threads(2)
        run.capture_shard(spec.model, spec.capture, prepared.paths, 0)
    finally:
        torch.set_num_threads(threads)
    (record,) = read_shard_records(prepared.paths)
    assert set(record.encoded_with) == set(first.captured)  # the earlier attempt's clips keep theirs
    assert "2 torch threads" in record.encoded_with[redo]
    assert all("1 torch thread," in record.encoded_with[c] for c in first.captured if c != redo)
    summary = run.summarise_run(prepared, annotate=False)
    assert sorted(len(c) for c in summary.encoded_with.values()) == [1, 2]
    md = Path(prepared.paths.summary_md).read_text()
    assert "codes were computed in 2 ways" in md and "1 torch thread," in md


def test_manifest__a_path_outside_the_data_roots_is_refused_naming_the_clip(tmp_path):
    import json

    from musicinterp.slice import Manifest

    _tones(tmp_path / "audio", n=2)
    write_tone(tmp_path / "elsewhere.wav", 1.5, freq_hz=220)  # same samples as 0.wav: only the path is wrong
    spec = _audio_spec(tmp_path / "audio", n_shards=1)
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    manifest = json.loads(Path(prepared.paths.manifest).read_text())
    manifest["clips"][0]["locator"] = json.dumps({"path": str(tmp_path / "audio" / ".." / "elsewhere.wav")})
    Path(prepared.paths.manifest).write_text(json.dumps(manifest))
    victim = Manifest.from_json(prepared.paths.manifest).clips[0].clip_id
    result = run.capture_shard(spec.model, spec.capture, prepared.paths, 0, roots=prepared.data_roots)
    assert list(result.failed) == [victim] and "outside the run's data roots" in result.failed[victim]
    assert len(result.captured) == 1
    with pytest.raises(Exception, match="outside the run's data roots"):
        run.annotate_one(
            spec.annotation,
            prepared.paths,
            Manifest.from_json(prepared.paths.manifest).clips[0],
            0,
            roots=prepared.data_roots,
        )


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"slice": {"clip_s": 1e-5}}, "slice.clip_s"),
        ({"slice": {"min_clip_s": 1e-5}}, "slice.min_clip_s"),
        ({"model": {"seed": -1}}, "model.seed"),
        ({"model": {"seed": 2**40}}, "model.seed"),
        ({"slice": {"sources": [{"kind": "synthetic", "seed": -3}]}}, "slice.sources.0.synthetic.seed"),
        ({"analysis": {"seed": -1}}, "analysis.seed"),
        ({"capture": {"device": "gpu9"}}, "capture.device"),
        ({"capture": {"layers": [-1, 99]}}, "capture.layers"),
        ({"generation": {"seeds": [0, -1]}}, "generation.seeds"),
        ({"generation": {"seeds": [2**32]}}, "generation.seeds"),
    ],
)
def test_config__bad_values_name_the_field(config, field):
    from musicinterp.config import ConfigError, parse_run_spec

    with pytest.raises(ConfigError, match=rf"{field}: "):
        parse_run_spec(config)


def test_config__generation_seeds_out_of_range_exit_2_naming_the_field(tmp_path, capsys):
    """A negative or too large sampling seed once reached numpy as raw text; the edges are accepted."""
    import yaml

    from musicinterp.config import SEED_MAX, parse_run_spec
    from musicinterp_cli import main

    assert parse_run_spec({"generation": {"seeds": [0, SEED_MAX]}}).generation.seeds == [0, SEED_MAX]
    config = tmp_path / "bad-seeds.yaml"
    config.write_text(yaml.safe_dump({"generation": {"seeds": [3, SEED_MAX + 1]}}))
    assert main(["generate", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "generation.seeds" in err and str(SEED_MAX + 1) in err and str(config) in err
    assert not (tmp_path / "out").exists()


def test_run_command__a_server_that_does_not_answer_is_named_before_anything_runs(tmp_path):
    """``musicinterp run`` reports to the server PREFECT_API_URL names: one that does not answer is said at once
    (exit 2), not after a traceback and "run did not complete: the flow did not start"."""
    import socket
    import subprocess
    import sys

    import yaml

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "dead", "annotate": False, "analyze": False}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_API_URL": dead}
    proc = subprocess.run(
        [sys.executable, "-m", "musicinterp_cli", "run", str(config), "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"the Prefect server at PREFECT_API_URL={dead} does not answer" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "nan", "-1", "inf", "ten"])
def test_annotate_command__window_s_must_be_positive_seconds(value, tmp_path, capsys):
    from musicinterp_cli import main

    with pytest.raises(SystemExit) as e:
        main(["annotate", str(tmp_path / "x.wav"), "--out", str(tmp_path / "x.csv"), "--window-s", value])
    assert e.value.code == 2 and "--window-s" in capsys.readouterr().err


# Transient errors ----------------------------------------------------------------------------------


class _FlakyDisk:
    """A local disk whose chunk writes fail: the fsspec filesystem of ``flaky://`` URLs (fsspec's documented
    seam for storage backends; the store takes any fsspec URL). Real files, real Zarr; ``faults`` maps a
    path fragment (``/resid/c/1/``: clip 1's residual chunks) to [writes still to fail, errno]."""

    faults: dict[str, list[int]] = {}

    @classmethod
    def register(cls) -> str:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        class Flaky(LocalFileSystem):
            protocol = "flaky"

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "auto_mkdir": True})

            @classmethod
            def _strip_protocol(cls_, path):
                return LocalFileSystem._strip_protocol(str(path).removeprefix("flaky://"))

            def open(self, path, mode="rb", **kwargs):
                for fragment, fault in cls.faults.items():
                    if "w" in mode and fragment in str(path) and fault[0] > 0:
                        fault[0] -= 1
                        raise OSError(fault[1], os.strerror(fault[1]), str(path))
                return super().open(path, mode, **kwargs)

        fsspec.register_implementation("flaky", Flaky, clobber=True)
        return "flaky://"


@pytest.fixture
def flaky_disk():
    prefix = _FlakyDisk.register()
    yield _FlakyDisk.faults
    _FlakyDisk.faults.clear()
    assert prefix


def _retries(caplog, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if "trying again" in r.getMessage() and what in r.getMessage()]


def test_transient_write_errors__retried_with_backoff_and_the_store_equals_a_clean_one(tmp_path, flaky_disk, caplog):
    """An I/O error (EIO) on a clip's chunk writes passes on the third try; one that never passes fails
    only its clip, naming it; a permanent one (read-only) fails its clip at once; a rerun completes it."""
    import logging

    from musicinterp.run.retry import Backoff
    from musicinterp.slice import Manifest

    _tones(tmp_path / "audio", n=4)
    spec = _audio_spec(tmp_path / "audio", n_shards=1)
    clean = run.run_inline(spec, str(tmp_path / "clean"))
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    ids = [c.clip_id for c in Manifest.from_json(prepared.paths.manifest).clips]
    paths = run.RunPaths("flaky://" + prepared.root)
    fast = Backoff(attempts=3, first_delay_s=0.01)
    flaky_disk["/resid/c/0/"] = [2, errno.EIO]  # clip 0: fails twice, then writes
    flaky_disk["/resid/c/1/"] = [99, errno.EIO]  # clip 1: never writes
    flaky_disk["/complete/c/2"] = [1, errno.ETIMEDOUT]  # clip 2: its flag times out once
    flaky_disk["/resid/c/3/"] = [99, errno.EROFS]  # clip 3: a read-only store, not worth a retry
    with caplog.at_level(logging.WARNING, logger="musicinterp.run.retry"):
        t0 = time.perf_counter()
        result = run.capture_shard(spec.model, spec.capture, paths, 0, overlap_writes=False, write_backoff=fast)
        took_s = time.perf_counter() - t0
    assert sorted(result.captured) == sorted([ids[0], ids[2]]) and sorted(result.failed) == [ids[1], ids[3]]
    assert len(_retries(caplog, f"writing clip {ids[0]!r}")) == 2  # two failures, each logged with the error
    assert "Input/output error" in _retries(caplog, f"writing clip {ids[0]!r}")[0]
    assert len(_retries(caplog, f"setting the completion flag of clip {ids[2]!r}")) == 1
    assert len(_retries(caplog, f"clip {ids[1]!r}")) == 2 and _retries(caplog, f"clip {ids[3]!r}") == []
    assert f"writing clip {ids[1]!r} into store" in result.failed[ids[1]] and "failed 3 times" in result.failed[ids[1]]
    assert result.failed[ids[1]].startswith("RetriesExhausted") and "Input/output error" in result.failed[ids[1]]
    assert result.failed[ids[3]].startswith("StoreError") and f"clip {ids[3]!r}" in result.failed[ids[3]]
    assert "Read-only file system" in result.failed[ids[3]]
    assert took_s < 15  # small delays: 0.01 s, then 0.02 s
    record = read_shard_records(prepared.paths)[0]
    assert record.failed == result.failed  # the shard table's reasons
    flaky_disk.clear()
    again = run.capture_shard(spec.model, spec.capture, paths, 0, write_backoff=fast)  # the rerun
    assert sorted(again.captured) == sorted([ids[1], ids[3]]) and not again.failed
    a, b = xr.open_zarr(clean.store, consolidated=False), xr.open_zarr(prepared.paths.store, consolidated=False)
    for var in ("resid", "codes", "complete", "sha256", "n_frames"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)


def test_backoff__delays_grow_exponentially_and_only_transient_errors_are_retried():
    from musicinterp.models import ModelLoadError
    from musicinterp.run.retry import Backoff, RetriesExhausted, is_transient, with_retries

    b = Backoff(attempts=5, first_delay_s=0.5, factor=2, max_delay_s=3)
    assert [b.delay_s(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    slept: list[float] = []
    calls = {"n": 0}

    def io_error_twice() -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError(errno.EIO, "Input/output error")
        return "ok"

    assert with_retries(io_error_twice, "reading x", b, sleep=slept.append) == "ok" and slept == [0.5, 1.0]
    try:
        raise OSError(errno.ECONNRESET, "Connection reset by peer")
    except OSError as cause:
        wrapped = ModelLoadError("could not load MusicGen 'm'")
        wrapped.__cause__ = cause
    assert is_transient(wrapped) and is_transient(TimeoutError()) and is_transient(OSError("no errno"))
    assert not is_transient(ModelLoadError("model directory 'x' does not exist"))
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device")) and not is_transient(ValueError())
    with pytest.raises(RetriesExhausted, match="reading y: failed 5 times, the last with ConnectionResetError"):
        with_retries(lambda: (_ for _ in ()).throw(ConnectionResetError("reset")), "reading y", b, sleep=slept.append)
    with pytest.raises(ValueError, match="attempts >= 1"):
        Backoff(attempts=0)


def test_model_load__a_failed_load_is_retried_and_a_permanent_failure_fails_the_shard_naming_the_model(
    tmp_path, caplog
):
    """A local checkpoint whose weights file is missing at the first try (a mount not yet there) loads on
    the retry; a checkpoint folder that is gone fails the shard at once, naming the model, clips untouched."""
    import logging
    import shutil

    from musicinterp.models import ModelLoadError, build_offline, save_checkpoint
    from musicinterp.run.retry import Backoff

    ckpt = save_checkpoint(build_offline("tiny", 0), tmp_path / "ckpt", "test/tiny", "random")
    _tones(tmp_path / "audio", n=2)
    spec = RunSpec(
        name="load",
        model={"source": "local", "name": str(ckpt)},
        slice={"name": "load", "sources": [{"kind": "audio_dir", "path": str(tmp_path / "audio")}], "n_shards": 1},
        annotate=False,
    )
    clean = run.run_inline(spec, str(tmp_path / "clean"))
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    weights = ckpt / "model.safetensors"
    aside = tmp_path / "model.safetensors"
    weights.rename(aside)

    class PutBackOnRetry(logging.Handler):  # the file comes back while the loader waits to try again
        def emit(self, record):
            if "trying again" in record.getMessage() and aside.exists():
                aside.rename(weights)

    handler = PutBackOnRetry()
    logging.getLogger("musicinterp.run.retry").addHandler(handler)
    run.capture.clear_model_cache()
    try:
        with caplog.at_level(logging.WARNING, logger="musicinterp.run.retry"):
            result = run.capture_shard(
                spec.model, spec.capture, prepared.paths, 0, load_backoff=Backoff(attempts=3, first_delay_s=0.01)
            )
    finally:
        logging.getLogger("musicinterp.run.retry").removeHandler(handler)
    retries = _retries(caplog, f"loading local model {str(ckpt)!r}")
    assert len(retries) == 1 and "for shard 0" in retries[0] and "model.safetensors" in retries[0]
    assert len(result.captured) == 2 and not result.failed
    a, b = xr.open_zarr(clean.store, consolidated=False), xr.open_zarr(prepared.paths.store, consolidated=False)
    for var in ("resid", "codes", "complete"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)

    gone = run.prepare_run(spec.model_copy(update={"name": "gone"}), str(tmp_path / "gone"))
    run.capture.clear_model_cache()
    shutil.rmtree(ckpt)
    caplog.clear()
    with pytest.raises(ModelLoadError, match=f"model directory {str(ckpt)!r} does not exist"):
        run.capture_shard(spec.model, spec.capture, gone.paths, 0, load_backoff=Backoff(first_delay_s=5.0))
    assert _retries(caplog, "loading") == []  # permanent: no retry, no waiting
    assert not xr.open_zarr(gone.paths.store, consolidated=False)["complete"].values.any()


# Concurrency ---------------------------------------------------------------------------------------


def _capture_shard_in_a_process(spec_json: str, root: str, shard: int) -> int:
    from musicinterp import run as run_mod
    from musicinterp.config import RunSpec as Spec

    spec = Spec.model_validate_json(spec_json)
    result = run_mod.capture_shard(spec.model, spec.capture, run_mod.RunPaths(root), shard)
    return len(result.captured)


def _run_in_a_process(spec_json: str, out: str) -> bool:
    from musicinterp import run as run_mod
    from musicinterp.config import RunSpec as Spec

    return run_mod.run_inline(Spec.model_validate_json(spec_json), out).ok


def test_concurrency__four_workers_fill_one_store_and_two_runs_of_one_config_share_it(tmp_path):
    """Four processes capture the four shards of one store at once; two runs of one config into one
    ``--out`` start at once (the second once failed creating the store: FileExistsError)."""
    import multiprocessing as mp

    _tones(tmp_path / "audio", n=8, seconds=1.0)
    spec = _audio_spec(tmp_path / "audio", n_shards=4)
    prepared = run.prepare_run(spec, str(tmp_path / "four"))
    with mp.get_context("spawn").Pool(4) as pool:
        jobs = [(spec.model_dump_json(), prepared.root, s) for s in range(4)]
        captured = pool.starmap(_capture_shard_in_a_process, jobs)
        twice = pool.starmap(_run_in_a_process, [(spec.model_dump_json(), str(tmp_path / "twice"))] * 2)
    assert sum(captured) == 8 and all(twice)
    a = xr.open_zarr(prepared.paths.store, consolidated=False)
    b = xr.open_zarr(run.RunPaths.for_spec(spec, str(tmp_path / "twice")).store)
    assert a["complete"].values.all() and np.isfinite(a["resid"].values).all()
    for var in ("resid", "codes", "complete", "sha256", "n_frames"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
