"""Per-frame recurrence and tension labels on the 50 Hz grid (Essentia); see README.md here.

The labels: ``features`` -> ``recurrence`` / ``spiral`` -> ``tension`` -> ``labels`` (``annotate``, re-exported
below), drawn by ``plot``. Ground truth: ``truth`` (returns, true lags, ``truth_labels``). Evaluation,
imported by nothing in the pipeline: ``scoring`` (metrics) and ``validation`` (the harness and report);
``corpus`` is the chorale scan order they use, ``families`` the material beyond the project's own (music21
corpus families, splices of recorded music, blind-spot probes).
"""

from musicinterp.annotate.labels import (
    Annotation,
    annotate,
    annotate_full,
    annotate_windows,
    label_schema,
    prepare_samples,
    to_csv,
)
from musicinterp.config import AnnotationSpec

__all__ = [
    "Annotation",
    "AnnotationSpec",
    "annotate",
    "annotate_full",
    "annotate_windows",
    "label_schema",
    "prepare_samples",
    "to_csv",
]
