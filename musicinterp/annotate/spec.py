"""The annotation settings (one pydantic model; its fingerprint names cached annotations)."""

from __future__ import annotations

from pydantic import Field, field_validator

from musicinterp.config import Spec

TENSION_COMPONENTS = ("loudness", "onset_density", "pitch_height", "dissonance", "flatness",
                      "key_unclarity", "tensile_strain")


class AnnotationSpec(Spec):
    """How recurrence and tension labels are computed (see musicinterp/annotate/README.md)."""

    # recurrence
    chroma_smooth_s: float = Field(0.2, gt=0, le=2.0, description="Moving average of the HPCP before embedding (s).")
    embed_dim: int = Field(7, ge=1, le=16, description="Time-delay embedding: number of stacked chroma vectors.")
    embed_step_s: float = Field(0.2, gt=0, le=2.0, description="Time-delay embedding: spacing of stacked vectors (s).")
    path_len_s: float = Field(2.0, gt=0, le=8.0, description="Path enhancement: length of the diagonal average (s).")
    min_lag_s: float = Field(1.0, gt=0, le=30.0, description="Shorter lags are never recurrence (s).")
    rec_threshold: float = Field(
        0.6, gt=0, lt=1, description="Path-enhanced cosine similarity above which a lag is a recurrence.")
    depart_threshold: float = Field(
        0.3, gt=-1, lt=1, description="The content at t must have been less similar than this to t "
        "at some lag between 0 and the recurrence lag ('departs before it returns').")
    norm_floor: float = Field(
        0.25, gt=0, description="Chroma residuals (after mean removal) smaller than this per stacked "
        "vector count as 'no content' (sustained drones, noise).")
    rate_window_s: float = Field(8.0, gt=0, description="Trailing window of the causal recurrence rate (s).")
    horizons_s: list[float] = Field(
        default_factory=lambda: [2.0, 4.0, 8.0], description="Horizons h of rec_within_h / res_within_h (s).")
    # tension
    tension_smooth_s: float = Field(1.0, gt=0, description="Moving average of every tension component (s).")
    onset_window_s: float = Field(2.0, gt=0, description="Window of the onset density (s).")
    strain_window_s: float = Field(1.0, gt=0, description="Window of the spiral-array cloud (s).")
    key_window_s: float = Field(4.0, gt=0, description="Window of the chroma used for key clarity (s).")
    tension_weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(TENSION_COMPONENTS, 1.0),
        description="Weight of each z-scored component in the composite (normalised to sum 1).")
    resolution_drop: float = Field(
        0.8, gt=0, description="A resolution is a fall of the composite by at least this many "
        "standard deviations from a peak to the following trough.")
    resolution_max_fall_s: float = Field(4.0, gt=0, description="Longest peak-to-trough fall that counts (s).")
    # input checks
    min_duration_s: float = Field(2.0, gt=0, description="Shorter clips are rejected (s).")
    silence_peak: float = Field(1e-4, gt=0, description="Clips whose peak |sample| is below this are rejected.")

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
            raise ValueError(f"tension_weights: unknown components {sorted(unknown)}; "
                             f"choose from {list(TENSION_COMPONENTS)}")
        if sum(v.values()) <= 0 or any(w < 0 for w in v.values()):
            raise ValueError(f"tension_weights: weights must be >= 0 with a positive sum, got {v}")
        return v


def frames_of(seconds: float) -> int:
    """Whole number of 50 Hz frames in ``seconds`` (at least 1)."""
    from musicinterp.frames import FRAME_RATE_HZ

    return max(1, int(round(seconds * FRAME_RATE_HZ)))
