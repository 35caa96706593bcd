"""Probes and statistics: does layer L at frame t predict a musical event at t + h beyond causal controls?

Pure Python (no Prefect). :func:`analyze_store` runs the whole grid in-process; the steps are public so a
flow can map tasks over layer x target:

    labels = load_labels(store, spec, out / "labels.npz")
    reduced = reduce_layer(store, layer, spec, out / f"layer{layer}.npz")      # once per layer
    rows = probe_layer_target(reduced, labels, target, spec, control="none")   # per (layer, target)
    df = finalize(all_rows, spec, out, weights)                                 # BH, files, figures

See README.md in this folder for the method and its null-simulation error rates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from musicinterp import files
from musicinterp.analysis.backend import check_device
from musicinterp.analysis.data import (
    AnalysisError,
    load_labels,
    open_analysis_store,
    parse_target,
    reduce_layer,
    store_layers,
)
from musicinterp.analysis.probe import probe_layer_target
from musicinterp.analysis.report import COLUMNS, findings_markdown, results_frame, write_results
from musicinterp.config import AnalysisSpec
from musicinterp.store import store_identity

__all__ = [
    "COLUMNS",
    "AnalysisError",
    "AnalysisSpec",
    "analyze_store",
    "finalize",
    "findings_markdown",
    "load_labels",
    "parse_target",
    "plan_store",
    "probe_layer_target",
    "reduce_layer",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


def plan_store(store: str, spec: AnalysisSpec) -> dict[str, Any]:
    """What a flow needs before fanning out, from one opening of the store: its identity (location and
    contents, :func:`musicinterp.store.store_identity`; the cache key of everything computed from it), the
    layers to probe and the weights kind. Fails here, before any task, when ``spec.device`` is not available."""
    check_device(spec.device)
    ds = open_analysis_store(store)
    return {
        "identity": store_identity(str(store)),
        "layers": store_layers(ds, spec),
        "weights": str(ds.attrs.get("weights", "unknown")),
    }


def finalize(rows: list[dict[str, Any]], spec: AnalysisSpec, out: str | Path, weights: str) -> pd.DataFrame:
    """BH q-values across layers x horizons x targets (per control and metric), files and figures.

    Returns the results table with exactly :data:`COLUMNS`.
    """
    df = results_frame(rows, spec.alpha)
    return write_results(df, spec, out, weights)


def _grid(
    store: str | Path | xr.Dataset,
    spec: AnalysisSpec,
    out: str,
    tag: str,
    controls: list[str],
    progress: Progress | None,
    done: list[int],
    total: int,
    n_cells: int,
    baselines: dict[int, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    ds = open_analysis_store(store)
    layers = store_layers(ds, spec)
    labels = load_labels(ds, spec, files.join(out, f"{tag}labels.npz"))
    rows: list[dict[str, Any]] = []
    reduced_files: dict[int, str] = {}
    for layer in layers:
        reduced = reduce_layer(ds, layer, spec, files.join(out, f"{tag}layer{layer}.npz"))
        reduced_files[layer] = reduced
        for target in spec.targets:
            for control in controls:
                base = str(baselines[layer]) if control == "beyond-random" else None
                rows += probe_layer_target(reduced, labels, target, spec, control, baseline_npz=base, n_cells=n_cells)
                done[0] += 1
                if progress:
                    progress(done[0], total, f"{control}: layer {layer} {target}")
    return rows, reduced_files


def analyze_store(
    store: str | Path | xr.Dataset,
    spec: AnalysisSpec,
    out: str | Path,
    control_store: str | Path | xr.Dataset | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """The whole grid in-process: each layer is reduced once, then every target is probed on it.

    ``control_store``: a store of the same clips from a random-weight model of the same architecture; it is
    analysed on its own (rows ``control='random-model'``) and its layers join the controls of the trained
    store's (``'beyond-random'``, with ``'trained-minus-random'``). Writes results, figures and findings.md
    under ``out`` (a local folder or an fsspec URL such as the run's ``s3://.../analysis``) and returns the
    results table (:data:`COLUMNS`). Fails before anything is read when ``spec.device`` is not available.
    """
    check_device(spec.device)
    files.makedirs(out)
    ds = open_analysis_store(store)
    weights = str(ds.attrs.get("weights", "unknown"))
    controls = ["none"] + (["shifted-labels"] if spec.shifted_labels_control else [])
    layers = store_layers(ds, spec)
    n_cells = len(layers) * len(spec.targets)
    cds = None
    if control_store is not None:
        cds = open_analysis_store(control_store)
        if cds.attrs.get("weights") != "random":
            log.warning(
                "control store has weights %r, not 'random'; its rows are still labelled 'random-model'",
                cds.attrs.get("weights"),
            )
        if store_layers(cds, spec) != layers:
            raise AnalysisError(
                f"the control store has layers {store_layers(cds, spec)}, the store {layers}: "
                "capture both with the same architecture and layers"
            )
    total = n_cells * (len(controls) + (2 if cds is not None else 0))
    done = [0]
    rows: list[dict[str, Any]] = []
    work = files.join(out, "work")
    if cds is not None:
        rows, baselines = _grid(cds, spec, work, "control_", ["random-model"], progress, done, total, n_cells)
        controls = [*controls, "beyond-random"]
    else:
        baselines = None
    main, _ = _grid(ds, spec, work, "", controls, progress, done, total, n_cells, baselines)
    return finalize(rows + main, spec, out, weights)
