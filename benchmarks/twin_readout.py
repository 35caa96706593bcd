"""What a non-linear read-out recovers of the pair cue's answer from a network, by distance from the cue.

    python benchmarks/twin_readout.py runs/toy-pair-defaults-random-*/ runs/toy-pair-defaults-*/ --layer 4

For each run folder (its ``store.zarr`` and ``manifest.json``): the residual stream of ``--layer`` at one frame
every second after the cue, and the piece's answer (does section A return at 9 s? the manifest's ground truth).
Three read-outs, 5-fold cross-validated over pieces (each piece its own source), out-of-fold AUROC:
linear (L2 logistic), quadratic (logistic on degree-2 features of a PCA to 16 dimensions fit inside the training
folds) and a small MLP (one hidden layer of 64). The pair design makes the answer non-linear in what a network
merely retains of the two chords, so a linear probe of a random network reads nothing; this script says how much
of it a non-linear read-out of the same random network recovers, i.e. how much "decodable" a random twin can
show, and therefore why the positive control is memory of a computed fact rather than a plan.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

READOUTS = {
    "linear": lambda: make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)),
    "quadratic": lambda: make_pipeline(
        StandardScaler(),
        PCA(16, random_state=0),
        PolynomialFeatures(2),
        StandardScaler(),
        LogisticRegression(C=0.1, max_iter=5000),
    ),
    "mlp": lambda: make_pipeline(StandardScaler(), MLPClassifier((64,), alpha=1e-2, max_iter=3000, random_state=0)),
}


def readout(run: Path, layer: int, times_s: list[float]) -> dict[str, list[float]]:
    ds = xr.open_zarr(run / "store.zarr", consolidated=None, chunks=None)
    manifest = json.loads((run / "manifest.json").read_text())
    answer = {c["clip_id"]: bool(c["truth"].get("returns")) for c in manifest["clips"]}
    clips = [str(c) for c in ds["clip"].values]
    y = np.array([answer[c] for c in clips], int)
    lpos = [int(v) for v in ds["layer"].values].index(layer)
    out: dict[str, list[float]] = {k: [] for k in READOUTS}
    for t in times_s:
        X = ds["resid"].isel(layer=lpos, time=int(round(t * 50))).values.astype(np.float64)
        for name, make in READOUTS.items():
            p = np.empty(len(y))
            for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    p[te] = make().fit(X[tr], y[tr]).predict_proba(X[te])[:, 1]
            out[name].append(roc_auc_score(y, p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--times", type=float, nargs="+", default=[2.0, 3.0, 5.0, 7.0, 8.9])
    args = ap.parse_args()
    print(f"| run | read-out | {' | '.join(f'{t:g} s' for t in args.times)} |")
    print(f"|---|---|{'---|' * len(args.times)}")
    for run in args.runs:
        weights = xr.open_zarr(run / "store.zarr", consolidated=None).attrs.get("weights", "?")
        for name, aucs in readout(run, args.layer, args.times).items():
            print(f"| {run.name} ({weights}) | {name} | {' | '.join(f'{a:.2f}' for a in aucs)} |")


if __name__ == "__main__":
    main()
