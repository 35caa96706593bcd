"""Feature browser speed: the site of N probe directions against reading the store once, in the same process.

    python benchmarks/browse_speed.py --features 1000 [--run RUN_DIR] [--no-similarity]

Without ``--run`` it makes the tests' small run (tiny offline model, random weights: four 8 s synthetic
pieces, captured and annotated). A copy of the run gets ``--features`` random unit directions spread over its
layers 1.. (saved as an analysis's directions.json), then times (a) the baseline: reading every complete clip's
residual stream once (all layers, cast to float32), and (b) ``build_site`` on it, split into scan, audio
(model load + one decode per clip + WAV and waveform per (clip, window)) and pages. Prints each time, the time
per page and the ratio to (a). Threads pinned to one.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--run", help="a run folder (default: make the tests' small run)")
    ap.add_argument("--no-similarity", action="store_true")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()

    import xarray as xr

    from musicinterp.browse import build_site
    from musicinterp.causal.directions import Direction, save_directions

    top = Path(tempfile.mkdtemp(prefix="browse-speed-"))
    try:
        if args.run:
            src = Path(args.run)
        else:
            from run_factories import small_run_spec

            from musicinterp.run import run_inline

            src = Path(run_inline(small_run_spec(), str(top / "runs")).root)
        run = top / "run"
        shutil.copytree(src, run, ignore=shutil.ignore_patterns("browse", "analysis", "sae-*"))
        ds = xr.open_zarr(str(run / "store.zarr"), chunks=None)
        d, layers = int(ds.sizes["feature"]), [int(x) for x in ds["layer"].values if int(x) > 0]
        rng = np.random.default_rng(0)
        dirs = [
            Direction(f"synthetic-{i}", layers[i % len(layers)], rng.standard_normal(d), "probe", "synthetic")
            for i in range(args.features)
        ]
        save_directions(dirs, run / "analysis")
        t = time.perf_counter()
        complete = np.flatnonzero(ds["complete"].values)
        for c in complete:
            n = int(ds["n_frames"].values[c])
            ds["resid"].isel(clip=int(c), time=slice(0, n)).values.astype(np.float32)
        base = time.perf_counter() - t
        res = build_site(run, top / "site", top_clips=args.top, similarity=not args.no_similarity)
        tim = res.timings_s
        print(
            f"store: {len(complete)} clips, {int(ds['n_frames'].values.sum())} frames, {len(ds['layer'])} layers, d={d}"
        )
        print(f"(a) read every clip once: {base:.2f} s")
        for k in ("discover_s", "scan_s", "audio_s", "pages_s", "total_s"):
            print(f"(b) {k:<11} {tim[k]:8.2f} s  ({tim[k] / base:8.1f} x (a))")
        print(
            f"{len(res.pages)} pages, {res.audio_files} WAV files; "
            f"{1000 * tim['pages_s'] / len(res.pages):.1f} ms per page"
        )
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
