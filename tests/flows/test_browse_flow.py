"""The browse flow on the test Prefect server: the site is built and linked from a link artifact."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from run_factories import small_run


async def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0] if found else None


def test_browse_flow__builds_the_site_and_publishes_its_link(tmp_path):
    from musicinterp_flows.browse import artifact_key, browse

    run = tmp_path / "demo-run"
    shutil.copytree(small_run(), run)
    site = browse(str(run), similarity=False)
    index = Path(site["index"])
    assert index.is_file() and index.parent == (run / "browse").resolve()
    link = asyncio.run(_artifact(artifact_key(str(run), "browser")))
    assert link is not None and index.as_uri() in str(link.data)  # Prefect keeps a link artifact as markdown
    notes = asyncio.run(_artifact(artifact_key(str(run), "browser-notes")))
    assert notes is not None and "no saved probe directions" in str(notes.data)
