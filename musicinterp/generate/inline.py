"""``generate_inline``: every stage of a generation in this process, without Prefect (tests, notebooks)."""

from __future__ import annotations

from musicinterp.config import RunSpec
from musicinterp.generate.shard import (
    GenerationSummary,
    generate_shard,
    generation_spec,
    prepare_generation,
    summarise_generation,
)


def generate_inline(spec: RunSpec, out: str, only_shards: list[int] | None = None) -> GenerationSummary:
    """Plan, generate every shard (or ``only_shards``) one after another, summarise."""
    generation = generation_spec(spec)
    prepared = prepare_generation(spec, out)
    shards = range(prepared.run.n_shards) if only_shards is None else only_shards
    for shard in shards:
        generate_shard(spec.model, spec.capture, generation, spec.annotation, prepared, shard)
    return summarise_generation(prepared)
