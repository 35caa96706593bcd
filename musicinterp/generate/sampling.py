"""Continue a prompt under the delay pattern with the KV cache, keeping the generated steps' residual stream.

The decoder is driven step by step here rather than through transformers' ``generate``: the prompt's
delayed codes (steps ``0..P``) go in one call, then one step per call with the cache, both guidance
halves in one batch (row 0 conditional, row 1 unconditional, as transformers orders them). That keeps
exact control of which step carries which frame (musicinterp.frames): logits at step ``s`` give
codebook ``k`` of frame ``s - k``, so frame ``f`` is complete after step ``f + K - 1``, and the state
stored at frame ``i`` is the one of step ``i + 1``. Only frames ``P .. P + G - 1`` (steps
``P + 1 .. P + G``) are kept: the prompt's states are never part of a continuation.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch

from musicinterp.capture import LayerRecorder, resolve_layers, text_condition
from musicinterp.config import CaptureSpec, GenerationSpec
from musicinterp.frames import frames_of
from musicinterp.models import PAD_TOKEN_ID, LoadedModel

# A zero-argument factory of a context manager (e.g. ``lambda: intervening(model, interventions)``), entered
# once around one continuation: its hooks see the prompt call (decoder steps 0..P, sequence length P + 1)
# and then one call per step (sequence length 1), batch row 0 conditional and row 1 unconditional. A hook
# knows its steps by counting the sequence positions it has seen since the context was entered.
InterventionFactory = Callable[[], AbstractContextManager]
HALF_ROWS = {"conditional": 0, "unconditional": 1}


class GenerationError(RuntimeError):
    """A continuation cannot be generated as asked; the message says why."""


@dataclass(frozen=True)
class Continuation:
    """One sampled continuation of a prompt of ``n_prompt`` frames.

    ``codes`` ``(codebook, G)`` are the generated frames only; ``resid`` ``(layer, G, feature)`` their
    residual stream (stored frame ``n_prompt + j`` = decoder step ``n_prompt + j + 1``), of the guidance
    half ``half``.
    """

    codes: np.ndarray
    resid: np.ndarray
    layers: tuple[int, ...]
    n_prompt: int
    half: str
    seed: int

    @property
    def n_frames(self) -> int:
        return int(self.codes.shape[1])


def sampling_seed(seed: int, clip_id: str) -> int:
    """The torch seed of one (clip, seed): stable across processes, different for every clip."""
    return (seed * 1_000_003 + zlib.crc32(clip_id.encode())) % (2**63 - 1)


class _GeneratedStepRecorder(LayerRecorder):
    """Keeps one batch row of chosen layers at decoder steps ``[first, stop)``, over the KV-cached calls."""

    def __init__(self, decoder_layers, keep: tuple[int, ...], row: int, first: int, stop: int, dtype: torch.dtype):
        self.keep, self.row, self.first, self.stop, self.dtype = set(keep), row, first, stop, dtype
        self.offset = 0  # decoder step of the current call's first position
        self.out: dict[int, list[torch.Tensor]] = {layer: [] for layer in keep}
        super().__init__(decoder_layers)

    def _store(self, layer: int, hidden: torch.Tensor) -> None:
        if layer not in self.keep:
            return
        lo = max(self.first - self.offset, 0)
        hi = min(self.stop - self.offset, hidden.shape[1])
        if hi > lo:
            self.out[layer].append(hidden[self.row, lo:hi].to(self.dtype).cpu())

    def stacked(self, layers: tuple[int, ...]) -> np.ndarray:
        return torch.stack([torch.cat(self.out[layer]) for layer in layers]).numpy()


def _guided_logits(logits: torch.Tensor, k: int, scale: float) -> torch.Tensor:
    """``(2K, V)`` logits of both halves at one step -> ``(K, V)`` guided: uncond + scale x (cond - uncond)."""
    cond, uncond = logits[:k], logits[k:]
    return uncond + scale * (cond - uncond)


def _sample(logits: torch.Tensor, spec: GenerationSpec, generator: torch.Generator) -> torch.Tensor:
    """One code per codebook from ``(K, V)`` logits: temperature, top-k, top-p, then a seeded draw."""
    x = logits.float() / spec.temperature
    if 0 < spec.top_k < x.shape[-1]:
        kth = torch.topk(x, spec.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if 0 < spec.top_p < 1:
        sorted_x, order = torch.sort(x, descending=True, dim=-1)
        cum = torch.softmax(sorted_x, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_x, dim=-1) > spec.top_p  # keep the smallest set reaching top_p
        x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    probs = torch.softmax(x, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _both_halves(loaded: LoadedModel, capture: CaptureSpec) -> tuple[torch.Tensor, torch.Tensor]:
    cond = text_condition(loaded, capture.model_copy(update={"half": "conditional"}))
    uncond = text_condition(loaded, capture.model_copy(update={"half": "unconditional"}))
    return torch.cat([cond[0], uncond[0]]), torch.cat([cond[1], uncond[1]])


@torch.no_grad()
def generate_continuation(
    loaded: LoadedModel,
    prompt_codes: torch.Tensor,
    capture: CaptureSpec,
    generation: GenerationSpec,
    seed: int,
    intervention: InterventionFactory | None = None,
    dtype: torch.dtype = torch.float16,
) -> Continuation:
    """Sample ``generation.continuation_s`` seconds after ``prompt_codes`` ``(codebook, P)``.

    ``seed`` seeds the sampling (see :func:`sampling_seed`); ``intervention``: see
    :data:`InterventionFactory`. ``dtype`` of the kept states: float16 for the store, float32 to compare.
    """
    model, k = loaded.model, loaded.num_codebooks
    if prompt_codes.ndim != 2 or prompt_codes.shape[0] != k or prompt_codes.shape[1] < 1:
        raise GenerationError(f"prompt codes must be (codebook={k}, frames >= 1), got {tuple(prompt_codes.shape)}")
    layers = resolve_layers(loaded, capture.layers)
    device = next(model.parameters()).device
    p, g = int(prompt_codes.shape[1]), frames_of(generation.continuation_s)
    # input ids of steps 0 .. P + G + K - 1: the last holds codebook K - 1 of frame P + G - 1, drawn from the
    # logits of step P + G + K - 2, the last step the decoder runs (and at least step P + G, the last one kept)
    n_cols = p + g + max(k, 2)
    # known[k, s]: input id of codebook k at step s, -1 where it is sampled
    prompt_cpu = prompt_codes.cpu().long()
    known = torch.full((k, n_cols), -1, dtype=torch.long)  # built on the CPU: one small copy to the device
    for c in range(k):
        known[c, : c + 1] = PAD_TOKEN_ID
        known[c, c + 1 : c + 1 + p] = prompt_cpu[c]
    known = known.to(device)
    ids = known.clone()
    states, mask = _both_halves(loaded, capture)
    generator = torch.Generator(device=device).manual_seed(seed)
    recorder = _GeneratedStepRecorder(
        model.decoder.model.decoder.layers, layers, HALF_ROWS[capture.half], p + 1, p + g + 1, dtype
    )
    try:
        with intervention() if intervention is not None else contextlib.nullcontext():
            cache, start = None, 0
            for stop in range(p + 1, n_cols):  # one call runs steps [start, stop); the first is the prompt
                recorder.offset = start
                step_ids = ids[:, start:stop].repeat(2, 1)  # (2K, L): both halves
                out = model(
                    encoder_outputs=(states,),
                    attention_mask=mask,
                    decoder_input_ids=step_ids,
                    cache=cache,
                    use_cache=True,
                )
                cache = out["cache"] if "cache" in out else out["past_key_values"]
                # the logits of step stop - 1 give the inputs of step stop; known ones (prompt, pad) are kept
                drawn = _sample(_guided_logits(out.logits[:, -1], k, generation.guidance_scale), generation, generator)
                ids[:, stop] = torch.where(known[:, stop] >= 0, known[:, stop], drawn)
                start = stop
    finally:
        recorder.close()
    codes = torch.stack([ids[c, p + c + 1 : p + c + 1 + g] for c in range(k)])  # frame f of codebook c at step f+c+1
    if (codes >= PAD_TOKEN_ID).any() or (codes < 0).any():
        raise GenerationError("internal error: a generated frame holds a pad or unfilled code; please report")
    return Continuation(
        codes=codes.cpu().numpy(),
        resid=recorder.stacked(layers),
        layers=layers,
        n_prompt=p,
        half=capture.half,
        seed=seed,
    )


@torch.no_grad()
def decode_codes(loaded: LoadedModel, codes: np.ndarray) -> np.ndarray:
    """32 kHz mono samples of EnCodec codes ``(codebook, frame)``."""
    device = next(loaded.model.parameters()).device
    x = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(device)[None, None]
    audio = loaded.model.audio_encoder.decode(x, [None]).audio_values
    return audio[0, 0].float().cpu().numpy()
