"""SAE feature activations on a store's frames: on the fly for the analysis frames (sparse), or stored.

``feature_matrix`` encodes the frames the analysis keeps (complete and annotated clips, every
``frame_stride``-th frame, the layer read ``codec_lookahead`` frames before the label: the same rows as
``musicinterp.analysis.load_labels``) one clip at a time into a scipy CSR matrix (rows x d_sae, float32):
at most k non-zeros per row (k on average for BatchTopK), so 32,768 features cost no more than k.

``write_feature_store`` stores chosen features like ``resid``: a Zarr store with
``feature_acts(clip, time, sae_feature)`` float16 (dense; NaN past each clip's ``n_frames``), the clip and
time coordinates of the run store, and attributes naming the SAE, its layer and hook; anyone opens it with
``xarray.open_zarr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import xarray as xr

from musicinterp.analysis.data import codec_lookahead, open_analysis_store, selected_clips, strided_frames
from musicinterp.config import AnalysisSpec
from musicinterp.sae.model import TopKSAE
from musicinterp.sae.stream import layer_position


@torch.no_grad()
def encode_frames(sae: TopKSAE, a: np.ndarray) -> sp.csr_matrix:
    """Feature activations of ``a`` (n, d_in) as a CSR matrix (n, d_sae): the non-zero ones (at most k per frame
    for TopK; for BatchTopK at inference, those above the threshold, k per frame on average)."""
    acts = sae.encode(torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(sae.W_enc.device)).cpu()
    rows, cols = torch.nonzero(acts > 0, as_tuple=True)
    return sp.csr_matrix(
        (acts[rows, cols].numpy(), (rows.numpy(), cols.numpy())), shape=(len(a), sae.d_sae), dtype=np.float32
    )


def feature_matrix(store: str | Path | xr.Dataset, layer: int, sae: TopKSAE, spec: AnalysisSpec) -> dict[str, Any]:
    """Feature activations at the analysis frames of ``store``: ``acts`` (CSR), ``clip``, ``frame``, ``clips``."""
    ds = open_analysis_store(store)
    if int(ds.sizes["feature"]) != sae.d_in:
        raise ValueError(f"the store's width is {int(ds.sizes['feature'])}, the SAE reads d_in = {sae.d_in}")
    lpos = layer_position(ds, layer)
    idx = selected_clips(ds)
    look, _ = codec_lookahead(ds, spec)
    blocks, clip, frame = [], [], []
    for j, i in enumerate(idx):
        n = int(ds["n_frames"].values[i])
        keep = strided_frames(n, spec.frame_stride, look)
        a = np.asarray(ds["resid"].isel(clip=int(i), layer=lpos, time=slice(0, n)).values)[keep - look]
        blocks.append(encode_frames(sae, a.astype(np.float32)))
        clip.append(np.full(len(keep), j, np.int32))
        frame.append(keep.astype(np.int32))
    return {
        "acts": sp.vstack(blocks).tocsr(),
        "clip": np.concatenate(clip),
        "frame": np.concatenate(frame),
        "clips": [str(c) for c in ds["clip"].values[idx]],
        "weights": str(ds.attrs.get("weights", "unknown")),
    }


def write_feature_store(
    store: str | Path,
    layer: int,
    sae: TopKSAE,
    features: list[int],
    out: str | Path,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Store ``features`` of every complete clip as ``feature_acts(clip, time, sae_feature)`` float16 (Zarr)."""
    ds = open_analysis_store(store)
    lpos = layer_position(ds, layer)
    bad = [f for f in features if not 0 <= f < sae.d_sae]
    if bad:
        raise ValueError(f"features {bad} out of range 0..{sae.d_sae - 1}")
    n_clip, n_time = ds.sizes["clip"], ds.sizes["time"]
    data = np.full((n_clip, n_time, len(features)), np.nan, np.float16)
    done = ds["complete"].values.astype(bool) if "complete" in ds.variables else np.ones(n_clip, bool)
    f = torch.as_tensor(features, dtype=torch.long)
    for i in np.flatnonzero(done):
        n = int(ds["n_frames"].values[i])
        a = np.asarray(ds["resid"].isel(clip=int(i), layer=lpos, time=slice(0, n)).values, np.float32)
        with torch.no_grad():
            acts = sae.encode(torch.from_numpy(a).to(sae.W_enc.device))[:, f.to(sae.W_enc.device)].cpu().numpy()
        data[i, :n] = acts.astype(np.float16)
    out_ds = xr.Dataset(
        {"feature_acts": (("clip", "time", "sae_feature"), data)},
        coords={
            "clip": np.array([str(c) for c in ds["clip"].values], dtype=object),
            "time": ds["time"].values,
            "sae_feature": np.asarray(features),
        },
        attrs={"layer": layer, "n_frames_source": "n_frames of the run store", **(attrs or {})},
    )
    out_ds["n_frames"] = ("clip", ds["n_frames"].values)
    out_ds.to_zarr(str(out), mode="w", zarr_format=3, consolidated=False)
    return Path(out)
