"""The toy's data: cue pieces composed from their recipes, encoded into delayed decoder inputs by the toy's
EnCodec, the held-out pieces of the checks (with their counterfactual), and the cached training pool."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from musicinterp.capture import delayed_decoder_input
from musicinterp.frames import n_frames
from musicinterp.models import LoadedModel
from musicinterp.sources.cue import MIN_DURATION_S, compose, cue_recipe, is_return_piece, with_cue
from musicinterp.toy.spec import ToySpec

log = logging.getLogger(__name__)

POOL_CHUNK = 256  # training pieces composed and encoded at a time (an 11 s piece is 1.4 MB of audio)


def _compose_piece(recipe: dict) -> tuple[np.ndarray, list[str]]:
    samples, truth = compose(recipe)
    return samples, truth["cue_chords"]


def _recipes(seed: int, n: int, duration_s: float, design: str) -> tuple[list[dict], np.ndarray]:
    """Recipes of ``n`` cue pieces, half with the return cue, as ``plan_cue`` makes them; and the return flags."""
    returns = np.array(is_return_piece(seed, n, 0.5))
    return [cue_recipe(seed, i, duration_s, bool(r), design) for i, r in enumerate(returns)], returns


def _pieces(
    seed: int, n: int, duration_s: float, design: str = "chord"
) -> tuple[list[np.ndarray], np.ndarray, list[list[str]]]:
    """Cue pieces (samples, return flags, cue chords)."""
    recipes, returns = _recipes(seed, n, duration_s, design)
    made = [_compose_piece(r) for r in recipes]
    return [x for x, _ in made], returns, [c for _, c in made]


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


@dataclass
class HeldOut:
    """Held-out pieces, encoded: ``ids`` of all, ``returns`` flags, and ``swapped_ids``: the return pieces
    with the no-return cue (the counterfactual)."""

    ids: torch.Tensor
    returns: np.ndarray
    swapped_ids: torch.Tensor


def heldout(
    loaded: LoadedModel, seed: int, n: int, duration_s: float = MIN_DURATION_S, design: str = "chord"
) -> HeldOut:
    """``n`` cue pieces of ``seed`` encoded for the checks (on a saved model, or during training)."""
    samples, returns, chords = _pieces(seed, n, duration_s, design)
    swapped = [with_cue(x, "no-return", c) for x, r, c in zip(samples, returns, chords) if r]
    with torch.no_grad():
        return HeldOut(encode_pieces(loaded, samples), returns, encode_pieces(loaded, swapped))


def encoder_digest(model) -> str:
    """Digest of the audio encoder's tensors: the codes of a piece are a function of these alone."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.audio_encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def training_pieces(
    spec: ToySpec, loaded: LoadedModel, cache_dir: str | Path | None = None
) -> tuple[torch.Tensor, np.ndarray, HeldOut]:
    """The encoded training pieces (ids, return flags) and held-out pieces of ``spec``, on the CPU.

    Composed in ``spec.threads`` forked processes when there are many (numpy only), in chunks of
    :data:`POOL_CHUNK` pieces, and encoded on ``spec.device``. With ``cache_dir`` they are
    kept in ``pieces-<key>.pt``, the key covering the pieces' settings and :func:`encoder_digest`, so that
    variants of the optimiser reuse them and a changed EnCodec never does.
    """
    key_fields = {
        k: getattr(spec, k) for k in ("seed", "n_pieces", "duration_s", "design", "heldout_seed", "heldout_pieces")
    }
    key = hashlib.sha256(f"{sorted(key_fields.items())}|{encoder_digest(loaded.model)}".encode()).hexdigest()[:16]
    file = Path(cache_dir) / f"pieces-{key}.pt" if cache_dir is not None else None
    if file is not None and file.exists():
        blob = torch.load(file, weights_only=True)  # tensors only: never unpickle code
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
        torch.save(
            {
                "ids": ids.short(),
                "returns": torch.from_numpy(returns),
                "held_ids": held.ids.short(),
                "held_returns": torch.from_numpy(held.returns),
                "held_swapped": held.swapped_ids.short(),
                "key_fields": key_fields,
            },
            tmp,
        )
        tmp.replace(file)
    return ids, returns, held
