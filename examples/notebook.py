"""musicinterp from Python, as in a notebook: open a run, read its store, analyse it, and capture and
annotate audio of your own. Run it on a finished run folder:

    python examples/notebook.py runs/demo-<fingerprint>

(``make demo`` makes one). tests/test_api.py runs this script on a small run.
"""

from __future__ import annotations

import sys

import numpy as np

import musicinterp as mi


def main(run_folder: str) -> None:
    run = mi.open_run(run_folder)
    print(run, f"{len(run.complete_clips)} complete clips")
    ds = run.store  # plain xarray, lazy
    clip = run.complete_clips[0]
    n = int(ds["n_frames"].sel(clip=clip))
    layer1 = ds["resid"].sel(clip=clip, layer=1).isel(time=slice(0, n)).astype("float32").values
    print(f"{clip}: layer 1 is {layer1.shape} (time x feature)")

    # the probe analysis with the run's own settings, 19 fixed permutation draws (a first look)
    results = mi.analyze(run, quick=True)
    print(results[results["metric"] == "auroc"][["layer", "target", "control", "gain", "q_value"]].head())
    assert run.results is not None  # the same table, read back from analysis/results.parquet

    # audio of your own: any rate, any channel count (here 3 s of a 44.1 kHz stereo chord)
    sr = 44_100
    t = np.arange(3 * sr) / sr
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 6
    stereo = np.stack([chord, chord], axis=1)
    acts = mi.capture(stereo, sr, model="tiny")  # the tiny offline model: weights random
    print(acts.attrs["weights_note"])
    print(f"captured {dict(acts.sizes)}")
    labels = mi.annotate(stereo, sr)
    print(labels[["time", "tension"]].describe().loc[["count", "mean"]])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
