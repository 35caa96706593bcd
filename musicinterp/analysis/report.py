"""The results table, its Benjamini–Hochberg correction, figures and the findings in words.

Headline claims are restricted to the BH-corrected grid: every (layer, horizon, target) cell of one control
and one metric is one test of one family, corrected together; no layer is picked after looking at the
results, so no selection has to be undone. The largest gain is named only as a description.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from musicinterp import files
from musicinterp.analysis import stats
from musicinterp.config import AnalysisSpec
from musicinterp.figures import png_data_uri
from musicinterp.store import weights_note

log = logging.getLogger(__name__)

COLUMNS = [
    "layer",
    "horizon",
    "target",
    "metric",
    "gain",
    "ci_low",
    "ci_high",
    "p_value",
    "q_value",
    "n_clips",
    "n_frames",
    "control",
    "p_cluster",
    "note",
    "weights",
]
FAMILY_KEYS = ["control", "metric"]
GAIN_SCALE_MIN = 0.05  # the heatmaps' colour scale spans at least +-0.05: a gain of 0.003 stays pale
CONTROL_TITLES = {
    "none": "the layer beyond the controls",
    "beyond-random": "beyond the random network too",
    "trained-minus-random": "trained minus random network",
    "random-model": "the random network alone",
    "shifted-labels": "shifted labels (must be null)",
}


def results_frame(rows: list[dict[str, Any]], alpha: float = 0.05) -> pd.DataFrame:
    """All rows with BH q-values per family (one control x one metric, across layers x horizons x targets)."""
    df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    for c in COLUMNS:
        if c not in df:
            df[c] = np.nan if c not in ("note", "weights", "control", "target", "metric") else ""
    df["note"] = df["note"].fillna("").astype(str)
    df["q_value"] = np.nan
    for _, idx in df.groupby(FAMILY_KEYS).groups.items():
        df.loc[idx, "q_value"] = stats.bh(df.loc[idx, "p_value"].to_numpy(float), alpha)
    df = df.sort_values(["control", "metric", "target", "horizon", "layer"], kind="stable").reset_index(drop=True)
    return df


def table(df: pd.DataFrame) -> pd.DataFrame:
    """The documented columns, exactly, in order."""
    return df[COLUMNS].copy()


def heatmaps(df: pd.DataFrame, out: str | Path, alpha: float = 0.05, metric: str = "auroc") -> list[str]:
    """Per target: layer x horizon heatmap of the gain, one panel per control, the gain written in each cell
    ('*' where q < alpha), on a symmetric colour scale of at least +-GAIN_SCALE_MIN."""
    from matplotlib.figure import Figure  # no pyplot: drawing never switches a notebook's backend

    paths = []
    d = df[df["metric"] == metric]
    order = [
        c
        for c in ("none", "beyond-random", "trained-minus-random", "random-model", "shifted-labels")
        if c in set(d["control"])
    ]
    for target, dt in d.groupby("target"):
        layers = sorted(dt["layer"].unique())
        horizons = sorted(dt["horizon"].unique(), key=lambda h: (math.isnan(h), h))
        finite = dt["gain"].to_numpy(float)
        vmax = max(float(np.nanmax(np.abs(finite))) if np.isfinite(finite).any() else 0.0, GAIN_SCALE_MIN)
        fig = Figure(
            figsize=(2.6 + 1.3 * max(len(horizons), 2) * len(order), 2.0 + 0.3 * len(layers)), layout="constrained"
        )
        axes = fig.subplots(1, len(order), squeeze=False)
        im = None
        for ax, control in zip(axes[0], order):
            dc = dt[dt["control"] == control]
            grid = np.full((len(layers), len(horizons)), np.nan)
            star = np.zeros_like(grid, dtype=bool)
            for _, r in dc.iterrows():
                i, j = layers.index(r["layer"]), horizons.index(r["horizon"])
                grid[i, j] = r["gain"]
                star[i, j] = bool(r["q_value"] < alpha) if np.isfinite(r["q_value"]) else False
            im = ax.imshow(grid, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", origin="lower")
            for i, j in zip(*np.nonzero(np.isfinite(grid))):
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:+.2f}" + ("*" if star[i, j] else ""),
                    ha="center",
                    va="center",
                    fontsize=8,
                    fontweight="bold" if star[i, j] else "normal",
                    color="w" if abs(grid[i, j]) > 0.6 * vmax else "k",
                )
            ax.set_xticks(range(len(horizons)), [f"{h:g} s" for h in horizons])
            ax.set_yticks(range(len(layers)), [str(int(x)) for x in layers])
            ax.set_xlabel("horizon")
            if control == order[0]:
                ax.set_ylabel("layer")
            weights = ", ".join(sorted(set(dc["weights"].astype(str))))
            ax.set_title(f"{CONTROL_TITLES.get(control, control)}\n({weights} weights)", fontsize=9)
        fig.suptitle(f"{target}: {metric} gain of the layer over controls (* q < {alpha:g})", fontsize=10)
        if im is not None:
            fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"{metric} gain")
        path = files.join(out, f"gain_{target}_{metric}.png")
        with files.open_write(path) as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        paths.append(path)
    return paths


def _cell(r: pd.Series) -> str:
    h = f" at {r['horizon']:g} s" if np.isfinite(r["horizon"]) else ""
    pc = f", p_cluster {r['p_cluster']:.3g}" if np.isfinite(r["p_cluster"]) else ""
    sc = (
        f" (AUROC {r['score_controls']:.3f} -> {r['score_full']:.3f})"
        if r["metric"] == "auroc" and np.isfinite(r.get("score_controls", np.nan))
        else ""
    )
    return (
        f"layer {int(r['layer'])}, {r['target']}{h}: gain {r['gain']:+.3f} "
        f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{sc}, p {r['p_value']:.3g}, q {r['q_value']:.3g}{pc}"
    )


def _controls_baseline(d: pd.DataFrame) -> list[str]:
    """What the controls alone reach per target (the same for every layer up to the folds' C choice)."""
    lines = []
    for (target, h), g in d.groupby(["target", "horizon"], dropna=False):
        sc = g["score_controls"].to_numpy(float)
        sc = sc[np.isfinite(sc)]
        if len(sc):
            hs = f" at {h:g} s" if np.isfinite(h) else ""
            lines.append(f"- Controls alone, {target}{hs}: AUROC {np.median(sc):.3f} (out of fold; 0.5 = chance).")
    return lines


def findings_markdown(df: pd.DataFrame, weights: str, alpha: float = 0.05) -> str:
    """The headline findings in words: what was significant, what was not, with the weights in plain words."""
    lines = ["# Probe findings", "", f"**{weights_note(weights)}**", ""]
    if weights == "random":
        lines += [
            "These results describe an untrained network. They say nothing about what a trained MusicGen "
            "represents; they only show what the pipeline reports on a model that has learned nothing.",
            "",
        ]
    lines += [
        "Question: does layer L at frame t predict the event at t + h better than controls that see only the "
        "audio up to t (position, the past of the labels, causal descriptors, the target's own value at "
        "t - h - 1 frame)? The layer is read as many frames before t as the codec hears ahead, so it has heard "
        "no more audio than the controls.",
        "",
        "Claims are restricted to the Benjamini–Hochberg-corrected grid (layers × horizons × targets, one family "
        f"per control and metric, FDR {alpha:g}); no layer is selected after the fact. Significance needs "
        f"q < {alpha:g} on the permutation p-value.",
        "",
    ]
    for control, title in (
        ("none", "Real analysis"),
        (
            "beyond-random",
            "Beyond a random network: the same layer of a random-weight network "
            "of the same architecture joins the controls",
        ),
        (
            "trained-minus-random",
            "Trained minus random: AUROC(controls + layer) - AUROC(controls + random layer), paired",
        ),
        ("random-model", "Control: random-weight model"),
        ("shifted-labels", "Control: labels shifted within each clip"),
    ):
        d = df[(df["control"] == control) & (df["metric"] == "auroc")]
        if d.empty:
            continue
        tested = d[np.isfinite(d["p_value"].to_numpy(float))]
        sig = tested[tested["q_value"] < alpha].sort_values("gain", ascending=False)
        w = ", ".join(sorted(set(d["weights"].astype(str))))
        lines.append(f"## {title} (AUROC gain; weights: {w})")
        lines.append("")
        if control in ("random-model", "shifted-labels") and len(sig):
            lines.append(
                f"**Warning:** {len(sig)} of {len(tested)} cells are significant in a control where "
                "none should be; treat the real analysis with suspicion."
            )
        lines.append(
            f"- {len(sig)} of {len(tested)} tested cells significant (q < {alpha:g}); "
            f"{len(d) - len(tested)} cells could not be tested (see notes)."
        )
        if control == "none" and "score_controls" in d:
            lines += _controls_baseline(tested)
        for _, r in sig.iterrows():
            lines.append(f"  - {_cell(r)}")
        if control == "none":
            l0 = sig[sig["layer"] == 0]
            if len(l0):
                lines.append(
                    f"- Layer 0 (token embeddings, no context) is significant in {len(l0)} cells: the "
                    "local codes already carry it, so it is not evidence of memory."
                )
            if len(tested) and not len(sig):
                best = tested.sort_values("gain", ascending=False).iloc[0]
                lines.append(
                    f"- Nothing significant. Largest observed gain (a description, not a test): {_cell(best)}."
                )
            for second in ("brier", "log_loss"):
                ll = df[(df["control"] == "none") & (df["metric"] == second) & (df["q_value"] < alpha)]
                if (df["metric"] == second).any():
                    lines.append(f"- With {second.replace('_', '-')} as the metric: {len(ll)} significant cells.")
            disagree = tested[(tested["q_value"] < alpha) != (tested["p_cluster"] < alpha)]
            if len(disagree):
                lines.append(
                    f"- The second test (permutation p of the cluster-robust Wald t, p_cluster < {alpha:g} "
                    f"uncorrected) disagrees with the corrected result in {len(disagree)} cells."
                )
        lines.append("")
    noted = df[df["note"].astype(str) != ""]
    if len(noted):
        lines += ["## Notes", ""]
        for note, g in noted.groupby("note"):
            lines.append(f"- {g[['layer', 'label', 'control']].drop_duplicates().shape[0]} analyses: {note}")
        lines.append("")
    return "\n".join(lines)


def findings_artifact(out: str | Path, metric: str = "auroc") -> str:
    """``findings.md`` with the heatmaps of ``metric`` inline (the flow's artifact)."""
    figs = files.glob(out, f"gain_*_{metric}.png")
    lines = [files.read_text(files.join(out, "findings.md"))] + (["", "## Figures", ""] if figs else [])
    for fig in figs:
        stem = fig.rsplit("/", 1)[-1].removesuffix(".png")
        lines += [f"![{stem}]({png_data_uri(fig)})", ""]
    return "\n".join(lines)


def write_results(df: pd.DataFrame, spec: AnalysisSpec, out: str | Path, weights: str) -> pd.DataFrame:
    """Write results.{parquet,csv} (documented columns), results_detail.csv, figures and findings.md under
    ``out`` (a local folder or an fsspec URL)."""
    files.makedirs(out)
    t = table(df)
    with files.open_write(files.join(out, "results.parquet")) as f:
        t.to_parquet(f, index=False)
    with files.open_write(files.join(out, "results.csv"), "w") as f:
        t.to_csv(f, index=False)
    with files.open_write(files.join(out, "results_detail.csv"), "w") as f:
        df.to_csv(f, index=False)
    files.write_text(files.join(out, "analysis_spec.json"), spec.canonical_json())
    try:
        heatmaps(df, out, spec.alpha)
    except Exception as e:  # noqa: BLE001 - a figure must not lose the table already written
        log.warning("figures failed: %s", e)
    files.write_text(files.join(out, "findings.md"), findings_markdown(df, weights, spec.alpha))
    from musicinterp.causal.directions import write_directions  # here, not at the top: causal imports analysis

    write_directions(out, spec)
    return t
