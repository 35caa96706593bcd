"""The one time grid everything lives on: 32 kHz audio, 50 Hz EnCodec frames.

Frame ``i`` covers samples ``[i * HOP, (i + 1) * HOP)`` and is centred at ``i / 50`` s in the
store's ``time`` coordinate (DESIGN.md section 3, "Frames").

The delay pattern (MusicGen, Copet et al. 2023): the decoder input at step ``s`` holds codebook
``k`` of frame ``s - k - 1`` (step 0 is the start token). The residual stream stored at frame ``i``
is the one at decoder step ``i + 1``: the first step that has consumed frame ``i`` (its first
codebook) and the last that has consumed nothing of any later frame. Activations at frame ``i``
therefore depend on codes of frames ``<= i`` only; codebook ``k`` of frame ``i`` is consumed at
step ``i + 1 + k``.
"""

from __future__ import annotations

import math

SAMPLE_RATE_HZ = 32_000
FRAME_RATE_HZ = 50
HOP_SAMPLES = SAMPLE_RATE_HZ // FRAME_RATE_HZ  # 640
CLIP_MAX_S = 30.0
DELAY_CONVENTION = (
    "delay pattern: decoder step s holds codebook k of frame s-k-1 (step 0 = start token); "
    "time index i stores decoder step i+1, so activations at frame i depend only on codes of frames <= i"
)


def n_frames(n_samples: int) -> int:
    """Number of EnCodec frames for a clip of ``n_samples`` at 32 kHz (EnCodec pads the last hop)."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    return math.ceil(n_samples / HOP_SAMPLES)


def frames_of(seconds: float) -> int:
    """Whole number of 50 Hz frames in ``seconds`` (at least 1)."""
    return max(1, int(round(seconds * FRAME_RATE_HZ)))
