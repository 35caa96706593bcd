"""The run pipeline's stages without Prefect: round trip, frame grid, resume after a crash, bad clips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from factories import write_tone, write_wav

from musicinterp import run
from musicinterp.capture import capture_clip
from musicinterp.config import RunSpec
from musicinterp.slice import Manifest, load_clip_audio


def _audio_spec(folder, name="t", n_shards=2, **capture) -> RunSpec:
    return RunSpec(
        name=name,
        slice={"name": name, "sources": [{"kind": "audio_dir", "path": str(folder)}], "n_shards": n_shards},
        capture=capture,
    )


def _run_all(spec, out) -> run.RunSummary:
    return run.run_inline(spec, str(out))


def test_store__time_coordinate_and_frames_match_durations(tmp_path):
    durations = {"a.wav": 1.0, "b.wav": 2.5, "c.wav": 3.33, "d.wav": 4.011}
    for name, seconds in durations.items():
        write_tone(tmp_path / name, seconds)
    summary = _run_all(_audio_spec(tmp_path, n_shards=1), tmp_path / "out")
    ds = xr.open_zarr(summary.store)
    for clip, n in zip(ds["clip"].values, ds["n_frames"].values):
        seconds = float(ds["duration_s"].sel(clip=clip))
        expected = math.ceil(round(seconds * 32000) / 640)
        assert n == expected, clip
        resid = ds["resid"].sel(clip=clip).values
        assert np.isfinite(resid[:, :n]).all() and np.isnan(resid[:, n:]).all()
    assert sorted(int(n) for n in ds["n_frames"].values) == [50, 125, 167, 201]
    np.testing.assert_allclose(ds["time"].values, np.arange(ds.sizes["time"]) / 50)
    assert summary.ok and summary.complete == 4


def test_store__holds_what_the_model_produced(tmp_path, tiny_model):
    write_tone(tmp_path / "a.wav", 2.0)
    spec = _audio_spec(tmp_path, n_shards=1)
    summary = _run_all(spec, tmp_path / "out")
    manifest = Manifest.from_json(f"{summary.root}/manifest.json")
    clip = manifest.clips[0]
    direct = capture_clip(tiny_model, load_clip_audio(clip), spec.capture)
    ds = xr.open_zarr(summary.store)
    np.testing.assert_array_equal(ds["resid"].sel(clip=clip.clip_id).values[:, : clip.n_frames], direct.resid)
    np.testing.assert_array_equal(ds["codes"].sel(clip=clip.clip_id).values[:, : clip.n_frames], direct.codes)
    assert ds.attrs["weights"] == "random" and ds.attrs["guidance_half"] == "conditional"


def test_run__resumed_after_crash_equals_uninterrupted(tmp_path, monkeypatch):
    for i, seconds in enumerate([1.5, 2.0, 2.5, 3.0, 1.2]):
        write_tone(tmp_path / f"{i}.wav", seconds, freq_hz=200 + 50 * i)
    spec = _audio_spec(tmp_path, n_shards=2)
    clean = _run_all(spec, tmp_path / "clean")

    # Crash after the third clip's data is written but before its completion flag.
    calls = {"n": 0}
    real_mark = run.capture.mark_complete

    def crashing_mark(url, clip_id, done=True):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("worker killed")
        real_mark(url, clip_id, done)

    monkeypatch.setattr(run.capture, "mark_complete", crashing_mark)
    prepared = run.prepare_run(spec, str(tmp_path / "crashed"))
    with pytest.raises(KeyboardInterrupt):
        for shard in range(prepared.n_shards):
            run.capture_shard(spec.model, spec.capture, prepared.paths, shard)
    monkeypatch.setattr(run.capture, "mark_complete", real_mark)
    half = xr.open_zarr(f"{prepared.root}/store.zarr", consolidated=False)
    assert int(half["complete"].sum()) == 2  # the half-written clip is not marked complete

    resumed = _run_all(spec, tmp_path / "crashed")
    a, b = xr.open_zarr(clean.store), xr.open_zarr(resumed.store)
    for var in ("resid", "codes", "complete", "n_frames", "sha256"):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    assert resumed.complete == 5
    recaptured = sum(s["captured"] for s in resumed.shards)
    assert recaptured == 3  # the crashed clip and the two never reached; completed ones skipped


def test_run__bad_clip_does_not_sink_the_others(tmp_path):
    for i in range(3):
        write_tone(tmp_path / f"{i}.wav", 2.0, freq_hz=300 + 40 * i)
    spec = _audio_spec(tmp_path, n_shards=1)
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    write_tone(tmp_path / "1.wav", 2.0, freq_hz=999)  # the file changed after planning
    result = run.capture_shard(spec.model, spec.capture, prepared.paths, 0)
    assert len(result.captured) == 2 and len(result.failed) == 1
    ((clip, reason),) = result.failed.items()
    assert "1" in clip and "sha256" in reason
    summary = run.summarise_run(prepared)
    assert not summary.ok and clip in summary.failed
    assert clip in Path(prepared.paths.summary_md).read_text()


def test_run__labels_in_the_store_are_the_annotation_of_the_clip(tmp_path):
    from musicinterp.annotate import annotate, label_schema

    write_tone(tmp_path / "quiet.wav", 3.0)
    write_wav(tmp_path / "silent.wav", np.zeros(3 * 32000, dtype=np.float32))
    spec = RunSpec(
        name="lab",
        slice={
            "sources": [
                {"kind": "synthetic", "n_pieces": 1, "duration_s": 8.0},
                {"kind": "audio_dir", "path": str(tmp_path)},
            ],
            "n_shards": 1,
        },
    )
    summary = _run_all(spec, tmp_path / "out")
    ds = xr.open_zarr(summary.store)
    manifest = Manifest.from_json(f"{summary.root}/manifest.json")
    clip = next(c for c in manifest.clips if c.source == "synthetic")
    expected = annotate(load_clip_audio(clip), spec.annotation, clip_id=clip.clip_id)
    assert set(label_schema(spec.annotation)) == {k for k in expected if k != "time"}
    n = clip.n_frames
    for name, values in expected.items():
        if name == "time":
            np.testing.assert_allclose(ds["time"].values[:n], values)
            continue
        stored = ds[name].sel(clip=clip.clip_id).values
        np.testing.assert_array_equal(stored[:n], values, err_msg=name)
        assert not stored[n:].any(), name  # padding beyond the clip is 0 / False
    assert ds["rec_lag_next_s"].attrs["valid_mask"] == "rec_lag_next_s_valid"
    assert ds["in_clip"].sel(clip=clip.clip_id).values.sum() == n
    flags = dict(zip(ds["clip"].values, ds["annotated"].values))
    silent_id = next(c.clip_id for c in manifest.clips if "silent" in c.clip_id)
    assert flags[clip.clip_id] and not flags[silent_id]
    assert "silent" in summary.not_annotated[silent_id]
    assert summary.ok and summary.annotated == 2
    assert clip.clip_id in summary.plots and any((tmp_path / "out").rglob("plots/00000.png"))
    # ground-truth labels beside the annotated ones: the planted return, known by construction
    (r,) = clip.truth["returns"]
    lag = r["start_s"] - r["source_start_s"]
    inside = slice(int(r["source_start_s"] * 50) + 3, int(r["source_end_s"] * 50) - 3)
    truth_lag = ds["truth_rec_lag_next_s"].sel(clip=clip.clip_id).values[inside]
    np.testing.assert_allclose(truth_lag, lag, atol=0.05)
    assert ds["truth_rec_within_8s"].sel(clip=clip.clip_id).values[inside].all() == (lag <= 8)
    audio_clip = next(c.clip_id for c in manifest.clips if c.source == "audio_dir" and "quiet" in c.clip_id)
    assert not ds["truth_rec_within_4s_valid"].sel(clip=audio_clip).any()  # no ground truth for a file
    md = (tmp_path / "out").joinpath(summary.root.split("/")[-1], "summary.md").read_text()
    assert "![annotation of" in md and "not annotated" in md


def _refuse(*args, **kwargs):
    raise AssertionError("planning built or loaded a model's weights")


def test_plan__reads_the_model_config_never_its_weights(tmp_path, monkeypatch):
    """A musicgen-small-shaped run for a device this machine lacks plans from the config alone."""
    import transformers

    from musicinterp import models

    for owner, name in [
        (models, "build_offline"),
        (models, "load_model"),
        (run.capture, "load_model"),
        (transformers.MusicgenForConditionalGeneration, "__init__"),
        (transformers.MusicgenForConditionalGeneration, "from_pretrained"),
    ]:
        monkeypatch.setattr(owner, name, _refuse)
    spec = RunSpec(
        name="plan",
        model={"source": "offline", "name": "musicgen-small"},
        slice={"sources": [{"kind": "synthetic", "n_pieces": 2, "duration_s": 2.0}], "n_shards": 1},
        capture={"device": "cuda:7", "layers": [24, 0, 12]},
        annotate=False,
    )
    prepared = run.prepare_run(spec, str(tmp_path))
    ds = xr.open_zarr(prepared.paths.store, consolidated=False)
    assert list(ds["layer"].values) == [0, 12, 24] and ds.sizes["feature"] == 1024 and ds.sizes["codebook"] == 4
    assert ds.attrs["model_id"] == "offline/musicgen-small" and ds.attrs["model_revision"] == "seed-0"
    assert prepared.weights == "random" and prepared.n_clips == 2
    bad = spec.model_copy(update={"name": "bad", "capture": spec.capture.model_copy(update={"layers": [0, 25]})})
    with pytest.raises(
        ValueError,
        match=r"capture.layers: \[25\] out of range; model 'offline/musicgen-small' "
        r"has layers 0..24",
    ):
        run.prepare_run(bad, str(tmp_path))
    assert not Path(run.RunPaths.for_spec(bad, str(tmp_path)).store).exists()  # checked before the store


def test_describe_model__is_what_the_loaded_model_says(tmp_path, tiny_model):
    from musicinterp.config import ModelSpec
    from musicinterp.models import build_offline, describe_model, load_model, save_checkpoint

    assert describe_model(ModelSpec(source="offline", name="tiny", seed=0)) == tiny_model.describe()
    save_checkpoint(build_offline("tiny", 0), tmp_path / "ckpt", "test/tiny", "random")
    local = ModelSpec(source="local", name=str(tmp_path / "ckpt"), weights="trained-here")
    assert describe_model(local) == load_model(local).describe()
    assert describe_model(local)["revision"].startswith("local+sha256:")


def test_capture__refuses_weights_that_changed_since_planning(tmp_path):
    from musicinterp.models import build_offline, save_checkpoint
    from musicinterp.store import StoreError

    save_checkpoint(build_offline("tiny", 0), tmp_path / "ckpt", "test/tiny", "random")
    spec = RunSpec(
        name="ckpt",
        model={"source": "local", "name": str(tmp_path / "ckpt")},
        annotate=False,
        slice={"sources": [{"kind": "synthetic", "n_pieces": 1, "duration_s": 2.0}], "n_shards": 1},
    )
    prepared = run.prepare_run(spec, str(tmp_path / "out"))
    save_checkpoint(build_offline("tiny", 1), tmp_path / "ckpt", "test/tiny", "random")  # retrained in place
    with pytest.raises(StoreError, match="weights changed since the run was planned"):
        run.capture_shard(spec.model, spec.capture, prepared.paths, 0)
    assert not xr.open_zarr(prepared.paths.store, consolidated=False)["complete"].any()


def test_model_cache__holds_one_model_at_a_time(monkeypatch):
    from musicinterp.config import ModelSpec

    loads = []

    def fake_load(spec, device):
        loads.append(spec.seed)
        return object()

    monkeypatch.setattr(run.capture, "load_model", fake_load)
    run.clear_model_cache()
    try:
        first, _ = run.capture.cached_model(ModelSpec(seed=0), "cpu")
        assert run.capture.cached_model(ModelSpec(seed=0), "cpu")[0] is first  # shard after shard: loaded once
        assert run.capture.cached_model(ModelSpec(seed=1), "cpu")[0] is not first  # another model replaces it
        assert run.capture.cached_model(ModelSpec(seed=0), "cpu")[0] is not first  # ... and the first is gone
        assert loads == [0, 1, 0]
    finally:
        run.clear_model_cache()


def test_run__batched_capture_equals_clip_by_clip_and_a_bad_clip_fails_alone(tmp_path):
    """``capture.batch_size: 3`` over clips of two lengths with a bad file among them: every good clip is
    captured (batches split where the length changes and around the bad clip), the bad one fails naming
    itself, and the store equals a clip-by-clip run's to float16 rounding."""
    data = tmp_path / "audio"
    data.mkdir()
    for i in range(7):
        write_tone(data / f"{i}.wav", 2.0 if i < 4 else 3.0, freq_hz=200 + 50 * i)
    (data / "2.wav").write_bytes(b"RIFF not a wav")
    stores = {}
    for batch_size in (1, 3):
        spec = _audio_spec(data, name=f"b{batch_size}", n_shards=1, batch_size=batch_size)
        prepared = run.prepare_run(spec, str(tmp_path / f"out{batch_size}"))
        result = run.capture_shard(spec.model, spec.capture, prepared.paths, 0)
        assert len(result.captured) == 6 and list(result.failed) == [c for c in result.clips if "2" in c.split(":")[-1]]
        stores[batch_size] = xr.open_zarr(prepared.paths.store)
    a, b = stores[1], stores[3]
    np.testing.assert_array_equal(a["complete"].values, b["complete"].values)
    np.testing.assert_array_equal(a["codes"].values, b["codes"].values)
    np.testing.assert_allclose(b["resid"].values.astype(np.float32), a["resid"].values.astype(np.float32), atol=2e-2)
    assert RunSpec(capture={"batch_size": 3}).fingerprint() != RunSpec().fingerprint()
