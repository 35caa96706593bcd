"""False-positive rates of the analysis's p-values on null data (DESIGN.md §3: a statistic not shown to keep
its rate on null data is not done).

    python benchmarks/null_simulation.py --experiments 200 --seed 0 --frames 300 --per-class 24   # one class
    python benchmarks/null_simulation.py --experiments 200 --seed 1 --frames 300 --per-class 3    # triples
    python benchmarks/null_simulation.py --experiments 200 --seed 2 --frames 300 --per-class 2    # pairs

Each experiment: 24 clips from 12 sources (two clips per source share the source's event rate), 150 frames
(3 s) each (``--frames``); one "layer" (--layers) of AR(1) activations (phi 0.98 per 50 Hz frame, 16
features, already at the reduced width); a target ``sim_within_1s`` = "an event falls in (t, t + 1 s]"
from Poisson events, independent of the activations but autocorrelated (and correlated within a source);
AR(1) controls in the store's control layout. The real probe (``probe_layer_target``) runs on the same npz files the
pipeline writes, with the AnalysisSpec defaults (ridge at full width, windows of 10 s, sequential permutations)
except ``n_permutations`` (19, the fewest draws), ``max_permutations`` (199) and ``n_bootstrap`` (200).
``--per-class`` sets how many clips share an exact length (24: all; 3: eight lengths of three clips; 2: twelve
pairs), the layouts where the first wave's swap rejected 23-50% of nulls.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402

from musicinterp.analysis import stats  # noqa: E402
from musicinterp.analysis.data import control_matrix, own_lag, save_labels, save_reduced  # noqa: E402
from musicinterp.analysis.probe import probe_layer_target  # noqa: E402
from musicinterp.analysis.stats import ar1_noise  # noqa: E402
from musicinterp.config import DESCRIPTOR_LOOKAHEAD_S, AnalysisSpec  # noqa: E402

TARGET = "sim_within_1s"
H_FRAMES = 50


def experiment(
    rng: np.random.Generator,
    spec: AnalysisSpec,
    work: Path,
    n_clips: int,
    n_sources: int,
    n_frames: int,
    n_layers: int,
    width: int,
    per_class: int = 24,
) -> dict[str, list[float]]:
    lens = [n_frames + 7 * (c // per_class) for c in range(n_clips)]  # clips of one class share an exact length
    clips = [f"c{i}" for i in range(n_clips)]
    sources = [f"s{i % n_sources}" for i in range(n_clips)]
    rate_hz = {s: rng.uniform(0.2, 0.8) for s in set(sources)}
    have = {"rec_lag_prev_s", "rec_rate_causal", *DESCRIPTOR_LOOKAHEAD_S}
    ys, vs, lags, lagvs, ctrls = [], [], [], [], []
    keeps = []
    for c in range(n_clips):
        n_frames = lens[c]
        keep = np.arange(0, n_frames, spec.frame_stride)
        keeps.append(keep)
        ev = rng.random(n_frames) < rate_hz[sources[c]] / 50
        cs = np.r_[0, np.cumsum(ev)]
        t = np.arange(n_frames)
        y = ((cs[np.minimum(t + H_FRAMES, n_frames - 1) + 1] - cs[t + 1]) > 0).astype(np.int8)
        v = t + H_FRAMES < n_frames  # censored clip end, as load_labels does
        lag, lagv = own_lag(y, v | y.astype(bool), H_FRAMES + 1)  # as load_labels does
        per = {k: ar1_noise(rng, n_frames, 1, 0.98)[:, 0] for k in have}
        per["rec_lag_prev_s_valid"] = rng.random(n_frames) < 0.3
        m, names = control_matrix(per, n_frames, spec, have)
        for lst, a in ((ys, y), (vs, v), (lags, lag), (lagvs, lagv), (ctrls, m)):
            lst.append(a[keep])
    clip = np.concatenate([np.full(len(k), c) for c, k in enumerate(keeps)])
    frame = np.concatenate(keeps)
    labels = save_labels(
        work / "labels.npz",
        clip=clip,
        frame=frame,
        clips=clips,
        sources=sources,
        n_frames=np.asarray(lens),
        controls=np.concatenate(ctrls),
        control_names=names,
        targets={
            TARGET: {
                "y": np.concatenate(ys),
                "valid": np.concatenate(vs),
                "lag": np.concatenate(lags),
                "lag_valid": np.concatenate(lagvs),
            }
        },
        weights="random",
    )
    y_all, v_all = np.concatenate(ys).astype(int), np.concatenate(vs)
    C_all = np.concatenate(ctrls)
    out: dict[str, list[float]] = {
        k: []
        for k in ("perm_auroc", "perm_logloss", "p_cluster", "ci_auroc", "ci_auroc_pos", "naive_lr", "naive_frame_boot")
    }
    for layer in range(1, n_layers + 1):
        X = np.concatenate([ar1_noise(rng, n, width, 0.98)[k] for n, k in zip(lens, keeps)]).astype(np.float32)
        red = save_reduced(work / f"layer{layer}.npz", X, clip, frame, clips, layer, {"weights": "random"})
        rows = {
            r["metric"]: r
            for r in probe_layer_target(str(red), str(labels), TARGET, spec, "none", return_predictions=True)
        }
        a, ll = rows["auroc"], rows[[m for m in rows if m != "auroc"][0]]
        out["perm_auroc"].append(a["p_value"])
        out["perm_logloss"].append(ll["p_value"])
        out["p_cluster"].append(a["p_cluster"])
        out["ci_auroc"].append(float(a["ci_low"] > 0 or a["ci_high"] < 0))
        out["ci_auroc_pos"].append(float(a["ci_low"] > 0))
        # what NOT to do: frames as independent samples
        Fc = np.column_stack([C_all, np.concatenate(lags), np.concatenate(lagvs)])[v_all]
        out["naive_lr"].append(stats.naive_frame_p(y_all[v_all], Fc, X[v_all].astype(float)))
        a_lo = _frame_boot_low(y_all[v_all], a, rng)
        out["naive_frame_boot"].append(float(a_lo > 0) if np.isfinite(a_lo) else np.nan)
    return out


def _frame_boot_low(y: np.ndarray, row: dict, rng: np.random.Generator) -> float:
    """Lower CI bound of the AUROC gain when frames, not clusters, are resampled (needs the OOF predictions)."""
    p0, p1 = row.get("_p_controls"), row.get("_p_full")
    if p0 is None:
        return float("nan")
    ci = stats.bootstrap_gain_ci(y, p0, p1, np.arange(len(y)), 200, 0.05, rng, strata=row.get("_fold"), second="brier")
    return ci["auroc"][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--permutations", type=int, default=19)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--frames", type=int, default=150, help="frames per clip (50 per second)")
    ap.add_argument("--per-class", type=int, default=24, help="clips per exact length (24 = all equal)")
    ap.add_argument("--max-permutations", type=int, default=199)
    args = ap.parse_args()
    spec = AnalysisSpec(
        targets=[TARGET],
        n_permutations=args.permutations,
        max_permutations=args.max_permutations,
        n_bootstrap=200,
        seed=args.seed,
    )
    scheme = f"window classes of {args.per_class} clips of one exact length"
    rng = np.random.default_rng(args.seed)
    res: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for e in range(args.experiments):
            spec_e = spec.model_copy(update={"seed": args.seed * 100_000 + e})
            for k, v in experiment(
                rng, spec_e, Path(tmp), 24, 12, args.frames, args.layers, 16, args.per_class
            ).items():
                res.setdefault(k, []).extend(v)
            if (e + 1) % 20 == 0:
                print(f"  {e + 1} experiments, {time.perf_counter() - t0:.0f} s", flush=True)
    alpha = spec.alpha
    print(
        f"\nnull simulation: {args.experiments} experiments x {args.layers} layers, 24 clips / 12 sources, "
        f"{args.frames} frames, stride {spec.frame_stride}, {args.permutations}-{args.max_permutations} permutations "
        f"({scheme}), seed {args.seed}; {time.perf_counter() - t0:.0f} s"
    )
    print(f"{'procedure':<44} {'rate':>6}  95% interval      n   nominal")
    nominal = {"ci_auroc_pos": alpha / 2, "naive_frame_boot": alpha / 2}
    names = {
        "perm_auroc": "permutation p (AUROC gain) <= 0.05",
        "perm_logloss": "permutation p (Brier gain) <= 0.05",
        "p_cluster": "p_cluster (permuted cluster Wald t) <= 0.05",
        "ci_auroc": "cluster-bootstrap 95% CI excludes 0",
        "ci_auroc_pos": "cluster-bootstrap 95% CI above 0",
        "naive_lr": "NAIVE frame-level LR test p <= 0.05",
        "naive_frame_boot": "NAIVE frame-bootstrap 95% CI above 0",
    }
    for k, label in names.items():
        v = np.asarray(res.get(k, []), float)
        if k.startswith(("perm", "p_cluster", "naive_lr")):
            v = np.where(np.isfinite(v), v <= alpha, np.nan)
        v = v[np.isfinite(v)]
        if not len(v):
            print(f"{label:<44}   (none)")
            continue
        hits = int(v.sum())
        lo, hi = proportion_confint(hits, len(v), alpha=0.05, method="beta")
        print(f"{label:<44} {hits / len(v):6.3f}  [{lo:.3f}, {hi:.3f}]  {len(v):4d}   {nominal.get(k, alpha):.3f}")


if __name__ == "__main__":
    main()
