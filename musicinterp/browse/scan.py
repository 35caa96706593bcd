"""One pass over the store, clip by clip, that yields what every page needs: each item's activation curve on
its top clips, its peak per clip, running moments and a strided sample for the histogram.

Cost: each clip's needed layers are read once (one ``resid`` read per clip) and every item of a layer is
computed with one matrix product (directions) or one encoding per SAE; memory is
``items x top_clips x frames`` float32 for the curves plus ``items x HIST_SAMPLE`` for the histograms,
whatever the number of clips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from musicinterp.browse.items import ItemSet

log = logging.getLogger(__name__)

HIST_SAMPLE = 20_000  # activations kept per item for its histogram (every s-th frame of every clip)


@dataclass
class Peak:
    clip: int  # index into the store's clip dimension
    frame: int
    value: float


@dataclass
class ScanResult:
    """Per item (same order as the ItemSet): top clips with curves, moments, histogram sample."""

    top: list[list[Peak]]  # best first
    curves: dict[tuple[int, int], np.ndarray]  # (item, clip) -> activation over the clip's frames
    mean: np.ndarray
    std: np.ndarray
    max: np.ndarray
    active_fraction: np.ndarray  # frames with activation > 0
    sample: list[np.ndarray]
    sample_stride: int
    n_frames_total: int
    clips: list[int]  # clips scanned (complete ones)


def _layer_acts(x: np.ndarray, units: np.ndarray | None, sae_parts: list[tuple[object, np.ndarray]]) -> np.ndarray:
    """(frames, items of this layer): directions first, then each SAE's features in order."""
    import torch

    cols = []
    if units is not None:
        cols.append(x @ units)
    if sae_parts:
        xt = torch.from_numpy(x)
        with torch.no_grad():
            for sae, feats in sae_parts:
                cols.append(sae.encode(xt)[:, torch.from_numpy(feats)].numpy())  # type: ignore[attr-defined]
    return np.concatenate(cols, axis=1) if cols else np.zeros((len(x), 0), np.float32)


def scan(
    ds,  # xarray Dataset opened with chunks=None
    itemset: ItemSet,
    top_clips: int,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Stream the complete clips once and keep, per item, its ``top_clips`` clips by peak activation."""
    items = itemset.items
    n_items = len(items)
    layers = itemset.layers()
    complete = np.asarray(ds["complete"].values, bool) if "complete" in ds else np.ones(ds.sizes["clip"], bool)
    n_frames = np.asarray(ds["n_frames"].values, int)
    clips = [int(c) for c in np.flatnonzero(complete)]
    total = int(n_frames[clips].sum()) if clips else 0
    stride = max(1, -(-total // HIST_SAMPLE))
    # per layer: the item indices in column order, the stacked unit vectors, the SAEs and their features
    plan = []
    for layer in layers:
        dirs = [k for k, i in enumerate(items) if i.layer == layer and i.unit is not None]
        units = np.stack([np.asarray(items[k].unit) for k in dirs], axis=1).astype(np.float32) if dirs else None
        order: list[int] = list(dirs)
        sae_parts = []
        for key, sae in itemset.saes.items():
            ks = [k for k, i in enumerate(items) if i.layer == layer and i.sae == key]
            if ks:
                sae_parts.append((sae, np.array([items[k].feature for k in ks], np.int64)))
                order += ks
        plan.append((layer, order, units, sae_parts))
    s1, s2 = np.zeros(n_items), np.zeros(n_items)
    vmax, active = np.full(n_items, -np.inf), np.zeros(n_items)
    samples: list[list[np.ndarray]] = [[] for _ in range(n_items)]
    top: list[list[Peak]] = [[] for _ in range(n_items)]
    curves: dict[tuple[int, int], np.ndarray] = {}
    sparse = np.array([i.sae is not None for i in items], bool)
    layer_pos = {int(v): j for j, v in enumerate(ds["layer"].values)}
    for done, c in enumerate(clips):
        n = int(n_frames[c])
        block = np.asarray(ds["resid"].isel(clip=c, layer=[layer_pos[x] for x in layers], time=slice(0, n)).values)
        block = block.astype(np.float32)  # (layers, n, d): the clip's layers, read once
        acts = np.zeros((n, n_items), np.float32)
        for j, (_layer, order, units, sae_parts) in enumerate(plan):
            acts[:, order] = _layer_acts(block[j], units, sae_parts)
        s1 += acts.sum(0)
        s2 += (acts.astype(np.float64) ** 2).sum(0)
        vmax = np.maximum(vmax, acts.max(0))
        active += (acts > 0).sum(0)
        strided = np.ascontiguousarray(acts[::stride].T)  # a copy: the clip's full block is not kept alive
        for k in range(n_items):
            samples[k].append(strided[k])
        peaks, where = acts.max(0), acts.argmax(0)
        for k in range(n_items):
            best = top[k]
            if sparse[k] and peaks[k] <= 0:
                continue  # an SAE feature that never fires in this clip has no segment to show
            if len(best) < top_clips or peaks[k] > best[-1].value:
                best.append(Peak(c, int(where[k]), float(peaks[k])))
                best.sort(key=lambda p: -p.value)
                curves[(k, c)] = acts[:, k].copy()
                if len(best) > top_clips:
                    curves.pop((k, best.pop().clip), None)
        if progress is not None:
            progress(done + 1, len(clips))
    count = max(total, 1)
    mean = s1 / count
    return ScanResult(
        top=top,
        curves=curves,
        mean=mean,
        std=np.sqrt(np.maximum(s2 / count - mean**2, 0.0)),
        max=vmax,
        active_fraction=active / count,
        sample=[np.concatenate(s) if s else np.zeros(0, np.float32) for s in samples],
        sample_stride=stride,
        n_frames_total=total,
        clips=clips,
    )
