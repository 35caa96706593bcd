"""Reading a run store for the analysis, with bounded memory.

:func:`reduce_layer` reads ONE layer, clip by clip: for each clip it reads that clip's
``resid[clip, layer, :n_frames, :]`` (one clip's frames x hidden, float16, i.e. at most the one zarr chunk
that holds it), casts it to float32, multiplies by a seeded Gaussian projection ``(hidden, reduced_width)``,
keeps every ``frame_stride``-th frame and drops the rest before the next clip is read. Peak memory is

    one clip: n_frames x hidden x (2 + 4) bytes   (the float16 read and its float32 cast)
  + the result: sum(n_frames) / frame_stride x reduced_width x 4 bytes

e.g. musicgen-small (hidden 1024), 30 s clips (1500 frames): 9 MB per clip, and 1000 clips at stride 5 and
width 64 give a 77 MB result. Nothing else of the residual stream is ever held. Stores are opened without
dask (``chunks=None``) so a clip's read touches only the chunks that hold it.

:func:`load_labels` reads the (clip, time) label variables one variable at a time (n_clips x n_time each,
a few MB) and keeps the same frames as :func:`reduce_layer`. It writes the targets, their valid masks, each
target's own value at t - h - 1 frame (known by time t) and the causal controls (see :func:`control_matrix`).

Both write small ``.npz`` files that the probe reads; :func:`save_reduced` and :func:`save_labels` are the
writers (the null simulation uses them directly).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from musicinterp import files
from musicinterp.config import AnalysisSpec
from musicinterp.frames import CLIP_MAX_S, FRAME_RATE_HZ

log = logging.getLogger(__name__)

HORIZON_RE = re.compile(r"^(?P<family>.+)_(?P<h>\d+(?:\.\d+)?)s$")
DEFAULT_LOOKAHEAD_FRAMES = 4  # musicgen's 32 kHz EnCodec (musicinterp.codec measures it from a config)
BASE_CONTROLS = ("pos_frac", "t_s", "rec_lag_prev_valid", "rec_lag_prev_s", "rec_rate_causal")


class AnalysisError(ValueError):
    """The store or the inputs cannot be analysed as asked; the message says what and how to fix it."""


def parse_target(name: str) -> tuple[str, float]:
    """``'rec_within_4s' -> ('rec_within', 4.0)``; a name without a horizon gives ``(name, nan)``."""
    m = HORIZON_RE.match(name)
    if m is None:
        return name, float("nan")
    return m.group("family"), float(m.group("h"))


def open_analysis_store(store: str | Path | xr.Dataset) -> xr.Dataset:
    """Open a store lazily without dask (reads touch only the chunks they need)."""
    from musicinterp.store import dequantize  # int8 stores (capture.reduce) read as float

    if isinstance(store, xr.Dataset):
        return dequantize(store)
    try:
        with warnings.catch_warnings():  # unconsolidated stores (a run still being written) are fine
            warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
            return dequantize(xr.open_zarr(str(store), consolidated=None, chunks=None))
    except (FileNotFoundError, OSError, KeyError) as e:
        raise AnalysisError(f"cannot open a store at {str(store)!r}: {e}") from e


def selected_clips(ds: xr.Dataset) -> np.ndarray:
    """Indices of the clips that are both ``complete`` and ``annotated`` (and have frames)."""
    for flag in ("complete", "annotated", "n_frames", "resid"):
        if flag not in ds.variables:
            raise AnalysisError(f"the store has no {flag!r} variable; is it a musicinterp run store?")
    ok = ds["complete"].values.astype(bool) & ds["annotated"].values.astype(bool) & (ds["n_frames"].values > 0)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        raise AnalysisError("no clip of the store is both complete and annotated; run capture and annotation first")
    return idx


def store_layers(ds: xr.Dataset, spec: AnalysisSpec) -> list[int]:
    """The layers to analyse: the spec's (all when None) plus layer 0, checked against the store."""
    have = [int(x) for x in ds["layer"].values]
    want = have if spec.layers is None else sorted(set(spec.layers) | ({0} if 0 in have else set()))
    missing = sorted(set(want) - set(have))
    if missing:
        raise AnalysisError(f"layers {missing} are not in the store (it has {have}); fix AnalysisSpec.layers")
    return want


def projection(hidden: int, spec: AnalysisSpec) -> np.ndarray | None:
    """The seeded Gaussian projection ``(hidden, k)`` with N(0, 1/k) entries; None when no reduction.

    It depends only on the seed and the widths, never on the data, so it cannot leak test folds into
    training folds (a PCA fit on all clips would), and the same matrix serves every layer and the
    random-model control store.
    """
    k = spec.reduced_width
    if k is None or k >= hidden:
        return None
    rng = np.random.default_rng([spec.seed, hidden, k])
    return (rng.standard_normal((hidden, k)) / math.sqrt(k)).astype(np.float32)


def _read_clip_layer(resid: xr.DataArray, clip: int, layer_pos: int, n: int) -> np.ndarray:
    """One clip's frames of one layer, ``(n, hidden)`` float16: the only read of the residual stream."""
    return np.asarray(resid.isel(clip=clip, layer=layer_pos, time=slice(0, n)).values)


def strided_frames(n: int, stride: int, lookahead: int = 0) -> np.ndarray:
    """The label frames analysed: every ``stride``-th frame from ``lookahead`` on (the layer is read ``lookahead``
    frames earlier, see :func:`codec_lookahead`)."""
    f = np.arange(0, n, stride, dtype=np.int32)
    return f[f >= lookahead]


def codec_lookahead(ds: xr.Dataset, spec: AnalysisSpec) -> tuple[int, str]:
    """Frames of later audio a frame's codes hear, and a note when it had to be assumed.

    Row t of the analysis pairs the label and controls at frame t with the layer at frame t - lookahead: the
    layer has then heard audio up to frame t, exactly what the controls see, and the label's window (t, t + h]
    starts after it. ``spec.codec_lookahead_frames`` wins; else the store's ``codec_lookahead_frames``
    attribute (written at capture, measured by musicinterp.codec); else MusicGen's 32 kHz EnCodec value,
    which can only cost a causal codec a little power, never give a non-causal one a head start.
    """
    if spec.codec_lookahead_frames is not None:
        return spec.codec_lookahead_frames, ""
    if "codec_lookahead_frames" in ds.attrs:
        return int(ds.attrs["codec_lookahead_frames"]), ""
    return DEFAULT_LOOKAHEAD_FRAMES, (
        f"the store does not record codec_lookahead_frames: the layer is read "
        f"{DEFAULT_LOOKAHEAD_FRAMES} frames before the label (MusicGen's EnCodec)"
    )


def save_reduced(
    path: str | Path,
    X: np.ndarray,
    clip: np.ndarray,
    frame: np.ndarray,
    clips: list[str],
    layer: int,
    meta: dict[str, Any] | None = None,
) -> str:
    """Write a reduced layer (.npz) to ``path`` (local or an fsspec URL); returns it as a string."""
    meta = meta or {}
    return files.save_npz(
        path,
        X=X.astype(np.float32),
        clip=clip.astype(np.int32),
        frame=frame.astype(np.int32),
        clips=np.array(clips, dtype=str),
        layer=np.int32(layer),
        **{f"meta_{k}": np.asarray(v) for k, v in meta.items()},
    )


def reduce_layer(
    store: str | Path | xr.Dataset,
    layer: int,
    spec: AnalysisSpec,
    out_path: str | Path,
    progress: Callable[[int, int, str], None] | None = None,
) -> str:
    """Read one layer clip by clip, project to ``reduced_width``, keep every ``frame_stride``-th frame.

    Writes ``out_path`` (.npz: ``X`` (N, k) float32, ``clip`` and ``frame`` (N,), ``clips``, ``layer``,
    metadata) and returns its path. Memory: see the module docstring.
    """
    ds = open_analysis_store(store)
    layers = [int(x) for x in ds["layer"].values]
    if layer not in layers:
        raise AnalysisError(f"layer {layer} is not in the store (layers {layers})")
    lpos = layers.index(layer)
    idx = selected_clips(ds)
    n_frames = ds["n_frames"].values
    hidden = int(ds.sizes["feature"])
    W = projection(hidden, spec)
    width = hidden if W is None else W.shape[1]
    look, _ = codec_lookahead(ds, spec)
    total = sum(len(strided_frames(int(n_frames[i]), spec.frame_stride, look)) for i in idx)
    X = np.empty((total, width), dtype=np.float32)
    clip = np.empty(total, dtype=np.int32)
    frame = np.empty(total, dtype=np.int32)
    clip_ids = [str(c) for c in ds["clip"].values[idx]]
    resid = ds["resid"]
    row, max_read = 0, 0
    for j, i in enumerate(idx):
        n = int(n_frames[i])
        try:
            a = _read_clip_layer(resid, int(i), lpos, n)
        except Exception as e:  # noqa: BLE001 - a truncated chunk fails in the codec (Zstd), naming no clip
            raise AnalysisError(
                f"clip {clip_ids[j]!r} layer {layer}: a chunk of its residual stream cannot be read "
                f"({type(e).__name__}: {e}); the store is damaged: `musicinterp inspect --verify STORE` "
                "lists the damaged clips and a rerun of the run captures them again"
            ) from e
        max_read = max(max_read, a.size)
        keep = strided_frames(n, spec.frame_stride, look)
        a = a[keep - look].astype(np.float32)  # the layer as it was lookahead frames before the label
        if not np.isfinite(a).all():
            raise AnalysisError(
                f"clip {clip_ids[j]!r} layer {layer}: the residual stream holds NaN or inf "
                f"inside the clip's {n} frames; the store is damaged or n_frames is wrong"
            )
        X[row : row + len(keep)] = a if W is None else a @ W
        clip[row : row + len(keep)] = j
        frame[row : row + len(keep)] = keep
        row += len(keep)
        if progress:
            progress(j + 1, len(idx), f"layer {layer}: clip {clip_ids[j]}")
    meta = {
        "hidden_size": hidden,
        "reduced_width": width,
        "frame_stride": spec.frame_stride,
        "max_read_elements": max_read,
        "n_clip_reads": len(idx),
        "config_fingerprint": str(ds.attrs.get("config_fingerprint", "")),
        "weights": str(ds.attrs.get("weights", "unknown")),
        "spec_fingerprint": spec.fingerprint(),
        "lookahead_frames": look,
    }
    log.info("layer %d: %d frames x %d features from %d clips", layer, total, width, len(idx))
    return save_reduced(out_path, X, clip, frame, clip_ids, layer, meta)


def load_reduced(path: str | Path) -> dict[str, Any]:
    return files.load_npz(path)


def own_lag(y: np.ndarray, valid: np.ndarray, h_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The target's value ``h_frames`` earlier (and whether it is defined), a control known by time t.

    :func:`load_labels` passes h + 1 frames: the label at t - h - 1 is about events up to frame t - 1, all
    heard before frame t (a label that counts an event at its onset frame, like ``truth_return_within``,
    would otherwise tell a probe at that frame the answer its codes do not yet hold).
    """
    n = len(y)
    lag = np.zeros(n, dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    if 0 < h_frames < n:
        lag[h_frames:] = y[:-h_frames]
        ok[h_frames:] = valid[:-h_frames]
    lag[~ok] = 0.0
    return lag, ok


def shift_back(v: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``v`` at t - frames (0 before the clip start) and where that is defined."""
    out = np.zeros(len(v), dtype=np.float32)
    ok = np.zeros(len(v), dtype=bool)
    if frames < len(v):
        out[frames:] = v[: len(v) - frames]
        ok[frames:] = True
    return out, ok


def control_matrix(
    per_clip: dict[str, np.ndarray], n: int, spec: AnalysisSpec, have: set[str], max_s: float = CLIP_MAX_S
) -> tuple[np.ndarray, list[str]]:
    """Causal controls of one clip at every frame ``(n, c)``: what the audio up to t (and time) gives away.

    - position: ``pos_frac`` = t / n_frames, ``t_s`` = t in seconds, and Gaussian bumps of t every
      ``position_basis_s`` seconds up to ``max_s`` (the longest clip analysed: a bump that no clip reaches is a
      column of zeros, and with a few dozen of those the controls fit noise; an event tied to a stretch of
      positions is not linear in position, and without the basis a layer's positional embedding alone would
      look like a gain);
    - the past of the labels: ``rec_lag_prev_valid`` / ``rec_lag_prev_s`` (0 where invalid) and
      ``rec_rate_causal`` (causal by construction);
    - tension descriptors, each shifted back by ceil(lookahead x 50) frames (``spec.descriptor_lookahead_s``),
      with one indicator per distinct shift for the frames before the shifted value exists.

    Variables the store lacks are left out (logged once by :func:`load_labels`). The target's own value at
    t - h is added per target by the probe (it travels with the target under permutation).
    """
    t = np.arange(n)
    cols = {"pos_frac": t / max(n, 1), "t_s": t / FRAME_RATE_HZ}
    if spec.position_basis_s > 0:  # any smooth function of position, not just a line
        width = spec.position_basis_s
        for c in np.arange(0.0, min(max_s, CLIP_MAX_S) + width / 2, width):
            cols[f"pos_rbf@{c:g}s"] = np.exp(-0.5 * ((t / FRAME_RATE_HZ - c) / width) ** 2)
    if "rec_lag_prev_s" in have:
        ok = per_clip.get("rec_lag_prev_s_valid", np.ones(n, bool)).astype(bool)
        cols["rec_lag_prev_valid"] = ok.astype(np.float32)
        cols["rec_lag_prev_s"] = np.where(ok, per_clip["rec_lag_prev_s"], 0.0)
    if "rec_rate_causal" in have:
        cols["rec_rate_causal"] = per_clip["rec_rate_causal"]
    shifts: dict[int, np.ndarray] = {}
    for name, look_s in spec.descriptor_lookahead_s.items():
        if name not in have:
            continue
        k = math.ceil(look_s * FRAME_RATE_HZ - 1e-9)
        cols[f"{name}@t-{k}"], shifts[k] = shift_back(np.asarray(per_clip[name], np.float32), k)
    for k, ok in sorted(shifts.items()):
        cols[f"descriptor_missing@t-{k}"] = (~ok).astype(np.float32)
    names = list(cols)
    return np.column_stack([np.asarray(cols[c], np.float32) for c in names]), names


def save_labels(
    path: str | Path,
    *,
    clip: np.ndarray,
    frame: np.ndarray,
    clips: list[str],
    sources: list[str],
    n_frames: np.ndarray,
    controls: np.ndarray,
    control_names: list[str],
    targets: dict[str, dict[str, np.ndarray]],
    weights: str,
    meta: dict[str, Any] | None = None,
) -> str:
    """Write the labels file (local or an fsspec URL; returned as a string). ``targets[name]`` holds ``y``,
    ``valid``, ``lag``, ``lag_valid`` (N,) each."""
    arrays: dict[str, Any] = {
        "clip": clip.astype(np.int32),
        "frame": frame.astype(np.int32),
        "clips": np.array(clips, dtype=str),
        "source_id": np.array(sources, dtype=str),
        "n_frames": np.asarray(n_frames, np.int32),
        "controls": controls.astype(np.float32),
        "control_names": np.array(control_names, dtype=str),
        "targets": np.array(list(targets), dtype=str),
        "weights": np.array(weights),
    }
    for name, t in targets.items():
        arrays[f"y__{name}"] = t["y"].astype(np.int8)
        arrays[f"valid__{name}"] = t["valid"].astype(bool)
        arrays[f"lag__{name}"] = t["lag"].astype(np.float32)
        arrays[f"lagvalid__{name}"] = t["lag_valid"].astype(bool)
    for k, v in (meta or {}).items():
        arrays[f"meta_{k}"] = np.asarray(v)
    return files.save_npz(path, **arrays)


def load_labels(store: str | Path | xr.Dataset, spec: AnalysisSpec, out_path: str | Path) -> str:
    """Targets, valid masks, own-lag values, controls, clip index, source ids and time for the kept frames.

    Frames are those of :func:`reduce_layer` (complete & annotated clips, every ``frame_stride``-th frame
    inside the clip). A target missing from the store is recorded with ``valid`` all False, so the probe
    writes a row with a note instead of failing.
    """
    ds = open_analysis_store(store)
    idx = selected_clips(ds)
    n_frames = ds["n_frames"].values[idx].astype(int)
    clip_ids = [str(c) for c in ds["clip"].values[idx]]
    sources = [str(s) for s in ds["source_id"].values[idx]] if "source_id" in ds.variables else list(clip_ids)
    if "source_id" not in ds.variables:
        log.warning("the store has no source_id; every clip is its own source")
    look, look_note = codec_lookahead(ds, spec)
    if look_note:
        log.warning("%s", look_note)
    keep = [strided_frames(int(n), spec.frame_stride, look) for n in n_frames]
    clip = np.concatenate([np.full(len(k), j, np.int32) for j, k in enumerate(keep)])
    frame = np.concatenate(keep)

    def clipwise(name: str) -> list[np.ndarray]:
        a = ds[name].values[idx]  # (clips, time): one small variable at a time
        return [a[j, :n] for j, n in enumerate(n_frames)]

    in_clip = clipwise("in_clip") if "in_clip" in ds.variables else [np.ones(n, bool) for n in n_frames]
    have = {str(v) for v in ds.data_vars}
    missing = [v for v in ("rec_lag_prev_s", "rec_rate_causal", *spec.descriptor_lookahead_s) if v not in have]
    if missing:
        log.warning("controls missing from the store, left out: %s", missing)
    needed = [
        v
        for v in ("rec_lag_prev_s", "rec_lag_prev_s_valid", "rec_rate_causal", *spec.descriptor_lookahead_s)
        if v in have
    ]
    per_var = {v: clipwise(v) for v in needed}
    blocks, names = [], None
    for j, n in enumerate(n_frames):
        m, names = control_matrix(
            {v: per_var[v][j] for v in needed}, int(n), spec, have, max_s=float(n_frames.max()) / FRAME_RATE_HZ
        )
        blocks.append(m[keep[j]])
    controls = np.concatenate(blocks)
    targets: dict[str, dict[str, np.ndarray]] = {}
    for name in spec.targets:
        _, h = parse_target(name)
        hf = 0 if math.isnan(h) else int(round(h * FRAME_RATE_HZ))
        if name not in have:
            log.warning("target %r is not in the store; its rows will carry a note", name)
            z = np.zeros(len(frame))
            targets[name] = {"y": z, "valid": z.astype(bool), "lag": z, "lag_valid": z.astype(bool)}
            continue
        ys = clipwise(name)
        vs = clipwise(f"{name}_valid") if f"{name}_valid" in have else [np.ones(n, bool) for n in n_frames]
        parts: dict[str, list[np.ndarray]] = {"y": [], "valid": [], "lag": [], "lag_valid": []}
        for j in range(len(idx)):
            y, v = ys[j].astype(np.int8), vs[j].astype(bool) & in_clip[j].astype(bool)
            if spec.censor_clip_end and hf > 0:
                v &= np.arange(len(y)) + hf < len(y)
            if hf > 0:  # one frame more than h: the label's window then ends before frame t (see own_lag)
                lag, lag_ok = own_lag(y, v, hf + 1)
            else:
                lag, lag_ok = np.zeros(len(y), np.float32), np.zeros(len(y), bool)
            for key, arr in (("y", y), ("valid", v), ("lag", lag), ("lag_valid", lag_ok)):
                parts[key].append(arr[keep[j]])
        targets[name] = {k: np.concatenate(v) for k, v in parts.items()}
    meta = {
        "config_fingerprint": str(ds.attrs.get("config_fingerprint", "")),
        "model_id": str(ds.attrs.get("model_id", "")),
        "frame_stride": spec.frame_stride,
        "lookahead_frames": look,
        "lookahead_note": look_note,
    }
    return save_labels(
        out_path,
        clip=clip,
        frame=frame,
        clips=clip_ids,
        sources=sources,
        n_frames=n_frames,
        controls=controls,
        control_names=names or list(BASE_CONTROLS),
        targets=targets,
        weights=str(ds.attrs.get("weights", "unknown")),
        meta=meta,
    )
