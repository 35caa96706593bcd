"""PNG of one annotation: self-similarity with detected recurrences, and the tension curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicinterp.annotate.labels import Annotation
from musicinterp.frames import FRAME_RATE_HZ

MAX_SSM_PIXELS = 1500  # the matrix is strided down to at most this many frames per side for drawing
COMPONENT_PERCENTILES = (5.0, 95.0)  # each tension component is scaled to this range of its own values


def robust_scale(v: np.ndarray) -> np.ndarray:
    """``v`` mapped to [0, 1] by its 5th and 95th percentiles and clipped: smoothing windows that run off the
    clip's edges make spikes there, which would otherwise set the scale and flatten everything else."""
    lo, hi = np.percentile(v, COMPONENT_PERCENTILES)
    if not hi > lo:
        return np.full(v.shape, 0.5)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0)


def plot_annotation(ann: Annotation, path: str | Path, title: str = "", truth: list[dict] | None = None) -> Path:
    """Left: self-similarity (cosine of mean-removed embedded chroma) with the detected next/previous
    recurrences overlaid (and ground-truth returns as boxes if given). Right, top: the tension composite with
    its resolution events and the causal recurrence rate; right, bottom: one strip per tension component,
    each on its own robust scale (low to high), so that seven curves do not pile onto one axis."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figure list stay untouched

    lab = ann.labels
    t = lab["time"]
    n = len(t)
    dur = n / FRAME_RATE_HZ
    step = max(1, int(np.ceil(n / MAX_SSM_PIXELS)))
    fig = Figure(figsize=(15, 6.5))
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.4], height_ratios=[1.2, 1])
    ax0 = fig.add_subplot(grid[:, 0])
    ax1 = fig.add_subplot(grid[0, 1])
    ax2 = fig.add_subplot(grid[1, 1], sharex=ax1)
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

    ax1.plot(t, lab["tension"], c="k", lw=1.5, label="tension (composite of z-scores)")
    ev = np.flatnonzero(lab["res_event"])
    ax1.scatter(t[ev], lab["tension"][ev], marker="v", s=60, c="tab:red", zorder=5, label="resolution")
    rate = ax1.twinx()
    rate.plot(t, lab["rec_rate_causal"], c="tab:purple", lw=1, alpha=0.7)
    rate.set_ylabel("recurrence rate (causal)", color="tab:purple", fontsize=8)
    rate.set_ylim(0, 1.05)
    ax1.set(ylabel="tension (z)", title="tension and resolutions", xlim=(0, dur))
    ax1.tick_params(labelbottom=False)
    ax1.legend(loc="upper left", fontsize=7)

    comps = [k for k in lab if k.startswith("tension_")]
    if comps:
        strips = np.stack([robust_scale(lab[k].astype(np.float64)) for k in comps])
        ax2.imshow(
            strips,
            aspect="auto",
            cmap="magma",
            vmin=0,
            vmax=1,
            extent=(0, dur, len(comps) - 0.5, -0.5),
            interpolation="nearest",
        )
        ax2.set_yticks(range(len(comps)), [k.removeprefix("tension_") for k in comps], fontsize=7)
    ax2.set(xlabel="time (s)", title="tension components (each from its 5th to 95th percentile)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path
