"""Generation-time capture: the continuation's states are the teacher-forced ones, and never the prompt's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import xarray as xr

from musicinterp.annotate.recurrence import cross_recurrence, detect
from musicinterp.capture import capture_codes
from musicinterp.config import AnnotationSpec, CaptureSpec, GenerationSpec, RunSpec
from musicinterp.generate import GenerationError, generate_continuation, sampling_seed
from musicinterp.generate.inline import generate_inline
from musicinterp.generate.shard import audio_file, generate_shard, prepare_generation
from musicinterp.generate.toy_return import window_matches
from musicinterp.run import RunPaths
from musicinterp.store import StoreError

PROMPT_FRAMES = 12
GEN = GenerationSpec(prompt_s=PROMPT_FRAMES / 50, continuation_s=0.3, seeds=[0], top_k=50)


def _prompt(tiny_model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2048, (tiny_model.num_codebooks, PROMPT_FRAMES), generator=g)


@pytest.mark.parametrize("half", ["conditional", "unconditional"])
def test_generate__states_equal_teacher_forced_on_the_same_codes(tiny_model, half):
    capture = CaptureSpec(half=half)
    prompt = _prompt(tiny_model)
    cont = generate_continuation(tiny_model, prompt, capture, GEN, seed=5, dtype=torch.float32)
    g = cont.n_frames
    assert g == 15 and cont.n_prompt == PROMPT_FRAMES
    full = torch.cat([prompt, torch.from_numpy(cont.codes)], dim=1)
    tf = capture_codes(tiny_model, full, capture, dtype=torch.float32)
    assert tf.layers == cont.layers
    # the continuation's frame j is the teacher-forced frame PROMPT_FRAMES + j: the prompt is not in it
    np.testing.assert_allclose(cont.resid, tf.resid[:, PROMPT_FRAMES:], rtol=1e-4, atol=1e-4)
    assert not np.allclose(cont.resid[:, 0], tf.resid[:, PROMPT_FRAMES - 1], atol=1e-3)


class _StepCounter:
    """A hook context like the interventions' one: counts the positions layer 1 sees, zeroes it if asked."""

    def __init__(self, model, zero: bool = False):
        self.layer = model.decoder.model.decoder.layers[0]
        self.zero, self.calls, self.entered = zero, [], 0

    def __enter__(self):
        self.entered += 1
        self.handle = self.layer.register_forward_hook(self._hook)
        return self

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        self.calls.append(tuple(hidden.shape[:2]))
        if self.zero:
            return (
                torch.zeros_like(hidden) if not isinstance(output, tuple) else (torch.zeros_like(hidden), *output[1:])
            )
        return None

    def __exit__(self, *exc):
        self.handle.remove()


def test_generate__intervention_context_wraps_the_prompt_call_then_one_step_per_call(tiny_model):
    counter = _StepCounter(tiny_model.model)
    prompt = _prompt(tiny_model)
    plain = generate_continuation(tiny_model, prompt, CaptureSpec(), GEN, seed=5)
    hooked = generate_continuation(tiny_model, prompt, CaptureSpec(), GEN, seed=5, intervention=lambda: counter)
    np.testing.assert_array_equal(plain.codes, hooked.codes)  # a hook that changes nothing changes nothing
    assert counter.entered == 1
    k, g = tiny_model.num_codebooks, hooked.n_frames
    # both guidance halves in one batch; decoder steps 0..P at once, then P+1 .. P+G+K-2 one by one
    assert counter.calls == [(2, PROMPT_FRAMES + 1)] + [(2, 1)] * (g + k - 2)
    zeroing = _StepCounter(tiny_model.model, zero=True)
    changed = generate_continuation(tiny_model, prompt, CaptureSpec(), GEN, seed=5, intervention=lambda: zeroing)
    assert not np.array_equal(changed.resid, plain.resid)


def test_generate__same_seed_same_continuation_other_seed_other(tiny_model):
    prompt = _prompt(tiny_model)
    a = generate_continuation(tiny_model, prompt, CaptureSpec(), GEN, seed=sampling_seed(0, "clip-a"))
    b = generate_continuation(tiny_model, prompt, CaptureSpec(), GEN, seed=sampling_seed(0, "clip-a"))
    c = generate_continuation(tiny_model, prompt, CaptureSpec(), GEN, seed=sampling_seed(1, "clip-a"))
    np.testing.assert_array_equal(a.codes, b.codes)
    assert not np.array_equal(a.codes, c.codes)
    assert sampling_seed(0, "clip-a") != sampling_seed(0, "clip-b")


def test_generate__bad_prompt_is_refused(tiny_model):
    with pytest.raises(GenerationError, match="prompt codes must be"):
        generate_continuation(tiny_model, torch.zeros((3, 5), dtype=torch.long), CaptureSpec(), GEN, seed=0)


def _spec(**generation) -> RunSpec:
    return RunSpec(
        name="gen",
        slice={"sources": [{"kind": "synthetic", "n_pieces": 2, "duration_s": 3.0}], "n_shards": 2},
        generation={"prompt_s": 2.0, "continuation_s": 0.4, "seeds": [0, 3], "top_k": 50, **generation},
    )


def test_generate_run__store_opens_with_plain_xarray_and_holds_the_continuation(tmp_path, tiny_model):
    spec = _spec()
    summary = generate_inline(spec, str(tmp_path))
    assert summary.ok and summary.complete == summary.annotated == 4
    ds = xr.open_zarr(summary.store)  # plain xarray, consolidated metadata included
    assert ds["gen_resid"].dims == ("clip", "seed", "layer", "gen_time", "feature")
    assert ds["gen_complete"].values.all() and ds["gen_annotated"].values.all()
    # the prompt is never in the captured or scored frames: gen_time starts at prompt_s
    np.testing.assert_allclose(ds["gen_time"].values, 2.0 + np.arange(20) / 50)
    assert int(ds["gen_decoder_step"].values[0]) == 101
    assert ds["gen_xrec"].sizes["gen_time"] == 20 and ds.attrs["generation_prompt_frames"] == 100
    clip = str(ds["clip"].values[0])
    prompt = torch.from_numpy(ds["gen_prompt_codes"].sel(clip=clip).values.astype(np.int64))
    direct = generate_continuation(tiny_model, prompt, spec.capture, spec.generation, sampling_seed(3, clip))
    np.testing.assert_array_equal(ds["gen_codes"].sel(clip=clip, seed=3).values, direct.codes)
    np.testing.assert_array_equal(ds["gen_resid"].sel(clip=clip, seed=3).values, direct.resid)
    assert sf.info(audio_file(RunPaths(summary.root), 0, 3)).duration == pytest.approx(2.4)
    assert ds.attrs["weights"] == "random" and ds.attrs["generation_fingerprint"] == spec.generation.fingerprint()


def test_generate_run__rerun_skips_complete_pairs_and_redoes_unflagged_ones(tmp_path):
    spec = _spec(annotate=False, write_audio=False)
    first = generate_inline(spec, str(tmp_path))
    ds = xr.open_zarr(first.store, consolidated=False)
    clip = str(ds["clip"].values[1])
    before = ds["gen_codes"].sel(clip=clip, seed=0).values
    xr.Dataset({"gen_complete": (("clip", "seed"), np.array([[False]]))}).to_zarr(
        first.store, region={"clip": slice(1, 2), "seed": slice(0, 1)}, consolidated=False
    )
    prepared = prepare_generation(spec, str(tmp_path))
    results = [
        generate_shard(spec.model, spec.capture, spec.generation, spec.annotation, prepared, s) for s in range(2)
    ]
    assert sum(len(r.generated) for r in results) == 1
    assert sum(len(r.skipped) for r in results) == 3
    redone = xr.open_zarr(first.store, consolidated=False)
    np.testing.assert_array_equal(redone["gen_codes"].sel(clip=clip, seed=0).values, before)  # same seed, same draw
    assert redone["gen_complete"].values.all()


def test_generate_run__other_generation_settings_never_overwrite(tmp_path):
    generate_inline(_spec(annotate=False, write_audio=False), str(tmp_path))
    with pytest.raises(StoreError, match="holds continuations of generation settings"):
        prepare_generation(_spec(annotate=False, write_audio=False, temperature=0.5), str(tmp_path))


def test_generate_run__config_without_generation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no 'generation' section"):
        generate_inline(RunSpec(name="x"), str(tmp_path))


def _embedded(blocks: list[int], seed: int = 0) -> np.ndarray:
    """Unit vectors, one per frame: block ``b`` of 2 s (one path length) holds material ``b`` (a random walk)."""
    rng = np.random.default_rng(seed)
    materials = {b: rng.standard_normal((100, 24)).cumsum(axis=0) for b in set(blocks)}
    x = np.concatenate([materials[b] + 0.05 * rng.standard_normal((100, 24)) for b in blocks])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_cross_recurrence__finds_prompt_material_at_its_lag_and_never_the_prompt_itself():
    spec = AnnotationSpec(min_run_s=0.5)  # a block's path-enhanced run is shorter than the block (edges)
    # prompt: A B A C (A recurs inside the prompt); continuation: D B E D (B returns from the prompt, D from itself)
    x = _embedded([0, 1, 0, 2, 3, 1, 4, 3])
    within = detect(x, spec).prev_lag
    # the prompt's own A-A recurrence and the continuation's own D-D one exist...
    assert (within[240:260] == 200).all() and (within[740:760] == 300).all()
    cross = cross_recurrence(x, 400, spec)
    assert cross.lag.shape == (400,)  # ...but only continuation frames are scored, against the prompt only
    b_return = slice(140, 190)  # the middle of the continuation's B (frames 500-599)
    assert (cross.lag[b_return] == 400).all()  # B was at frames 100-199: lag 400 frames (8 s)
    assert (cross.strength[b_return] > spec.rec_threshold).all()
    # D recurs within the continuation only and E is new: no prompt material there
    assert (cross.lag[10:90] == -1).all() and (cross.lag[210:290] == -1).all() and (cross.lag[310:390] == -1).all()
    with pytest.raises(ValueError, match="must split"):
        cross_recurrence(x, 0, spec)


def test_toy_return__window_matches_against_both_versions():
    refs = {"A": np.arange(80) % 7, "C": np.full(80, 99)}
    gen = np.full((4, 125), 5)
    gen[0, 25:105] = refs["A"]
    gen[0, 25:45] = 99
    m = window_matches(gen, 425, refs)
    assert m == {"a_match": pytest.approx(60 / 80), "c_match": pytest.approx(20 / 80)}
    with pytest.raises(ValueError, match="does not cover the return window"):
        window_matches(gen[:, :50], 425, refs)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("name: g\ngeneration: {prompt_s: 20, continuation_s: 20}\n", "exceeds MusicGen's context"),
        ("name: g\ngeneration: {seeds: [1, 1]}\n", "distinct seeds"),
        ("name: g\n", "has no 'generation' section"),
    ],
)
def test_generate_cli__bad_or_missing_generation_section_exits_2(tmp_path, capsys, yaml_text, message):
    from musicinterp_cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    assert main(["generate", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "out").exists()  # nothing ran


def test_toy_return__the_real_pieces_score_as_returning_or_not():
    """The measure on the toy's own codec: a piece's real A version returns A, its C version does not."""
    from musicinterp.capture import encode_audio
    from musicinterp.config import ModelSpec
    from musicinterp.generate.toy_return import a_match, version_codes
    from musicinterp.models import load_model
    from musicinterp.sources.cue import compose, cue_recipe

    toy = load_model(ModelSpec(source="local", name="checkpoints/toy-pair", weights="trained-here"))
    recipe = cue_recipe(1000, 3, 11.0, True, "pair")
    refs = version_codes(toy, json.dumps(recipe))
    assert (refs["A"] != refs["C"]).mean() > 0.5
    for returns in (True, False):
        codes = encode_audio(toy, compose({**recipe, "returns": returns})[0]).numpy()
        m = window_matches(codes[:, 425:], 425, refs)
        assert (m["a_match"] == 1.0) if returns else (m["c_match"] == 1.0 and m["a_match"] < 0.5)
        m_prompt = a_match(codes[:, :425], codes[:, 425:])  # the lighter measure: against A in the prompt
        assert (m_prompt > 0.9) if returns else (m_prompt < 0.3)


def test_annotate_continuation__finds_section_a_returning_from_the_prompt_in_a_real_pair_piece():
    """Known answer on real audio: a pair piece cut at 8.5 s; A (1.0-2.6 s) returns at 9.0 s, 8 s later."""
    from musicinterp.generate.annotate import annotate_continuation
    from musicinterp.sources.cue import compose, cue_recipe

    window = slice(25, 105)  # the return section, 9.0-10.6 s, in continuation frames
    for returns in (True, False):
        samples, _ = compose(cue_recipe(1000, 3, 11.0, returns, "pair"))
        labels = annotate_continuation(samples, 425, AnnotationSpec())
        assert labels["xrec"].shape == (125,) and labels["tension"].shape == (125,)
        if returns:
            assert labels["xrec"][window].all()
            np.testing.assert_allclose(labels["xrec_lag_s"][window], 8.0)
        else:
            assert not labels["xrec"].any() and not labels["xrec_lag_s_valid"].any()
