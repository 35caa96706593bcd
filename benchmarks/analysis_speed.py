"""Analysis speed: the probe grid against reading the activations once, in the same process.

    python benchmarks/analysis_speed.py --clips 24 --frames 1500 --hidden 1024 --layers 4

Writes a store in the run-store schema (tests/analysis_factories.py; AR(1) activations, planted signal in
layer 1), then times (a) the baseline: reading every selected clip's residual stream once, one clip and one
layer at a time, cast to float32 (what any analysis must at least do); (b) the reduction of every layer
(:func:`reduce_layer`: read + project + subsample); (c) the probe grid (every layer x target, real analysis
and shifted-labels control, permutation tests included) and the report, once per estimator (the default
ridge probe at full width and the first wave's logistic probe on the 64-wide projection it defaulted to, its
reduction included in its time), each with exactly ``--permutations`` draws.
Prints each time and its ratio to (a). Threads pinned to one.

    python benchmarks/analysis_speed.py --json                 # one JSON object (the demo's size)
    python benchmarks/analysis_speed.py --preset full --json   # 100 clips x 30 s x 25 layers x 1024 (~7.7 GB store)
    python benchmarks/analysis_speed.py --quick --json         # seconds: what the test runs
    python benchmarks/analysis_speed.py --estimators ridge ridge-device --device torch-cpu --json
        # the ridge grid with numpy and with analysis.device (torch): times and ``ridge_vs_device``

``--json`` also profiles each estimator's grid and reports the seconds spent in the eigendecompositions
(``numpy.linalg.eigh``; musicinterp/analysis/ridge.py's per-fold cost), the measured reason when the grid
takes more than 10 reads of the activations.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from analysis_factories import make_store  # noqa: E402

from musicinterp.analysis import finalize, load_labels, probe_layer_target, reduce_layer, ridge  # noqa: E402
from musicinterp.analysis.data import open_analysis_store, selected_clips, store_layers  # noqa: E402
from musicinterp.config import AnalysisSpec  # noqa: E402


def read_once(store: str) -> int:
    ds = open_analysis_store(store)
    n = ds["n_frames"].values
    total = 0
    for i in selected_clips(ds):
        for lpos in range(ds.sizes["layer"]):
            a = ds["resid"].isel(clip=int(i), layer=lpos, time=slice(0, int(n[i]))).values.astype(np.float32)
            total += a.nbytes
    return total


PRESETS: dict[str, dict[str, int]] = {
    "demo": {"clips": 24, "sources": 12, "frames": 1500, "hidden": 1024, "layers": 4},
    "full": {"clips": 100, "sources": 50, "frames": 1500, "hidden": 1024, "layers": 24},
    "quick": {"clips": 6, "sources": 3, "frames": 200, "hidden": 16, "layers": 1, "permutations": 9},
}


COMPARED = ("gain", "p_value", "q_value", "p_cluster", "ci_low", "ci_high")


def eigh_seconds(profile: cProfile.Profile) -> float:
    """Cumulative seconds in ``numpy.linalg.eigh`` and torch's ``linalg.eigh`` under ``profile`` (not the
    backend's wrapper around them, musicinterp/analysis/backend.py: counted once)."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return sum(
        v[3]
        for (f, _, name), v in stats.items()
        if (name == "eigh" and Path(f).name != "backend.py") or name.endswith("linalg_eigh>")
    )


STAGES = {
    "ridge_decompose": ("ridge.py", "__init__"),
    "ridge_oof": ("ridge.py", "oof"),
    "cluster_wald_t": ("stats.py", "cluster_wald_t"),  # p_cluster: the observed fit (statsmodels)
    "cluster_wald_t_batch": ("stats.py", "cluster_wald_t_batch"),  # p_cluster: the draws' fits, batched
    "bootstrap_ci": ("stats.py", "bootstrap_gain_ci"),
    "auroc_columns": ("stats.py", "auroc_columns"),
    "load_npz": ("data.py", "load_reduced"),
}


def stage_seconds(profile: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds of the probe's stages (decompositions, refits, p_cluster's GLMs, bootstrap, AUROCs)."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return {
        stage: sum(v[3] for (f, _, name), v in stats.items() if Path(f).name == file and name == fn)
        for stage, (file, fn) in STAGES.items()
    }


def top_functions(profile: cProfile.Profile, n: int = 6) -> list[dict[str, object]]:
    """The ``n`` functions with the most seconds in their own code (where the grid's time goes)."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [{"function": f"{Path(f).name}:{line}:{name}", "self_s": v[2], "calls": v[1]} for (f, line, name), v in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--sources", type=int, default=12)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (layer 0 is added)")
    ap.add_argument("--permutations", type=int, default=99)
    ap.add_argument(
        "--estimators",
        nargs="+",
        default=["ridge", "logistic"],
        choices=["ridge", "ridge-direct", "ridge-device", "logistic"],
        help="ridge-direct: the ridge probe's previous path (every split decomposed from its rows, nothing shared); "
        "ridge-device: the ridge probe with analysis.device = --device",
    )
    ap.add_argument(
        "--device", default="torch-cpu", help="analysis.device of the ridge-device estimator (torch-cpu, cuda, cuda:N)"
    )
    ap.add_argument("--preset", choices=list(PRESETS), default=None, help="sizes: the demo's or the full-size shape")
    ap.add_argument("--quick", action="store_true", help="a tiny store and 9 permutations (for the test)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout (the table goes to stderr)")
    args = ap.parse_args()
    preset = "quick" if args.quick else args.preset
    if preset is not None:
        for k, v in PRESETS[preset].items():
            setattr(args, k, v)
    out = sys.stderr if args.json else sys.stdout
    spec = AnalysisSpec(
        targets=["rec_within_2s", "rec_within_4s", "res_within_2s"],
        n_permutations=args.permutations,
        max_permutations=args.permutations,
        sequential_h=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        store = make_store(
            tmp / "s.zarr",
            n_clips=args.clips,
            n_sources=args.sources,
            n_frames=args.frames,
            layers=args.layers,
            hidden=args.hidden,
            planted_layer=1,
            phi=0.98,
        )
        print(
            f"store: {args.clips} clips x {args.layers + 1} layers x {args.frames} frames x {args.hidden} "
            f"(written in {time.perf_counter() - t:.1f} s)",
            file=out,
        )
        t = time.perf_counter()
        nbytes = read_once(store)
        t_read = time.perf_counter() - t
        layers = store_layers(open_analysis_store(store), spec)
        t = time.perf_counter()
        labels = load_labels(store, spec, tmp / "labels.npz")
        reduced = [reduce_layer(store, layer, spec, tmp / f"l{layer}.npz") for layer in layers]
        t_reduce = time.perf_counter() - t
        t_probe: dict[str, float] = {}
        tables: dict[str, pd.DataFrame] = {}
        t_eigh: dict[str, float] = {}
        top: dict[str, list[dict[str, object]]] = {}
        stages: dict[str, dict[str, float]] = {}
        for est in args.estimators:
            # each estimator at its own default width: ridge at full width, the first wave's logistic at 64
            kind = "ridge" if est.startswith("ridge") else est
            spec_e = spec.model_copy(update={"estimator": kind, "reduced_width": None if kind == "ridge" else 64})
            if est == "ridge-device":
                spec_e = AnalysisSpec.model_validate({**spec_e.model_dump(), "device": args.device})
            previous = ridge.GroupedRidgeCV, ridge.CACHE_BYTES
            if est == "ridge-direct":
                ridge.GroupedRidgeCV, ridge.CACHE_BYTES = ridge.DirectGroupedRidgeCV, 0  # type: ignore[misc]
            ridge._CACHE.clear()
            profile = cProfile.Profile()
            profile.enable()
            t = time.perf_counter()
            rows = []
            files = (
                reduced
                if kind == "ridge"
                else [reduce_layer(store, layer, spec_e, tmp / f"l{layer}_{est}.npz") for layer in layers]
            )
            for r in files:
                for target in spec.targets:
                    for control in ("none", "shifted-labels"):
                        rows += probe_layer_target(str(r), str(labels), target, spec_e, control)
            df = finalize(rows, spec_e, tmp / f"out_{est}", "random")
            t_probe[est] = time.perf_counter() - t
            profile.disable()
            ridge.GroupedRidgeCV, ridge.CACHE_BYTES = previous  # type: ignore[misc]
            ridge._CACHE.clear()
            tables[est] = df
            t_eigh[est] = eigh_seconds(profile)
            top[est] = top_functions(profile)
            stages[est] = stage_seconds(profile)
            sig = int(((df.control == "none") & (df.metric == "auroc") & (df.q_value < 0.05)).sum())
            print(
                f"  {est}: {t_probe[est]:.1f} s, significant cells (q < 0.05, none, auroc): {sig}", file=out, flush=True
            )
    n_probe = len(layers) * len(spec.targets) * 2
    if args.json:
        result = {
            "preset": preset,
            "clips": args.clips,
            "frames": args.frames,
            "hidden": args.hidden,
            "layers": args.layers + 1,
            "permutations": args.permutations,
            "probes": n_probe,
            "read_mb_float32": nbytes / 1e6,
            "read_s": t_read,
            "reduce_s": t_reduce,
            "reduce_over_read": t_reduce / t_read,
            "estimators": {
                est: {
                    "grid_s": tp,
                    "grid_over_read": tp / t_read,
                    "with_reduce_over_read": (tp + t_reduce) / t_read,
                    "s_per_probe": tp / n_probe,
                    "eigh_s": t_eigh[est],
                    "eigh_share": t_eigh[est] / tp,
                    "within_10_reads": (tp + t_reduce) / t_read <= 10,
                    "top_self_time": top[est],
                    "stage_s": stages[est],
                }
                for est, tp in t_probe.items()
            },
        }
        if "ridge" in tables and "ridge-direct" in tables:
            a, b = tables["ridge"], tables["ridge-direct"]
            result["ridge_vs_direct"] = {
                "speedup": t_probe["ridge-direct"] / t_probe["ridge"],
                **{f"max_abs_diff_{k}": float(np.nanmax(np.abs(a[k].to_numpy() - b[k].to_numpy()))) for k in COMPARED},
            }
        if "ridge" in tables and "ridge-device" in tables:
            a, b = tables["ridge"], tables["ridge-device"]
            result["ridge_vs_device"] = {
                "device": args.device,
                "speedup": t_probe["ridge"] / t_probe["ridge-device"],
                **{f"max_abs_diff_{k}": float(np.nanmax(np.abs(a[k].to_numpy() - b[k].to_numpy()))) for k in COMPARED},
            }
        print(json.dumps(result))
        return
    print(f"(a) read activations once ({nbytes / 2**20:.0f} MB as float32): {t_read:8.2f} s   1.00x")
    print(f"(b) load labels + reduce {len(layers)} layers:              {t_reduce:8.2f} s   {t_reduce / t_read:6.2f}x")
    for est, tp in t_probe.items():
        print(
            f"(c) {est} probe grid ({n_probe} layer x target x control, {args.permutations} permutations each) + "
            f"report: {tp:8.2f} s   {tp / t_read:6.1f}x   ({tp / n_probe:.2f} s per probe)"
        )
    if len(t_probe) == 2:
        a, b = list(t_probe)
        print(f"{b} / {a}: {t_probe[b] / t_probe[a]:.1f}x")


if __name__ == "__main__":
    main()
