"""One small real run, made once per test process: the tiny offline model (random weights) captures and
annotates four synthetic 8 s pieces with planted returns, through ``musicinterp.run.run_inline``.

The README snippets, the Python API tests and the example script all read it. It lives in a temporary
folder named like a real run (``runs/demo-<fingerprint>``) and is removed when the process exits.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

SMALL_ANALYSIS = {"targets": ["res_within_2s"], "n_permutations": 19, "n_bootstrap": 50, "frame_stride": 5}


def small_run_spec():
    from musicinterp.config import RunSpec

    return RunSpec(
        name="demo",
        slice={
            "name": "demo",
            "sources": [{"kind": "synthetic", "n_pieces": 4, "duration_s": 8, "seed": 0}],
            "n_shards": 1,
        },
        analysis=SMALL_ANALYSIS,
    )


@cache
def small_run() -> Path:
    """The run folder (``.../runs/demo-<fingerprint>``) of a finished, annotated, not yet analysed run."""
    from musicinterp.run import run_inline

    top = Path(tempfile.mkdtemp(prefix="musicinterp-small-run-"))
    atexit.register(shutil.rmtree, top, ignore_errors=True)
    summary = run_inline(small_run_spec(), str(top / "runs"))
    return Path(summary.root)
