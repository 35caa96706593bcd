"""Replace one layer of MusicGen's residual stream during a forward pass, and the SAE edits that use it.

Layer convention as capture's (musicinterp.capture): layer 0 is the input of decoder block 0 (a forward
pre-hook), layer l >= 1 the output of block l (a forward hook). Stored frame i is decoder step i + 1, so the
stored frames of a clip of T frames are steps 1..T; ``steps`` selects which decoder steps are edited (default:
those, the steps an SAE trained on a store has seen; step 0, the start token, is left alone). Under the delay
pattern step s carries codebook k of frame s - k - 1 and its logits predict codebook k of frame s - k, so
editing steps a..b changes the predicted codes of frames a - 3 onward (through attention, every later step too).
``steps`` index the positions of each forward call: in cached generation a call holds one step, so pass
``slice(None)`` there.

Ablating a feature subtracts its decoder contribution ``a_f(x) W_dec[f]`` from the activation and keeps the
SAE's error term ``x - x_hat``: nothing but that feature's share of the reconstruction changes
(``ablate_features``). This is the function the causal interventions use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from musicinterp.models import LoadedModel
from musicinterp.sae.model import TopKSAE

Edit = Callable[[torch.Tensor], torch.Tensor]  # (steps, d_in) -> (steps, d_in)


@contextmanager
def edit_layer(loaded: LoadedModel, layer: int, edit: Edit, steps: slice | None = None) -> Iterator[None]:
    """While active, every forward pass of ``loaded`` has ``layer`` replaced by ``edit(layer)`` at ``steps``
    (a slice of decoder steps; None = steps 1.. onward) for every sequence in the batch."""
    blocks = loaded.model.decoder.model.decoder.layers
    if not 0 <= layer <= len(blocks):
        raise ValueError(f"layer {layer} out of range; model {loaded.model_id!r} has layers 0..{len(blocks)}")
    sl = steps if steps is not None else slice(1, None)

    def apply(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        part = h[:, sl]
        h[:, sl] = edit(part.reshape(-1, part.shape[-1]).float()).reshape(part.shape).to(h.dtype)
        return h

    if layer == 0:

        def pre(module, args, kwargs):
            if args:
                return (apply(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": apply(kwargs["hidden_states"])}

        handle = blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(module, args, output):
            if isinstance(output, tuple):
                return (apply(output[0]), *output[1:])
            return apply(output)

        handle = blocks[layer - 1].register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


def reconstruct(sae: TopKSAE) -> Edit:
    """The layer replaced by the SAE's reconstruction (the error term dropped): the spliced-in evaluation."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sae(x.to(sae.W_enc.device)).to(x.device)

    return edit


def replace_with(mean: torch.Tensor) -> Edit:
    """The layer replaced by a constant vector (the mean-ablation baseline)."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        return mean.to(x.device, x.dtype).expand_as(x)

    return edit


def ablate_features(x: torch.Tensor, sae: TopKSAE, features: Sequence[int], scale: float = 0.0) -> torch.Tensor:
    """``x`` with each feature's decoder contribution scaled by ``scale`` (0 = ablated), the error term kept.

    ``x - (1 - scale) * sum_f a_f(x) W_dec[f]``; equal to ``x_hat_without_f + (x - x_hat)``. ``scale > 1``
    steers the feature up by the same route.
    """
    f = torch.as_tensor(list(features), dtype=torch.long, device=sae.W_dec.device)
    with torch.no_grad():
        acts = sae.encode(x.to(sae.W_enc.device))[..., f]
        delta = (1.0 - scale) * acts @ sae.W_dec[f]
    return x - delta.to(x.device, x.dtype)


def ablation(sae: TopKSAE, features: Sequence[int], scale: float = 0.0) -> Edit:
    """The :func:`edit_layer` edit that ablates (or scales) ``features``: use as
    ``with edit_layer(loaded, layer, ablation(sae, [f])): model.generate(...)``."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        return ablate_features(x, sae, features, scale)

    return edit
