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
