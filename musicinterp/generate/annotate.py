"""Labels of a continuation: the usual ones (musicinterp.annotate) and its cross-recurrence with the prompt.

Both come from the decoded audio of prompt + continuation, annotated as one piece, and only the
continuation's frames are kept: recurrence labels there may point back into the prompt, and the
cross-recurrence (:func:`musicinterp.annotate.recurrence.cross_recurrence`) asks, per continuation frame,
whether and at which lag material of the prompt recurs, never counting the prompt's frames as targets.
"""

from __future__ import annotations

import numpy as np

from musicinterp.annotate import annotate_full, label_schema
from musicinterp.annotate.recurrence import cross_recurrence, embed, tonal_presence
from musicinterp.config import AnnotationSpec
from musicinterp.frames import FRAME_RATE_HZ
from musicinterp.sources.base import ClipError

XREC_SCHEMA: dict[str, dict[str, str]] = {
    "xrec": {"dtype": "int8", "units": "0/1", "description": "material of the prompt recurs at this frame"},
    "xrec_lag_s": {
        "dtype": "float32",
        "units": "s",
        "description": "lag from the most recent occurrence in the prompt of the material heard at t",
        "valid_mask": "xrec_lag_s_valid",
    },
    "xrec_lag_s_valid": {"dtype": "bool", "units": "", "description": "where xrec_lag_s is defined"},
    "xrec_strength": {
        "dtype": "float32",
        "units": "0-1",
        "description": "path-enhanced similarity of the best accepted recurrence of prompt material at t",
    },
}


def continuation_label_schema(spec: AnnotationSpec) -> dict[str, dict[str, str]]:
    """Every label of :func:`annotate_continuation` (stored with the ``gen_`` prefix)."""
    return {**label_schema(spec), **XREC_SCHEMA}


def annotate_continuation(
    samples: np.ndarray, n_prompt: int, spec: AnnotationSpec, clip_id: str = "<continuation>"
) -> dict[str, np.ndarray]:
    """Labels of the frames ``n_prompt..`` of ``samples`` (32 kHz mono prompt + continuation)."""
    ann = annotate_full(samples, spec, clip_id)
    n = len(ann.labels["time"])
    if not 0 < n_prompt < n:
        raise ClipError(clip_id, f"a prompt of {n_prompt} frames leaves no continuation in {n} frames")
    labels = {k: v[n_prompt:] for k, v in ann.labels.items() if k != "time"}
    x = embed(ann.features.hpcp, tonal_presence(ann.features.peak_energy), spec, causal=False)
    cross = cross_recurrence(x, n_prompt, spec)
    ok = cross.lag > 0
    labels["xrec"] = ok.astype(np.int8)
    labels["xrec_lag_s"] = np.where(ok, cross.lag / FRAME_RATE_HZ, 0.0).astype(np.float32)
    labels["xrec_lag_s_valid"] = ok
    labels["xrec_strength"] = cross.strength.astype(np.float32)
    return labels
