"""Training the toy: the optimiser loop, its learning-rate schedule, and :func:`train_toy`, which makes the
pieces, saves both checkpoints and checks the trained one."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musicinterp.toy.data import training_pieces
from musicinterp.toy.evaluate import evaluate_toy
from musicinterp.toy.losses import sampled_loss
from musicinterp.toy.model import RANDOM_NOTE, _loaded, build_toy, load_toy, save_half
from musicinterp.toy.spec import CALIBRATION_SEED, RETURN_FRAMES, TOY_MODEL_IDS, ToySpec, _check_spec

log = logging.getLogger(__name__)


def _lr_at(step: int, spec: ToySpec) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    frac = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block only: the process's previous count is restored after it,
    also when the block raises (a notebook that trains a toy keeps its own setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_toy(
    spec: ToySpec,
    out_dir: str | Path,
    progress: Callable[[int, int, float], None] | None = None,
    random_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train the positive-control model, save it (and its random twin), check it; returns the report.

    ``out_dir`` gets the trained checkpoint (weights ``trained-here``), ``random_dir`` (default
    ``<out_dir>-random``) the same architecture with its initial random weights (weights ``random``).
    ``progress(step, steps, loss)`` is called after every step. The report's ``checks`` say whether
    the model learned the structure; the losses in it are measured on the checkpoints as saved.
    ``cache_dir`` keeps the encoded pieces between runs (:func:`training_pieces`).
    Runs on ``spec.threads`` torch threads; the process's own count is restored on return (:func:`torch_threads`).
    """
    _check_spec(spec)
    out_dir = Path(out_dir)
    random_dir = Path(random_dir) if random_dir is not None else out_dir.with_name(out_dir.name + "-random")
    with torch_threads(spec.threads):
        return _train_and_check(spec, out_dir, random_dir, progress, cache_dir)


def _train_and_check(
    spec: ToySpec,
    out_dir: Path,
    random_dir: Path,
    progress: Callable[[int, int, float], None] | None,
    cache_dir: str | Path | None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = build_toy(spec)
    model_id = TOY_MODEL_IDS[spec.design]
    wrapped = _loaded(model, model_id + "-random", "random")
    train_ids, train_returns, held = training_pieces(spec, wrapped, cache_dir)
    t_data = time.perf_counter() - t0
    log.info("encoded %d training and %d held-out pieces in %.1f s", len(train_ids), len(held.ids), t_data)

    facts = {
        "toy_spec": spec.model_dump(mode="json"),
        "toy_spec_fingerprint": spec.fingerprint(),
        "construction": f"musicinterp.sources.cue, design {spec.design!r} (cue at 0-1 s decides whether A "
        "returns at 9.0-10.6 s)",
        "encodec": "offline 'tiny' EnCodec (seed 0), LSTM zeroed, causal convolutions, k-means codebooks "
        f"({spec.codebook_clusters} + 3 x {spec.residual_clusters} codewords, "
        f"calibration seed {CALIBRATION_SEED})",
        "text_condition": "empty description, conditional half (as capture feeds it)",
    }
    save_half(model, random_dir, model_id + "-random", "random", **facts, note=RANDOM_NOTE)

    for p in model.text_encoder.parameters():
        p.requires_grad_(False)
    for p in model.audio_encoder.parameters():
        p.requires_grad_(False)
    model.to(spec.device)
    train_ids = train_ids.to(spec.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(spec.seed)
    # decoder step s predicts step s + 1; codebook k of frame f sits at step f + k + 1 (delay pattern)
    focus = torch.arange(RETURN_FRAMES.start, RETURN_FRAMES.stop + 4) if spec.focus_return else None
    model.train()
    model.audio_encoder.eval()
    history = []
    t1 = time.perf_counter()
    for step in range(spec.steps):
        idx = torch.randint(0, len(train_ids), (spec.batch_size,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, spec)
        loss = sampled_loss(wrapped, train_ids[idx], spec.loss_steps, gen, always=focus, onset_weight=spec.onset_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append(loss.item())
        if progress is not None:
            progress(step + 1, spec.steps, history[-1])
        if step % 25 == 0 or step == spec.steps - 1:
            log.info("step %d/%d loss %.4f", step + 1, spec.steps, history[-1])
    train_s = time.perf_counter() - t1
    model.to("cpu").eval()

    tail = history[-max(1, len(history) // 10) :]  # the last tenth of the steps: less noisy than one batch
    facts |= {
        "train_seconds": round(train_s, 1),
        "final_train_loss": round(float(np.mean(tail)), 4),
        "torch_threads": spec.threads,
        "torch_version": torch.__version__,
        "trained_on": _device_name(spec),
    }
    save_half(
        model,
        out_dir,
        model_id,
        "trained-here",
        **facts,
        note="trained here on synthetic cue pieces; a positive control, not MusicGen",
    )
    trained, random = load_toy(out_dir), load_toy(random_dir)
    report = evaluate_toy(trained, random, held)
    report |= {
        "out_dir": str(out_dir),
        "random_dir": str(random_dir),
        "spec": spec.model_dump(mode="json"),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "train_loss_first": round(history[0], 4),
        "train_loss_last": round(float(np.mean(tail)), 4),
        "n_train": len(train_ids),
        "n_train_return_cue": int(train_returns.sum()),
        "checkpoint_bytes": sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()),
    }
    if not report["learned"]:
        log.warning("the toy model did not learn the cue structure: %s", report["checks"])
    return report


def _device_name(spec: ToySpec) -> str:
    if spec.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(spec.device))
    return f"cpu ({spec.threads} threads)"
