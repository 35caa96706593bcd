"""The fast paths give what the plain paths give: overlapped store writes (clip n written while n + 1 is captured)."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

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
    from musicinterp.store import ClipWriter

    spec, prepared = _prepared(tmp_path, "out")
    real, calls = ClipWriter._region, {"resid": 0}

    def full_on_the_second_clip(self, name, *args, **kwargs):  # the disk fills while the second clip is written
        if name == "resid":
            calls["resid"] += 1
            if calls["resid"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(ClipWriter, "_region", full_on_the_second_clip)
    result = run.capture_shard(spec.model, spec.capture, prepared.paths, 0)
    second = result.clips[1]
    assert list(result.failed) == [second] and "No space left on device" in result.failed[second]
    assert result.failed[second].startswith(f"StoreError: cannot write clip {second!r}")
    assert result.captured == [c for c in result.clips if c != second]
    ds = open_store(prepared.paths.store)
    assert [bool(f) for f in ds["complete"].values] == [True, False, True, True]  # its flag never set
    (record,) = read_shard_records(prepared.paths)
    assert record.failed == result.failed and record.captured == result.captured


def _run_of_clips(tmp_path: Path, out: str, **capture) -> tuple[RunSpec, run.PreparedRun, Any]:
    """A shard of two tones of two lengths (so that one clip is padded), captured and summarised."""
    audio = tmp_path / "audio_lengths"
    if not audio.exists():
        audio.mkdir()
        for i, seconds in enumerate((1.5, 1.0)):
            write_tone(audio / f"{i}.wav", seconds, freq_hz=220 + 60 * i)
    spec = RunSpec(
        name="q",
        slice={"name": "q", "sources": [{"kind": "audio_dir", "path": str(audio)}], "n_shards": 1},
        capture=capture,
        annotate=False,
    )
    prepared = run.prepare_run(spec, str(tmp_path / out))
    result = run.capture_shard(spec.model, spec.capture, prepared.paths, 0)
    run.summarise_run(prepared, annotate=False)  # finalises the store: the int8 error summary
    return spec, prepared, result


def test_int8_run__every_reader_gets_floats_within_the_recorded_error_of_the_float16_run(tmp_path):
    """``capture.reduce: int8`` end to end: another run (fingerprint), half the resid bytes, the error against
    float16 in the store's attributes, and float32 values for the store, analysis, SAE and API readers that
    equal the float16 run's within that error; a missing chunk is still found by the verification."""
    from musicinterp.analysis.data import _read_clip_layer, open_analysis_store
    from musicinterp.api import open_run
    from musicinterp.sae.stream import open_store as sae_open_store
    from musicinterp.sae.stream import read_clip
    from musicinterp.store import verify_clips

    spec16, f16, res16 = _run_of_clips(tmp_path, "f16")
    spec8, q8, res8 = _run_of_clips(tmp_path, "int8", reduce="int8")
    assert spec8.fingerprint() != spec16.fingerprint() and q8.paths.store != f16.paths.store
    assert res8.captured == res16.captured == res8.clips and not res8.failed
    assert res8.bytes_written < 0.6 * res16.bytes_written  # int8 plus scales against float16
    ref = open_store(f16.paths.store)
    raw = xr.open_zarr(q8.paths.store)  # plain xarray
    assert raw["resid_int8"].dtype == np.int8 and "resid" not in raw and raw.attrs["capture_reduce"] == "int8"
    assert raw.attrs["capture_autocast"] == "off" and ref.attrs["capture_reduce"] == "none"
    error = raw.attrs["resid_int8_error"]
    assert error["clips"] == 2 and error["layers"] == [int(x) for x in ref["layer"].values]
    max_abs = raw["resid_error_max_abs"].values  # (clip, layer), measured on the device
    np.testing.assert_allclose(error["max_abs"], max_abs.max(axis=0))
    ds = open_store(q8.paths.store)
    n_frames = ref["n_frames"].values
    assert sorted(set(n_frames)) == [50, 75] and ds["resid"].dtype == np.float32
    for i, n in enumerate(n_frames):
        want = ref["resid"].isel(clip=i, time=slice(0, n)).values.astype(np.float32)
        got = ds["resid"].isel(clip=i, time=slice(0, n)).values
        # the same forward pass as the float16 run: the error is the recorded one, to float32 rounding
        np.testing.assert_allclose(np.abs(got - want).max(axis=(1, 2)), max_abs[i], rtol=1e-5)
        assert np.isnan(ds["resid"].isel(clip=i, time=slice(n, None)).values).all()
        for layer in range(ds.sizes["layer"]):  # the other readers see the same floats
            analysis = _read_clip_layer(open_analysis_store(q8.paths.store)["resid"], i, layer, int(n))
            sae = read_clip(sae_open_store(q8.paths.store), i, layer)
            assert analysis.dtype == sae.dtype == np.float32
            np.testing.assert_array_equal(analysis, got[layer])
            np.testing.assert_array_equal(sae, got[layer])
    np.testing.assert_array_equal(open_run(q8.paths.root).store["resid"].isel(clip=0).values, ds["resid"][0].values)
    assert verify_clips(q8.paths.store) == {}
    chunk = Path(q8.paths.store) / "resid_int8" / "c" / "1" / "0" / "0" / "0"
    chunk.unlink()  # a lost chunk reads as the fill, i.e. NaN: the clip is damaged, not silently zero
    assert "missing" in verify_clips(q8.paths.store)[str(ref["clip"].values[1])]
