"""Save and load SAEs in SAELens' layout: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

``cfg.json`` follows SAELens 6 (``architecture: "topk"``, ``d_in``, ``d_sae``, ``k``, ``apply_b_dec_to_input``,
``normalize_activations``, ``dtype``, ``device``, and ``metadata`` with ``model_name``, ``hook_name`` and the
SAELens version the layout matches); for readers of the older layout it also carries ``hook_name``,
``activation_fn`` / ``activation_fn_kwargs: {k}`` and ``hook_layer`` at the top level. The weights are
``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_enc``, ``b_dec``. musicinterp's own provenance (store,
layer, weights kind, metrics) goes in ``musicinterp_sae.json`` beside them, which SAELens ignores.

A BatchTopK SAE is written the way SAELens writes one for inference: ``architecture: "jumprelu"`` and a
``threshold`` (d_sae) tensor beside the four weights (SAELens turns its training buffer ``topk_threshold`` into
that tensor when it saves); ``k`` stays in cfg.json for the record (SAELens' JumpReLU config ignores it).
``load_sae`` reads such folders, ours or JumpReLU SAEs trained elsewhere, as a :class:`BatchTopKSAE` (encode =
``ReLU(pre) * (pre > threshold)``).

**Hook names.** musicinterp's layer l is the residual stream after decoder block l (l = 0: the embeddings,
the input of block 0), before the final layer norm. In TransformerLens' names for a decoder of n blocks:

| TransformerLens / SAELens hook | musicinterp layer |
|---|---|
| ``blocks.{i}.hook_resid_pre`` | i (the input of block i) |
| ``blocks.{i}.hook_resid_post`` | i + 1 (the output of block i) |
| ``decoder.layers.{i}`` / ``model.decoder.layers.{i}`` (a transformers module's output) | i + 1 |

So ``blocks.23.hook_resid_post`` of musicgen-small is layer 24, the last one stored. Ours are written as
``blocks.{l-1}.hook_resid_post`` (``blocks.0.hook_resid_pre`` for layer 0).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from musicinterp.sae.model import BatchTopKSAE, TopKSAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
META_FILE = "musicinterp_sae.json"
SAELENS_LAYOUT_VERSION = "6.0.0"  # the cfg.json layout written (SAELens >= 6 reads it as is)

_TL_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_HF_HOOK = re.compile(r"^(?:[a-z_]+\.)*layers\.(\d+)$")


class SAELoadError(ValueError):
    """An SAE folder that cannot be read or does not fit the model; the message names the folder."""


def hook_name_for_layer(layer: int) -> str:
    """The TransformerLens-style hook name of musicinterp's layer ``layer`` (see the module docstring)."""
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def layer_for_hook_name(hook_name: str) -> int:
    """musicinterp's layer index of a hook name (TransformerLens' or a transformers module path)."""
    m = _TL_HOOK.match(hook_name)
    if m:
        i = int(m.group(1))
        return i if m.group(2) == "pre" else i + 1
    m = _HF_HOOK.match(hook_name)
    if m:
        return int(m.group(1)) + 1
    raise SAELoadError(
        f"hook name {hook_name!r} is not a residual-stream hook musicinterp knows: expected "
        "'blocks.<i>.hook_resid_pre' (layer i), 'blocks.<i>.hook_resid_post' (layer i + 1) "
        "or '...layers.<i>' (layer i + 1)"
    )


@dataclass
class LoadedSAE:
    """An SAE with the layer it reads and what its folder says about it."""

    sae: TopKSAE
    layer: int
    hook_name: str
    cfg: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def save_sae(
    sae: TopKSAE, path: str | Path, *, layer: int, model_name: str, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` (+ ``musicinterp_sae.json``) into folder ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hook = hook_name_for_layer(layer)
    jump = isinstance(sae, BatchTopKSAE)
    cfg = {
        "architecture": "jumprelu" if jump else "topk",
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # any training scale is folded into the weights
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_LAYOUT_VERSION,
            "sae_lens_training_version": None,
            "model_name": model_name,
            "hook_name": hook,
            "hook_head_index": None,
            "prepend_bos": False,
            "context_size": None,
        },
        # the pre-6 names, for tools that read the older layout
        "hook_name": hook,
        "hook_layer": layer,
        "model_name": model_name,
        "activation_fn": "relu" if jump else "topk",
        "activation_fn_kwargs": {} if jump else {"k": sae.k},
    }
    state = {n: p.detach().to("cpu", torch.float32).contiguous() for n, p in sae.named_parameters()}
    if isinstance(sae, BatchTopKSAE):
        state["threshold"] = sae.threshold.detach().to("cpu", torch.float32).contiguous()
    save_file(state, str(path / WEIGHTS_FILE))
    (path / CFG_FILE).write_text(json.dumps(cfg, indent=2))
    if meta is not None:
        (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return path


def _cfg_k(cfg: dict[str, Any], path: Path) -> int:
    if cfg.get("k") is not None:
        return int(cfg["k"])
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if kwargs.get("k") is not None:
        return int(kwargs["k"])
    raise SAELoadError(f"{str(path)!r}: cfg.json names no k (neither 'k' nor 'activation_fn_kwargs.k'): not a TopK SAE")


def _cfg_hook(cfg: dict[str, Any]) -> str | None:
    meta = cfg.get("metadata") or {}
    return meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")


def load_sae(
    path: str | Path,
    *,
    d_model: int | None = None,
    n_layers: int | None = None,
    layer: int | None = None,
    device: str = "cpu",
) -> LoadedSAE:
    """Read an SAELens-layout TopK or BatchTopK/JumpReLU SAE (ours, or one trained elsewhere) and check it fits.

    ``d_model``: the model's width (the SAE's ``d_in`` must equal it); ``n_layers``: decoder blocks (the hook
    must name a layer in 0..n_layers); ``layer``: the layer it will be applied to (its hook must map to it).
    Only TopK and JumpReLU (BatchTopK as saved) SAEs without run-time normalisation are supported; other
    architectures are refused by name.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise SAELoadError(f"{str(path)!r} is not an SAELens folder: it needs {CFG_FILE} and {WEIGHTS_FILE}")
    try:
        cfg = json.loads((path / CFG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise SAELoadError(f"{str(path / CFG_FILE)!r} is not valid JSON: {e}") from e
    arch = cfg.get("architecture") or (
        "topk" if cfg.get("activation_fn", cfg.get("activation_fn_str")) == "topk" else None
    )
    if arch not in ("topk", "jumprelu"):
        raise SAELoadError(
            f"{str(path)!r}: architecture {arch!r} is not supported (only 'topk', and 'jumprelu' as SAELens saves "
            "a BatchTopK SAE)"
        )
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none", False):
        raise SAELoadError(
            f"{str(path)!r}: normalize_activations {norm!r} needs a scaling factor that is not in the folder; fold it "
            "into the weights first (SAELens' fold_activation_norm_scaling_factor) and save with 'none'"
        )
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    # a JumpReLU SAE needs no k to encode; without one (trained elsewhere as JumpReLU) k = d_sae, no cap
    k = _cfg_k(cfg, path) if arch == "topk" or cfg.get("k") is not None else d_sae
    hook = _cfg_hook(cfg)
    if hook is None:
        raise SAELoadError(f"{str(path)!r}: cfg.json names no hook_name (metadata.hook_name or hook_name)")
    hook_layer = layer_for_hook_name(hook)
    if d_model is not None and d_in != d_model:
        raise SAELoadError(
            f"{str(path)!r}: the SAE reads width d_in = {d_in}, the model's residual stream is {d_model}"
        )
    if n_layers is not None and not 0 <= hook_layer <= n_layers:
        raise SAELoadError(
            f"{str(path)!r}: hook {hook!r} is layer {hook_layer}, the model has layers 0..{n_layers} "
            "(0 = embeddings, l = after block l)"
        )
    if layer is not None and hook_layer != layer:
        raise SAELoadError(
            f"{str(path)!r}: hook {hook!r} is layer {hook_layer} in musicinterp's convention, not layer {layer} "
            f"(blocks.<i>.hook_resid_post = layer i + 1)"
        )
    state = load_file(str(path / WEIGHTS_FILE))
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if arch == "jumprelu":
        expected["threshold"] = (d_sae,)
    for name, shape in expected.items():
        if name not in state:
            raise SAELoadError(f"{str(path / WEIGHTS_FILE)!r} has no {name!r} (it holds {sorted(state)})")
        if tuple(state[name].shape) != shape:
            raise SAELoadError(
                f"{str(path / WEIGHTS_FILE)!r}: {name} has shape {tuple(state[name].shape)}, cfg.json implies {shape}"
            )
    sae = BatchTopKSAE(d_in, d_sae, k) if arch == "jumprelu" else TopKSAE(d_in, d_sae, k)
    weights = {n: state[n].float() for n in expected}
    if isinstance(sae, BatchTopKSAE):
        weights["threshold_updates"] = torch.ones((), dtype=torch.long)  # a saved threshold is an estimate
    sae.load_state_dict(weights)
    if not cfg.get("apply_b_dec_to_input", True):  # x is not centred by b_dec before encoding: fold it away
        with torch.no_grad():
            sae.b_enc.add_(sae.b_dec @ sae.W_enc)
    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}
    return LoadedSAE(sae.to(device).eval(), hook_layer, hook, cfg, meta)
