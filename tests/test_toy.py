"""The positive control: cue pieces (known answers) and the toy model trained on them (shipped checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from musicinterp.annotate.truth import truth_labels
from musicinterp.capture import capture_clip, delayed_decoder_input, encode_audio
from musicinterp.config import DESCRIPTOR_LOOKAHEAD_S, AnnotationSpec, CaptureSpec, CueSource, ModelSpec, SliceSpec
from musicinterp.frames import FRAME_RATE_HZ, SAMPLE_RATE_HZ
from musicinterp.models import LoadedModel, load_model
from musicinterp.slice import load_clip_audio, plan_slice
from musicinterp.sources.cue import (
    A_LEN_S,
    A_START_S,
    CUE_END_S,
    MOTIFS,
    RETURN_AT_S,
    RETURN_END_S,
    compose,
    cue_recipe,
    plan_cue,
    with_cue,
)
from musicinterp.toy import (
    MAX_ONSET_P,
    MAX_RATIO_TO_RANDOM,
    MIN_ONSET_GAIN_NATS,
    ONSET_FRAMES,
    ToySpec,
    build_toy,
    encode_pieces,
    encoder_digest,
    evaluate_toy,
    heldout,
    load_toy,
    save_random_twin,
    train_toy,
    training_pieces,
)
from musicinterp.toy.data import _pieces

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "checkpoints" / "toy-cue"
TOY_RANDOM = ROOT / "checkpoints" / "toy-cue-random"
PAIR = ROOT / "checkpoints" / "toy-pair"
PAIR_RANDOM = ROOT / "checkpoints" / "toy-pair-random"
FRESH_SEED = 4242  # neither the training (0), the held-out (1000) nor the calibration seed
RET_FRAME = int(RETURN_AT_S * FRAME_RATE_HZ)
A_FRAME = int(A_START_S * FRAME_RATE_HZ)
A_FRAMES = int(A_LEN_S * FRAME_RATE_HZ)
ENCODER_MEMORY_FRAMES = 12  # the toy EnCodec is causal and has no LSTM: a frame sees ~12 frames of audio
PIECE_S = 11.0


def _piece(index: int, returns: bool, seed: int = 3) -> tuple[np.ndarray, dict]:
    return compose({"seed": seed, "index": index, "duration_s": PIECE_S, "returns": returns})


def _span(x: np.ndarray, a_s: float, b_s: float) -> np.ndarray:
    return x[int(round(a_s * SAMPLE_RATE_HZ)) : int(round(b_s * SAMPLE_RATE_HZ))]


NOT_SHIPPED = (
    "checkpoints/toy-cue is not shipped yet: no training run has passed the learned-structure "
    "check (musicinterp.toy.evaluate_toy); train it with `musicinterp train-toy`"
)


@pytest.fixture(scope="module")
def toy():
    if not (TOY / "model.safetensors").exists():
        pytest.skip(NOT_SHIPPED)
    return load_toy(TOY)


@pytest.fixture(scope="module")
def toy_random():
    if not (TOY_RANDOM / "model.safetensors").exists():
        pytest.skip(NOT_SHIPPED)
    return load_toy(TOY_RANDOM)


@pytest.fixture(scope="module")
def toy_codec():
    """The toy's EnCodec (causal, no LSTM, calibrated codebooks) with an untrained decoder: no checkpoint needed."""
    return LoadedModel(build_toy(ToySpec()), None, "toy-untrained", "local", "random")


# ---- cue pieces ---------------------------------------------------------------------------------------
def test_cue__plan_gives_truth_with_the_return_at_the_fixed_time():
    tracks = list(plan_cue(CueSource(n_pieces=10, seed=5, return_fraction=0.5)))
    assert len(tracks) == 10 and all(t.source == "cue" for t in tracks)
    kinds = [t.truth["cue"] for t in tracks]
    assert kinds.count("return") == 5 and kinds.count("no-return") == 5
    for t in tracks:
        assert len(t.samples) == PIECE_S * SAMPLE_RATE_HZ and t.samples.dtype == np.float32
        assert ("r-p" in t.source_id) == (t.truth["cue"] == "return")
        if t.truth["cue"] == "return":
            assert t.truth["returns"] == [
                {
                    "source_start_s": A_START_S,
                    "source_end_s": A_START_S + A_LEN_S,
                    "start_s": RETURN_AT_S,
                    "end_s": RETURN_END_S,
                }
            ]
        else:
            assert t.truth["returns"] == []
        assert t.truth["return_points"] == [
            {"start_s": RETURN_AT_S, "end_s": RETURN_END_S, "returns": t.truth["cue"] == "return"}
        ]
        assert 0 <= t.truth["motif"] < len(MOTIFS)
    # deterministic from (seed, index)
    again = list(plan_cue(CueSource(n_pieces=10, seed=5)))
    assert all(np.array_equal(a.samples, b.samples) and a.truth == b.truth for a, b in zip(tracks, again))


def test_cue__truth_asks_whether_a_returns_only_just_before_the_return_point():
    """truth_return_within_h: defined in the h seconds before the return point of every piece, 1 exactly
    where A returns; the cue ends more than the controls' reach (5.33 s) before that window."""
    spec = AnnotationSpec(horizons_s=[1, 2])
    n = int(PIECE_S * FRAME_RATE_HZ)
    t = np.arange(n) / FRAME_RATE_HZ
    for returns in (True, False):
        truth = _piece(0, returns)[1]
        lab = truth_labels(truth["returns"], n, spec, return_points=truth["return_points"])
        for h in (1, 2):
            valid = lab[f"truth_return_within_{h}s_valid"]
            window = (t >= RETURN_AT_S - h - 1e-9) & (t <= RETURN_AT_S + 1e-9)  # the onset frame included
            assert np.array_equal(np.flatnonzero(valid), np.flatnonzero(window)) and valid.sum() == h * 50 + 1
            assert (lab[f"truth_return_within_{h}s"][valid] == int(returns)).all()
            assert not lab[f"truth_return_within_{h}s"][~valid].any()
            assert RETURN_AT_S - h - 2 * max(DESCRIPTOR_LOOKAHEAD_S.values()) > CUE_END_S
    # without return points (the synthetic sources) every frame whose horizon ends in the clip is asked
    ret = [{"source_start_s": 1.0, "source_end_s": 2.0, "start_s": 6.0, "end_s": 7.0}]
    lab = truth_labels(ret, n, spec)
    pos = np.flatnonzero(lab["truth_return_within_2s"])
    assert pos[0] == 200 and pos[-1] == 300 and len(pos) == 101
    assert lab["truth_return_within_2s_valid"].sum() == n - 100
    assert not truth_labels(None, n, spec)["truth_return_within_2s_valid"].any()


def test_cue__return_section_is_section_a_sample_for_sample():
    x, truth = _piece(0, returns=True)
    a = _span(x, A_START_S, A_START_S + A_LEN_S)
    assert np.abs(a).max() > 0.05
    assert np.array_equal(a, _span(x, RETURN_AT_S, RETURN_END_S))
    y, _ = _piece(0, returns=False)
    assert not np.allclose(a, _span(y, RETURN_AT_S, RETURN_END_S), atol=1e-3)


def test_cue__twins_differ_only_in_the_cue_and_the_return_section():
    """Nothing audible between the cue and the return point tells the kinds apart."""
    for index in range(4):
        r, _ = _piece(index, returns=True)
        n, _ = _piece(index, returns=False)
        assert not np.allclose(_span(r, 0, CUE_END_S), _span(n, 0, CUE_END_S), atol=1e-3)
        assert np.array_equal(_span(r, CUE_END_S, RETURN_AT_S), _span(n, CUE_END_S, RETURN_AT_S))
        assert np.array_equal(_span(r, RETURN_END_S, PIECE_S), _span(n, RETURN_END_S, PIECE_S))


def test_cue__with_cue_is_the_twin_up_to_the_return_point():
    """The counterfactual of the learned-structure check: only the cue changes."""
    r, _ = _piece(5, returns=True)
    n, _ = _piece(5, returns=False)
    swapped = with_cue(r, "no-return")
    assert np.array_equal(_span(swapped, 0, RETURN_AT_S), _span(n, 0, RETURN_AT_S))
    assert np.array_equal(_span(swapped, RETURN_AT_S, PIECE_S), _span(r, RETURN_AT_S, PIECE_S))
    assert np.array_equal(with_cue(r, "return"), r)


def test_cue__cues_are_clearly_different_and_the_same_in_every_piece():
    spectra = {}
    for returns in (True, False):
        cues = [_span(_piece(i, returns, seed=s)[0], 0.1, 0.9) for i, s in ((0, 1), (3, 7))]
        assert np.array_equal(cues[0], cues[1])
        spectra[returns] = np.abs(np.fft.rfft(cues[0]))
    corr = np.corrcoef(spectra[True], spectra[False])[0, 1]
    assert corr < 0.5


def _pair(index: int, returns: bool, seed: int = 3) -> tuple[np.ndarray, dict]:
    return compose(cue_recipe(seed, index, PIECE_S, returns, "pair"))


def test_cue_pair__equal_chords_say_return_and_each_chord_sounds_alone():
    """The pair cue is chord, silence, chord; A returns when the chords are equal. Each stretch of audio
    depends on one chord only, so what a network retains of it is additive in the two chords."""
    seen = set()
    firsts, seconds = {}, {}
    for index in range(12):
        for returns in (True, False):
            x, truth = _pair(index, returns)
            first, second = truth["cue_chords"]
            assert (first == second) == returns and truth["design"] == "pair"
            seen.add((first, second))
            assert not _span(x, 0.4, 0.8).any()  # the first chord's release ends inside its slot
            for store, key, span in ((firsts, first, _span(x, 0.0, 0.4)), (seconds, second, _span(x, 0.8, 1.0))):
                if key in store:
                    assert np.array_equal(store[key], span)
                store[key] = span
            r, _ = _piece(index, returns, seed=3)  # the same piece in the chord design after the cue
            assert np.array_equal(_span(x, CUE_END_S, PIECE_S), _span(r, CUE_END_S, PIECE_S))
    assert len(seen) == 4  # every combination occurs
    # the chord design's locators are as they were (no 'design' key): existing stores keep their clips
    assert "design" not in next(plan_cue(CueSource(n_pieces=1, seed=5))).locator
    assert json.loads(next(plan_cue(CueSource(n_pieces=1, seed=5, design="pair"))).locator)["design"] == "pair"


def test_cue_pair__with_cue_changes_only_the_second_chord():
    x, truth = _pair(2, returns=True)
    twin, twin_truth = _pair(2, returns=False)
    assert twin_truth["cue_chords"][0] == truth["cue_chords"][0]
    swapped = with_cue(x, "no-return", truth["cue_chords"])
    assert np.array_equal(_span(swapped, 0, RETURN_AT_S), _span(twin, 0, RETURN_AT_S))
    assert np.array_equal(with_cue(x, "return", truth["cue_chords"]), x)


def _probe_auroc_at_the_return_point(loaded: LoadedModel, design: str, n_twins: int = 32) -> float:
    """Out-of-fold AUROC of 'A returns' from the last layer at the two frames before the return point, on
    twins (each piece with both cues: the audio after the cue cannot tell the classes apart), folds by twin."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats, ys, twin = [], [], []
    for i in range(n_twins):
        for returns in (True, False):
            resid = capture_clip(loaded, compose(cue_recipe(77, i, PIECE_S, returns, design))[0], CaptureSpec()).resid
            feats.append(resid[-1, RET_FRAME - 1 : RET_FRAME + 1].astype(np.float32).mean(0))
            ys.append(int(returns))
            twin.append(i)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    p = cross_val_predict(probe, np.stack(feats), np.array(ys), cv=GroupKFold(4), groups=twin, method="predict_proba")[
        :, 1
    ]
    return float(roc_auc_score(ys, p))


def test_cue_pair__a_random_network_retains_the_chord_cue_but_not_the_pair_answer(toy_codec):
    """Why the pair design exists: an untrained decoder's attention carries the codes heard so far, so a
    probe reads the chord cue 8 s later; equality of two chords is not linear in what it carries."""
    assert _probe_auroc_at_the_return_point(toy_codec, "chord") > 0.85  # measured 1.00
    assert _probe_auroc_at_the_return_point(toy_codec, "pair") < 0.65  # measured 0.54


def test_cue__too_short_pieces_are_refused():
    with pytest.raises(ValueError, match="duration_s >= 11"):
        compose({"seed": 0, "index": 0, "duration_s": 10.0, "returns": True})


def test_cue__slice_plans_and_reloads_cue_clips():
    manifest = plan_slice(SliceSpec(name="cue", sources=[CueSource(n_pieces=3, seed=2)], n_shards=2))
    assert [c.source for c in manifest.clips] == ["cue"] * 3
    clip = manifest.clips[0]
    assert clip.duration_s == pytest.approx(PIECE_S)
    assert np.array_equal(load_clip_audio(clip), compose(json.loads(clip.locator))[0])


def test_cue__codes_repeat_at_the_return_and_match_between_twins_before_it(toy_codec):
    r, _ = _piece(1, returns=True)
    n, _ = _piece(1, returns=False)
    cr, cn = encode_audio(toy_codec, r).numpy(), encode_audio(toy_codec, n).numpy()
    a = cr[:, A_FRAME : A_FRAME + A_FRAMES]
    back = cr[:, RET_FRAME : RET_FRAME + A_FRAMES]
    same = (a == back).all(axis=0)
    assert same[ENCODER_MEMORY_FRAMES:].all()  # only the first frames still hear what came before
    fresh = cn[:, RET_FRAME : RET_FRAME + A_FRAMES]
    assert (a == fresh).all(axis=0).mean() < 0.5
    # the codes up to the return point are the same in both kinds once the cue is out of earshot
    assert np.array_equal(
        cr[:, A_FRAME + ENCODER_MEMORY_FRAMES : RET_FRAME], cn[:, A_FRAME + ENCODER_MEMORY_FRAMES : RET_FRAME]
    )
    assert not np.array_equal(cr[:, :A_FRAME], cn[:, :A_FRAME])
    assert len(np.unique(cr[0])) > 10  # the codes carry the notes, not one constant


def test_cue__first_codes_that_hear_the_return_are_the_onset_frames(toy_codec):
    """The causal codec gives the return's first frame the same code after either cue; the codes that first
    differ are those of ONSET_FRAMES, which the toy must predict from the cue (and the probe asks there)."""
    differ = []
    for index in range(8):
        cr = encode_audio(toy_codec, _piece(index, returns=True, seed=FRESH_SEED)[0]).numpy()[0]
        cn = encode_audio(toy_codec, _piece(index, returns=False, seed=FRESH_SEED)[0]).numpy()[0]
        assert np.array_equal(
            cr[A_FRAME + ENCODER_MEMORY_FRAMES : RET_FRAME + 1], cn[A_FRAME + ENCODER_MEMORY_FRAMES : RET_FRAME + 1]
        )
        differ.append([cr[f] != cn[f] for f in ONSET_FRAMES])
    assert np.mean(differ) >= 0.5 and np.mean(differ, axis=0)[-1] >= 0.6


# ---- the shipped toy model ------------------------------------------------------------------------------
def test_toy__shipped_checkpoint_loads_as_trained_here(toy, toy_random):
    assert toy.weights == "trained-here" and toy.model_id == "musicinterp/toy-cue"
    assert load_model(ModelSpec(source="local", name=str(TOY), weights="trained-here")).weights == "trained-here"
    assert toy_random.weights == "random"
    meta = json.loads((TOY / "musicinterp.json").read_text())
    assert meta["weights"] == "trained-here" and meta["toy_spec"]["seed"] == 0
    assert (TOY / "model.safetensors").stat().st_size < 12e6
    assert (TOY / "README.md").exists()
    same_shape = [(a.shape == b.shape) for a, b in zip(toy.model.parameters(), toy_random.model.parameters())]
    assert all(same_shape)
    assert {p.dtype for p in toy.model.parameters()} == {torch.float32}


def test_toy__capture_works_on_the_shipped_model(toy):
    x, _ = _piece(2, returns=True, seed=FRESH_SEED)
    cap = capture_clip(toy, x, CaptureSpec())
    assert cap.resid.shape == (toy.n_layers + 1, PIECE_S * FRAME_RATE_HZ, toy.hidden_size)
    assert np.isfinite(cap.resid.astype(np.float32)).all()


def test_toy__learned_the_return_far_below_random_on_unseen_pieces(toy, toy_random):
    held = heldout(toy, FRESH_SEED, 48)  # 24 return pieces for the paired test
    assert 0 < held.returns.sum() < len(held.returns) and len(held.swapped_ids) == held.returns.sum()
    report = evaluate_toy(toy, toy_random, held)
    t, r = report["trained"], report["random"]
    assert report["learned"], report
    assert t["return_return_cue"] <= MAX_RATIO_TO_RANDOM * r["return_return_cue"]
    assert t["return_return_cue"] < t["return_no_return_cue"]  # A is predictable after the return cue
    # the cue itself, not the audio after it, predicts the return's first codes
    assert t["onset_gain"] >= MIN_ONSET_GAIN_NATS and t["onset_p"] < MAX_ONSET_P
    assert r["onset_right_cue"] == pytest.approx(r["onset_swapped_cue"], abs=0.05)  # the random model: no memory
    # the random model is at chance over 2048 codes everywhere, whatever the cue
    assert r["return_return_cue"] > 6.0 and abs(r["return_return_cue"] - r["return_no_return_cue"]) < 0.5
    # before the return both kinds are the same audio: the trained model's loss there must not depend on the cue
    assert abs(t["before_return_cue"] - t["before_no_return_cue"]) < 0.5


# ---- training ---------------------------------------------------------------------------------------------
def test_train_toy__a_few_steps_lower_the_loss_and_the_checkpoint_round_trips(tmp_path):
    spec = ToySpec(
        n_pieces=4,
        heldout_pieces=2,
        steps=8,
        batch_size=2,
        lr=1e-2,
        warmup_steps=0,
        hidden_size=32,
        n_layers=1,
        n_heads=2,
        ffn_dim=64,
        loss_steps=50,
        codebook_clusters=16,
    )
    steps = []
    report = train_toy(spec, tmp_path / "toy", progress=lambda s, n, loss: steps.append((s, loss)))
    assert [s for s, _ in steps] == list(range(1, 9))
    assert report["train_loss_last"] < report["train_loss_first"] - 0.5
    assert report["trained"]["piece_all"] < report["random"]["piece_all"]
    trained, random = load_toy(tmp_path / "toy"), load_toy(tmp_path / "toy-random")
    assert (trained.weights, random.weights) == ("trained-here", "random")
    assert trained.n_layers == 1 and trained.hidden_size == 32
    meta = json.loads((tmp_path / "toy" / "musicinterp.json").read_text())
    assert meta["toy_spec"] == spec.model_dump(mode="json") and meta["train_seconds"] > 0
    # the same EnCodec in both, so the clips get the same codes
    x, _ = _piece(0, returns=True)
    assert torch.equal(encode_audio(trained, x), encode_audio(random, x))


def test_train_toy__thread_count_is_the_specs_inside_and_restored_after(tmp_path):
    """``spec.threads`` holds for the training only: the process's own setting survives it, also an error."""
    before = torch.get_num_threads()
    spec = ToySpec(
        n_pieces=4,
        heldout_pieces=2,
        steps=2,
        batch_size=2,
        warmup_steps=0,
        hidden_size=32,
        n_layers=1,
        n_heads=2,
        ffn_dim=64,
        loss_steps=8,
        codebook_clusters=16,
        threads=1 if before > 1 else 2,
    )
    seen = []
    train_toy(spec, tmp_path / "toy", progress=lambda *_: seen.append(torch.get_num_threads()))
    assert seen == [spec.threads] * 2 and torch.get_num_threads() == before

    def stop(*_):
        raise KeyboardInterrupt("stopped by the user")

    with pytest.raises(KeyboardInterrupt, match="stopped"):
        train_toy(spec, tmp_path / "again", progress=stop, cache_dir=tmp_path / "cache")
    assert torch.get_num_threads() == before


def test_toy_spec__bad_settings_are_named():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        train_toy(ToySpec(hidden_size=30, n_heads=4), "/nonexistent")
    with pytest.raises(ValueError, match="heldout_seed must differ"):
        train_toy(ToySpec(seed=1000), "/nonexistent")


# ---- the shipped pair toy: equality of two chords, which a random network cannot expose ----------------------
@pytest.fixture(scope="module")
def pair():
    return load_toy(PAIR)


@pytest.fixture(scope="module")
def pair_random():
    return load_toy(PAIR_RANDOM)


def test_toy_pair__shipped_checkpoint_learned_equality_on_unseen_pieces(pair, pair_random):
    assert (pair.model_id, pair.weights) == ("musicinterp/toy-pair", "trained-here")
    assert (pair_random.model_id, pair_random.weights) == ("musicinterp/toy-pair-random", "random")
    held = heldout(pair, FRESH_SEED, 48, design="pair")
    report = evaluate_toy(pair, pair_random, held)
    t, r = report["trained"], report["random"]
    assert report["learned"], report
    # swapping the second chord (equal <-> different) makes the return's first codes surprising
    assert t["onset_gain"] >= MIN_ONSET_GAIN_NATS and t["onset_p"] < MAX_ONSET_P
    assert r["onset_right_cue"] == pytest.approx(r["onset_swapped_cue"], abs=0.05)
    assert abs(t["before_return_cue"] - t["before_no_return_cue"]) < 0.5


def test_toy_pair__training_settings_file_is_the_shipped_spec():
    from musicinterp_cli import build_parser
    from musicinterp_cli.toy import toy_spec_from_args

    args = build_parser().parse_args(["train-toy", "--settings", str(PAIR / "train.yaml")])
    meta = json.loads((PAIR / "musicinterp.json").read_text())
    assert toy_spec_from_args(args).model_dump(mode="json") == meta["toy_spec"]
    args = build_parser().parse_args(
        ["train-toy", "--settings", str(PAIR / "train.yaml"), "--steps", "5", "--seed", "3"]
    )
    spec = toy_spec_from_args(args)
    assert (spec.steps, spec.seed, spec.design, spec.n_pieces) == (5, 3, "pair", 4096)


def test_train_toy_cli__bad_flags_exit_2_naming_the_field(capsys):
    from musicinterp_cli import main

    assert main(["train-toy", "--device", "gpu0"]) == 2
    assert "device" in capsys.readouterr().err


def test_save_random_twin__reproduces_the_shipped_twin_with_the_trained_encoder(tmp_path, pair):
    twin_dir = save_random_twin(PAIR, tmp_path / "twin")
    twin, shipped = load_toy(twin_dir), load_toy(PAIR_RANDOM)
    assert twin.weights == "random" and twin.model_id == "musicinterp/toy-pair-random"
    assert encoder_digest(twin.model) == encoder_digest(pair.model)  # bit for bit: the same codes
    for (name, a), (_, b) in zip(twin.model.state_dict().items(), shipped.model.state_dict().items()):
        assert torch.equal(a, b), name
    trained_w = dict(pair.model.decoder.named_parameters())
    assert any(not torch.equal(p, trained_w[n]) for n, p in twin.model.decoder.named_parameters())
    with pytest.raises(ValueError, match="not a trained toy checkpoint"):
        save_random_twin(PAIR_RANDOM, tmp_path / "twin-of-a-twin")


# ---- encoding the training pieces -------------------------------------------------------------------------
def test_encode_pieces__batched_codes_equal_capture_codes_piece_by_piece(toy_codec):
    samples, _, _ = _pieces(FRESH_SEED, 3, PIECE_S, "pair")
    batched = encode_pieces(toy_codec, samples, batch_size=2)
    one_by_one = torch.stack([delayed_decoder_input(toy_codec, encode_audio(toy_codec, x)) for x in samples])
    assert torch.equal(batched, one_by_one)
    with pytest.raises(ValueError, match="equal length"):
        encode_pieces(toy_codec, [samples[0], samples[1][:-640]])


def test_training_pieces__cached_under_the_pieces_and_the_encoder(tmp_path, toy_codec):
    import copy

    spec = ToySpec(n_pieces=5, heldout_pieces=2, threads=2, design="pair")
    ids, returns, held = training_pieces(spec, toy_codec, tmp_path)
    samples, expected_returns, _ = _pieces(spec.seed, 5, spec.duration_s, "pair")
    assert torch.equal(ids, encode_pieces(toy_codec, samples)) and (returns == expected_returns).all()
    assert len(held.ids) == 2 and len(held.swapped_ids) == held.returns.sum()
    (file,) = tmp_path.glob("pieces-*.pt")
    written = file.stat().st_mtime_ns
    again = training_pieces(spec, toy_codec, tmp_path)
    assert torch.equal(again[0], ids) and torch.equal(again[2].ids, held.ids)
    assert file.stat().st_mtime_ns == written and len(list(tmp_path.glob("*"))) == 1  # read, not made again
    # other pieces or another EnCodec get their own file, never this one
    training_pieces(spec.model_copy(update={"n_pieces": 4}), toy_codec, tmp_path)
    assert len(list(tmp_path.glob("pieces-*.pt"))) == 2
    other = copy.deepcopy(toy_codec.model)
    with torch.no_grad():
        other.audio_encoder.quantizer.layers[0].codebook.embed[0, 0] += 1.0
    assert encoder_digest(other) != encoder_digest(toy_codec.model)


def test_toy_spec__cuda_is_refused_where_torch_sees_none():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ToySpec(device="gpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ValueError, match="sees no CUDA device"):
        train_toy(ToySpec(device="cuda"), "/nonexistent")
