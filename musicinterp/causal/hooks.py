"""Interventions on the residual stream with forward hooks, during teacher-forced scoring and generation.

Where and when (the conventions of :mod:`musicinterp.capture` and :mod:`musicinterp.frames`):

- **layer** 0 is the embeddings (the input of the first decoder block, changed by a forward *pre*-hook on
  block 1); layer ``l >= 1`` is the output of block ``l`` (a forward hook on it), before the final layer
  norm. These are exactly the tensors the store holds, so a direction read from the store acts on the
  same basis it was read in.
- **frames** ``[start, stop)`` are stored-frame indices: stored frame ``i`` is decoder step ``i + 1``, so
  the intervention changes decoder steps ``start + 1 .. stop`` and never step 0 (the start token). Under
  the delay pattern step ``s`` holds codebook ``k`` of frame ``s - k - 1`` and its logits predict codebook
  ``k`` of frame ``s - k``: an intervention at frames ``[start, stop)`` can change the prediction of
  codebook 0 of frames ``start + 1`` onwards, never of an earlier frame.
- With the KV cache each forward call sees only the new steps; a pre-hook on the decoder reads the cache
  length, so absolute steps are known in every call (tested: cached and uncached runs agree).
- **guidance halves**: with ``guided=True`` the batch is classifier-free guidance's ``[conditional;
  unconditional]`` (transformers' order) and each intervention acts on the half it names; teacher-forced
  scoring runs one half (``guided=False``) and every row is changed.

Operations (``Intervention.operation``), with ``Q`` an orthonormal basis of the directions' span:

- ``ablate``: the component in the span is set to the ``source``'s (mean ablation: the source is the
  mean stream over a reference set, per step) or, without a source, removed (projection out). Mean
  ablation is the default of the experiments: the toy's stream has a large mean along most directions,
  and zeroing it puts every later layer off the distribution it was trained on, so a zero-ablation
  measures the damage of an unusual state as well as the loss of information; setting the component to
  its mean removes only what varies (the information) and keeps the typical state.
- ``patch``: the component in the span is set to its value in a counterfactual run (``source``: that
  run's stream of the same layer, per row and step); without directions the whole stream is replaced.
- ``steer``: ``alpha`` times the sum of the directions (as given, not normalised) is added.
- ``edit``: the stream at the window's steps is replaced by ``edit(x)``, a function of the stream itself
  (rows ``(n, d)`` float32 in, the same out), e.g. :func:`musicinterp.sae.splice.ablation`: an SAE feature's
  decoder contribution subtracted, the SAE's error term kept. The window, halves and cache offsets are the
  other operations'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

OPERATIONS = ("ablate", "patch", "steer", "edit")
HALVES = ("conditional", "unconditional", "both")


class InterventionError(ValueError):
    """An intervention cannot be applied as asked; the message says which and why."""


@dataclass(frozen=True)
class Intervention:
    """One change of one layer's residual stream over a window of frames (see the module docstring).

    ``directions``: ``(k, d)`` or None (``patch`` only: the whole stream). ``source``: what ``ablate`` and
    ``patch`` set the component to: ``(d,)``, ``(steps, d)`` or ``(rows, steps, d)``, indexed by absolute
    decoder step (row 0 of ``steps`` is step 0); it must cover every step of the window. ``edit`` (operation
    ``edit`` only): ``(n, d)`` float32 rows of the stream -> the changed rows.
    """

    layer: int
    frames: tuple[int, int]
    operation: Literal["ablate", "patch", "steer", "edit"]
    directions: torch.Tensor | None = None
    source: torch.Tensor | None = None
    alpha: float = 0.0
    half: Literal["conditional", "unconditional", "both"] = "both"
    edit: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def steps(self) -> tuple[int, int]:
        """Decoder steps changed, ``[first, last + 1)``: stored frame ``i`` is step ``i + 1``."""
        return self.frames[0] + 1, self.frames[1] + 1


def check(iv: Intervention, n_layers: int, hidden: int) -> None:
    """Refuse an intervention that cannot be applied, before any hook is installed."""
    where = f"intervention at layer {iv.layer}, frames {iv.frames}"
    if iv.operation not in OPERATIONS:
        raise InterventionError(f"{where}: operation {iv.operation!r} is not one of {OPERATIONS}")
    if iv.half not in HALVES:
        raise InterventionError(f"{where}: half {iv.half!r} is not one of {HALVES}")
    if not 0 <= iv.layer <= n_layers:
        raise InterventionError(f"{where}: the model has layers 0..{n_layers} (0 = embeddings)")
    start, stop = iv.frames
    if not 0 <= start < stop:
        raise InterventionError(f"{where}: frames must be [start, stop) with 0 <= start < stop")
    if iv.directions is not None and (iv.directions.ndim != 2 or iv.directions.shape[1] != hidden):
        raise InterventionError(f"{where}: directions must be (k, {hidden}), got {tuple(iv.directions.shape)}")
    if iv.operation == "steer" and iv.directions is None:
        raise InterventionError(f"{where}: steer needs directions")
    if iv.operation == "patch" and iv.source is None:
        raise InterventionError(f"{where}: patch needs the counterfactual run's stream as source")
    if (iv.operation == "edit") != (iv.edit is not None):
        raise InterventionError(f"{where}: an edit function goes with operation 'edit' and only with it")
    if iv.operation == "ablate" and iv.directions is None:
        raise InterventionError(f"{where}: ablate needs directions (a whole-stream change is a patch)")
    if iv.source is not None:
        if iv.source.shape[-1] != hidden:
            raise InterventionError(f"{where}: source has width {iv.source.shape[-1]}, the stream {hidden}")
        if iv.source.ndim >= 2 and iv.source.shape[-2] < iv.steps[1]:
            raise InterventionError(
                f"{where}: source covers decoder steps 0..{iv.source.shape[-2] - 1}, the window needs up to "
                f"step {iv.steps[1] - 1}"
            )


def basis(directions: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``(d, k)`` of the span of ``directions`` ``(k, d)`` (reduced QR)."""
    q, r = torch.linalg.qr(directions.T.to(torch.float64))
    if (r.diagonal().abs() < 1e-8 * max(1.0, float(r.abs().max()))).any():
        raise InterventionError(f"the {len(directions)} directions are linearly dependent (or zero)")
    return q


class _Hooks:
    def __init__(self, model: Any, interventions: Sequence[Intervention], guided: bool):
        decoder = model.decoder.model.decoder
        self.layers = decoder.layers
        hidden = int(model.decoder.config.hidden_size)
        for iv in interventions:
            check(iv, len(self.layers), hidden)
        self.guided = guided
        self.offset = 0
        self.bases = [None if iv.directions is None else basis(iv.directions) for iv in interventions]
        self.interventions = list(interventions)
        self.handles = [decoder.register_forward_pre_hook(self._track, with_kwargs=True, prepend=True)]
        # prepended: a recorder registered earlier (capture, generation) sees the changed stream
        for layer in sorted({iv.layer for iv in interventions}):
            if layer == 0:
                self.handles.append(self.layers[0].register_forward_pre_hook(self._pre, with_kwargs=True, prepend=True))
            else:
                self.handles.append(self.layers[layer - 1].register_forward_hook(self._post(layer), prepend=True))

    def _track(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.offset = int(cache.get_seq_length()) if cache is not None else 0

    def _rows(self, iv: Intervention, n: int) -> slice:
        if not self.guided or iv.half == "both":
            return slice(0, n)
        if n % 2:
            raise InterventionError(f"guided batch of {n} rows cannot be split into two guidance halves")
        return slice(0, n // 2) if iv.half == "conditional" else slice(n // 2, n)

    def apply(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        n_rows, n_steps, _ = hidden.shape
        out = None
        for iv, q in zip(self.interventions, self.bases):
            if iv.layer != layer:
                continue
            first, stop = iv.steps
            lo, hi = max(first, self.offset), min(stop, self.offset + n_steps)
            if lo >= hi:
                continue
            out = hidden.clone() if out is None else out
            rows, pos = self._rows(iv, n_rows), slice(lo - self.offset, hi - self.offset)
            x = out[rows, pos].to(torch.float64)
            out[rows, pos] = _change(iv, q, x, lo, hi).to(hidden.dtype)
        return hidden if out is None else out

    def _pre(self, module, args, kwargs):
        if args:
            return (self.apply(0, args[0]), *args[1:]), kwargs
        kwargs["hidden_states"] = self.apply(0, kwargs["hidden_states"])
        return args, kwargs

    def _post(self, layer: int):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (self.apply(layer, output[0]), *output[1:])
            return self.apply(layer, output)

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _source(iv: Intervention, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    assert iv.source is not None
    src = iv.source.to(device=x.device, dtype=torch.float64)
    if src.ndim == 1:
        return src.expand_as(x)
    src = src[..., lo:hi, :]
    if src.ndim == 3 and src.shape[0] != x.shape[0]:
        raise InterventionError(
            f"intervention at layer {iv.layer}: source has {src.shape[0]} rows, the batch half {x.shape[0]}"
        )
    return src.expand_as(x)


def _change(iv: Intervention, q: torch.Tensor | None, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    if iv.edit is not None:  # the stream arrives in float32 (cast to float64 here): back to float32 is exact
        rows = x.reshape(-1, x.shape[-1]).float()
        return iv.edit(rows).reshape(x.shape).to(x.dtype)
    if iv.operation == "steer":
        assert iv.directions is not None
        return x + iv.alpha * iv.directions.to(device=x.device, dtype=x.dtype).sum(dim=0)
    if q is None:  # whole-stream patch
        return _source(iv, x, lo, hi).clone()
    q = q.to(x.device)
    target = _source(iv, x, lo, hi) if iv.source is not None else torch.zeros_like(x)
    return x + ((target - x) @ q) @ q.T


@contextlib.contextmanager
def intervening(model: Any, interventions: Sequence[Intervention], guided: bool = False) -> Iterator[None]:
    """Apply ``interventions`` to every forward pass of ``model`` (a MusicgenForConditionalGeneration) inside
    the block: teacher-forced calls and ``generate`` (with the KV cache) alike; the hooks are removed on exit,
    also when the block raises. ``guided``: the batch holds both classifier-free guidance halves."""
    hooks = _Hooks(model, interventions, guided)
    try:
        yield
    finally:
        hooks.close()


@torch.no_grad()
def layer_streams(model: Any, layers: Sequence[int], forward) -> dict[int, torch.Tensor]:
    """The residual stream ``(rows, steps, d)`` float32 of ``layers`` over every decoder step of the forward
    pass that ``forward()`` runs, read at the same points the interventions change (the patch sources)."""
    decoder_layers = model.decoder.model.decoder.layers
    out: dict[int, torch.Tensor] = {}
    handles = []

    def keep(layer: int, h: torch.Tensor) -> None:
        out[layer] = h.detach().float().cpu().clone()

    if 0 in layers:

        def pre(module, args, kwargs):
            keep(0, args[0] if args else kwargs["hidden_states"])

        handles.append(decoder_layers[0].register_forward_pre_hook(pre, with_kwargs=True))
    for layer in layers:
        if layer > 0:

            def post(module, args, output, layer=layer):
                keep(layer, output[0] if isinstance(output, tuple) else output)

            handles.append(decoder_layers[layer - 1].register_forward_hook(post))
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return out
