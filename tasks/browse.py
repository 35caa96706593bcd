"""Task of the browse flow: build a run's feature browser (musicinterp.browse). Not cached: the site is
cheap to rebuild and should reflect whatever the run folder holds now (a new SAE ranking, an intervention)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from musicinterp.browse import build_site


@task(name="browse-build-site", task_run_name="feature browser of {run_dir}", cache_policy=None, retries=1)
def build(
    run_dir: str,
    out: str | None = None,
    top_clips: int = 5,
    rank_dirs: list[str] | None = None,
    intervention_dirs: list[str] | None = None,
    similarity: bool = True,
) -> dict[str, Any]:
    """Write the site; returns its index path, page count, notes and timings (never arrays)."""
    logger = get_run_logger()
    result = build_site(
        run_dir,
        out,
        top_clips=top_clips,
        rank_dirs=list(rank_dirs or []),
        intervention_dirs=list(intervention_dirs or []),
        similarity=similarity,
        progress=lambda m: logger.info("%s", m),
    )
    return {
        "index": str(result.index.resolve()),
        "pages": len(result.pages),
        "audio_files": result.audio_files,
        "notes": result.notes,
        "timings_s": {k: round(v, 2) for k, v in result.timings_s.items()},
    }
