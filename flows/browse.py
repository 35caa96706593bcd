"""The browse flow: build a run's feature browser and link it from the flow run's artifacts (a file:// link
to index.html, and a markdown note of what the run lacked). The work is in musicinterp.browse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from musicinterp_tasks import browse as t


def artifact_key(run_dir: str, what: str) -> str:
    name = Path(run_dir.rstrip("/")).name.lower()
    return f"{''.join(c if c.isalnum() else '-' for c in name)}-{what}"


@flow(name="browse", persist_result=False)
def browse(
    run_dir: str,
    out: str | None = None,
    top_clips: int = 5,
    rank_dirs: list[str] | None = None,
    intervention_dirs: list[str] | None = None,
    similarity: bool = True,
) -> dict[str, Any]:
    """Write the static feature browser of ``run_dir`` (default into ``run_dir/browse``) and publish its link.

    ``rank_dirs`` / ``intervention_dirs``: SAE rankings and intervention runs kept outside the run folder;
    ``similarity``: compute self-similarity for clips without an annotation plot (the slow part).
    """
    site = t.build(run_dir, out, top_clips, rank_dirs, intervention_dirs, similarity)
    url = Path(site["index"]).as_uri()
    create_link_artifact(
        url,
        link_text=f"feature browser: {site['pages']} pages",
        key=artifact_key(run_dir, "browser"),
        description=f"static site of {run_dir} (open the file on the machine that holds it)",
    )
    lines = [f"# Feature browser of `{run_dir}`", "", f"[{url}]({url})", "", f"{site['pages']} pages", ""]
    lines += [f"- {n}" for n in site["notes"]]
    create_markdown_artifact("\n".join(lines), key=artifact_key(run_dir, "browser-notes"), description="browser")
    return site | {"url": url}
