"""Permutation inference that is valid by construction, with the resolution a large grid needs.

**Exchangeable units.** A clip's label track is cut into windows of ``window_s`` at fixed offsets (0, W, 2W, ...
within the clip). Two windows are exchangeable when they start at the same offset and hold the same number of
frames (exact frame counts, before any stride): swapping their label tracks keeps every label at the same
position in its clip, so position effects, clip-end censoring and the label's own autocorrelation are the
same in every draw. A draw permutes the members of every class independently over the whole permutation group
(the identity included), so the observed labelling is one draw among equals and

    p = (1 + #{T* >= T}) / (B + 1)

is valid for any number of members. Clips longer than W contribute a window to several classes, so classes are
large even when clips have unequal lengths (clips cut to 30 s from tracks of any length share the classes of
their first 30 s). A window that has no partner (a unique ragged tail) keeps its own labels in every draw:
still valid, it just adds no randomness. Nothing ever falls back to a circular shift.

**Rows.** The rows analysed are those whose label is valid in *every* member of the row's class at that
offset, so a draw never moves an undefined label into the analysis and the design matrix is the same in every
draw (what makes the ridge permutations cheap).

**Resolution.** :func:`count_arrangements` counts the distinct draws (prod of class sizes factorial). Fewer than
1/alpha and no p-value can reach alpha: the cell gets a note instead. When the group is no larger than the
permutation budget every arrangement is enumerated (an exact test). Otherwise draws continue past
``n_permutations`` until each statistic has been beaten ``sequential_h`` times (Besag & Clifford 1991, p = h / L
at the L-th draw) or ``max_permutations`` is reached; a cell that could still be a discovery therefore runs long
enough for p to go below alpha / (cells in the BH family), a null cell stops early.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from musicinterp.analysis.progress import report_draws

BLOCK = 64  # draws evaluated together (the ridge probe refits all of them in a few matrix products)


@dataclass(frozen=True)
class Classes:
    """Exchangeability classes of label windows. ``members[k]`` is ``(c, m)``: row indices of the c member
    windows of class k at each of its m offsets (rows of the labels file)."""

    members: tuple[np.ndarray, ...]

    @property
    def sizes(self) -> list[int]:
        return [int(m.shape[0]) for m in self.members]

    def log10_arrangements(self) -> float:
        return sum(math.lgamma(c + 1) for c in self.sizes) / math.log(10)


def window_classes(clip: np.ndarray, frame: np.ndarray, n_frames: np.ndarray, window_frames: int) -> Classes:
    """Classes of windows keyed by (window index in the clip, exact frames in the window).

    ``clip`` indexes ``n_frames``; ``frame`` is each row's frame in its clip. Rows of one class member that sit
    at the same offset across members line up by construction (the same kept frames in every clip).
    """
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    k = frame // window_frames
    length = np.minimum(window_frames, n_frames[clip] - k * window_frames)
    groups: dict[tuple[int, int], dict[int, list[int]]] = {}
    for row, (kk, ln, c) in enumerate(zip(k.tolist(), length.tolist(), clip.tolist())):
        groups.setdefault((kk, ln), {}).setdefault(c, []).append(row)
    members = []
    for key in sorted(groups):
        tracks = list(groups[key].values())
        m = len(tracks[0])
        if any(len(t) != m for t in tracks):  # only when rows were dropped unevenly: keep them as singletons
            members += [np.asarray([t]) for t in tracks]
            continue
        members.append(np.asarray(tracks))
    return Classes(tuple(members))


def consensus_valid(valid: np.ndarray, classes: Classes) -> np.ndarray:
    """Rows whose label is valid in every member of their class at the same offset."""
    out = np.zeros(len(valid), dtype=bool)
    for m in classes.members:
        ok = valid[m].all(axis=0)
        out[m] = ok[None, :]
    return out


def random_draw(n: int, classes: Classes, rng: np.random.Generator) -> np.ndarray:
    """Row index ``perm``: ``labels[perm]`` is one uniform draw from the group (identity allowed)."""
    perm = np.arange(n)
    for m in classes.members:
        if m.shape[0] > 1:
            perm[m] = m[rng.permutation(m.shape[0])]
    return perm


def all_draws(n: int, classes: Classes) -> Iterator[np.ndarray]:
    """Every arrangement of the group once (the identity first)."""
    movable = [m for m in classes.members if m.shape[0] > 1]
    for orders in itertools.product(*[itertools.permutations(range(m.shape[0])) for m in movable]):
        perm = np.arange(n)
        for m, o in zip(movable, orders):
            perm[m] = m[list(o)]
        yield perm


@dataclass
class PermutationResult:
    p: dict[str, float]
    n_draws: int  # null draws evaluated (the observed labelling not counted)
    exact: bool
    null_first: dict[str, np.ndarray]  # each statistic over the first draws (for secondary statistics)


def permutation_test(
    observed: dict[str, float],
    stat_fn: Callable[[list[np.ndarray]], dict[str, np.ndarray]],
    n: int,
    classes: Classes,
    rng: np.random.Generator,
    *,
    min_draws: int,
    max_draws: int,
    sequential_h: int,
    keep_first: int = 0,
) -> PermutationResult:
    """p-values of every statistic in ``observed`` (larger = more extreme) against draws of ``classes``.

    ``stat_fn`` maps a list of row permutations to each statistic's values (one per permutation). With at
    most ``max_draws + 1`` arrangements every one is enumerated (p = #{T* >= T} / G, the identity included).
    Otherwise at least ``min_draws`` uniform draws are made, and more until each statistic has ``sequential_h``
    exceedances or ``max_draws`` is reached (``sequential_h = 0``: exactly ``min_draws``).
    """
    names = list(observed)
    log10_g = classes.log10_arrangements()
    first: dict[str, list[float]] = {}
    if log10_g <= math.log10(max_draws + 1) + 1e-9:
        values: dict[str, list[float]] = {}
        block: list[np.ndarray] = []

        def flush() -> None:
            res = stat_fn(block)
            for k, v in res.items():
                values.setdefault(k, []).extend(np.asarray(v, float).tolist())
            block.clear()

        total = round(10**log10_g)
        for perm in all_draws(n, classes):
            block.append(perm)
            if len(block) == BLOCK:
                flush()
                report_draws(len(values[names[0]]), total)
        if block:
            flush()
        p = {}
        for k in names:
            v = np.asarray(values[k], float)
            v = np.where(np.isfinite(v), v, -np.inf)
            p[k] = float(np.sum(v >= observed[k] - 1e-12) / len(v)) if np.isfinite(observed[k]) else float("nan")
        return PermutationResult(
            p, len(values[names[0]]) - 1, True, {k: np.asarray(v[1 : keep_first + 1]) for k, v in values.items()}
        )
    exceed = dict.fromkeys(names, 0)
    stopped_at: dict[str, int] = {}
    done = 0
    h = sequential_h
    while done < max_draws:
        size = min(BLOCK, max_draws - done)
        res = stat_fn([random_draw(n, classes, rng) for _ in range(size)])
        for k, v in res.items():
            got = first.setdefault(k, [])
            if len(got) < keep_first:
                got += np.asarray(v, float)[: keep_first - len(got)].tolist()
        for k in names:
            v = np.asarray(res[k], float)
            if k in stopped_at or not np.isfinite(observed[k]):
                continue
            hits = np.where(np.isfinite(v), v, -np.inf) >= observed[k] - 1e-12
            if h > 0 and exceed[k] + hits.sum() >= h:
                stopped_at[k] = done + int(np.flatnonzero(np.cumsum(hits) + exceed[k] >= h)[0]) + 1
            exceed[k] += int(hits.sum())
        done += size
        report_draws(done, max_draws)
        if done >= min_draws and (h == 0 or all(k in stopped_at or not np.isfinite(observed[k]) for k in names)):
            break
    p = {}
    for k in names:
        if not np.isfinite(observed[k]):
            p[k] = float("nan")
        elif k in stopped_at:
            p[k] = h / stopped_at[k]
        else:
            p[k] = (1 + exceed[k]) / (done + 1)
    return PermutationResult(p, done, False, {k: np.asarray(v) for k, v in first.items()})


def control_draw(n: int, classes: Classes, rng: np.random.Generator) -> np.ndarray:
    """The shifted-labels control's one draw: every window takes the label track of another member of its
    class (a random derangement), so each clip is asked about another clip's events at the same positions;
    a window without a partner keeps its own. Never a test: a selectivity control (Hewitt & Liang 2019)."""
    perm = np.arange(n)
    for m in classes.members:
        c = m.shape[0]
        if c > 1:
            order = rng.permutation(c)
            while np.any(order == np.arange(c)):  # rejection: about e draws on average
                order = rng.permutation(c)
            perm[m] = m[order]
    return perm
