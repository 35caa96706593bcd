"""Generation-time capture: continue each clip's prompt, keep the continuation's residual stream, annotate it.

Modules by role:

- ``sampling``: :func:`generate_continuation` (one prompt, one seed, the KV cache, an optional hook
  context for interventions) and :func:`decode_codes`;
- ``store``: the generated variables beside the teacher-forced ones in the run's store (template, region
  writes, the ``gen_complete`` / ``gen_annotated`` flags written last);
- ``annotate``: the usual labels of a continuation and its cross-recurrence with the prompt;
- ``shard``: a shard's unfinished (clip, seed) pairs, generated, written, decoded and annotated;
- ``toy_return``: the pair toy's known answer in generation (does section A return, by cue).
"""

from musicinterp.generate.sampling import (
    Continuation,
    GenerationError,
    InterventionFactory,
    decode_codes,
    generate_continuation,
    sampling_seed,
)

__all__ = [
    "Continuation",
    "GenerationError",
    "InterventionFactory",
    "decode_codes",
    "generate_continuation",
    "sampling_seed",
]
