"""The generation flow on a real (test) Prefect server: continuations in the store, artifacts, failures named."""

from __future__ import annotations

import asyncio

import pytest
import xarray as xr
from factories import write_tone
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from musicinterp.config import RunSpec
from musicinterp_flows.generate import GenerationIncomplete, generate

pytestmark = pytest.mark.flow


async def _artifact(key: str):
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0] if found else None


def test_generate_flow__generates_every_pair_and_names_the_clip_too_short_to_prompt(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_tone(audio / "long.wav", 3.0)
    write_tone(audio / "short.wav", 1.5)  # shorter than the 2 s prompt
    spec = RunSpec(
        name="gen-flow",
        slice={"sources": [{"kind": "audio_dir", "path": str(audio)}], "n_shards": 2},
        generation={"prompt_s": 2.0, "continuation_s": 0.4, "seeds": [0, 1], "top_k": 50, "write_audio": False},
    )
    with pytest.raises(GenerationIncomplete, match="short.wav.*shorter than generation.prompt_s"):
        generate(spec=spec, out=str(tmp_path / "out"))
    store = next((tmp_path / "out").glob("gen-flow-*/store.zarr"))
    ds = xr.open_zarr(store)  # consolidated at the end of the flow, failed or not
    done = {str(c): bool(ds["gen_complete"].sel(clip=c).values.all()) for c in ds["clip"].values}
    assert sorted(done.values()) == [False, True] and ds["gen_annotated"].values.sum() == 2
    summary = asyncio.run(_artifact("gen-flow-generate-summary"))
    assert summary is not None and "weights: random" in summary.data and "2 of 4 continuations" in summary.data
    assert asyncio.run(_artifact("gen-flow-generate-shards")) is not None
