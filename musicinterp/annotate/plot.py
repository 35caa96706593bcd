"""PNG of one annotation: self-similarity with detected recurrences, and the tension curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicinterp.annotate.labels import Annotation
from musicinterp.frames import FRAME_RATE_HZ

MAX_SSM_PIXELS = 1500  # the matrix is strided down to at most this many frames per side for drawing


def plot_annotation(ann: Annotation, path: str | Path, title: str = "", truth: list[dict] | None = None) -> Path:
    """Left: self-similarity (cosine of mean-removed embedded chroma) with the detected next/previous
    recurrences overlaid (and ground-truth returns as boxes if given); right: tension composite,
    z-scored components and resolution events."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figure list stay untouched

    lab = ann.labels
    t = lab["time"]
    n = len(t)
    dur = n / FRAME_RATE_HZ
    step = max(1, int(np.ceil(n / MAX_SSM_PIXELS)))
    fig = Figure(figsize=(15, 6.5))
    ax0, ax1 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    ax0.imshow(
        ann.rec.similarity[::step, ::step],
        origin="lower",
        cmap="gray_r",
        vmin=0,
        vmax=1,
        extent=(0, dur, 0, dur),
        interpolation="nearest",
    )
    ok = lab["rec_lag_next_s_valid"]
    ax0.scatter(t[ok], t[ok] + lab["rec_lag_next_s"][ok], s=2, c="tab:red", label="next recurrence")
    okp = lab["rec_lag_prev_s_valid"]
    ax0.scatter(t[okp], t[okp] - lab["rec_lag_prev_s"][okp], s=2, c="tab:blue", label="previous occurrence")
    for i, r in enumerate(truth or []):
        ax0.plot(
            [r["source_start_s"], r["source_end_s"]],
            [r["start_s"], r["end_s"]],
            c="tab:green",
            lw=1,
            ls="--",
            label="ground truth" if i == 0 else None,
        )
    ax0.set(
        xlabel="time t (s)",
        ylabel="time of the match (s)",
        xlim=(0, dur),
        ylim=(0, dur),
        title="self-similarity and detected recurrences",
    )
    ax0.legend(loc="upper left", fontsize=7, markerscale=4)

    comps = [k for k in lab if k.startswith("tension_")]
    for k in comps:
        v = lab[k].astype(np.float64)
        sd = v.std()
        ax1.plot(t, (v - v.mean()) / sd if sd > 0 else v * 0, lw=0.7, alpha=0.6, label=k.removeprefix("tension_"))
    ax1.plot(t, lab["tension"], c="k", lw=2, label="tension (composite)")
    ev = np.flatnonzero(lab["res_event"])
    ax1.scatter(t[ev], lab["tension"][ev], marker="v", s=60, c="tab:red", zorder=5, label="resolution")
    ax1.plot(t, lab["rec_rate_causal"] * 2 - 4, c="tab:purple", lw=1, label="rec_rate_causal (x2, -4)")
    ax1.set(xlabel="time (s)", ylabel="z-score", title="tension", xlim=(0, dur))
    ax1.legend(loc="upper right", fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path
