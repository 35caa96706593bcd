"""Every setting a user can change, as pydantic models, in one place.

The models become the Prefect UI's run form and the YAML config format. Each has a stable
``fingerprint()`` (sha256 of its canonical JSON) that names stores, cache keys and results, so two
runs of the same config are the same run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from musicinterp.frames import CLIP_MAX_S

OFFLINE_MODEL_NAMES = ("tiny", "musicgen-small")
HUB_MODEL_IDS = ("facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large",
                 "facebook/musicgen-melody")


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
    seed: int = Field(0, description="Seed of the random weights for offline models.")
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
    seed: int = Field(0, description="Seed for the pieces; the same seed gives the same audio.")
    hard: bool = Field(
        False, description="Vary the return: a few percent slower, another timbre, noise at 20 dB SNR."
    )
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


SourceSpec = Annotated[SyntheticSource | Music21Source | AudioDirSource, Field(discriminator="kind")]


class SliceSpec(Spec):
    """The benchmark slice: which clips, how long, how many shards."""

    name: str = Field("demo", description="Name of the slice; used in run names.")
    sources: list[SourceSpec] = Field(
        default_factory=lambda: [SyntheticSource()], description="Where the clips come from."
    )
    clip_s: float = Field(
        CLIP_MAX_S, gt=0, le=CLIP_MAX_S,
        description=f"Longest clip in seconds; longer sources are cut (MusicGen's context is {CLIP_MAX_S:g} s).",
    )
    min_clip_s: float = Field(1.0, gt=0, description="Clips (and tails) shorter than this are rejected.")
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
        3.0, ge=0.0,
        description="Classifier-free guidance scale of the run being imitated (MusicGen default 3). "
        "It mixes the two halves' logits only; activations are per half.",
    )
    half: Literal["conditional", "unconditional"] = Field(
        "conditional",
        description="Which classifier-free-guidance half to store: the text-conditioned one or the "
        "null-condition one (encoder states zeroed).",
    )
    layers: list[int] | None = Field(
        None, description="Layers to store (0 = embeddings); default: all."
    )
    device: str = Field("cpu", description="torch device for the model, e.g. 'cpu' or 'cuda'.")


class RunSpec(Spec):
    """A benchmark run: model x slice x capture settings."""

    name: str = Field("demo", description="Run name (letters, digits, '-', '_'); names the store.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    slice: SliceSpec = Field(default_factory=SliceSpec)
    capture: CaptureSpec = Field(default_factory=CaptureSpec)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"name: {v!r} must be non-empty letters, digits, '-' or '_'")
        return v

    def store_name(self) -> str:
        return f"{self.name}-{self.fingerprint(10)}.zarr"


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message names the field."""


def _format_validation_error(path: str, err: ValidationError) -> str:
    lines = [f"invalid config {path!r}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_run_spec(data: dict, origin: str = "<dict>") -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(origin, e)) from e


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
