"""The store: template then regions, completion flags last, readable by plain xarray."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from musicinterp.store import (
    CHUNK_TARGET_BYTES,
    ClipLayout,
    StoreError,
    StoreLayout,
    completed_clips,
    describe_store,
    finalize_store,
    init_store,
    mark_complete,
    store_attrs,
    write_clip,
)

LAYOUT = StoreLayout(
    clips=(ClipLayout("a", 50), ClipLayout("b", 75)), layers=(0, 1, 2), hidden_size=64, num_codebooks=4
)


def _attrs(fp="fp1", revision="seed-0"):
    return store_attrs(
        model={"model_id": "offline/tiny", "revision": revision, "weights": "random"},
        run_spec_json="{}",
        fingerprint=fp,
        capture={"half": "conditional", "guidance_scale": 3.0, "description": ""},
        package_version="test",
    )


def _clip(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, n, 64)).astype(np.float16), rng.integers(0, 2048, (4, n)).astype(np.int16)


@pytest.mark.parametrize("url_kind", ["local", "memory"])
def test_store__round_trip_through_plain_xarray(tmp_path, url_kind):
    url = str(tmp_path / "s.zarr") if url_kind == "local" else f"memory://{tmp_path.name}/s.zarr"
    assert init_store(url, LAYOUT, {"sha256": ["x", "y"], "silent": [False, True]}, _attrs())
    resid, codes = _clip(75)
    write_clip(url, "b", resid, codes)
    mark_complete(url, "b")
    finalize_store(url)
    ds = xr.open_zarr(url)
    assert ds["resid"].dims == ("clip", "layer", "time", "feature")
    np.testing.assert_array_equal(ds["resid"].sel(clip="b").values, resid)
    np.testing.assert_array_equal(ds["codes"].sel(clip="b").values, codes)
    assert np.isnan(ds["resid"].sel(clip="a").values).all()  # never written
    assert ds.attrs["weights"] == "random" and "random" in ds.attrs["weights_note"]
    assert list(ds["complete"].values) == [False, True]
    np.testing.assert_allclose(ds["time"].values[:3], [0.0, 0.02, 0.04])
    assert list(ds["decoder_step"].values[:3]) == [1, 2, 3]
    assert completed_clips(url) == {"b"}


def test_store__shorter_clip_is_padded_with_fill(tmp_path):
    url = str(tmp_path / "s.zarr")
    init_store(url, LAYOUT, {}, _attrs())
    resid, codes = _clip(50)
    write_clip(url, "a", resid, codes)
    ds = xr.open_zarr(url)
    np.testing.assert_array_equal(ds["resid"].sel(clip="a").values[:, :50], resid)
    assert np.isnan(ds["resid"].sel(clip="a").values[:, 50:]).all()
    assert (ds["codes"].sel(clip="a").values[:, 50:] == -1).all()


def test_store__each_clip_has_its_own_chunks_of_at_least_1mb_or_whole_clip():
    big = StoreLayout(clips=(ClipLayout("a", 1500),), layers=tuple(range(25)), hidden_size=1024, num_codebooks=4)
    c = big.resid_chunks
    assert c[0] == 1 and c[2] == 1500 and c[3] == 1024
    assert c[1] * 1500 * 1024 * 2 >= CHUNK_TARGET_BYTES
    small = LAYOUT.resid_chunks
    assert small == (1, 3, 75, 64)  # one clip, every layer: the most a clip holds


def test_store__reopen_same_config_resumes_other_config_refused(tmp_path):
    url = str(tmp_path / "s.zarr")
    assert init_store(url, LAYOUT, {}, _attrs("fp1")) is True
    resid, codes = _clip(50)
    write_clip(url, "a", resid, codes)
    mark_complete(url, "a")
    assert init_store(url, LAYOUT, {}, _attrs("fp1")) is False
    assert completed_clips(url) == {"a"}  # nothing lost
    with pytest.raises(StoreError, match="holds config 'fp1', not 'fp2'"):
        init_store(url, LAYOUT, {}, _attrs("fp2"))
    # the same config with other weights (a retrained checkpoint in the same folder) is refused too
    with pytest.raises(StoreError, match="model revision 'seed-0', but the model now loads as 'seed-1'"):
        init_store(url, LAYOUT, {}, _attrs("fp1", revision="seed-1"))
    assert completed_clips(url) == {"a"}


def test_local_checkpoint__revision_carries_the_weights_digest(tmp_path):
    from musicinterp.config import ModelSpec
    from musicinterp.models import build_offline, load_model, save_checkpoint

    spec = ModelSpec(source="local", name=str(tmp_path / "ckpt"))
    save_checkpoint(build_offline("tiny", 0), tmp_path / "ckpt", "test/tiny", "random")
    first = load_model(spec).revision
    assert first.startswith("local+sha256:") and load_model(spec).revision == first
    save_checkpoint(build_offline("tiny", 1), tmp_path / "ckpt", "test/tiny", "random")  # "retrained"
    assert load_model(spec).revision != first


def test_store__write_checks_before_acting(tmp_path):
    url = str(tmp_path / "s.zarr")
    init_store(url, LAYOUT, {}, _attrs())
    resid, codes = _clip(60)
    with pytest.raises(StoreError, match="capture has 60 frames, manifest says 50"):
        write_clip(url, "a", resid, codes)
    resid, codes = _clip(50)
    resid[0, 3, 5] = np.nan
    with pytest.raises(StoreError, match="NaN or inf; nothing was written"):
        write_clip(url, "a", resid, codes)
    with pytest.raises(StoreError, match="clip 'zz' is not in store"):
        write_clip(url, "zz", resid, codes)
    assert np.isnan(xr.open_zarr(url)["resid"].sel(clip="a").values).all()


def test_describe__reports_weights_and_completion(tmp_path):
    url = str(tmp_path / "s.zarr")
    init_store(url, LAYOUT, {}, _attrs())
    info = describe_store(url)
    assert info["incomplete"] == ["a", "b"] and info["attrs"]["weights"] == "random"
    assert info["dims"]["layer"] == 3 and info["size_bytes"] > 0
    with pytest.raises(StoreError, match="no musicinterp store"):
        describe_store(str(tmp_path / "missing.zarr"))


def test_store_int8__float_activations_are_quantised_on_the_host_and_read_back_as_float(tmp_path):
    """An int8 store (``capture.reduce: int8``) takes float activations too (a replan's copy), quantises them
    as the device would, and every reader of ``open_store`` gets float32 within scale / 2; a float16 store
    refuses int8 values."""
    from musicinterp.quantize import quantize_host
    from musicinterp.store import open_store, verify_clips

    url = str(tmp_path / "q.zarr")
    layout = StoreLayout(LAYOUT.clips, LAYOUT.layers, LAYOUT.hidden_size, LAYOUT.num_codebooks, reduce="int8")
    assert init_store(url, layout, {}, _attrs())
    resid, codes = _clip(50)
    resid[1, :, 5] *= 40  # an outlier unit: its own scale, the others keep their precision
    write_clip(url, "a", resid, codes)
    mark_complete(url, "a")
    finalize_store(url)
    raw = xr.open_zarr(url)  # plain xarray: int8 values, their scales and the rule
    assert raw["resid_int8"].dtype == np.int8 and "resid" not in raw
    assert "resid_scale" in raw["resid_int8"].attrs["dequantize"]
    ds = open_store(url)
    got = ds["resid"].sel(clip="a", time=slice(0, 50 / 50 - 1e-9)).values
    assert got.dtype == np.float32 and got.shape == resid.shape
    assert np.isnan(ds["resid"].sel(clip="a").values[:, 50:]).all()  # beyond the clip: no data
    assert np.isnan(ds["resid"].sel(clip="b").values).all()  # never written
    scale = np.abs(resid.astype(np.float32)).max(axis=1) / 127
    assert (np.abs(got - resid) <= scale[:, None, :] / 2 * (1 + 1e-6)).all()
    np.testing.assert_array_equal(ds["resid"].isel(clip=0, time=3, feature=[5, 7]).values, got[:, 3, [5, 7]])
    error = ds.attrs["resid_int8_error"]
    assert error["clips"] == 1 and error["layers"] == [0, 1, 2] and len(error["max_abs"]) == 3
    assert verify_clips(url) == {}
    # a copy into another int8 store (a replan's) keeps the values, scales and errors as they are
    from musicinterp.store import int8_of_clip

    copy = str(tmp_path / "copy.zarr")
    init_store(copy, layout, {}, _attrs())
    stored, quant = int8_of_clip(ds, 0, 50)
    assert stored is not None and quant is not None
    write_clip(copy, "a", stored, codes, quant)
    again = xr.open_zarr(copy)
    for name in ("resid_int8", "resid_scale", "resid_error_max_abs", "resid_error_rel_rms"):
        np.testing.assert_array_equal(again[name].sel(clip="a").values, raw[name].sel(clip="a").values)
    assert int8_of_clip(xr.Dataset(), 0, 1) == (None, None)  # a float16 store: nothing to copy as int8
    from musicinterp.config import CaptureSpec

    autocast = store_attrs(
        model={"model_id": "m", "revision": "r", "weights": "random"},
        run_spec_json="{}",
        fingerprint="f",
        capture=CaptureSpec(autocast=True).model_dump(),
        package_version="test",
    )
    assert autocast["capture_autocast"] == "bfloat16" and autocast["capture_reduce"] == "none"
    q, _ = quantize_host(resid)
    with pytest.raises(StoreError, match="int8.*holds float16"):
        f16 = str(tmp_path / "f.zarr")
        init_store(f16, LAYOUT, {}, _attrs())
        write_clip(f16, "a", q, codes, quantize_host(resid)[1])
