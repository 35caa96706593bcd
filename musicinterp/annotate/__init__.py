"""Per-frame recurrence and tension labels on the 50 Hz grid (Essentia); see README.md here."""

from musicinterp.annotate.labels import (
    Annotation,
    annotate,
    annotate_full,
    annotate_windows,
    label_schema,
    prepare_samples,
    to_csv,
)
from musicinterp.annotate.spec import AnnotationSpec

__all__ = ["Annotation", "AnnotationSpec", "annotate", "annotate_full", "annotate_windows", "label_schema",
           "prepare_samples", "to_csv"]
