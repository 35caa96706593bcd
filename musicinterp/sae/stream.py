"""Frames of one layer of a run store, streamed clip by clip through a shuffle buffer.

Only one clip of one layer is read at a time (``xarray.open_zarr(chunks=None)`` then ``isel``), appended to a
buffer, and every batch is drawn at random from the buffer without replacement, so each frame of an epoch is
used once and a batch mixes frames of about ``buffer_frames / frames per clip`` clips.

**Memory bound**: the buffer holds at most ``buffer_frames + longest clip`` rows of ``d_in`` float16
(2 bytes each) plus one clip being read: for musicgen-small (d_in = 1024, 30 s clips of 1500 frames) and the
default 32,768-frame buffer that is (32,768 + 1,500) x 1,024 x 2 B = 70 MB, whatever the store's size.

The stream's whole state (epoch, position in the epoch's clip order, the buffer's rows, the generator) is a
plain dict, so a checkpoint restores it exactly and a resumed run draws the same batches as one never stopped.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
import xarray as xr

from musicinterp.store import dequantize

log = logging.getLogger(__name__)


class StoreError(ValueError):
    """The store cannot serve the SAE (no such layer, no complete clip); the message says what to do."""


def open_store(store: str) -> xr.Dataset:
    try:
        with warnings.catch_warnings():  # unconsolidated stores (plain xarray writers, a run in progress) are fine
            warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
            return dequantize(xr.open_zarr(store, chunks=None, consolidated=None))  # int8 stores read as float
    except (FileNotFoundError, OSError, ValueError, KeyError) as e:
        raise StoreError(f"cannot open run store {store!r}: {e}") from e


def layer_position(ds: xr.Dataset, layer: int) -> int:
    layers = [int(v) for v in ds["layer"].values]
    if layer not in layers:
        raise StoreError(f"layer {layer} is not in the store {ds.attrs.get('run_name', '')!r} (layers {layers})")
    return layers.index(layer)


def complete_clips(ds: xr.Dataset) -> np.ndarray:
    """Indices of the clips whose capture finished (the store's completion flag)."""
    done = np.asarray(ds["complete"].values, bool) if "complete" in ds.variables else np.ones(ds.sizes["clip"], bool)
    idx = np.flatnonzero(done)
    if len(idx) == 0:
        raise StoreError("the store has no complete clip: capture it first (musicinterp run CONFIG)")
    return idx


def split_sources(ds: xr.Dataset, clips: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) clip indices; whole sources go to one side (a seeded shuffle of the source ids)."""
    raw = ds["source_id"].values[clips] if "source_id" in ds.variables else ds["clip"].values[clips]
    sources = [str(s) for s in raw]
    names = np.unique(np.array(sources, dtype=object)).tolist()
    n_out = int(round(fraction * len(names)))
    if fraction > 0 and len(names) > 1:
        n_out = min(max(n_out, 1), len(names) - 1)
    order = np.random.default_rng([seed, 13]).permutation(len(names))
    held = {names[i] for i in order[:n_out]}
    mask = np.array([s in held for s in sources], dtype=bool)
    return clips[~mask], clips[mask]


def read_clip(ds: xr.Dataset, clip: int, layer_pos: int) -> np.ndarray:
    """One clip of one layer, its frames inside the clip only: ``(n_frames, d_in)`` float16."""
    n = int(ds["n_frames"].values[clip])
    a = np.asarray(ds["resid"].isel(clip=clip, layer=layer_pos, time=slice(0, n)).values)
    if "in_clip" in ds.variables:
        a = a[np.asarray(ds["in_clip"].isel(clip=clip, time=slice(0, n)).values, bool)]
    if not np.isfinite(a).all():
        raise StoreError(
            f"clip {str(ds['clip'].values[clip])!r}: resid holds NaN or inf inside its {n} frames; the store is damaged"
        )
    return a


class ClipStream:
    """Batches of frames of one layer from ``clips``, epoch after epoch (see the module docstring)."""

    def __init__(self, ds: xr.Dataset, layer: int, clips: np.ndarray, buffer_frames: int, seed: int):
        self.ds, self.lpos, self.clips, self.seed = ds, layer_position(ds, layer), np.asarray(clips), seed
        self.d_in = int(ds.sizes["feature"])
        longest = int(ds["n_frames"].values[self.clips].max())
        self.capacity = buffer_frames + longest
        self.buffer_frames = buffer_frames
        self.buf = np.empty((self.capacity, self.d_in), np.float16)
        self.fill = 0
        self.epoch, self.pos = 0, 0
        self.rng = np.random.default_rng([seed, 29])
        self.max_rows_held = 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, 31, self.epoch]).permutation(self.clips)

    def _refill(self) -> None:
        order = self._order()
        while self.fill < self.buffer_frames:
            if self.pos >= len(order):
                self.epoch, self.pos = self.epoch + 1, 0
                order = self._order()
            a = read_clip(self.ds, int(order[self.pos]), self.lpos)
            self.pos += 1
            self.buf[self.fill : self.fill + len(a)] = a
            self.fill += len(a)
            self.max_rows_held = max(self.max_rows_held, self.fill)

    def next_batch(self, batch_size: int) -> np.ndarray:
        """``(batch_size, d_in)`` float32 frames drawn without replacement from the buffer."""
        self._refill()
        take = self.rng.choice(self.fill, size=min(batch_size, self.fill), replace=False)
        out = self.buf[take].astype(np.float32)
        keep = np.ones(self.fill, bool)
        keep[take] = False
        rest = self.buf[: self.fill][keep]
        self.fill = len(rest)
        self.buf[: self.fill] = rest
        return out

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "buffer": torch.from_numpy(self.buf[: self.fill].copy()),  # a tensor: checkpoints load weights_only
            "rng": self.rng.bit_generator.state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        buf = state["buffer"].numpy().astype(np.float16)
        self.fill = len(buf)
        self.buf[: self.fill] = buf
        self.rng.bit_generator.state = state["rng"]
