"""Seeded run stores for the analysis tests, written with plain xarray in the store schema (README).

``make_store(path, ...)`` writes a Zarr v3 store with ``resid(clip, layer, time, feature)`` float16 (NaN past
each clip's n_frames), ``source_id``, ``complete`` / ``annotated`` flags, ``in_clip``, ``n_frames``, the
recurrence / resolution labels with their valid masks, ``rec_lag_prev_s``, ``rec_rate_causal`` and the
tension components. Labels come from sparse random events; activations are AR(1) noise, except that
``planted_layer`` (when given) carries the upcoming-event indicator of ``planted_target`` plus noise in its
first ``planted_dims`` features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from musicinterp.analysis.stats import ar1_noise
from musicinterp.config import AnalysisSpec

FRAME_RATE_HZ = 50
HORIZONS_S = (2, 4, 8)
TENSION = (
    "tension_loudness_db",
    "tension_onset_density_hz",
    "tension_pitch_height_midi",
    "tension_dissonance",
    "tension_flatness_db",
    "tension_key_unclarity",
    "tension_tensile_strain",
)


# the analysis flow's smallest real grid: one layer, one target, 19 draws (the flow tests share it)
FLOW_TEST_SPEC = AnalysisSpec(
    targets=["rec_within_2s"],
    layers=[1],
    frame_stride=10,
    n_folds=3,
    inner_folds=2,
    n_permutations=19,
    max_permutations=19,
    n_bootstrap=20,
    shifted_labels_control=False,
)


def within(events: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """1 where an event falls in (t, t + h]; valid where positive or t + h is inside the clip."""
    n = len(events)
    c = np.r_[0, np.cumsum(events)]
    t = np.arange(n)
    hi = np.minimum(t + h, n - 1)
    y = (c[hi + 1] - c[t + 1]) > 0
    return y.astype(np.int8), y | (t + h < n)


def make_store(
    path: str | Path,
    *,
    n_clips: int = 24,
    n_sources: int = 12,
    n_frames: int | list[int] = 200,
    layers: int = 3,
    hidden: int = 16,
    seed: int = 0,
    planted_layer: int | None = None,
    planted_target: str = "rec_within_2s",
    planted_dims: int = 4,
    planted_snr: float = 1.5,
    event_rate_hz: float = 0.25,
    phi: float = 0.95,
    weights: str = "random",
    constant_target: str | None = None,
) -> str:
    """Write the store and return its path. ``constant_target`` is set to 0 everywhere (a degenerate target)."""
    rng = np.random.default_rng(seed)
    lens = [n_frames] * n_clips if isinstance(n_frames, int) else list(n_frames)
    T = max(lens)
    n_layers = layers + 1
    resid = np.full((n_clips, n_layers, T, hidden), np.nan, dtype=np.float16)
    names = [f"{kind}_within_{h}s" for kind in ("rec", "res") for h in HORIZONS_S]
    lab = {k: np.zeros((n_clips, T), np.int8) for k in names}
    lab.update({f"{k}_valid": np.zeros((n_clips, T), bool) for k in names})
    cont = {k: np.zeros((n_clips, T), np.float32) for k in ("rec_lag_prev_s", "rec_rate_causal", *TENSION)}
    cont_valid = np.zeros((n_clips, T), bool)
    for c, n in enumerate(lens):
        for kind in ("rec", "res"):
            ev = (rng.random(n) < event_rate_hz / FRAME_RATE_HZ).astype(int)
            for h in HORIZONS_S:
                y, v = within(ev, h * FRAME_RATE_HZ)
                lab[f"{kind}_within_{h}s"][c, :n], lab[f"{kind}_within_{h}s_valid"][c, :n] = y, v
        for k in cont:
            cont[k][c, :n] = ar1_noise(rng, n, 1, phi)[:, 0]
        cont_valid[c, :n] = rng.random(n) < 0.3
        for layer in range(n_layers):
            x = ar1_noise(rng, n, hidden, phi)
            if layer == planted_layer:
                y = lab[planted_target][c, :n].astype(float)
                x[:, :planted_dims] = planted_snr * (y[:, None] - 0.5) * 2 + rng.standard_normal((n, planted_dims))
            resid[c, layer, :n] = x.astype(np.float16)
    if constant_target is not None:
        lab[constant_target][:] = 0
    clip_ids = np.array([f"clip{c:03d}" for c in range(n_clips)], dtype=object)
    in_clip = np.arange(T)[None, :] < np.array(lens)[:, None]
    data = {
        "resid": (("clip", "layer", "time", "feature"), resid),
        "n_frames": (("clip",), np.array(lens, np.int32)),
        "source_id": (("clip",), np.array([f"src{c % n_sources:02d}" for c in range(n_clips)], dtype=object)),
        "complete": (("clip",), np.ones(n_clips, bool)),
        "annotated": (("clip",), np.ones(n_clips, bool)),
        "in_clip": (("clip", "time"), in_clip),
        "rec_lag_prev_s_valid": (("clip", "time"), cont_valid),
        **{k: (("clip", "time"), v) for k, v in lab.items()},
        **{k: (("clip", "time"), v) for k, v in cont.items()},
    }
    ds = xr.Dataset(
        data,
        coords={
            "clip": clip_ids,
            "layer": np.arange(n_layers, dtype=np.int32),
            "time": np.arange(T) / FRAME_RATE_HZ,
            "feature": np.arange(hidden, dtype=np.int32),
        },
        attrs={"weights": weights, "config_fingerprint": f"test-{seed}", "model_id": "test-factory"},
    )
    enc = {
        "resid": {"chunks": (1, n_layers, T, hidden)},
        **{k: {"chunks": (1, T)} for k, v in data.items() if v[0] == ("clip", "time")},
    }
    ds.to_zarr(str(path), mode="w", zarr_format=3, consolidated=False, encoding=enc)
    return str(path)
