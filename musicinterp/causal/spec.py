"""Settings of a causal experiment (the ``musicinterp intervene`` config), as pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from musicinterp.causal.controls import (
    DEFAULT_MATCH_TOLERANCE,
    DEFAULT_MAX_DRAWS,
    DEFAULT_N_CONTROLS,
    DEFAULT_TOLERANCE,
)
from musicinterp.causal.toy import WINDOWS
from musicinterp.config import ConfigError, ModelSpec, Spec

WindowName = Literal["to-return", "cue", "cue-end-to-return", "before-return"]


class CandidateSpec(Spec):
    """One family of candidate directions."""

    kind: Literal["probe", "probe-pattern", "diff-means", "sae-feature"] = Field(
        description="'probe': the analysis's saved probe direction of each layer (directions.json), the read-out "
        "weights; 'probe-pattern': the activation pattern of that read-out (covariance x weights over the fit "
        "pieces, Haufe et al. 2014), the direction in which the stream varies with the probe's score; "
        "'diff-means': the top-k directions of the paired difference between the two cue conditions; "
        "'sae-feature': SAE features (see 'sae'), each ablated alone: its decoder contribution subtracted at its "
        "layer, the SAE's error term kept (musicinterp.sae.splice.ablation), against features of the same SAE "
        "matched in activation frequency and mean contribution."
    )
    k: int = Field(1, ge=1, le=64, description="diff-means: number of directions (a k-dimensional subspace).")
    operations: list[Literal["ablate", "patch"]] = Field(
        default_factory=lambda: ["ablate", "patch"],  # type: ignore[arg-type]
        description="'ablate': set the component to its mean over the fit pieces (both cues), per step; "
        "'patch': set it to its value in the other-cue run of the same piece.",
    )
    n_controls: int = Field(DEFAULT_N_CONTROLS, ge=1, le=1000, description="Matched random controls per candidate.")
    sae: str | None = Field(
        None,
        description="sae-feature: an SAE folder (SAELens layout: cfg.json + sae_weights.safetensors; its hook gives "
        "the layer) with 'features', or a `musicinterp sae rank` output (the folder or its candidates.json) with "
        "'top' and/or 'features'.",
    )
    features: list[int] | None = Field(
        None, description="sae-feature: feature ids (of the SAE folder; of a ranking: those of its candidates)."
    )
    top: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="sae-feature with a ranking: its first N distinct (layer, feature) candidates (best q first) at "
        "the experiment's layers.",
    )
    match_tolerance: float = Field(
        DEFAULT_MATCH_TOLERANCE,
        gt=0,
        le=10,
        description="sae-feature: relative tolerance of the controls' activation frequency and mean contribution.",
    )

    @model_validator(mode="before")
    @classmethod
    def _sae_default_operations(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "sae-feature" and "operations" not in data:
            return {**data, "operations": ["ablate"]}  # a feature has no 'patch' here
        return data

    @model_validator(mode="after")
    def _check_sae(self) -> CandidateSpec:
        if self.kind != "sae-feature":
            if self.sae is not None or self.features is not None or self.top is not None:
                raise ValueError(f"sae, features and top belong to kind 'sae-feature', not {self.kind!r}")
            return self
        if not self.sae:
            raise ValueError("kind 'sae-feature' needs 'sae': an SAE folder or a `musicinterp sae rank` output")
        if not self.features and self.top is None:
            raise ValueError("kind 'sae-feature' needs 'features' (ids) or 'top' (the first N of a ranking)")
        if self.features is not None and any(f < 0 for f in self.features):
            raise ValueError(f"features must be ids >= 0, got {self.features}")
        if self.operations != ["ablate"]:
            raise ValueError(
                f"kind 'sae-feature' supports operations ['ablate'] only (decoder contribution out, error term kept), "
                f"got {self.operations}"
            )
        return self

    def canonical_dump(self) -> dict[str, Any]:
        """The fields, without the sae-feature ones at their defaults: families of the other kinds keep the
        fingerprint they had before the kind existed (the same experiments, the same folders)."""
        data = self.model_dump(mode="json")
        for key, default in (("sae", None), ("features", None), ("top", None)):
            if data[key] == default:
                del data[key]
        if self.kind != "sae-feature" and data["match_tolerance"] == DEFAULT_MATCH_TOLERANCE:
            del data["match_tolerance"]
        return data


class InterventionSpec(Spec):
    """A causal experiment on the pair toy: interventions on twin pairs, outcomes per piece, paired statistics."""

    name: str = Field("intervene", pattern=r"^[A-Za-z0-9_-]+$", description="Experiment name (names the folder).")
    model: ModelSpec = Field(
        default_factory=lambda: ModelSpec(source="local", name="checkpoints/toy-pair", weights="trained-here"),
        description="The model intervened on (the trained pair toy).",
    )
    control_model: ModelSpec | None = Field(
        default_factory=lambda: ModelSpec(source="local", name="checkpoints/toy-pair-random"),
        description="The same architecture with random weights: the same operations on it (its own directions).",
    )
    directions: str | None = Field(
        None,
        description="Analysis folder holding directions.json/.safetensors (from the model's store, with the "
        "random twin as control store and save_directions 'all' for the twin's directions); needed by 'probe'.",
    )
    probe_target: str = Field("truth_return_within_2s", description="Target of the probe directions used.")
    seed: int = Field(3000, ge=0, description="Seed of the test pieces (held out from training and the analysis).")
    n_pieces: int = Field(
        40, ge=2, le=10_000, description="Twin pairs tested (return pieces and their other-cue twin)."
    )
    fit_seed: int = Field(
        3001, ge=0, description="Seed of the fit pieces (mean-ablation reference, diff-means, controls)."
    )
    n_fit_pieces: int = Field(40, ge=2, le=10_000, description="Twin pairs the directions and references are fit on.")
    layers: list[int] = Field(default_factory=lambda: [2, 3, 4], description="Layers intervened on (0 = embeddings).")
    window: WindowName = Field(
        "to-return",
        description="Frames of the direction interventions (musicinterp/causal/toy.py WINDOWS; stored frame i is "
        "decoder step i + 1).",
    )
    candidates: list[CandidateSpec] = Field(
        default_factory=lambda: [CandidateSpec(kind="diff-means", k=1)],
        description="Candidate direction families ('probe' needs 'directions').",
    )
    control_model_candidates: list[CandidateSpec] | None = Field(
        None, description="Candidate families on the random twin (None: the same as 'candidates')."
    )
    fluency_stride: int = Field(
        1, ge=1, le=50, description="Score fluency on every n-th frame of the fluency window (all codebooks)."
    )
    whole_patch_layers: list[int] = Field(
        default_factory=lambda: [2], description="Layers whose whole stream is patched from the other-cue run."
    )
    whole_patch_windows: list[WindowName] = Field(
        default_factory=lambda: ["to-return", "cue", "cue-end-to-return"],  # type: ignore[arg-type]
        description="Windows of the whole-stream patches.",
    )
    control_tolerance: float = Field(DEFAULT_TOLERANCE, gt=0, le=1, description="Relative variance tolerance.")
    control_max_draws: int = Field(
        DEFAULT_MAX_DRAWS, ge=1, description="Most random draws for one candidate's controls."
    )
    half: Literal["conditional", "unconditional"] = Field("conditional", description="Guidance half scored.")
    n_bootstrap: int = Field(2000, ge=10, description="Cluster-bootstrap resamples (pieces).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Level of the CIs and of the BH FDR.")
    batch_size: int = Field(8, ge=1, le=512, description="Pieces per forward pass.")
    threads: int = Field(1, ge=1, le=256, description="torch CPU threads.")

    @model_validator(mode="after")
    def _check(self) -> InterventionSpec:
        if self.seed == self.fit_seed:
            raise ValueError("fit_seed must differ from seed: directions and references must not be fit on test pieces")
        families = self.candidates + (self.control_model_candidates or [])
        if any(c.kind.startswith("probe") for c in families) and not self.directions:
            raise ValueError("candidates include 'probe', so 'directions' (an analysis folder) is required")
        if self.window not in WINDOWS:
            raise ValueError(f"window {self.window!r} is not one of {sorted(WINDOWS)}")
        if (
            self.control_model
            and self.control_model_candidates is None
            and any(c.kind == "sae-feature" for c in self.candidates)
        ):
            raise ValueError(
                "candidates include 'sae-feature' (an SAE of the model's stream) and there is a control_model: set "
                "control_model_candidates (e.g. a sae-feature family on the twin's own SAE, or [])"
            )
        return self

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json")
        for key in ("candidates", "control_model_candidates"):
            families = getattr(self, key)
            if families is not None:
                data[key] = [c.canonical_dump() for c in families]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def load_intervention_spec(path: str | Path, check_files: bool = True) -> InterventionSpec:
    """Read a YAML experiment config; a bad one raises ConfigError naming the field. ``check_files``: also check
    the files it names that can be checked before the run (:func:`check_sae_candidates`)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        spec = InterventionSpec(**data)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{path}: {field}: {first['msg']}") from e
    if check_files:
        check_sae_candidates(spec, str(path))
    return spec


def check_sae_candidates(spec: InterventionSpec, where: str = "config") -> None:
    """Resolve every ``sae-feature`` family and check its SAEs against the model they act on (width, layer range),
    the experiment's layers and the feature ids; ConfigError names the file and the field (``candidates.0.sae``).
    The models' shapes come from their configs (no weights are loaded); the SAEs are loaded."""
    from musicinterp.causal.sae_features import SAECandidateError, check_features, resolve_features
    from musicinterp.models import ModelLoadError, describe_model
    from musicinterp.sae.saelens import SAELoadError

    for key, model, families in (
        ("candidates", spec.model, spec.candidates),
        ("control_model_candidates", spec.control_model, spec.control_model_candidates or []),
    ):
        for i, c in enumerate(families):
            if c.kind != "sae-feature" or model is None:
                continue
            assert c.sae is not None  # CandidateSpec's validation
            try:
                shape = describe_model(model)
                found = resolve_features(c.sae, c.features, c.top, spec.layers)
                check_features(found, int(shape["hidden_size"]), int(shape["n_layers"]), spec.layers)
            except ModelLoadError as e:
                raise ConfigError(f"{where}: {key}.{i}: its model {model.name!r}: {e}") from e
            except (SAECandidateError, SAELoadError) as e:
                raise ConfigError(f"{where}: {key}.{i}.sae: {e}") from e


def experiment_folder(spec: InterventionSpec, out: str | Path) -> Path:
    """``{out}/{name}-{fingerprint}``: the same settings are the same experiment."""
    return Path(out) / f"{spec.name}-{spec.fingerprint(10)}"
