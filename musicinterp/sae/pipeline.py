"""Train and evaluate the SAEs of a store, layer by layer: what ``musicinterp sae train`` and the flow run.

Output folder layout::

    <out>/sae_train_spec.json            the settings (their fingerprint names the folder by default)
    <out>/layer<l>/cfg.json              SAELens layout (musicinterp.sae.saelens)
    <out>/layer<l>/sae_weights.safetensors
    <out>/layer<l>/musicinterp_sae.json  provenance, held-out clips, the training mean, metrics
    <out>/checkpoints/layer<l>.pt        what a rerun resumes from
    <out>/metrics.json, metrics.csv      one row per layer (musicinterp.sae.evaluate)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from musicinterp.models import LoadedModel, load_model
from musicinterp.sae.evaluate import evaluate_sae, run_spec_of
from musicinterp.sae.saelens import META_FILE, load_sae
from musicinterp.sae.spec import SAETrainSpec
from musicinterp.sae.stream import open_store
from musicinterp.sae.train import Progress, sae_dir, train_layer

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "layer",
    "kind",
    "d_in",
    "d_sae",
    "k",
    "frames",
    "nmse",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "loss_clean",
    "loss_spliced",
    "loss_mean_ablated",
    "loss_recovered",
    "loss_clips",
    "eval_clips",
    "weights",
)


def store_model(store: str, device: str = "cpu") -> LoadedModel:
    """The model that wrote ``store``, loaded from the store's own config (for the spliced-loss metrics)."""
    return load_model(run_spec_of(open_store(store)).model, device=device)


def evaluate_layer(spec: SAETrainSpec, layer: int, out: str | Path, loaded: LoadedModel | None) -> dict[str, Any]:
    """Metrics of the trained SAE of ``layer`` on its held-out clips; written into its musicinterp_sae.json."""
    folder = sae_dir(out, layer)
    sl = load_sae(folder, layer=layer, device=spec.device)
    meta = sl.meta
    row = evaluate_sae(
        spec.store,
        layer,
        sl.sae,
        meta["eval_clips"],
        np.asarray(meta["train_mean"], np.float32),
        loaded,
        spec.loss_clips,
        spec.dense_threshold,
    )
    sae = sl.sae
    row.update(kind=sae.kind, d_in=sae.d_in, d_sae=sae.d_sae, k=sae.k, weights=meta.get("weights", "unknown"))
    meta["metrics"] = row
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return row


def write_metrics(rows: list[dict[str, Any]], out: str | Path) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df = df[[c for c in METRIC_COLUMNS if c in df.columns]].sort_values("layer")
    df.to_csv(Path(out) / "metrics.csv", index=False)
    (Path(out) / "metrics.json").write_text(df.to_json(orient="records", indent=2))
    return df


def train_saes(
    spec: SAETrainSpec, out: str | Path, loaded: LoadedModel | None = None, progress: Progress | None = None
) -> pd.DataFrame:
    """Every layer in-process: train (or resume), then evaluate; returns the metrics table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sae_train_spec.json").write_text(spec.model_dump_json(indent=2))
    rows = []
    for layer in spec.layers:
        train_layer(spec, layer, out, progress)
        rows.append(evaluate_layer(spec, layer, out, loaded))
    return write_metrics(rows, out)
