"""Where and in which pieces the features of an SAE ranking fire, by cue class: why the random twin's pass.

    python benchmarks/sae_twin_features.py runs/sae-toy-pair/rank --control random-model \
        --store runs/toy-pair-defaults-random-1198fc198b/store.zarr --sae runs/sae-toy-pair-random

For every AUROC row of ``ranked.parquet`` with ``control`` and q < alpha: the feature's activation at the analysis
frames of its target (``truth_return_within_<h>s``, the rows its test used), split by time bins after the first
valid frame and by the pair cue's four classes (first chord r/n x equal '=' / different '!': A returns after
'=' only), as mean activation / share of frames firing, and the AUROC of the raw activation in each bin. A
feature that fires in one equal-chord class only is an AND of the two chords, which an SAE's threshold computes
from any state that still holds both chords: no trained network is needed for it. A feature that fires at one
frame in every class with values differing in the third decimal is a position feature carrying a trace of the
chords. The labels are read from the ranking's own intermediate files (``work/<control>/labels.npz``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from musicinterp.sae.features import feature_matrix
from musicinterp.sae.saelens import load_sae
from musicinterp.sae.spec import SAERankSpec
from musicinterp.sources.cue import pair_chords

FRAME_RATE_HZ = 50
BINS_S = ((0.0, 0.2), (0.2, 0.5), (0.5, 1.0), (1.0, 2.0))  # after the first valid frame of the target


def cue_classes(lab: dict, target: str) -> np.ndarray:
    """Per clip: 'r=' / 'r!' / 'n=' / 'n!' (first chord, equal or different second chord)."""
    y, valid = lab[f"y__{target}"], lab[f"valid__{target}"]
    out = []
    for c, source in enumerate(lab["source_id"]):
        returns = bool(y[(lab["clip"] == c) & valid].max())
        seed, index = str(source).split(":s")[1].split("-p")
        first, _ = pair_chords(int(seed[:-1]), int(index), returns)
        out.append(f"{first[0]}{'=' if returns else '!'}")
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rank", type=Path, help="the ranking folder (ranked.parquet, sae_rank_spec.json, work/)")
    ap.add_argument("--control", default="random-model", help="rows of this control ('none', 'random-model')")
    ap.add_argument("--store", required=True, help="the store those rows were ranked on")
    ap.add_argument("--sae", required=True, type=Path, help="the SAE folder (layer<l>/) those rows used")
    args = ap.parse_args()
    spec = SAERankSpec.model_validate(json.loads((args.rank / "sae_rank_spec.json").read_text()))
    aspec = spec.analysis.model_copy(update={"targets": list(spec.targets)})
    df = pd.read_parquet(args.rank / "ranked.parquet")
    rows = df[(df["control"] == args.control) & (df["metric"] == "auroc") & (df["q_value"] < aspec.alpha)]
    work = args.rank / "work"
    lab = dict(np.load(work / (args.control if (work / args.control).is_dir() else "none") / "labels.npz"))
    t_s = lab["frame"] / FRAME_RATE_HZ
    cache: dict[int, object] = {}
    for r in rows.itertuples():
        layer, f, target = int(r.layer), int(r.feature), str(r.label)
        if layer not in cache:
            sae = load_sae(args.sae / f"layer{layer}", layer=layer).sae
            cache[layer] = feature_matrix(args.store, layer, sae, aspec)["acts"]
        a = cache[layer][:, f].toarray().ravel()  # type: ignore[index]
        valid = lab[f"valid__{target}"].astype(bool)
        y = lab[f"y__{target}"]
        classes = cue_classes(lab, target)[lab["clip"]]
        t0 = float(t_s[valid].min())
        print(
            f"layer {layer} feature {f} {target}: gain {r.gain:+.4f}, q {r.q_value:.4f}; "
            f"AUROC of the raw activation {roc_auc_score(y[valid], a[valid]):.3f}"
        )
        for lo, hi in BINS_S:
            m = valid & (t_s >= t0 + lo) & (t_s < t0 + hi)
            if not m.any():
                continue
            auc = roc_auc_score(y[m], a[m]) if len(np.unique(y[m])) == 2 else float("nan")
            cells = [
                f"{k} {a[m & (classes == k)].mean():.3f}/{(a[m & (classes == k)] > 0).mean():.2f}"
                for k in ("r=", "n=", "r!", "n!")
            ]
            print(f"  {t0 + lo:4.1f}-{t0 + hi:4.1f} s  AUROC {auc:.3f}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
