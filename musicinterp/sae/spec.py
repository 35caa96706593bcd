"""Settings of the sparse-autoencoder stages (train, rank), as pydantic models with fingerprints.

They live beside the code they configure (``musicinterp.config`` holds the run's settings; these key the
SAE folders and caches): every field has a description, so the Prefect UI renders them as a form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from musicinterp.config import AnalysisSpec, ConfigError, Spec, format_validation_error

DEFAULT_RANK_TARGETS = tuple(f"{kind}_within_{h}s" for kind in ("rec", "res") for h in (2, 4, 8))


class SAETrainSpec(Spec):
    """A TopK sparse autoencoder per chosen layer of one run store (Gao et al. 2024, 'Scaling and evaluating
    sparse autoencoders'): encoder, top-k of the pre-activations, ReLU, linear decoder with unit-norm rows."""

    store: str = Field(description="Run store (store.zarr: local path or fsspec URL) whose `resid` is the data.")
    layers: list[int] = Field(
        description="Layers to train an SAE on (the store's layer index: 0 = embeddings, l = after block l)."
    )
    d_sae: int | None = Field(None, ge=1, description="Features per SAE; None = expansion x the layer's width.")
    expansion: int = Field(8, ge=1, description="d_sae = expansion x d_in when d_sae is not given.")
    kind: Literal["topk", "batchtopk"] = Field(
        "topk",
        description="'topk': k active features on every frame; 'batchtopk' (Bussmann et al. 2024): the k x batch "
        "largest activations of each training batch (k per frame on average), and at inference a threshold "
        "estimated in training (saved as SAELens saves BatchTopK SAEs: architecture 'jumprelu' + 'threshold').",
    )
    k: int = Field(16, ge=1, description="Active features per frame (TopK; for BatchTopK the mean per frame).")
    topk_threshold_lr: float = Field(
        0.01,
        gt=0,
        le=1,
        description="BatchTopK only: rate of the running mean of each batch's smallest kept activation that "
        "becomes the inference threshold (SAELens' name).",
    )
    train_frames: int = Field(
        1_000_000, ge=1, description="Frames (tokens) to train on; the store's training clips are cycled in epochs."
    )
    batch_size: int = Field(1024, ge=1, description="Frames per optimiser step.")
    lr: float | None = Field(
        None, gt=0, description="Adam learning rate; None = 2e-4 / sqrt(d_sae / 16384) (Gao et al.'s scaling)."
    )
    shuffle_buffer_frames: int = Field(
        32_768,
        ge=1,
        description="Frames held in the shuffle buffer: clips are read one at a time (one clip of one layer) and "
        "batches drawn at random from the buffer, so memory is bounded by (buffer + one clip) x width x 2 bytes.",
    )
    aux_k_coef: float = Field(
        1 / 32, ge=0, description="Weight of the AuxK loss that makes dead features model the residual error."
    )
    dead_after_frames: int = Field(
        200_000, ge=1, description="A feature that has not fired for this many training frames counts as dead."
    )
    normalize_activations: Literal["expected_average_only_in", "none"] = Field(
        "expected_average_only_in",
        description="'expected_average_only_in': inputs scaled by one constant so that E||x||^2 = d_in during "
        "training (SAELens' name); the constant is folded into the saved weights, which then take raw activations.",
    )
    eval_fraction: float = Field(
        0.125, ge=0, lt=1, description="Share of sources held out of training; the metrics are measured on them."
    )
    loss_clips: int = Field(
        16, ge=0, description="Held-out clips on which the model's next-code loss is measured with the SAE spliced in."
    )
    dense_threshold: float = Field(
        0.1, gt=0, le=1, description="A feature firing on more than this share of frames is dense."
    )
    device: str = Field("cpu", description="torch device for training and evaluation ('cpu', 'cuda', 'cuda:1').")
    checkpoint_every_steps: int = Field(200, ge=1, description="Steps between checkpoints a rerun resumes from.")
    seed: int = Field(0, description="Seeds the initialisation, the clip order and the batches.")

    def canonical_json(self) -> str:
        """As Spec's, without the BatchTopK fields at their defaults, so TopK settings written before BatchTopK
        existed keep their fingerprint (and their checkpoints)."""
        data = self.model_dump(mode="json")
        for name in ("kind", "topk_threshold_lr"):
            if data[name] == type(self).model_fields[name].default:
                del data[name]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def d_sae_for(self, d_in: int) -> int:
        return self.d_sae or self.expansion * d_in

    def lr_for(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / (d_sae / 16384) ** 0.5

    @model_validator(mode="after")
    def _check(self) -> SAETrainSpec:
        if not self.layers:
            raise ValueError("layers: name at least one layer to train an SAE on")
        if self.d_sae is not None and self.k > self.d_sae:
            raise ValueError(f"k = {self.k} is more than d_sae = {self.d_sae}")
        return self


class SAERankSpec(Spec):
    """Rank SAE features by how well each one's activation at t predicts a future event beyond the causal
    controls, with the analysis's nested grouped probes, permutation p and BH (musicinterp/sae/README.md)."""

    targets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RANK_TARGETS),
        description="Binary (clip, time) labels to predict (as AnalysisSpec.targets).",
    )
    layers: list[int] | None = Field(None, description="Layers whose SAE to rank (None = every SAE in the folder).")
    screen_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of sources used only to preselect features; the tests run on the other sources.",
    )
    top_n: int = Field(
        8, ge=1, description="Features preselected per (layer, target); the BH family is layers x targets x top_n."
    )
    min_active_frames: int = Field(
        10, ge=1, description="A feature must fire on at least this many screening frames to be preselected."
    )
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec,
        description="Probe and test settings (folds, permutations, stride, controls); its targets are ignored.",
    )
    seed: int = Field(0, description="Seeds the screen/test split of the sources.")


def load_spec(path: str | Path, cls: type[Spec], **overrides: object) -> Spec:
    """Read a YAML file into ``cls``; errors name the file and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file {str(path)!r} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(str(path), e)) from e
