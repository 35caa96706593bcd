"""Metrics of a trained SAE on the held-out clips of its store.

Per layer, over every frame of the held-out clips (sources the training never saw):

- ``nmse``: sum ||x - x_hat||^2 / sum ||x||^2 (SAELens' normalised MSE);
- ``explained_variance``: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2;
- ``l0``: mean active features per frame (k for a TopK SAE unless pre-activations are negative);
- ``dead_fraction``: features that never fire on the held-out frames; ``dense_fraction``: features that fire
  on more than ``dense_threshold`` of them;
- next-code loss under teacher forcing (the model's mean cross-entropy over every predicted code of the clips,
  the delay pattern's pad targets excluded): ``loss_clean``, ``loss_spliced`` (the layer replaced at every
  stored step by the SAE's reconstruction, musicinterp.sae.splice), ``loss_mean_ablated`` (replaced by the
  training frames' mean) and ``loss_recovered`` = (ablated - spliced) / (ablated - clean): 1 = the SAE loses
  nothing the model uses, 0 = no better than the mean.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from musicinterp.capture import delayed_decoder_input, text_condition
from musicinterp.config import CaptureSpec, RunSpec
from musicinterp.models import PAD_TOKEN_ID, LoadedModel
from musicinterp.sae.model import TopKSAE
from musicinterp.sae.splice import edit_layer, reconstruct, replace_with
from musicinterp.sae.stream import layer_position, open_store, read_clip


def run_spec_of(ds: Any) -> RunSpec:
    """The RunSpec that wrote a store (its ``config_json`` attribute): which model, which text condition."""
    raw = ds.attrs.get("config_json")
    if not raw:
        raise ValueError("the store has no config_json attribute: pass the model and capture settings yourself")
    return RunSpec.model_validate(json.loads(raw))


@torch.no_grad()
def next_code_loss(loaded: LoadedModel, codes: torch.Tensor, capture: CaptureSpec) -> tuple[float, int]:
    """Summed cross-entropy (nats) of every code the decoder predicts from the delayed input, and their count."""
    device = next(loaded.model.parameters()).device
    ids = delayed_decoder_input(loaded, codes.to(device))  # (K, T + 1)
    states, mask = text_condition(loaded, capture)
    out = loaded.model(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=ids, use_cache=False)
    k, s = ids.shape
    logits = out.logits.reshape(k, s, -1)[:, :-1].float()
    target = ids[:, 1:]
    keep = target != PAD_TOKEN_ID
    ce = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    n = int(keep.sum())
    return float(ce) * n, n


def reconstruction_metrics(sae: TopKSAE, frames: list[np.ndarray], dense_threshold: float) -> dict[str, float]:
    """nMSE, explained variance, L0, dead and dense fractions over ``frames`` (a list of (n, d_in) arrays)."""
    dev = sae.W_enc.device
    err = tot = 0.0
    n = 0
    l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.long)
    s1 = np.zeros(sae.d_in)
    s2 = 0.0
    with torch.no_grad():
        for a in frames:
            x = torch.from_numpy(a.astype(np.float32)).to(dev)
            acts = sae.encode(x)
            xh = sae.decode(acts)
            err += float(((x - xh) ** 2).sum())
            tot += float((x**2).sum())
            s1 += x.double().sum(0).cpu().numpy()
            s2 += float((x.double() ** 2).sum())
            active = acts > 0
            l0 += float(active.sum())
            fired += active.sum(0).cpu()
            n += len(a)
    var_total = s2 - float((s1**2).sum()) / max(n, 1)
    freq = fired.double() / max(n, 1)
    return {
        "frames": n,
        "nmse": err / tot if tot > 0 else float("nan"),
        "explained_variance": 1.0 - err / var_total if var_total > 0 else float("nan"),
        "l0": l0 / max(n, 1),
        "dead_fraction": float((fired == 0).double().mean()),
        "dense_fraction": float((freq > dense_threshold).double().mean()),
    }


def evaluate_sae(
    store: str,
    layer: int,
    sae: TopKSAE,
    eval_clip_ids: list[str],
    train_mean: np.ndarray,
    loaded: LoadedModel | None,
    loss_clips: int,
    dense_threshold: float,
    capture: CaptureSpec | None = None,
) -> dict[str, Any]:
    """All metrics of one layer's SAE; the loss metrics only when a model is given (NaN otherwise)."""
    ds = open_store(store)
    lpos = layer_position(ds, layer)
    ids = [str(c) for c in ds["clip"].values]
    missing = [c for c in eval_clip_ids if c not in ids]
    if missing:
        raise ValueError(f"held-out clips {missing[:3]} are not in the store {store!r}")
    idx = [ids.index(c) for c in eval_clip_ids]
    frames = [read_clip(ds, i, lpos) for i in idx]
    out: dict[str, Any] = {
        "layer": layer,
        "eval_clips": len(idx),
        **reconstruction_metrics(sae, frames, dense_threshold),
    }
    nan = float("nan")
    out.update(loss_clean=nan, loss_spliced=nan, loss_mean_ablated=nan, loss_recovered=nan, loss_clips=0)
    if loaded is None or loss_clips == 0 or not idx:
        return out
    capture = capture or run_spec_of(ds).capture
    if int(loaded.hidden_size) != sae.d_in:
        raise ValueError(f"the model's width {loaded.hidden_size} is not the SAE's d_in {sae.d_in}")
    sums = {"clean": [0.0, 0], "spliced": [0.0, 0], "mean_ablated": [0.0, 0]}
    mean = torch.from_numpy(np.asarray(train_mean, np.float32))
    for i in idx[:loss_clips]:
        n = int(ds["n_frames"].values[i])
        codes = torch.from_numpy(np.asarray(ds["codes"].isel(clip=i, time=slice(0, n)).values).astype(np.int64))
        steps = slice(1, n + 1)  # the stored frames' decoder steps
        for name, edit in (("clean", None), ("spliced", reconstruct(sae)), ("mean_ablated", replace_with(mean))):
            if edit is None:
                s, c = next_code_loss(loaded, codes, capture)
            else:
                with edit_layer(loaded, layer, edit, steps):
                    s, c = next_code_loss(loaded, codes, capture)
            sums[name][0] += s
            sums[name][1] += c
    lc, ls, lm = (sums[k][0] / max(sums[k][1], 1) for k in ("clean", "spliced", "mean_ablated"))
    out.update(
        loss_clean=lc,
        loss_spliced=ls,
        loss_mean_ablated=lm,
        loss_recovered=(lm - ls) / (lm - lc) if lm != lc else nan,
        loss_clips=min(loss_clips, len(idx)),
    )
    return out
