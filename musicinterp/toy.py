"""The positive-control model: a small MusicGen decoder trained here on cue pieces (CPU, or a GPU).

DESIGN.md section 3 ("Known-answer models"): a pipeline that claims to detect foresight must find it
where it exists. :func:`train_toy` renders cue pieces (:mod:`musicinterp.sources.cue`: a cue in the
first second decides whether section A returns at 9 s, and nothing audible near 9 s gives it away),
encodes them with the model's EnCodec, trains a small MusicGen-architecture decoder on their delayed
codes (teacher forcing, the empty text condition, cross-entropy over the four codebooks), checks on
held-out pieces that it learned the structure, and saves it as a loadable checkpoint with weights
kind ``trained-here``. The same architecture with its initial random weights is saved beside it
(weights kind ``random``) as the negative control.

The check: mean cross-entropy over the return section (frames 450-529) of held-out pieces. A model
that remembers the cue predicts A's codes there after the return cue, and cannot do better than
chance after the no-return cue (the section is then random); the random-weight model is at chance
everywhere. The report gives all of these numbers.

The audio encoder is the offline 'tiny' model's random-weight EnCodec (DESIGN.md: a random EnCodec is
fine, its codes are a deterministic function of the audio), with three changes that the construction
needs, all recorded in the checkpoint's ``musicinterp.json``:

- *codebooks*: the offline model's quantizer codebooks are all zero (every frame would get code 0),
  so each of the four residual codebooks is set to k-means centroids of latents of calibration cue
  pieces (their own seed), repeated to fill the 2048 entries: ``codebook_clusters`` for the first
  codebook, ``residual_clusters`` (few) for the others, which would otherwise spend most of the loss
  on the fine detail of note transitions;
- *no LSTM memory*: the encoder LSTM's weights are zeroed, which turns it into its identity skip, so a
  frame's codes depend on a few frames of audio only (a trained EnCodec's LSTM would carry the cue
  into every later frame and give the return away locally);
- *causal convolutions*: frame ``i``'s codes depend on audio up to the end of its own hop, never on
  audio after it (the non-causal encoder looks ~5 frames ahead, into the return section).

So the codes at frame ``i`` are a function of the audio in roughly ``[(i - 12) * 640, (i + 1) * 640)``
samples; a returning section yields the same codes as A except in its first few frames.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from scipy.stats import wilcoxon

from musicinterp.capture import delayed_decoder_input, text_condition
from musicinterp.config import CaptureSpec, Spec
from musicinterp.frames import FRAME_RATE_HZ, n_frames
from musicinterp.models import (
    CHECKPOINT_META_FILE,
    PAD_TOKEN_ID,
    LoadedModel,
    _offline_config,
    _set_generation_defaults,
    build_offline,
    save_checkpoint,
)
from musicinterp.sources.cue import (
    MIN_DURATION_S,
    RETURN_AT_S,
    RETURN_END_S,
    compose,
    cue_recipe,
    is_return_piece,
    with_cue,
)

log = logging.getLogger(__name__)

TOY_MODEL_IDS = {"chord": "musicinterp/toy-cue", "pair": "musicinterp/toy-pair"}  # by cue design
CALIBRATION_SEED = 424_242  # cue pieces whose latents set the EnCodec codebooks (never trained on)
CALIBRATION_PIECES = 32
POOL_CHUNK = 256  # training pieces composed and encoded at a time (an 11 s piece is 1.4 MB of audio)
TEXT_VOCAB = 32  # the toy has no tokenizer: only the empty condition (T5's EOS token, id 1) is ever fed
RETURN_FRAMES = range(round(RETURN_AT_S * FRAME_RATE_HZ), round(RETURN_END_S * FRAME_RATE_HZ))
# The first codes that hear the return: the toy EnCodec is causal and smooths over ~12 frames, so the code
# of the return's first frame is the same after either cue (tested); those of the next two frames mostly
# differ. They are predicted at time indices 450 and 451, from inputs in which the return cannot be heard
# yet (or only just): only the cue tells what comes.
ONSET_FRAMES = (RETURN_FRAMES.start + 1, RETURN_FRAMES.start + 2)
# the learned-structure check: "far below" made concrete
MAX_RATIO_TO_RANDOM = 0.25  # trained loss at the return (return cue) / random model's
# the counterfactual check: the true cue must lower the loss of the return's first codes, piece by piece
MIN_ONSET_GAIN_NATS = 0.25  # mean (swapped cue - true cue) over the held-out return pieces
MAX_ONSET_P = 0.01  # one-sided paired Wilcoxon signed-rank test over those pieces


class ToySpec(Spec):
    """How the positive-control model is made: pieces, architecture, optimiser."""

    n_pieces: int = Field(256, ge=4, le=100_000, description="Training cue pieces (half with the return cue).")
    duration_s: float = Field(11.0, ge=11.0, le=30.0, description="Length of each piece in seconds.")
    seed: int = Field(0, ge=0, description="Seed of the training pieces and of the initial weights.")
    heldout_pieces: int = Field(32, ge=2, le=10_000, description="Held-out pieces for the check.")
    heldout_seed: int = Field(1000, ge=0, description="Seed of the held-out pieces (must differ from seed).")
    steps: int = Field(800, ge=1, le=100_000, description="Optimiser steps.")
    batch_size: int = Field(16, ge=1, le=1024, description="Pieces per step.")
    lr: float = Field(3e-3, gt=0, le=1.0, description="Peak learning rate (AdamW, linear warm-up, cosine decay).")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    hidden_size: int = Field(128, ge=16, le=1024, description="Decoder width.")
    n_layers: int = Field(4, ge=1, le=24, description="Decoder blocks.")
    n_heads: int = Field(4, ge=1, le=16, description="Attention heads (must divide hidden_size).")
    ffn_dim: int = Field(512, ge=16, le=4096, description="Feed-forward width of each block.")
    loss_steps: int = Field(
        64, ge=1, le=10_000, description="Decoder steps per piece whose codes enter the loss at each "
        "optimiser step (drawn at random; the output heads dominate the CPU cost)."
    )
    codebook_clusters: int = Field(
        64, ge=2, le=2048,
        description="Distinct EnCodec codewords of the first codebook (k-means on calibration pieces).",
    )
    residual_clusters: int = Field(
        4, ge=1, le=2048, description="Distinct codewords of each residual codebook (2-4): few, so that the "
        "fine detail of note transitions does not drown the structure in code noise."
    )
    threads: int = Field(2, ge=1, le=256, description="torch CPU threads.")
    focus_return: bool = Field(
        True, description="Always put the decoder steps of the return section into the loss (besides the "
        "random ones): the only steps where the cue matters, about a fifth of the piece, would otherwise be "
        "drawn rarely. The model still sees and predicts every other step.")
    design: Literal["chord", "pair"] = Field(
        "chord", description="Cue design of the pieces (CueSource.design): 'chord', one of two chords; 'pair', "
        "two chords that are equal when A returns (not linear in retained codes: a random twin cannot expose it).")
    device: str = Field(
        "cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="torch device of training and of encoding the pieces "
        "('cpu', 'cuda', 'cuda:N'). The checks and the saved checkpoints are always on the CPU.")
    onset_weight: float = Field(
        1.0, ge=0.0, le=100.0, description="Weight of an extra loss term: the cross-entropy of the first "
        "codebook at the first frames whose codes hear the return (ONSET_FRAMES), predicted before the return "
        "is heard. They are the codes of a piece that only the cue predicts (the rest of a returning A can be "
        "copied from A once its start is heard); without the term a model copies and barely uses the cue.")


def _check_spec(spec: ToySpec) -> None:
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec.device!r} asked for, but torch {torch.__version__} sees no CUDA device")
    if spec.hidden_size % spec.n_heads:
        raise ValueError(f"hidden_size {spec.hidden_size} is not divisible by n_heads {spec.n_heads}")
    if spec.heldout_seed == spec.seed:
        raise ValueError(f"heldout_seed must differ from seed (both {spec.seed}): held-out pieces would be trained on")
    if spec.seed == CALIBRATION_SEED or spec.heldout_seed == CALIBRATION_SEED:
        raise ValueError(f"seed {CALIBRATION_SEED} is reserved for the codebook calibration pieces")


def toy_config(spec: ToySpec):
    """MusicgenConfig of the toy: the offline 'tiny' model with a wider, deeper decoder and causal EnCodec."""
    from transformers import MusicgenConfig

    base = _offline_config("tiny")
    text = base.text_encoder.to_dict() | {"vocab_size": TEXT_VOCAB}
    audio = base.audio_encoder.to_dict() | {"use_causal_conv": True}
    decoder = base.decoder.to_dict() | {
        "hidden_size": spec.hidden_size, "num_hidden_layers": spec.n_layers, "num_attention_heads": spec.n_heads,
        "ffn_dim": spec.ffn_dim, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    }
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def _compose_piece(recipe: dict) -> tuple[np.ndarray, list[str]]:
    samples, truth = compose(recipe)
    return samples, truth["cue_chords"]


def _recipes(seed: int, n: int, duration_s: float, design: str) -> tuple[list[dict], np.ndarray]:
    """Recipes of ``n`` cue pieces, half with the return cue, as ``plan_cue`` makes them; and the return flags."""
    returns = np.array(is_return_piece(seed, n, 0.5))
    return [cue_recipe(seed, i, duration_s, bool(r), design) for i, r in enumerate(returns)], returns


def _pieces(seed: int, n: int, duration_s: float, design: str = "chord"
            ) -> tuple[list[np.ndarray], np.ndarray, list[list[str]]]:
    """Cue pieces (samples, return flags, cue chords)."""
    recipes, returns = _recipes(seed, n, duration_s, design)
    made = [_compose_piece(r) for r in recipes]
    return [x for x, _ in made], returns, [c for _, c in made]


@torch.no_grad()
def _calibrate_codebooks(model, spec: ToySpec) -> None:
    """Set each residual codebook to k-means centroids of the calibration pieces' (residual) latents."""
    from sklearn.cluster import KMeans

    audio = model.audio_encoder
    # always the chord design: every toy shares one EnCodec, and its random twin is the same model
    samples, _, _ = _pieces(CALIBRATION_SEED, CALIBRATION_PIECES, spec.duration_s)
    latents = torch.cat([audio.encoder(torch.from_numpy(x)[None, None])[0] for x in samples], dim=1).T
    resid = latents.double()
    size = audio.quantizer.layers[0].codebook.embed.shape[0]
    for i, layer in enumerate(audio.quantizer.layers):
        clusters = spec.codebook_clusters if i == 0 else spec.residual_clusters
        km = KMeans(n_clusters=clusters, n_init=1, random_state=i).fit(resid.numpy())
        centroids = torch.from_numpy(km.cluster_centers_).float()
        # repeated to fill the codebook: ties go to the first copy, so only ids < clusters occur
        embed = centroids[torch.arange(size) % clusters]
        layer.codebook.embed.copy_(embed)
        layer.codebook.embed_avg.copy_(embed)
        layer.codebook.cluster_size.fill_(1.0)
        resid = resid - layer.codebook.decode(layer.codebook.encode(resid.float())).double()


def build_toy(spec: ToySpec, audio_state: dict[str, torch.Tensor] | None = None):
    """The untrained toy model (random decoder), with the calibrated EnCodec described in the module doc.

    ``audio_state``: an EnCodec state to use as it is (a trained toy's), instead of building and calibrating one.
    """
    from transformers import MusicgenForConditionalGeneration

    _check_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = MusicgenForConditionalGeneration(toy_config(spec))
    if audio_state is not None:
        model.audio_encoder.load_state_dict(audio_state)
        _set_generation_defaults(model)
        return model.eval()
    tiny = build_offline("tiny", seed=0)
    model.audio_encoder.load_state_dict(tiny.audio_encoder.state_dict())
    with torch.no_grad():
        for module in model.audio_encoder.encoder.modules():
            if isinstance(module, torch.nn.LSTM):
                for p in module.parameters():
                    p.zero_()
    _calibrate_codebooks(model, spec)
    _set_generation_defaults(model)
    return model.eval()


def _loaded(model, model_id: str, weights: str) -> LoadedModel:
    return LoadedModel(model, None, model_id, "local", weights)  # type: ignore[arg-type]


def encode_pieces(loaded: LoadedModel, samples: list[np.ndarray], batch_size: int | None = None) -> torch.Tensor:
    """Delayed decoder inputs ``(piece, codebook, n_frames + 1)`` of equal-length pieces, on the encoder's device.

    EnCodec runs on ``batch_size`` pieces at once (default: 1 on the CPU, where batching made it slower,
    64 on a GPU); the codes equal those of ``capture.encode_audio`` piece by piece (tested).
    """
    if len({len(x) for x in samples}) > 1:
        raise ValueError("encode_pieces needs pieces of equal length")
    device = next(loaded.model.audio_encoder.parameters()).device
    batch_size = batch_size or (1 if device.type == "cpu" else 64)
    out = []
    for i in range(0, len(samples), batch_size):
        x = torch.from_numpy(np.stack(samples[i : i + batch_size]).astype(np.float32)).to(device)[:, None]
        codes = loaded.model.audio_encoder.encode(x).audio_codes[0]  # (batch, K, T)
        if codes.shape[-1] != n_frames(x.shape[-1]):
            raise ValueError(f"EnCodec gave {codes.shape[-1]} frames for {x.shape[-1]} samples")
        out += [delayed_decoder_input(loaded, c) for c in codes]
    return torch.stack(out)


def _condition(loaded: LoadedModel, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty text condition, as capture feeds it (conditional half, description '')."""
    states, mask = text_condition(loaded, CaptureSpec())
    return states.expand(batch, -1, -1), mask.expand(batch, -1)


def frame_losses(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``(piece, codebook, frame)`` of each code given everything before it (NaN: not predicted).

    ``ids`` are delayed inputs ``(piece, K, T + 1)``; codebook ``k`` of frame ``i`` sits at step
    ``i + 1 + k`` and is predicted by the logits of step ``i + k``.
    """
    b, k, s = ids.shape
    t = s - 1
    states, mask = _condition(loaded, b)
    out = loaded.model(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=ids.reshape(b * k, s),
                       use_cache=False)
    logits = out.logits.reshape(b, k, s, -1)[:, :, :-1]
    target = ids[:, :, 1:]
    ce = torch.nn.functional.cross_entropy(logits.permute(0, 3, 1, 2), target.clamp(max=logits.shape[-1] - 1),
                                           reduction="none")
    ce = ce.masked_fill(target == PAD_TOKEN_ID, float("nan"))  # (b, k, step - 1)
    per_frame = torch.full((b, k, t), float("nan"))
    for cb in range(k):  # step s - 1 = i + k predicts frame i of codebook cb
        per_frame[:, cb, : t - cb] = ce[:, cb, cb:]
    return per_frame


def sampled_loss(loaded: LoadedModel, ids: torch.Tensor, n_steps: int, gen: torch.Generator,
                 always: torch.Tensor | None = None, onset_weight: float = 0.0) -> torch.Tensor:
    """Training loss: the mean of :func:`frame_losses` over ``n_steps`` decoder steps drawn at random.

    The decoder runs over every step (the context is whole); only the output heads and the softmax,
    which dominate the cost on a CPU with 2048 codes, are evaluated on the drawn steps. An unbiased
    estimate of the full loss (``n_steps >= n_frames`` evaluates every step). ``onset_weight`` adds that
    multiple of the cross-entropy of codebook 0 at the return point's first frame (see ``ToySpec``).
    """
    model = loaded.model
    b, k, s = ids.shape
    states, mask = _condition(loaded, b)
    if model.config.text_encoder.hidden_size != model.config.decoder.hidden_size:
        states = model.enc_to_dec_proj(states)
    hidden = model.decoder.model(input_ids=ids.reshape(b * k, s), encoder_hidden_states=states,
                                 encoder_attention_mask=mask).last_hidden_state  # (b, s, H)
    steps = torch.randperm(s - 1, generator=gen)[: min(n_steps, s - 1)]
    if always is not None:
        steps = torch.unique(torch.cat([steps, always[always < s - 1]]))
    h = hidden[:, steps]
    total, count = hidden.new_zeros(()), 0
    for cb, head in enumerate(model.decoder.lm_heads):
        target = ids[:, cb, steps + 1]
        keep = target != PAD_TOKEN_ID
        if keep.any():
            logits = head(h[keep])
            total = total + torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum")
            count += int(keep.sum())
    loss = total / max(count, 1)
    if onset_weight > 0:  # codebook 0 of frame f is predicted at step f
        f = torch.tensor(ONSET_FRAMES)
        onset = model.decoder.lm_heads[0](hidden[:, f]).flatten(0, 1)
        loss = loss + onset_weight * torch.nn.functional.cross_entropy(onset, ids[:, 0, f + 1].flatten())
    return loss


@torch.no_grad()
def return_losses(loaded: LoadedModel, ids: torch.Tensor, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per piece: mean cross-entropy over the return section, over the 2 s before it, and over the piece."""
    parts = [frame_losses(loaded, ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    ce = torch.cat(parts).numpy()
    ret = ce[:, :, RETURN_FRAMES.start : RETURN_FRAMES.stop]
    before = ce[:, :, RETURN_FRAMES.start - 2 * FRAME_RATE_HZ : RETURN_FRAMES.start]
    return {"return": np.nanmean(ret, axis=(1, 2)), "before": np.nanmean(before, axis=(1, 2)),
            "piece": np.nanmean(ce, axis=(1, 2))}


def _summary(losses: dict[str, np.ndarray], returns: np.ndarray) -> dict[str, float]:
    out = {}
    for what, values in losses.items():
        out[f"{what}_all"] = float(values.mean())
        out[f"{what}_return_cue"] = float(values[returns].mean())
        out[f"{what}_no_return_cue"] = float(values[~returns].mean())
    return {k: round(v, 4) for k, v in out.items()}


def save_half(model, path: Path, model_id: str, weights: str, **meta: Any) -> Path:
    """``save_checkpoint``, then the decoder's and text encoder's tensors rewritten as float16.

    The config still says float32, so ``from_pretrained`` loads everything as float32. EnCodec stays
    float32 so that the checkpoint encodes audio exactly as training did.
    """
    from safetensors.torch import load_file, save_file

    save_checkpoint(model, path, model_id=model_id, weights=weights, **meta)  # type: ignore[arg-type]
    file = path / "model.safetensors"
    tensors = load_file(file)
    half = {k: (v.half() if v.is_floating_point() and not k.startswith("audio_encoder.") else v)
            for k, v in tensors.items()}
    save_file(half, file, metadata={"format": "pt"})
    return path


RANDOM_NOTE = "untrained: the toy architecture with its initial random decoder weights (negative control)"


def save_random_twin(trained_dir: str | Path, random_dir: str | Path) -> Path:
    """Save the random-weight twin of a trained toy checkpoint, as ``train_toy`` does before training.

    For a checkpoint trained elsewhere (a GPU machine) and copied here without its twin: the decoder gets
    the initial weights of its ``toy_spec`` (seed) again; the EnCodec and text encoder are copied from the
    trained checkpoint bit for bit (a k-means rerun on another machine can differ in the last float bit,
    and the twin must encode audio exactly as the trained model does).
    """
    trained_dir = Path(trained_dir)
    meta = json.loads((trained_dir / CHECKPOINT_META_FILE).read_text())
    if meta.get("weights") != "trained-here" or "toy_spec" not in meta:
        raise ValueError(f"{trained_dir} is not a trained toy checkpoint (weights {meta.get('weights')!r})")
    spec = ToySpec(**meta["toy_spec"] | {"device": "cpu"})
    trained = load_toy(trained_dir).model
    twin = build_toy(spec, audio_state=trained.audio_encoder.state_dict())
    twin.text_encoder.load_state_dict(trained.text_encoder.state_dict())
    facts = {k: meta[k] for k in ("toy_spec", "toy_spec_fingerprint", "construction", "encodec", "text_condition")}
    return save_half(twin, Path(random_dir), meta["model_id"] + "-random", "random", **facts, note=RANDOM_NOTE,
                     twin_of=str(trained_dir))


def load_toy(path: str | Path) -> LoadedModel:
    """A saved toy checkpoint, through the project's own loader."""
    from musicinterp.config import ModelSpec
    from musicinterp.models import load_model

    return load_model(ModelSpec(source="local", name=str(path)))


def _lr_at(step: int, spec: ToySpec) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    frac = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


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
    """
    _check_spec(spec)
    out_dir = Path(out_dir)
    random_dir = Path(random_dir) if random_dir is not None else out_dir.with_name(out_dir.name + "-random")
    torch.set_num_threads(spec.threads)
    t0 = time.perf_counter()
    model = build_toy(spec)
    model_id = TOY_MODEL_IDS[spec.design]
    wrapped = _loaded(model, model_id + "-random", "random")
    train_ids, train_returns, held = training_pieces(spec, wrapped, cache_dir)
    t_data = time.perf_counter() - t0
    log.info("encoded %d training and %d held-out pieces in %.1f s", len(train_ids), len(held.ids), t_data)

    facts = {
        "toy_spec": spec.model_dump(mode="json"), "toy_spec_fingerprint": spec.fingerprint(),
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
        loss = sampled_loss(wrapped, train_ids[idx], spec.loss_steps, gen, always=focus,
                            onset_weight=spec.onset_weight)
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

    tail = history[-max(1, len(history) // 10):]  # the last tenth of the steps: less noisy than one batch
    facts |= {"train_seconds": round(train_s, 1), "final_train_loss": round(float(np.mean(tail)), 4),
              "torch_threads": spec.threads, "torch_version": torch.__version__, "trained_on": _device_name(spec)}
    save_half(model, out_dir, model_id, "trained-here", **facts,
              note="trained here on synthetic cue pieces; a positive control, not MusicGen")
    trained, random = load_toy(out_dir), load_toy(random_dir)
    report = evaluate_toy(trained, random, held)
    report |= {
        "out_dir": str(out_dir), "random_dir": str(random_dir), "spec": spec.model_dump(mode="json"),
        "data_seconds": round(t_data, 1), "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "train_loss_first": round(history[0], 4),
        "train_loss_last": round(float(np.mean(tail)), 4),
        "n_train": len(train_ids), "n_train_return_cue": int(train_returns.sum()),
        "checkpoint_bytes": sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()),
    }
    if not report["learned"]:
        log.warning("the toy model did not learn the cue structure: %s", report["checks"])
    return report


def _device_name(spec: ToySpec) -> str:
    if spec.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(spec.device))
    return f"cpu ({spec.threads} threads)"


def encoder_digest(model) -> str:
    """Digest of the audio encoder's tensors: the codes of a piece are a function of these alone."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.audio_encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def training_pieces(spec: ToySpec, loaded: LoadedModel, cache_dir: str | Path | None = None
                    ) -> tuple[torch.Tensor, np.ndarray, HeldOut]:
    """The encoded training pieces (ids, return flags) and held-out pieces of ``spec``, on the CPU.

    Composed in ``spec.threads`` forked processes when there are many (numpy only), in chunks of
    :data:`POOL_CHUNK` pieces, and encoded on ``spec.device``. With ``cache_dir`` they are
    kept in ``pieces-<key>.pt``, the key covering the pieces' settings and :func:`encoder_digest`, so that
    variants of the optimiser reuse them and a changed EnCodec never does.
    """
    key_fields = {k: getattr(spec, k) for k in ("seed", "n_pieces", "duration_s", "design", "heldout_seed",
                                                "heldout_pieces")}
    key = hashlib.sha256(f"{sorted(key_fields.items())}|{encoder_digest(loaded.model)}".encode()).hexdigest()[:16]
    file = Path(cache_dir) / f"pieces-{key}.pt" if cache_dir is not None else None
    if file is not None and file.exists():
        blob = torch.load(file)
        log.info("encoded pieces read from %s", file)
        held = HeldOut(blob["held_ids"].long(), blob["held_returns"].numpy(), blob["held_swapped"].long())
        return blob["ids"].long(), blob["returns"].numpy(), held
    audio = loaded.model.audio_encoder
    audio.to(spec.device)
    recipes, returns = _recipes(spec.seed, spec.n_pieces, spec.duration_s, spec.design)
    parts = []
    # cuDNN's default TF32 convolutions gave codes that differ from the CPU's (which capture uses) in 0.4-3.6%
    # of frames per codebook on an H200, full float32 in 0.1-0.3% (measured on 16 held-out pair pieces)
    # small pools (the chord toy's 256 pieces, tests) are composed in this process: no fork of a threaded parent
    workers = spec.threads if spec.n_pieces > POOL_CHUNK and spec.threads > 1 else 0
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), contextlib.ExitStack() as stack:
            mapper = map
            if workers:
                pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")))
                mapper = partial(pool.map, chunksize=8)
            for start in range(0, spec.n_pieces, POOL_CHUNK):  # a chunk's audio at a time, never the whole pool's
                samples = [x for x, _ in mapper(_compose_piece, recipes[start : start + POOL_CHUNK])]
                with torch.no_grad():
                    parts.append(encode_pieces(loaded, samples).cpu())
                log.info("encoded %d/%d training pieces", start + len(samples), spec.n_pieces)
            held = heldout(loaded, spec.heldout_seed, spec.heldout_pieces, spec.duration_s, spec.design)
        ids = torch.cat(parts)
    finally:
        audio.to("cpu")
    held = HeldOut(held.ids.cpu(), held.returns, held.swapped_ids.cpu())
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        torch.save({"ids": ids.short(), "returns": torch.from_numpy(returns), "held_ids": held.ids.short(),
                    "held_returns": torch.from_numpy(held.returns), "held_swapped": held.swapped_ids.short(),
                    "key_fields": key_fields}, tmp)
        tmp.replace(file)
    return ids, returns, held


def onset_losses(loaded: LoadedModel, ids: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """Per piece: mean cross-entropy of codebook 0 over :data:`ONSET_FRAMES` (predicted before the return is heard)."""
    with torch.no_grad():
        parts = [frame_losses(loaded, ids[i : i + batch_size])[:, 0, list(ONSET_FRAMES)].mean(dim=1)
                 for i in range(0, len(ids), batch_size)]
    return torch.cat(parts).numpy()


def evaluate_toy(trained: LoadedModel, random: LoadedModel, held: HeldOut) -> dict[str, Any]:
    """Held-out losses at the return of both models, and the learned-structure checks.

    The decisive check is the counterfactual one: on the return pieces, the first codes of the return
    must be far better predicted after the true cue than after the other cue, with every other sample
    of the piece the same. Losses over the whole return section (reported, not checked) cannot show
    that: once a returning A is heard it can be copied from A, cue or no cue. A model trained without
    ``onset_weight`` was 0.09 vs 0.31 nats there after the return vs the no-return cue, yet swapping its
    cue changed its loss at the return by 0.01 nats: it copied.
    """
    if held.returns.all() or not held.returns.any():
        raise ValueError("the held-out pieces must include both cues")
    t = _summary(return_losses(trained, held.ids), held.returns)
    r = _summary(return_losses(random, held.ids), held.returns)
    right = onset_losses(trained, held.ids[torch.from_numpy(held.returns)])
    wrong = onset_losses(trained, held.swapped_ids)
    t |= {"onset_right_cue": round(float(right.mean()), 4), "onset_swapped_cue": round(float(wrong.mean()), 4),
          "onset_gain": round(float((wrong - right).mean()), 4),
          "onset_p": float(wilcoxon(wrong - right, alternative="greater").pvalue)}
    r |= {"onset_right_cue": round(float(onset_losses(random, held.ids[torch.from_numpy(held.returns)]).mean()), 4),
          "onset_swapped_cue": round(float(onset_losses(random, held.swapped_ids).mean()), 4)}
    checks = {
        "trained_far_below_random": t["return_return_cue"] <= MAX_RATIO_TO_RANDOM * r["return_return_cue"],
        "cue_predicts_the_onset": t["onset_gain"] >= MIN_ONSET_GAIN_NATS and t["onset_p"] < MAX_ONSET_P,
    }
    return {"trained": t, "random": r, "checks": checks, "learned": all(checks.values()),
            "n_heldout": len(held.ids), "n_heldout_return_cue": int(held.returns.sum()),
            "return_frames": [RETURN_FRAMES.start, RETURN_FRAMES.stop]}


@dataclass
class HeldOut:
    """Held-out pieces, encoded: ``ids`` of all, ``returns`` flags, and ``swapped_ids``: the return pieces
    with the no-return cue (the counterfactual)."""

    ids: torch.Tensor
    returns: np.ndarray
    swapped_ids: torch.Tensor


def heldout(loaded: LoadedModel, seed: int, n: int, duration_s: float = MIN_DURATION_S,
            design: str = "chord") -> HeldOut:
    """``n`` cue pieces of ``seed`` encoded for the checks (on a saved model, or during training)."""
    samples, returns, chords = _pieces(seed, n, duration_s, design)
    swapped = [with_cue(x, "no-return", c) for x, r, c in zip(samples, returns, chords) if r]
    with torch.no_grad():
        return HeldOut(encode_pieces(loaded, samples), returns, encode_pieces(loaded, swapped))


def report_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the loss table and the checks."""
    t, r = report["trained"], report["random"]
    lines = [
        "# Toy positive-control model (weights: trained-here — not MusicGen)",
        "",
        f"Checkpoint `{report['out_dir']}`; random-weight twin (weights: random) `{report['random_dir']}`.",
        f"Trained {report['spec']['steps']} steps of batch {report['spec']['batch_size']} on "
        f"{report['n_train']} cue pieces in {report['train_seconds']} s; train loss "
        f"{report['train_loss_first']} -> {report['train_loss_last']}.",
        "",
        f"Held-out pieces: {report['n_heldout']} ({report['n_heldout_return_cue']} with the return cue). "
        "Mean cross-entropy (nats per code):",
        "",
        "| model | return section, return cue | return section, no-return cue | 2 s before the return | whole piece |",
        "|---|---|---|---|---|",
    ]
    for name, s in (("trained", t), ("random weights", r)):
        lines.append(f"| {name} | {s['return_return_cue']:.3f} | {s['return_no_return_cue']:.3f} | "
                     f"{s['before_all']:.3f} | {s['piece_all']:.3f} |")
    lines += ["", f"First codes of the return (codebook 0, predicted before the return is heard), return pieces: "
              f"{t['onset_right_cue']:.3f} nats after the true cue, {t['onset_swapped_cue']:.3f} after the swapped "
              f"cue (paired Wilcoxon p {t['onset_p']:.2g}; random weights: {r['onset_right_cue']:.3f} / "
              f"{r['onset_swapped_cue']:.3f})."]
    lines += ["", "Checks: " + ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in report["checks"].items()),
              "", f"Learned the structure: **{'yes' if report['learned'] else 'NO'}**"]
    return "\n".join(lines)


__all__ = ["HeldOut", "ToySpec", "build_toy", "evaluate_toy", "frame_losses", "heldout", "load_toy", "onset_losses",
           "report_markdown", "return_losses", "save_random_twin", "toy_config", "train_toy", "training_pieces"]
