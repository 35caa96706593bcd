"""Sparse autoencoders: SAELens layout round trips, training that resumes exactly, splicing into the model,
feature ablation, and the feature ranking's known answer on planted and null stores (reduced size)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import xarray as xr

from musicinterp.config import CaptureSpec
from musicinterp.sae import (
    BatchTopKSAE,
    SAELoadError,
    SAERankSpec,
    SAETrainSpec,
    TopKSAE,
    ablate_features,
    ablation,
    edit_layer,
    evaluate_sae,
    hook_name_for_layer,
    layer_for_hook_name,
    load_sae,
    next_code_loss,
    rank_store,
    save_sae,
    summary,
    train_layer,
    write_feature_store,
)
from musicinterp.sae.stream import ClipStream, complete_clips
from tests.analysis_factories import make_store


def random_sae(d_in: int = 16, d_sae: int = 48, k: int = 5, seed: int = 0) -> TopKSAE:
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d_in, d_sae, k)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae


def identity_sae(d_in: int) -> TopKSAE:
    """Exact reconstruction: features relu(x_i) and relu(-x_i), decoders +e_i and -e_i, k = d_in."""
    sae = TopKSAE(d_in, 2 * d_in, d_in)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


# ---- SAELens layout ------------------------------------------------------------------------------------
def test_hook_names__round_trip_and_tl_convention():
    for layer in range(0, 25):
        assert layer_for_hook_name(hook_name_for_layer(layer)) == layer
    assert layer_for_hook_name("blocks.23.hook_resid_post") == 24
    assert layer_for_hook_name("blocks.5.hook_resid_pre") == 5
    assert layer_for_hook_name("decoder.layers.11") == 12
    with pytest.raises(SAELoadError, match="not a residual-stream hook"):
        layer_for_hook_name("blocks.3.attn.hook_z")


def test_saelens__save_then_load_gives_the_same_outputs(tmp_path):
    sae = random_sae()
    save_sae(sae, tmp_path / "s", layer=3, model_name="m", meta={"weights": "random"})
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["architecture"]) == (16, 48, 5, "topk")
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post" and cfg["normalize_activations"] == "none"
    got = load_sae(tmp_path / "s", d_model=16, n_layers=4, layer=3)
    assert got.layer == 3 and got.meta["weights"] == "random"
    x = torch.randn(50, 16)
    torch.testing.assert_close(got.sae.encode(x), sae.encode(x))
    torch.testing.assert_close(got.sae(x), sae(x))
    assert int((got.sae.encode(x) > 0).sum(-1).max()) <= 5


def test_saelens__refuses_wrong_width_layer_and_architecture(tmp_path):
    save_sae(random_sae(), tmp_path / "s", layer=3, model_name="m")
    with pytest.raises(SAELoadError, match="d_in = 16, the model's residual stream is 1024"):
        load_sae(tmp_path / "s", d_model=1024)
    with pytest.raises(SAELoadError, match="is layer 3 in musicinterp's convention, not layer 2"):
        load_sae(tmp_path / "s", layer=2)
    with pytest.raises(SAELoadError, match=r"model has layers 0..2"):
        load_sae(tmp_path / "s", n_layers=2)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(SAELoadError, match="architecture 'gated' is not supported"):
        load_sae(tmp_path / "s")
    with pytest.raises(SAELoadError, match="is not an SAELens folder"):
        load_sae(tmp_path / "nothing")


def test_saelens__reads_the_pre_6_layout_of_checkpoints_trained_elsewhere(tmp_path):
    """Older SAELens folders (and many published ones) name k in activation_fn_kwargs and the hook at the top."""
    sae = random_sae()
    save_sae(sae, tmp_path / "s", layer=1, model_name="m")
    cfg = {
        "d_in": 16,
        "d_sae": 48,
        "hook_point": "blocks.0.hook_resid_post",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 5},
        "apply_b_dec_to_input": False,
        "normalize_activations": False,
    }
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    got = load_sae(tmp_path / "s", d_model=16, layer=1)
    x = torch.randn(20, 16)
    # without apply_b_dec_to_input the encoder sees x itself: pre = x W_enc + b_enc
    expected = sae.topk(x @ sae.W_enc + sae.b_enc) @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(got.sae(x), expected)


def test_saelens__sae_lens_itself_loads_ours_with_the_same_outputs(tmp_path):
    """Runs where SAELens is importable (not a dependency: it pulls wandb, datasets, transformer-lens)."""
    sae_lens = pytest.importorskip("sae_lens")
    sae = random_sae()
    save_sae(sae, tmp_path / "s", layer=3, model_name="m")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"), device="cpu")
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.k == 5
    x = torch.randn(40, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x))
        torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae(x))
    theirs.save_model(str(tmp_path / "t"))  # and theirs back through our loader
    torch.testing.assert_close(load_sae(tmp_path / "t", layer=3).sae(x), sae(x))


# ---- BatchTopK -------------------------------------------------------------------------------------------
def random_batchtopk(d_in: int = 16, d_sae: int = 48, k: int = 5, seed: int = 0) -> BatchTopKSAE:
    sae = BatchTopKSAE(d_in, d_sae, k)
    sae.load_state_dict({**random_sae(d_in, d_sae, k, seed).state_dict(), **dict(sae.named_buffers())})
    return sae


def test_batchtopk__k_per_frame_on_average_in_training_and_a_threshold_at_inference():
    sae = random_batchtopk()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pre = sae.pre_acts(x)
        acts = sae.topk(pre)
    per_frame = (acts > 0).sum(-1)
    assert int(per_frame.sum()) == 5 * 64  # k x batch kept over the whole batch ...
    assert int(per_frame.min()) < 5 < int(per_frame.max())  # ... not k on every frame
    kept = acts[acts > 0]
    assert float(kept.min()) >= float(torch.relu(pre).flatten().topk(5 * 64).values.min())
    sae.update_threshold(acts, lr=0.01)  # the first estimate is this batch's smallest kept activation
    torch.testing.assert_close(sae.threshold, torch.full((48,), float(kept.min())))
    with torch.no_grad():
        got = sae.encode(x)
        torch.testing.assert_close(got, torch.relu(pre) * (pre > sae.threshold))
        torch.testing.assert_close(sae.encode(x[:3]), got[:3])  # a frame's features do not depend on its batch
        # on the batch the threshold came from, the same features fire, but for the smallest (pre > threshold)
        assert torch.equal(got > 0, acts > float(kept.min())) and int((got > 0).sum()) == 5 * 64 - 1
    sae.update_threshold(acts * 2, lr=0.25)  # later batches move it at the rate given
    torch.testing.assert_close(sae.threshold, torch.full((48,), 1.25 * float(kept.min())))


def test_batchtopk__trains_saves_as_saelens_jumprelu_and_loads_back(null_store, tmp_path):
    spec = small_spec(null_store, kind="batchtopk", train_frames=40 * 256)
    assert spec.fingerprint() != small_spec(null_store).fingerprint()
    train_layer(spec, 2, tmp_path)
    cfg = json.loads((tmp_path / "layer2" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["k"] == 4
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "layer2" / "sae_weights.safetensors"))
    assert sorted(weights) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    sl = load_sae(tmp_path / "layer2", d_model=16, layer=2)
    assert isinstance(sl.sae, BatchTopKSAE) and sl.meta["kind"] == "batchtopk"
    thr = float(sl.sae.threshold[0])
    assert thr > 0 and torch.equal(sl.sae.threshold, weights["threshold"])
    assert sl.meta["threshold"] == pytest.approx(thr)
    ds = xr.open_zarr(null_store, chunks=None, consolidated=False)
    x = torch.from_numpy(np.asarray(ds["resid"].values[0, 2, :200], np.float32))
    with torch.no_grad():
        pre = sl.sae.pre_acts(x)
        torch.testing.assert_close(sl.sae.encode(x), torch.relu(pre) * (pre > thr))
        l0 = float((sl.sae.encode(x) > 0).sum(-1).float().mean())
    assert 1.0 <= l0 <= 16.0, l0  # the threshold learned in training keeps about k = 4 per frame
    save_sae(sl.sae, tmp_path / "again", layer=2, model_name="m")  # round trip: same outputs
    torch.testing.assert_close(load_sae(tmp_path / "again").sae(x), sl.sae(x))


def test_batchtopk__sae_lens_itself_loads_ours_as_jumprelu_with_the_same_outputs(tmp_path):
    """Runs where SAELens is importable (see test_saelens__sae_lens_itself_loads_ours_with_the_same_outputs)."""
    sae_lens = pytest.importorskip("sae_lens")
    sae = random_batchtopk()
    with torch.no_grad():
        sae.threshold.fill_(0.4)
    save_sae(sae, tmp_path / "s", layer=3, model_name="m")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"), device="cpu")
    assert type(theirs).__name__ == "JumpReLUSAE"
    x = torch.randn(40, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x))
        torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae(x))


# ---- streaming and training ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def null_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("sae") / "null.zarr", n_clips=24, n_sources=12, seed=1)


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    return make_store(
        tmp_path_factory.mktemp("sae") / "planted.zarr",
        n_clips=24,
        n_sources=12,
        seed=2,
        planted_layer=2,
        planted_target="rec_within_2s",
        planted_snr=2.0,
    )


def test_stream__every_frame_once_per_epoch_within_the_memory_bound(null_store):
    ds = xr.open_zarr(null_store, chunks=None)
    clips = complete_clips(ds)
    stream = ClipStream(ds, 1, clips, buffer_frames=300, seed=0)
    total = int(ds["n_frames"].values[clips].sum())
    rows = [stream.next_batch(100) for _ in range(total // 100)]
    got = np.concatenate(rows)
    want = np.concatenate([ds["resid"].values[c, 1, : ds["n_frames"].values[c]] for c in clips]).astype(np.float32)
    # the first epoch's frames, each exactly once (batches drawn from the buffer straddle epochs only at the end)
    assert stream.max_rows_held <= stream.capacity == 300 + 200
    common = {r.tobytes() for r in want}
    assert sum(r.tobytes() in common for r in got) == len(got) and len({r.tobytes() for r in got}) >= 0.95 * total


def small_spec(store: str, **kw) -> SAETrainSpec:
    base = dict(
        store=store,
        layers=[2],
        d_sae=32,
        k=4,
        train_frames=8 * 256,
        batch_size=256,
        lr=3e-3,
        shuffle_buffer_frames=600,
        checkpoint_every_steps=2,
        dead_after_frames=512,
        loss_clips=0,
    )
    return SAETrainSpec(**{**base, **kw})


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_sae_train__resume_after_kill_gives_the_uninterrupted_weights(null_store, tmp_path, kind):
    spec = small_spec(null_store, kind=kind)
    whole = train_layer(spec, 2, tmp_path / "a")
    killed = train_layer(spec, 2, tmp_path / "b", stop_after_steps=3)
    assert killed["stopped_at"] == 3 and not (tmp_path / "b" / "layer2").exists()
    resumed = train_layer(spec, 2, tmp_path / "b")
    assert resumed["resumed"] and whole["steps"] == resumed["steps"] == 8
    a, b = load_sae(tmp_path / "a" / "layer2").sae, load_sae(tmp_path / "b" / "layer2").sae
    for name in ("W_enc", "W_dec", "b_enc", "b_dec") + (("threshold",) if kind == "batchtopk" else ()):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    with pytest.raises(ValueError, match="written for other settings"):
        train_layer(small_spec(null_store, k=3, kind=kind), 2, tmp_path / "b")


def test_sae_train__metrics_on_held_out_clips(null_store, tmp_path):
    spec = small_spec(null_store, train_frames=40 * 256)
    train_layer(spec, 2, tmp_path)
    sl = load_sae(tmp_path / "layer2", layer=2)
    held = sl.meta["eval_clips"]
    ds = xr.open_zarr(null_store, chunks=None, consolidated=False)
    src = dict(zip(ds["clip"].values.tolist(), ds["source_id"].values.tolist()))
    held_src = {src[c] for c in held}
    assert held and len(held) < 24 and all(src[c] not in held_src for c in src if c not in held)  # whole sources
    m = evaluate_sae(null_store, 2, sl.sae, held, np.zeros(16, np.float32), None, 0, 0.1)
    assert 0 < m["nmse"] < 1 and 0 < m["explained_variance"] < 1 and m["l0"] <= 4
    assert 0 <= m["dead_fraction"] <= 1 and np.isnan(m["loss_spliced"])
    m_id = evaluate_sae(null_store, 2, identity_sae(16), held, np.zeros(16, np.float32), None, 0, 0.1)
    assert m_id["nmse"] < 1e-10 and m_id["explained_variance"] == pytest.approx(1.0)


# ---- splicing into the model, ablation -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_codes():
    return torch.randint(0, 2048, (4, 40), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_splice__identity_sae_keeps_the_loss_and_the_mean_raises_it(tiny_model, tiny_codes, layer):
    from musicinterp.sae.splice import reconstruct, replace_with

    spec = CaptureSpec()
    clean, n = next_code_loss(tiny_model, tiny_codes, spec)
    with edit_layer(tiny_model, layer, reconstruct(identity_sae(tiny_model.hidden_size)), slice(1, 41)):
        same, n2 = next_code_loss(tiny_model, tiny_codes, spec)
    with edit_layer(tiny_model, layer, replace_with(torch.zeros(tiny_model.hidden_size)), slice(1, 41)):
        other, _ = next_code_loss(tiny_model, tiny_codes, spec)
    assert n == n2 == 4 * 40 - (0 + 1 + 2 + 3)  # codebook k of the last k frames falls past step T
    assert same == pytest.approx(clean, rel=1e-5)
    assert abs(other - clean) > 100 * abs(same - clean)  # a zeroed layer changes what the identity keeps
    assert next_code_loss(tiny_model, tiny_codes, spec)[0] == pytest.approx(clean, rel=1e-6)  # hook removed


def test_ablate_features__subtracts_the_decoder_contribution_and_keeps_the_error():
    sae = random_sae()
    x = torch.randn(30, 16)
    acts = sae.encode(x)
    f = int(acts.sum(0).argmax())
    out = ablate_features(x, sae, [f])
    torch.testing.assert_close(x - out, acts[:, [f]] * sae.W_dec[f][None, :])
    every = ablate_features(x, sae, range(sae.d_sae))  # all ablated: the error term and b_dec are what is left
    torch.testing.assert_close(every, x - sae(x) + sae.b_dec)
    torch.testing.assert_close(ablate_features(x, sae, [f], scale=1.0), x)
    assert callable(ablation(sae, [f]))


def test_write_feature_store__opens_with_plain_xarray(planted_store, tmp_path):
    sae = random_sae()
    path = write_feature_store(planted_store, 2, sae, [1, 7], tmp_path / "f.zarr", attrs={"sae": "x"})
    ds = xr.open_zarr(path)
    assert ds["feature_acts"].dims == ("clip", "time", "sae_feature") and ds["feature_acts"].dtype == np.float16
    x = torch.from_numpy(xr.open_zarr(planted_store)["resid"].values[3, 2, :200].astype(np.float32))
    want = sae.encode(x)[:, [1, 7]].detach().numpy().astype(np.float16)
    np.testing.assert_allclose(ds["feature_acts"].values[3, :200], want, rtol=1e-3, atol=1e-3)


# ---- ranking: the known answer at reduced size ---------------------------------------------------------
def test_rank__finds_a_planted_feature_and_none_on_the_null_store(planted_store, null_store, tmp_path):
    """Layer 2 of the planted store carries 'event within 2 s'; the null store (the 'random twin') carries nothing."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for store, out in ((planted_store, tmp_path / "p"), (null_store, tmp_path / "n")):
        for layer in (1, 2):
            train_layer(small_spec(store, layers=[1, 2], train_frames=30 * 256), layer, out)
    spec = SAERankSpec(
        targets=["rec_within_2s"], top_n=2, analysis={"n_bootstrap": 50, "shifted_labels_control": False}
    )
    df = rank_store(planted_store, tmp_path / "p", spec, tmp_path / "r", null_store, tmp_path / "n")
    s = summary(df, 0.05)
    assert s["none"]["significant"] >= 1 and s["none"]["layers"] == [2], s
    assert s["random-model"]["significant"] == 0, s
    assert s["beyond-random"]["significant"] >= 1 and s["beyond-random"]["layers"] == [2], s
    cands = json.loads((tmp_path / "r" / "candidates.json").read_text())
    assert cands and all(c["layer"] == 2 and c["hook_name"] == "blocks.1.hook_resid_post" for c in cands)
    assert all(c["q_beyond_random"] is not None and c["q_trained_minus_random"] is not None for c in cands)
    assert all(c["direction"] in (-1, 1) for c in cands)
    assert (tmp_path / "r" / "ranked.parquet").exists()
    stored = xr.open_zarr(tmp_path / "r" / "features_layer2.zarr")
    assert sorted(stored["sae_feature"].values.tolist()) == sorted({c["feature"] for c in cands})


def test_cli_sae__bad_config_and_half_a_control_are_refused_before_anything_runs(tmp_path, capsys):
    from musicinterp_cli import main

    assert main(["sae", "train", str(tmp_path / "missing.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: x.zarr\nlayers: [1]\nk: 0\n")
    assert main(["sae", "train", str(bad)]) == 2
    assert main(["sae", "rank", "--store", "s.zarr", "--sae", "d", "--control-store", "t.zarr"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "k" in err and "--control-sae" in err


def test_spec__shipped_sae_configs_validate():
    from pathlib import Path

    from musicinterp.sae.spec import SAETrainSpec, load_spec

    paths = sorted((Path(__file__).parent.parent / "configs" / "sae").glob("*.yaml"))
    assert len(paths) == 3
    for path in paths:
        assert isinstance(load_spec(path, SAETrainSpec), SAETrainSpec)
