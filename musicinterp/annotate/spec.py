"""The annotation settings live with every other setting in :mod:`musicinterp.config`; re-exported here."""

from __future__ import annotations

from musicinterp.config import TENSION_COMPONENTS, AnnotationSpec
from musicinterp.frames import FRAME_RATE_HZ

__all__ = ["TENSION_COMPONENTS", "AnnotationSpec", "frames_of"]


def frames_of(seconds: float) -> int:
    """Whole number of 50 Hz frames in ``seconds`` (at least 1)."""
    return max(1, int(round(seconds * FRAME_RATE_HZ)))
