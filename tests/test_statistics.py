"""Known answers for the statistics at MusicGen's settings: valid permutations, resolution, fair controls,
the random-network baseline and the codec's look-ahead (issue "[1 of 7]")."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score

from musicinterp.analysis import permutation as pm
from musicinterp.analysis import probe_layer_target, ridge, stats
from musicinterp.analysis.data import save_labels, save_reduced
from musicinterp.analysis.ridge import DirectGroupedRidgeCV, GroupedRidgeCV, _predict, _split, cached_ridge_cv
from musicinterp.config import AnalysisSpec

FAST = {"n_bootstrap": 20, "n_folds": 3, "inner_folds": 2, "frame_stride": 1, "codec_lookahead_frames": 0}


def _rows_of(lens: list[int], stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    clip = np.concatenate([np.full(len(range(0, n, stride)), j) for j, n in enumerate(lens)])
    frame = np.concatenate([np.arange(0, n, stride) for n in lens])
    return clip, frame


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(3, 40), min_size=2, max_size=7),
    st.integers(4, 15),
    st.integers(1, 3),
    st.integers(0, 2**31 - 1),
)
def test_window_classes__a_draw_keeps_every_label_at_its_offset_in_a_window_of_equal_frames(lens, window, stride, seed):
    clip, frame = _rows_of(lens, stride)
    n_frames = np.asarray(lens)
    classes = pm.window_classes(clip, frame, n_frames, window)
    perm = pm.random_draw(len(clip), classes, np.random.default_rng(seed))
    assert sorted(perm) == list(range(len(clip)))
    k, kk = frame // window, frame[perm] // window
    assert (k == kk).all() and (frame % window == frame[perm] % window).all()  # same offset in the clip
    length = np.minimum(window, n_frames[clip] - k * window)
    assert (length == np.minimum(window, n_frames[clip[perm]] - k * window)).all()  # exact frame counts
    # every member of a class moves as a whole window: rows of one source window go to one target window
    for m in classes.members:
        for member in m:
            assert len(np.unique(clip[perm[member]])) == 1
    n_all = sum(1 for _ in pm.all_draws(len(clip), classes)) if classes.log10_arrangements() < 3 else None
    if n_all is not None:
        assert n_all == round(10 ** classes.log10_arrangements())


def test_permutation_test__enumerates_small_groups_exactly_and_counts_the_identity():
    clip, frame = _rows_of([10, 10, 10, 10])
    classes = pm.window_classes(clip, frame, np.array([10, 10, 10, 10]), 10)  # one class of 4: 24 arrangements
    y = np.repeat([3.0, 1.0, 2.0, 0.0], 10)

    def stat(perms):
        return {"s": np.array([float(np.dot(y[p][:10], np.ones(10))) for p in perms])}

    res = pm.permutation_test(
        {"s": 30.0}, stat, len(y), classes, np.random.default_rng(0), min_draws=99, max_draws=99, sequential_h=10
    )
    assert res.exact and res.n_draws == 23
    assert res.p["s"] == pytest.approx(6 / 24)  # clip 0 keeps its own track in 3! of the 4! arrangements


def test_permutation_test__besag_clifford_stops_early_on_null_and_runs_to_the_budget_on_an_effect():
    clip, frame = _rows_of([5] * 12)
    classes = pm.window_classes(clip, frame, np.full(12, 5), 5)
    rng = np.random.default_rng(1)

    def noise(perms):
        return {"s": rng.standard_normal(len(perms))}

    null = pm.permutation_test(
        {"s": 0.0}, noise, len(clip), classes, rng, min_draws=20, max_draws=5000, sequential_h=10
    )
    assert null.n_draws <= 64 and null.p["s"] > 0.2  # stopped in the first block
    strong = pm.permutation_test(
        {"s": 10.0}, noise, len(clip), classes, rng, min_draws=20, max_draws=5000, sequential_h=10
    )
    assert strong.n_draws == 5000 and strong.p["s"] == pytest.approx(1 / 5001)


def _null_files(
    tmp,
    seed: int,
    lens: list[int],
    n_sources: int,
    hidden: int = 8,
    phi: float = 0.9,
    plant: float = 0.0,
    nonlinear: bool = False,
):
    """Labels and one layer as the probe reads them: AR(1) activations, labels from sparse events within 1 s.

    ``plant``: the layer's first feature carries the label with this strength. ``nonlinear``: the label is
    (audio > 1) for an AR(1) 'audio' a(t); the controls hold a(t) and the layer (and a 'random network') hold
    only random non-linear features of it.
    """
    rng = np.random.default_rng(seed)
    clip, frame = _rows_of(lens)
    N = len(clip)
    audio = np.concatenate([stats.ar1_noise(rng, n, 1, 0.8)[:, 0] for n in lens])
    if nonlinear:
        y = (np.abs(audio) > 1.0).astype(np.int8)
    else:
        ev = rng.random(N) < 1 / 50
        y = np.zeros(N, np.int8)
        for j in range(len(lens)):
            idx = np.flatnonzero(clip == j)
            e = ev[idx]
            y[idx] = [e[i + 1 : i + 51].any() for i in range(len(idx))]
    valid = frame + 50 < np.asarray(lens)[clip]  # the window (t, t + 1 s] inside the clip: censored like the store
    controls = np.column_stack([frame / 50.0, audio])
    X = np.concatenate([stats.ar1_noise(rng, n, hidden, phi) for n in lens])
    R = np.concatenate([stats.ar1_noise(rng, n, hidden, phi) for n in lens])
    if plant:
        X[:, 0] += plant * (y - y.mean())
    if nonlinear:
        Wt, Wr = rng.standard_normal((2, hidden)), rng.standard_normal((2, hidden))
        basis = np.column_stack([audio, np.ones(N)])
        X = np.tanh(3 * basis @ Wt) + 0.05 * X
        R = np.tanh(3 * basis @ Wr) + 0.05 * R
    clips = [f"c{j}" for j in range(len(lens))]
    sources = [f"s{j % n_sources}" for j in range(len(lens))]
    lab = save_labels(
        tmp / f"labels{seed}.npz",
        clip=clip,
        frame=frame,
        clips=clips,
        sources=sources,
        n_frames=np.asarray(lens),
        controls=controls,
        control_names=["t_s", "audio"],
        targets={"ev_1s": {"y": y, "valid": valid, "lag": np.zeros(N), "lag_valid": np.zeros(N, bool)}},
        weights="random",
    )
    red = save_reduced(tmp / f"layer{seed}.npz", X, clip, frame, clips, 1)
    base = save_reduced(tmp / f"random{seed}.npz", R, clip, frame, clips, 1)
    return str(red), str(lab), str(base)


@pytest.mark.parametrize("lens", [[150, 150], [150, 150, 150], [150, 150, 97, 97, 120, 120]])
def test_null__classes_too_small_for_alpha_are_refused_with_a_note(tmp_path, lens):
    red, lab, _ = _null_files(tmp_path, 0, lens, n_sources=len(lens))
    spec = AnalysisSpec(n_permutations=19, window_s=10.0, min_sources=2, **FAST)
    rows = probe_layer_target(red, lab, "ev_1s", spec)
    assert all(math.isnan(r["p_value"]) for r in rows)
    assert "distinct label arrangements" in rows[0]["note"]


def test_null__many_clips_per_class_keep_the_false_positive_rate(tmp_path):
    """40 null experiments of 12 clips of one length (one window class of 12 per offset): rejections at 0.05
    must be consistent with 5% (a binomial test at 0.01), never the 23-50% the old swap gave."""
    spec = AnalysisSpec(n_permutations=19, max_permutations=19, sequential_h=0, window_s=1.0, **FAST)
    p = [
        probe_layer_target(*_null_files(tmp_path, s, [100] * 12, 12)[:2], "ev_1s", spec)[0]["p_value"]
        for s in range(40)
    ]
    rejections = int(np.sum(np.asarray(p) <= 0.05))
    assert binomtest(rejections, 40, 0.05, alternative="greater").pvalue > 0.01, p


def test_controls_only__out_of_fold_auroc_is_not_below_chance_on_null(tmp_path):
    spec = AnalysisSpec(n_permutations=1, max_permutations=1, sequential_h=0, window_s=1.0, **FAST)
    base = [
        probe_layer_target(
            *_null_files(tmp_path, s, [100] * 12, 12, plant=0.0)[:2], "ev_1s", spec, return_predictions=True
        )[0]
        for s in range(16)
    ]
    pooled = [stats.auroc(r["_y"], r["_p_controls"]) for r in base]
    within = [stats.auroc(r["_y"], r["_p_controls"], strata=r["_fold"]) for r in base]
    assert abs(np.mean(within) - 0.5) < 2.5 * np.std(within) / 4, within  # 16 experiments: chance within noise
    assert np.mean(within) > np.mean(pooled)  # pooling folds' intercepts is what pulled it below 0.5


def test_random_network_baseline__removes_a_gain_that_is_only_nonlinear_audio(tmp_path):
    red, lab, base = _null_files(tmp_path, 5, [200] * 12, 12, hidden=16, nonlinear=True)
    spec = AnalysisSpec(n_permutations=39, max_permutations=39, window_s=1.0, **FAST)
    plain = probe_layer_target(red, lab, "ev_1s", spec)[0]
    beyond = probe_layer_target(red, lab, "ev_1s", spec, control="beyond-random", baseline_npz=base)
    assert plain["gain"] > 0.05 and plain["p_value"] <= 0.05  # beyond linear controls: a "gain"
    assert beyond[0]["control"] == "beyond-random" and beyond[0]["p_value"] > 0.05  # beyond a random network: none
    tmr = [r for r in beyond if r["control"] == "trained-minus-random"][0]
    assert tmr["p_value"] > 0.05


def test_planted_direction__full_width_finds_what_a_random_projection_loses(tmp_path):
    """One direction among 256 isotropic noise dimensions: a projection to 8 keeps ~8/256 of its signal."""
    red, lab, _ = _null_files(tmp_path, 7, [150] * 16, 16, hidden=256, phi=0.5, plant=2.0)
    full = AnalysisSpec(n_permutations=39, max_permutations=39, window_s=1.0, **FAST)
    rows = probe_layer_target(red, lab, "ev_1s", full)
    assert rows[0]["p_value"] <= 1 / 40 + 1e-9 and rows[0]["gain"] > 0.1
    z = dict(np.load(red))
    W = np.random.default_rng(0).standard_normal((256, 8)) / math.sqrt(8)
    save_reduced(tmp_path / "proj.npz", z["X"] @ W, z["clip"], z["frame"], list(z["clips"]), 1)
    proj = probe_layer_target(str(tmp_path / "proj.npz"), lab, "ev_1s", full)
    assert proj[0]["gain"] < rows[0]["gain"] / 2


def test_ridge__permutation_refits_equal_direct_fits_with_the_moving_own_lag_columns():
    rng = np.random.default_rng(0)
    n, p, B = 240, 20, 3
    Z, Y = rng.standard_normal((n, p)), rng.standard_normal((n, B))
    L = rng.standard_normal((n, 2, B))
    tr, te = np.arange(180), np.arange(180, 240)
    pred = _predict(_split(Z, tr, te), Y, L, np.array([7.0]))[0]
    for b in range(B):
        F = np.hstack([Z, L[:, :, b]])
        mu, sd = F[tr].mean(0), F[tr].std(0)
        ref = Ridge(alpha=7.0).fit((F[tr] - mu) / sd, Y[tr, b]).predict((F[te] - mu) / sd)
        np.testing.assert_allclose(pred[:, b], ref, atol=1e-9)
    groups = np.repeat(np.arange(12), 20)
    y = (Z[:, 0] > 0).astype(float)
    P, chosen = GroupedRidgeCV(Z, groups, 4, 3, [0.001, 1000.0]).oof(np.column_stack([y, rng.permutation(y)]))
    assert roc_auc_score(y, P[:, 0]) > 0.9 and (chosen[:, 0] == 0.001).all()  # signal: weak ridge
    assert (chosen[:, 1] == 1000.0).mean() >= 0.5  # noise: mostly the strongest


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_auroc_columns__equals_sklearn_within_each_stratum(seed, k):
    rng = np.random.default_rng(seed)
    n = 120
    strata = rng.integers(0, k, n)
    Y = rng.random((n, 3)) < 0.4
    P = np.round(rng.standard_normal((n, 3)) + Y, 1)
    got = stats.auroc_columns(Y, P, strata)
    for b in range(3):
        num = den = 0.0
        for s in range(k):
            m = strata == s
            if 0 < Y[m, b].sum() < m.sum():
                npos, nneg = Y[m, b].sum(), m.sum() - Y[m, b].sum()
                num += roc_auc_score(Y[m, b], P[m, b]) * npos * nneg
                den += npos * nneg
        assert got[b] == pytest.approx(num / den, abs=1e-12) if den else math.isnan(got[b])
        assert stats.auroc(Y[:, b], P[:, b], strata=strata) == pytest.approx(got[b], abs=1e-12, nan_ok=True)


def test_codec_lookahead__audio_changed_after_frame_t_moves_latents_from_t_minus_4(tiny_model):
    """MusicGen's 32 kHz EnCodec is not causal: measured on the model's own encoder, independently of
    musicinterp.codec, then compared with what musicinterp.codec derives from the config alone."""
    import torch
    from transformers import EncodecConfig

    from musicinterp.codec import lookahead_frames

    enc = tiny_model.model.audio_encoder.encoder
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 1, 640 * 80)).astype(np.float32))
    y = x.clone()
    y[..., 640 * 40 :] = torch.from_numpy(rng.standard_normal((1, 1, 640 * 40)).astype(np.float32))
    with torch.no_grad():
        moved = (enc(x)[0] - enc(y)[0]).abs().amax(dim=0) > 1e-6
    first = int(torch.nonzero(moved)[0])
    assert first == 36 and not moved[:36].any()
    assert lookahead_frames(tiny_model.model.config.audio_encoder) == 40 - first == 4
    assert lookahead_frames(EncodecConfig(use_causal_conv=True)) == 0


def test_reduce_layer__reads_the_layer_as_many_frames_before_the_label_as_the_codec_hears(tmp_path):
    import xarray as xr
    from analysis_factories import make_store

    from musicinterp.analysis import load_labels, reduce_layer

    store = make_store(tmp_path / "s.zarr", n_clips=3, n_sources=3, n_frames=200, layers=1, hidden=4)
    ramp = np.broadcast_to(np.arange(200, dtype=np.float16)[None, None, :, None], (3, 2, 200, 4)).copy()
    xr.Dataset({"resid": (("clip", "layer", "time", "feature"), ramp)}).to_zarr(store, mode="r+", consolidated=False)
    for look, attr in ((4, None), (0, 0), (7, 7)):
        if attr is not None:  # the attribute written at capture wins over the assumed default
            import zarr

            zarr.open_group(store, mode="r+").attrs["codec_lookahead_frames"] = attr
        spec = AnalysisSpec(reduced_width=None, frame_stride=5)
        z = np.load(reduce_layer(store, 1, spec, tmp_path / f"l{look}.npz"))
        lab = np.load(load_labels(store, spec, tmp_path / f"lab{look}.npz"))
        np.testing.assert_array_equal(z["frame"], lab["frame"])
        assert z["frame"].min() >= look
        np.testing.assert_array_equal(z["X"][:, 0], z["frame"] - look)  # the layer at t - lookahead
        assert bool(str(lab["meta_lookahead_note"])) == (attr is None)


def test_shifted_labels__every_window_takes_another_members_track_at_the_same_offset():
    """Labels valid only in a stretch before a fixed time (the toy's truth labels): the control hands each clip
    another clip's track, so the valid stretch stays where it was and the class keeps its rows."""
    lens = [100] * 12
    clip, frame = _rows_of(lens)
    classes = pm.window_classes(clip, frame, np.asarray(lens), 100)
    for seed in range(20):
        perm = pm.control_draw(len(clip), classes, np.random.default_rng(seed))
        assert (clip[perm] != clip).all() and (frame[perm] == frame).all()
    valid = (frame >= 60) & (frame < 80)
    assert pm.consensus_valid(valid[perm], classes).sum() == valid.sum()


@pytest.mark.parametrize("n, p", [(720, 40), (300, 400)])
def test_ridge__fast_path_equals_the_direct_path_under_moving_labels(n, p):
    """The atom-summed Gram path (rows >= columns) and its fallback (rows < columns) give the direct path's
    out-of-fold predictions and chosen strengths, with constant, partly constant and large-mean columns."""
    rng = np.random.default_rng(n)
    Z = rng.standard_normal((n, p))
    Z[:, 1] = 5.0  # constant everywhere
    Z[:, 2] = (np.arange(n) < 60).astype(float)  # constant in the training sets that exclude the first group
    Z[:, 3] += 1e3  # a large mean
    groups = np.repeat(np.arange(12), n // 12)
    y = (Z[:, 0] + rng.standard_normal(n) > 0).astype(float)
    Y = np.column_stack([y] + [rng.permutation(y) for _ in range(5)])
    L = rng.standard_normal((n, 2, Y.shape[1]))
    L[:, 1] = 0.0  # an own-lag column that is undefined everywhere
    fast = GroupedRidgeCV(Z, groups, 5, 3, [0.01, 0.1, 1.0, 10.0, 100.0])
    direct = DirectGroupedRidgeCV(Z, groups, 5, 3, [0.01, 0.1, 1.0, 10.0, 100.0])
    assert all(it.H is None for _, inner in fast.outer for it in inner) == (n < p)
    np.testing.assert_array_equal(fast.fold, direct.fold)
    for own in (None, L):
        (P, c), (Pd, cd) = fast.oof(Y, own), direct.oof(Y, own)
        np.testing.assert_allclose(P, Pd, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(c, cd)


def test_ridge__the_cache_reuses_a_design_only_when_it_is_the_same(monkeypatch):
    rng = np.random.default_rng(0)
    Z, groups = rng.standard_normal((120, 5)), np.repeat(np.arange(6), 20)
    a = cached_ridge_cv(Z, groups, 3, 2, [0.1, 1.0])
    assert cached_ridge_cv(Z.copy(), groups, 3, 2, [1.0, 0.1]) is a
    Z2 = Z.copy()
    Z2[0, 0] += 1e-9
    assert cached_ridge_cv(Z2, groups, 3, 2, [0.1, 1.0]) is not a
    assert cached_ridge_cv(Z, groups, 4, 2, [0.1, 1.0]) is not a
    assert cached_ridge_cv(Z, groups, 3, 2, [0.1, 1.0]) is a  # still kept: three small entries fit
    monkeypatch.setattr(ridge, "CACHE_BYTES", 0)
    b = cached_ridge_cv(Z2 + 1.0, groups, 3, 2, [0.1, 1.0])
    assert list(ridge._CACHE.values()) == [b] and b.nbytes() >= Z.nbytes  # over the budget: only the newest


def test_probe__fast_ridge_gives_the_direct_paths_p_values_and_aurocs(tmp_path, monkeypatch):
    """The whole probe (observed fit, 29 permutations, p_cluster, bootstrap) on the fast path and on the direct
    path: the same permutations give the same gains, p-values and scores, for the real analysis and its control."""
    red, lab, _ = _null_files(tmp_path, 3, [150] * 12, 12, hidden=16, phi=0.5, plant=1.0)
    spec = AnalysisSpec(n_permutations=29, max_permutations=29, window_s=1.0, **FAST)
    keys = ("gain", "p_value", "p_cluster", "score_controls", "score_full", "ci_low", "ci_high")
    fast = [probe_layer_target(red, lab, "ev_1s", spec, c) for c in ("none", "shifted-labels")]
    monkeypatch.setattr(ridge, "GroupedRidgeCV", DirectGroupedRidgeCV)
    ridge._CACHE.clear()
    direct = [probe_layer_target(red, lab, "ev_1s", spec, c) for c in ("none", "shifted-labels")]
    ridge._CACHE.clear()
    assert fast[0][0]["p_value"] <= 0.05 < fast[1][0]["p_value"]  # a found signal, and a control that loses it
    for rows_f, rows_d in zip(fast, direct):
        for rf, rd in zip(rows_f, rows_d):
            for k in keys:
                np.testing.assert_allclose(rf[k], rd[k], rtol=0, atol=1e-9, err_msg=f"{rf['control']} {k}")


def _clustered_draws(rng: np.random.Generator, n: int, n_draws: int, n_groups: int):
    """Labels and out-of-fold-like probabilities of ``n_draws`` draws whose frames share a per-cluster effect."""
    g = rng.integers(0, n_groups, n)
    eff = rng.standard_normal(n_groups)[g]
    Y, P0, P1 = (np.empty((n, n_draws)) for _ in range(3))
    for b in range(n_draws):
        s0, s1 = 0.5 * rng.standard_normal(n) + eff, rng.standard_normal(n) + 0.3 * eff
        Y[:, b] = rng.random(n) < 1 / (1 + np.exp(-(0.3 * s0 + 0.4 * (b % 2) * s1 + eff)))
        P0[:, b], P1[:, b] = 1 / (1 + np.exp(-s0)), 1 / (1 + np.exp(-s1))
    return Y, P0, P1, g


@pytest.mark.parametrize("scores", [False, True])
def test_cluster_wald_t_batch__equals_statsmodels_per_draw_including_degenerate_draws(scores):
    """One batched fit of all draws gives statsmodels' cluster-robust t of every draw (the one-at-a-time
    reference), and the same NaN and note where a draw separates perfectly, has a constant controls' score
    (two-column design), a constant layer score, or a layer score collinear with the controls'."""
    rng = np.random.default_rng(0)
    Y, P0, P1, g = _clustered_draws(rng, 1500, 24, 12)
    Y[:, 0] = P1[:, 0] > 0.5  # perfect separation: fitted probabilities round to 0 and 1
    Y[:, 1] = (P1[:, 1] > 0.7) | ((rng.random(1500) < 0.05) & (P1[:, 1] > 0.4))  # nearly separated, finite
    P0[:, 2] = 0.3
    P1[:, 3] = 0.4
    P1[:, 4] = P0[:, 4]
    if scores:  # ridge scores enter as they are
        P0, P1 = 0.2 * stats._logit(P0), 0.1 * stats._logit(P1) + 0.5
    ref = [stats.cluster_wald_t(Y[:, b], P0[:, b], P1[:, b], g, scores=scores) for b in range(Y.shape[1])]
    t, notes = stats.cluster_wald_t_batch(Y, P0, P1, g, scores=scores)
    t_ref = np.array([r[0] for r in ref])
    assert notes == [r[1] for r in ref]
    assert "undefined" in notes[0] and "constant or collinear" in notes[3] and "constant or collinear" in notes[4]
    np.testing.assert_array_equal(np.isnan(t), np.isnan(t_ref))
    assert np.isfinite(t_ref).sum() == 21 and np.isfinite(t_ref[[1, 2]]).all()
    np.testing.assert_allclose(t, t_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(t, t_ref, rtol=1e-9)  # to float rounding, in fact
    t2, notes2 = stats.cluster_wald_t_batch(Y, P0, P1, g % 2, scores=scores)
    assert np.isnan(t2).all() and set(notes2) == {"p_cluster: fewer than 3 clusters"}
    with pytest.raises(ValueError, match="must be 0 or 1"):
        stats.cluster_wald_t_batch(0.5 * Y, P0, P1, g, scores=scores)


def test_logistic_irls__stops_and_fails_to_converge_where_statsmodels_does():
    """statsmodels' IRLS, step for step: with 3 steps the fits have not converged (NaN t and the note) and their
    coefficients are statsmodels' after 3 steps; with the default 100 the coefficients equal its fit."""
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    Y, P0, P1, g = _clustered_draws(rng, 800, 4, 8)
    Y[:, 0] = P1[:, 0] > 0.5
    X = np.stack([np.column_stack([np.ones(800), stats._logit(P0[:, b]), stats._logit(P1[:, b])]) for b in range(4)])
    for maxiter in (3, 100):
        beta, converged = stats._logistic_irls(X.transpose(0, 2, 1).copy(), Y.T.copy(), maxiter)
        for b in range(4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = sm.GLM(Y[:, b], X[b], family=sm.families.Binomial()).fit(maxiter=maxiter)
            assert converged[b] == fit.converged
            np.testing.assert_allclose(beta[b], fit.params, rtol=1e-8)
        assert converged.all() == (maxiter == 100)
    t, notes = stats.cluster_wald_t_batch(Y, P0, P1, g, maxiter=3)
    assert np.isnan(t).all() and set(notes) == {"p_cluster: GLM did not converge (separation?)"}


@pytest.mark.parametrize("estimator", ["ridge", "logistic"])
def test_probe__batched_p_cluster_equals_the_one_fit_per_draw_path(tmp_path, monkeypatch, estimator):
    """The whole probe with p_cluster's null fitted in one batch per block of draws and with statsmodels once per
    draw (the previous path): the same permutations give the same t per draw (1e-6) and identical p_cluster."""
    red, lab, _ = _null_files(tmp_path, 3, [150] * 12, 12, hidden=16, phi=0.5, plant=1.0)
    spec = AnalysisSpec(n_permutations=29, max_permutations=29, window_s=1.0, estimator=estimator, **FAST)
    batched_t: list[np.ndarray] = []
    batch = stats.cluster_wald_t_batch

    def recorded(*args, **kwargs):
        out = batch(*args, **kwargs)
        batched_t.append(out[0])
        return out

    monkeypatch.setattr(stats, "cluster_wald_t_batch", recorded)
    new = [probe_layer_target(red, lab, "ev_1s", spec, c) for c in ("none", "shifted-labels")]
    one_t: list[np.ndarray] = []

    def one_at_a_time(Y, P0, P1, groups, scores=False):
        r = [stats.cluster_wald_t(Y[:, b], P0[:, b], P1[:, b], groups, scores=scores) for b in range(Y.shape[1])]
        one_t.append(np.array([x[0] for x in r]))
        return one_t[-1], [x[1] for x in r]

    monkeypatch.setattr(stats, "cluster_wald_t_batch", one_at_a_time)
    ridge._CACHE.clear()
    old = [probe_layer_target(red, lab, "ev_1s", spec, c) for c in ("none", "shifted-labels")]
    ridge._CACHE.clear()
    t_new, t_old = np.concatenate(batched_t), np.concatenate(one_t)
    assert len(t_new) == 2 * 29 and np.isfinite(t_old).all()
    np.testing.assert_allclose(t_new, t_old, rtol=0, atol=1e-6)
    p = [r["p_cluster"] for rows in new for r in rows]
    assert p == [r["p_cluster"] for rows in old for r in rows]
    assert min(p) <= 0.05 and all(np.isfinite(p))  # the planted layer is found


@pytest.mark.parametrize("n, p", [(720, 40), (300, 400)])
def test_ridge__torch_on_the_cpu_gives_the_numpy_paths_predictions_and_strengths(n, p):
    """analysis.device 'torch-cpu' runs the same GroupedRidgeCV with torch's eigh and products: out-of-fold
    predictions equal numpy's to 1e-9 and the chosen strengths exactly, in the primal and the dual form, with
    and without the own-lag columns; the cache keeps the two apart."""
    rng = np.random.default_rng(p)
    Z = rng.standard_normal((n, p))
    Z[:, 1] = 5.0
    Z[:, 3] += 1e3
    groups = np.repeat(np.arange(12), n // 12)
    y = (Z[:, 0] + rng.standard_normal(n) > 0).astype(float)
    Y = np.column_stack([y] + [rng.permutation(y) for _ in range(5)])
    L = rng.standard_normal((n, 2, Y.shape[1]))
    grid = [0.01, 0.1, 1.0, 10.0, 100.0]
    ref, tch = GroupedRidgeCV(Z, groups, 5, 3, grid), GroupedRidgeCV(Z, groups, 5, 3, grid, device="torch-cpu")
    assert type(ref._be).__name__ == "Backend" and type(tch._be).__name__ == "TorchBackend"
    for own in (None, L):
        (P, c), (Pt, ct) = ref.oof(Y, own), tch.oof(Y, own)
        np.testing.assert_allclose(Pt, P, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(ct, c)
    ridge._CACHE.clear()
    a = cached_ridge_cv(Z, groups, 5, 3, grid)
    assert cached_ridge_cv(Z, groups, 5, 3, grid, "torch-cpu") is not a
    assert cached_ridge_cv(Z, groups, 5, 3, grid, "cpu") is a
    ridge._CACHE.clear()


def test_probe__torch_cpu_device_gives_the_numpy_paths_gains_p_and_q_values(tmp_path):
    """The whole probe on a planted layer (observed fit, 29 draws, p_cluster, bootstrap, BH) with
    analysis.device='torch-cpu' and with the numpy default: gains and scores within 1e-9, p, p_cluster and q
    identical, for the real analysis and its control."""
    from musicinterp.analysis.report import results_frame

    red, lab, _ = _null_files(tmp_path, 3, [150] * 12, 12, hidden=16, phi=0.5, plant=1.0)
    spec = AnalysisSpec(n_permutations=29, max_permutations=29, window_s=1.0, **FAST)
    runs = []
    for device in ("cpu", "torch-cpu"):
        ridge._CACHE.clear()
        spec_d = AnalysisSpec.model_validate({**spec.model_dump(), "device": device})
        rows = [r for c in ("none", "shifted-labels") for r in probe_layer_target(red, lab, "ev_1s", spec_d, c)]
        runs.append(results_frame(rows, spec.alpha))
        kinds = {type(cv._be).__name__ for cv in ridge._CACHE.values()}
        assert kinds == {"Backend" if device == "cpu" else "TorchBackend"}  # the designs ran where asked
    ridge._CACHE.clear()
    ref, tch = runs
    assert ref.loc[(ref.control == "none") & (ref.metric == "auroc"), "p_value"].item() <= 0.05  # found
    for k in ("gain", "score_controls", "score_full", "ci_low", "ci_high"):
        np.testing.assert_allclose(tch[k], ref[k], rtol=0, atol=1e-9, err_msg=k)
    for k in ("p_value", "p_cluster", "q_value"):
        np.testing.assert_array_equal(tch[k], ref[k], err_msg=k)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "mps"])
def test_analysis_device__a_bad_device_is_a_config_error_naming_the_field(device):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"analysis\.device="):
        AnalysisSpec(device=device)


def test_analysis_device__cpu_keeps_the_fingerprint_and_another_device_changes_it():
    assert AnalysisSpec().fingerprint() == AnalysisSpec(device="cpu").fingerprint() == "042affc14ffe56f3"
    assert AnalysisSpec(device="torch-cpu").fingerprint() != AnalysisSpec().fingerprint()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_analysis_device__cuda_without_cuda_fails_when_planned_before_the_store_is_read(tmp_path, device):
    """A valid device string this machine cannot run fails at plan time (the flow's plan_store, the in-process
    analyze_store), before the store is opened: the store here does not even exist."""
    from musicinterp.analysis import analyze_store, plan_store
    from musicinterp.analysis.backend import AnalysisDeviceError

    spec = AnalysisSpec(device=device)
    missing = str(tmp_path / "missing.zarr")
    with pytest.raises(AnalysisDeviceError, match=rf"analysis\.device='{device}'.*no CUDA device"):
        plan_store(missing, spec)
    with pytest.raises(AnalysisDeviceError, match="set analysis.device to 'cpu'"):
        analyze_store(missing, spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()
