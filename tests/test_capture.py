"""Capture must feed the decoder what generation feeds it: the delay pattern, step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from musicinterp.capture import capture_codes, delayed_decoder_input, encode_audio
from musicinterp.config import CaptureSpec
from musicinterp.frames import HOP_SAMPLES
from musicinterp.models import PAD_TOKEN_ID


class _GenerationRecorder:
    """Hooks that record, for every decoder call during ``generate``, its input ids and residual stream."""

    def __init__(self, model):
        decoder = model.decoder.model.decoder
        self.inputs: list[torch.Tensor] = []
        self.hidden: list[dict[int, torch.Tensor]] = []
        self.handles = [
            decoder.register_forward_pre_hook(self._on_decoder, with_kwargs=True),
            decoder.layers[0].register_forward_pre_hook(self._on_embed, with_kwargs=True),
        ]
        for i, layer in enumerate(decoder.layers):
            self.handles.append(layer.register_forward_hook(self._on_layer(i + 1)))

    def _on_decoder(self, module, args, kwargs):
        self.inputs.append(kwargs["input_ids"].clone())
        self.hidden.append({})

    def _on_embed(self, module, args, kwargs):
        self.hidden[-1][0] = (args[0] if args else kwargs["hidden_states"]).clone()

    def _on_layer(self, layer):
        def hook(module, args, output):
            self.hidden[-1][layer] = (output[0] if isinstance(output, tuple) else output).clone()

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _generate(loaded, n_steps: int, seed: int):
    model = loaded.model
    gc = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    gc.update(
        max_new_tokens=n_steps,
        do_sample=True,
        guidance_scale=3.0,
        top_k=50,
        return_dict_in_generate=True,
        output_logits=True,
    )
    rec = _GenerationRecorder(model)
    torch.manual_seed(seed)
    ids = torch.tensor([[1]])
    try:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    finally:
        rec.close()
    return out, rec


def test_capture__matches_generation_step_by_step(tiny_model):
    n_steps, k = 40, tiny_model.num_codebooks
    out, rec = _generate(tiny_model, n_steps, seed=3)
    # transformers runs a prefill call first whose cache it does not keep; the last n_steps calls
    # are the generation loop, one decoder step each (both guidance halves in one batch).
    inputs, hidden = rec.inputs[-n_steps:], rec.hidden[-n_steps:]
    assert all(x.shape == (2 * k, 1) for x in inputs)
    fed = torch.cat([x[:k] for x in inputs], dim=1)  # (K, n_steps), conditional half
    assert (fed[:, 0] == PAD_TOKEN_ID).all()
    t = n_steps - 2 * k  # frames whose every codebook was fed before the end-of-pattern padding
    codes = torch.stack([fed[c, c + 1 : c + 1 + t] for c in range(k)])
    assert (codes < PAD_TOKEN_ID).all()
    # Teacher forcing rebuilds exactly the delayed input that generation fed.
    assert torch.equal(delayed_decoder_input(tiny_model, codes), fed[:, : t + 1])

    for half, row in (("conditional", 0), ("unconditional", 1)):
        spec = CaptureSpec(guidance_scale=3.0, half=half)
        cap = capture_codes(tiny_model, codes, spec, return_logits=True, dtype=torch.float32)
        for layer in cap.layers:
            gen_states = torch.cat([h[layer][row] for h in hidden[1 : t + 1]]).numpy()  # steps 1..t
            np.testing.assert_allclose(
                cap.resid[layer], gen_states, rtol=1e-4, atol=1e-4, err_msg=f"{half} layer {layer}"
            )
        # next-code logits at every decoder step 0..t
        gen_logits = torch.stack([lg.reshape(2, k, -1)[row] for lg in out.logits[: t + 1]]).numpy()
        np.testing.assert_allclose(cap.logits, gen_logits, rtol=1e-4, atol=1e-4, err_msg=half)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 80), st.integers(0, 2**31 - 1))
def test_delay_pattern__step_s_holds_codebook_k_of_frame_s_minus_k_minus_1(tiny_model, n_frames, seed):
    """The documented mapping (frames.py), brute-forced cell by cell: pad where the frame does not exist."""
    k = tiny_model.num_codebooks
    codes = torch.randint(0, PAD_TOKEN_ID, (k, n_frames), generator=torch.Generator().manual_seed(seed))
    expected = torch.full((k, n_frames + 1), PAD_TOKEN_ID, dtype=torch.long)
    for codebook in range(k):
        for step in range(n_frames + 1):
            frame = step - codebook - 1
            if frame >= 0:
                expected[codebook, step] = codes[codebook, frame]
    assert torch.equal(delayed_decoder_input(tiny_model, codes), expected)


@pytest.mark.parametrize("t_change", [0, 1, 7, 19])
def test_capture__is_causal_under_delay_pattern(tiny_model, t_change):
    gen = torch.Generator().manual_seed(t_change)
    k, t = tiny_model.num_codebooks, 20
    codes = torch.randint(0, 2048, (k, t), generator=gen)
    changed = codes.clone()
    changed[:, t_change:] = torch.randint(0, 2048, (k, t - t_change), generator=gen)
    spec = CaptureSpec()
    a = capture_codes(tiny_model, codes, spec, dtype=torch.float32).resid
    b = capture_codes(tiny_model, changed, spec, dtype=torch.float32).resid
    # Frames before t_change sit at decoder steps that have not consumed frame t_change.
    np.testing.assert_array_equal(a[:, :t_change], b[:, :t_change])
    # The frame t_change itself is stored at the step that consumes its first codebook.
    assert not np.allclose(a[1:, t_change], b[1:, t_change])


def test_capture__raw_codes_without_delay_differ(tiny_model):
    """Feeding raw, undelayed codes (a common mistake) gives other activations: the test can tell."""
    k, t = tiny_model.num_codebooks, 12
    codes = torch.randint(0, 2048, (k, t), generator=torch.Generator().manual_seed(0))
    delayed = delayed_decoder_input(tiny_model, codes)
    raw = torch.cat([torch.full((k, 1), PAD_TOKEN_ID), codes], dim=1)
    assert not torch.equal(delayed, raw)


@pytest.mark.parametrize("seconds", [1.0, 1.01, 2.5, 7.33])
def test_encode__frame_count_is_ceil_of_hops(tiny_model, seconds):
    n = int(round(seconds * 32000))
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1
    codes = encode_audio(tiny_model, x)
    assert codes.shape == (4, -(-n // HOP_SAMPLES))


def test_capture__rejects_layers_out_of_range(tiny_model):
    codes = torch.zeros((4, 5), dtype=torch.long)
    with pytest.raises(ValueError, match=r"capture.layers: \[7\] out of range"):
        capture_codes(tiny_model, codes, CaptureSpec(layers=[0, 7]))


def test_capture__description_needs_tokenizer(tiny_model):
    codes = torch.zeros((4, 5), dtype=torch.long)
    with pytest.raises(RuntimeError, match="has no tokenizer"):
        capture_codes(tiny_model, codes, CaptureSpec(description="calm piano"))


def test_capture_batch__equals_each_clip_captured_alone(tiny_model):
    """Clips of one length in one forward pass (``capture.batch_size``) give each clip's own residual stream:
    the batch never mixes clips (a known answer: different audio per clip), to float32 rounding."""
    from musicinterp.capture import capture_codes_batch

    rng = np.random.default_rng(0)
    codes = [encode_audio(tiny_model, 0.1 * rng.standard_normal(HOP_SAMPLES * 40)) for _ in range(3)]
    spec = CaptureSpec()
    alone = [capture_codes(tiny_model, c, spec, dtype=torch.float32) for c in codes]
    batched = capture_codes_batch(tiny_model, codes, spec, dtype=torch.float32)
    for a, b in zip(alone, batched, strict=True):
        assert b.layers == a.layers and b.resid.shape == a.resid.shape
        np.testing.assert_allclose(b.resid, a.resid, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(b.codes, a.codes)
    assert not np.allclose(batched[0].resid, batched[1].resid)  # the clips stayed apart
    with pytest.raises(ValueError, match="one frame count"):
        capture_codes_batch(tiny_model, [codes[0], codes[1][:, :30]], spec)


def test_capture_int8__dequantised_equals_float16_within_the_recorded_error(tiny_model):
    """``capture.reduce: int8``: per (clip, layer, feature) absmax scales; q * scale is within the recorded error
    of float16 capture, the recorded error is the one measured here, and it is below the rounding bound."""
    from musicinterp.capture import capture_codes_batch

    rng = np.random.default_rng(1)
    codes = [encode_audio(tiny_model, 0.1 * rng.standard_normal(HOP_SAMPLES * 40)) for _ in range(2)]
    f16 = capture_codes(tiny_model, codes[0], CaptureSpec())
    f32 = capture_codes(tiny_model, codes[0], CaptureSpec(), dtype=torch.float32)
    q8 = capture_codes(tiny_model, codes[0], CaptureSpec(reduce="int8"))
    assert q8.resid.dtype == np.int8 and q8.resid.shape == f16.resid.shape and q8.quant is not None
    assert q8.resid.min() >= -127 and np.abs(q8.resid).max(axis=1).max() == 127  # symmetric, absmax -> 127
    np.testing.assert_allclose(q8.quant.scale, np.abs(f32.resid).max(axis=1) / 127, rtol=1e-6)
    err = q8.resid.astype(np.float32) * q8.quant.scale[:, None, :] - f16.resid.astype(np.float32)
    np.testing.assert_allclose(np.abs(err).max(axis=(1, 2)), q8.quant.max_abs_error, rtol=1e-6)
    rms = np.sqrt((err**2).mean(axis=(1, 2)) / (f16.resid.astype(np.float32) ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(rms, q8.quant.rel_rms_error, rtol=1e-4)
    # rounding to the nearest of 255 steps, plus float16's own rounding of the reference
    bound = q8.quant.scale.max(axis=1) / 2 + np.abs(f32.resid).max(axis=(1, 2)) * 2.0**-11
    assert (q8.quant.max_abs_error <= bound).all() and (q8.quant.rel_rms_error < 0.01).all()
    # batched: each clip its own scales; on the CPU the copies are plain (no event to wait for)
    batched = capture_codes_batch(tiny_model, codes, CaptureSpec(reduce="int8"), wait=False)
    assert all(c.ready is None and c.quant is not None for c in batched)
    assert np.abs(batched[0].resid.astype(int) - q8.resid.astype(int)).max() <= 1  # float rounding at a step edge
    assert not np.allclose(batched[0].quant.scale, batched[1].quant.scale)


def test_capture_autocast__bfloat16_forward_stays_close_to_float32(tiny_model):
    """``capture.autocast``: the forward runs under bfloat16 autocast (so the values change, a little)."""
    codes = encode_audio(tiny_model, 0.1 * np.random.default_rng(2).standard_normal(HOP_SAMPLES * 30))
    plain = capture_codes(tiny_model, codes, CaptureSpec(), dtype=torch.float32)
    cast = capture_codes(tiny_model, codes, CaptureSpec(autocast=True), dtype=torch.float32)
    diff = np.abs(cast.resid - plain.resid)
    assert diff[1:].max() > 0  # bfloat16 matrix products: not the float32 pass
    assert np.sqrt((diff**2).mean() / (plain.resid**2).mean()) < 0.02  # bfloat16 keeps 8 bits of mantissa
    np.testing.assert_array_equal(cast.resid[0], plain.resid[0])  # the embeddings are looked up, not multiplied
