"""Listening: windows of a few seconds around a peak, decoded from the store's EnCodec codes with the model's
own codec, written once per (clip, window) as 16-bit mono WAV and shared by every page that needs them.

Windows sit on a grid (starts on whole seconds) so that features peaking near each other in a clip share one
file; the page marks each feature's own peak on the shared waveform. The samples are scaled to a peak of
``PEAK_LEVEL`` after removing their mean (the page says so): decoded audio of a random-weight codec can be
far too quiet or too loud.
"""

from __future__ import annotations

import logging
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from musicinterp.frames import FRAME_RATE_HZ, SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

WINDOW_S = 4  # seconds of audio per segment
GRID_S = 1  # segment starts fall on whole multiples of this
PEAK_LEVEL = 0.9  # full scale = 1
CODES_FILL = -1  # the store's fill for codes not written


@dataclass(frozen=True)
class Window:
    clip: int
    start: int  # frames
    stop: int

    @property
    def seconds(self) -> float:
        return (self.stop - self.start) / FRAME_RATE_HZ

    @property
    def name(self) -> str:
        return f"c{self.clip:05d}-{self.start:06d}-{self.stop:06d}"


def window_around(clip: int, peak: int, n_frames: int, window_s: float = WINDOW_S) -> Window:
    """The grid window of about ``window_s`` seconds that holds ``peak`` at least a grid step from its edges
    (or as far from them as the clip allows)."""
    width = min(int(round(window_s * FRAME_RATE_HZ)), n_frames)
    grid = int(GRID_S * FRAME_RATE_HZ)
    start = ((peak - width // 2) // grid) * grid
    start = max(0, min(start, n_frames - width))
    return Window(clip, start, start + width)


def write_wav(path: Path, samples: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> Path:
    """16-bit PCM mono WAV, mean removed and scaled to a peak of PEAK_LEVEL (silence stays silent)."""
    x = np.nan_to_num(np.asarray(samples, np.float64))
    x = x - x.mean() if x.size else x
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 0:
        x = x * (PEAK_LEVEL / peak)
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate_hz)
        w.writeframes(pcm.tobytes())
    return path


class Decoder:
    """The store's model, loaded on first use from its ``config_json``; ``error`` says why there is none."""

    def __init__(self, attrs: dict[str, Any], device: str = "cpu"):
        self.attrs = attrs
        self.device = device
        self._loaded: Any = None
        self.error: str | None = None
        self.cache: dict[tuple[int, int, int], np.ndarray] = {}

    def model(self) -> Any:
        if self._loaded is None and self.error is None:
            import json

            from musicinterp.config import RunSpec
            from musicinterp.models import load_model

            raw = self.attrs.get("config_json")
            if not raw:
                self.error = "the store has no config_json attribute, so its model (and codec) is unknown"
                return None
            try:
                self._loaded = load_model(RunSpec.model_validate(json.loads(raw)).model, device=self.device)
            except Exception as e:  # noqa: BLE001 - no audio is a note on the page, not a failed site
                self.error = f"the model's codec could not be loaded ({type(e).__name__}: {e})"
                log.warning("browser: %s", self.error)
        return self._loaded

    def decode(self, codes: np.ndarray) -> np.ndarray | None:
        """32 kHz mono samples of codes ``(codebook, frame)``; None when the codec is unavailable."""
        loaded = self.model()
        if loaded is None:
            return None
        if (codes == CODES_FILL).any():
            raise ValueError("codes hold the fill value (-1): the clip's codes were not written")
        from musicinterp.generate.sampling import decode_codes

        return decode_codes(loaded, codes)
