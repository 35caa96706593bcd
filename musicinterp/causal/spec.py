"""Settings of a causal experiment (the ``musicinterp intervene`` config), as pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from musicinterp.causal.controls import DEFAULT_MAX_DRAWS, DEFAULT_N_CONTROLS, DEFAULT_TOLERANCE
from musicinterp.causal.toy import WINDOWS
from musicinterp.config import ConfigError, ModelSpec, Spec

WindowName = Literal["to-return", "cue", "cue-end-to-return", "before-return"]


class CandidateSpec(Spec):
    """One family of candidate directions."""

    kind: Literal["probe", "probe-pattern", "diff-means"] = Field(
        description="'probe': the analysis's saved probe direction of each layer (directions.json), the read-out "
        "weights; 'probe-pattern': the activation pattern of that read-out (covariance x weights over the fit "
        "pieces, Haufe et al. 2014), the direction in which the stream varies with the probe's score; "
        "'diff-means': the top-k directions of the paired difference between the two cue conditions."
    )
    k: int = Field(1, ge=1, le=64, description="diff-means: number of directions (a k-dimensional subspace).")
    operations: list[Literal["ablate", "patch"]] = Field(
        default_factory=lambda: ["ablate", "patch"],  # type: ignore[arg-type]
        description="'ablate': set the component to its mean over the fit pieces (both cues), per step; "
        "'patch': set it to its value in the other-cue run of the same piece.",
    )
    n_controls: int = Field(DEFAULT_N_CONTROLS, ge=1, le=1000, description="Matched random controls per candidate.")


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
        return self


def load_intervention_spec(path: str | Path) -> InterventionSpec:
    """Read a YAML experiment config; a bad one raises ConfigError naming the field."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return InterventionSpec(**data)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{path}: {field}: {first['msg']}") from e


def experiment_folder(spec: InterventionSpec, out: str | Path) -> Path:
    """``{out}/{name}-{fingerprint}``: the same settings are the same experiment."""
    return Path(out) / f"{spec.name}-{spec.fingerprint(10)}"
