"""Teacher-forced capture of MusicGen's residual stream on a clip's own EnCodec codes.

The decoder is fed the *delayed* codes it was trained on (``build_delay_pattern_mask`` from
transformers), not the raw code matrix, and the residual stream is read with forward hooks on the
decoder blocks: ``output_hidden_states`` would replace the last entry by its layer-normed version,
and hooks let each layer be cast to float16 as soon as it is produced.
See :mod:`musicinterp.frames` for which decoder step is stored at which frame.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from musicinterp.config import CaptureSpec
from musicinterp.frames import SAMPLE_RATE_HZ, n_frames
from musicinterp.models import PAD_TOKEN_ID, LoadedModel
from musicinterp.quantize import QuantInfo, quantize_int8

log = logging.getLogger(__name__)

T5_EOS_TOKEN_ID = 1  # what T5's tokenizer makes of the empty string
AUTOCAST_DTYPE = torch.bfloat16  # capture.autocast: supported on CPUs and on CUDA GPUs from Ampere on


class CaptureError(RuntimeError):
    """Capture of one clip failed; the message names the clip."""


@dataclass(frozen=True)
class Capture:
    """What the decoder produced for one clip, on the frame grid.

    ``resid`` is ``(layer, time, feature)`` float16 with layer 0 = embeddings, or int8 with ``quant`` (its
    scales and error against float16) under ``capture.reduce: int8``; ``logits`` (only when asked for) is
    ``(step, codebook, vocab)`` float32 over all ``n_frames + 1`` decoder steps. ``ready``: on CUDA, the event
    after which the device-to-host copies behind the arrays have landed (``wait``); None elsewhere.
    """

    codes: np.ndarray  # (codebook, frame) int
    resid: np.ndarray
    layers: tuple[int, ...]
    logits: np.ndarray | None = None
    quant: QuantInfo | None = None
    ready: Any = field(default=None, compare=False, repr=False)

    def wait(self) -> Capture:
        """Block until the arrays hold their values (a no-op unless the copies were left in flight on CUDA)."""
        if self.ready is not None:
            self.ready.synchronize()
        return self


@torch.no_grad()
def encode_audio(loaded: LoadedModel, samples: np.ndarray) -> torch.Tensor:
    """EnCodec codes ``(codebook, frame)`` of 32 kHz mono samples."""
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {samples.shape}")
    device = next(loaded.model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(device)[None, None, :]
    with _full_float32(device):
        out = loaded.model.audio_encoder.encode(x)
    codes = out.audio_codes[0, 0]  # (chunks=1, batch=1, K, T) -> (K, T)
    expected = n_frames(samples.shape[0])
    if codes.shape[-1] != expected:
        raise CaptureError(f"EnCodec gave {codes.shape[-1]} frames for {samples.shape[0]} samples, expected {expected}")
    return codes


def _full_float32(device: torch.device) -> contextlib.AbstractContextManager:
    """cuDNN without TF32 on CUDA: its default TF32 convolutions changed 0.4-3.6% of EnCodec's codes per codebook
    against the CPU's on an H200 (musicinterp/toy/data.py); a no-op elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)


def encoder_numerics(loaded: LoadedModel) -> str:
    """How this process computes EnCodec codes, in words: the device and what changes its rounding.

    EnCodec's codes are a nearest-neighbour choice, so float rounding flips some of them: on the CPU the
    number of torch threads does (on the tiny model 0.9-2.2% of a clip's codes differ between 1 and 2
    threads), on CUDA TF32 would (turned off by ``encode_audio``). Shard records keep this per clip and the
    run summary says when a store's clips were encoded in more than one way."""
    device = next(loaded.model.parameters()).device
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)}), cuDNN without TF32"
    else:
        where = f"{device.type}, {torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}"
    return f"{where}, torch {torch.__version__}"


def delayed_decoder_input(loaded: LoadedModel, codes: torch.Tensor) -> torch.Tensor:
    """Decoder input ids ``(codebook, n_frames + 1)`` under the delay pattern.

    Step 0 is the start token; step ``s`` holds codebook ``k`` of frame ``s - k - 1`` or the pad
    token where that frame does not exist. Built with transformers' own ``build_delay_pattern_mask``
    so it matches what ``generate`` feeds the decoder.
    """
    k, t = codes.shape
    start = torch.full((k, 1), PAD_TOKEN_ID, dtype=torch.long, device=codes.device)
    prompt = torch.cat([start, codes.long()], dim=1)  # (K, T + 1)
    # transformers returns the prompt undelayed when max_length < 2K - 1 (here: fewer than K - 1 frames)
    full, _ = loaded.model.decoder.build_delay_pattern_mask(prompt, PAD_TOKEN_ID, max_length=max(t + k, 2 * k - 1))
    return full[:, : t + 1]


@torch.no_grad()
def text_condition(loaded: LoadedModel, spec: CaptureSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder states and attention mask of one guidance half, exactly as ``generate`` builds them.

    Encoded once per model, device and (description, half), then reused: every clip of a run shares its
    condition (the text encoder is never trained here)."""
    key = (spec.description, spec.half, str(next(loaded.model.parameters()).device))
    if key not in loaded.conditions:
        loaded.conditions[key] = _encode_text_condition(loaded, spec)
    return loaded.conditions[key]


@torch.no_grad()
def _encode_text_condition(loaded: LoadedModel, spec: CaptureSpec) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(loaded.model.parameters()).device
    if loaded.tokenizer is not None:
        enc = loaded.tokenizer([spec.description], return_tensors="pt")
        input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    elif spec.description == "":
        input_ids = torch.tensor([[T5_EOS_TOKEN_ID]], device=device)
        mask = torch.ones_like(input_ids)
    else:
        raise CaptureError(
            f"model {loaded.model_id!r} has no tokenizer, so capture.description must be '' "
            f"(got {spec.description!r}); load the model from the Hub or a directory that holds its processor"
        )
    states = loaded.model.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
    if spec.half == "unconditional":
        states, mask = torch.zeros_like(states), torch.zeros_like(mask)
    return states, mask


class LayerRecorder:
    """Forward hooks that hand every layer's residual stream to ``_store(layer, hidden)``: a pre-hook on the
    first decoder layer for layer 0 (the embeddings), a hook on each layer's output for layers 1..n."""

    def __init__(self, decoder_layers):
        self.handles = [decoder_layers[0].register_forward_pre_hook(self._pre, with_kwargs=True)]
        for i, layer in enumerate(decoder_layers):
            self.handles.append(layer.register_forward_hook(self._post(i + 1)))

    def _store(self, layer: int, hidden: torch.Tensor) -> None:
        raise NotImplementedError

    def _pre(self, module, args, kwargs):
        self._store(0, args[0] if args else kwargs["hidden_states"])

    def _post(self, layer: int):
        def hook(module, args, output):
            self._store(layer, output[0] if isinstance(output, tuple) else output)

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _HostCopies:
    """Device-to-host copies of one forward pass's layers into one host buffer.

    On CUDA each layer is cast (or quantised) on the device, then copied into a pinned host buffer with
    ``non_blocking=True`` on a side stream, so the copy of layer l runs while layer l + 1 computes; an event
    recorded after the last copy says when the buffer holds its values (``Capture.wait``), so the copy of a
    batch's last layers can also overlap the next batch. Elsewhere (CPU, MPS) it is a plain copy into the
    buffer, cast on the way.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        if self.stream is None:
            dst.copy_(src)
            return
        src = src.to(dst.dtype).contiguous()  # cast on the device: only the stored bytes cross
        self.stream.wait_stream(torch.cuda.current_stream(src.device))
        with torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)
        src.record_stream(self.stream)  # not reused by the compute stream before the copy has read it

    def done(self) -> Any:
        """The event after the copies issued so far (CUDA), else None."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event


class _ResidualRecorder(LayerRecorder):
    """Keeps chosen layers of one teacher-forced pass at ``steps`` in one host buffer ``(layer, batch, step,
    feature)`` of the store's dtype, cast on the device (so only float16 crosses to the host), or, with
    ``reduce='int8'``, quantised there (int8 plus per (clip, layer, feature) scales and the error against
    float16: :mod:`musicinterp.quantize`)."""

    def __init__(
        self, decoder_layers, keep: tuple[int, ...], steps: slice, dtype: torch.dtype, device: torch.device, reduce: str
    ):
        self.pos = {layer: i for i, layer in enumerate(keep)}
        self.steps, self.dtype, self.reduce = steps, dtype, reduce
        self.copies = _HostCopies(device)
        self.host: torch.Tensor | None = None
        self.seen: set[int] = set()
        self.quant: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # on the device until the end
        super().__init__(decoder_layers)

    def _store(self, layer: int, hidden: torch.Tensor) -> None:
        if layer not in self.pos:
            return
        x = hidden[:, self.steps]
        if self.reduce == "int8":
            x, scale, max_abs, rel_rms = quantize_int8(x)
            self.quant[layer] = (scale, max_abs, rel_rms)
        if self.host is None:  # layer-major, so that each layer's copy lands in one contiguous block
            b, t, d = x.shape
            self.host = self.copies.empty((len(self.pos), b, t, d), torch.int8 if self.reduce == "int8" else self.dtype)
        self.copies.copy(self.host[self.pos[layer]], x)
        self.seen.add(layer)

    def result(self, n_clips: int) -> tuple[np.ndarray, list[QuantInfo | None], Any]:
        """``(clip, layer, time, feature)`` host array, each clip's ``QuantInfo`` (None: not reduced), the event."""
        if self.host is None or len(self.seen) != len(self.pos):
            missing = sorted(set(self.pos) - self.seen)
            raise CaptureError(f"the decoder ran without reaching the hooks of layers {missing}")
        infos: list[QuantInfo | None] = [None] * n_clips
        if self.quant:
            layers = sorted(self.pos, key=self.pos.__getitem__)
            small = [torch.stack([self.quant[layer][k] for layer in layers], dim=1) for k in range(3)]
            host = [self.copies.empty(tuple(a.shape), a.dtype) for a in small]  # (clip, layer[, feature])
            for dst, src in zip(host, small, strict=True):
                self.copies.copy(dst, src)
            scale, max_abs, rel_rms = (a.numpy() for a in host)
            infos = [QuantInfo(scale[i], max_abs[i], rel_rms[i]) for i in range(n_clips)]
        return self.host.numpy().swapaxes(0, 1), infos, self.copies.done()


def _autocast(loaded: LoadedModel, spec: CaptureSpec) -> contextlib.AbstractContextManager:
    """The forward pass under ``torch.autocast`` (bfloat16) when ``capture.autocast``, else nothing."""
    if not spec.autocast:
        return contextlib.nullcontext()
    device = next(loaded.model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPE)


def select_layers(layers: list[int] | None, n_layers: int, model_id: str) -> tuple[int, ...]:
    """The layers to store: ``layers`` sorted and deduplicated, or all ``n_layers + 1`` (0 = embeddings).

    The one check of ``capture.layers``, used when a run is planned (from the model's config) and
    when a clip is captured (from the loaded model).
    """
    n = n_layers + 1
    if layers is None:
        return tuple(range(n))
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"capture.layers: {bad} out of range; model {model_id!r} has layers 0..{n - 1}")
    return tuple(sorted(set(layers)))


def resolve_layers(loaded: LoadedModel, layers: list[int] | None) -> tuple[int, ...]:
    return select_layers(layers, loaded.n_layers, loaded.model_id)


@torch.no_grad()
def capture_codes(
    loaded: LoadedModel,
    codes: torch.Tensor,
    spec: CaptureSpec,
    return_logits: bool = False,
    dtype: torch.dtype = torch.float16,
) -> Capture:
    """Run the decoder teacher-forced on ``codes`` and keep the residual stream per frame.

    ``dtype`` is float16 for the store (zarr has no bfloat16); tests ask for float32 to compare
    with generation at float tolerance.
    """
    layers = resolve_layers(loaded, spec.layers)
    t = codes.shape[-1]
    decoder_ids = delayed_decoder_input(loaded, codes)
    states, mask = text_condition(loaded, spec)
    recorder = _recorder(loaded, layers, t, dtype, spec)
    try:
        with _autocast(loaded, spec):
            out = loaded.model(
                encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=False
            )
    finally:
        recorder.close()
    resid, infos, ready = recorder.result(1)
    logits = None
    if return_logits:
        k = loaded.num_codebooks
        logits = out.logits.reshape(k, t + 1, -1).permute(1, 0, 2).float().cpu().numpy()
    cap = Capture(codes=codes.cpu().numpy(), resid=resid[0], layers=layers, logits=logits, quant=infos[0], ready=ready)
    return cap.wait()


def _recorder(
    loaded: LoadedModel, layers: tuple[int, ...], t: int, dtype: torch.dtype, spec: CaptureSpec
) -> _ResidualRecorder:
    device = next(loaded.model.parameters()).device
    return _ResidualRecorder(
        loaded.model.decoder.model.decoder.layers, layers, slice(1, t + 1), dtype, device, spec.reduce
    )


@torch.no_grad()
def capture_codes_batch(
    loaded: LoadedModel,
    codes: list[torch.Tensor],
    spec: CaptureSpec,
    dtype: torch.dtype = torch.float16,
    wait: bool = True,
) -> list[Capture]:
    """``capture_codes`` for several clips of the same frame count in one forward pass (``capture.batch_size``).

    The decoder takes ``(batch * codebook, step)`` ids, each clip delayed on its own, and one text condition
    repeated over the batch. Equal to capturing each clip alone up to float rounding: batched matrix
    products may sum in another order, so a store captured in batches can differ from one captured clip by
    clip in the last bit of float16 (on the tiny model, 4 clips of 2 s: 0.003% of the values, by one unit in
    the last place; tests/test_capture.py holds them to float32 rounding).
    """
    if not codes:
        return []
    lengths = {c.shape[-1] for c in codes}
    if len(lengths) != 1:
        raise ValueError(f"a capture batch needs clips of one frame count, got {sorted(lengths)}")
    layers = resolve_layers(loaded, spec.layers)
    t, b = codes[0].shape[-1], len(codes)
    decoder_ids = torch.cat([delayed_decoder_input(loaded, c) for c in codes])  # clip-major, as the decoder expects
    states, mask = text_condition(loaded, spec)
    recorder = _recorder(loaded, layers, t, dtype, spec)
    try:
        with _autocast(loaded, spec):
            loaded.model(
                encoder_outputs=(states.expand(b, -1, -1),),
                attention_mask=mask.expand(b, -1),
                decoder_input_ids=decoder_ids,
                use_cache=False,
            )
    finally:
        recorder.close()
    resid, infos, ready = recorder.result(b)  # (clip, layer, time, feature)
    caps = [
        Capture(codes=c.cpu().numpy(), resid=resid[i], layers=layers, quant=infos[i], ready=ready)
        for i, c in enumerate(codes)
    ]
    return [cap.wait() for cap in caps] if wait else caps


def capture_clip(loaded: LoadedModel, samples: np.ndarray, spec: CaptureSpec) -> Capture:
    """Encode 32 kHz mono ``samples`` and capture the residual stream on their codes."""
    if samples.shape[0] < 1:
        raise ValueError("empty clip")
    log.debug("capturing %.2f s of audio", samples.shape[0] / SAMPLE_RATE_HZ)
    return capture_codes(loaded, encode_audio(loaded, samples), spec)
