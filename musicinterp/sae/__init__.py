"""Sparse autoencoders on a run store's residual stream, and their features against musical structure.

Pure Python (no Prefect). See README.md in this folder for the method, the SAELens layout and hook names, the
memory bound and the known-answer run.

    from musicinterp.sae import SAETrainSpec, train_saes, load_sae, rank_store, SAERankSpec
    metrics = train_saes(SAETrainSpec(store="runs/x/store.zarr", layers=[6]), "runs/x-sae", loaded=None)
    sl = load_sae("runs/x-sae/layer6", d_model=1024, n_layers=24, layer=6)
    with edit_layer(loaded, 6, ablation(sl.sae, [123])):  # ablate feature 123, keep the SAE's error term
        ...
"""

from musicinterp.sae.evaluate import evaluate_sae, next_code_loss, reconstruction_metrics
from musicinterp.sae.features import encode_frames, feature_matrix, write_feature_store
from musicinterp.sae.model import BatchTopKSAE, TopKSAE, make_sae
from musicinterp.sae.pipeline import evaluate_layer, store_model, train_saes, write_metrics
from musicinterp.sae.rank import (
    finalize_ranking,
    intermediate_dir,
    rank_features,
    rank_store,
    store_candidate_features,
    summary,
)
from musicinterp.sae.saelens import (
    LoadedSAE,
    SAELoadError,
    hook_name_for_layer,
    layer_for_hook_name,
    load_sae,
    save_sae,
)
from musicinterp.sae.spec import SAERankSpec, SAETrainSpec
from musicinterp.sae.splice import ablate_features, ablation, edit_layer, reconstruct, replace_with
from musicinterp.sae.train import train_layer

__all__ = [
    "BatchTopKSAE",
    "LoadedSAE",
    "SAELoadError",
    "SAERankSpec",
    "SAETrainSpec",
    "TopKSAE",
    "ablate_features",
    "ablation",
    "edit_layer",
    "encode_frames",
    "evaluate_layer",
    "evaluate_sae",
    "feature_matrix",
    "finalize_ranking",
    "hook_name_for_layer",
    "layer_for_hook_name",
    "load_sae",
    "make_sae",
    "next_code_loss",
    "intermediate_dir",
    "rank_features",
    "rank_store",
    "reconstruct",
    "reconstruction_metrics",
    "replace_with",
    "save_sae",
    "store_candidate_features",
    "store_model",
    "summary",
    "train_layer",
    "train_saes",
    "write_metrics",
    "write_feature_store",
]
