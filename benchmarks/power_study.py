"""Power at the real settings: a known direction of known strength planted into one layer of a real store.

    python benchmarks/power_study.py --store runs/musicgen-small-offline-…/store.zarr --layer 12 \
        --target rec_within_4s --strengths 0 0.05 0.1 0.2 0.4 --replicates 5

Every layer of the store is read once (full width, the analysis's own ``load_labels`` / ``reduce_layer``), and
every cell (layers x targets) is probed once unplanted: that is the background of the BH family. Then, for each
strength s and replicate r, a seeded random unit direction u is added to the chosen layer's activations as
``s x sd x (y - mean y) x sqrt(d) x u`` (y: the target at each analysed frame; sd: the layer's median feature sd), the
planted cell is probed again and BH is applied to it together with the background. Reported per strength: the
detection rate (q < alpha at the planted cell) and the false-positive rate at the other layers, for the new
defaults (ridge, full width, sequential permutations) and the first wave's (logistic, projection to 64, 99
permutations) with ``--old``. Writes a table and ``power.png``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from musicinterp.analysis import stats
from musicinterp.analysis.data import (
    load_labels,
    load_reduced,
    open_analysis_store,
    reduce_layer,
    save_reduced,
    store_layers,
)
from musicinterp.analysis.probe import probe_layer_target
from musicinterp.config import AnalysisSpec

OLD = {"estimator": "logistic", "reduced_width": 64, "n_permutations": 99, "max_permutations": 99, "sequential_h": 0}


def _planted(red: dict, lab: dict, target: str, s: float, seed: int, W: np.ndarray | None) -> dict:
    X = red["X_full"].astype(np.float64)
    y = lab[f"y__{target}"].astype(float) * lab[f"valid__{target}"]
    u = np.random.default_rng(seed).standard_normal(X.shape[1])
    u /= np.linalg.norm(u)
    sd = float(np.median(X.std(axis=0)))
    Xp = X + s * sd * np.sqrt(X.shape[1]) * (y - y.mean())[:, None] * u[None, :]
    return {**red, "X": (Xp if W is None else Xp @ W).astype(np.float32)}


def run(
    store: str,
    layer: int,
    target: str,
    strengths: list[float],
    replicates: int,
    spec: AnalysisSpec,
    work: Path,
    background_file: Path | None = None,
) -> list[dict]:
    ds = open_analysis_store(store)
    layers = store_layers(ds, spec)
    n_cells = len(layers) * len(spec.targets)
    full = spec.model_copy(update={"reduced_width": None})
    labels = str(load_labels(ds, spec, work / "labels.npz"))
    lab = load_reduced(labels)
    background: dict[tuple[int, str], float] = {}
    # the unplanted cells do not depend on the strength: a rerun with other strengths reuses them from a file
    # keyed by what they were computed from
    key = {"store": str(Path(store).resolve()), "layer": layer, "target": target, "spec": spec.model_dump_json()}
    if background_file is not None and background_file.exists():
        saved = json.loads(background_file.read_text())
        if saved["key"] == key:
            background = {(int(la), t): p for la, t, p in saved["p_values"]}
            print(f"  background: {len(background)} cells from {background_file}", flush=True)
    t0 = time.perf_counter()
    for lay in layers if not background else []:
        red = reduce_layer(ds, lay, spec, work / f"layer{lay}.npz")
        for t in spec.targets:
            if (lay, t) != (layer, target):
                background[(lay, t)] = probe_layer_target(str(red), labels, t, spec, n_cells=n_cells)[0]["p_value"]
        print(f"  background layer {lay}: {time.perf_counter() - t0:.0f} s", flush=True)
    if background_file is not None:
        rows = [[la, t, p] for (la, t), p in background.items()]
        background_file.write_text(json.dumps({"key": key, "p_values": rows}))
    planted_file = reduce_layer(ds, layer, full, work / f"layer{layer}_full.npz")
    red = load_reduced(planted_file)
    red["X_full"] = red["X"]
    from musicinterp.analysis.data import projection

    W = projection(red["X"].shape[1], spec)
    out = []
    for s in strengths:
        hits, fps = [], []
        for r in range(replicates):
            planted = _planted(red, lab, target, s, 1000 * r + 7, W)
            path = save_reduced(
                work / "planted.npz", planted["X"], planted["clip"], planted["frame"], list(planted["clips"]), layer
            )
            p = probe_layer_target(str(path), labels, target, spec, n_cells=n_cells)[0]["p_value"]
            keys = list(background) + [(layer, target)]
            q = stats.bh(np.array([background[k] for k in keys[:-1]] + [p]), spec.alpha)
            hits.append(bool(q[-1] < spec.alpha))
            fps.append(float(np.nanmean(q[:-1] < spec.alpha)))
        out.append({"strength": s, "detected": float(np.mean(hits)), "fpr_other_cells": float(np.mean(fps))})
        print(
            f"strength {s:g}: detected {np.mean(hits):.2f}, other cells q<alpha {np.mean(fps):.3f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--target", default="rec_within_4s")
    ap.add_argument("--targets", nargs="*", default=None, help="the BH family's targets (default: the spec's)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--replicates", type=int, default=5)
    ap.add_argument("--old", action="store_true", help="the first wave's defaults")
    ap.add_argument("--out", default="power")
    ap.add_argument("--background", type=Path, default=None, help="a JSON file that keeps the unplanted cells' p")
    args = ap.parse_args()
    spec = AnalysisSpec(**({"targets": args.targets} if args.targets else {}), **(OLD if args.old else {}))
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(
            args.store, args.layer, args.target, args.strengths, args.replicates, spec, Path(tmp), args.background
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(
        [r["strength"] for r in rows],
        [r["detected"] for r in rows],
        "o-",
        label="old defaults" if args.old else "new defaults",
    )
    ax.set_xlabel("planted strength (x median feature sd)")
    ax.set_ylabel(f"detected (q < {spec.alpha:g})")
    ax.legend()
    fig.savefig(out / f"power{'_old' if args.old else ''}.png", dpi=120)
    print("\n| strength | detected | other cells q < alpha |\n|---|---|---|")
    for r in rows:
        print(f"| {r['strength']:g} | {r['detected']:.2f} | {r['fpr_other_cells']:.3f} |")


if __name__ == "__main__":
    main()
