"""Train one TopK SAE on one layer of a run store, with checkpoints that a rerun resumes from exactly.

Loss: the squared reconstruction error summed over features, averaged over frames, plus ``aux_k_coef`` x the
AuxK loss (Gao et al. 2024): the ``d_in / 2`` most active *dead* features (silent for ``dead_after_frames``)
reconstruct the residual error, which brings dead features back. Adam; the learning rate decays linearly to 0
over the last 20 % of steps; after each step the decoder rows are renormalised to unit norm (the gradient's
component along each row removed first). Inputs are scaled by one constant (E||x||^2 = d_in on the first
buffer) which is folded into the saved weights.

The checkpoint (``<out>/checkpoints/layer<l>.pt``) holds the SAE, Adam's state, the step, each feature's
frames since it last fired and the stream's state (clip order position, buffer rows, generator): a run killed
at any point resumes from its last checkpoint and ends with the weights an uninterrupted run gets
(``test_sae_train__resume_after_kill_gives_the_uninterrupted_weights``). A checkpoint written for other
settings or another store is refused, never mixed in.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musicinterp.sae.model import BatchTopKSAE, TopKSAE, make_sae
from musicinterp.sae.saelens import save_sae
from musicinterp.sae.spec import SAETrainSpec
from musicinterp.sae.stream import ClipStream, complete_clips, open_store, split_sources

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
DECAY_FRACTION = 0.2  # share of the steps over which the learning rate decays linearly to zero


def sae_dir(out: str | Path, layer: int) -> Path:
    return Path(out) / f"layer{layer}"


def checkpoint_path(out: str | Path, layer: int) -> Path:
    return Path(out) / "checkpoints" / f"layer{layer}.pt"


def store_key(ds: Any) -> str:
    """What ties a checkpoint to a store: its uid (new for every store written) and config fingerprint."""
    return f"{ds.attrs.get('store_uid', '')}:{ds.attrs.get('config_fingerprint', '')}"


def _lr_at(step: int, total: int, lr: float) -> float:
    start = int(total * (1 - DECAY_FRACTION))
    return lr if step < start else lr * max(total - step, 0) / max(total - start, 1)


def aux_k_loss(sae: TopKSAE, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """AuxK: the top ``d_in // 2`` dead features (by pre-activation) reconstruct the detached residual."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k_aux = min(sae.d_in // 2, n_dead)
    masked = torch.where(dead[None, :], pre, torch.full_like(pre, -torch.inf))
    top = torch.topk(masked, k_aux, dim=-1)
    acts = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    recon = acts @ sae.W_dec
    return ((recon - residual) ** 2).sum(-1).mean() * min(n_dead / k_aux, 1.0)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def train_layer(
    spec: SAETrainSpec,
    layer: int,
    out: str | Path,
    progress: Progress | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train (or resume, or find finished) the SAE of ``layer``; write it in SAELens' layout under ``out``.

    ``stop_after_steps`` stops after that many steps as if the process were killed (tests of resumption).
    Returns a small summary: the SAE folder, steps, frames, whether it resumed, the memory bound in rows.
    """
    ds = open_store(spec.store)
    clips = complete_clips(ds)
    train_clips, eval_clips = split_sources(ds, clips, spec.eval_fraction, spec.seed)
    d_in = int(ds.sizes["feature"])
    d_sae = spec.d_sae_for(d_in)
    if spec.k > d_sae:
        raise ValueError(f"k = {spec.k} is more than d_sae = {d_sae} (expansion {spec.expansion} x d_in {d_in})")
    device = torch.device(spec.device)
    total = math.ceil(spec.train_frames / spec.batch_size)
    lr = spec.lr_for(d_sae)
    key = {"spec": spec.fingerprint(), "layer": layer, "store": store_key(ds)}
    ckpt = checkpoint_path(out, layer)
    stream = ClipStream(ds, layer, train_clips, spec.shuffle_buffer_frames, spec.seed)
    sae = make_sae(spec.kind, d_in, d_sae, spec.k)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    step, resumed = 0, False
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors and plain values only
        if state["key"] != key:
            raise ValueError(
                f"checkpoint {str(ckpt)!r} was written for other settings or another store ({state['key']} vs {key}); "
                "delete it or choose another output folder"
            )
        sae.load_state_dict(state["sae"])
        opt.load_state_dict(state["opt"])
        stream.restore(state["stream"])
        step, scale, since_fired = state["step"], state["scale"], state["since_fired"]
        train_mean = state["mean"].numpy()
        resumed = True
        log.info("layer %d: resumed at step %d of %d", layer, step, total)
    else:
        gen = torch.Generator().manual_seed(spec.seed * 1000 + layer)
        sae.init_weights(gen)
        stream._refill()  # the first buffer sets the input scale and the decoder bias
        first = stream.buf[: stream.fill].astype(np.float32)
        scale = (
            math.sqrt(d_in / float((first.astype(np.float64) ** 2).sum(1).mean()))
            if spec.normalize_activations != "none"
            else 1.0
        )
        train_mean = first.mean(0)  # the mean-ablation baseline of the evaluation
        with torch.no_grad():
            sae.b_dec.copy_(torch.from_numpy(train_mean * scale))
    sae.to(device)
    for s in opt.state.values():  # Adam's moments follow the parameters
        for name, v in s.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                s[name] = v.to(device)
    since_fired = since_fired.to(device)

    def save() -> None:
        _save_checkpoint(
            ckpt,
            {
                "key": key,
                "sae": {n: p.detach().cpu() for n, p in sae.state_dict().items()},
                "opt": opt.state_dict(),
                "stream": stream.state(),
                "step": step,
                "scale": scale,
                "since_fired": since_fired.cpu(),
                "mean": torch.from_numpy(np.asarray(train_mean)),
            },
        )

    last_mse = float("nan")
    while step < total:
        if stop_after_steps is not None and step >= stop_after_steps:
            save()
            return {"layer": layer, "stopped_at": step, "checkpoint": str(ckpt)}
        x = torch.from_numpy(stream.next_batch(spec.batch_size)).to(device) * scale
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, total, lr)
        pre = sae.pre_acts(x)
        acts = sae.topk(pre)
        recon = sae.decode(acts)
        err = ((recon - x) ** 2).sum(-1).mean()
        loss = err
        dead = since_fired >= spec.dead_after_frames
        if spec.aux_k_coef > 0:
            loss = loss + spec.aux_k_coef * aux_k_loss(sae, pre, (x - recon).detach(), dead)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()
        with torch.no_grad():
            since_fired += x.shape[0]
            since_fired[(acts > 0).any(0)] = 0
        if isinstance(sae, BatchTopKSAE):
            sae.update_threshold(acts.detach(), spec.topk_threshold_lr)
        step += 1
        last_mse = float(err.detach()) / d_in
        if step % spec.checkpoint_every_steps == 0 or step == total:
            save()
            if progress:
                progress(step, total, f"layer {layer}: step {step}/{total}, mse/d_in {last_mse:.4g}")
    final = make_sae(spec.kind, d_in, d_sae, spec.k)
    final.load_state_dict({n: p.detach().cpu() for n, p in sae.state_dict().items()})
    final.fold_input_scale(scale)
    meta = {
        "store": spec.store,
        "store_key": key["store"],
        "layer": layer,
        "weights": str(ds.attrs.get("weights", "unknown")),
        "model_id": str(ds.attrs.get("model_id", "")),
        "model_revision": str(ds.attrs.get("model_revision", "")),
        "train_spec": spec.model_dump(mode="json"),
        "train_spec_fingerprint": spec.fingerprint(),
        "steps": total,
        "frames": total * spec.batch_size,
        "input_scale_folded": scale,
        "train_clips": len(train_clips),
        "eval_clips": [str(c) for c in ds["clip"].values[eval_clips]],
        "kind": spec.kind,
        "threshold": float(final.threshold.mean()) if isinstance(final, BatchTopKSAE) else None,
        "dead_at_end": float((since_fired >= spec.dead_after_frames).float().mean()),
        "final_train_mse_per_dim_scaled": last_mse,
        "buffer_rows_max": stream.max_rows_held,
        "train_mean": [float(v) for v in train_mean],
    }
    folder = save_sae(final, sae_dir(out, layer), layer=layer, model_name=meta["model_id"], meta=meta)
    return {
        "layer": layer,
        "sae": str(folder),
        "steps": total,
        "resumed": resumed,
        "buffer_rows_bound": stream.capacity,
        "d_in": d_in,
        "d_sae": d_sae,
    }
