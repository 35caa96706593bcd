"""Candidate directions in the model's residual basis: the analysis's probe directions and difference of means.

**Probe directions.** For a (layer, target) cell of an analysis, the direction is the probe's weight vector on
the layer, in the basis of the store's ``resid`` (the tensors the hooks change, :mod:`musicinterp.causal.hooks`):
for every outer fold of the analysis (GroupKFold by source, as :mod:`musicinterp.analysis.probe`), the ridge
of the target on the standardised controls + the target's own past + the layer, at the strength the
analysis's inner CV chose in that fold, refit on the fold's training rows; the layer's block of weights is
divided by the layer's training sd (undoing the scaling), multiplied by the analysis's projection when the
layer was reduced (undoing it: a score ``x_red . w = x . (W w)``), and averaged over the folds. The
statistics of the cell (gain, CI, p, q, n) travel with it.

**Files** (beside ``results.parquet``): ``directions.safetensors`` holds one float32 tensor ``(d,)`` per
direction, keyed by its ``name``; ``directions.json`` lists them with layer, target, horizon, control, the
store's weights kind, the cell's statistics, the number of folds, the norm, and how they were made. No
pickle: any safetensors reader opens them.

**Difference of means** (:func:`diff_of_means`): the top-k right singular vectors of the paired differences
between two conditions (rows: the same piece and frame under each condition), not centred, so the first is
(close to) the mean difference and the next ones are what else separates the conditions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from musicinterp import files
from musicinterp.config import AnalysisSpec

log = logging.getLogger(__name__)

DIRECTIONS_FILE = "directions.safetensors"
DIRECTIONS_META_FILE = "directions.json"
WHICH = ("significant", "all", "none")


@dataclass
class Direction:
    """One direction ``vector`` ``(d,)`` in the residual basis of ``layer`` (0 = embeddings)."""

    name: str
    layer: int
    vector: np.ndarray
    kind: str  # 'probe' | 'diff-means'
    target: str = ""
    horizon: float = float("nan")
    control: str = "none"
    weights: str = "unknown"
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def unit(self) -> np.ndarray:
        return self.vector / np.linalg.norm(self.vector)


def save_directions(directions: list[Direction], out: str | Path, about: dict[str, Any] | None = None) -> str:
    """Write ``directions.safetensors`` + ``directions.json`` under ``out`` (a local folder or an fsspec URL);
    returns the json's path."""
    from safetensors.numpy import save

    names = [d.name for d in directions]
    if len(set(names)) != len(names):
        raise ValueError(f"direction names must be unique, got {names}")
    with files.open_write(files.join(out, DIRECTIONS_FILE)) as f:
        f.write(save({d.name: np.ascontiguousarray(d.vector, np.float32) for d in directions}))
    meta = {
        "about": "probe / difference-of-means directions in the model's residual basis (the store's resid: "
        "layer 0 = embeddings, layer l = output of block l); vectors in directions.safetensors keyed by name",
        **(about or {}),
        "directions": [
            {k: v for k, v in asdict(d).items() if k != "vector"} | {"norm": float(np.linalg.norm(d.vector))}
            for d in directions
        ],
    }
    path = files.join(out, DIRECTIONS_META_FILE)
    files.write_text(path, json.dumps(meta, indent=2, default=_jsonable))
    return path


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{type(v)} is not JSON serialisable")


def load_directions(folder: str | Path) -> list[Direction]:
    """The directions saved under ``folder`` (an analysis folder)."""
    from safetensors.numpy import load

    meta_path, tensor_path = files.join(folder, DIRECTIONS_META_FILE), files.join(folder, DIRECTIONS_FILE)
    if not files.exists(meta_path) or not files.exists(tensor_path):
        raise FileNotFoundError(
            f"{folder} holds no saved directions ({DIRECTIONS_META_FILE} + {DIRECTIONS_FILE}); run the analysis "
            "with analysis.save_directions 'significant' or 'all', or musicinterp.causal.write_directions on it"
        )
    with fsspec.open(tensor_path, "rb") as f:
        tensors = load(f.read())
    out = []
    for m in json.loads(files.read_text(meta_path))["directions"]:
        m = dict(m)
        m.pop("norm", None)
        out.append(Direction(vector=tensors[m["name"]].astype(np.float64), **m))
    return out


def probe_direction(reduced_npz: str | Path, labels_npz: str | Path, target: str, spec: AnalysisSpec) -> np.ndarray:
    """The fold-averaged ridge probe direction ``(hidden,)`` of one cell in the residual basis (module docstring)."""
    from musicinterp.analysis import permutation as pm
    from musicinterp.analysis.data import load_reduced, projection
    from musicinterp.analysis.ridge import GroupedRidgeCV, _scaled
    from musicinterp.frames import FRAME_RATE_HZ

    red, lab = load_reduced(reduced_npz), load_reduced(labels_npz)
    y_all = lab[f"y__{target}"].astype(float)
    valid = lab[f"valid__{target}"].astype(bool)
    clip = lab["clip"]
    classes = pm.window_classes(
        clip, lab["frame"].astype(int), lab["n_frames"].astype(int), max(1, round(spec.window_s * FRAME_RATE_HZ))
    )
    rows = np.flatnonzero(pm.consensus_valid(valid, classes))
    src = lab["source_id"][clip][rows]
    groups = np.unique(src, return_inverse=True)[1]
    n_folds = min(spec.n_folds, len(np.unique(src)))
    X = red["X"].astype(float)[rows]
    own = [lab[f"lag__{target}"].astype(float)[rows], lab[f"lagvalid__{target}"].astype(float)[rows]]
    Z = np.hstack([lab["controls"].astype(float)[rows], np.column_stack(own), X])
    y = y_all[rows]
    _, chosen = GroupedRidgeCV(Z, groups, n_folds, spec.inner_folds, spec.ridge_grid).oof(y[:, None])
    width = X.shape[1]
    ws = []
    for f, (tr, te) in enumerate(_folds(groups, n_folds)):
        Ztr, _ = _scaled(Z, tr, te)
        sd = Z[tr].std(axis=0)
        lam = float(chosen[f, 0]) * len(tr)
        w = np.linalg.solve(Ztr.T @ Ztr + lam * np.eye(Z.shape[1]), Ztr.T @ (y[tr] - y[tr].mean()))
        wx = w[-width:] / np.where(sd[-width:] < 1e-12, np.inf, sd[-width:])
        ws.append(wx)
    w_red = np.mean(ws, axis=0)
    hidden = int(red.get("meta_hidden_size", width))
    W = projection(hidden, spec)
    return w_red if W is None else W.astype(float) @ w_red


def _folds(groups: np.ndarray, n_folds: int):
    from sklearn.model_selection import GroupKFold

    return GroupKFold(n_splits=n_folds).split(np.zeros(len(groups)), groups=groups)


def write_directions(out: str | Path, spec: AnalysisSpec, which: str | None = None) -> str | None:
    """Save the probe directions of an analysis folder (``results.parquet`` and ``work/``): every significant
    cell (control 'none', AUROC q < alpha) or, with ``which='all'``, every cell of the trained store and of
    the random-model control. Returns the json's path (None when there is nothing to save or ``'none'``)."""
    import pandas as pd

    which = which or spec.save_directions
    if which not in WHICH:
        raise ValueError(f"save_directions must be one of {WHICH}, got {which!r}")
    if which == "none":
        return None
    with fsspec.open(files.join(out, "results.parquet"), "rb") as f:
        df = pd.read_parquet(f)
    cells = df[(df["metric"] == "auroc") & df["control"].isin(["none", "random-model"])]
    if which == "significant":
        cells = cells[(cells["control"] == "none") & (cells["q_value"] < spec.alpha)]
    found, missing = [], []
    for _, r in cells.iterrows():
        tag = "control_" if r["control"] == "random-model" else ""
        label = _label(r)
        reduced = files.join(out, "work", f"{tag}layer{int(r['layer'])}.npz")
        labels = files.join(out, "work", f"{tag}labels.npz")
        if not files.exists(reduced) or not files.exists(labels):
            missing.append(f"{label} layer {int(r['layer'])} ({r['control']})")
            continue
        vec = probe_direction(reduced, labels, label, spec)
        stats = {k: r[k] for k in ("gain", "ci_low", "ci_high", "p_value", "q_value", "n_clips", "n_frames")}
        found.append(
            Direction(
                name=f"{'random-' if tag else ''}L{int(r['layer'])}-{label}",
                layer=int(r["layer"]),
                vector=vec,
                kind="probe",
                target=str(r["target"]),
                horizon=float(r["horizon"]),
                control=str(r["control"]),
                weights=str(r.get("weights", "unknown")),
                stats={k: (float(v) if isinstance(v, float | np.floating) else int(v)) for k, v in stats.items()},
            )
        )
    if missing:
        log.warning("no reduced files for %d cells, their directions are not saved: %s", len(missing), missing)
    if not found:
        return None
    return save_directions(
        found,
        out,
        {
            "which": which,
            "method": "fold-averaged ridge weights of the layer (controls + own past + layer, the analysis's "
            "folds and chosen strengths), unscaled and unprojected into the residual basis",
            "analysis_spec_fingerprint": spec.fingerprint(),
            "not_saved": missing,
        },
    )


def _label(r: Any) -> str:
    h = float(r["horizon"])
    return str(r["target"]) if not np.isfinite(h) else f"{r['target']}_{h:g}s"


def diff_of_means(acts_a: np.ndarray, acts_b: np.ndarray, k: int = 1) -> np.ndarray:
    """Top-``k`` unit directions ``(k, d)`` separating condition a from b; ``acts_*``: ``(rows, d)`` paired rows
    (the same piece and frame under each condition). The first is signed to point from b to a."""
    if acts_a.shape != acts_b.shape:
        raise ValueError(f"paired activations differ in shape: {acts_a.shape} vs {acts_b.shape}")
    D = np.asarray(acts_a, float) - np.asarray(acts_b, float)
    _, s, vt = np.linalg.svd(D, full_matrices=False)
    if k > int((s > 1e-9 * max(s.max(initial=0.0), 1e-30)).sum()):
        raise ValueError(f"the paired differences have rank {int((s > 0).sum())} < k = {k}")
    v = vt[:k].copy()
    if v[0] @ D.mean(axis=0) < 0:
        v[0] = -v[0]
    return v
