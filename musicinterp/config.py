"""Every setting a user can change, as pydantic models, in one place.

The models become the Prefect UI's run form and the YAML config format. Each has a stable
``fingerprint()`` (sha256 of its canonical JSON) that names stores, cache keys and results, so two
runs of the same config are the same run.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from musicinterp.frames import CLIP_MAX_S

OFFLINE_MODEL_NAMES = ("tiny", "musicgen-small")
HUB_MODEL_IDS = (
    "facebook/musicgen-small",
    "facebook/musicgen-medium",
    "facebook/musicgen-large",
    "facebook/musicgen-melody",
)
# peak |sample| (full-scale units, -80 dBFS) below which a clip is silent: flagged in the manifest,
# and the default below which the annotation rejects it
SILENCE_PEAK_FS = 1e-4
SEED_MAX = 2**32 - 1  # the widest seed numpy's and torch's generators all take
CLIP_MIN_S = 0.02  # one frame at 50 Hz: a shorter clip (or cut) holds no frame
DEVICE_PATTERN = r"^(cpu|mps|cuda(:[0-9]+)?)$"  # torch device strings a run can ask for
ANALYSIS_DEVICE_PATTERN = r"^(cpu|torch-cpu|cuda(:[0-9]+)?)$"  # cpu: numpy; the others: torch float64


class Spec(BaseModel):
    """Base of all config models: frozen, no unknown keys, with a fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def fingerprint(self, length: int = 16) -> str:
        """Stable hash of the canonical JSON; the same settings always give the same string."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:length]


class ModelSpec(Spec):
    """Which MusicGen to load and from where."""

    source: Literal["offline", "hub", "local"] = Field(
        "offline",
        description="'offline': build from a named config with random weights (no download); "
        "'hub': Hugging Face Hub id at an explicit revision; 'local': a directory written by save_pretrained.",
    )
    name: str = Field(
        "tiny",
        description="offline: 'tiny' or 'musicgen-small' (shape only, random weights); "
        "hub: a model id such as 'facebook/musicgen-small'; local: a directory path.",
    )
    revision: str | None = Field(
        None, description="Hub commit sha or tag; required for source 'hub' so the run is reproducible."
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the random weights for offline models.")
    weights: Literal["auto", "trained-here"] = Field(
        "auto",
        description="For local models: 'trained-here' marks a checkpoint this project trained; "
        "'auto' reads it from the checkpoint's musicinterp.json.",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.source == "offline" and self.name not in OFFLINE_MODEL_NAMES:
            raise ValueError(
                f"model.name: unknown offline model {self.name!r}; choose one of {list(OFFLINE_MODEL_NAMES)} "
                "or set model.source to 'hub' or 'local'"
            )
        if self.source == "hub":
            if "/" not in self.name:
                raise ValueError(
                    f"model.name: {self.name!r} is not a Hub model id (expected 'owner/name', "
                    f"e.g. {HUB_MODEL_IDS[0]!r})"
                )
            if not self.revision:
                raise ValueError(
                    "model.revision: a Hub model needs an explicit revision (a commit sha or tag) "
                    "so that the run can be reproduced"
                )
        return self


class SyntheticSource(Spec):
    """Pieces generated here with planted recurrences: A, other material, A again at known times."""

    kind: Literal["synthetic"] = "synthetic"
    n_pieces: int = Field(4, ge=1, le=10_000, description="Number of pieces.")
    duration_s: float = Field(12.0, ge=1.0, le=600.0, description="Length of each piece in seconds.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for the pieces; the same seed gives the same audio.")
    hard: bool = Field(False, description="Vary the return: a few percent slower, another timbre, noise at 20 dB SNR.")
    no_return_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of pieces with no planted return (null pieces)."
    )


class Music21Source(Spec):
    """Scores from the music21 package's own corpus, repeats expanded, rendered by the built-in synth."""

    kind: Literal["music21"] = "music21"
    scores: list[str] = Field(
        default_factory=lambda: ["bach/bwv269"],
        description="music21 corpus paths, e.g. 'bach/bwv269' (see music21.corpus.getComposer).",
    )
    tempo_bpm: float | None = Field(
        None, gt=0, description="Override the score's tempo (quarter notes per minute); default: the score's or 90."
    )


class AudioDirSource(Spec):
    """A folder of audio files: decoded, mixed to mono, resampled to 32 kHz, cut into clips."""

    kind: Literal["audio_dir"] = "audio_dir"
    path: str = Field(..., description="Folder (searched recursively) or a single audio file.")
    extensions: list[str] = Field(
        default_factory=lambda: [".wav", ".flac", ".ogg", ".mp3"],
        description="File extensions to read (case-insensitive).",
    )
    max_files: int | None = Field(None, ge=1, description="Read at most this many files (sorted by path).")
    licence: str | None = Field(None, description="Licence to record for every clip of this folder.")


class CueSource(Spec):
    """Known-answer pieces: a cue in the first second decides whether section A returns at 9 s.

    Nothing audible near the return point gives it away (see musicinterp/sources/cue.py); the
    positive-control model (``musicinterp train-toy``) is trained on them.
    """

    kind: Literal["cue"] = "cue"
    n_pieces: int = Field(8, ge=1, le=100_000, description="Number of pieces.")
    duration_s: float = Field(
        11.0, ge=11.0, le=30.0, description="Length of each piece in seconds (the return section is 9.0-10.6 s)."
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for the pieces; the same seed gives the same audio.")
    return_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Fraction of pieces whose cue says 'return' (A comes back at 9 s)."
    )
    design: Literal["chord", "pair"] = Field(
        "chord",
        description="'chord': one of two chords is the cue. 'pair': two chords separated by silence, A "
        "returns when they are equal; an average of the codes heard is additive in the two chords, so the "
        "answer is not linear in it (a model must compute it; memory alone does not expose it).",
    )


SourceSpec = Annotated[SyntheticSource | Music21Source | AudioDirSource | CueSource, Field(discriminator="kind")]


def _default_sources() -> list[SourceSpec]:
    return [SyntheticSource()]


class SliceSpec(Spec):
    """The benchmark slice: which clips, how long, how many shards."""

    name: str = Field("demo", description="Name of the slice; used in run names.")
    sources: list[SourceSpec] = Field(default_factory=_default_sources, description="Where the clips come from.")
    clip_s: float = Field(
        CLIP_MAX_S,
        ge=CLIP_MIN_S,
        le=CLIP_MAX_S,
        description=f"Longest clip in seconds; longer sources are cut (MusicGen's context is {CLIP_MAX_S:g} s).",
    )
    min_clip_s: float = Field(1.0, ge=CLIP_MIN_S, description="Clips (and tails) shorter than this are rejected.")
    n_shards: int = Field(2, ge=1, le=10_000, description="Number of shards the clips are dealt into.")

    @field_validator("sources")
    @classmethod
    def _nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("slice.sources: give at least one source")
        return v


class CaptureSpec(Spec):
    """How the decoder is run over the clips' own codes (teacher forcing)."""

    description: str = Field(
        "", description="Text condition given to the text encoder; '' is MusicGen's unconditional prompt."
    )
    guidance_scale: float = Field(
        3.0,
        ge=0.0,
        description="Classifier-free guidance scale of the run being imitated (MusicGen default 3). "
        "It mixes the two halves' logits only; activations are per half.",
    )
    half: Literal["conditional", "unconditional"] = Field(
        "conditional",
        description="Which classifier-free-guidance half to store: the text-conditioned one or the "
        "null-condition one (encoder states zeroed).",
    )
    layers: list[int] | None = Field(None, description="Layers to store (0 = embeddings); default: all.")
    device: str = Field("cpu", description="torch device for the model, e.g. 'cpu' or 'cuda'.")
    batch_size: int = Field(
        1,
        ge=1,
        le=256,
        description="Clips of equal length captured in one forward pass (an accelerator's throughput). "
        "Above 1, values may differ from clip-by-clip capture in float16's last bit, so it is part of the "
        "run's identity; 1 (the default) is not.",
    )
    reduce: Literal["none", "int8"] = Field(
        "none",
        description="'none': float16 activations (the default). 'int8': quantised on the device before the copy "
        "to the host, symmetric with one scale per (clip, layer, feature) (absmax / 127); half the bytes, and "
        "readers get dequantised floats (musicinterp.store.dequantize). The error against float16 is recorded "
        "in the store. Part of the run's identity unless 'none'.",
    )
    autocast: bool = Field(
        False,
        description="Run the forward pass under torch.autocast (bfloat16) on the device; recorded in the store's "
        "attributes and part of the run's identity when on.",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if not re.match(DEVICE_PATTERN, v):
            raise ValueError(f"{v!r} is not a torch device; give 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(x < 0 for x in v):
            raise ValueError(f"{sorted(x for x in v if x < 0)} negative; layer 0 is the embeddings")
        return v


TENSION_COMPONENTS = (
    "loudness",
    "onset_density",
    "pitch_height",
    "dissonance",
    "flatness",
    "key_unclarity",
    "tensile_strain",
)


class AnnotationSpec(Spec):
    """How recurrence and tension labels are computed (see musicinterp/annotate/README.md)."""

    # recurrence
    chroma_smooth_s: float = Field(0.2, gt=0, le=2.0, description="Moving average of the HPCP before embedding (s).")
    embed_dim: int = Field(7, ge=1, le=16, description="Time-delay embedding: number of stacked chroma vectors.")
    embed_step_s: float = Field(0.2, gt=0, le=2.0, description="Time-delay embedding: spacing of stacked vectors (s).")
    path_len_s: float = Field(2.0, gt=0, le=8.0, description="Path enhancement: length of the diagonal average (s).")
    min_lag_s: float = Field(1.0, gt=0, le=30.0, description="Shorter lags are never recurrence (s).")
    rec_threshold: float = Field(
        0.6, gt=0, lt=1, description="Path-enhanced cosine similarity above which a lag is a recurrence."
    )
    depart_threshold: float = Field(
        0.3,
        gt=-1,
        lt=1,
        description="The content at t must have been less similar than this to t "
        "at some lag between 0 and the recurrence lag ('departs before it returns').",
    )
    norm_floor: float = Field(
        0.25,
        gt=0,
        description="Chroma residuals (after mean removal) smaller than this per stacked "
        "vector count as 'no content' (sustained drones, noise).",
    )
    min_run_s: float = Field(
        2.0,
        ge=0,
        le=30.0,
        description="A recurrence must persist this long (a run of consecutive "
        "recurring frames) to count; shorter matches are chance (default: the path-enhancement length).",
    )
    rate_window_s: float = Field(8.0, gt=0, description="Trailing window of the causal recurrence rate (s).")
    horizons_s: list[float] = Field(
        default_factory=lambda: [2.0, 4.0, 8.0], description="Horizons h of rec_within_h / res_within_h (s)."
    )
    # tension
    tension_smooth_s: float = Field(1.0, gt=0, description="Moving average of every tension component (s).")
    onset_window_s: float = Field(2.0, gt=0, description="Window of the onset density (s).")
    strain_window_s: float = Field(1.0, gt=0, description="Window of the spiral-array cloud (s).")
    key_window_s: float = Field(4.0, gt=0, description="Window of the chroma used for key clarity (s).")
    tension_weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(TENSION_COMPONENTS, 1.0),
        description="Weight of each z-scored component in the composite (normalised to sum 1).",
    )
    resolution_drop: float = Field(
        0.8,
        gt=0,
        description="A resolution is a fall of the composite by at least this many "
        "standard deviations from a peak to the following trough.",
    )
    resolution_max_fall_s: float = Field(4.0, gt=0, description="Longest peak-to-trough fall that counts (s).")
    # input checks
    min_duration_s: float = Field(2.0, gt=0, description="Shorter clips are rejected (s).")
    silence_peak: float = Field(
        SILENCE_PEAK_FS, gt=0, description="Clips whose peak |sample| is below this are rejected."
    )

    @field_validator("horizons_s")
    @classmethod
    def _horizons(cls, v: list[float]) -> list[float]:
        if not v or any(h <= 0 for h in v):
            raise ValueError(f"horizons_s: give positive horizons in seconds, got {v}")
        return v

    @field_validator("tension_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(TENSION_COMPONENTS)
        if unknown:
            raise ValueError(
                f"tension_weights: unknown components {sorted(unknown)}; choose from {list(TENSION_COMPONENTS)}"
            )
        if sum(v.values()) <= 0 or any(w < 0 for w in v.values()):
            raise ValueError(f"tension_weights: weights must be >= 0 with a positive sum, got {v}")
        return v


DEFAULT_TARGETS = ("rec_within_2s", "rec_within_4s", "rec_within_8s", "res_within_2s", "res_within_4s", "res_within_8s")
# How far each tension component looks past its frame (s), from its windows in musicinterp/annotate/tension.py:
# every component is a centred 1 s moving average (+0.5 s) of a 64-128 ms analysis window (+0.064 s); onset
# density also counts onsets in a centred 2 s window (+1 s) found with a 25-frame median threshold (+0.24 s);
# key unclarity correlates a centred 4 s chroma window (+2 s, chroma smoothed 0.2 s: +0.1 s). Shifted back by
# its look-ahead, a component sees audio in [t - 2 x look-ahead, t]: at most 5.33 s back (key unclarity).
# Tensile strain is left out: it measures the chroma cloud against the key of the whole clip, which no shift
# makes causal (the clip's future would leak into the controls).
DESCRIPTOR_LOOKAHEAD_S = {
    "tension_loudness_db": 0.564,
    "tension_onset_density_hz": 1.804,
    "tension_pitch_height_midi": 0.564,
    "tension_dissonance": 0.564,
    "tension_flatness_db": 0.564,
    "tension_key_unclarity": 2.664,
}


class AnalysisSpec(Spec):
    """Probes and statistics: does layer L at frame t predict an event at t + h beyond causal controls?

    See musicinterp/analysis/README.md for the method and why each default was chosen.
    """

    targets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        description="Binary (clip, time) label variables to predict, each with a '<name>_valid' mask; a name "
        "ending in '_<h>s' is read as horizon h seconds (its own value at t - h - 1 frame becomes a control).",
    )
    layers: list[int] | None = Field(
        None,
        description="Layers to probe (None = every layer in the store). Layer 0 (the token embeddings) "
        "is always added as a control layer.",
    )
    estimator: Literal["ridge", "logistic"] = Field(
        "ridge",
        description="'ridge': grouped-CV ridge probes at full width whose refits under permutation cost "
        "a few matrix products (musicinterp/analysis/ridge.py), so the permutation count can grow to what the grid "
        "needs; metrics AUROC and Brier. 'logistic': the first wave's L2 logistic probes (metrics AUROC and "
        "log-loss), each permutation a full refit: slow at full width, kept for comparison.",
    )
    reduced_width: int | None = Field(
        None,
        ge=1,
        description="Width of a seeded Gaussian random projection applied while reading (None = every "
        "feature, the default: a projection to k of d dimensions keeps about k/d of one direction's signal "
        "against isotropic noise; the power study in musicinterp/analysis/README.md measured the loss).",
    )
    ridge_grid: list[float] = Field(
        default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0],
        description="Ridge strengths relative to the training rows (lambda = value x n_train on standardised "
        "columns), chosen inside every training fold by an inner grouped CV on squared error.",
    )
    window_s: float = Field(
        10.0,
        gt=0,
        description="Permutation unit: label tracks are cut into windows of this length at fixed "
        "offsets in each clip; windows at the same offset with the same exact frame count trade label tracks "
        "(musicinterp/analysis/permutation.py). Longer than the longest horizon, so a splice point sits in few "
        "rows' label windows.",
    )
    frame_stride: int = Field(
        5,
        ge=1,
        description="Keep every k-th frame (5 = 10 Hz): less autocorrelation between kept frames, "
        "less memory and time. Inference is by clip/source either way.",
    )
    n_folds: int = Field(5, ge=2, description="Outer cross-validation folds, grouped by source_id (GroupKFold).")
    inner_folds: int = Field(
        3,
        ge=2,
        description="Inner grouped folds, inside each outer training fold only, that choose the "
        "regularisation strength.",
    )
    c_grid: list[float] = Field(
        default_factory=lambda: [0.001, 0.01, 0.1, 1.0],
        description="Inverse L2 strengths C of the logistic regression (sklearn convention) tried by the inner "
        "CV; chosen by inner out-of-fold log-loss.",
    )
    solver: Literal["newton", "lbfgs"] = Field(
        "newton",
        description="'newton': the project's exact Newton solver of the same L2 logistic objective "
        "(several times faster on small problems; tested equal to sklearn); 'lbfgs': sklearn LogisticRegression.",
    )
    n_permutations: int = Field(
        99,
        ge=1,
        description="Fewest permutation draws per cell (both models refit, inner CV included, every "
        "time); p_cluster uses these. More are drawn while the cell could still be a discovery (max_permutations).",
    )
    max_permutations: int | None = Field(
        None,
        ge=1,
        description="Most draws per cell. None = 2 x cells / alpha (cells = layers x targets), so that "
        "an isolated effect can reach q < alpha under Benjamini-Hochberg; a group with fewer arrangements is "
        "enumerated exactly.",
    )
    sequential_h: int = Field(
        10,
        ge=0,
        description="Besag-Clifford sequential stopping: draws stop once the null has beaten the observed "
        "statistic this many times (p = h / draws); 0 = always max_permutations draws.",
    )
    codec_lookahead_frames: int | None = Field(
        None,
        ge=0,
        description="Frames of later audio a frame's codes hear; the layer is read this many frames "
        "before the label. None = the store's attribute (measured at capture), else MusicGen's EnCodec (4).",
    )
    n_bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples of clusters for the gain's CI.")
    cluster_unit: Literal["source", "clip"] = Field(
        "source",
        description="Unit resampled by the bootstrap and clustered by the Wald test: 'source' keeps the "
        "clips of one track together (DESIGN: the unit of inference is the source when clips share one).",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Level of the tests, of the CI (1 - alpha) and of the BH FDR.")
    save_directions: Literal["significant", "all", "none"] = Field(
        "significant",
        description="Save the probe direction of every significant cell ('significant'), of every cell and of the "
        "random-model control ('all') or none, in the residual basis, as directions.safetensors + directions.json "
        "beside results.parquet (musicinterp/causal/directions.py).",
    )
    shifted_labels_control: bool = Field(
        True,
        description="Also run every (layer, target) with every clip's label track handed to another clip of "
        "its permutation class, at the same positions (a selectivity control after Hewitt & Liang 2019; the name "
        "is the first wave's): any effect there is an artefact.",
    )
    descriptor_lookahead_s: dict[str, float] = Field(
        default_factory=lambda: dict(DESCRIPTOR_LOOKAHEAD_S),
        description="Tension descriptors used as controls and how far each looks past its frame (s); each is "
        "shifted back by ceil(lookahead x 50) frames so that the control sees audio up to t only.",
    )
    position_basis_s: float = Field(
        1.0,
        ge=0,
        le=30.0,
        description="Position controls: Gaussian bumps of t every this many seconds (width the "
        "same) besides t itself, so that any smooth function of position is a control; 0 = linear position only.",
    )
    censor_clip_end: bool = Field(
        True,
        description="Drop frames within h of the clip's end. The labels mark them valid only when positive "
        "(an event was seen before the end), so keeping them selects frames on the outcome.",
    )
    min_sources: int = Field(
        3,
        ge=2,
        description="Fewer sources with valid frames than this give a result row with a note instead of a test.",
    )
    seed: int = Field(
        0,
        ge=0,
        le=SEED_MAX,
        description="Seed of the projection, the permutations, the bootstrap and the shifted labels.",
    )
    device: str = Field(
        "cpu",
        description="Where the ridge probes' eigendecompositions and per-block matrix products run: 'cpu' (numpy, "
        "the default and the reference), 'torch-cpu' (torch float64 on the CPU: the torch path without a GPU), "
        "'cuda' or 'cuda:N' (torch float64 on that GPU; checked when the analysis is planned). Gains agree with "
        "'cpu' to rounding (tested within 1e-9), p- and q-values are the same (musicinterp/analysis/backend.py). "
        "Part of the analysis's identity unless 'cpu'. The logistic estimator and p_cluster stay on numpy.",
    )

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json")
        if data["device"] == "cpu":  # the numpy path, as before the field existed: same fingerprints
            del data["device"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if v == "mps" or v.startswith("mps:"):
            raise ValueError(f"analysis.device={v!r}: MPS has no float64, which the ridge probes need; give 'cpu'")
        if not re.match(ANALYSIS_DEVICE_PATTERN, v):
            raise ValueError(f"analysis.device={v!r} is not one of 'cpu', 'torch-cpu', 'cuda', 'cuda:N'")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"targets: give distinct label names, got {v}")
        return v

    def permutation_budget(self, n_cells: int) -> int:
        """``max_permutations``, or enough draws that p can reach alpha / (2 x cells)."""
        if self.max_permutations is not None:
            return max(self.max_permutations, self.n_permutations)
        return max(self.n_permutations, math.ceil(2 * max(n_cells, 1) / self.alpha))

    @field_validator("c_grid")
    @classmethod
    def _c_grid(cls, v: list[float]) -> list[float]:
        if not v or any(c <= 0 for c in v):
            raise ValueError(f"c_grid: give positive values of C, got {v}")
        return sorted(v)


class GenerationSpec(Spec):
    """Generation-time capture: prompt with the start of each clip, sample a continuation, keep its states.

    See README "Generation-time capture". The captured layers, text condition and stored guidance half
    are the run's ``capture`` settings, so the continuation's states line up with the teacher-forced ones.
    """

    prompt_s: float = Field(
        5.0, gt=0, le=CLIP_MAX_S, description="Seconds at the start of each clip given as the prompt (teacher-forced)."
    )
    continuation_s: float = Field(5.0, gt=0, le=CLIP_MAX_S, description="Seconds sampled after the prompt.")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        description="Sampling seeds: one continuation per clip and seed (the clip id is mixed into each).",
    )
    guidance_scale: float = Field(
        3.0, ge=0.0, description="Classifier-free guidance: logits = uncond + scale x (cond - uncond) (MusicGen: 3)."
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of the sampling.")
    top_k: int = Field(250, ge=0, description="Sample among the k most likely codes (0 = all; MusicGen: 250).")
    top_p: float = Field(0.0, ge=0.0, le=1.0, description="Nucleus sampling mass (0 = off; MusicGen: off).")
    write_audio: bool = Field(True, description="Decode every continuation (with its prompt) to a wav file.")
    annotate: bool = Field(True, description="Annotate every continuation: the usual labels and cross-recurrence.")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"generation.seeds: give distinct seeds, got {v}")
        bad = [s for s in v if not 0 <= s <= SEED_MAX]
        if bad:
            raise ValueError(f"generation.seeds: each seed must be in 0..{SEED_MAX} (2**32 - 1), got {bad}")
        return v

    @model_validator(mode="after")
    def _fits(self) -> GenerationSpec:
        if self.prompt_s + self.continuation_s > CLIP_MAX_S:
            raise ValueError(
                f"generation: prompt_s + continuation_s = {self.prompt_s + self.continuation_s:g} s exceeds "
                f"MusicGen's context of {CLIP_MAX_S:g} s"
            )
        return self


class RunSpec(Spec):
    """A benchmark run: model x slice x capture settings."""

    name: str = Field("demo", description="Run name (letters, digits, '-', '_'); names the store.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    slice: SliceSpec = Field(default_factory=SliceSpec)
    capture: CaptureSpec = Field(default_factory=CaptureSpec)
    annotation: AnnotationSpec = Field(default_factory=AnnotationSpec)
    annotate: bool = Field(True, description="Annotate every clip (recurrence and tension labels) into the store.")
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    analyze: bool = Field(
        True, description="After a complete capture and annotation, run the probe analysis on the store."
    )
    control_store: str | None = Field(
        None,
        description="Store of the same slice captured from a random-weight model of the same architecture "
        "(another run's store.zarr); analysed beside this one as the 'random-model' control.",
    )

    generation: GenerationSpec | None = Field(
        None,
        description="Generation-time capture (`musicinterp generate`): prompt, continuation, sampling and seeds. "
        "None: the run does not generate.",
    )

    # What is captured and annotated names the run and its store; the analysis settings only key the
    # analysis caches, so changing them reuses the captured store. The generation settings are keyed by
    # their own fingerprint, recorded with the generated variables (musicinterp/generate/store.py), so a
    # run's teacher-forced store is generated into without capturing it again.
    STORE_EXCLUDES: ClassVar[frozenset[str]] = frozenset({"analysis", "analyze", "control_store", "generation"})

    def canonical_json(self) -> str:
        data = {k: v for k, v in self.model_dump(mode="json").items() if k not in self.STORE_EXCLUDES}
        # settings at the values they had before the field existed leave the fingerprint as it was: same runs,
        # same names (clip by clip, float16, no autocast)
        for key, before in (("batch_size", 1), ("reduce", "none"), ("autocast", False)):
            if data["capture"][key] == before:
                del data["capture"][key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"name: {v!r} must be non-empty letters, digits, '-' or '_'")
        return v


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message names the field."""


def format_validation_error(path: str, err: ValidationError) -> str:
    lines = [f"invalid config {path!r}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_run_spec(data: dict, origin: str = "<dict>") -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(origin, e)) from e


def load_run_spec(path: str | Path) -> RunSpec:
    """Read a YAML config; errors name the file and the offending field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file {str(path)!r} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return parse_run_spec(data, str(path))
