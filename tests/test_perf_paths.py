"""The fast paths give what the plain paths give: overlapped store writes (clip n written while n + 1 is captured)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import xarray as xr
from factories import write_tone

from musicinterp import run
from musicinterp.config import RunSpec
from musicinterp.run.records import read_shard_records
from musicinterp.store import open_store


def _prepared(tmp_path: Path, out: str, n: int = 4) -> tuple[RunSpec, run.PreparedRun]:
    audio = tmp_path / "audio"
    if not audio.exists():
        audio.mkdir()
        for i in range(n):
            write_tone(audio / f"{i}.wav", 1.5, freq_hz=220 + 60 * i)
    spec = RunSpec(
        name="perf", slice={"name": "perf", "sources": [{"kind": "audio_dir", "path": str(audio)}], "n_shards": 1}
    )
    return spec, run.prepare_run(spec, str(tmp_path / out))


def test_overlapped_writes__same_store_record_and_progress_as_writing_in_the_capturing_thread(tmp_path):
    stores, results, progress = [], [], []
    for overlap in (False, True):
        spec, prepared = _prepared(tmp_path, f"out_{overlap}")
        calls: list[tuple[int, int, str]] = []
        result = run.capture_shard(
            spec.model,
            spec.capture,
            prepared.paths,
            0,
            on_clip=lambda *a, calls=calls: calls.append(a),
            overlap_writes=overlap,
        )
        stores.append(open_store(prepared.paths.store).load())
        results.append(result)
        progress.append(calls)
    sequential, overlapped = stores
    for var in ("resid", "codes", "complete", "n_frames"):
        np.testing.assert_array_equal(sequential[var].values, overlapped[var].values)
    assert overlapped["complete"].values.all()
    assert results[0].captured == results[1].captured == results[1].clips and not results[1].failed
    assert results[0].bytes_written == results[1].bytes_written > 0
    assert progress[0] == progress[1] == [(i + 1, 4, c) for i, c in enumerate(results[1].clips)]
    assert all(r.encode_s > 0 and r.capture_s > 0 and r.write_s > 0 for r in results)
    # the run summary reports each stage's time and throughput, from the shard records
    summary = run.summarise_run(prepared, annotate=False)
    stages = json.loads(Path(prepared.paths.summary_json).read_text())["stages"]
    assert stages == summary.stages
    assert set(stages) == {"plan", "encode", "capture", "write", "capture_wall", "annotate"}
    assert stages["plan"]["seconds"] == round(prepared.plan_s, 3) > 0 and stages["plan"]["clips"] == 4
    assert stages["write"]["seconds"] == round(results[1].write_s, 3) and stages["write"]["clips"] == 4
    assert stages["write"]["mb_per_s"] == round(results[1].bytes_written / 1e6 / results[1].write_s, 2)
    assert stages["annotate"]["clips"] == 0  # annotation off
    assert "## Stage times" in Path(prepared.paths.summary_md).read_text()


def test_overlapped_writes__a_failed_write_fails_its_clip_by_id_and_the_others_are_captured(tmp_path, monkeypatch):
    spec, prepared = _prepared(tmp_path, "out")
    real, calls = xr.Dataset.to_zarr, {"resid": 0}

    def full_on_the_second_clip(self, *args, **kwargs):
        if "resid" in self.data_vars:
            calls["resid"] += 1
            if calls["resid"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_zarr", full_on_the_second_clip)
    result = run.capture_shard(spec.model, spec.capture, prepared.paths, 0)
    second = result.clips[1]
    assert list(result.failed) == [second] and "No space left on device" in result.failed[second]
    assert result.failed[second].startswith(f"StoreError: cannot write clip {second!r}")
    assert result.captured == [c for c in result.clips if c != second]
    ds = open_store(prepared.paths.store)
    assert [bool(f) for f in ds["complete"].values] == [True, False, True, True]  # its flag never set
    (record,) = read_shard_records(prepared.paths)
    assert record.failed == result.failed and record.captured == result.captured
