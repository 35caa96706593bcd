"""Known-answer tests of the causal machinery (hooks, controls, directions, outcomes) and the pair toy, reduced."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from analysis_factories import make_store

from musicinterp.analysis import analyze_store
from musicinterp.capture import text_condition
from musicinterp.causal import (
    ControlMatchError,
    Direction,
    Intervention,
    InterventionError,
    diff_of_means,
    intervening,
    layer_streams,
    load_directions,
    matched_controls,
    projection_variance,
    save_directions,
)
from musicinterp.causal.outcomes import paired, piece_outcomes, sign_flip_p
from musicinterp.causal.spec import CandidateSpec, InterventionSpec
from musicinterp.causal.toy import FLUENCY_FRAMES, WINDOWS, twin_pairs
from musicinterp.config import AnalysisSpec, CaptureSpec, ModelSpec
from musicinterp.toy import ONSET_FRAMES, load_toy, onset_losses

PAIR = "checkpoints/toy-pair"


@pytest.fixture(scope="module")
def toy():
    return load_toy(PAIR)


@pytest.fixture(scope="module")
def pairs(toy):
    return twin_pairs(toy, seed=3000, n=3)


def _forward(loaded, ids):
    """A teacher-forced forward over delayed inputs ``(piece, K, T + 1)``, as a closure for layer_streams."""
    states, mask = text_condition(loaded, CaptureSpec())
    b, k, s = ids.shape

    def run():
        return loaded.model(
            encoder_outputs=(states.expand(b, -1, -1),),
            attention_mask=mask.expand(b, -1),
            decoder_input_ids=ids.reshape(b * k, s),
            use_cache=False,
        )

    return run


def _streams(loaded, ids, layers):
    return layer_streams(loaded.model, layers, _forward(loaded, ids))


# --- the known answer on the pair toy ---------------------------------------------------------------------------


def test_whole_patch__middle_layer_from_other_cue_run_reproduces_its_onset_loss(toy, pairs):
    swapped = onset_losses(toy, pairs.swapped_ids)
    true = onset_losses(toy, pairs.ids)
    assert (swapped - true).mean() > 0.2  # the cue matters on these pieces
    src = _streams(toy, pairs.swapped_ids, [2])[2]
    every = (0, pairs.ids.shape[-1] - 1)
    with intervening(toy.model, [Intervention(2, every, "patch", source=src)]):
        patched = onset_losses(toy, pairs.ids)
    np.testing.assert_allclose(patched, swapped, atol=1e-5)


def test_whole_patch__from_the_same_run_changes_nothing(toy, pairs):
    src = _streams(toy, pairs.ids, [2])[2]
    with intervening(toy.model, [Intervention(2, (0, pairs.ids.shape[-1] - 1), "patch", source=src)]):
        patched = onset_losses(toy, pairs.ids)
    np.testing.assert_allclose(patched, onset_losses(toy, pairs.ids), atol=1e-6)


def test_piece_outcomes__event_is_onset_losses_and_fluency_is_outside_the_event(toy, pairs):
    o = piece_outcomes(toy, pairs.ids, ONSET_FRAMES, FLUENCY_FRAMES)
    np.testing.assert_allclose(o["event"], onset_losses(toy, pairs.ids), atol=1e-6)
    # codebook k of frame f is predicted at step f + k; the event's codes at steps ONSET_FRAMES (451, 452)
    assert (FLUENCY_FRAMES[1] - 1) + (toy.num_codebooks - 1) < ONSET_FRAMES[0]
    assert np.all((o["fluency"] > 0) & (o["fluency"] < 3))


# --- where and when the hooks act ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ids(tiny_model):
    from musicinterp.capture import delayed_decoder_input

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (2, tiny_model.num_codebooks, 40), generator=g)
    return torch.stack([delayed_decoder_input(tiny_model, c) for c in codes])


def test_intervening__changes_exactly_the_stated_steps(tiny_model, tiny_ids):
    layers = list(range(tiny_model.n_layers + 1))
    before = _streams(tiny_model, tiny_ids, layers)
    d = torch.randn(2, before[1].shape[-1])
    iv = Intervention(1, (10, 20), "ablate", directions=d)  # frames 10-19 = decoder steps 11-20
    assert iv.steps == (11, 21)
    with intervening(tiny_model.model, [iv]):
        after = _streams(tiny_model, tiny_ids, layers)
    changed = (after[1] - before[1]).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.nonzero().flatten().tolist() == list(range(11, 21))
    for layer in layers:  # nothing before the window moves, at any layer; step 0 (start token) never
        torch.testing.assert_close(after[layer][:, :11], before[layer][:, :11], rtol=0, atol=0)
    # the direction's component is gone at the window's steps
    q, _ = torch.linalg.qr(d.T)
    assert (after[1][:, 11:21] @ q).abs().max() < 1e-4
    # the embeddings (layer 0) are changed by a pre-hook, with the same step convention
    with intervening(tiny_model.model, [Intervention(0, (0, 1), "steer", directions=d[:1], alpha=3.0)]):
        emb = _streams(tiny_model, tiny_ids, [0])[0]
    moved = (emb - before[0]).abs().amax(dim=(0, 2)) > 1e-6
    assert moved.nonzero().flatten().tolist() == [1]


def test_intervening__with_the_kv_cache_equals_the_full_pass(tiny_model, tiny_ids):
    model = tiny_model.model
    states, mask = text_condition(tiny_model, CaptureSpec())
    b, k, s = tiny_ids.shape
    flat = tiny_ids.reshape(b * k, s)
    iv = [Intervention(2, (20, 35), "steer", directions=torch.randn(1, model.decoder.config.hidden_size), alpha=2.0)]
    enc = (states.expand(b, -1, -1),)
    with torch.no_grad(), intervening(model, iv):
        full = model(encoder_outputs=enc, attention_mask=mask.expand(b, -1), decoder_input_ids=flat).logits
        first = model(
            encoder_outputs=enc, attention_mask=mask.expand(b, -1), decoder_input_ids=flat[:, :25], use_cache=True
        )
        cache = first.past_key_values
        steps = [first.logits]
        for t in range(25, s):
            o = model(
                encoder_outputs=enc,
                attention_mask=mask.expand(b, -1),
                decoder_input_ids=flat[:, t : t + 1],
                cache=cache,
                use_cache=True,
            )
            cache = o.past_key_values
            steps.append(o.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        plain = model(encoder_outputs=enc, attention_mask=mask.expand(b, -1), decoder_input_ids=flat).logits
    assert (plain - full).abs().max() > 1e-3  # the intervention did something


def test_intervening__guided_batch_changes_only_the_named_half(tiny_model, tiny_ids):
    x = tiny_ids[:1].expand(2, -1, -1)  # one piece, as guidance doubles it: [conditional; unconditional]
    before = _streams(tiny_model, x, [1])[1]
    d = torch.randn(1, before.shape[-1])
    with intervening(
        tiny_model.model, [Intervention(1, (0, 30), "steer", d, alpha=1.0, half="unconditional")], guided=True
    ):
        after = _streams(tiny_model, x, [1])[1]
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])


def test_intervening__refuses_bad_interventions_and_removes_its_hooks(tiny_model, tiny_ids):
    d = torch.randn(1, tiny_model.model.decoder.config.hidden_size)
    with pytest.raises(InterventionError, match="layers 0..2"):
        with intervening(tiny_model.model, [Intervention(9, (0, 5), "ablate", d)]):
            pass
    with pytest.raises(InterventionError, match="patch needs"):
        with intervening(tiny_model.model, [Intervention(1, (0, 5), "patch", d)]):
            pass
    with pytest.raises(InterventionError, match="covers decoder steps 0..9"):
        with intervening(tiny_model.model, [Intervention(1, (0, 20), "patch", source=torch.zeros(10, d.shape[1]))]):
            pass
    with (
        pytest.raises(RuntimeError, match="boom"),
        intervening(tiny_model.model, [Intervention(1, (0, 5), "ablate", d)]),
    ):
        raise RuntimeError("boom")
    layers = tiny_model.model.decoder.model.decoder.layers
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in layers)


# --- matched controls -------------------------------------------------------------------------------------------


def _acts(seed=0, n=3000, d=24):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.linspace(0.2, 3.0, d)


@pytest.mark.parametrize("k", [1, 3])
def test_matched_controls__match_the_candidates_projection_variance(k):
    acts = _acts()
    cand = np.zeros((k, acts.shape[1]))
    for i in range(k):
        cand[i, -2 - 3 * i] = 1.0  # high-variance directions: isotropic draws would carry far less
    c = matched_controls(acts, cand, n=20, seed=5, tolerance=0.05)
    assert c.directions.shape == (20, k, acts.shape[1]) and len(c.seeds) == 20
    target = projection_variance(acts, cand)
    for q, v in zip(c.directions, c.variances):
        assert abs(projection_variance(acts, q) - target) <= 0.05 * target + 1e-9
        assert abs(v - projection_variance(acts, q)) < 1e-6 * target
    iso = projection_variance(acts, np.random.default_rng(1).standard_normal((k, acts.shape[1])))
    assert iso < 0.6 * target  # matching was needed
    again = matched_controls(acts, cand, n=20, seed=5, tolerance=0.05)
    np.testing.assert_array_equal(again.directions, c.directions)  # seeds make them reproducible


def test_matched_controls__never_the_candidate():
    acts = _acts()
    cand = np.zeros(acts.shape[1])
    cand[-1] = 1.0  # the top principal direction: draws near it are the candidate, and are refused
    c = matched_controls(acts, cand, n=10, seed=0, tolerance=0.1)
    assert np.abs(c.directions[:, 0, -1]).max() < 0.5


def test_matched_controls__raise_when_none_can_be_matched():
    with pytest.raises(ControlMatchError, match="only 0 of 20 .* never used as its own control"):
        matched_controls(_acts(), np.eye(24)[-1], n=20, tolerance=1e-9, max_draws=50)
    flat = np.ones((100, 24))
    with pytest.raises(ControlMatchError, match="no variance"):
        matched_controls(flat, np.eye(24)[0])


# --- directions -------------------------------------------------------------------------------------------------


def test_diff_of_means__recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    d = rng.standard_normal(32)
    d /= np.linalg.norm(d)
    b = rng.standard_normal((500, 32))
    a = b + 0.8 * d + 0.05 * rng.standard_normal((500, 32))
    v = diff_of_means(a, b, k=2)
    assert v.shape == (2, 32) and v[0] @ d > 0.99
    assert abs(v[0] @ v[1]) < 1e-9


def test_directions__save_load_round_trip_without_pickle(tmp_path):
    d = Direction("L2-x_2s", 2, np.arange(4.0), "probe", "x", 2.0, stats={"q_value": 0.01})
    save_directions([d], tmp_path, {"which": "all"})
    (back,) = load_directions(tmp_path)
    np.testing.assert_allclose(back.vector, d.vector)
    assert back.layer == 2 and back.stats == {"q_value": 0.01}
    meta = json.loads((tmp_path / "directions.json").read_text())
    assert meta["directions"][0]["norm"] == pytest.approx(np.linalg.norm(d.vector))
    with pytest.raises(FileNotFoundError, match="save_directions"):
        load_directions(tmp_path / "nothing")


def test_analysis__saves_the_significant_probe_direction_in_the_residual_basis(tmp_path):
    """A store with the event planted in layer 1's first 4 features (equally): the saved direction of the
    significant cell points there, in the store's basis also when the analysis projected the layer."""
    kw = {"n_clips": 16, "n_sources": 8, "n_frames": 400, "layers": 2, "hidden": 16}
    store = make_store(tmp_path / "s.zarr", planted_layer=1, weights="trained-here", seed=11, **kw)
    spec = AnalysisSpec(
        targets=["rec_within_2s"],
        layers=[1],
        frame_stride=10,
        n_folds=3,
        inner_folds=2,
        n_permutations=79,
        n_bootstrap=50,
        seed=3,
        shifted_labels_control=False,
        reduced_width=12,
    )
    df = analyze_store(store, spec, tmp_path / "out")
    assert df[(df["layer"] == 1) & (df["metric"] == "auroc")]["q_value"].iloc[0] < 0.05
    dirs = load_directions(tmp_path / "out")
    assert [d.name for d in dirs] == ["L1-rec_within_2s"]
    u = dirs[0].unit
    planted = np.r_[np.ones(4), np.zeros(12)] / 2.0
    assert u.shape == (16,) and u @ planted > 0.7  # a random unit vector: |cos| ~ 0.25


# --- statistics --------------------------------------------------------------------------------------------------


def test_paired__sign_flip_p_and_bootstrap_ci():
    rng = np.random.default_rng(0)
    assert sign_flip_p(np.full(10, 1.0), rng) == pytest.approx(2 / 2**10)  # exact: all same sign
    null = [sign_flip_p(rng.standard_normal(30), rng, 999) for _ in range(200)]
    assert 0.02 <= np.mean(np.array(null) <= 0.05) <= 0.09
    s = paired(np.column_stack([np.full(20, 0.5), np.full(20, 0.7)]), rng)  # two seeds per piece
    assert s["mean"] == pytest.approx(0.6) and s["ci_low"] == pytest.approx(0.6) and s["p"] < 1e-3


# --- the experiment at reduced size -----------------------------------------------------------------------------


def test_experiment__reduced_size_on_the_pair_toy(tmp_path):
    from musicinterp.causal.experiment import run_experiment

    spec = InterventionSpec(
        model=ModelSpec(source="local", name=PAIR, weights="trained-here"),
        control_model=None,
        n_pieces=3,
        n_fit_pieces=3,
        layers=[3],
        candidates=[CandidateSpec(kind="diff-means", k=1, n_controls=3)],
        fluency_stride=10,
        whole_patch_layers=[3],
        whole_patch_windows=["cue", "cue-end-to-return"],
        n_bootstrap=50,
    )
    df = run_experiment(spec, tmp_path)
    swap = df[df["experiment"] == "cue swap"].iloc[0]
    assert swap["event_effect"] > 0.2 and swap["weights"] == "trained-here"
    d = df[df["experiment"] == "direction"]
    assert set(d["operation"]) == {"ablate", "patch"}
    assert (d["control_variance_ratio_min"] >= 0.95).all() and (d["control_variance_ratio_max"] <= 1.05).all()
    assert np.isfinite(d["event_vs_controls_q"]).all()
    for f in ("results.csv", "causal-effects.png", "findings.md", "experiment.json"):
        assert (tmp_path / f).exists()
    assert "weights: trained-here" in (tmp_path / "findings.md").read_text()
    assert WINDOWS["cue"] == (0, 50)


def test_spec__probe_candidates_need_directions_and_fit_pieces_differ():
    with pytest.raises(ValueError, match="directions"):
        InterventionSpec(candidates=[CandidateSpec(kind="probe")])
    with pytest.raises(ValueError, match="fit_seed"):
        InterventionSpec(directions="x", seed=5, fit_seed=5)


def test_spec__shipped_intervene_configs_validate():
    from pathlib import Path

    from musicinterp.causal.spec import load_intervention_spec

    paths = sorted((Path(__file__).parent.parent / "configs" / "intervene").glob("*.yaml"))
    assert paths
    for path in paths:  # the files they name (runs/...) are made by documented runs, not here
        assert load_intervention_spec(path, check_files=False).name


def test_intervening__during_generation_acts_on_the_stated_generated_step(tiny_model):
    """Generation with the KV cache and both guidance halves: a steer over the first generated frame moves that
    frame's stored state by exactly alpha * d (its input code was drawn before the intervention acts)."""
    from musicinterp.config import GenerationSpec
    from musicinterp.generate.sampling import generate_continuation

    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 2048, (tiny_model.num_codebooks, 25), generator=g)
    gen = GenerationSpec(prompt_s=0.5, continuation_s=0.2, seeds=[0], write_audio=False, annotate=False)
    capture = CaptureSpec(layers=[1])
    base = generate_continuation(tiny_model, prompt, capture, gen, seed=3, dtype=torch.float32)
    d = torch.randn(1, tiny_model.model.decoder.config.hidden_size)
    iv = [Intervention(1, (25, 26), "steer", directions=d, alpha=0.5)]  # stored frame 25 = step 26: generated frame 0
    moved = generate_continuation(
        tiny_model,
        prompt,
        capture,
        gen,
        seed=3,
        dtype=torch.float32,
        intervention=lambda: intervening(tiny_model.model, iv, guided=True),
    )
    np.testing.assert_allclose(moved.resid[0, 0] - base.resid[0, 0], 0.5 * d[0].numpy(), atol=1e-4)
    far = [Intervention(1, (200, 210), "steer", directions=d, alpha=0.5)]  # after the continuation: no effect
    same = generate_continuation(
        tiny_model,
        prompt,
        capture,
        gen,
        seed=3,
        dtype=torch.float32,
        intervention=lambda: intervening(tiny_model.model, far, guided=True),
    )
    np.testing.assert_array_equal(same.codes, base.codes)
    np.testing.assert_allclose(same.resid, base.resid, atol=0)


# --- interventions during generation on the pair toy ------------------------------------------------------------


def _first(pairs, n):
    from musicinterp.causal.toy import TwinPairs

    return TwinPairs(pairs.ids[:n], pairs.swapped_ids[:n], pairs.seed, pairs.indices[:n])


def test_generation__embedding_patch_of_the_prompt_is_the_other_cue_prompt_and_a_same_run_patch_changes_nothing(
    toy, pairs
):
    """Patching the embeddings over the prompt's frames with the other-cue run's is generating from the other-cue
    prompt (the same codes, seed for seed); a patch from the same run changes nothing; a middle-layer patch from
    the other-cue run reaches the generated steps (through attention to the patched prompt)."""
    from musicinterp.causal.generation import codes_of, prompt_patch, prompt_streams
    from musicinterp.config import GenerationSpec
    from musicinterp.generate.sampling import generate_continuation

    two, p = _first(pairs, 2), 425
    gen = GenerationSpec(prompt_s=8.5, continuation_s=0.2, seeds=[0], guidance_scale=1.0, write_audio=False)
    other = prompt_streams(toy, two.swapped_ids, [0, 2], p)
    same = prompt_streams(toy, two.ids, [2], p)
    capture = CaptureSpec(layers=[3])

    def run(ids, i, seed, patch=None):
        factory = (lambda: intervening(toy.model, patch(i), guided=True)) if patch else None
        return generate_continuation(toy, codes_of(ids[i])[:, :p], capture, gen, seed, factory, torch.float32)

    for i, seed in ((0, 5), (1, 6)):
        base = run(two.ids, i, seed)
        np.testing.assert_array_equal(
            run(two.ids, i, seed, prompt_patch(0, other[0], p)).codes, run(two.swapped_ids, i, seed).codes
        )
        unchanged = run(two.ids, i, seed, prompt_patch(2, same[2], p))
        np.testing.assert_array_equal(unchanged.codes, base.codes)
        np.testing.assert_allclose(unchanged.resid, base.resid, atol=1e-5)
        moved = run(two.ids, i, seed, prompt_patch(2, other[2], p))
        assert np.abs(moved.resid[0, 0] - base.resid[0, 0]).max() > 1e-3


def test_generation__other_cue_patch_moves_the_generated_return_towards_c_on_the_trained_toy(toy, pairs):
    """Greedy continuations (no sampling noise) of 2 return pieces: the return score (A-match - C-match over the
    return window) falls under the cue swap and under a whole-stream patch of layer 2 from the other-cue run."""
    from musicinterp.causal.generation import generation_outcomes, prompt_patch, prompt_streams, return_references
    from musicinterp.config import GenerationSpec

    two = _first(pairs, 2)
    gen = GenerationSpec(prompt_s=8.5, continuation_s=2.5, seeds=[0], guidance_scale=1.0, top_k=1, write_audio=False)
    refs = return_references(toy, two, 11.0)
    none = generation_outcomes(toy, two.ids, refs, gen)
    swap = generation_outcomes(toy, two.swapped_ids, refs, gen)
    patched = generation_outcomes(
        toy, two.ids, refs, gen, prompt_patch(2, prompt_streams(toy, two.swapped_ids, [2], 425)[2], 425)
    )
    assert none.score.shape == (2, 1) and none.score.mean() > 0.1  # the return cue leans towards A
    assert swap.score.mean() < none.score.mean() - 0.05
    assert patched.score.mean() < none.score.mean() - 0.05
    assert np.all(np.isfinite(none.fluency)) and np.all(none.fluency > 0)


def test_generation__nothing_moves_on_the_random_twin(pairs):
    """The random twin never produces A's or C's codes: neither the cue nor the other-cue patch moves its score."""
    from musicinterp.causal.generation import generation_outcomes, prompt_patch, prompt_streams, return_references
    from musicinterp.config import GenerationSpec

    twin = load_toy("checkpoints/toy-pair-random")
    assert twin.weights == "random"
    two = _first(pairs, 2)  # a prompt up to 8.9 s: the continuation just covers the return window
    gen = GenerationSpec(prompt_s=8.9, continuation_s=1.7, seeds=[0], guidance_scale=1.0, top_k=1, write_audio=False)
    refs = return_references(twin, two, 11.0)
    none = generation_outcomes(twin, two.ids, refs, gen)
    patched = generation_outcomes(
        twin, two.ids, refs, gen, prompt_patch(2, prompt_streams(twin, two.swapped_ids, [2], 445)[2], 445)
    )
    assert np.abs(patched.score - none.score).max() < 0.02 and np.abs(none.score).max() < 0.02


def test_generation_effect_row__paired_against_none_and_against_the_controls():
    from musicinterp.causal.generation import GenerationOutcome, effect_row

    def outcome(a, c, fluency=0.5):
        n = np.zeros((10, 2))
        return GenerationOutcome(n + a, n + c, n + fluency, np.zeros((10, 2, 4, 5), int))

    none = outcome(0.2, 0.1)
    rng = np.random.default_rng(0)
    r = effect_row(outcome(0.1, 0.3), none, [outcome(0.2, 0.15), outcome(0.2, 0.05)], rng, n_boot=200)
    assert r["score_effect"] == pytest.approx(-0.3) and r["score_ci_low"] == pytest.approx(-0.3)
    assert r["score_p"] == pytest.approx(2 / 2**10)  # exact sign flips over 10 pieces, all the same sign
    assert r["controls_score_mean"] == pytest.approx(0.0) and r["controls_score_min"] == pytest.approx(-0.05)
    assert r["score_vs_controls"] == pytest.approx(-0.3) and r["nearer_a"] == 0.0
    assert r["fluency_effect"] == pytest.approx(0.0) and (r["n_pieces"], r["n_seeds"]) == (10, 2)


# --- SAE features as candidates (kind 'sae-feature') -------------------------------------------------------------


def _tiny_sae(tmp_path, layer=1, d_in=64, d_sae=256, name="sae"):
    from musicinterp.sae.model import TopKSAE
    from musicinterp.sae.saelens import save_sae

    sae = TopKSAE(d_in, d_sae, 8)
    sae.init_weights(torch.Generator().manual_seed(0))
    folder = tmp_path / name / f"layer{layer}"
    save_sae(sae, folder, layer=layer, model_name="offline/tiny")
    return sae, folder


def test_sae_edit__identity_where_the_feature_is_silent_and_its_decoder_contribution_where_it_fires(
    tiny_model, tiny_ids, tmp_path
):
    """The 'edit' intervention with musicinterp.sae.splice.ablation: a feature that never fires changes nothing
    anywhere (bit for bit); one that fires moves its layer by exactly -act x decoder row at the window's steps
    and nowhere else, nothing before the window at any layer, and the layers above it."""
    from musicinterp.sae.splice import ablation

    sae, _ = _tiny_sae(tmp_path)
    layers = list(range(tiny_model.n_layers + 1))
    before = _streams(tiny_model, tiny_ids, layers)
    with torch.no_grad():
        acts = sae.encode(before[1])  # (pieces, steps, d_sae)
    busy = int((acts[:, 11:21] > 0).sum(dim=(0, 1)).argmax())
    with torch.no_grad():
        sae.b_enc[0] = -1e4  # feature 0 can never fire
    with intervening(tiny_model.model, [Intervention(1, (10, 20), "edit", edit=ablation(sae, [0]))]):
        same = _streams(tiny_model, tiny_ids, layers)
    for layer in layers:
        torch.testing.assert_close(same[layer], before[layer], rtol=0, atol=0)
    with torch.no_grad():
        acts = sae.encode(before[1])
    assert (acts[:, 11:21, busy] > 0).sum() >= 3
    with intervening(tiny_model.model, [Intervention(1, (10, 20), "edit", edit=ablation(sae, [busy]))]):
        after = _streams(tiny_model, tiny_ids, layers)
    expected = torch.zeros_like(before[1])
    expected[:, 11:21] = -acts[:, 11:21, busy, None] * sae.W_dec[busy].detach()
    torch.testing.assert_close(after[1] - before[1], expected, rtol=0, atol=1e-5)
    for layer in layers:
        torch.testing.assert_close(after[layer][:, :11], before[layer][:, :11], rtol=0, atol=0)
    assert (after[2][:, 11:21] - before[2][:, 11:21]).abs().max() > 1e-3
    with pytest.raises(InterventionError, match="edit function goes with operation 'edit'"):
        with intervening(tiny_model.model, [Intervention(1, (10, 20), "edit")]):
            pass


def test_sae_controls__matched_in_frequency_and_contribution_never_the_candidate_or_its_family(tmp_path):
    from musicinterp.causal.sae_features import feature_stats, matched_features
    from musicinterp.sae.saelens import load_sae

    _, folder = _tiny_sae(tmp_path)
    sl = load_sae(folder)
    acts = np.random.default_rng(0).standard_normal((4000, 64)) * 2
    freq, contrib = feature_stats(sl, acts)
    with torch.no_grad():  # brute force: one feature's frequency and mean of a_f |W_dec[f]|
        a = sl.sae.encode(torch.from_numpy(acts).float())[:, 5]
    assert freq[5] == pytest.approx(float((a > 0).float().mean()))
    assert contrib[5] == pytest.approx(float(a.mean() * sl.sae.W_dec[5].detach().norm()), rel=1e-5)
    f = int(np.argsort(-freq)[10])
    c = matched_features(sl, acts, f, 4, seed=1, tolerance=0.2, exclude={int(np.argsort(-freq)[9])})
    assert len(c.features) == 4 and f not in c.features and int(np.argsort(-freq)[9]) not in c.features
    assert np.all(np.abs(c.frequency / c.target_frequency - 1) <= 0.2)
    assert np.all(np.abs(c.contribution / c.target_contribution - 1) <= 0.2)
    assert (
        matched_features(sl, acts, f, 4, seed=1, tolerance=0.2).features
        == matched_features(sl, acts, f, 4, seed=1, tolerance=0.2).features
    )  # seeded
    with pytest.raises(ControlMatchError, match="features match"):
        matched_features(sl, acts, f, 200, seed=1, tolerance=0.2)
    with torch.no_grad():
        sl.sae.b_enc[f] = -1e4
    with pytest.raises(ControlMatchError, match="never fires"):
        matched_features(sl, acts, f, 2, seed=1)


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_spec__sae_feature_families_are_checked_against_their_files_and_the_model(tmp_path, capsys):
    from musicinterp.causal.spec import load_intervention_spec
    from musicinterp.config import ConfigError
    from musicinterp_cli import main

    _, folder = _tiny_sae(tmp_path)
    _, narrow = _tiny_sae(tmp_path, d_in=32, name="narrow")
    _, other_layer = _tiny_sae(tmp_path, layer=2, name="l2")
    rank = tmp_path / "sae" / "rank"
    rank.mkdir()
    cands = [{"sae": "elsewhere/sae/layer1", "layer": 1, "feature": f, "target": "t"} for f in (7, 7, 3, 9)]
    (rank / "candidates.json").write_text(json.dumps(cands))
    head = "model: {source: offline, name: tiny}\ncontrol_model: null\nlayers: [1]\ncandidates:\n"
    ok = load_intervention_spec(_write(tmp_path, head + f"  - {{kind: sae-feature, sae: {folder}, features: [3]}}"))
    assert ok.candidates[0].operations == ["ablate"]
    from musicinterp.causal.sae_features import resolve_features

    found = resolve_features(str(rank / "candidates.json"), None, 2, [1])  # the SAE folder found beside the ranking
    assert [(f.layer, f.feature, f.folder) for f in found] == [(1, 7, str(folder)), (1, 3, str(folder))]
    bad = {
        f"{{kind: sae-feature, sae: {tmp_path / 'no'}, features: [3]}}": r"candidates\.0\.sae: .*is neither an SAE",
        f"{{kind: sae-feature, sae: {folder}, features: [256]}}": "feature 256 is out of range: the SAE has 0..255",
        f"{{kind: sae-feature, sae: {narrow}, features: [3]}}": "d_in = 32, the model's residual stream is 64",
        f"{{kind: sae-feature, sae: {other_layer}, features: [3]}}": "layer 2 .*not among the experiment's layers",
        f"{{kind: sae-feature, sae: {rank}, top: 2, features: [5]}}": "no candidate at layers",
        f"{{kind: sae-feature, sae: {folder}}}": "needs 'features'",
        f"{{kind: sae-feature, sae: {folder}, features: [3], operations: [patch]}}": "operations \\['ablate'\\] only",
        f"{{kind: diff-means, sae: {folder}}}": "belong to kind 'sae-feature'",
    }
    for family, message in bad.items():
        path = _write(tmp_path, head + f"  - {family}")
        with pytest.raises(ConfigError, match=message) as e:
            load_intervention_spec(path)
        assert str(path) in str(e.value)
    with pytest.raises(ConfigError, match="set control_model_candidates"):
        load_intervention_spec(
            _write(tmp_path, f"layers: [1]\ncandidates:\n  - {{kind: sae-feature, sae: {folder}, features: [3]}}")
        )
    capsys.readouterr()
    path = _write(tmp_path, head + f"  - {{kind: sae-feature, sae: {folder}, features: [999]}}")
    assert main(["intervene", str(path)]) == 2  # the CLI's config error: nothing runs
    captured = capsys.readouterr()
    assert "candidates.0.sae" in captured.out + captured.err and "feature 999 is out of range" in captured.err


def test_experiment__sae_feature_rows_end_to_end_on_the_tiny_model(tmp_path, tiny_model):
    """The smallest experiment with a ranking's top two features (2 twin pairs, 2 matched control features each):
    rows of kind 'sae feature' with the SAE folder and feature id, controls matched within the tolerance, in the
    BH family, the figure and the findings."""
    import pandas as pd

    from musicinterp.causal.experiment import _streams as streams
    from musicinterp.causal.experiment import _window_rows, run_experiment
    from musicinterp.causal.sae_features import feature_stats
    from musicinterp.sae.saelens import load_sae

    _, folder = _tiny_sae(tmp_path)
    fit = twin_pairs(tiny_model, 3001, 2)
    window = WINDOWS["to-return"]
    acts = np.vstack(
        [_window_rows(streams(tiny_model, ids, [1], "conditional", 8), 1, window) for ids in (fit.ids, fit.swapped_ids)]
    )
    busy = [int(f) for f in np.argsort(-feature_stats(load_sae(folder), acts)[0])[2:4]]
    rank = tmp_path / "sae" / "rank"
    rank.mkdir()
    (rank / "candidates.json").write_text(
        json.dumps([{"sae": str(folder), "layer": 1, "feature": f, "target": "t"} for f in busy])
    )
    spec = InterventionSpec(
        model=ModelSpec(),
        control_model=None,
        n_pieces=2,
        n_fit_pieces=2,
        layers=[1],
        candidates=[CandidateSpec(kind="sae-feature", sae=str(rank), top=2, n_controls=2)],
        whole_patch_layers=[],
        fluency_stride=50,
        n_bootstrap=20,
    )
    df = run_experiment(spec, tmp_path / "exp")
    d = df[df["experiment"] == "sae feature"]
    assert d["candidate"].tolist() == [f"sae-feature L1 f{f} (t)" for f in busy]
    assert d["feature"].astype(int).tolist() == busy and set(d["sae"]) == {str(folder.resolve())}
    for r in d.itertuples():
        controls = json.loads(r.control_features)
        assert len(controls) == 2 and not set(controls) & set(busy)  # never a candidate of the family
        for col in ("frequency", "contribution"):
            lo, hi = getattr(r, f"control_{col}_ratio_min"), getattr(r, f"control_{col}_ratio_max")
            assert 0.75 <= lo <= hi <= 1.25
    assert np.isfinite(d["event_vs_controls_q"]).all() and np.isfinite(d["event_q"]).all()
    assert (d["event_effect"] != 0).all()  # the ablation reaches the onset loss
    table = pd.read_csv(tmp_path / "exp" / "results.csv")
    assert (table["experiment"] == "sae feature").sum() == 2
    assert f"sae-feature L1 f{busy[0]} (t), ablate" in (tmp_path / "exp" / "findings.md").read_text()
