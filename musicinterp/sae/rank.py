"""Rank SAE features by how well each one's activation at t predicts a future event beyond the causal controls.

The test of one (layer, feature, target) is the analysis's (musicinterp.analysis.probe): nested grouped-CV ridge
probes (controls vs controls + the feature's activation), the AUROC gain, its permutation p over window classes
and a cluster-bootstrap CI. Only the family needs a decision, because an SAE has 32,768 features:

**Family.** The sources are split once, seeded, into a *screening* part (``screen_fraction``) and a *test* part.
On the screening sources only, every feature gets a cheap score: |correlation| between its activation and the
target's residual after an OLS fit on the controls (position, label past, descriptors, the target's own lag).
The ``top_n`` features per (layer, target) that fire on at least ``min_active_frames`` screening frames go on;
they are tested on the test sources only, and Benjamini-Hochberg runs over those layers x targets x top_n
tests (the permutation budget is sized for that family). Selection and test never see the same sources, so the
selection cannot inflate the test (the screening is a data-split "select then test", Cox 1975), and the family
is small enough that BH's smallest attainable q stays below alpha. BH over all 32k x targets x layers would
need p < alpha / 200,000 per discovery, i.e. millions of permutations per cell, for no gain in validity.

**Random-model control.** The same procedure on the random-weight twin's store with an SAE trained on it
(``control='random-model'`` rows, their own BH family). An SAE is itself a trained non-linear read-out, so the
twin's SAE can find what an untrained network's states hold but a linear probe cannot read (on the pair toy: ANDs
of the two cue chords right after the cue, see the package README); a trained feature's claim therefore rests on
its ``beyond-random`` and ``trained-minus-random`` rows (``q_beyond_random``, ``q_trained_minus_random`` in
``candidates.json``), which test it against the twin's same layer.

Outputs: ``ranked.parquet`` / ``ranked.csv`` (one row per tested (layer, feature, target, metric), sorted by q
then gain) and ``candidates.json`` (AUROC rows with q < alpha and a positive gain: SAE folder, layer, hook,
feature, target, gain, q, the q of its random-twin rows, and ``direction``: +1 when the feature fires before the
event, -1 when it fires before its absence, the sign of its correlation with the target beyond the controls on
the test sources; the probe's gain is blind to it, since a ridge weight can take either sign), the intervention
targets for musicinterp.sae.splice.ablation; and the candidates' activations on every clip of the store,
``features_layer<l>.zarr`` (clip, time, sae_feature) float16.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from musicinterp.analysis import stats
from musicinterp.analysis.data import load_labels, load_reduced, reduce_layer, save_reduced
from musicinterp.analysis.probe import probe_layer_target
from musicinterp.sae.features import feature_matrix, write_feature_store
from musicinterp.sae.saelens import load_sae
from musicinterp.sae.spec import SAERankSpec

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
RANK_COLUMNS = [
    "control",
    "layer",
    "feature",
    "target",
    "horizon",
    "label",
    "metric",
    "gain",
    "ci_low",
    "ci_high",
    "p_value",
    "q_value",
    "screen_score",
    "screen_active_frames",
    "direction",
    "n_clips",
    "n_frames",
    "n_sources",
    "n_permutations",
    "weights",
    "note",
]


def split_label_sources(lab: dict[str, Any], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(screen, test) clip indices of a labels file: whole sources to one side, a seeded shuffle."""
    sources = lab["source_id"].astype(str)
    names = sorted(set(sources.tolist()))
    order = np.random.default_rng([seed, 17]).permutation(len(names))
    n_screen = min(max(int(round(fraction * len(names))), 1), len(names) - 1)
    screen = {names[i] for i in order[:n_screen]}
    mask = np.array([s in screen for s in sources], dtype=bool)
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def subset_labels(lab: dict[str, Any], clips: np.ndarray, out: str | Path) -> tuple[Path, np.ndarray]:
    """A labels file holding only ``clips`` (renumbered); returns its path and the kept rows of ``lab``."""
    rows = np.flatnonzero(np.isin(lab["clip"], clips))
    remap = np.full(len(lab["clips"]), -1, np.int32)
    remap[clips] = np.arange(len(clips), dtype=np.int32)
    arrays: dict[str, Any] = {}
    for key, v in lab.items():
        if key in ("clips", "source_id", "n_frames"):
            arrays[key] = v[clips]
        elif key == "clip":
            arrays[key] = remap[v[rows]]
        elif (
            isinstance(v, np.ndarray)
            and v.ndim >= 1
            and len(v) == len(lab["clip"])
            and key
            not in (
                "targets",
                "control_names",
            )
        ):
            arrays[key] = v[rows]
        else:
            arrays[key] = v
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return Path(out), rows


def screen_scores(
    acts: sp.csr_matrix, y: np.ndarray, design: np.ndarray, signed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """|corr(feature, residual of y on design)| for every feature (the correlation itself with ``signed``),
    and each feature's active-frame count."""
    Z = np.column_stack([design, np.ones(len(y))])
    beta = np.linalg.lstsq(Z, y.astype(float), rcond=None)[0]
    r = y - Z @ beta
    num = np.asarray(acts.T @ r).ravel()  # r sums to 0 (intercept), so no centring term
    n = len(y)
    s1 = np.asarray(acts.sum(axis=0)).ravel()
    s2 = np.asarray(acts.multiply(acts).sum(axis=0)).ravel()
    var = np.maximum(s2 - s1**2 / n, 0.0)
    den = np.sqrt(var) * math.sqrt(float(r @ r))
    score = np.where(den > 0, (num if signed else np.abs(num)) / np.where(den > 0, den, 1.0), 0.0)
    active = np.asarray((acts > 0).sum(axis=0)).ravel()
    return score, active


def intermediate_dir(out: str | Path, control: str) -> Path:
    """Where one control's labels, reduced layers and rows of a ranking are kept (``rows.parquet``)."""
    return Path(out) / "intermediate" / control


def rank_features(
    store: str,
    sae_root: str | Path,
    spec: SAERankSpec,
    out: str | Path,
    control: str = "none",
    progress: Progress | None = None,
    baseline_store: str | None = None,
) -> pd.DataFrame:
    """Screen on one part of the sources, test the survivors on the other; one row per test (see module doc).

    ``baseline_store``: the random-weight twin's store (the same clips): each tested feature is also tested with
    the twin's same layer (full width) joining the controls ('beyond-random' rows) and against it, paired
    ('trained-minus-random' rows), as the analysis does for whole layers.
    """
    out = Path(out)
    work = intermediate_dir(out, control)
    aspec = spec.analysis.model_copy(update={"targets": list(spec.targets)})
    labels = load_labels(store, aspec, work / "labels.npz")
    lab = load_reduced(labels)
    screen_clips, test_clips = split_label_sources(lab, spec.screen_fraction, spec.seed)
    test_labels, test_rows = subset_labels(lab, test_clips, work / "test_labels.npz")
    screen_rows = np.flatnonzero(np.isin(lab["clip"], screen_clips))
    layers = (
        spec.layers
        if spec.layers is not None
        else sorted(int(p.name[5:]) for p in Path(sae_root).glob("layer*") if (p / "cfg.json").is_file())
    )
    if not layers:
        raise ValueError(f"no SAE folders (layer<l>/cfg.json) under {str(sae_root)!r}")
    n_cells = len(layers) * len(spec.targets) * spec.top_n
    rows: list[dict[str, Any]] = []
    done, total = 0, n_cells
    test_clip_index = load_reduced(test_labels)["clip"]
    test_clip_names = [str(c) for c in lab["clips"][test_clips]]
    for layer in layers:
        sl = load_sae(Path(sae_root) / f"layer{layer}", layer=layer)
        fm = feature_matrix(store, layer, sl.sae, aspec)
        if not (np.array_equal(fm["clip"], lab["clip"]) and np.array_equal(fm["frame"], lab["frame"])):
            raise ValueError("feature frames and label frames differ: the store changed between the two reads")
        acts = fm["acts"]
        baseline = None
        if baseline_store is not None:
            base = load_reduced(reduce_layer(baseline_store, layer, aspec, work / f"baseline_layer{layer}.npz"))
            if not (np.array_equal(base["clip"], lab["clip"]) and np.array_equal(base["frame"], lab["frame"])):
                raise ValueError(
                    f"the baseline store {baseline_store!r} holds other clips or frames than {store!r}: "
                    "capture the same slice into both"
                )
            baseline = save_reduced(
                work / f"baseline_test_layer{layer}.npz",
                base["X"][test_rows],
                test_clip_index,
                lab["frame"][test_rows],
                test_clip_names,
                layer,
                {"weights": str(base.get("meta_weights", "random"))},
            )
        for target in spec.targets:
            valid = lab[f"valid__{target}"].astype(bool)
            rs = screen_rows[valid[screen_rows]]
            if len(rs) == 0 or len(np.unique(lab[f"y__{target}"][rs])) < 2:
                log.warning("layer %d %s: nothing to screen on (no valid frames or one class)", layer, target)
                continue
            design = np.column_stack([lab["controls"][rs], lab[f"lag__{target}"][rs], lab[f"lagvalid__{target}"][rs]])
            score, active = screen_scores(acts[rs], lab[f"y__{target}"][rs].astype(float), design)
            score[active < spec.min_active_frames] = -1.0
            chosen = [int(f) for f in np.argsort(-score, kind="stable")[: spec.top_n] if score[f] >= 0]
            rt = test_rows[valid[test_rows]]
            test_design = np.column_stack(
                [lab["controls"][rt], lab[f"lag__{target}"][rt], lab[f"lagvalid__{target}"][rt]]
            )
            for f in chosen:
                X = acts[test_rows][:, [f]].toarray()
                # which way the feature points on the test sources: +1 fires before the event, -1 before its absence
                corr, _ = screen_scores(acts[rt][:, [f]], lab[f"y__{target}"][rt].astype(float), test_design, True)
                red = save_reduced(
                    work / f"layer{layer}_f{f}.npz",
                    X,
                    test_clip_index,
                    lab["frame"][test_rows],
                    test_clip_names,
                    layer,
                    {"weights": fm["weights"]},
                )
                got = probe_layer_target(str(red), str(test_labels), target, aspec, "none", n_cells=n_cells)
                if baseline is not None:
                    got += probe_layer_target(
                        str(red),
                        str(test_labels),
                        target,
                        aspec,
                        "beyond-random",
                        baseline_npz=str(baseline),
                        n_cells=n_cells,
                    )
                for r in got:
                    r.update(
                        control=control if r["control"] == "none" else r["control"],
                        feature=f,
                        screen_score=float(score[f]),
                        screen_active_frames=int(active[f]),
                        direction=int(np.sign(corr[0])),
                        sae=str(Path(sae_root) / f"layer{layer}"),
                        hook_name=sl.hook_name,
                    )
                    rows.append(r)
                done += 1
                if progress:
                    progress(done, total, f"{control}: layer {layer} feature {f} {target}")
    return _with_q(rows, aspec.alpha)


def _with_q(rows: list[dict[str, Any]], alpha: float) -> pd.DataFrame:
    df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    if df.empty:
        return pd.DataFrame(columns=[*RANK_COLUMNS, "sae", "hook_name"])
    df["q_value"] = np.nan
    for _, idx in df.groupby(["control", "metric"]).groups.items():
        df.loc[idx, "q_value"] = stats.bh(df.loc[idx, "p_value"].to_numpy(float), alpha)
    return df


def finalize_ranking(frames: list[pd.DataFrame], out: str | Path, alpha: float) -> pd.DataFrame:
    """Ranked table (``ranked.parquet`` / ``.csv``) and ``candidates.json``; returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = (
        pd.concat([f for f in frames if not f.empty], ignore_index=True)
        if any(not f.empty for f in frames)
        else frames[0]
    )
    cols = [c for c in RANK_COLUMNS if c in df.columns] + [c for c in ("sae", "hook_name") if c in df.columns]
    df = df[cols].sort_values(
        ["control", "metric", "q_value", "gain"], ascending=[True, True, True, False], kind="stable"
    )
    df = df.reset_index(drop=True)
    df.to_parquet(out / "ranked.parquet", index=False)
    df.to_csv(out / "ranked.csv", index=False)
    hits = df[(df["control"] == "none") & (df["metric"] == "auroc") & (df["q_value"] < alpha) & (df["gain"] > 0)]
    beyond = df[(df["control"] == "beyond-random") & (df["metric"] == "auroc")]
    beyond_q = {(int(r.layer), int(r.feature), r.label): float(r.q_value) for r in beyond.itertuples()}
    paired = df[(df["control"] == "trained-minus-random") & (df["metric"] == "auroc")]
    paired_q = {(int(r.layer), int(r.feature), r.label): float(r.q_value) for r in paired.itertuples()}
    cands = [
        {
            "sae": r.sae,
            "layer": int(r.layer),
            "hook_name": r.hook_name,
            "feature": int(r.feature),
            "target": r.label,
            "gain": float(r.gain),
            "q_value": float(r.q_value),
            "q_beyond_random": beyond_q.get((int(r.layer), int(r.feature), r.label)),
            "q_trained_minus_random": paired_q.get((int(r.layer), int(r.feature), r.label)),
            "direction": int(r.direction),
            "fires_before": "the event" if int(r.direction) > 0 else "its absence",
            "how_to_ablate": "musicinterp.sae.splice.edit_layer(loaded, layer, ablation(sae, [feature]))",
        }
        for r in hits.itertuples()
    ]
    (out / "candidates.json").write_text(json.dumps(cands, indent=2))
    return df


def summary(df: pd.DataFrame, alpha: float) -> dict[str, Any]:
    """Discoveries per control (AUROC rows with q < alpha and positive gain), for artifacts and the CLI."""
    out: dict[str, Any] = {}
    if df.empty:
        return out
    for control, d in df[df["metric"] == "auroc"].groupby("control"):
        hits = d[(d["q_value"] < alpha) & (d["gain"] > 0)]
        out[str(control)] = {
            "tested": int(len(d)),
            "significant": int(len(hits)),
            "layers": sorted({int(x) for x in hits["layer"]}),
        }
    return out


def store_candidate_features(store: str, out: str | Path) -> list[Path]:
    """The candidates' activations on every clip, one Zarr per layer (``features_layer<l>.zarr``, see
    musicinterp.sae.features.write_feature_store), for plots and the browser; returns the paths written."""
    out = Path(out)
    cands = json.loads((out / "candidates.json").read_text())
    by_layer: dict[int, tuple[str, set[int]]] = {}
    for c in cands:
        by_layer.setdefault(int(c["layer"]), (c["sae"], set()))[1].add(int(c["feature"]))
    paths = []
    for layer, (folder, feats) in sorted(by_layer.items()):
        sl = load_sae(folder, layer=layer)
        attrs = {"sae": folder, "hook_name": sl.hook_name, "weights": sl.meta.get("weights", "unknown")}
        paths.append(
            write_feature_store(store, layer, sl.sae, sorted(feats), out / f"features_layer{layer}.zarr", attrs)
        )
    return paths


def rank_store(
    store: str,
    sae_root: str | Path,
    spec: SAERankSpec,
    out: str | Path,
    control_store: str | None = None,
    control_sae_root: str | Path | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """The whole ranking in-process: the store's SAEs and, when given, the random twin's (``random-model``)."""
    if (control_store is None) != (control_sae_root is None):
        raise ValueError("the random-model control needs both control_store and control_sae_root")
    frames = [rank_features(store, sae_root, spec, out, "none", progress, baseline_store=control_store)]
    if control_store is not None and control_sae_root is not None:
        frames.append(rank_features(control_store, control_sae_root, spec, out, "random-model", progress))
    (Path(out) / "sae_rank_spec.json").write_text(spec.model_dump_json(indent=2))
    df = finalize_ranking(frames, out, spec.analysis.alpha)
    store_candidate_features(store, out)
    return df
