"""Where a run's files live: the run folder ``{out}/{name}-{fingerprint}`` and everything in it.

The folder is derived from (config, output URL) here and nowhere else; every stage after planning
is handed the folder itself. Local paths and fsspec URLs (``s3://...``) alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from musicinterp.config import RunSpec

RUN_FINGERPRINT_CHARS = 10  # digits of the config fingerprint in the run folder's name
STORE_DIR = "store.zarr"
MANIFEST_FILE = "manifest.json"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunPaths:
    """The files of one run, under ``root`` (a local path or an fsspec URL)."""

    root: str

    @classmethod
    def for_spec(cls, spec: RunSpec, out: str) -> RunPaths:
        """The run folder of ``spec`` under ``out``: the same config always lands in the same folder."""
        return cls(f"{out.rstrip('/')}/{spec.name}-{spec.fingerprint(RUN_FINGERPRINT_CHARS)}")

    @property
    def store(self) -> str:
        return f"{self.root}/{STORE_DIR}"

    @property
    def manifest(self) -> str:
        return f"{self.root}/{MANIFEST_FILE}"

    @property
    def run_file(self) -> str:
        """The config and the planning stage's result, for people reading the folder."""
        return f"{self.root}/{RUN_FILE}"

    @property
    def summary_json(self) -> str:
        return f"{self.root}/summary.json"

    @property
    def summary_md(self) -> str:
        return f"{self.root}/summary.md"

    @property
    def analysis(self) -> str:
        """Default folder of the probe analysis of this run's store."""
        return f"{self.root}/analysis"

    @property
    def shards_dir(self) -> str:
        return f"{self.root}/shards"

    @property
    def annotations_dir(self) -> str:
        return f"{self.root}/annotations"

    def shard_file(self, shard: int) -> str:
        return f"{self.shards_dir}/{shard:05d}.json"

    def annotation_file(self, index: int) -> str:
        return f"{self.annotations_dir}/{index:05d}.json"

    def plot_file(self, index: int) -> str:
        return f"{self.root}/plots/{index:05d}.png"
